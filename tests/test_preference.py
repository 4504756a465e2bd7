"""Factorized preference data (D²VLM section 5, appendix D): perturbations, rewriters, validation, CLI."""
from __future__ import annotations

import copy
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from damo.cli import build_parser
from damo.data.collate import Collator
from damo.model.processing import ClipTensors, DamoProcessor
from damo.data.preference import (FACTORS, HTTPRewriter, RuleRewriter, chosen_sample, clean_reply,
                                  load_pairs, make_pair, make_pairs, make_rewriter, perturb_add, perturb_delete,
                                  perturb_distort, perturb_merge, perturb_repeat, perturb_shift, rejected_sample,
                                  save_pairs, validate_pair)
from damo.data.schema import Sample
from damo.data.synthetic import synth_samples
from damo.model.tokenizer import EVI, train_tokenizer

CAPS = ["a red square appears", "a beep sounds", "a blue circle moves across the screen"]


def dense() -> Sample:
    return Sample(id="d0", video="v0", duration=20.0, task="dense_caption", query="describe the events.",
                  answer="; ".join(CAPS) + ".", spans=[[1.0, 4.0], [6.0, 8.0], [12.0, 16.0]], captions=list(CAPS))


def grounding(spans=((2.0, 6.0),), duration: float = 10.0, task: str = "grounding") -> Sample:
    return Sample(id="g0", video="v1", duration=duration, task=task, query="when does the red square appear?",
                  spans=[list(s) for s in spans])


def qa(answer: str = "red") -> Sample:
    return Sample(id="q0", video="v2", duration=10.0, task="grounded_qa", answer=answer,
                  query="what colour is the shape while the beep sounds?", spans=[[3.0, 5.0]])


def overlaps(a, b) -> bool:
    return min(a[1], b[1]) > max(a[0], b[0])


# ------------------------------------------------------------------------------ temporal factors

def test_shift_moves_events_by_a_fraction_of_their_length_inside_the_video():
    for seed in range(20):
        rej, ev = perturb_shift(grounding(), random.Random(seed))
        (a, b), = rej["spans"]
        assert ev == [0] and rej["answer"] == "" and rej["captions"] == []
        assert b - a == pytest.approx(4.0)                          # length kept
        assert 0 <= a < b <= 10.0
        assert 1.0 - 1e-9 <= abs(a - 2.0) <= 0.8 * 4.0 + 1e-9       # 30-80% of 4 s, at least 1 s
    # near the end only a backwards move fits; a span filling the video cannot move at all
    rej, _ = perturb_shift(grounding([(7.0, 9.5)]), random.Random(0))
    assert rej["spans"][0][0] < 7.0
    assert perturb_shift(grounding([(0.0, 10.0)]), random.Random(0)) is None
    # dense captions: shifted events keep their captions
    rej, ev = perturb_shift(dense(), random.Random(3))
    assert rej["captions"] == CAPS and rej["answer"] == dense().answer
    assert [k for k in range(3) if rej["spans"][k] != dense().spans[k]] == ev and len(ev) == 1


def test_add_places_a_plausible_event_in_a_gap_in_time_order():
    for seed in range(20):
        s = dense()
        rej, (k,) = perturb_add(s, random.Random(seed))
        new = rej["spans"][k]
        assert len(rej["spans"]) == 4 and 0 <= new[0] < new[1] <= 20.0
        assert not any(overlaps(new, sp) for sp in s.spans)
        assert new[1] - new[0] >= 1.0 - 1e-9
        assert rej["spans"] == sorted(rej["spans"])
        # the false positive repeats an existing caption, in the same place as its span
        assert rej["captions"][k] in CAPS and rej["captions"][:k] + rej["captions"][k + 1:] == CAPS
        assert rej["answer"] == "; ".join(rej["captions"]) + "."
    # no free second anywhere -> not applicable
    assert perturb_add(grounding([(0.0, 5.0), (5.5, 10.0)]), random.Random(0)) is None


