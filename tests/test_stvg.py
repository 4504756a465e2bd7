"""Spatio-temporal grounding: boxes from the renderer's geometry, STVG samples, LLaVA-ST metrics."""
from __future__ import annotations

import json

import numpy as np
import pytest

from damo.data.schema import Sample
from damo.data.synthetic import (BACKGROUND, Event, VideoSpec, generate_spec, render_frames, sample_times,
                                 shape_boxes, stvg_samples)
from damo.eval.stvg import box_iou, stvg_metrics
from damo.spans import time_key
from damo.pipeline import DamoPipeline


def pixel_box(frame: np.ndarray) -> np.ndarray | None:
    """Bounding box of the non-background pixels, in [0, 1] (pixel edges)."""
    on = np.any(frame != np.asarray(BACKGROUND, np.uint8), -1)
    if not on.any():
        return None
    ys, xs = np.nonzero(on)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / frame.shape[1]


def test_shape_boxes_by_hand():
    ev = Event(kind="shape", start=2, end=6, shape="square", colour="red", size=16, x0=20.0, y0=30.0,
               x1=44.0, y1=30.0)
    spec = VideoSpec("standard", 0, "train", 0, 8, (Event(kind="tone", start=0, end=3, pitch="low"), ev))
    b = shape_boxes(spec, np.array([1.0, 2.0, 4.0, 5.5, 6.0]))
    assert list(b) == [1]                                       # the tone has no box
    assert np.isnan(b[1][[0, 4]]).all()                         # before start, and end is exclusive
    assert np.allclose(b[1][1], np.array([12, 22, 28, 38]) / 64)
    assert np.allclose(b[1][2], np.array([24, 22, 40, 38]) / 64)   # halfway: centre x = 32
    assert np.allclose(b[1][3], np.array([33, 22, 49, 38]) / 64)   # 3.5 / 4 of the way: x = 20 + 21 = 41


@pytest.mark.parametrize("shape", ["square", "circle", "triangle"])
def test_shape_boxes_match_rendered_pixels(shape):
    ev = Event(kind="shape", start=0, end=8, shape=shape, colour="blue", size=19, x0=14.3, y0=40.7,
               x1=49.1, y1=13.2)
    spec = VideoSpec("standard", 0, "train", 0, 8, (ev,))
    times = np.arange(16) / 2 + 0.25
    frames = render_frames(spec, times, 64)
    boxes = shape_boxes(spec, times)[0]
    tol = 1 / 64 if shape != "triangle" else 2 / 64           # a triangle's apex row may fall between pixels
    for f, b in zip(frames, boxes):
        px = pixel_box(f)
        assert np.abs(px - b).max() <= tol
        assert box_iou(px, b) > 0.85


def test_shape_boxes_match_pixels_on_generated_videos():
    for i in range(4):
        spec = generate_spec("standard", 7, "val", i)           # standard: shapes never overlap in time
        times = sample_times(spec.duration, 1.0)
        frames = render_frames(spec, times, 64)
        boxes = shape_boxes(spec, times)
        for j, f in enumerate(frames):
            visible = [b[j] for b in boxes.values() if not np.isnan(b[j]).any()]
            px = pixel_box(f)
            assert (px is None) == (not visible)
            if visible:
                assert len(visible) == 1 and box_iou(px, visible[0]) > 0.85


def test_stvg_samples_tubes_are_exact():
    seen = set()
    n = 0
    for i in range(30):
        spec = generate_spec("standard", 0, "train", i)
        samples = stvg_samples(spec)
        assert [s.to_dict() for s in samples] == [s.to_dict() for s in stvg_samples(spec)]   # deterministic
        times = sample_times(spec.duration, 1.0)
        for s in samples:
            n += 1
            seen.add(s.meta["kind"])
            assert s.task == "stvg" and len(s.spans) == 1 and ("where" in s.query)
            (a, b), = s.spans
            inside = [t for t in times if a <= t < b]
            assert sorted(s.meta["boxes"]) == sorted(time_key(t) for t in inside)
            ev = spec.events[s.meta["targets"][0]]
            assert ev.kind in ("shape", "flash") and ev.start <= a < b <= ev.end
            want = shape_boxes(spec, np.array(inside))[s.meta["targets"][0]]
            got = np.array([s.meta["boxes"][time_key(t)] for t in inside])
            assert np.allclose(got, want, atol=1e-4)
            assert s.answer.startswith("it ")
            back = Sample.from_dict(json.loads(json.dumps(s.to_dict())))     # JSONL round trip
            assert back.meta["boxes"] == s.meta["boxes"]
    assert n > 20 and {"stvg_appear", "stvg_sound"} <= seen


