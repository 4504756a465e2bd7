"""Coordinate tokens and language-aligned positional embeddings (LAPE, LLaVA-ST section 3.2).

LLaVA-ST extends the vocabulary with coordinate tokens: the time axis is split into
``n - 1`` equal segments, giving ``n`` anchors ``<t_0> .. <t_{n-1}>`` at relative positions
``i / (n - 1)`` of the video; the width and height axes likewise get ``<x_i>`` and ``<y_i>``
(the paper's ``<w_i>`` and ``<h_i>``: separate sets per axis, ``M_w + M_h`` tokens). Each
token is a word embedding in the LLM input table and a row of the output layer (eq. 4), and
``(input + output embedding) / 2`` of the anchors, linearly interpolated to where a visual
token sits, is added to that token as its positional embedding (eq. 5): the time term per
frame (:func:`frame_time_embedding`), the width and height terms per cell of a frame's token
grid (:func:`grid_position_embedding`).

As in the released code (``llava/model/llava_arch.py``):

- a coordinate value enters the LLM as the linear interpolation of its two neighbouring
  anchors' input embeddings (``token_transfer``), never snapped to the closer one;
- the anchors' input and output rows share their gradients with their neighbours,
  "Neighboring Token Propagation" (``reparam``): the rows keep their values, and a gradient
  ``g`` on the anchors becomes ``(I + M) g`` with ``M_ij = 2^-|i-j|`` (:func:`propagate`,
  :func:`register_propagation`). Anchors that a batch never names still move with the ones it
  does, and neighbours move most alike. The paper (section 3.2) credits the same effect, "the
  information transfer among the special token embeddings", to the interpolation.

Targets and decoding: the paper encodes a coordinate by its closest anchor. As in the
released LLaVA-ST training code (``llava/model/language_model/llava_qwen.py``), we train with a
soft label on the two anchors around the value, weighted by linear interpolation (a value on an
anchor gets a one-hot label), and read a value back from the two nearest anchors: the most
probable anchor and its more probable neighbour, averaged by their probabilities. Values
between anchors therefore survive the round trip exactly instead of snapping to the grid.

Dynamic-VLM (section 5.3) instead writes each frame's time as text before its tokens
("1s: <image>; 2s: <image>; ..."); :func:`timestamp_prompt` makes those prefixes.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerFast

from damo.model.checks import require


def time_token_names(n: int) -> list[str]:
    """``["<t_0>", ..., "<t_{n-1}>"]``: the temporal anchors."""
    _check_bins(n)
    return [f"<t_{i}>" for i in range(n)]


def box_token_names(n: int) -> tuple[list[str], list[str]]:
    """``(["<x_0>" ..], ["<y_0>" ..])``: width and height anchors, ``n`` per axis."""
    _check_bins(n)
    return [f"<x_{i}>" for i in range(n)], [f"<y_{i}>" for i in range(n)]


def _check_bins(n: int) -> None:
    if n < 2:
        raise ValueError(f"coordinate tokens need at least 2 anchors (both ends of the axis), got {n}")


def _add(tok: PreTrainedTokenizerFast, names: list[str]) -> list[int]:
    # Special added tokens are never split by the tokenizer's pre-tokenizer or BPE merges.
    tok.add_tokens(names, special_tokens=True)
    ids = tok.convert_tokens_to_ids(names)
    if tok.unk_token_id is not None and tok.unk_token_id in ids:
        raise ValueError("the tokenizer could not add the coordinate tokens")
    return ids


def add_time_tokens(tok: PreTrainedTokenizerFast, n: int) -> list[int]:
    """Add ``<t_0> .. <t_{n-1}>`` to ``tok`` (idempotent); returns their ids in anchor order.

    Resize the LLM's embeddings to ``len(tok)`` afterwards (``resize_token_embeddings``).
    """
    return _add(tok, time_token_names(n))


def add_box_tokens(tok: PreTrainedTokenizerFast, n: int) -> tuple[list[int], list[int]]:
    """Add ``<x_i>`` and ``<y_i>`` (``n`` each) to ``tok``; returns (x ids, y ids) in anchor order."""
    xs, ys = box_token_names(n)
    return _add(tok, xs), _add(tok, ys)


def coordinate_axes(tok: PreTrainedTokenizerFast, time_bins: int, box_bins: int) -> dict[str, list[int]]:
    """LAPE's coordinate tokens (LLaVA-ST eq. 4) added to ``tok`` (idempotent) -> their ids per axis, in
    anchor order: ``t`` with ``time_bins`` > 0, ``x`` and ``y`` with ``box_bins`` > 0."""
    axes = {"t": add_time_tokens(tok, time_bins)} if time_bins else {}
    if box_bins:
        axes["x"], axes["y"] = add_box_tokens(tok, box_bins)
    return axes


# --------------------------------------------------------------------- anchor arithmetic

def interpolate_anchors(table: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of anchor rows ``table (n, C)`` at relative positions ``rel (...)`` in [0, 1].

    Anchor i sits at ``i / (n - 1)``; positions outside [0, 1] clamp to the ends. -> ``(..., C)``.
    """
    n = table.shape[0]
    u = rel.float().clamp(0, 1) * (n - 1)                                      # (...) in anchor units
    lo = u.floor().long().clamp(max=n - 2)
    w = (u - lo).unsqueeze(-1).to(table.dtype)                                 # (..., 1)
    return table[lo] * (1 - w) + table[lo + 1] * w


