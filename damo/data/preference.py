"""Factorized preference pairs (D²VLM section 5, appendix D).

For each sample we pick a factor, then a sub-factor, then the sub-video events (one per
span) to perturb, and apply a localized perturbation whose cause is known exactly:

- temporal (text kept, spans changed): ``shift`` an event by a fraction of its length
  (at least ``min_shift`` seconds, inside the video); ``add`` a false-positive event of a
  plausible length in a gap between events; ``delete`` one of several events (a missed
  detection); ``merge`` two events adjacent in time into their hull (boundaries not told
  apart). In dense captions captions follow their spans: an added event copies an existing
  caption, a deleted one loses its caption, merged captions are joined with "and".
- textual (spans kept, text changed): ``distort`` key information of the answer (grounded
  QA) or of some event captions (dense captions) with a text rewriter; ``repeat`` an event's
  caption as the previous event's (the repetition failure of video LLMs).

Grounding tasks have no free answer text (their response is a fixed template around the
``<evi>`` tokens), so only temporal factors apply to them. A factor without an applicable
sub-factor for a sample falls back to the other factor; the record says what was done.

Rewriters: :class:`RuleRewriter` (default, offline, deterministic) swaps one key word -
colour, shape, sound, pitch, number, verb, object, direction - for another of the same
kind, preferring words the dataset itself uses so the distortion stays in-domain;
:class:`HTTPRewriter` asks any OpenAI-compatible chat server, as the paper prompts an
off-the-shelf LLM (appendix D).

Each sample's choices come from its own RNG seeded by ``(seed, sample id)``, so a pair does
not depend on which other samples are in the file.

A pair record (one JSONL line)::

    {"id", "sample": <canonical sample dict; its answer/spans/captions are the chosen response>,
     "rejected": {"answer", "spans", "captions"},
     "factor": "temporal" | "textual",
     "subfactor": "shift" | "add" | "delete" | "merge" | "distort" | "repeat",
     "events": [indices of the perturbed events]}

``events`` index the chosen spans, except for ``add``, where it is the new event's index in
the rejected spans.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from damo.data.chat import ChatClient
from damo.data.schema import Sample, read_jsonl, write_jsonl
from damo.spans import clip, gaps, hull

FACTORS = {"temporal": ("shift", "add", "delete", "merge"), "textual": ("distort", "repeat")}
SPAN_TASKS = ("grounding", "multi_grounding", "dense_caption", "grounded_qa")


def _fail(pid: object, msg: str) -> None:
    raise ValueError(f"preference pair {pid!r}: {msg}")


def _check_spans(pid: object, what: str, spans: object, duration: float) -> None:
    if not isinstance(spans, list) or not spans:
        _fail(pid, f"{what} spans must be a non-empty list of [start, end], got {spans!r}")
    for sp in spans:
        if not isinstance(sp, (list, tuple)) or len(sp) != 2 or not all(isinstance(x, (int, float)) for x in sp):
            _fail(pid, f"{what} span {sp!r} is not [start, end] in seconds")
        s, e = float(sp[0]), float(sp[1])
        if not 0 <= s < e <= duration:
            _fail(pid, f"{what} span {[s, e]} must satisfy 0 <= start < end <= duration ({duration})")


def validate_pair(pair: dict) -> None:
    """Raise ``ValueError`` naming the pair and the problem if ``pair`` is not a well-formed preference pair."""
    if not isinstance(pair, dict):
        raise ValueError(f"a preference pair is a JSON object, got {type(pair).__name__}")
    pid = pair.get("id", "?")
    missing = {"id", "sample", "rejected", "factor", "subfactor", "events"} - pair.keys()
    if missing:
        _fail(pid, f"missing keys {sorted(missing)}")
    if pair["factor"] not in FACTORS:
        _fail(pid, f"factor {pair['factor']!r} is not one of {sorted(FACTORS)}")
    if pair["subfactor"] not in FACTORS[pair["factor"]]:
        _fail(pid, f"subfactor {pair['subfactor']!r} does not belong to factor {pair['factor']!r} "
                   f"(valid: {FACTORS[pair['factor']]})")
    try:
        s = Sample.from_dict(pair["sample"])
    except (ValueError, TypeError, AttributeError) as e:
        _fail(pid, f"'sample' is not a canonical sample ({e})")
    if s.task not in SPAN_TASKS:
        _fail(pid, f"task {s.task!r} has no events to perturb; preference pairs cover {SPAN_TASKS}")
    rej = pair["rejected"]
    if not isinstance(rej, dict) or {"answer", "spans", "captions"} - rej.keys():
        _fail(pid, "'rejected' must be an object with 'answer', 'spans' and 'captions'")
    if not isinstance(rej["answer"], str) or not isinstance(rej["captions"], list) or \
            not all(isinstance(c, str) and c.strip() for c in rej["captions"]):
        _fail(pid, "rejected 'answer' must be a string and 'captions' a list of non-empty strings")
    _check_spans(pid, "chosen", s.spans, s.duration)
    _check_spans(pid, "rejected", rej["spans"], s.duration)
    if s.task == "dense_caption" and len(rej["captions"]) != len(rej["spans"]):
        _fail(pid, f"dense captions need one caption per span, got {len(rej['captions'])} captions for "
                   f"{len(rej['spans'])} spans")
    spans_r = [[float(a), float(b)] for a, b in rej["spans"]]
    same_spans = spans_r == s.spans
    same_text = rej["answer"] == s.answer and rej["captions"] == s.captions
    if same_spans and same_text:
        _fail(pid, "rejected response equals the chosen one")
    if pair["factor"] == "temporal" and same_spans:
        _fail(pid, "a temporal perturbation must change the spans")
    if pair["factor"] == "textual" and not same_spans:
        _fail(pid, "a textual perturbation must keep the spans")
    ev = pair["events"]
    n = max(len(s.spans), len(spans_r))
    if not isinstance(ev, list) or not ev or not all(isinstance(i, int) and 0 <= i < n for i in ev):
        _fail(pid, f"'events' must list the perturbed event indices (0..{n - 1}), got {ev!r}")


def pair_video(pair: dict) -> str:
    """The video a preference pair is about (both sides share it)."""
    return pair["sample"]["video"]


def with_pair_video(pair: dict, video: str) -> dict:
    return pair | {"sample": pair["sample"] | {"video": video}}


def chosen_sample(pair: dict) -> Sample:
    """The pair's sample as given: its response is the preferred one."""
    return Sample.from_dict(pair["sample"])


