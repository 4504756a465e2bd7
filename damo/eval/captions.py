"""Dense video captioning: densevid_eval's scores and SODA_c, the metrics of the ActivityNet Captions and
YouCook2 benchmarks (:mod:`damo.eval.activitynet_captions`, :mod:`damo.eval.youcook2`) and of E.T. Bench's
dvc/slc tasks.

pycocoevalcap (and Java for METEOR and the PTB tokeniser) are imported when a
:class:`CaptionScorer` is made.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import numpy as np

from damo.data.formats.common import read_json, require
from damo.eval.benchmark import Option
from damo.eval.predictions import PredictionFile

CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
UNMATCHED_CAPTIONS = ("random", "abc123")
UNMATCHED_CAPTION = Option("unmatched_caption", "reference for a caption matching no gt segment: random letters "
                                                "(densevid_eval, TimeChat) or PDVC evaluate2018's 'abc123!@#'",
                           UNMATCHED_CAPTIONS, "random")
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


def score_dense_captions(gt_path: str | Path, preds: PredictionFile, subset: str, unmatched_caption: str) -> dict:
    """An ActivityNet challenge JSON (``results``) against the gt JSON: densevid_eval's scores plus SODA_c."""
    gt = read_json(gt_path)
    doc = preds.data
    if not (isinstance(doc, dict) and isinstance(doc.get("results"), dict)):
        raise ValueError("dense-captioning predictions must be an ActivityNet challenge JSON with 'results'")
    pred = {}
    for vid, props in doc["results"].items():
        where = f"{preds.path}: results[{vid!r}]"
        if not isinstance(props, list):
            raise ValueError(f"{where}: expected a list of {{timestamp, sentence}} proposals")
        pred[vid] = []
        for i, p in enumerate(props):
            require(p, ("timestamp", "sentence"), f"{where}[{i}]")
            if not isinstance(p["sentence"], str):
                raise ValueError(f"{where}[{i}]: 'sentence' must be text, got {type(p['sentence']).__name__}")
            (span,) = preds.spans([p["timestamp"]], f"{where}[{i}]", (2,))
            pred[vid].append({"timestamp": span, "sentence": p["sentence"]})
    if not any(pred.values()):
        raise ValueError(f"{preds.path}: 'results' holds no proposals")
    if subset == "predicted":
        gt = {v: g for v, g in gt.items() if v in pred}
    with CaptionScorer() as captioner:
        out = dense_caption_metrics(gt, pred, captioner=captioner, unmatched_caption=unmatched_caption)
        out.update(soda_c(gt, pred, captioner=captioner))
    return out