def test_delete_and_merge_by_hand():
    s = dense()
    rej, ev = perturb_delete(s, random.Random(0))
    k = ev[0]
    assert rej["spans"] == [sp for i, sp in enumerate(s.spans) if i != k]
    assert rej["captions"] == [c for i, c in enumerate(CAPS) if i != k]
    assert perturb_delete(grounding(), random.Random(0)) is None            # one event: nothing to miss
    rej, ev = perturb_merge(s, random.Random(0))
    a, b = ev
    assert b == a + 1
    assert rej["spans"][a] == [s.spans[a][0], s.spans[b][1]] and len(rej["spans"]) == 2
    assert rej["captions"][a] == f"{CAPS[a]} and {CAPS[b]}"
    # multi grounding: adjacency is in time, not list order
    m = grounding([(6.0, 8.0), (0.0, 2.0), (3.0, 4.0)], task="multi_grounding")
    for seed in range(10):
        rej, ev = perturb_merge(m, random.Random(seed))
        assert ev in ([1, 2], [0, 2])
        assert rej["spans"] in ([[6.0, 8.0], [0.0, 4.0]], [[0.0, 2.0], [3.0, 8.0]])


# ------------------------------------------------------------------------------- textual factors

def test_rule_rewriter_swaps_one_key_word_within_the_datasets_vocabulary():
    rw = RuleRewriter.from_texts(["a red square appears", "a blue circle", "a beep sounds"])
    assert rw.candidates("red") == ["blue"]                   # in-data colours only
    assert rw.candidates("square") == ["circle"]
    assert rw.candidates("hexagon") == ["circle", "square"]  # a known kind draws from the data's words
    assert "cat" in rw.candidates("dog")                      # a kind the data lacks -> built-in list
    assert rw.candidates("3") == ["0", "1", "2", "4", "5", "6"]
    assert rw.candidates("the") == []
    assert rw.rewrite("Red", random.Random(0)) == "Blue"      # case kept
    assert rw.rewrite("the event happens", random.Random(0)) is None
    out = rw.rewrite("a red square appears", random.Random(1))
    diff = [(x, y) for x, y in zip("a red square appears".split(), out.split()) if x != y]
    allowed = [("red", "blue"), ("square", "circle")] + [("appears", w) for w in rw.candidates("appears")]
    assert len(diff) == 1 and diff[0] in allowed
    # deterministic given the RNG
    assert rw.rewrite("a red square appears", random.Random(5)) == rw.rewrite("a red square appears", random.Random(5))


def test_distort_and_repeat():
    rw = RuleRewriter.from_texts(CAPS + ["red", "blue"])
    rej, ev = perturb_distort(qa("red"), random.Random(0), rw)
    assert rej["answer"] == "blue" and rej["spans"] == [[3.0, 5.0]] and ev == [0]
    rej, ev = perturb_distort(dense(), random.Random(0), rw)
    assert len(ev) == 1 and rej["spans"] == dense().spans
    assert [k for k in range(3) if rej["captions"][k] != CAPS[k]] == ev
    assert rej["answer"] == "; ".join(rej["captions"]) + "."
    assert perturb_distort(qa("the event happens"), random.Random(0), rw) is None
    assert perturb_distort(grounding(), random.Random(0), rw) is None       # no answer text to distort
    rej, (k,) = perturb_repeat(dense(), random.Random(0))
    assert k >= 1 and rej["captions"][k] == CAPS[k - 1] and rej["spans"] == dense().spans
    assert perturb_repeat(qa(), random.Random(0)) is None


# ---------------------------------------------------------------------------- pairs and datasets

def test_pairs_from_synthetic_data_validate_cover_every_subfactor_and_are_deterministic():
    samples = synth_samples("synth://standard?n=20&seed=0")
    pairs, report = make_pairs(samples, seed=0)
    assert report["pairs"] == len(pairs) > 50 and report["samples"] == len(samples)
    assert set(report["subfactors"]) == {x for xs in FACTORS.values() for x in xs}
    for p in pairs:
        validate_pair(p)
        sub = p["subfactor"]
        assert sub in FACTORS[p["factor"]]
        if p["factor"] == "textual":
            assert p["rejected"]["spans"] == p["sample"]["spans"]
        elif p["sample"]["task"] != "dense_caption":
            assert p["rejected"]["answer"] == p["sample"]["answer"]
        if p["sample"]["task"] in ("grounding", "multi_grounding"):
            assert p["factor"] == "temporal"
    assert make_pairs(samples, seed=0)[0] == pairs
    assert make_pairs(samples, seed=1)[0] != pairs
    # each sample's pair depends only on (seed, sample id), not on the rest of the file
    tail, _ = make_pairs(samples[7:], seed=0)
    assert tail == [p for p in pairs if p["sample"]["id"] in {s.id for s in samples[7:]}]
    # restricted sub-factors
    only, rep = make_pairs(samples, seed=0, subfactors=["repeat"])
    assert set(rep["subfactors"]) == {"repeat"} and rep["skipped"]["no_perturbation"] == len(samples) - len(only)
    with pytest.raises(ValueError, match="unknown sub-factors"):
        make_pairs(samples, subfactors=["swap"])