def rejected_sample(pair: dict) -> Sample:
    """The same sample with the dispreferred answer, spans and captions (id suffixed ``#rejected``)."""
    s = Sample.from_dict(pair["sample"])
    r = pair["rejected"]
    s.id = f"{s.id}#rejected"
    s.answer, s.captions = r["answer"], list(r["captions"])
    s.spans = [[float(a), float(b)] for a, b in r["spans"]]
    return s


def load_pairs(path: str | Path) -> list[dict]:
    """Read and validate a preference-pair JSONL; errors name the line."""
    pairs = []
    for n, d in enumerate(read_jsonl(path), 1):
        try:
            validate_pair(d)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
        pairs.append(d)
    return pairs


# ------------------------------------------------------------------------------------ rewriters

class Rewriter(Protocol):
    """Turns a correct event-level text into a plausible but wrong one, or ``None`` if it cannot."""
    name: str

    def rewrite(self, text: str, rng: random.Random) -> str | None: ...


# Key-word kinds for the rule rewriter. A word is swapped only for another of its kind, so the
# rejected text stays fluent and wrong in exactly one piece of key information.
KEY_WORDS: dict[str, tuple[str, ...]] = {
    "colour": ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey"),
    "shape": ("square", "circle", "triangle", "rectangle", "star", "hexagon", "diamond", "oval"),
    "sound": ("beep", "tone", "noise", "bell", "whistle", "click", "chime", "siren", "horn", "drum", "buzz"),
    "pitch": ("low", "mid", "high"),
    "number": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
               "once", "twice"),
    "verb_s": ("appears", "disappears", "moves", "plays", "sounds", "flashes", "stops", "starts", "opens",
               "closes", "cuts", "pours", "adds", "stirs", "mixes", "picks", "puts", "places", "walks", "runs",
               "jumps", "sits", "stands", "holds", "throws", "washes", "turns", "removes", "takes", "eats",
               "drinks", "rides", "drives", "climbs", "dances", "sings", "talks", "reads", "writes", "fries"),
    "verb_ing": ("appearing", "moving", "playing", "opening", "closing", "cutting", "pouring", "adding",
                 "stirring", "mixing", "picking", "putting", "walking", "running", "jumping", "sitting",
                 "standing", "holding", "throwing", "washing", "turning", "removing", "taking", "eating",
                 "drinking", "riding", "driving", "climbing", "dancing", "singing", "talking", "reading",
                 "writing", "frying"),
    "verb_base": ("open", "close", "cut", "pour", "stir", "mix", "pick", "put", "place", "walk", "run", "jump",
                  "sit", "stand", "hold", "throw", "wash", "remove", "take", "eat", "drink", "ride", "drive",
                  "climb", "dance", "sing", "talk", "read", "write", "fry", "chop", "slice", "peel", "boil"),
    "object": ("man", "woman", "person", "boy", "girl", "child", "dog", "cat", "horse", "bird", "car", "bike",
               "door", "window", "ball", "table", "chair", "knife", "pan", "pot", "bowl", "plate", "cup",
               "bottle", "phone", "book", "box", "bag", "egg", "onion", "tomato", "potato", "water", "oil",
               "salt", "sugar", "flour", "butter", "cheese", "bread", "meat", "chicken", "rice", "pasta",
               "sauce", "carrot", "garlic", "pepper", "guitar", "piano", "camera", "shoe", "hat", "shirt"),
    "direction": ("left", "right", "up", "down", "top", "bottom"),
    "order": ("before", "after", "first", "last"),
}
_KIND_OF = {w: k for k, ws in KEY_WORDS.items() for w in ws}
_WORD = re.compile(r"[A-Za-z]+|\d+")