def test_stvg_metrics_hand_worked():
    full = [0.0, 0.0, 0.5, 0.5]
    gt = [{"span": [2, 6], "boxes": {"2.5": full, "3.5": full, "4.5": full, "5.5": full}},
          {"span": [0, 2], "boxes": {0.5: [0.1, 0.1, 0.3, 0.3], 1.5: [0.2, 0.2, 0.4, 0.4]}}]
    pred = [{"span": [3, 7], "boxes": {"3.5": full,                      # IoU 1
                                       "4.5": [0.0, 0.0, 0.5, 0.25],      # IoU 0.5
                                       "5.5": [0.5, 0.5, 1.0, 1.0],       # IoU 0
                                       "6.5": full}},                     # not in gt
            {"span": [0, 2], "boxes": {"0.5": [0.1, 0.1, 0.3, 0.3], "1.5": [0.2, 0.2, 0.4, 0.4]}}]
    m = stvg_metrics(gt, pred)
    # sample 1: tIoU 3/5; sIoU 1.5 / 3 frames in both; vIoU 1.5 / 5 frames in either. Sample 2: perfect.
    assert m["m_tIoU"] == pytest.approx((0.6 + 1) / 2)
    assert m["m_sIoU"] == pytest.approx((0.5 + 1) / 2)
    assert m["m_vIoU"] == pytest.approx((0.3 + 1) / 2)
    assert m["tIoU@0.5"] == 1.0 and m["tIoU@0.7"] == 0.5
    assert m["sIoU@0.5"] == 1.0                                   # 0.5 counts: >= convention
    assert m["vIoU@0.3"] == 1.0 and m["vIoU@0.5"] == 0.5


def test_stvg_metrics_misses_and_errors():
    gt = [{"span": [0, 4], "boxes": {"1": [0, 0, 1, 1]}}]
    m = stvg_metrics(gt, [{}])
    assert m["m_tIoU"] == 0 and m["m_sIoU"] == 0 and m["m_vIoU"] == 0
    assert stvg_metrics(gt, [{"span": [10, 12], "boxes": {"1.0": [0, 0, 1, 1]}}])["m_sIoU"] == 1.0
    with pytest.raises(ValueError, match="one \\(possibly"):
        stvg_metrics(gt, [])
    with pytest.raises(ValueError, match="expected 4"):
        stvg_metrics(gt, [{"span": [0, 4], "boxes": {"1": [0, 0, 1]}}])


def test_box_iou_by_hand():
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


def test_synth_spec_adds_stvg_queries_on_request():
    from damo.data.synthetic import synth_samples
    plain = synth_samples("synth://standard?n=6&seed=0")
    both = synth_samples("synth://standard?n=6&seed=0&stvg=1")
    st = [s for s in both if s.task == "stvg"]
    assert st and not any(s.task == "stvg" for s in plain)
    assert [s.to_dict() for s in both if s.task != "stvg"] == [s.to_dict() for s in plain]
    assert {s.task for s in synth_samples("synth://standard?n=6&seed=0&stvg=1&tasks=stvg")} == {"stvg"}
    with pytest.raises(ValueError, match="stvg must be 0 or 1"):
        synth_samples("synth://standard?n=2&stvg=yes")
    with pytest.raises(ValueError, match="unknown tasks"):
        synth_samples("synth://standard?n=2&tasks=stvg")          # without stvg=1 there are none


def stvg_sample() -> Sample:
    return Sample(id="s", video="v", duration=4.0, task="stvg", query="where is the red square?",
                  answer="it moves from the top left to the top right", spans=[[1.0, 3.0]],
                  meta={"boxes": {"2": [0.5, 0.0, 0.75, 0.25], "1": [0.0, 0.0, 0.25, 0.3]}})


