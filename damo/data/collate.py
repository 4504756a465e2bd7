"""From canonical samples to model batches: response format, tokenisation, label masks.

The response follows D²VLM's "grounding then answering with evidence referencing"
(section 3.2, appendix B): first one ``<evi>`` per ground-truth event (pure grounding),
then ``</evi>``, then the answer in which each event is referred to by another ``<evi>``.
Both stages' k-th ``<evi>`` are supervised with the k-th span (``time_gt`` is shared by the
two stages in the paper), and their features are tied by the consistency loss.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from damo.data.schema import Sample
from damo.model import tokenizer as tk
from damo.model.evidence import frame_targets

_SPECIAL = re.compile("(" + "|".join(re.escape(t) for t in tk.SPECIAL_TOKENS) + ")")


def _join(refs: list[str]) -> str:
    return refs[0] if len(refs) == 1 else ", ".join(refs[:-1]) + " and " + refs[-1]


def response_text(task: str, answer: str, spans: list, captions: list[str]) -> str:
    """The target response with ``<evi>`` placeholders, one per span in each stage."""
    n = len(spans)
    ground = " ".join([tk.EVI] * n) + " " + tk.EVI_END
    ans = answer.strip().rstrip(".")
    if task == "dense_caption" and captions:
        body = " ".join(f"{tk.EVI}, {c.strip().rstrip('.')}." for c in captions)
    elif n == 0:
        body = f"{ans}."
    elif task in ("grounding", "multi_grounding"):
        # restating the event right before its <evi> ("the red square is on screen in <evi>")
        # puts what to ground next to the token that grounds it
        body = f"{ans or 'It happens'} in {_join([tk.EVI] * n)}."
    else:
        body = f"{ans}. The relevant event happens in {_join([tk.EVI] * n)}."
    return f"{ground} {body}"


def encode(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Tokenise text whose special tokens must stay single ids, without stray spaces around them."""
    ids: list[int] = []
    for piece in _SPECIAL.split(text):
        if not piece.strip():
            continue
        if piece in tk.SPECIAL_TOKENS:
            ids.append(tok.convert_tokens_to_ids(piece))
        else:
            ids.extend(tok(" " + piece.strip(), add_special_tokens=False)["input_ids"])
    return ids


def turns_of(s: Sample) -> list[dict]:
    """A sample's turns: dialogues keep ``meta['turns']``; anything else is one turn."""
    if s.task == "dialogue":
        return s.meta["turns"]
    return [{"task": s.task, "query": s.query, "answer": s.answer, "spans": s.spans, "captions": s.captions}]


def prompt_ids(tok: PreTrainedTokenizerFast, num_video_tokens: int, query: str, query_first: bool) -> list[int]:
    """The prefix generation starts from.

    ``query_first``: ``<bos> <|user|> query <video> x N <|assistant|>``, so the causal LLM's
    frame states can attend to the question (as instruction-aware Q-Formers do in
    InstructBLIP and TimeChat); otherwise ``<bos> <video> x N <|user|> query <|assistant|>``
    (the LLaVA layout D²VLM uses).
    """
    video = [tok.convert_tokens_to_ids(tk.VIDEO)] * num_video_tokens
    if query_first:
        return [tok.bos_token_id] + encode(tok, f"{tk.USER} {query}") + video + encode(tok, tk.ASSISTANT)
    return [tok.bos_token_id] + video + encode(tok, f"{tk.USER} {query} {tk.ASSISTANT}")


@dataclass
class ClipTensors:
    frames: torch.Tensor   # (T, H, W, 3) uint8
    mel: torch.Tensor      # (T, F, M) float16
    times: torch.Tensor    # (T,) float32 seconds
    duration: float


