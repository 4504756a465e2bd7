"""DamoConfig + DamoModel: the whole forward pass, top to bottom.

Data flow (B batch, T frames at 1/fps, D fuser width, C LLM width):
 1. frames ``(B, T, 3, H, W)`` -> vision encoder -> ``(B, T, 1+P, Dv)``;
    per-frame log-mel ``(B, T, F, M)`` -> audio encoder -> ``(B, T, 1+A, Da)``.
 2. DaMO global residual per modality -> ``(B, T, Lv, D)`` and ``(B, T, La, D)``.
 3. temporal grouped (depthwise) convolution over the visual stream (DaMO temporal pathway;
    stride 1 so every frame keeps its own token for evidence grounding).
 4. T-Fuseformer -> per-frame fused tokens ``(B, T, K, D)`` + fusion tokens ``(B, F, D)``.
 5. frame tokens get their time (``time_encoding``: a learned map of a sinusoid of the seconds
    by default; LAPE time tokens; Dynamic-VLM's timestamp text; none); projector -> LLM width,
    normalised to the scale of the LLM's word embeddings;
    fusion tokens pass a one-layer Q-Former bridge (DaMO's bridge to the LLM).
 6. LLM (any HF causal LM): ``<video>`` placeholders are replaced by [fusion; frames]
    (the transformers ``masked_scatter`` pattern).
 7. evidence tokens (D²VLM section 3.2): each ``<evi>`` is grounded by scoring the
    penultimate-layer state that emitted it against every frame's state; during training the
    ground-truth frames' mean state (inference: the salient frames') is added to the
    ``<evi>`` input embedding (semantic capture).
"""
from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

from damo.data.collate import EVIDENCE_LEVELS, LAYOUTS, RESPONSES, TIME_ENCODINGS, span_text
from damo.model import backbones
from damo.model.coordinates import (add_box_tokens, add_time_tokens, anchor_tables, decode_position,
                                    frame_time_embedding)
from damo.model.encoders import Block
from damo.model.compressors import build_compressor
from damo.model.evidence import EvidenceHead, decode_interval, llm_group, pool_groups, salient_frames
from damo.model.fuseformer import CrossBlock, TemporalFuseformer, sinusoid
from damo.model.residual import GlobalResidual
from damo.model import tokenizer as tk


@dataclass
class VisionConfig:
    kind: str = "tiny_vit"
    image_size: int = 32
    patch: int = 8
    width: int = 64
    layers: int = 2
    heads: int = 2
    # kind "hf_vision": a pretrained tower (see damo.model.backbones)
    name_or_path: str | None = None
    family: str | None = None          # clip | siglip
    pretrained: bool = True            # false: random weights from `config` (tests, rebuilding a saved model)
    config: dict = field(default_factory=dict)   # transformers config fields (overrides when pretrained)
    allow_pickle: bool = False         # accept .bin/.pt weights (pickles can run code when loaded)


@dataclass
class AudioConfig:
    kind: str = "tiny_mel"
    n_mels: int = 32
    frames: int = 25          # mel frames per frame window (40 ms hop at 1 fps)
    patch: int = 5
    width: int = 64
    layers: int = 1
    heads: int = 2
    # kind "hf_whisper": the Whisper encoder (n_mels 80 or 128, frames 100 per second)
    name_or_path: str | None = None
    family: str | None = None          # whisper
    pretrained: bool = True
    config: dict = field(default_factory=dict)
    allow_pickle: bool = False


@dataclass
class FuserConfig:
    width: int = 96
    blocks: int = 2
    heads: int = 4
    visual_tokens: int = 4     # L' of the visual global residual (square)
    audio_tokens: int = 2      # L' of the audio global residual
    visual_queries: int = 16
    audio_queries: int = 8
    fusion_tokens: int = 8
    frame_tokens: int = 1      # K fused tokens per frame given to the LLM
    conv_kernel: int = 3
    window: int = 8            # stream self-attention window in frames (local context; linear cost on long videos)


@dataclass
class LLMConfig:
    kind: str = "tiny_qwen2"   # or "hf": load `name_or_path` with AutoModelForCausalLM
    name_or_path: str | None = None
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    vocab_size: int = 600      # tokenizer training target for the tiny LLM
    family: str | None = None  # transformers model type (llama, mistral, qwen2, phi3): LoRA defaults, from-config builds
    pretrained: bool = True    # kind "hf", false: random weights from `config` (tests, rebuilding a saved model)
    config: dict = field(default_factory=dict)   # transformers config fields (overrides when pretrained)
    lora: dict | None = None   # {r, alpha, dropout, targets}; None: no LoRA
    gradient_checkpointing: bool = False
    allow_pickle: bool = False # accept .bin/.pt weights (pickles can run code when loaded)


