"""Presets: open video LLMs run as their authors run them.

A preset names a published checkpoint and every setting its authors' evaluation code uses to
reach their published number: the prompt text and where the video sits in it, the system turn,
frame rate and frame limits, the pixel budget, the generation settings and the answer parser.
Each value is a fact read from the authors' repository; ``source`` names the files and the commit.
The parsers are ours, written to give the same spans as the authors' code on every answer (tests
quote answers from those repositories, including malformed ones).

Pixel budgets follow qwen-vl-utils' video rule (:mod:`damo.model.vlm_video`): ``min_pixels`` per
frame, ``total_pixels`` shared by the clip, both in ``tokens x (patch x merge)^2`` pixels.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

Spans = list[list[float]]

# ---------------------------------------------------------------- answer parsers
# "start to end" / "start and end": Time-R1 (evaluate.py, extract_answer) and VideoChat-R1
# (src_eval/evaluate_grounding.py, parse_timestamp_output) both take the *last* such pair anywhere
# in the answer (the thought included); a single space on each side, no other separator.
_PAIR = re.compile(r"(\d+\.?\d*) (?:to|and) (\d+\.?\d*)")


def last_pair(text: str) -> Spans:
    """The last ``a to b`` (or ``a and b``) in ``text`` as one span; none when there is none."""
    pairs = _PAIR.findall(text)
    return [[float(pairs[-1][0]), float(pairs[-1][1])]] if pairs else []


# TimeLens (timelens/utils.py, extract_time): clock times first (h:mm:ss or m:ss, optional
# fraction), paired in order; else "a - b" pairs, else "a to b" pairs; else every two numbers in
# order. Their scorer (evaluation/compute_metrics.py) uses the first pair.
_CLOCK = re.compile(r"\b(\d{1,2}:\d{2}:\d{2}(?:\.\d+)?|\d{1,2}:\d{2}(?:\.\d+)?)\b")
_RANGES = (re.compile(r"(\d+\.?\d*)\s*-\s*(\d+\.?\d*)"), re.compile(r"(\d+\.?\d*)\s+to\s+(\d+\.?\d*)"))
_NUMBER = re.compile(r"\b(\d+\.\d+|\d+)\b")


def _seconds(clock: str) -> float:
    *hm, s = clock.split(":")
    return sum(int(x) * 60 ** (len(hm) - i) for i, x in enumerate(hm)) + float(s)


def _paired(values: list[float]) -> Spans:
    return [[values[i], values[i + 1]] for i in range(0, len(values) - 1, 2)]


def timelens_spans(text: str) -> Spans:
    """Every span in ``text`` by TimeLens' rules, in order of appearance."""
    text = text.lower()
    clocks = _CLOCK.findall(text)
    if len(clocks) >= 2:
        return _paired([_seconds(c) for c in clocks])
    for pattern in _RANGES:
        found = pattern.findall(text)
        if found:
            return [[float(a), float(b)] for a, b in found]
    return _paired([float(x) for x in _NUMBER.findall(text)])


PARSERS: dict[str, Callable[[str], Spans]] = {"last_pair": last_pair, "timelens": timelens_spans}


# ---------------------------------------------------------------- presets
QWEN25_SYSTEM = "You are a helpful assistant."     # Qwen2.5-VL's chat template adds it when no system turn is given

TIME_R1_PROMPT = (
    'To accurately pinpoint the event "{query}" in the video, determine the precise time period of the event.\n\n'
    "Output your thought process within the <think> </think> tags, including analysis with either specific time "
    "ranges (xx.xx to xx.xx) in <timestep> </timestep> tags.\n\n"
    "Then, provide the start and end times (in seconds, precise to two decimal places) in the format \"start time "
    "to end time\" within the <answer> </answer> tags. For example: \"12.54 to 17.83\".")

VIDEOCHAT_R1_PROMPT = (
    'To accurately pinpoint the event "{query}" in the video, determine the precise time period of the event.\n\n'
    "Output your thought process within the <think> </think> tags, including analysis with either specific "
    "timestamps (xx.xx) or time ranges (xx.xx to xx.xx) in <timestep> </timestep> tags.\n\n"
    "Then, provide the start and end times (in seconds, precise to two decimal places) in the format \"start time "
    "to end time\" within the <answer> </answer> tags. For example: \"12.54 to 17.83\".")

TIMELENS_PROMPT = ("Please find the visual event described by the sentence '{query}', determining its starting and "
                   "ending times. The format should be: 'The event happens in <start time> - <end time> seconds'.")