def anchor_pair(rel: float, n: int) -> tuple[int, float]:
    """One value's soft label in sparse form: the lower anchor ``lo`` around relative position
    ``rel`` (clamped to [0, 1]) and the weight ``w`` of ``lo + 1`` (``lo`` gets ``1 - w``)."""
    _check_bins(n)
    u = min(max(float(rel), 0.0), 1.0) * (n - 1)
    lo = min(math.floor(u), n - 2)
    return lo, u - lo


def decode_position(logits: torch.Tensor) -> torch.Tensor:
    """Relative position in [0, 1] from logits ``(..., n)`` over the anchors -> ``(...)``.

    Expected position over the most probable anchor and its more probable neighbour,
    with their probabilities renormalised (the inverse of two-anchor soft targets, :func:`anchor_pair`).
    """
    n = logits.shape[-1]
    _check_bins(n)
    p = logits.float().softmax(-1)
    top = p.argmax(-1, keepdim=True)                                           # (..., 1)
    left = p.gather(-1, (top - 1).clamp(min=0)).masked_fill(top == 0, -1.0)
    right = p.gather(-1, (top + 1).clamp(max=n - 1)).masked_fill(top == n - 1, -1.0)
    nb = torch.where(right > left, top + 1, top - 1)                           # better neighbour
    p_top, p_nb = p.gather(-1, top), p.gather(-1, nb)
    u = (top * p_top + nb * p_nb) / (p_top + p_nb)
    return (u / (n - 1)).squeeze(-1)


# ---------------------------------------------------------------------------- time

def _relative(t: torch.Tensor, duration: torch.Tensor | float) -> torch.Tensor:
    d = torch.as_tensor(duration, dtype=torch.float32)
    require((d > 0).all(), "video duration must be > 0 seconds")
    return t.float() / d


def time_to_token(t: float, duration: float, n: int) -> str:
    """The closest anchor's token for time ``t`` (the paper's hard encoding)."""
    _check_bins(n)
    if duration <= 0:
        raise ValueError(f"video duration must be > 0 seconds, got {duration}")
    return f"<t_{round(min(max(t / duration, 0.0), 1.0) * (n - 1))}>"


