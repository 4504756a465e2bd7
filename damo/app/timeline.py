"""Timeline pictures of a grounded answer: thumbnails, evidence score curves, spans, ground truth.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global figure state), so the
web demo's threads can draw at the same time and no display is ever needed. matplotlib is an
optional extra: ``pip install 'damo[plot]'``.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np

from damo.api import Grounding

PREDICTED, TRUTH = "#d9480f", "#2b8a3e"


def require_matplotlib():
    """Figure and Agg canvas classes, or ImportError naming the extra to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("drawing a timeline needs matplotlib: pip install 'damo[plot]'") from None
    return Figure, FigureCanvasAgg


def thumbnail_strip(frames: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` evenly spaced frames side by side -> image ``(h, count*w, 3)`` and the frame indices."""
    T = frames.shape[0]
    idx = np.unique(np.linspace(0, T - 1, min(count, T)).round().astype(int))
    return np.concatenate(list(frames[idx]), axis=1), idx    # (h, n*w, 3)


def plot_timeline(g: Grounding, path: str | Path | None = None, truth: list[list[float]] | None = None,
                  thumbnails: int = 16, width: float = 10.0) -> bytes:
    """Draw ``g`` as a PNG (returned, and written to ``path`` when given).

    Rows: a strip of frame thumbnails over the video's time axis; each answer evidence token's
    per-frame score curve (dotted: the level, a fraction of the
    curve's max, above which the span decoder keeps frames); the predicted
    spans, best first and labelled with their scores, and ``truth`` spans when given.
    """
    Figure, FigureCanvasAgg = require_matplotlib()
    D = max(g.duration, 1e-3)
    fig = Figure(figsize=(width, 5.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_img, ax_s, ax_sp = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1.1, 2.4, 1.0]})
    title = f"Q: {g.query}\nA: {g.answer or '(no answer text)'}"
    fig.suptitle("\n".join(textwrap.shorten(line, 140) for line in title.split("\n")), fontsize=9, x=0.01,
                 ha="left")

    if g.frames is not None and len(g.frames):
        strip, idx = thumbnail_strip(g.frames, thumbnails)
        ax_img.imshow(strip, extent=(0, D, 0, 1), aspect="auto", interpolation="nearest")
    ax_img.set_yticks([])
    ax_img.set_ylabel("frames", fontsize=8)

    colours = [f"C{i % 10}" for i in range(len(g.scores))]
    for i, (s, c) in enumerate(zip(g.scores, colours)):
        ax_s.plot(g.times, s, color=c, lw=1.4, marker="." if len(s) <= 60 else None, label=f"<evi> {i + 1}")
        ax_s.axhline(g.threshold * float(np.max(s)), color=c, lw=0.8, ls=":")   # the span decoder's keep level
    for s, e, _ in g.spans:
        ax_s.axvspan(s, e, color=PREDICTED, alpha=0.12, lw=0)
    if g.scores:
        ax_s.legend(loc="upper right", fontsize=7, ncols=min(len(g.scores), 4))
    else:
        ax_s.text(0.5, 0.5, "the answer holds no evidence token", transform=ax_s.transAxes, ha="center",
                  va="center", fontsize=8, color="0.4")
    ax_s.set_ylim(0, 1.05)
    ax_s.set_ylabel("frame score", fontsize=8)

    rows = [("predicted", PREDICTED, [(s, e, p) for s, e, p in g.spans])]
    if truth is not None:
        rows.append(("truth", TRUTH, [(s, e, None) for s, e in truth]))
    for y, (label, colour, spans) in enumerate(reversed(rows)):
        ax_sp.broken_barh([(s, max(e - s, D * 0.003)) for s, e, _ in spans], (y + 0.15, 0.7), color=colour)
        for rank, (s, e, p) in enumerate(spans):
            if p is not None:
                ax_sp.text((s + e) / 2, y + 0.5, f"#{rank + 1} {p:.2f}", ha="center", va="center", fontsize=7,
                           color="white" if e - s > D * 0.08 else "black")
    ax_sp.set_yticks([y + 0.5 for y in range(len(rows))], [r[0] for r in reversed(rows)], fontsize=8)
    ax_sp.set_ylim(0, len(rows))
    ax_sp.set_xlim(0, D)
    ax_sp.set_xlabel("time (s)", fontsize=8)
    for ax in (ax_img, ax_s, ax_sp):
        ax.tick_params(labelsize=7)

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    png = buf.getvalue()
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(png)
    return png