def _match_case(new: str, old: str) -> str:
    if old.isupper() and len(old) > 1:
        return new.upper()
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


class RuleRewriter:
    """Swap one key word for another of the same kind (offline, deterministic given the RNG).

    The replacement is drawn from the words of that kind the dataset uses (fitted with
    :meth:`from_texts`), so swaps stay in the data's vocabulary (a synthetic "red square"
    becomes a "blue square", not a "purple" one it never shows); kinds the dataset uses fewer
    than two words of fall back to the built-in list. Integers move by 1-3.
    """
    name = "rule"

    def __init__(self, vocab: dict[str, Sequence[str]] | None = None) -> None:
        self.vocab = {k: tuple(v) for k, v in (vocab or {}).items()}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "RuleRewriter":
        seen: dict[str, set[str]] = {}
        for t in texts:
            for w in _WORD.findall(t.lower()):
                if w in _KIND_OF:
                    seen.setdefault(_KIND_OF[w], set()).add(w)
        return cls({k: sorted(ws) for k, ws in seen.items() if len(ws) >= 2})

    def candidates(self, word: str) -> list[str]:
        """Replacements for ``word`` (lower case), in a fixed order; empty if it is not a key word."""
        if word.isdigit():
            n = int(word)
            return [str(m) for m in range(max(0, n - 3), n + 4) if m != n]
        kind = _KIND_OF.get(word)
        if kind is None:
            return []
        pool = self.vocab.get(kind) or KEY_WORDS[kind]
        return [w for w in pool if w != word]

    def rewrite(self, text: str, rng: random.Random) -> str | None:
        hits = [m for m in _WORD.finditer(text) if self.candidates(m.group().lower())]
        if not hits:
            return None
        m = rng.choice(hits)
        new = _match_case(rng.choice(self.candidates(m.group().lower())), m.group())
        return text[:m.start()] + new + text[m.end():]