@dataclass
class EvidenceConfig:
    dim: int = 64
    threshold: float = 0.6     # salient frames: score >= threshold x max (D²VLM appendix A)
    semantic_capture: bool = True
    level: str = "event"       # event: one <evi> grounds an interval; frame: a (start, end) pair of single frames (D²VLM Table 6)


@dataclass
class CompressorConfig:
    """Visual token compression per frame under a global budget (Dynamic-VLM §3, LLaVA-ST STP §3.3).

    Applied to the visual residual tokens before the T-Fuseformer; see :mod:`damo.model.compressors`.
    """
    kind: str = "identity"     # identity | pool | tome | prune | stp
    budget: int = 4096         # visual tokens per video
    k_min: int = 1
    k_max: int = 16
    seed: int = 0
    options: dict = field(default_factory=dict)


@dataclass
class DamoConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    fuser: FuserConfig = field(default_factory=FuserConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    fps: float = 1.0
    bridge_tokens: int = 8     # fusion tokens after the Q-Former bridge
    align_dim: int = 64        # contrastive (stage 1) embedding width
    max_frames: int = 4096
    llm_frames: int = 64       # at most this many frame tokens reach the LLM: longer videos pool consecutive frames (0: no cap)
    layout: str = "query_both"      # video_first | query_first | query_both: where the question goes (collate.prompt_ids)
    response: str = "interleaved"   # coupled | decomposed | interleaved (D²VLM Table 4; see collate.response_text)
    query_aware: bool = True   # frame tokens carry their match with the question in the stage-1 alignment space
    time_encoding: str = "sinusoid"  # sinusoid | timestamp | lape | none (see collate.TIME_ENCODINGS)
    time_bins: int = 32        # lape: time tokens <t_0> .. <t_{n-1}> spread evenly over the video
    box_bins: int = 0          # > 0: LAPE width/height tokens <x_i>, <y_i> for boxes (spatio-temporal grounding answers)

    @classmethod
    def from_dict(cls, d: dict) -> "DamoConfig":
        subs = {"vision": VisionConfig, "compressor": CompressorConfig, "audio": AudioConfig, "fuser": FuserConfig, "llm": LLMConfig,
                "evidence": EvidenceConfig}
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}")
        kw = {}
        for k, v in d.items():
            if k in subs:
                bad = set(v) - set(subs[k].__dataclass_fields__)
                if bad:
                    raise ValueError(f"unknown keys {sorted(bad)} in model.{k}; valid: {sorted(subs[k].__dataclass_fields__)}")
                kw[k] = subs[k](**v)
            else:
                kw[k] = v
        cfg = cls(**kw)
        choices = {"response": (cfg.response, RESPONSES), "evidence.level": (cfg.evidence.level, EVIDENCE_LEVELS),
                   "layout": (cfg.layout, LAYOUTS), "time_encoding": (cfg.time_encoding, TIME_ENCODINGS)}
        for key, (value, valid) in choices.items():
            if value not in valid:
                raise ValueError(f"model.{key} must be one of {valid}, got {value!r}")
        if cfg.time_encoding == "lape" and cfg.time_bins < 2:
            raise ValueError(f"model.time_bins must be >= 2 for LAPE time tokens, got {cfg.time_bins}")
        if cfg.box_bins == 1 or cfg.box_bins < 0:
            raise ValueError(f"model.box_bins must be 0 (no box tokens) or >= 2, got {cfg.box_bins}")
        return cfg