def test_samples_without_events_are_skipped_with_a_reason():
    bad = grounding([(2.0, 12.0)])                        # ends past the 10 s duration
    hl = Sample(id="h", video="v", duration=10.0, task="highlight", query="q", spans=[[1.0, 2.0]])
    empty = grounding(())
    pairs, rep = make_pairs([bad, hl, empty, qa()], seed=0)
    assert len(pairs) == 1 and rep["skipped"] == {"bad_spans": 1, "task": 1, "no_spans": 1}


def valid_pair() -> dict:
    p = make_pair(qa(), 0, RuleRewriter.from_texts(["red", "blue"]), subfactors=["distort"])
    assert p is not None
    return p


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.pop("events"), "missing keys"),
    (lambda p: p.update(factor="visual"), "factor 'visual'"),
    (lambda p: p.update(subfactor="shift"), "does not belong"),
    (lambda p: p["rejected"].update(answer="red"), "equals the chosen"),
    (lambda p: p["rejected"].update(spans=[[3.0, 11.0]]), "duration"),
    (lambda p: p["rejected"].update(spans=[[5.0, 5.0]]), "start < end"),
    (lambda p: p["rejected"].update(spans=[[4.0, 6.0]]), "textual perturbation must keep the spans"),
    (lambda p: p.update(events=[3]), "'events'"),
    (lambda p: p.update(events=[]), "'events'"),
    (lambda p: p["sample"].pop("video"), "not a canonical sample"),
    (lambda p: p["sample"].update(task="highlight"), "no events"),
    (lambda p: p["rejected"].pop("captions"), "'rejected' must be"),
])
def test_validate_pair_rejects_malformed_pairs(edit, message):
    p = valid_pair()
    validate_pair(p)
    bad = copy.deepcopy(p)
    edit(bad)
    with pytest.raises(ValueError, match=message):
        validate_pair(bad)


def test_temporal_pair_must_change_spans_and_dense_captions_follow_spans():
    p = make_pair(dense(), 0, RuleRewriter(), subfactors=["delete"])
    validate_pair(p)
    q = copy.deepcopy(p)
    q["rejected"]["spans"] = p["sample"]["spans"]
    with pytest.raises(ValueError, match="one caption per span"):
        validate_pair(q)
    q["rejected"]["captions"] = CAPS[:2] + ["a green star"]
    with pytest.raises(ValueError, match="temporal perturbation must change the spans"):
        validate_pair(q)


def test_save_load_round_trip_and_line_numbered_errors(tmp_path):
    pairs, _ = make_pairs([dense(), qa(), grounding()], seed=0)
    path = tmp_path / "pairs.jsonl"
    assert save_pairs(path, pairs) == 3
    assert load_pairs(path) == pairs
    bad = copy.deepcopy(pairs[1])
    bad["factor"] = "colour"
    save_pairs(path, [pairs[0], bad])
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: preference pair .*factor 'colour'"):
        load_pairs(path)


def test_chosen_and_rejected_samples_collate_with_matching_evidence():
    p = make_pair(dense(), 0, RuleRewriter(), subfactors=["add"])
    c, r = chosen_sample(p), rejected_sample(p)
    assert c.id == "d0" and r.id == "d0#rejected" and r.video == c.video and r.query == c.query
    assert len(r.spans) == len(r.captions) == 4 and c.spans == dense().spans
    tok = train_tokenizer(CAPS * 20 + ["describe the events."] * 20, 300)
    col = Collator(DamoProcessor(tok, video_tokens=8, frame_tokens=1, fps=1.0, layout="video_first"))
    clip = ClipTensors(frames=torch.zeros(20, 32, 32, 3, dtype=torch.uint8), mel=torch.zeros(20, 25, 32).half(),
                       times=torch.arange(20) + 0.5, duration=20.0)
    b = col([(c, clip), (r, clip)], random.Random(0))
    evi = tok.convert_tokens_to_ids(EVI)
    assert int((b.input_ids[0] == evi).sum()) == 6 and int((b.input_ids[1] == evi).sum()) == 8
    # the rejected row's answer-stage <evi> for the added event points at the added span
    k = p["events"][0]
    rows = (b.evi_batch == 1).nonzero().flatten()
    added = b.evi_targets[rows[4 + k]]
    a, e = r.spans[k]
    assert (added == 1).sum() > 0 and all(a <= t + 0.5 <= e or added[t] < 1 for t in range(20))


