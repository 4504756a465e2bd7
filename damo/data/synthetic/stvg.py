"""Spatio-temporal grounding (STVG): where-and-when questions with exact box tubes."""
from __future__ import annotations

import numpy as np

from damo.data.schema import Sample
from damo.spans import overlap, time_key

from .events import CANVAS, STREAMS, VideoSpec, _check_args, _seed_sequence
from .queries import _look, _modality, _occurrences, _Occ, _pick, _verb
from .render import sample_times

def shape_boxes(spec: VideoSpec, times: np.ndarray) -> dict[int, np.ndarray]:
    """Bounding box of every visual event at ``times`` (seconds): ``{event index: (T, 4)}``.

    Boxes are ``[x0, y0, x1, y1]`` in [0, 1] of the canvas, NaN where the event is not on
    screen. They come from the renderer's geometry (:func:`render_frames`): the centre moves
    linearly over ``[start, end)`` and every shape (square, circle, apex-up triangle) spans
    ``centre +- size / 2`` on both axes.
    """
    times = np.asarray(times, dtype=np.float64)
    out: dict[int, np.ndarray] = {}
    for i, ev in enumerate(spec.events):
        if "visual" not in STREAMS[ev.kind]:
            continue
        box = np.full((len(times), 4), np.nan)
        on = (times >= ev.start) & (times < ev.end)
        frac = (times[on] - ev.start) / (ev.end - ev.start)
        cx, cy = ev.x0 + frac * (ev.x1 - ev.x0), ev.y0 + frac * (ev.y1 - ev.y0)
        r = ev.size / 2
        box[on] = np.clip(np.stack([cx - r, cy - r, cx + r, cy + r], 1) / CANVAS, 0.0, 1.0)
        out[i] = box
    return out


STVG_TEMPLATES = {
    "stvg_appear": ("where and when is the {look} on screen?", "when and where does the {look} appear?",
                    "find the {look}: where is it and when?"),
    "stvg_sound": ("where is the {look} while the {sound} {verb}s?",
                   "while the {sound} {verb}s, where is the {look}?"),
    "stvg_flash": ("where is the {look} when it flashes with the beep?",
                   "where and when does the {look} flash to the beep?"),
}


def _region(box: np.ndarray) -> str:
    """Coarse 3 x 3 screen region of a box centre, in words ("top left", "centre", ...)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    col = ("left", "centre", "right")[min(2, int(cx * 3))]
    row = ("top", "middle", "bottom")[min(2, int(cy * 3))]
    return "centre" if (row, col) == ("middle", "centre") else f"{row} {col}"


def stvg_samples(spec: VideoSpec, video: str | None = None, fps: float = 1.0) -> list[Sample]:
    """Spatio-temporal grounding questions (where and when) with exact tubes.

    One query per kind that applies, in a fixed kind order: a uniquely described shape
    (``stvg_appear``), the one shape on screen during a unique sound (``stvg_sound``; the tube
    is the overlap), a flashing shape (``stvg_flash``). The tube is ``spans = [[s, e]]`` plus
    ``meta["boxes"] = {time_key(t): [x0, y0, x1, y1]}`` at the frame times (``fps``, as
    :func:`sample_times`) inside ``[s, e)``. The answer says in words where the shape is, so the
    samples also train through the ordinary text collator (task ``"stvg"``). Template choices
    come from their own seeded stream, so the other samples of the video do not change.
    """
    _check_args(spec.difficulty, spec.split, spec.index)
    rng = np.random.default_rng(_seed_sequence(spec.difficulty, spec.seed, spec.split, spec.index).spawn(3)[2])
    ev = spec.events
    occ = _occurrences(spec)
    unique = [v[0] for v in occ.values() if len(v) == 1]
    uv = [o for o in unique if o.key[0] == "v"]
    ua = [o for o in unique if o.key[0] == "a"]
    times = sample_times(spec.duration, fps)
    boxes = shape_boxes(spec, times)
    queries: list[tuple[str, str, _Occ, int, int]] = []     # (kind, query, visual occurrence, start, end)

    def tpl(kind: str, **words: str) -> str:
        return _pick(rng, STVG_TEMPLATES[kind]).format(**words)

    cands = [o for o in uv if ev[o.event].kind == "shape"]
    if cands:
        o = _pick(rng, cands)
        queries.append(("stvg_appear", tpl("stvg_appear", look=_look(o.key)), o, o.start, o.end))
    pairs = []
    for a in ua:
        vs = [o for k, os in occ.items() if k[0] == "v" for o in os if overlap((o.start, o.end), (a.start, a.end)) > 0]
        if len(vs) == 1 and len(occ[vs[0].key]) == 1 and ev[a.event].kind != "flash":
            pairs.append((vs[0], a))
    if pairs:
        v, a = _pick(rng, pairs)
        queries.append(("stvg_sound", tpl("stvg_sound", look=_look(v.key), sound=a.key[1], verb=_verb(a.key[1])), v,
                        max(v.start, a.start), min(v.end, a.end)))
    cands = [o for o in uv if ev[o.event].kind == "flash"]
    if cands:
        o = _pick(rng, cands)
        queries.append(("stvg_flash", tpl("stvg_flash", look=_look(o.key)), o, o.start, o.end))

    events = [e.to_dict() for e in ev]
    out: list[Sample] = []
    for k, (kind, query, o, s, e) in enumerate(queries):
        inside = np.nonzero((times >= s) & (times < e))[0]
        if inside.size == 0:            # a sparse fps can step over a short overlap: no frame to ask about
            continue
        tube = {time_key(times[j]): [round(float(x), 4) for x in boxes[o.event][j]] for j in inside}
        first, last = boxes[o.event][inside[0]], boxes[o.event][inside[-1]]
        a, b = _region(first), _region(last)
        where = f"it moves from the {a} to the {b}" if a != b else f"it is at the {a}"
        out.append(Sample(
            id=f"{spec.split}-{spec.index:05d}-stvg{k}", video=video or spec.uri, duration=float(spec.duration),
            task="stvg", query=query, answer=where, spans=[[float(s), float(e)]], source="synthetic",
            meta={"modality": _modality([ev[o.event]]), "kind": kind, "targets": [o.event], "boxes": tube,
                  "fps": float(fps), "events": events, "video_index": spec.index,
                  "difficulty": spec.difficulty, "uri": spec.uri}))
    return out
