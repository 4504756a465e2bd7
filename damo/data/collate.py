"""From canonical samples to model batches: response format, tokenisation, label masks.

The response follows D²VLM's "grounding then answering with evidence referencing"
(section 3.2, appendix B): first one ``<evi>`` per ground-truth event (pure grounding),
then ``</evi>``, then the answer in which each event is referred to by another ``<evi>``.
Both stages' k-th ``<evi>`` are supervised with the k-th span (``time_gt`` is shared by the
two stages in the paper), and their features are tied by the consistency loss. The paper's
ablation baselines (coupled and decomposed responses, frame-level evidence) are switches of
:func:`response_text`, set per model by ``DamoConfig.response`` and ``EvidenceConfig.level``.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from damo.data.schema import Sample
from damo.model import tokenizer as tk
from damo.model.coordinates import anchor_pair, box_to_tokens, box_token_names, time_to_token, time_token_names, timestamp_prompt
from damo.model.evidence import frame_targets, llm_group

_COORD_TOKEN = r"<[txy]_\d+>"      # LAPE coordinate tokens: time, width, height
_SPECIAL = re.compile("(" + "|".join([re.escape(t) for t in tk.SPECIAL_TOKENS] + [_COORD_TOKEN]) + ")")


RESPONSES = ("coupled", "decomposed", "interleaved")
EVIDENCE_LEVELS = ("event", "frame")
# how the LLM learns each frame token's time (DamoConfig.time_encoding): a learned map of a
# sinusoid of the seconds added to the frame token; Dynamic-VLM's "1s: " text before each frame;
# LLaVA-ST's LAPE time tokens; nothing (the LLM's own positions only)
TIME_ENCODINGS = ("sinusoid", "timestamp", "lape", "none")


def _join(refs: list[str]) -> str:
    return refs[0] if len(refs) == 1 else ", ".join(refs[:-1]) + " and " + refs[-1]


def span_text(span, duration: float | None = None, time_bins: int = 0) -> str:
    """A span as text, the way coupled models write timestamps: ``"3.0 - 5.0 seconds"``.

    With ``time_bins`` (LAPE, LLaVA-ST section 3.2) each bound is its closest time token instead:
    ``"<t_3> - <t_5> seconds"``; the model reads the exact value back from the two nearest bins.
    """
    if time_bins:
        a, b = (time_to_token(t, duration, time_bins) for t in span[:2])
        return f"{a} - {b} seconds"
    return f"{span[0]:.1f} - {span[1]:.1f} seconds"


def box_text(boxes: list, box_bins: int) -> str:
    """A tube's first and last box as LAPE width/height tokens (LLaVA-ST section 3.2):
    ``"from <x_a> <y_b> <x_c> <y_d> to <x_e> ..."``; the boxes in between follow by linear
    interpolation (the procedural shapes move in straight lines)."""
    first, last = (" ".join(box_to_tokens(b, box_bins)) for b in (boxes[0], boxes[-1]))
    return f"from {first} to {last}"


def response_text(task: str, answer: str, spans: list, captions: list[str], *, response: str = "interleaved",
                  level: str = "event", duration: float | None = None, time_bins: int = 0,
                  boxes: list | None = None, box_bins: int = 0) -> str:
    """The target response for one turn; the switches follow D²VLM's ablations.

    ``response`` (Table 4): ``coupled``, timestamps as plain text tokens in the answer and no
    grounding stage (as TimeChat and VTimeLLM answer); ``decomposed``, a pure grounding stage of
    ``<evi>`` tokens closed by ``</evi>``, then the answer with plain-text timestamps;
    ``interleaved`` (the full design), the answer refers to each event by another ``<evi>``.
    ``level`` (Table 6): ``event``, one ``<evi>`` grounds a whole interval; ``frame``, an event is
    two ``<evi>`` tokens, each grounding a single frame (its start, then its end), as
    timestamp-token designs do. ``time_bins`` writes text timestamps as LAPE time tokens
    (:func:`span_text`); ``boxes`` (a spatio-temporal grounding tube's boxes in time order) with
    ``box_bins`` ends the answer with the tube's boxes as LAPE width/height tokens (:func:`box_text`).
    """
    if response not in RESPONSES or level not in EVIDENCE_LEVELS:
        raise ValueError(f"response must be one of {RESPONSES} and level one of {EVIDENCE_LEVELS}, "
                         f"got {response!r}, {level!r}")
    n = len(spans)
    evi = f"{tk.EVI} {tk.EVI}" if level == "frame" else tk.EVI
    refs = [evi] * n if response == "interleaved" else [span_text(sp, duration, time_bins) for sp in spans]
    ans = answer.strip().rstrip(".")
    if task == "dense_caption" and captions:
        body = " ".join(f"{r}, {c.strip().rstrip('.')}." for r, c in zip(refs, captions))
    elif n == 0:
        body = f"{ans}."
    elif task in ("grounding", "multi_grounding"):
        # restating the event right before its reference ("the red square is on screen in <evi>")
        # puts what to ground next to the token that grounds it
        body = f"{ans or 'It happens'} in {_join(refs)}."
    else:
        where = f", {box_text(boxes, box_bins)}" if boxes and box_bins else ""
        body = f"{ans}. The relevant event happens in {_join(refs)}{where}."
    if response == "coupled":
        return body
    return " ".join([evi] * n + [tk.EVI_END, body])


def evidence_targets(spans: list, num_evi: int, num_frames: int, fps: float, level: str = "event") -> list[np.ndarray]:
    """Frame targets ``(num_frames,)`` for each of a turn's ``num_evi`` ``<evi>`` tokens, in order.

    Event level: the k-th token of each stage grounds the k-th span (D²VLM: ``time_gt`` is shared
    by the two stages), salient frames = the span's frames. Frame level: tokens come in
    (start, end) pairs, each marking the one frame that holds the span's start or end.
    """
    out = []
    for k in range(num_evi):
        y = np.zeros(num_frames, np.float32)
        if spans and num_frames:
            if level == "frame":
                s, e = spans[(k // 2) % len(spans)]
                t = s * fps if k % 2 == 0 else math.ceil(e * fps) - 1
                y[min(num_frames - 1, max(0, int(t)))] = 1.0
            else:
                y = frame_targets([spans[k % len(spans)]], num_frames, fps)
        out.append(y)
    return out


def encode(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Tokenise text whose special tokens must stay single ids, without stray spaces around them."""
    ids: list[int] = []
    for piece in _SPECIAL.split(text):
        if not piece.strip():
            continue
        if piece in tk.SPECIAL_TOKENS:
            ids.append(tok.convert_tokens_to_ids(piece))
        elif re.fullmatch(_COORD_TOKEN, piece):
            i = tok.convert_tokens_to_ids(piece)
            if i is None or i == tok.unk_token_id:
                raise ValueError(f"{piece} is not in the tokenizer: the model has no such LAPE coordinate tokens")
            ids.append(i)
        else:
            ids.extend(tok(" " + piece.strip(), add_special_tokens=False)["input_ids"])
    return ids


def turns_of(s: Sample) -> list[dict]:
    """A sample's turns: dialogues keep ``meta['turns']``; anything else is one turn (with the
    tube's boxes in time order for spatio-temporal grounding)."""
    if s.task == "dialogue":
        return s.meta["turns"]
    boxes = [b for _, b in sorted(s.meta.get("boxes", {}).items(), key=lambda kv: float(kv[0]))]
    return [{"task": s.task, "query": s.query, "answer": s.answer, "spans": s.spans, "captions": s.captions,
             "boxes": boxes}]


LAYOUTS = ("video_first", "query_first", "query_both")


def prompt_ids(tok: PreTrainedTokenizerFast, num_video_tokens: int, query: str, layout: str,
               frame_times: list[float] | None = None, frame_tokens: int = 1) -> list[int]:
    """The prefix generation starts from.

    ``video_first``: ``<bos> <video> x N <|user|> query <|assistant|>`` (the LLaVA layout D²VLM
    uses); ``query_first``: ``<bos> <|user|> query <video> x N <|assistant|>``, so the causal
    LLM's frame states can attend to the question (as instruction-aware Q-Formers do in
    InstructBLIP and TimeChat); ``query_both``: the question before the frames and again after
    them, so frame states see it and the answer starts right next to it.

    ``frame_times`` (seconds, one per frame token group) writes Dynamic-VLM's timestamp before
    each frame's ``frame_tokens`` placeholders (section 5.3: ``"0s: <video> 1s: <video> ..."``);
    the remaining placeholders (the fusion tokens) stay in front.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"prompt layout must be one of {LAYOUTS}, got {layout!r}")
    v = tok.convert_tokens_to_ids(tk.VIDEO)
    if frame_times is None:
        video = [v] * num_video_tokens
    else:
        fusion = num_video_tokens - frame_tokens * len(frame_times)
        if fusion < 0:
            raise ValueError(f"{len(frame_times)} frames of {frame_tokens} tokens exceed {num_video_tokens} video tokens")
        video = [v] * fusion
        for prefix in timestamp_prompt(frame_times):
            video += encode(tok, prefix) + [v] * frame_tokens
    ask = encode(tok, f"{tk.USER} {query}")
    if layout == "video_first":
        return [tok.bos_token_id] + video + ask + encode(tok, tk.ASSISTANT)
    return [tok.bos_token_id] + ask + video + (ask if layout == "query_both" else []) + encode(tok, tk.ASSISTANT)


@dataclass
class ClipTensors:
    frames: torch.Tensor   # (T, H, W, 3) uint8
    mel: torch.Tensor      # (T, F, M) float16
    times: torch.Tensor    # (T,) float32 seconds
    duration: float


class Collator:
    """Turns ``[(sample, clip)]`` into a padded batch for :class:`DamoModel`."""

    def __init__(self, tok: PreTrainedTokenizerFast, video_tokens: int, frame_tokens: int, fps: float,
                 layout: str, max_len: int = 1024, response: str = "interleaved", evidence_level: str = "event",
                 llm_frames: int = 0, time_encoding: str = "sinusoid", time_bins: int = 0, box_bins: int = 0):
        if time_encoding not in TIME_ENCODINGS:
            raise ValueError(f"time encoding must be one of {TIME_ENCODINGS}, got {time_encoding!r}")
        self.tok, self.F, self.K, self.fps, self.max_len = tok, video_tokens, frame_tokens, fps, max_len
        self.llm_frames = llm_frames
        self.layout, self.response, self.level = layout, response, evidence_level
        self.timestamps = time_encoding == "timestamp"
        self.bins = time_bins if time_encoding == "lape" else 0
        self.box_bins = box_bins
        # LAPE coordinate token id -> (axis, its axis's token ids in anchor order)
        axes = {"t": time_token_names(self.bins) if self.bins else []}
        if box_bins:
            axes["x"], axes["y"] = box_token_names(box_bins)
        self.axis_of = {}
        for axis, names in axes.items():
            anchors = tok.convert_tokens_to_ids(names)
            self.axis_of.update({i: (axis, anchors) for i in anchors})
        self.video = tok.convert_tokens_to_ids(tk.VIDEO)
        self.evi = tok.convert_tokens_to_ids(tk.EVI)

    @classmethod
    def for_model(cls, model, **kw) -> "Collator":
        """The collator matching a :class:`~damo.model.modeling_damo.DamoModel`'s config."""
        c = model.cfg
        return cls(model.tokenizer, c.bridge_tokens, c.fuser.frame_tokens, c.fps, c.layout, response=c.response,
                   evidence_level=c.evidence.level, llm_frames=c.llm_frames, time_encoding=c.time_encoding,
                   time_bins=c.time_bins, box_bins=c.box_bins, **kw)

    def prompt(self, query: str, times: torch.Tensor | None, group: int | None = None) -> list[int]:
        """The prompt for a question about a clip with frame ``times`` (seconds; ``None``: no video):
        fusion and frame placeholders, ``group`` frames per LLM frame token (default: the
        ``llm_frames`` budget for this clip alone; a batch uses its longest clip's), and each frame
        token's timestamp text when the time encoding is ``timestamp``."""
        if times is None or not len(times):
            return prompt_ids(self.tok, 0, query, self.layout)
        g = group or llm_group(len(times), self.llm_frames)
        first = times[::g].tolist()                   # each LLM frame token's first frame
        return prompt_ids(self.tok, self.F + len(first) * self.K, query, self.layout,
                          first if self.timestamps else None, self.K)

    def __call__(self, items: list[tuple[Sample, ClipTensors | None]], rng: random.Random | None = None) -> dict:
        """``items`` pair samples with their clips; a clip of ``None`` makes a text-only batch (no
        video tokens, no evidence targets: a language warm-up for a from-scratch LLM)."""
        B = len(items)
        text = any(c is None for _, c in items)
        if text and not all(c is None for _, c in items):
            raise ValueError("a batch is either all text-only (clip None) or all with clips")
        T = 0 if text else max(c.frames.shape[0] for _, c in items)
        g = llm_group(T, self.llm_frames)             # frames per LLM frame token (DamoModel.video_embeddings)
        Tl = -(-T // g)
        c0 = items[0][1]
        frames = torch.zeros(B, T, *(c0.frames.shape[1:] if c0 else (1, 1, 3)), dtype=torch.uint8)
        mel = torch.zeros(B, T, *(c0.mel.shape[1:] if c0 else (1, 1)), dtype=torch.float16)
        times = torch.zeros(B, T)
        fmask = torch.zeros(B, T, dtype=torch.bool)
        seqs, labels, frame_pos = [], [], torch.zeros(B, Tl, self.K, dtype=torch.long)
        evi_mask = torch.zeros(B, Tl, dtype=torch.bool)
        evi_b, evi_p, evi_y, pairs, align = [], [], [], [], []
        coord_pos, coord_ids, coord_w = [], [], []
        durations = torch.tensor([float(s.duration) for s, _ in items])
        for b, (s, c) in enumerate(items):
            n = 0 if text else c.frames.shape[0]
            nl = -(-n // g)                                # this sample's frame tokens
            if n:
                frames[b, :n], mel[b, :n], times[b, :n], fmask[b, :n] = c.frames, c.mel, c.times, True
                evi_mask[b, :nl] = True
            turns = turns_of(s)
            ids = self.prompt(turns[0]["query"], None if text else c.times, g)
            lab = [-100] * len(ids)
            if n:
                vpos = [i for i, t in enumerate(ids) if t == self.video][self.F:]
                frame_pos[b, :nl] = torch.tensor(vpos).view(nl, self.K)
            for ti, turn in enumerate(turns):
                if ti:
                    q = encode(self.tok, f"{tk.USER} {turn['query']} {tk.ASSISTANT}")
                    ids, lab = ids + q, lab + [-100] * len(q)
                r = encode(self.tok, response_text(turn["task"], turn["answer"], turn["spans"], turn["captions"],
                                                   response=self.response, level=self.level, duration=s.duration,
                                                   time_bins=self.bins, boxes=turn.get("boxes"),
                                                   box_bins=self.box_bins))
                if ti == len(turns) - 1:
                    r.append(self.tok.eos_token_id)
                off = len(ids)
                ids, lab = ids + r, lab + r
                spans = turn["spans"]
                # LAPE coordinate tokens: soft targets on the two anchors around the exact value
                # (span bounds for time tokens, box corners for width/height tokens, in order)
                ends = turn.get("boxes", [])[:1] + turn.get("boxes", [])[-1:]     # the tube's first and last box
                values = {"t": [t / s.duration for sp in spans for t in sp[:2]],
                          "x": [v for bx in ends for v in bx[0::2]], "y": [v for bx in ends for v in bx[1::2]]}
                for i, t in enumerate(r):
                    if t in self.axis_of:
                        axis, anchors = self.axis_of[t]
                        if not values[axis]:
                            raise ValueError(f"sample {s.id}: more {axis} coordinate tokens than values to supervise")
                        lo, w = anchor_pair(values[axis].pop(0), len(anchors))
                        coord_pos.append((b, off + i))
                        coord_ids.append((anchors[lo], anchors[lo + 1]))
                        coord_w.append((1 - w, w))
                evis = [] if text else [off + i for i, t in enumerate(r) if t == self.evi]
                first = len(evi_b)
                for p, y in zip(evis, evidence_targets(spans, len(evis), n, self.fps, self.level)):
                    evi_b.append(b)
                    evi_p.append(p)
                    if g > 1:       # a group's target: the fraction of its frames inside the span
                        y = np.pad(y, (0, nl * g - n)).reshape(nl, g).sum(1) / np.clip(
                            np.minimum(g, n - g * np.arange(nl)), 1, None)
                    evi_y.append(np.pad(y, (0, Tl - nl)))
                m = len(spans) * (2 if self.level == "frame" else 1)     # <evi> tokens per stage
                pairs += [(first + k, first + m + k) for k in range(m) if m + k < len(evis)]
            if len(ids) > self.max_len:
                raise ValueError(f"sample {s.id} needs {len(ids)} tokens > max_len {self.max_len}; "
                                 "lower the fps or use a token-budget compressor")
            seqs.append(ids)
            labels.append(lab)
            # one (span, caption) per sample for contrastive alignment, plus a hard negative:
            # another event of the same video with a different caption (the same shape in another
            # colour, the same tone at another pitch), or the whole clip if there is none
            r = rng or random
            cands = [(sp, cap) for sp, cap in zip(s.spans, s.captions)] or [(sp, s.query) for sp in s.spans]
            pos = r.choice(cands) if cands else ([0.0, s.duration], s.query)
            negs = [sp for sp, cap in cands if cap != pos[1] and sp != pos[0]]
            align.append((pos[0], pos[1], r.choice(negs) if negs else None))
        L = max(map(len, seqs))
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([x + [pad] * (L - len(x)) for x in seqs])
        attn = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x in seqs])
        lab = torch.tensor([x + [-100] * (L - len(x)) for x in labels])
        texts = [encode(self.tok, cap) or [pad] for _, cap, _ in align]
        Lt = max(map(len, texts))
        queries = [encode(self.tok, turns_of(s)[0]["query"]) or [pad] for s, _ in items]
        Lq = max(map(len, queries))
        span_mask = torch.zeros(B, T, dtype=torch.bool)
        neg_mask = torch.zeros(B, T, dtype=torch.bool)      # all-False rows: no hard negative
        for b, (sp, _, neg) in enumerate(align):
            n = int(fmask[b].sum())
            span_mask[b, :n] = torch.from_numpy(frame_targets([sp], n, self.fps) > 0)
            if neg is not None:
                neg_mask[b, :n] = torch.from_numpy(frame_targets([neg], n, self.fps) > 0)
        return {
            "frames": frames.permute(0, 1, 4, 2, 3).float() / 255.0,            # (B, T, 3, H, W)
            "mel": mel.float(), "times": times, "frame_mask": fmask,
            "num_frames": [int(x) for x in evi_mask.sum(1)],                    # frame tokens per sample (T' <= T)
            "input_ids": input_ids, "attention_mask": attn, "labels": lab, "frame_pos": frame_pos,
            "evi_batch": torch.tensor(evi_b, dtype=torch.long), "evi_pos": torch.tensor(evi_p, dtype=torch.long),
            "evi_targets": torch.from_numpy(np.stack(evi_y)).float() if evi_y else torch.zeros(0, Tl),
            "evi_mask": evi_mask,                                                # (B, T') valid frame tokens
            "cons_pairs": torch.tensor(pairs, dtype=torch.long).view(-1, 2),
            "align_span_mask": span_mask, "align_neg_mask": neg_mask,
            "align_text_ids": torch.tensor([t + [pad] * (Lt - len(t)) for t in texts]),
            "align_text_mask": torch.tensor([[True] * len(t) + [False] * (Lt - len(t)) for t in texts]),
            "query_ids": torch.tensor([q + [pad] * (Lq - len(q)) for q in queries]),
            "query_mask": torch.tensor([[True] * len(q) + [False] * (Lq - len(q)) for q in queries]),
            "duration": durations,                                               # (B,) seconds
            # LAPE coordinate tokens in the responses: [row, position], the two anchor ids around
            # the exact value and their soft-target weights, each (N, 2)
            "coord_pos": torch.tensor(coord_pos, dtype=torch.long).view(-1, 2),
            "coord_ids": torch.tensor(coord_ids, dtype=torch.long).view(-1, 2),
            "coord_w": torch.tensor(coord_w, dtype=torch.float32).view(-1, 2),
        }
