"""QVHighlights moment retrieval and highlight detection, as moment_detr ``standalone_eval/eval.py``."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from damo.data.formats import qvhighlights as reader
from damo.data.formats.common import read_jsonl, require, to_float
from damo.eval.benchmark import Benchmark
from damo.eval.predictions import PredictionFile
from damo.spans import with_rank_scores

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


def _qid_text(qid: object, where: str) -> str:
    if isinstance(qid, bool) or not isinstance(qid, (int, str)):
        raise ValueError(f"{where}: qid must be a number or text, got {qid!r}")
    return str(qid)


def read_gt(path: str | Path) -> list[dict]:
    """The gt records of ``highlight_*_release.jsonl``; a qid that is not a number or text, or that
    appears twice (``2579`` and ``"2579"`` are one query), is an error naming the file and lines:
    the official evaluator would score such a query twice without a word."""
    out, seen = [], {}
    for n, rec in read_jsonl(path):
        where = f"{path}:{n}"
        qid = _qid_text(require(rec, ("qid",), where)["qid"], where)
        if qid in seen:
            raise ValueError(f"{where}: qid {rec['qid']!r} appears again (first at {seen[qid]}); keep one record "
                             "per query")
        seen[qid] = where
        out.append(rec)
    return out


def score(gt_path: str | Path, preds: PredictionFile, subset: str) -> dict:
    """Submission JSONL (``qid, pred_relevant_windows[, pred_saliency_scores]``) or canonical JSONL,
    whose spans are ranked best first (a missing score takes a rank-decreasing one)."""
    gt = read_gt(gt_path)
    qids = {str(g["qid"]): g["qid"] for g in gt}   # a prediction's 2579 or "2579" names gt qid 2579
    if preds.is_canonical():
        subs = []
        for p in preds.canonical().values():
            subs.append({"qid": qids.get(p.id, p.id), "pred_relevant_windows": with_rank_scores(p.spans)})
    else:
        rows = preds.rows()
        if rows is None:
            raise ValueError("QVHighlights predictions must be a submission JSONL (qid, pred_relevant_windows) "
                             "or canonical JSONL")
        kept: dict = {}
        seen: dict = {}
        for r, where in zip(rows, rows.where):
            require(r, ("qid", "pred_relevant_windows"), where)
            qid = qids.get(_qid_text(r["qid"], where), r["qid"])
            sub = {**r, "qid": qid, "pred_relevant_windows": preds.spans(r["pred_relevant_windows"], where, (3,))}
            if "pred_saliency_scores" in r:
                if not isinstance(r["pred_saliency_scores"], list):
                    raise ValueError(f"{where}: pred_saliency_scores must be a list of numbers")
                sub["pred_saliency_scores"] = [to_float(x, "saliency score", where) for x in r["pred_saliency_scores"]]
            if preds.keep(seen, qid, where, "qid"):
                kept[qid] = sub
        subs = list(kept.values())
    if subset == "predicted":
        have = {d["qid"] for d in subs}
        gt = [g for g in gt if g["qid"] in have]
    return qvhighlights_metrics(gt, subs)


BENCHMARK = Benchmark(name="qvhighlights", evaluator="moment_detr standalone_eval/eval.py", reader=reader, scorer=score)
