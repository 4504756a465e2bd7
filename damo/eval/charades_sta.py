"""Charades-STA (Gao et al., ICCV 2017): R1/R5 at IoU 0.3/0.5/0.7 and mIoU, as TimeChat, VTimeLLM and
E.T. Bench score it.

Gt spans are scored as the benchmark txt holds them, as those evaluators do, even where they end after
the video's length in ``Charades_v1_test.csv``; ``clip_gt`` clips them to the known lengths first, as
conversion does. Predictions: canonical JSONL, or a top-1 txt in the benchmark's own layout.

``parser="lmms-charades"`` scores the answers' text instead, as lmms-eval 0.7.3's task
``temporal_grounding_charades`` does (``lmms_eval/tasks/charades_sta/utils.py``: ``extract_time``,
``_temporal_grounding_compute_metrics``): the first pair :func:`lmms_charades_spans` reads, IoU against the
query's span, one answer per ``video>>>caption>>>timestamp`` key, percentages under lmms-eval's metric names.
"""
from __future__ import annotations

import re
from pathlib import Path

from damo.data.formats import charades_sta as reader
from damo.eval.benchmark import DURATIONS, PARSER, Benchmark, Option, samples_and_predictions
from damo.eval.grounding import CONVENTION, answer_text, hull_iou, percent_recall, score_grounding, unique_queries
from damo.eval.predictions import PredictionFile

CLIP_GT = Option("clip_gt", "clip gt ends to the CSV lengths (default: raw spans, as TimeChat and E.T. Bench score)",
                 default=False, flag=True)
LMMS_METRICS = ("charades_sta_IOU@3", "charades_sta_IOU@5", "charades_sta_IOU@7", "charades_sta_mIOU")

# lmms-eval's extract_time for this task, rule by rule. Its keywords are "starts", "ends", "happens in",
# "start time", "end time", "start", "end", "happen": any sentence holding one holds "start", "end" or "happen".
_KEYWORDS = ("start", "end", "happen")
_NUM = r"(\d+(?:\.\d+)?)"
_CLOCK = r"(\d{1,2}:\d{2}(?::\d{2})?)"
_CLOCK_RANGE = re.compile(rf"\b{_CLOCK}\s*[–-]\s*{_CLOCK}\b")
_RANGE = re.compile(rf"{_NUM}\s*[–-]\s*{_NUM}")
_CLOCK_TIME = re.compile(rf"\b{_CLOCK}\b")
_NUMBER = re.compile(rf"\b{_NUM}\b")
_SECONDS_RANGE = re.compile(rf"{_NUM}\s*s?\s*[–-]\s*{_NUM}\s*s?")


def _clock(text: str) -> float:
    *hm, s = (float(x) for x in text.split(":"))
    return sum(x * 60 ** (len(hm) - i) for i, x in enumerate(hm)) + s


def _pairs(values: list[float]) -> list[list[float]]:
    return [[values[i], values[i + 1]] for i in range(0, len(values) - 1, 2)]


def lmms_charades_spans(text: str) -> list[list[float]]:
    """At most one span, as lmms-eval's Charades-STA task reads an answer. Its quirks are kept: every "to"
    becomes "-" (inside words too: "stop" is "s-p"); sentences end only at "!", "?" and newlines; sentences
    without a keyword are read only when none has one; and the rules run in turn, each over every sentence:
    a clock range (m:ss or h:mm:ss) in the first sentence holding one, a number range in the first holding
    one, every clock time in order, the first number of each sentence, then "5s - 7s" ranges. Pairs are
    taken in order; the first is kept, its ends swapped if reversed."""
    text = text.lower().replace("a specific example is : 20.8 - 30.0 seconds", "").replace("to", "-")
    sentences = re.split(r"[!?\n]", text)
    candidates = [s for s in sentences if any(k in s for k in _KEYWORDS)] or sentences

    def first_sentence(pattern: re.Pattern, value) -> list[list[float]]:
        for s in candidates:
            found = pattern.findall(s)
            if found:
                return [[value(a), value(b)] for a, b in found]
        return []

    spans = (first_sentence(_CLOCK_RANGE, _clock) or first_sentence(_RANGE, float)
             or _pairs([_clock(t) for s in candidates for t in _CLOCK_TIME.findall(s)])
             or _pairs([float(found[0]) for s in candidates if (found := _NUMBER.findall(s))])
             or first_sentence(_SECONDS_RANGE, float))
    return [sorted(spans[0])] if spans else []


def lmms_metrics(gt_path: str | Path, preds: PredictionFile, subset: str, durations: str | Path | None,
                 raw_spans: bool) -> dict:
    """lmms-eval's four Charades-STA numbers from the predictions' answers."""
    samples, by_id = samples_and_predictions(reader, gt_path, preds, subset, durations, raw_spans=raw_spans)
    queries = unique_queries(samples)
    found = [lmms_charades_spans(answer_text(by_id, s.id)) for s in queries]
    ious = [hull_iou(s.spans[0], f[0]) if f else 0.0 for s, f in zip(queries, found)]
    return {"n": len(queries), "failed": sum(not f for f in found), **percent_recall(ious, LMMS_METRICS)}


def score(gt_path: str | Path, preds: PredictionFile, subset: str, durations: str | Path | None, convention: str,
          clip_gt: bool, parser: str) -> dict:
    if parser == "lmms-charades":
        return lmms_metrics(gt_path, preds, subset, durations, raw_spans=not clip_gt)
    return score_grounding(reader, gt_path, preds, subset, durations, convention, raw_spans=not clip_gt)


BENCHMARK = Benchmark(name="charades-sta", evaluator="TimeChat / VTimeLLM / E.T. Bench (R@IoU >=, raw gt spans); "
                                                     "2D-TAN's with --convention '>'",
                      reader=reader, scorer=score, options=(DURATIONS, CONVENTION, CLIP_GT, PARSER),
                      parsers={"spans": "the predictions' spans, as the evaluators above score them",
                               "lmms-charades": "lmms-eval 0.7.3's temporal_grounding_charades (its extract_time on "
                                                "the answers; percentages)"})