class TextEncoder(nn.Module):
    """Small text tower for video-text alignment (DaMO stage 1, BLIP-2-style contrastive)."""

    def __init__(self, vocab: int, d: int, out: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.block = Block(d, 4)
        self.out = nn.Linear(d, out)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.block(self.emb(ids), key_padding_mask=~mask)                   # (B, L, d)
        h = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.out(h)                                                       # (B, out)


def build_llm(cfg: LLMConfig, tok: PreTrainedTokenizerFast) -> nn.Module:
    if cfg.kind == "tiny_qwen2":
        c = Qwen2Config(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                        num_key_value_heads=cfg.kv_heads, max_position_embeddings=8192, tie_word_embeddings=True,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        return AutoModelForCausalLM.from_config(c)
    if cfg.kind == "hf":
        return backbones.build_causal_lm(cfg, tok)
    raise ValueError(f"unknown llm.kind {cfg.kind!r}; valid: tiny_qwen2, hf")


def pair_frames(evidence: list[dict]) -> list[dict]:
    """Frame-level evidence: each stage's ``<evi>`` come as (start, end) pairs -> one span per pair.

    The span runs from the start frame to the end of the end frame (swapped if the end comes
    first); its score is the mean of the two peaks; a trailing unpaired token stands alone.
    """
    out = []
    for st in (1, 2):
        ev = [e for e in evidence if e["stage"] == st]
        for a, b in zip(ev[::2], ev[1::2] + [None] * (len(ev) % 2)):
            if b is None:
                out.append(a)
                continue
            lo, hi = sorted([a["span"], b["span"]])
            out.append({"stage": st, "scores": np.maximum(a["scores"], b["scores"]),
                        "span": [lo[0], max(lo[1], hi[1]), (a["span"][2] + b["span"][2]) / 2]})
    return out


class DamoModel(nn.Module):
    def __init__(self, cfg: DamoConfig, tokenizer: PreTrainedTokenizerFast):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        fc = cfg.fuser
        D = fc.width
        self.vision = backbones.build_vision(cfg.vision)
        self.audio = backbones.build_audio(cfg.audio)
        self.residual_v = GlobalResidual(self.vision.width, D, fc.visual_tokens, grid=True)
        self.residual_a = GlobalResidual(self.audio.width, D, fc.audio_tokens, grid=False)
        self.temporal_conv = nn.Conv1d(D, D, fc.conv_kernel, padding=fc.conv_kernel // 2, groups=D)
        cc = cfg.compressor
        self.compressor = build_compressor(cc.kind, D, tokens_in=fc.visual_tokens, budget=cc.budget, k_min=cc.k_min,
                                           k_max=cc.k_max, seed=cc.seed, **cc.options)
        self.fuseformer = TemporalFuseformer(D, fc.blocks, fc.heads, fc.visual_queries, fc.audio_queries,
                                             fc.fusion_tokens, fc.frame_tokens, cfg.max_frames, fc.window)
        # LAPE (LLaVA-ST eq. 4): coordinate tokens join the vocabulary before the LLM is sized to it
        self.time_ids = add_time_tokens(tokenizer, cfg.time_bins) if cfg.time_encoding == "lape" else []
        self.x_ids, self.y_ids = add_box_tokens(tokenizer, cfg.box_bins) if cfg.box_bins else ([], [])
        self.coord_axes = {a: ids for a, ids in (("t", self.time_ids), ("x", self.x_ids), ("y", self.y_ids)) if ids}
        self.axis_of = {i: a for a, ids in self.coord_axes.items() for i in ids}     # coordinate token id -> axis
        self.llm = build_llm(cfg.llm, tokenizer)
        C = self.llm.config.hidden_size
        # Both video paths end in a LayerNorm whose gain starts at the RMS of the LLM's word
        # embeddings, so video tokens enter the LLM at the scale of text tokens. Without it they
        # were 50-200x larger: the frames' residual stream barely changed across layers (frame
        # states ignored the question) and generation could not even restate the question.
        rms = float(self.llm.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt())
        if cfg.time_encoding == "sinusoid":
            self.time_proj = nn.Linear(D, D)
        self.projector = nn.Sequential(nn.Linear(D, C), nn.GELU(), nn.Linear(C, C), nn.LayerNorm(C))
        self.bridge_queries = nn.Parameter(torch.randn(1, cfg.bridge_tokens, D) * 0.02)
        self.bridge = CrossBlock(D, fc.heads)
        self.bridge_out = nn.Sequential(nn.Linear(D, C), nn.LayerNorm(C))
        for norm in (self.projector[-1], self.bridge_out[-1]):
            nn.init.constant_(norm.weight, rms)
        self.evidence = EvidenceHead(C, cfg.evidence.dim)
        self.text_encoder = TextEncoder(len(tokenizer), D, cfg.align_dim)
        self.align_video = nn.Linear(D, cfg.align_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        # query-aware frame tokens: each frame's alignment embedding times the question's, and
        # their cosine, projected into the LLM (zero-initialised: a no-op until trained)
        self.match_proj = nn.Linear(cfg.align_dim + 1, C)
        nn.init.zeros_(self.match_proj.weight)
        nn.init.zeros_(self.match_proj.bias)
        ids = tokenizer.convert_tokens_to_ids
        self.video_id, self.evi_id, self.evi_end_id = ids(tk.VIDEO), ids(tk.EVI), ids(tk.EVI_END)

    # ------------------------------------------------------------------ video
    def encode_video(self, frames: torch.Tensor, mel: torch.Tensor, frame_mask: torch.Tensor):
        """-> per-frame fuser features ``(B, T, K, D)`` and fusion tokens ``(B, F, D)``."""
        v = self.residual_v(self.vision(frames))                    # (B, T, Lv, D)
        a = self.residual_a(self.audio(mel))                        # (B, T, La, D)
        B, T, Lv, D = v.shape
        v = v.permute(0, 2, 3, 1).reshape(B * Lv, D, T)             # (B*Lv, D, T)
        v = v + self.temporal_conv(v)
        v = v.reshape(B, Lv, D, T).permute(0, 3, 1, 2)              # (B, T, Lv, D)
        v = self.compressor(v, frame_mask)                          # (B, T, K, D) under the token budget
        return self.fuseformer(v, a, frame_mask)

    def video_embeddings(self, frames, mel, frame_mask, times, query_ids=None, query_mask=None, duration=None):
        """-> frame embeddings ``(B, T', K, C)``, bridged fusion embeddings ``(B, F', C)``, fuser frame
        features ``(B, T, K, D)``. ``T' = T`` unless ``llm_frames`` caps the frame tokens (see
        :func:`~damo.model.evidence.llm_group`): then each token is the mean of a group of frames.

        With ``query_aware`` and the question's token ids ``(B, Lq)``, every frame token also
        carries how the frame matches the question in the alignment space of stage 1 (the
        instruction-aware visual tokens of InstructBLIP, built on DaMO's video-text alignment):
        the elementwise product of the frame's and the question's normalised embeddings, and
        their cosine. The LLM then compares question and frames on features trained for that.

        Time reaches the frame tokens per ``time_encoding``: ``sinusoid`` adds a learned map of a
        sinusoid of the seconds before the projector; ``lape`` adds LLaVA-ST's temporal LAPE
        (eq. 5: the time tokens' mean input/output embedding interpolated at ``times / duration``,
        ``duration (B,)`` seconds) after it; ``timestamp`` writes the time as text in the prompt
        instead (:func:`~damo.data.collate.prompt_ids`) and ``none`` gives no time at all.
        """
        fr, fu = self.encode_video(frames, mel, frame_mask)
        # the LLM budget: over ``llm_frames`` frames, groups of consecutive frames share one token
        g = llm_group(fr.shape[1], self.cfg.llm_frames)
        frl, times = pool_groups(fr, frame_mask, g)[0], pool_groups(times, frame_mask, g)[0]   # (B, T', K, D)
        t = self.time_proj(sinusoid(times, fr.shape[-1]))[:, :, None] if self.cfg.time_encoding == "sinusoid" else 0
        e = self.projector(frl + t)                                 # (B, T', K, C)
        if self.time_ids:
            if duration is None:
                raise ValueError("LAPE time encoding needs the videos' durations")
            e = e + frame_time_embedding(*anchor_tables(self.llm, self.time_ids), times, duration)[:, :, None]
        if self.cfg.query_aware and query_ids is not None:
            qa = F.normalize(self.text_encoder(query_ids, query_mask), dim=-1)       # (B, d)
            va = F.normalize(self.align_video(frl), dim=-1)                          # (B, T', K, d)
            prod = va * qa[:, None, None]
            e = e + self.match_proj(torch.cat([prod, prod.sum(-1, keepdim=True)], -1))
        q = self.bridge(self.bridge_queries.expand(fu.shape[0], -1, -1), fu)   # (B, F', D)
        return e, self.bridge_out(q), fr

    def scatter_video(self, input_ids, frame_emb, fusion_emb, num_frames):
        """Replace ``<video>`` placeholders by [fusion; frames] per sample -> inputs_embeds ``(B, L, C)``."""
        emb = self.llm.get_input_embeddings()(input_ids)
        parts = [torch.cat([fusion_emb[b], frame_emb[b, :n].flatten(0, 1)]) for b, n in enumerate(num_frames)]
        vid = torch.cat(parts).to(emb.dtype)                        # (sum_b (F' + T_b K), C)
        mask = (input_ids == self.video_id).unsqueeze(-1)
        if int(mask.sum()) != vid.shape[0]:
            raise ValueError(f"prompt has {int(mask.sum())} {tk.VIDEO} placeholders but the video gives {vid.shape[0]}")
        return emb.masked_scatter(mask, vid)

    def frame_states(self, hidden: torch.Tensor, frame_pos: torch.Tensor) -> torch.Tensor:
        """Mean LLM state over each frame's K tokens: hidden ``(B, L, C)``, frame_pos ``(B, T, K)`` -> ``(B, T, C)``."""
        B, T, K = frame_pos.shape
        h = hidden.gather(1, frame_pos.flatten(1)[..., None].expand(-1, -1, hidden.shape[-1]))
        return h.view(B, T, K, -1).mean(2)

    # ---------------------------------------------------------------- forward
    def forward(self, batch: dict) -> dict:
        """Teacher-forced pass. Returns logits, evidence logits ``(N, T)`` and evidence features.

        A batch without frames (``frames`` of length 0) is text only: just the LLM's logits.
        """
        if batch["frames"].shape[1] == 0:
            return {"logits": self.llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits}
        frame_emb, fusion_emb, fr = self.video_embeddings(batch["frames"], batch["mel"], batch["frame_mask"],
                                                          batch["times"], batch.get("query_ids"), batch.get("query_mask"),
                                                          batch.get("duration"))
        out = {"frame_features": fr}
        if "input_ids" not in batch:
            return out
        emb = self.scatter_video(batch["input_ids"], frame_emb, fusion_emb, batch["num_frames"])
        eb, ep = batch["evi_batch"], batch["evi_pos"]               # (N,), (N,) positions of <evi> inputs
        if self.cfg.evidence.semantic_capture and len(eb):
            # Frame states do not depend on later tokens (causal LM), so a first pass without
            # gradient gives the states whose ground-truth mean is captured into each <evi>.
            with torch.no_grad():
                h0 = self.llm(inputs_embeds=emb, attention_mask=batch["attention_mask"],
                              output_hidden_states=True).hidden_states[-2]
                hf0 = self.frame_states(h0, batch["frame_pos"])     # (B, T, C)
            y = batch["evi_targets"]                                # (N, T)
            cap = (y[..., None] * hf0[eb]).sum(1) / y.sum(1, keepdim=True).clamp(min=1)  # (N, C)
            emb = emb.index_put((eb, ep), emb[eb, ep] + cap.to(emb.dtype))
        res = self.llm(inputs_embeds=emb, attention_mask=batch["attention_mask"], output_hidden_states=True)
        h = res.hidden_states[-2]                                   # penultimate layer (B, L, C)
        hf = self.frame_states(h, batch["frame_pos"])               # (B, T, C)
        out["logits"] = res.logits
        if len(eb):
            q = self.evidence.query(h[eb, ep - 1])                  # state that emitted <evi>: (N, d)
            f = self.evidence.frame(hf)[eb]                         # (N, T, d)
            out["evi_logits"] = torch.einsum("nd,ntd->nt", q, f) * self.evidence.scale
            out["evi_features"] = q
        return out

    def align_embeddings(self, frame_features, span_mask, text_ids, text_mask):
        """Moment and text embeddings for contrastive alignment (L2-normalised)."""
        fr = frame_features.mean(2)                                 # (B, T, D)
        m = span_mask[..., None].float()
        v = (fr * m).sum(1) / m.sum(1).clamp(min=1)                 # (B, D)
        return F.normalize(self.align_video(v), dim=-1), F.normalize(self.text_encoder(text_ids, text_mask), dim=-1)

    # -------------------------------------------------------------- inference
    @torch.no_grad()
    def generate(self, frames: torch.Tensor, mel: torch.Tensor, times: torch.Tensor, prompt_ids: list[int],
                 duration: float, max_new_tokens: int = 48, query_ids: list[int] | None = None) -> dict:
        """Greedy decoding for one video ``frames (1, T, 3, H, W)`` with evidence grounding.

        Returns generated ids, and per ``<evi>``: its stage (1 grounding, 2 answer), frame
        scores ``(T,)`` (a pooled token's score repeated over its frames) and decoded
        ``[start, end, score]``. ``coords`` holds ``(axis, value)`` for each generated LAPE
        coordinate token, read from the two most probable neighbouring anchors of its axis
        (LLaVA-ST section 3.2): seconds for time (``"t"``), [0, 1] for width and height (``"x"``, ``"y"``).
        """
        self.eval()
        T = frames.shape[1]
        fmask = torch.ones(1, T, dtype=torch.bool)
        g = llm_group(T, self.cfg.llm_frames)
        fps = self.cfg.fps / g                                      # frame tokens per second
        q = torch.tensor([query_ids]) if query_ids else None
        frame_emb, fusion_emb, _ = self.video_embeddings(frames, mel, fmask, times, q,
                                                         None if q is None else torch.ones_like(q, dtype=torch.bool),
                                                         torch.tensor([float(duration)]))
        ids = torch.tensor([prompt_ids])
        emb = self.scatter_video(ids, frame_emb, fusion_emb, [frame_emb.shape[1]])
        Tl, K = frame_emb.shape[1:3]
        vpos = (ids[0] == self.video_id).nonzero()[:, 0][fusion_emb.shape[1]:]
        frame_pos = vpos.view(1, Tl, K)
        res = self.llm(inputs_embeds=emb, use_cache=True, output_hidden_states=True)
        hf = self.frame_states(res.hidden_states[-2], frame_pos)   # (1, T, C)
        f = self.evidence.frame(hf)[0]                              # (T, d)
        past, h_last, logits = res.past_key_values, res.hidden_states[-2][0, -1], res.logits[0, -1]
        table = self.llm.get_input_embeddings()
        frame_level = self.cfg.evidence.level == "frame"
        out_ids, evidence, stage, pos, coords = [], [], 1, len(prompt_ids), []
        for _ in range(max_new_tokens):
            nxt = int(logits.argmax())
            if nxt == self.tokenizer.eos_token_id:
                break
            out_ids.append(nxt)
            if nxt in self.axis_of:
                a = self.axis_of[nxt]
                v = float(decode_position(logits[self.coord_axes[a]]))
                coords.append((a, v * duration if a == "t" else v))
            e = table(torch.tensor([[nxt]]))                        # (1, 1, C)
            if nxt == self.evi_end_id:
                stage = 2
            if nxt == self.evi_id:
                s = torch.sigmoid(self.evidence.query(h_last) @ f.T * self.evidence.scale).numpy()  # (T,)
                if frame_level:      # one frame: its start (first of a pair) or its end
                    a = b = int(s.argmax())
                    span = [a / fps, min(duration, (a + 1) / fps), float(s[a])]
                else:
                    a, b = salient_frames(s, self.cfg.evidence.threshold)
                    span = decode_interval(s, fps, duration, self.cfg.evidence.threshold)
                evidence.append({"stage": stage, "scores": np.repeat(s, g)[:T], "span": span})  # scores per frame
                if self.cfg.evidence.semantic_capture:
                    e = e + hf[:, a:b + 1].mean(1, keepdim=True)
            res = self.llm(inputs_embeds=e, past_key_values=past, use_cache=True, output_hidden_states=True,
                           position_ids=torch.tensor([[pos]]))
            pos += 1
            past, h_last, logits = res.past_key_values, res.hidden_states[-2][0, -1], res.logits[0, -1]
        return {"ids": out_ids, "evidence": pair_frames(evidence) if frame_level else evidence, "coords": coords}

    def render_answer(self, ids: list[int], evidence: list[dict], coords: list = ()) -> str:
        """Answer-stage text with each ``<evi>`` written as "s - e seconds" (at frame level, each
        (start, end) pair of ``<evi>`` as one span) and each LAPE coordinate token as its decoded
        value (``coords`` from :meth:`generate`: seconds, or a fraction of the frame for boxes)."""
        toks = self.tokenizer.convert_ids_to_tokens(ids)
        answer_ev = iter(e for e in evidence if e["stage"] == 2)
        values = iter(coords)
        text, piece, after, odd = [], [], self.evi_end_id not in ids, False
        for i, t in zip(ids, toks):
            coord = next(values, ("t", float("nan"))) if i in self.axis_of else None
            if i == self.evi_end_id:
                after = True
                continue
            if not after:
                continue
            if i == self.evi_id:
                text.append(self.tokenizer.convert_tokens_to_string(piece))
                piece = []
                if self.cfg.evidence.level == "frame":
                    odd = not odd
                    if not odd:      # the end of a pair: its start token wrote the pair's span
                        continue
                ev = next(answer_ev, None)
                text.append(span_text(ev["span"]) if ev else "")
            elif coord is not None:
                text.append(self.tokenizer.convert_tokens_to_string(piece))
                piece = []
                text.append(f"{coord[1]:.1f}" if coord[0] == "t" else f"{coord[1]:.2f}")
            else:
                piece.append(t)
        text.append(self.tokenizer.convert_tokens_to_string(piece))
        return re.sub(r"\s+([.,?!])", r"\1", " ".join(x.strip() for x in text if x.strip()))

    # -------------------------------------------------------------- save/load
    def save(self, path: str | Path) -> None:
        """``config.json`` + ``model.safetensors`` + ``tokenizer/`` (+ ``backbones.json``), written atomically per file.

        ``backbones.json`` holds the full transformers configs of HF backbones, so :meth:`load`
        rebuilds them without fetching the original pretrained weights (they are in the file).
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path / "tokenizer"))
        hf = backbones.hf_configs(self)
        files = {"config.json": json.dumps(asdict(self.cfg), indent=2)} | (
            {"backbones.json": json.dumps(hf, indent=2)} if hf else {})
        for name, text in files.items():
            tmp = path / f"{name}.tmp"
            tmp.write_text(text)
            tmp.replace(path / name)
        # tied weights (embeddings and LM head, peft's shared token deltas) are stored once:
        # safetensors refuses shared storage, and the rebuilt model shares it again on load
        state, seen = {}, set()
        for k, v in self.state_dict().items():
            key = (v.data_ptr(), tuple(v.shape), v.dtype)
            if v.numel() and key in seen:
                continue
            seen.add(key)
            state[k] = v.detach().cpu().contiguous()
        save_file(state, str(path / "model.safetensors.tmp"), metadata={"format": "pt"})
        (path / "model.safetensors.tmp").replace(path / "model.safetensors")   # last: marks the folder complete

    @classmethod
    def load(cls, path: str | Path, allow_pickle: bool = False) -> "DamoModel":
        """Rebuild a saved model exactly. Weights come from ``model.safetensors``; a pickled
        ``model.bin``/``model.pt`` is read only with ``allow_pickle=True`` (unpickling can run code)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a DaMO model folder (needs config.json and model.safetensors)")
        weights = path / "model.safetensors"
        if not weights.is_file():
            pickled = [path / f"model{s}" for s in (".bin", ".pt") if (path / f"model{s}").is_file()]
            if not pickled:
                raise FileNotFoundError(f"{path} is not a DaMO model folder (needs config.json and model.safetensors)")
            weights = pickled[0]
        cfg = DamoConfig.from_dict(json.loads((path / "config.json").read_text()))
        state = backbones.load_state_file(weights, allow_pickle=allow_pickle)
        tok = PreTrainedTokenizerFast.from_pretrained(str(path / "tokenizer"))
        build = copy.deepcopy(cfg)
        hf = json.loads((path / "backbones.json").read_text()) if (path / "backbones.json").is_file() else {}
        for part, hf_cfg in hf.items():     # rebuild HF backbones from their configs: weights come from `state`
            sub = getattr(build, part)
            sub.pretrained, sub.config = False, hf_cfg
            sub.family = backbones.FAMILY_OF_MODEL_TYPE.get(hf_cfg["model_type"], hf_cfg["model_type"])
        model = cls(build, tok)
        model.cfg = cfg
        ptr = {k: v.data_ptr() for k, v in model.state_dict().items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        loaded = {ptr[k] for k in state if k in ptr}
        missing = [k for k in missing if ptr[k] not in loaded]     # aliases of loaded tensors (tied weights)
        if missing or unexpected:
            raise ValueError(f"checkpoint {path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.llm.tie_weights()
        return model.eval()

    # transformers-style names for the same folder format
    save_pretrained = save

    @classmethod
    def from_pretrained(cls, path: str | Path, allow_pickle: bool = False) -> "DamoModel":
        """Alias of :meth:`load` (transformers naming)."""
        return cls.load(path, allow_pickle=allow_pickle)