class Collator:
    """Turns ``[(sample, clip)]`` into a padded batch for :class:`DamoModel`."""

    def __init__(self, tok: PreTrainedTokenizerFast, video_tokens: int, frame_tokens: int, fps: float,
                 query_first: bool, max_len: int = 1024):
        self.tok, self.F, self.K, self.fps, self.max_len = tok, video_tokens, frame_tokens, fps, max_len
        self.query_first = query_first
        self.video = tok.convert_tokens_to_ids(tk.VIDEO)
        self.evi = tok.convert_tokens_to_ids(tk.EVI)

    def __call__(self, items: list[tuple[Sample, ClipTensors]], rng: random.Random | None = None) -> dict:
        B = len(items)
        T = max(c.frames.shape[0] for _, c in items)
        c0 = items[0][1]
        frames = torch.zeros(B, T, *c0.frames.shape[1:], dtype=torch.uint8)
        mel = torch.zeros(B, T, *c0.mel.shape[1:], dtype=torch.float16)
        times = torch.zeros(B, T)
        fmask = torch.zeros(B, T, dtype=torch.bool)
        seqs, labels, frame_pos = [], [], torch.zeros(B, T, self.K, dtype=torch.long)
        evi_b, evi_p, evi_y, pairs, align = [], [], [], [], []
        for b, (s, c) in enumerate(items):
            n = c.frames.shape[0]
            frames[b, :n], mel[b, :n], times[b, :n], fmask[b, :n] = c.frames, c.mel, c.times, True
            turns = turns_of(s)
            ids = prompt_ids(self.tok, self.F + n * self.K, turns[0]["query"], self.query_first)
            lab = [-100] * len(ids)
            start = ids.index(self.video) + self.F
            frame_pos[b, :n] = (start + torch.arange(n * self.K)).view(n, self.K)
            for ti, turn in enumerate(turns):
                if ti:
                    q = encode(self.tok, f"{tk.USER} {turn['query']} {tk.ASSISTANT}")
                    ids, lab = ids + q, lab + [-100] * len(q)
                r = encode(self.tok, response_text(turn["task"], turn["answer"], turn["spans"], turn["captions"]))
                if ti == len(turns) - 1:
                    r.append(self.tok.eos_token_id)
                off = len(ids)
                ids, lab = ids + r, lab + r
                spans = turn["spans"]
                evis = [off + i for i, t in enumerate(r) if t == self.evi]
                first = len(evi_b)
                for k, p in enumerate(evis):
                    sp = spans[k % len(spans)] if spans else None
                    evi_b.append(b)
                    evi_p.append(p)
                    y = np.zeros(T, np.float32)
                    if sp is not None:
                        y[:n] = frame_targets([sp], n, self.fps)
                    evi_y.append(y)
                m = len(spans)
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
            pos = r.choice(cands) if cands else ([0.0, c.duration], s.query)
            negs = [sp for sp, cap in cands if cap != pos[1] and sp != pos[0]]
            align.append((pos[0], pos[1], r.choice(negs) if negs else None))
        L = max(map(len, seqs))
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([x + [pad] * (L - len(x)) for x in seqs])
        attn = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x in seqs])
        lab = torch.tensor([x + [-100] * (L - len(x)) for x in labels])
        texts = [encode(self.tok, cap) or [pad] for _, cap, _ in align]
        Lt = max(map(len, texts))
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
            "num_frames": [int(x) for x in fmask.sum(1)],
            "input_ids": input_ids, "attention_mask": attn, "labels": lab, "frame_pos": frame_pos,
            "evi_batch": torch.tensor(evi_b, dtype=torch.long), "evi_pos": torch.tensor(evi_p, dtype=torch.long),
            "evi_targets": torch.from_numpy(np.stack(evi_y)) if evi_y else torch.zeros(0, T),
            "cons_pairs": torch.tensor(pairs, dtype=torch.long).view(-1, 2),
            "align_span_mask": span_mask, "align_neg_mask": neg_mask,
            "align_text_ids": torch.tensor([t + [pad] * (Lt - len(t)) for t in texts]),
            "align_text_mask": torch.tensor([[True] * len(t) + [False] * (Lt - len(t)) for t in texts]),
        }