# TimeLens' supervised answers (TencentARC/TimeLens@5d90c067246ddb11db3203adbb0085bdc48d9e5e,
# training/data/grounding.py, _format_response); the R1 prompts ask for "start time to end time" to two
# decimals inside <answer> tags, after a thought that our targets leave empty (Time-R1's --use_nothink prefix)
TIMELENS_REPLY, TIMELENS_SPAN = "The event happens in {spans}.", "{start:.1f} - {end:.1f} seconds"
R1_REPLY, R1_SPAN = "<answer>{spans}</answer>", "{start:.2f} to {end:.2f}"

OMNI_SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
               "auditory and visual inputs, as well as generating text and speech.")


@dataclass(frozen=True)
class Preset:
    name: str
    checkpoint: str            # the published weights (hub id)
    family: str                # transformers model_type the checkpoint loads as
    prompt: str                # the user's text; {query} is the question
    system: str | None         # the system turn as the authors' chat template renders it (None: no system turn)
    video_first: bool          # the video comes before the text in the user turn
    video: dict                # VideoSpec fields: fps, min_frames, max_frames, min_pixels, max_pixels, total_pixels
    max_new_tokens: int
    parser: str                # a key of PARSERS
    source: str                # repository, files and commit every setting above comes from
    generation: dict = field(default_factory=lambda: {"do_sample": False})   # model.generate arguments
    answer_prefix: str = ""    # text the authors append after the assistant turn opens
    unit: float = 0.0          # > 0: spans rounded to multiples of this many seconds, as the authors' evaluation does
    convention: str = ">="     # R@t counts IoU >= t, or IoU > t (">"), as the authors' scorer does
    reply: str = TIMELENS_REPLY  # the answer training teaches: {spans} is each span as span_text, comma-separated
    span_text: str = TIMELENS_SPAN  # one span of the answer ({start}, {end}: seconds)

    def answer(self, spans: Spans) -> str:
        """The answer training teaches for ``spans``, which :meth:`spans` reads back (the ``last_pair``
        parser the last span of several)."""
        return self.reply.format(spans=", ".join(self.span_text.format(start=s, end=e) for s, e, *_ in spans))

    def spans(self, answer: str) -> Spans:
        """The answer's spans as the authors' evaluation reads them (rounding with Python's ``round``:
        halves to even, as theirs)."""
        found = PARSERS[self.parser](answer)
        if not self.unit:
            return found
        return [[round(s / self.unit) * self.unit, round(e / self.unit) * self.unit] for s, e in found]


def _timelens_video(tokens_side: int) -> dict:
    """TimeLens' evaluation settings (scripts/eval_timelens_bench.sh): 2 fps, at least 64 tokens a frame,
    14,336 tokens for the clip, in pixels of ``tokens_side``^2 per token (28 for Qwen2.5-VL, 32 for Qwen3-VL)."""
    return {"fps": 2.0, "min_pixels": 64 * tokens_side ** 2, "total_pixels": 14336 * tokens_side ** 2,
            "max_pixels": 768 * tokens_side ** 2}


_TIMELENS = ("TencentARC/TimeLens@5d90c067246ddb11db3203adbb0085bdc48d9e5e: scripts/eval_timelens_bench.sh "
             "(fps 2, min_tokens 64, total_tokens 14336), evaluation/utils.py (GROUNDER_PROMPT, video before text, "
             "no system turn), evaluation/eval_dataloader.py (greedy, max_new_tokens 512, spans rounded to whole "
             "seconds: UNIT 1.0), timelens/utils.py (extract_time), evaluation/compute_metrics.py (first pair scored)")
