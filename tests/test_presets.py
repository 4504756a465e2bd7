"""The presets' answer parsers on answers quoted from the authors' repositories (their prompts' format examples,
their parsers' documented cases, their training examples), well-formed and malformed, with the spans the
authors' own parsers give."""
from __future__ import annotations

import pytest

from damo.model.presets import DEFAULT_PRESET, PRESETS, checkpoint_type, get_preset, last_pair, timelens_spans

# Time-R1 (evaluate.py extract_answer) and VideoChat-R1 (src_eval/evaluate_grounding.py parse_timestamp_output)
R1_ANSWERS = [
    # the format example both prompts give
    ("<answer>12.54 to 17.83</answer>", [[12.54, 17.83]]),
    # a thought with <timestep> ranges as the prompts ask: the last pair anywhere wins
    ("<think>The person enters <timestep>3.10 to 5.00</timestep> and sits down.</think>\n"
     "<answer>12.54 to 17.83</answer>", [[12.54, 17.83]]),
    ("<think>It happens between 3.10 and 5.00.</think>", [[3.1, 5.0]]),
    ("<answer>17.83 to 12.54</answer>", [[17.83, 12.54]]),               # kept as written, reversed
    # malformed: the prompts' placeholder echoed, a hyphen instead of "to", the SFT counting example, nothing
    ("<think>time ranges (xx.xx to xx.xx)</think><answer>xx.xx to xx.xx</answer>", []),
    ("<answer>12.54 - 17.83</answer>", []),
    ("<think>\nI can see 10 objects\n</think>\n<answer>\n10\n</answer>", []),
    ("<answer>12.54to17.83</answer>", []),
    ("", []),
]

# TimeLens (timelens/utils.py extract_time): the formats its comments list, in its order of rules
TIMELENS_ANSWERS = [
    ("The event happens in 18.5 - 23.0 seconds.", [[18.5, 23.0]]),
    ("The event happens from 0 - 10 seconds.", [[0.0, 10.0]]),
    ("18.5 to 23.0", [[18.5, 23.0]]),
    ("Starting time: 0.8 seconds. Ending time: 1.1 seconds", [[0.8, 1.1]]),
    ("The start time for this event is 0 seconds, and the end time is 12 seconds.", [[0.0, 12.0]]),
    ("The event happens in 00:01:05.5 - 00:01:10 seconds.", [[65.5, 70.0]]),          # HH:MM:SS.xx
    ("From 0:05.250 to 1:09.000.", [[5.25, 69.0]]),                                   # MM:SS.xxx
    ("The event happens in 2.0 - 4.5 seconds and again in 7.0 - 9.0 seconds.", [[2.0, 4.5], [7.0, 9.0]]),
    # malformed: the prompt's format echoed, one clock time alone (read as two numbers), one number alone
    ("The event happens in <start time> - <end time> seconds", []),
    ("It starts at 1:05.", [[1.0, 5.0]]),
    ("Around 5 seconds.", []),
    ("THE EVENT HAPPENS IN 3 TO 7 SECONDS", [[3.0, 7.0]]),
]


@pytest.mark.parametrize("answer,spans", R1_ANSWERS)
def test_r1_parser(answer, spans):
    assert last_pair(answer) == spans
    assert get_preset("time-r1").spans(answer) == get_preset("videochat-r1").spans(answer) == spans


@pytest.mark.parametrize("answer,spans", TIMELENS_ANSWERS)
def test_timelens_parser(answer, spans):
    assert timelens_spans(answer) == get_preset("qwen2.5-omni").spans(answer) == spans
    # TimeLens' evaluation rounds to whole seconds with Python's round (halves to even: 18.5 -> 18)
    whole = [[float(round(s)), float(round(e))] for s, e in spans]
    for name in ("timelens", "qwen2.5-vl", "qwen3-vl"):
        assert get_preset(name).spans(answer) == whole


def test_timelens_rounding():
    assert get_preset("timelens").spans("The event happens in 18.5 - 23.5 seconds.") == [[18.0, 24.0]]
    assert get_preset("timelens").spans("The event happens in 0.4 - 0.6 seconds.") == [[0.0, 1.0]]


def test_presets_cite_their_sources_and_match_their_families():
    for p in PRESETS.values():
        assert "@" in p.source and "{query}" in p.prompt and p.family in DEFAULT_PRESET
        assert set(p.video) <= {"fps", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels"}
    assert get_preset("time-r1").answer_prefix == "<think>\n</think>\n"
    assert not get_preset("videochat-r1").video_first and get_preset("timelens").system is None
    # Time-R1's scorer counts IoU > t (src/vllm_inference/eval_all.py); TimeLens and VideoChat-R1 count >= t
    assert [get_preset(n).convention for n in ("time-r1", "timelens", "videochat-r1")] == [">", ">=", ">="]
    with pytest.raises(ValueError, match="unknown preset 'unitime'; valid: qwen2.5-vl"):
        get_preset("unitime")


def test_checkpoint_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen3_vl"}')
    assert checkpoint_type(tmp_path) == "qwen3_vl"
    (tmp_path / "config.json").write_text('{"vision": {}, "llm": {}}')    # a DaMO model folder
    assert checkpoint_type(tmp_path) is None
    assert checkpoint_type(tmp_path / "missing") is None


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_answers_training_teaches_read_back_as_their_spans(name):
    p = PRESETS[name]
    assert p.spans(p.answer([[12.0, 17.0]])) == [[12.0, 17.0]]
    # TimeLens' parser reads every span of its answer; the R1 parsers take the last pair
    two = [[1.0, 3.0], [4.0, 8.0]]
    assert p.spans(p.answer(two)) == (two if p.parser == "timelens" else two[-1:])
    written = {"timelens": "The event happens in 3.0 - 7.5 seconds.", "last_pair": "<answer>3.00 to 7.50</answer>"}
    assert p.answer([[3.0, 7.5]]) == ("<think>\n</think>\n" if name == "videochat-r1" else "") + written[p.parser]