# --------------------------------------------------------------------------------- HTTP rewriter

class ChatStub(BaseHTTPRequestHandler):
    requests: list[dict] = []
    reply: object = None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ChatStub.requests.append({"path": self.path, "body": body})
        text = body["messages"][-1]["content"]
        reply = ChatStub.reply if ChatStub.reply is not None else \
            {"choices": [{"message": {"content": '"' + text.replace("red", "green") + '"\n(changed the colour)'}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def chat_server():
    ChatStub.requests, ChatStub.reply = [], None
    server = HTTPServer(("127.0.0.1", 0), ChatStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_rewriter_against_a_local_chat_server(chat_server):
    rw = make_rewriter("http", url=chat_server, model="tiny-chat")
    assert isinstance(rw, HTTPRewriter)
    assert rw.rewrite("a red square appears", random.Random(0)) == "a green square appears"
    req = ChatStub.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == "tiny-chat" and req["body"]["temperature"] == 0.0
    assert req["body"]["seed"] == random.Random(0).randrange(2 ** 31)
    assert req["body"]["messages"][0]["role"] == "system" and req["body"]["messages"][1]["content"] == \
        "a red square appears"
    # an unchanged reply is no rewrite: distort falls through to another sub-factor
    assert rw.rewrite("a beep sounds", random.Random(0)) is None
    pairs, rep = make_pairs([dense(), qa()], seed=0, rewriter=rw, subfactors=["distort"])
    assert rep["rewriter"] == "http" and len(pairs) == 2
    assert pairs[1]["rejected"]["answer"] == "green"
    assert any(c.startswith("a green square") for c in pairs[0]["rejected"]["captions"])
    ChatStub.reply = {"error": "overloaded"}
    with pytest.raises(RuntimeError, match="chat-completions format"):
        rw.rewrite("a red square", random.Random(0))


def test_http_rewriter_errors_are_actionable():
    with pytest.raises(ValueError, match="http"):
        HTTPRewriter("127.0.0.1:8000")
    with pytest.raises(ValueError, match="--url"):
        make_rewriter("http")
    with pytest.raises(ValueError, match="unknown rewriter"):
        make_rewriter("gpt")
    s = HTTPServer(("127.0.0.1", 0), ChatStub)          # bound, then closed: nothing listens on the port
    port = s.server_address[1]
    s.server_close()
    with pytest.raises(RuntimeError, match="cannot reach"):
        HTTPRewriter(f"http://127.0.0.1:{port}/v1", timeout=5).rewrite("a red square", random.Random(0))
    assert clean_reply("Rewritten: 'A blue square appears.'\nextra", "a red square appears") == "A blue square appears."
    assert clean_reply("A red square appears!", "a red square appears") is None
    assert clean_reply("  \n", "x") is None


# ---------------------------------------------------------------------------------- command line

def test_cli_writes_pairs_and_reports(tmp_path, capsys):
    parser = build_parser()
    out = tmp_path / "prefs.jsonl"
    args = parser.parse_args(["data", "prefs", "--in", "synth://easy?n=3&seed=0", "--out", str(out), "--seed", "2"])
    assert args.fn(args) == 0
    report = json.loads(capsys.readouterr().out)
    pairs = load_pairs(out)
    assert report["pairs"] == len(pairs) > 0 and report["out"] == str(out) and report["rewriter"] == "rule"
    samples = synth_samples("synth://easy?n=3&seed=0")
    assert pairs == make_pairs(samples, seed=2)[0]
    args = parser.parse_args(["data", "prefs", "--in", str(tmp_path / "missing.jsonl"), "--out", str(out)])
    with pytest.raises(SystemExit, match="neither a synth:// spec nor an existing JSONL file"):
        args.fn(args)
    args = parser.parse_args(["data", "prefs", "--in", "synth://easy?n=1", "--out", str(out), "--rewriter", "http"])
    with pytest.raises(SystemExit, match="--url"):
        args.fn(args)