DISTORT_PROMPT = (
    "You write wrong answers for preference training of a video assistant. Rewrite the given event "
    "description so that its key information becomes wrong - change the object, colour, shape, sound, "
    "number or action - while keeping the same style and about the same length. Reply with the rewritten "
    "description only.")


class HTTPRewriter:
    """Distort text with any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, llama.cpp, Ollama, ...).

    Greedy decoding plus a per-call seed drawn from the sample's RNG keeps reruns as
    repeatable as the server allows. A reply equal to the input counts as no rewrite.
    """
    name = "http"

    def __init__(self, url: str, model: str = "default", timeout: float = 60.0, max_tokens: int = 128,
                 api_key: str | None = None) -> None:
        self.client = ChatClient(url, model, timeout, max_tokens, api_key)

    def messages(self, text: str) -> list[dict]:
        return [{"role": "system", "content": DISTORT_PROMPT}, {"role": "user", "content": text}]

    def complete(self, messages: list[dict], seed: int) -> str:
        return self.client.complete(messages, seed)

    def rewrite(self, text: str, rng: random.Random) -> str | None:
        reply = self.complete(self.messages(text), rng.randrange(2 ** 31))
        return clean_reply(reply, text)


def clean_reply(reply: str, original: str) -> str | None:
    """The first non-empty line of an LLM reply without quotes or a label; ``None`` if unchanged or empty."""
    lines = [x.strip() for x in reply.strip().splitlines() if x.strip()]
    if not lines:
        return None
    out = re.sub(r"^(rewritten( description)?|answer|output)\s*:\s*", "", lines[0], flags=re.I)
    out = out.strip().strip("\"'`").strip()
    norm = lambda t: re.sub(r"\W+", " ", t.lower()).strip()  # noqa: E731
    if not out or norm(out) == norm(original):
        return None
    return out


REWRITERS = ("rule", "http")


def make_rewriter(name: str, samples: Sequence[Sample] = (), url: str | None = None,
                  model: str | None = None) -> Rewriter:
    """Build a rewriter by name; the rule rewriter learns its vocabulary from ``samples``."""
    if name == "rule":
        return RuleRewriter.from_texts(t for s in samples for t in [s.answer, s.query, *s.captions])
    if name == "http":
        if not url:
            raise ValueError("--rewriter http needs --url of an OpenAI-compatible server")
        return HTTPRewriter(url, model or "default")
    raise ValueError(f"unknown rewriter {name!r}; choose one of {REWRITERS}")


# --------------------------------------------------------------------------------- perturbations

def _r(x: float) -> float:
    return round(x, 2)


def _dense(s: Sample) -> bool:
    """Captions are per-event text (and follow their spans) only in dense captions."""
    return s.task == "dense_caption" and len(s.captions) == len(s.spans)


def _answer(s: Sample, captions: list[str]) -> str:
    """A dense caption's answer, when it is derived from the captions, follows them."""
    if _dense(s) and s.answer == "; ".join(s.captions) + ".":
        return "; ".join(captions) + "."
    return s.answer


def _rejected(s: Sample, spans: list[list[float]] | None = None, captions: list[str] | None = None,
              answer: str | None = None) -> dict:
    spans = [list(x) for x in (s.spans if spans is None else spans)]
    caps = list(s.captions if captions is None else captions)
    return {"answer": _answer(s, caps) if answer is None else answer, "spans": spans, "captions": caps}


def _shifted(span: list[float], duration: float, rng: random.Random, min_shift: float) -> list[float] | None:
    a, b = span
    length = b - a
    d = max(rng.uniform(0.3, 0.8) * length, min_shift)
    rooms = [(sign, room) for sign, room in ((-1, a), (1, duration - b)) if room >= min_shift]
    if not rooms:
        return None
    sign, room = rng.choice(rooms)
    d = min(d, room)
    new = clip([_r(a + sign * d), _r(b + sign * d)], duration)
    return new if new is not None and new != [a, b] else None


