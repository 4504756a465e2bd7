"""Spatio-temporal video grounding (STVG): LLaVA-ST's ST-Align metrics and VidSTG's vIoU."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from damo.spans import span_iou


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