def propagation_matrix(n: int, device: torch.device | None = None) -> torch.Tensor:
    """``M (n, n)`` with ``M_ij = 2^-|i-j|``: how much of anchor j's gradient anchor i also
    receives under Neighboring Token Propagation (LLaVA-ST code, ``llava_arch.py``)."""
    i = torch.arange(n, dtype=torch.float32, device=device)
    return 2.0 ** -(i[:, None] - i[None]).abs()


def propagate(rows: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Neighboring Token Propagation of anchor rows ``(n, C)``: the same values, but the gradient
    ``g`` reaching them flows back as ``(I + M) g`` (``m`` from :func:`propagation_matrix`)."""
    r = m.to(rows) @ rows
    return rows + (r - r.detach())


def register_propagation(llm: nn.Module, axes: dict[str, list[int]]) -> None:
    """Apply :func:`propagate` per coordinate axis wherever the LLM reads its coordinate rows by
    itself: its input embedding (every token id looked up) and its output head (every logit).

    Forward hooks add a term whose value is zero, so outputs are unchanged; gradients become
    those of LLaVA-ST's re-parameterised tables. Module hooks (not tensor hooks on the weights)
    survive peft's trainable-token wrappers, DDP and FSDP2 sharding. The anchors' ids and ``M`` are
    buffers of the hooked modules (``ntp_ids``, ``ntp_matrix``, not saved), so they move with the model
    and no forward copies them from the host.
    """
    ids = torch.as_tensor([i for a in axes.values() for i in a])
    m = torch.block_diag(*[propagation_matrix(len(a)) for a in axes.values()])   # axes never mix
    emb, head = llm.get_input_embeddings(), llm.get_output_embeddings()

    def delta(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        rows = weight[module.ntp_ids]
        return propagate(rows, module.ntp_matrix) - rows                         # (n, C), zero values

    def on_embedding(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = args[0]                                                               # token ids (...)
        w = module.weight             # read once: peft's trainable-token wrapper merges its rows at every read
        d = torch.cat([delta(module, w), out.new_zeros(1, out.shape[-1])])        # last row: not an anchor
        slot = torch.full((w.shape[0],), len(ids), device=x.device)
        slot[module.ntp_ids] = torch.arange(len(ids), device=x.device)
        return out + d[slot[x]].to(out.dtype)

    def on_head(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        d = delta(module, module.weight)                                          # (n, C)
        return out.index_add(-1, module.ntp_ids, (args[0] @ d.T.to(args[0].dtype)).to(out.dtype))

    for module, hook in ((emb, on_embedding), (head, on_head)):
        if module is not None:
            module.register_buffer("ntp_ids", ids.to(module.weight.device), persistent=False)
            module.register_buffer("ntp_matrix", m.to(module.weight.device), persistent=False)
            module.register_forward_hook(hook)


def anchor_tables(llm: nn.Module, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The coordinate tokens' input-embedding rows and output-layer rows ``(n, C)`` of an HF causal
    LM, with Neighboring Token Propagation (:func:`propagate`).

    Both are live views into the LLM's weights, so LAPE trains the token embeddings (LLaVA-ST
    eq. 5). With tied embeddings the two are the same rows.
    """
    w_in = llm.get_input_embeddings().weight
    idx = torch.as_tensor(ids, device=w_in.device)
    m = propagation_matrix(len(idx), w_in.device)
    return propagate(w_in[idx], m), propagate(llm.get_output_embeddings().weight[idx], m)


def frame_time_embedding(embed_in: torch.Tensor, embed_out: torch.Tensor, times: torch.Tensor,
                         duration: torch.Tensor) -> torch.Tensor:
    """Temporal LAPE (LLaVA-ST eq. 5, time term): ``(B, T, C)`` positional embedding per frame.

    ``embed_in``/``embed_out`` ``(n, C)`` are the time tokens' input-embedding and output-layer
    rows; their mean is interpolated at each frame's relative time ``times / duration``
    (``times (B, T)`` seconds, ``duration (B,)``). Gradient reaches both tables, which is how the
    paper aligns the tokens with the visual timeline.
    """
    if embed_in.shape != embed_out.shape or embed_in.dim() != 2:
        raise ValueError(f"embed_in and embed_out must both be (n, C), got {tuple(embed_in.shape)} "
                         f"and {tuple(embed_out.shape)}")
    if times.dim() != 2 or duration.shape != times.shape[:1]:
        raise ValueError(f"need times (B, T) and duration (B,), got {tuple(times.shape)} and {tuple(duration.shape)}")
    rho = (embed_in + embed_out) / 2                                           # (n, C)
    return interpolate_anchors(rho, _relative(times, duration[:, None]))       # (B, T, C)


# ------------------------------------------------------------------------- space

def grid_position_embedding(h: int, w: int, tables: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Spatial LAPE (LLaVA-ST eq. 5, width + height terms) for a frame's tokens on an ``h x w`` grid.

    ``tables["x"]`` and ``tables["y"]`` are the width and height anchors' ``(input, output)`` rows,
    each ``(n, C)`` (:func:`anchor_tables`). Token (r, c) sits at its cell centre
    ``((c + 0.5) / w, (r + 0.5) / h)`` and gets ``rho_x + rho_y`` interpolated there, with
    ``rho = (input + output) / 2``. Returns ``(h * w, C)`` in row-major order, to be added to every
    frame's tokens (the time term is :func:`frame_time_embedding`). A single token (``h = w = 1``)
    is no grid and gets zeros.

    The released code downsamples the anchor table with ``F.interpolate(mode="linear")``, which
    puts anchor i at the centre of the i-th of n cells; here anchor i sits at ``i / (n - 1)`` as
    the tokens are defined (section 3.2), so a token's embedding is that of its own position.
    """
    (x_in, x_out), (y_in, y_out) = tables["x"], tables["y"]
    if h * w == 1:
        return x_in.new_zeros(1, x_in.shape[-1])
    ex = interpolate_anchors((x_in + x_out) / 2, (torch.arange(w, device=x_in.device) + 0.5) / w)    # (w, C)
    ey = interpolate_anchors((y_in + y_out) / 2, (torch.arange(h, device=y_in.device) + 0.5) / h)    # (h, C)
    return (ey[:, None] + ex[None, :]).reshape(h * w, -1)                        # (h*w, C)


def box_to_tokens(box: Sequence[float], n: int) -> list[str]:
    """``[x0, y0, x1, y1]`` in [0, 1] -> ``["<x_i>", "<y_j>", "<x_k>", "<y_l>"]`` (closest anchors)."""
    _check_bins(n)
    if len(box) != 4 or any(math.isnan(v) for v in box):
        raise ValueError(f"a box is four numbers [x0, y0, x1, y1] in [0, 1], got {list(box)}")
    x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box corners are swapped: {list(box)}; write [x0, y0, x1, y1] with x0 <= x1, y0 <= y1")
    idx = [round(v * (n - 1)) for v in (x0, y0, x1, y1)]
    return [f"<x_{idx[0]}>", f"<y_{idx[1]}>", f"<x_{idx[2]}>", f"<y_{idx[3]}>"]


def timestamp_prompt(times: Sequence[float], decimals: int = 1) -> list[str]:
    """Dynamic-VLM's per-frame time prefixes (section 5.3): ``[1, 2] -> ["1s: ", "2s: "]``.

    Times are rounded to ``decimals`` places and written without trailing zeros (``0.5s: ``).
    The caller writes ``prefix + frame tokens`` per frame, joined by ``"; "`` as in the paper.
    """
    out = []
    for t in times:
        s = f"{float(t):.{decimals}f}".rstrip("0").rstrip(".") if decimals > 0 else f"{float(t):.0f}"
        out.append(f"{'0' if s in ('', '-0') else s}s: ")
    return out