def test_box_tokens_in_the_answer_with_soft_targets():
    import torch
    from damo.data.collate import Collator
    from damo.model.modeling_damo import DamoModel
    from damo.model.tokenizer import train_tokenizer
    from helpers import clip, tiny_cfg
    from test_model import TEXTS
    cfg = tiny_cfg()
    cfg.box_bins = 5                                     # anchors at 0, 0.25, 0.5, 0.75, 1
    torch.manual_seed(0)
    m = DamoModel(cfg, train_tokenizer(TEXTS, 300))
    b = Collator.for_model(m)([(stvg_sample(), clip(4, 0))])
    text = m.tokenizer.decode(b.input_ids[0])
    # first box (at 1 s) then last box (at 2 s), whatever the order of the JSON keys
    assert "from<x_0><y_0><x_1><y_1> to<x_2><y_0><x_3><y_1>" in text.replace(" <", "<")
    names = [m.tokenizer.convert_ids_to_tokens(r) for r in b.coord_ids.tolist()]
    assert [n[0] for n in names] == ["<x_0>", "<y_0>", "<x_1>", "<y_1>", "<x_2>", "<y_0>", "<x_3>", "<y_1>"]
    # 0.3 = anchor 1.2: 0.8 on <y_1>, 0.2 on <y_2>; the last box's 0.25 sits on <y_1> exactly
    assert b.coord_w[3].tolist() == pytest.approx([0.8, 0.2])
    assert b.coord_w[7].tolist() == pytest.approx([1.0, 0.0])
    out = m(b)
    assert out["logits"].shape[-1] == len(m.tokenizer)


def test_tube_interpolates_between_the_first_and_last_box():
    from damo.model.processing import tube
    t = tube([1.0, 4.0], [[0.0, 0.0, 0.2, 0.2], [0.4, 0.2, 0.6, 0.4]], [0.5, 1.5, 2.5, 3.5, 4.5])
    assert t["span"] == [1.0, 4.0]
    assert t["boxes"] == {"1.5": [0.0, 0.0, 0.2, 0.2], "2.5": [0.2, 0.1, 0.4, 0.3], "3.5": [0.4, 0.2, 0.6, 0.4]}
    assert tube([0.0, 1.0], [[0.1, 0.1, 0.2, 0.2]], [0.5])["boxes"] == {"0.5": [0.1, 0.1, 0.2, 0.2]}


def test_grounding_report_scores_stvg_tubes():
    from damo.data.schema import Prediction
    from damo.eval.evaluate import grounding_report
    s = stvg_sample()
    exact = Prediction(id="s", spans=[[1.0, 3.0]], tube={"span": [1.0, 3.0], "boxes": s.meta["boxes"]})
    r = grounding_report([s], [exact])["stvg"]
    assert r["m_tIoU"] == 1.0 and r["m_sIoU"] == 1.0 and r["n"] == 1
    r = grounding_report([s], [Prediction(id="s", spans=[[2.0, 3.0]])])["stvg"]       # a span, no boxes
    assert r["m_tIoU"] == 0.5 and r["m_sIoU"] == 0.0


def test_generated_box_tokens_become_a_tube():
    """Force the LM head through an answer with evidence and two boxes; predict_one turns it into a tube."""
    import torch
    from damo.model import tokenizer as tk
    from damo.model.modeling_damo import DamoModel
    from damo.model.tokenizer import train_tokenizer
    from helpers import clip, tiny_cfg
    from test_model import TEXTS
    cfg = tiny_cfg()
    cfg.box_bins = 5
    torch.manual_seed(0)
    m = DamoModel(cfg, train_tokenizer(TEXTS, 300)).eval()
    script = m.tokenizer.convert_tokens_to_ids([tk.EVI, tk.EVI_END, tk.EVI, "<x_1>", "<y_1>", "<x_2>", "<y_2>",
                                                "<x_3>", "<y_1>", "<x_4>", "<y_2>"]) + [m.tokenizer.eos_token_id]
    calls = iter(script)

    def forced(module, args, out):
        z = torch.full_like(out, -1e4)
        z[..., next(calls)] = 10.0
        return z

    hook = m.llm.get_output_embeddings().register_forward_hook(forced)
    try:
        r = DamoPipeline(m).answer([clip(6, 0)], ["where is the red square?"], 16)[0]
    finally:
        hook.remove()
    s, e, _ = r["spans"][0]
    assert r["tube"]["span"] == [s, e]
    frames = [t for t in clip(6, 0).times.tolist() if s <= t < e]
    boxes = [r["tube"]["boxes"][str(round(t, 3))] for t in frames]
    assert boxes[0] == pytest.approx([0.25, 0.25, 0.5, 0.5], abs=1e-3)       # one-hot anchors decode exactly
    if len(boxes) > 1:
        assert boxes[-1] == pytest.approx([0.75, 0.25, 1.0, 0.5], abs=1e-3)