# qwen-vl-utils' defaults where the authors set nothing (QwenLM/Qwen3-VL@96588727e44c78b25ba03ea03b8e12f7e64fd0da,
# qwen-vl-utils/src/qwen_vl_utils/vision_process.py: FPS 2, FPS_MIN_FRAMES 4, FPS_MAX_FRAMES 768, 128-768 tokens a frame)
_R1_VIDEO = {"fps": 2.0, "min_pixels": 16 * 28 * 28, "total_pixels": 3584 * 28 * 28, "max_pixels": 768 * 28 * 28}

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset(name="qwen2.5-vl", checkpoint="Qwen/Qwen2.5-VL-7B-Instruct", family="qwen2_5_vl", prompt=TIMELENS_PROMPT,
           system=QWEN25_SYSTEM, video_first=True, video=_timelens_video(28), max_new_tokens=512, parser="timelens",
           unit=1.0,
           source="the base model as TimeLens evaluates it (README table row Qwen2.5-VL-7B-Instruct); " + _TIMELENS),
    Preset(name="qwen3-vl", checkpoint="Qwen/Qwen3-VL-8B-Instruct", family="qwen3_vl", prompt=TIMELENS_PROMPT,
           system=None, video_first=True, video=_timelens_video(32), max_new_tokens=512,
           parser="timelens", unit=1.0,
           source="the base model as TimeLens evaluates it (README table row Qwen3-VL-8B-Instruct); " + _TIMELENS),
    Preset(name="timelens", checkpoint="TencentARC/TimeLens-8B", family="qwen3_vl", prompt=TIMELENS_PROMPT,
           system=None, video_first=True, video=_timelens_video(32), max_new_tokens=512, parser="timelens",
           unit=1.0, source=_TIMELENS),
    Preset(name="time-r1", checkpoint="Boshenxx/Time-R1-7B", family="qwen2_5_vl", prompt=TIME_R1_PROMPT,
           system=QWEN25_SYSTEM, video_first=True, video=_R1_VIDEO, max_new_tokens=1024, parser="last_pair",
           answer_prefix="<think>\n</think>\n", convention=">", reply=R1_REPLY, span_text=R1_SPAN,
           source="xiaomi-research/time-r1@7f2b5944a0c35993da80634a459d5a48a3a5431e: scripts/test.sh "
                  "(--use_r1_thinking_prompt --use_nothink, max_new_tokens 1024), src/vllm_inference/data/config.py "
                  "(DEFAULT_TG_PROMPT r1), src/vllm_inference/data/__init__.py (system turn, video before text, "
                  "min_pixels 16x28x28, total_pixels 3584x28x28, the empty thought after the assistant turn), "
                  "src/vllm_inference/vllm_infer.py (temperature 0), evaluate.py (extract_answer), "
                  "src/vllm_inference/eval_all.py (R@t counts IoU > t)"),
    Preset(name="videochat-r1", checkpoint="OpenGVLab/VideoChat-R1_7B", family="qwen2_5_vl",
           prompt=VIDEOCHAT_R1_PROMPT, system=QWEN25_SYSTEM, video_first=False, video=_R1_VIDEO, max_new_tokens=2048,
           parser="last_pair", generation={}, reply="<think>\n</think>\n" + R1_REPLY,
           span_text=R1_SPAN,
           source="OpenGVLab/VideoChat-R1@73b2ea9ac83ad5c0bcd893bffd1cbb2e7c167068: src_eval/evaluate_grounding.py "
                  "(text before video, no system turn so the chat template's default, total_pixels 3584x28x28, "
                  "min_pixels 16x28x28, model.generate with the checkpoint's own generation config, max_new_tokens "
                  "2048, parse_timestamp_output), src_eval/eval_prompts.py (GROUND_TEMPLATE_THINK)"),
    Preset(name="qwen2.5-omni", checkpoint="Qwen/Qwen2.5-Omni-7B", family="qwen2_5_omni_thinker",
           prompt=TIMELENS_PROMPT, system=OMNI_SYSTEM, video_first=True,
           video={"fps": 2.0, "min_pixels": 128 * 28 * 28, "max_pixels": 768 * 28 * 28}, max_new_tokens=512,
           parser="timelens",
           source="QwenLM/Qwen2.5-Omni@f8bf58c6c68a66d3543f625ca08e285daf8fff53: README.md (system prompt, "
                  "use_audio_in_video), qwen-omni-utils/src/qwen_omni_utils/v2_5/vision_process.py (fps 2, 128-768 "
                  "tokens a frame); the grounding prompt and parser are TimeLens' (no Omni grounding prompt is "
                  "published)"),
]}
# the preset a checkpoint folder gets when none is named: its family's base model
DEFAULT_PRESET = {"qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl", "qwen2_5_omni_thinker": "qwen2.5-omni"}
# a checkpoint's model type -> the family DaMO runs it as (a whole Qwen2.5-Omni checkpoint runs its thinker)
FAMILY_OF = {kind: kind for kind in DEFAULT_PRESET} | {"qwen2_5_omni": "qwen2_5_omni_thinker"}


def checkpoint_type(path: str | Path) -> str | None:
    """The family (``qwen2_5_vl``, ``qwen3_vl``, ``qwen2_5_omni_thinker``) of a local checkpoint folder
    or of the base of a trained VLM folder (``vlm.json``, :meth:`damo.model.vlm.VideoLLM.save`), else
    None (a DaMO model folder, a hub id, no folder)."""
    saved, cfg = Path(path) / "vlm.json", Path(path) / "config.json"
    kind = (json.loads(saved.read_text())["family"] if saved.is_file() else
            json.loads(cfg.read_text()).get("model_type") if cfg.is_file() else None)
    return FAMILY_OF.get(kind)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]