def perturb_shift(s: Sample, rng: random.Random, min_shift: float = 1.0) -> tuple[dict, list[int]] | None:
    """Move up to half the events (at least one) by 30-80% of their length, at least ``min_shift`` s."""
    cands = list(range(len(s.spans)))
    rng.shuffle(cands)
    want = rng.randint(1, max(1, len(s.spans) // 2))
    spans, done = [list(x) for x in s.spans], []
    for k in cands:
        new = _shifted(spans[k], s.duration, rng, min_shift)
        if new is not None:
            spans[k] = new
            done.append(k)
        if len(done) == want:
            break
    return (_rejected(s, spans), sorted(done)) if done else None


def perturb_add(s: Sample, rng: random.Random, min_len: float = 1.0) -> tuple[dict, list[int]] | None:
    """Add a false-positive event in a free gap, as long as an existing event (x0.7-1.3) where it fits."""
    free = [g for g in gaps(s.spans, s.duration) if g[1] - g[0] >= min_len]
    if not free:
        return None
    g0, g1 = rng.choice(free)
    like = rng.choice(s.spans)                           # the false positive is as long as a real event
    length = min(g1 - g0, max(min_len, (like[1] - like[0]) * rng.uniform(0.7, 1.3)))
    start = _r(rng.uniform(g0, g1 - length))
    new = clip([start, _r(start + length)], s.duration)
    if new is None:
        return None
    k = sum(1 for sp in s.spans if sp[0] <= new[0])      # keep events in time order
    spans = [list(x) for x in s.spans]
    spans.insert(k, new)
    caps = None
    if _dense(s):
        caps = list(s.captions)
        caps.insert(k, rng.choice(s.captions))
    return _rejected(s, spans, caps), [k]


def perturb_delete(s: Sample, rng: random.Random) -> tuple[dict, list[int]] | None:
    """Drop one of several events (a missed detection)."""
    if len(s.spans) < 2:
        return None
    k = rng.randrange(len(s.spans))
    spans = [x for i, x in enumerate(s.spans) if i != k]
    caps = [c for i, c in enumerate(s.captions) if i != k] if _dense(s) else None
    return _rejected(s, spans, caps), [k]


def perturb_merge(s: Sample, rng: random.Random) -> tuple[dict, list[int]] | None:
    """Merge two events adjacent in time into their hull (no boundary between them)."""
    if len(s.spans) < 2:
        return None
    order = sorted(range(len(s.spans)), key=lambda i: tuple(s.spans[i]))
    j = rng.randrange(len(order) - 1)
    a, b = order[j], order[j + 1]
    spans = [list(x) for x in s.spans]
    spans[a] = hull([s.spans[a], s.spans[b]])
    del spans[b]
    caps = None
    if _dense(s):
        caps = list(s.captions)
        caps[a] = f"{caps[a].strip().rstrip('.')} and {caps[b].strip().rstrip('.')}"
        del caps[b]
    return _rejected(s, spans, caps), sorted([a, b])


def perturb_distort(s: Sample, rng: random.Random, rewriter: Rewriter) -> tuple[dict, list[int]] | None:
    """Distort key information: the QA answer, or up to half the captions (at least one) of a dense caption."""
    if _dense(s):
        cands = list(range(len(s.captions)))
        rng.shuffle(cands)
        want = rng.randint(1, max(1, len(cands) // 2))
        caps, done = list(s.captions), []
        for k in cands:
            new = rewriter.rewrite(caps[k], rng)
            if new is not None and new != caps[k]:
                caps[k] = new
                done.append(k)
            if len(done) == want:
                break
        return (_rejected(s, captions=caps), sorted(done)) if done else None
    if s.task != "grounded_qa" or not s.answer.strip():
        return None
    new = rewriter.rewrite(s.answer, rng)
    if new is None or new == s.answer:
        return None
    return _rejected(s, answer=new), list(range(len(s.spans)))


def perturb_repeat(s: Sample, rng: random.Random) -> tuple[dict, list[int]] | None:
    """Repeat the previous event's caption for one event of a dense caption."""
    if not _dense(s):
        return None
    cands = [k for k in range(1, len(s.captions)) if s.captions[k] != s.captions[k - 1]]
    if not cands:
        return None
    k = rng.choice(cands)
    caps = list(s.captions)
    caps[k] = caps[k - 1]
    return _rejected(s, captions=caps), [k]


def sample_rng(seed: int, sample_id: str) -> random.Random:
    """The per-sample RNG: the same (seed, id) always perturbs the same way."""
    return random.Random(f"{seed}:{sample_id}")


def make_pair(s: Sample, seed: int, rewriter: Rewriter, subfactors: Sequence[str] | None = None,
              min_shift: float = 1.0) -> dict | None:
    """One preference pair for ``s`` (section 5: factor, then sub-factor and events), or ``None``.

    ``subfactors`` restricts the choice (default: all). The factor is drawn first; its
    sub-factors are tried in random order, then the other factor's.
    """
    allowed = set(subfactors or [x for xs in FACTORS.values() for x in xs])
    rng = sample_rng(seed, s.id)
    factors = list(FACTORS)
    first = rng.choice(factors)
    for factor in [first] + [f for f in factors if f != first]:
        subs = [x for x in FACTORS[factor] if x in allowed]
        rng.shuffle(subs)
        for sub in subs:
            if sub == "shift":
                res = perturb_shift(s, rng, min_shift)
            elif sub == "add":
                res = perturb_add(s, rng, min_shift)
            elif sub == "distort":
                res = perturb_distort(s, rng, rewriter)
            else:
                res = {"delete": perturb_delete, "merge": perturb_merge, "repeat": perturb_repeat}[sub](s, rng)
            if res is not None:
                rejected, events = res
                pair = {"id": f"{s.id}#{sub}", "sample": s.to_dict(), "rejected": rejected, "factor": factor,
                        "subfactor": sub, "events": events}
                validate_pair(pair)
                return pair
    return None


def make_pairs(samples: Sequence[Sample], seed: int = 0, rewriter: Rewriter | None = None,
               subfactors: Sequence[str] | None = None, min_shift: float = 1.0) -> tuple[list[dict], dict]:
    """Pairs for every sample with events, plus a report of what was made and what was skipped and why."""
    unknown = set(subfactors or ()) - {x for xs in FACTORS.values() for x in xs}
    if unknown:
        raise ValueError(f"unknown sub-factors {sorted(unknown)}; valid: {FACTORS}")
    rewriter = rewriter or make_rewriter("rule", samples)
    pairs, skipped = [], Counter()
    for s in samples:
        if s.task not in SPAN_TASKS:
            skipped["task"] += 1
            continue
        if not s.spans:
            skipped["no_spans"] += 1
            continue
        if s.duration <= 0 or not all(0 <= a < b <= s.duration for a, b in s.spans):
            skipped["bad_spans"] += 1
            continue
        p = make_pair(s, seed, rewriter, subfactors, min_shift)
        if p is None:
            skipped["no_perturbation"] += 1
            continue
        pairs.append(p)
    report = {"samples": len(samples), "pairs": len(pairs), "skipped": dict(sorted(skipped.items())),
              "factors": dict(sorted(Counter(p["factor"] for p in pairs).items())),
              "subfactors": dict(sorted(Counter(p["subfactor"] for p in pairs).items())),
              "rewriter": rewriter.name}
    return pairs, report


def save_pairs(path: str | Path, pairs: Iterable[dict]) -> int:
    return write_jsonl(path, pairs)


__all__ = ["FACTORS", "SPAN_TASKS", "validate_pair", "chosen_sample", "rejected_sample", "load_pairs", "save_pairs",
           "KEY_WORDS", "RuleRewriter", "HTTPRewriter", "clean_reply", "make_rewriter", "REWRITERS",
           "perturb_shift", "perturb_add", "perturb_delete", "perturb_merge", "perturb_distort", "perturb_repeat",
           "sample_rng", "make_pair", "make_pairs"]
