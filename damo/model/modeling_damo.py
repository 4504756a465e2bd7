"""DamoModel: the whole forward pass, top to bottom (its settings: :mod:`damo.model.configuration_damo`).

Data flow (B batch, T frames at 1/fps, D fuser width, C LLM width):
 1. frames ``(B, T, 3, H, W)`` -> vision encoder -> ``(B, T, 1+P, Dv)``;
    per-frame log-mel ``(B, T, F, M)`` -> audio encoder -> ``(B, T, 1+A, Da)``.
 2. DaMO global residual per modality -> ``(B, T, Lv, D)`` and ``(B, T, La, D)``.
 3. temporal grouped (depthwise) convolution over the visual stream (DaMO temporal pathway;
    stride 1 so every frame keeps its own token for evidence grounding).
 4. T-Fuseformer -> per-frame fused grid ``(B, T, Lv, D)`` + fusion tokens ``(B, F, D)``; frames over
    the LLM frame budget are pooled in groups, then the compressor keeps ``K`` tokens per frame
    token under the visual-token budget ``(B, T', K, D)`` (Dynamic-VLM; LLaVA-ST's packer adds a
    slow stream ``(B, G, s*s, D)``). With ``compressor.placement: fuser`` the compressor works on
    the residual tokens in front of the fuser instead, which emits ``fuser.frame_tokens`` per frame.
 5. frame tokens get their time (``time_encoding``: a learned map of a sinusoid of the seconds
    by default; LAPE time tokens; Dynamic-VLM's timestamp text; none); projector -> LLM width,
    normalised to the scale of the LLM's word embeddings;
    fusion tokens pass a one-layer Q-Former bridge (DaMO's bridge to the LLM).
 6. LLM (any HF causal LM): ``<video>`` placeholders are replaced by [fusion; slow; frames]
    (the transformers ``masked_scatter`` pattern).
 7. evidence tokens (D²VLM section 3.2): each ``<evi>`` is grounded by scoring the
    penultimate-layer state that emitted it against every frame's state; during training the
    ground-truth frames' mean state at ``evidence.capture_layer`` (inference: the salient
    frames') is added to the ``<evi>`` input embedding (semantic capture).
"""
from __future__ import annotations

import copy
import fnmatch
import json
import math
import re
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

from damo.model import backbones
from damo.model.attention import VIDEO_ATTENTION
from damo.model.batch import Batch
from damo.model.checks import require
from damo.model.configuration_damo import DamoConfig, LLMConfig
from damo.model.coordinates import (anchor_tables, coordinate_axes, decode_position, frame_time_embedding,
                                    grid_position_embedding, interpolate_anchors, register_propagation)
from damo.model.encoders import Block
from damo.model.compressors import STREAM_ORDERS, TokenBudget, build_compressor, slow_steps
from damo.model.evidence import (EvidenceHead, capture_weights, pool_groups, run_frames, sample_frames,
                                 salient_frames)
from damo.model.fuseformer import CrossBlock, TemporalFuseformer
from damo.model.generation import Generation, generation_of, next_tokens, stop_ids, stop_length
from damo.model.residual import GlobalResidual
from damo.model.time_encodings import TIME_ENCODINGS
from damo.model import tokenizer as tk
from damo.textio import loads




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


def build_llm(cfg: LLMConfig, tok: PreTrainedTokenizerFast, new_tokens: list[int] | None = None) -> nn.Module:
    """The LLM an :class:`LLMConfig` names; ``new_tokens`` are the vocabulary rows we add (they train
    with LoRA in the embeddings and the output head, see :func:`backbones.build_causal_lm`)."""
    if cfg.kind == "tiny_qwen2":
        c = Qwen2Config(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                        num_key_value_heads=cfg.kv_heads, max_position_embeddings=8192, tie_word_embeddings=True,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        return AutoModelForCausalLM.from_config(c, dtype=backbones.resolve_dtype(cfg.dtype))
    if cfg.kind == "hf":
        return backbones.build_causal_lm(cfg, tok, new_tokens)
    raise ValueError(f"unknown llm.kind {cfg.kind!r}; valid: tiny_qwen2, hf")


def frozen(module: nn.Module) -> bool:
    """No parameter of ``module`` trains: it then runs without autograd state (and chunked, for towers)."""
    return not any(p.requires_grad for p in module.parameters())


class VideoEncoder(nn.Module):
    """Frames and sound -> fused per-frame grid and fusion tokens (steps 1-4 of the module docstring):
    the vision and audio towers, DaMO's global residual per modality, the temporal convolution,
    the compressor (Dynamic-VLM / LLaVA-ST's packer) and the T-Fuseformer."""

    def __init__(self, cfg: DamoConfig):
        super().__init__()
        fc, cc = cfg.fuser, cfg.compressor
        D = fc.width
        self.vision = backbones.build_vision(cfg.vision)
        self.audio = backbones.build_audio(cfg.audio)
        self.residual_v = GlobalResidual(self.vision.width, D, fc.visual_tokens, grid=True)
        self.residual_a = GlobalResidual(self.audio.width, D, fc.audio_tokens, grid=False)
        self.temporal_conv = nn.Conv1d(D, D, fc.conv_kernel, padding=fc.conv_kernel // 2, groups=D)
        self.at_llm = cc.placement == "llm"          # compress the fused grid the LLM reads (else the fuser's input)
        if self.at_llm and fc.frame_tokens != 1:
            raise ValueError("with compressor.placement llm the compressor sets the tokens per frame: "
                             f"set fuser.frame_tokens to 1 (got {fc.frame_tokens})")
        self.compressor = self.make_compressor(cfg, D)
        self.fuseformer = TemporalFuseformer(D, fc.blocks, fc.heads, fc.visual_queries, fc.audio_queries,
                                             fc.fusion_tokens, fc.frame_tokens, cfg.max_frames, fc.window,
                                             grid=self.at_llm)

    @staticmethod
    def make_compressor(cfg: DamoConfig, width: int) -> nn.Module:
        """The config's compressor for tokens ``width`` wide (the fuser's; the LLM's under ``lape_at: grid``)."""
        cc = cfg.compressor
        return build_compressor(cc.kind, width, tokens_in=cfg.fuser.visual_tokens, budget=cc.budget, k_min=cc.k_min,
                                k_max=cc.k_max, seed=cc.seed, **cc.options)

    def forward(self, frames: torch.Tensor, mel: torch.Tensor, frame_mask: torch.Tensor,
                vision: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                counts: list[int] | None = None):
        """-> per-frame fuser features ``(B, T, K, D)`` (placement ``llm``: the fused grid, ``K = Lv``)
        and fusion tokens ``(B, F, D)``. ``vision`` ``(B, T, 1+P, Dv)`` and ``audio`` ``(B, T, 1+A, Da)``
        are stored outputs of the frozen towers (:mod:`damo.data.features`), used instead of running them.
        ``counts``: real frames per row (the batch's ``frame_counts``), else read from ``frame_mask``."""
        with torch.no_grad() if frozen(self.vision) else nullcontext():
            vision = (self._real_frames(frames, frame_mask, counts) if vision is None
                      else vision.to(frames.device, torch.float32))
        with torch.no_grad() if frozen(self.audio) else nullcontext():
            audio = self.audio(mel, frame_mask) if audio is None else audio.to(mel.device, torch.float32)
        # padded frames are zeroed so that the temporal convolution sees the clip's end exactly
        # as an unpadded clip does (a batch then gives every clip the features it gets alone)
        v = self.residual_v(vision) * frame_mask[:, :, None, None]  # (B, T, Lv, D)
        a = self.residual_a(audio)                                  # (B, T, La, D)
        B, T, Lv, D = v.shape
        v = v.permute(0, 2, 3, 1).reshape(B * Lv, D, T)             # (B*Lv, D, T)
        v = v + self.temporal_conv(v)
        v = v.reshape(B, Lv, D, T).permute(0, 3, 1, 2)              # (B, T, Lv, D)
        if not self.at_llm:
            v = self.compressor(v, frame_mask)                      # (B, T, K, D) under the token budget
        return self.fuseformer(v, a, frame_mask)

    def _real_frames(self, frames: torch.Tensor, frame_mask: torch.Tensor, counts: list[int] | None) -> torch.Tensor:
        """The vision tower over a batch's real frames only ``(B, T, 1+P, Dv)``: padding frames get zeros
        (the residual's output is masked there anyway), so a batch of one long and several short clips
        costs the tower their frames, not B x T. Each row's real frames come first (``counts`` of them), so
        slices select them: with the counts known to the host the device is never waited for."""
        if frame_mask.is_meta:                                      # damo.plan: no values to select with
            return self._per_frames(self.vision, frames)
        counts = frame_mask.sum(1).tolist() if counts is None else counts
        real = torch.cat([frames[b, :n] for b, n in enumerate(counts)])   # (N real, 3, H, W)
        h = self._per_frames(self.vision, real[None])[0]                   # (N real, 1+P, Dv)
        T = frame_mask.shape[1]
        return torch.stack([F.pad(x, (0, 0, 0, 0, 0, T - len(x))) for x in h.split(counts)])   # (B, T, 1+P, Dv)

    @staticmethod
    def _per_frames(tower: nn.Module, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """A per-frame tower over uint8 frames ``x (B, T, 3, H, W)``, scaled to [0, 1] on the device;
        without gradients ``chunk`` frames at a time, so an hour of video never holds the activations
        (nor the float copy) of all its frames at once. (Not for Whisper, whose windows share 30 s inputs.)"""
        if torch.is_grad_enabled() or x.shape[1] <= chunk:
            return tower(x.float() / 255.0)
        return torch.cat([tower(x[:, i:i + chunk].float() / 255.0) for i in range(0, x.shape[1], chunk)], 1)


class Connector(nn.Module):
    """Fuser features -> LLM inputs (step 5): the time encoding's module (``time_map``: ``sinusoid``'s
    learned map; None: the encoding adds none), the projector, the query-aware match projection, and the
    Q-Former bridge of the fusion tokens."""

    def __init__(self, cfg: DamoConfig, C: int, rms: float, time_map: nn.Module | None):
        super().__init__()
        D = cfg.fuser.width
        self.timed = time_map is not None
        if self.timed:
            self.time_proj = time_map
        self.projector = nn.Sequential(nn.Linear(D, C), nn.GELU(), nn.Linear(C, C), nn.LayerNorm(C))
        self.bridge_queries = nn.Parameter(torch.randn(1, cfg.bridge_tokens, D) * 0.02)
        self.bridge = CrossBlock(D, cfg.fuser.heads)
        self.bridge_out = nn.Sequential(nn.Linear(D, C), nn.LayerNorm(C))
        # Both video paths end in a LayerNorm whose gain starts at the RMS of the LLM's word
        # embeddings, so video tokens enter the LLM at the scale of text tokens. Without it they
        # were 50-200x larger: the frames' residual stream barely changed across layers (frame
        # states ignored the question) and generation could not even restate the question.
        for norm in (self.projector[-1], self.bridge_out[-1]):
            nn.init.constant_(norm.weight, rms)
        # query-aware frame tokens: each frame's alignment embedding times the question's, and
        # their cosine, projected into the LLM (zero-initialised: a no-op until trained)
        self.match_proj = nn.Linear(cfg.align_dim + 1, C)
        nn.init.zeros_(self.match_proj.weight)
        nn.init.zeros_(self.match_proj.bias)

    def bridge_fusion(self, fusion: torch.Tensor) -> torch.Tensor:
        """Fusion tokens ``(B, F, D)`` -> the bridge's ``bridge_tokens`` LLM embeddings ``(B, F', C)``."""
        return self.bridge_out(self.bridge(self.bridge_queries.expand(fusion.shape[0], -1, -1), fusion))


class Alignment(nn.Module):
    """DaMO's video-text alignment space (stage 2's contrastive loss; also the query-aware frame
    tokens): a small text encoder, the video side's projection and the learned temperature."""

    def __init__(self, cfg: DamoConfig, vocab: int):
        super().__init__()
        self.text_encoder = TextEncoder(vocab, cfg.fuser.width, cfg.align_dim)
        self.align_video = nn.Linear(cfg.fuser.width, cfg.align_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


# Parameter names before the submodules were grouped -> their group; checkpoints and trainable globs
# written with the old names keep working (:func:`grouped_name`)
GROUP_OF = {**dict.fromkeys(("vision", "audio", "residual_v", "residual_a", "temporal_conv", "compressor",
                             "fuseformer"), "video"),
            **dict.fromkeys(("time_proj", "projector", "bridge_queries", "bridge", "bridge_out", "match_proj"),
                            "connector"),
            **dict.fromkeys(("text_encoder", "align_video", "logit_scale"), "alignment")}


def grouped_name(name: str) -> str:
    """A parameter name or trainable glob in the flat layout (``fuseformer.*``, ``residual_*``,
    ``bridge*``) -> the grouped one (``video.fuseformer.*``, ``video.residual_*``, ``connector.bridge*``);
    names already grouped pass unchanged."""
    head = re.match(r"[A-Za-z0-9_]*", name).group()
    rest = name[len(head):]
    if head in GROUP_OF:
        return f"{GROUP_OF[head]}.{name}"
    if rest[:1] in ("*", "?", "[") and head:       # a glob over several flat names: residual_*, bridge*
        groups = {g for n, g in GROUP_OF.items() if fnmatch.fnmatchcase(n, head + rest.split(".")[0])}
        if len(groups) == 1:
            return f"{groups.pop()}.{name}"
    return name


class DamoModel(nn.Module):
    """The whole model: ``video`` (:class:`VideoEncoder`), ``connector`` (:class:`Connector`),
    ``llm`` (any HF causal LM, optionally with LoRA), ``evidence`` (D²VLM's evidence head) and
    ``alignment`` (:class:`Alignment`). Recipe stages name these groups in their ``trainable`` globs."""

    def __init__(self, cfg: DamoConfig, tokenizer: PreTrainedTokenizerFast):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.video = VideoEncoder(cfg)
        self.time = TIME_ENCODINGS[cfg.time_encoding](cfg.time_bins)
        # LAPE coordinate tokens (LLaVA-ST eq. 4) and the time encoding's own tokens join the vocabulary
        # before the LLM is sized to it
        self.coord_axes = coordinate_axes(tokenizer, self.time.anchors, cfg.box_bins)
        self.axis_of = {i: a for a, ids in self.coord_axes.items() for i in ids}     # token id -> axis
        self.time_ids = self.coord_axes.get("t", [])
        tokenizer.add_tokens(self.time.vocabulary, special_tokens=True)
        ours = [t for t in tk.SPECIAL_TOKENS if t in tokenizer.get_vocab()]
        self.new_token_ids = (tokenizer.convert_tokens_to_ids(ours) + sorted(self.axis_of)
                              + tokenizer.convert_tokens_to_ids(self.time.vocabulary))
        self.llm = build_llm(cfg.llm, tokenizer, self.new_token_ids)
        if self.coord_axes:     # LLaVA-ST's Neighboring Token Propagation of the anchors' rows
            register_propagation(self.llm, self.coord_axes)
        for a, ids in self.coord_axes.items():     # LAPE's anchors, on the model's device (not saved)
            self.register_buffer(f"anchors_{a}", torch.tensor(ids), persistent=False)
        self.trained: set[str] = set()     # parameter names any stage trained (damo.train.loop.set_trainable)
        # every training forward runs every part, the semantic-capture pass and the evidence head even for
        # a batch without <evi>, so FSDP ranks issue the same collectives whatever their data (forward)
        self.fixed_graph = False
        w = self.llm.get_input_embeddings().weight
        # on the meta device (damo.plan) there are no values to measure: any gain has the same shape
        rms = 1.0 if w.is_meta else float(w.detach().float().pow(2).mean().sqrt())
        C = self.llm.config.hidden_size
        self.connector = Connector(cfg, C, rms, self.time.frame_module(cfg.fuser.width))
        if cfg.lape_at == "grid":          # the packer works on projected grids, in the LLM's width (LLaVA-ST)
            self.video.compressor = self.video.make_compressor(cfg, C)
        self.evidence = EvidenceHead(C, cfg.evidence.dim, cfg.evidence.hidden, cfg.evidence.norm)
        n_layers = self.llm.config.get_text_config().num_hidden_layers
        if not -(n_layers + 1) <= cfg.evidence.capture_layer <= n_layers:
            raise ValueError(f"model.evidence.capture_layer {cfg.evidence.capture_layer} is not a hidden-state index "
                             f"of this {n_layers}-layer LLM (0 = embeddings .. {n_layers}, or negative)")
        self.alignment = Alignment(cfg, len(tokenizer))
        self.budget = TokenBudget(**cfg.token_budget()) if self.video.at_llm else None
        self.generation = generation_of(cfg.generation)        # how answers are decoded (transformers' generation_config)
        self.stop_ids = stop_ids(tokenizer, cfg.chat["stop"] if cfg.chat else ())    # where they end
        ids = tokenizer.convert_tokens_to_ids
        self.video_id, self.evi_id, self.evi_end_id = ids(tk.VIDEO), ids(tk.EVI), ids(tk.EVI_END)

    # ------------------------------------------------------------------ video
    def video_embeddings(self, batch: Batch):
        """A batch's clips (frames or stored tower outputs, times, ``group``; ``duration`` for LAPE;
        ``query_ids`` for query-aware tokens) -> frame embeddings ``(B, T', K, C)``, the embeddings in
        front of the frames (bridged fusion tokens, then the packer's slow stream if any:
        ``(B, F' + G s^2, C)``), fuser frame features ``(B, T, K, D)``. ``T' = T`` unless the frame
        budget caps the frame tokens: then each token is the mean of ``group`` consecutive frames
        (the processor's :meth:`~damo.model.processing.DamoProcessor.layout`, carried by the batch).
        With the compressor at the LLM, K (and the slow side) follow its budget for T'
        (:class:`TokenBudget`).

        With ``query_aware`` and the question's token ids ``(B, Lq)``, every frame token also
        carries how the frame matches the question in the alignment space of stage 1 (the
        instruction-aware visual tokens of InstructBLIP, built on DaMO's video-text alignment):
        the elementwise product of the frame's and the question's normalised embeddings, and
        their cosine. The LLM then compares question and frames on features trained for that.

        Time reaches the frame tokens per ``time_encoding``: ``sinusoid`` adds a learned map of a
        sinusoid of the seconds before the projector; ``lape`` adds LLaVA-ST's LAPE after it
        (:meth:`lape`), or with ``lape_at: grid`` to each frame's projected grid before the packer, which
        then packs in the LLM's width, as LLaVA-ST's code does (appletea233/LLaVA-ST bacf6d6,
        llava/model/llava_arch.py ``encode_images``: mm_projector, LAPE, vision_resampler); ``timestamp``
        writes the time as text in the prompt
        instead (:meth:`~damo.model.processing.DamoProcessor.prompt`) and ``none`` gives no time at all.
        """
        b = batch
        fr, fu = self.video(b.frames, b.mel, b.frame_mask, b.vision_features, b.audio_features, b.frame_counts)
        frl, ml = pool_groups(fr, b.frame_mask, b.group)            # (B, T', K, D), (B, T')
        times = pool_groups(b.times, b.frame_mask, b.group)[0]      # (B, T')
        slow = None
        grid = self.cfg.lape_at == "grid"
        if self.video.at_llm:
            k, side = self.budget.split(frl.shape[1])
            if grid:   # LLaVA-ST: projector, then LAPE on every frame's grid, then the packer (in the LLM's width)
                frl = self.connector.projector(frl) + self.lape(times, b.duration, frl.shape[2])   # (B, T', L, C)
            frl, slow = self.video.compressor.pack(frl, ml, k, side)   # (B, T', K, D or C), (B, G, s*s, D or C) or None
        qa = None
        if self.cfg.query_aware and b.query_ids is not None:
            qa = F.normalize(self.alignment.text_encoder(b.query_ids, b.query_mask), dim=-1)   # (B, d)
        e = frl if grid else self.llm_tokens(frl, times, b.duration, qa)   # (B, T', K, C)
        q = self.connector.bridge_fusion(fu)                        # (B, F', C)
        if slow is None:
            return e, q, fr
        st = pool_groups(times, ml, self.video.compressor.stride)[0]   # each slow step's mean time (B, G)
        se = slow if grid else self.llm_tokens(slow, st, b.duration, qa)   # (B, G, s*s, C)
        return e, torch.cat([q, se.flatten(1, 2)], 1), fr

    def llm_tokens(self, x: torch.Tensor, times: torch.Tensor, duration: torch.Tensor | None,
                   qa: torch.Tensor | None) -> torch.Tensor:
        """Tokens ``x (B, N, K, D)`` at ``times (B, N)`` -> LLM embeddings ``(B, N, K, C)``: time, projector,
        match with the question ``qa (B, d)`` (see :meth:`video_embeddings`)."""
        con, vid = self.connector, self.video
        t = con.time_proj(times)[:, :, None] if con.timed else 0     # the time encoding's module (B, N, 1, D)
        e = con.projector(x + t)                                    # (B, N, K, C)
        if self.coord_axes:          # LAPE; grid terms only where the K tokens are a row-major grid
            e = e + self.lape(times, duration, x.shape[2] if vid.at_llm and vid.compressor.keeps_grid else 1)
        if qa is not None:
            va = F.normalize(self.alignment.align_video(x), dim=-1)  # (B, N, K, d)
            prod = va * qa[:, None, None]
            e = e + con.match_proj(torch.cat([prod, prod.sum(-1, keepdim=True)], -1))
        return e

    def lape(self, times: torch.Tensor, duration: torch.Tensor | None, k: int) -> torch.Tensor | float:
        """LLaVA-ST's LAPE (section 3.2, eq. 5) for frame tokens ``(B, T', K, C)``, broadcastable to them:
        the time term per frame (the time tokens' mean input/output embedding interpolated at
        ``times / duration``, ``duration (B,)`` seconds) and, with box tokens, the width and height
        terms per token when the K tokens of a frame are a square row-major grid (K = 1: none)."""
        tables = {a: anchor_tables(self.llm, self.get_buffer(f"anchors_{a}")) for a in self.coord_axes}
        pe: torch.Tensor | float = 0.0
        if "t" in tables:
            if duration is None:
                raise ValueError("LAPE time encoding needs the videos' durations")
            pe = frame_time_embedding(*tables["t"], times, duration)[:, :, None]    # (B, T', 1, C)
        side = math.isqrt(k)
        if "x" in tables and side * side == k:
            pe = pe + grid_position_embedding(side, side, tables)                   # (K, C)
        return pe

    def coordinate_inputs(self, emb: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Coordinate tokens in the text enter the LLM at their exact value (LLaVA-ST code,
        ``token_transfer``): the embedding at each ``coord_pos`` becomes the interpolation of its two
        neighbouring anchors' input embeddings with the soft target's weights (``coord_ids``,
        ``coord_w``), not the closer anchor's alone. ``emb (B, L, C)``."""
        cp = batch.coord_pos
        if cp is None or not len(cp):
            return emb
        rows = self.llm.get_input_embeddings()(batch.coord_ids)                     # (N, 2, C)
        x = (batch.coord_w[..., None].to(rows.dtype) * rows).sum(1)                 # (N, C)
        return emb.index_put((cp[:, 0], cp[:, 1]), x.to(emb.dtype))

    def scatter_video(self, input_ids, frame_emb, fusion_emb, num_frames):
        """Replace ``<video>`` placeholders by [fusion; the packer's slow stream; frames] per sample (the
        two streams in ``stream_order``) -> inputs_embeds ``(B, L, C)``. A row of ``n`` frame tokens keeps
        the slow steps that hold its frames."""
        emb = self.llm.get_input_embeddings()(input_ids)
        F_, per_step, stride = self.cfg.bridge_tokens, 0, 1
        if fusion_emb.shape[1] > F_:                                # the packer's slow stream (B, G s^2, C)
            stride = self.video.compressor.stride
            per_step = (fusion_emb.shape[1] - F_) // slow_steps(frame_emb.shape[1], stride)
        order = STREAM_ORDERS[self.cfg.stream_order]
        parts = [torch.cat([fusion_emb[b, :F_]] + order([frame_emb[b, :n].flatten(0, 1)],
                                                        [fusion_emb[b, F_:F_ + slow_steps(n, stride) * per_step]]))
                 for b, n in enumerate(num_frames)]
        vid = torch.cat(parts).to(emb.dtype)                        # (sum_b (F' + S_b + T_b K), C)
        mask = (input_ids == self.video_id).unsqueeze(-1)
        require(mask.sum() == vid.shape[0], f"the prompt's {tk.VIDEO} placeholders are not the {vid.shape[0]} "
                                            "tokens the video gives")
        return emb.masked_scatter(mask, vid)

    def hidden_state_at(self, emb: torch.Tensor, mask: torch.Tensor, index: int) -> torch.Tensor:
        """``hidden_states[index]`` ``(B, L, C)`` of the LLM on ``emb``, running only the decoder layers that
        reach it and no output head: D²VLM's capture pass reads layer 6 of Phi-3's 32, so it costs a fifth
        of the decoder and no logits instead of the whole LLM. transformers' decoders run
        ``layers[:config.num_hidden_layers]``, so the count is lowered for this call; ``hidden_states[i]``
        is the input of layer ``i + 1``, which therefore runs too (the last entry is the final norm's)."""
        dec = self.llm.get_decoder()
        n = dec.config.num_hidden_layers
        i = index % (n + 1)
        dec.config.num_hidden_layers = min(i + 1, n)
        try:
            out = dec(inputs_embeds=emb, attention_mask=mask, output_hidden_states=True, use_cache=False)
            return out.hidden_states[i]
        finally:
            dec.config.num_hidden_layers = n

    def frame_states(self, hidden: torch.Tensor, frame_pos: torch.Tensor) -> torch.Tensor:
        """Mean LLM state over each frame's K tokens: hidden ``(B, L, C)``, frame_pos ``(B, T, K)`` -> ``(B, T, C)``."""
        B, T, K = frame_pos.shape
        h = hidden.gather(1, frame_pos.flatten(1)[..., None].expand(-1, -1, hidden.shape[-1]))
        return h.view(B, T, K, -1).mean(2)

    # ---------------------------------------------------------------- forward
    def forward(self, batch: Batch) -> dict:
        """Teacher-forced pass. Returns logits, evidence logits ``(N, T)`` and evidence features.

        A batch without frames is text only: just the LLM's logits. Without ``input_ids`` only the
        fuser's frame features (the contrastive alignment stage). With :attr:`fixed_graph` a batch
        without ``<evi>`` still runs the semantic-capture pass and the evidence head, and ``zero``
        (a 0 that depends on them) is returned for the loss: under FSDP every rank then gathers and
        reduces the same parameters whichever rank holds evidence tokens.
        """
        if batch.text_only:
            emb = self.coordinate_inputs(self.llm.get_input_embeddings()(batch.input_ids), batch)
            return {"logits": self.llm(inputs_embeds=emb, attention_mask=batch.attention_mask, use_cache=False).logits}
        frame_emb, fusion_emb, fr = self.video_embeddings(batch)
        out = {"frame_features": fr}
        if batch.input_ids is None:
            return out
        emb = self.scatter_video(batch.input_ids, frame_emb, fusion_emb, batch.num_frames)
        emb = self.coordinate_inputs(emb, batch)
        mask = VIDEO_ATTENTION[self.cfg.video_attention](batch.input_ids, batch.attention_mask, self.video_id)
        eb, ep = batch.evi_batch, batch.evi_pos                     # (N,), (N,) positions of <evi> inputs
        ev = self.cfg.evidence
        idle = self.fixed_graph and not len(eb)                     # run the evidence parts for nothing
        if ev.semantic_capture and (len(eb) or idle):
            # Frame states do not depend on later text tokens (causal LM), so a first pass gives the states
            # whose ground-truth mean is captured into each <evi> (official: with gradients, layer 6).
            with torch.set_grad_enabled(ev.capture_grad and torch.is_grad_enabled()):
                h0 = self.hidden_state_at(emb, mask, ev.capture_layer)
                hf0 = self.frame_states(h0, batch.frame_pos)        # (B, T, C)
            w = capture_weights(batch.evi_targets)                  # (N, T)
            cap = (w[..., None] * hf0[eb]).sum(1) / w.sum(1, keepdim=True).clamp(min=1e-6)  # (N, C)
            emb = emb.index_put((eb, ep), emb[eb, ep] + cap.to(emb.dtype))
        res = self.llm(inputs_embeds=emb, attention_mask=mask, output_hidden_states=True, use_cache=False)
        h = res.hidden_states[-2]                                   # penultimate layer (B, L, C)
        hf = self.frame_states(h, batch.frame_pos)                  # (B, T, C)
        out["logits"] = res.logits
        if idle:
            parts = [self.evidence.query(h[:1, 0]), self.evidence.frame(hf[:1, :1])]
            out["zero"] = sum(x.float().sum() for x in parts + ([hf0] if ev.semantic_capture else [])) * 0.0
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
        al = self.alignment
        return F.normalize(al.align_video(v), dim=-1), F.normalize(al.text_encoder(text_ids, text_mask), dim=-1)

    # -------------------------------------------------------------- inference
    def half_dtype(self) -> torch.dtype | None:
        """The half-precision dtype the backbones' weights are in (the ``dtype`` of the LLM and the
        towers: bfloat16 or float16), or None when every weight is float32."""
        halves = {p.dtype for p in self.parameters() if p.dtype in (torch.bfloat16, torch.float16)}
        if len(halves) > 1:
            raise ValueError("the model holds both bfloat16 and float16 weights; give the LLM and the towers one dtype")
        return halves.pop() if halves else None

    def autocast(self) -> torch.autocast:
        """Mixed precision for backbones in half precision: the modules kept in float32 (fuser,
        connector, evidence head, LoRA adapters) then compute in the backbones' dtype, as training does
        under autocast on GPUs, so no matmul meets two dtypes; a no-op when every weight is float32."""
        half = self.half_dtype()
        return torch.autocast(next(self.parameters()).device.type, dtype=half or torch.float32, enabled=half is not None)

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int = 48, tasks: list[str | None] | None = None,
                 seed: int = 0, policy: Generation | None = None) -> list[dict]:
        """Decoding with evidence grounding for a batch of left-padded prompts (the processor's
        :meth:`~damo.model.processing.DamoProcessor.generation_batch`): greedy, or as the model's
        ``generation`` settings say for each row's task (``tasks``; sampling draws from a generator
        seeded with ``seed``, so a call is reproducible). A row ends at the eos token or (with ``chat``)
        a stop string (:attr:`stop_ids`), which the answer does not keep.

        ``policy`` samples every row under those settings as a policy whose draws alone make the
        answer (a ``grpo`` stage's rollouts): a LAPE coordinate token is its anchor's value, fed back
        as that anchor's embedding, and each ``<evi>`` draws its frames at the policy's temperature
        (:func:`~damo.model.evidence.sample_frames`) and grounds their longest run (``frames``, the 0/1
        draw, and ``run``, that run's first and last frame token or ``None``, join its entry); a video
        placeholder is never drawn.

        Runs on the model's device with the KV cache; every row gets what it would get alone.
        Returns per row: generated ``ids``; per ``<evi>`` its stage (1 grounding, 2 answer), frame
        scores ``(T,)`` (a pooled token's score repeated over its frames) and ``grounded``, the first and
        last frame of the run it grounds with their mean score (None: a policy drew no frame);
        ``coords``, ``(axis, value)`` per generated LAPE coordinate token,
        read from the two most probable neighbouring anchors of its axis (LLaVA-ST section 3.2)
        and fed back as their interpolation (:meth:`coordinate_inputs`):
        seconds for time (``"t"``), [0, 1] for width and height (``"x"``, ``"y"``).
        The processor's :meth:`~damo.model.processing.DamoProcessor.decode` turns a row into text and spans.
        Backbones in half precision run under :meth:`autocast`.
        """
        with self.autocast():
            return self._generate(batch, max_new_tokens, tasks, seed, policy)

    def _generate(self, batch: Batch, max_new_tokens: int, tasks: list[str | None] | None, seed: int,
                  policy: Generation | None) -> list[dict]:
        """:meth:`generate`'s loop."""
        self.eval()
        dev = next(self.parameters()).device
        batch = batch.to(dev)
        ev_cfg = self.cfg.evidence
        g = batch.group
        frame_emb, fusion_emb, _ = self.video_embeddings(batch)
        attn = batch.attention_mask
        emb = self.scatter_video(batch.input_ids, frame_emb, fusion_emb, batch.num_frames)
        pos = (attn.cumsum(1) - 1).clamp(min=0)                     # left padding: positions start at each prompt
        mask = VIDEO_ATTENTION[self.cfg.video_attention](batch.input_ids, attn, self.video_id)
        res = self.llm(inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=True,
                       output_hidden_states=True)
        hf = self.frame_states(res.hidden_states[-2], batch.frame_pos)      # (B, T', C)
        f = self.evidence.frame(hf)                                 # (B, T', d)
        hc = (self.frame_states(res.hidden_states[ev_cfg.capture_layer], batch.frame_pos)  # captured states
              if ev_cfg.semantic_capture else None)
        past, h_last, logits = res.cache, res.hidden_states[-2][:, -1], res.logits[:, -1]
        B = attn.shape[0]
        nxt_pos = pos[:, -1:] + 1                                   # (B, 1)
        n_tok = batch.num_frames                                    # frame tokens per row
        n_frames = batch.frame_mask.sum(1).tolist()
        durations = batch.duration.tolist()
        table = self.llm.get_input_embeddings()
        rows = [{"ids": [], "evidence": [], "coords": []} for _ in range(B)]
        stage, done = [1] * B, [False] * B
        settings = [policy] * B if policy else [self.generation.for_task(t) for t in (tasks or [None] * B)]
        rng = torch.Generator(dev).manual_seed(seed)
        skip = {self.video_id, self.evi_id, self.tokenizer.pad_token_id}    # never penalised as repeats
        seen = [[i for i, a in zip(r, m) if a and i not in skip] for r, m in
                zip(batch.input_ids.tolist(), batch.attention_mask.tolist())]
        for _ in range(max_new_tokens):
            if policy:
                logits[:, self.video_id] = float("-inf")
            nxt = next_tokens(logits, seen, settings, rng)          # (B,)
            toks = nxt.tolist()
            for b, t in enumerate(toks):
                if t not in skip:
                    seen[b].append(t)
            for b, t in enumerate(toks):
                n_stop = 0 if done[b] else stop_length(rows[b]["ids"] + [t], self.stop_ids)    # eos, or the chat's stop string
                if n_stop:
                    done[b], rows[b]["ids"] = True, (rows[b]["ids"] + [t])[:-n_stop]
            if all(done):
                break
            e = table(nxt)[:, None]                                 # (B, 1, C)
            for b, t in enumerate(toks):
                if done[b]:
                    continue
                rows[b]["ids"].append(t)
                axis = self.axis_of.get(t)
                if axis is not None:
                    ids = self.coord_axes[axis]
                    if self.cfg.coordinate_decode == "argmax" or policy:    # the chosen anchor: its value, its own embedding
                        v = ids.index(t) / (len(ids) - 1)
                    else:                # read from two anchors, fed back as their interpolation
                        rel = decode_position(logits[b, ids])
                        e[b, 0] = interpolate_anchors(table(torch.as_tensor(ids, device=dev)), rel)
                        v = float(rel)
                    rows[b]["coords"].append((axis, v * durations[b] if axis == "t" else v))
                if t == self.evi_end_id:
                    stage[b] = 2
                if t != self.evi_id:
                    continue
                x = self.evidence.query(h_last[b]) @ f[b, :n_tok[b]].T * self.evidence.scale    # (T'_b,) logits
                s = torch.sigmoid(x).float().cpu().numpy()
                if policy:                       # the frames are drawn, and the longest run of them grounded
                    z, run = sample_frames(x, policy.temperature, rng)
                    lo, hi = run or (0, -1)
                    rows[b]["evidence"].append({"stage": stage[b], "scores": np.repeat(s, g)[:int(n_frames[b])],
                                                "grounded": run_frames(lo, hi, g, s) if run else None, "frames": z, "run": run})
                    if ev_cfg.semantic_capture and run:
                        e[b] = e[b] + hc[b, lo:hi + 1].mean(0, keepdim=True)
                    continue
                if ev_cfg.level == "frame":      # one frame: its start (first of a pair) or its end
                    lo = hi = int(s.argmax())
                else:
                    lo, hi = salient_frames(s, ev_cfg.threshold, ev_cfg.decode)
                rows[b]["evidence"].append({"stage": stage[b], "scores": np.repeat(s, g)[:int(n_frames[b])],
                                            "grounded": run_frames(lo, hi, g, s)})
                if ev_cfg.semantic_capture:
                    e[b] = e[b] + hc[b, lo:hi + 1].mean(0, keepdim=True)
            attn = torch.cat([attn, attn.new_ones(B, 1)], 1)
            res = self.llm(inputs_embeds=e, attention_mask=attn, cache=past, use_cache=True,
                           output_hidden_states=True, position_ids=nxt_pos)
            nxt_pos = nxt_pos + 1
            past, h_last, logits = res.cache, res.hidden_states[-2][:, -1], res.logits[:, -1]
        return rows

    # -------------------------------------------------------------- save/load
    def pretrained_keys(self) -> set[str]:
        """State-dict keys whose values come from pretrained backbone weights (a hub id or a folder)
        and that no stage trained: :meth:`save` refers to them by name instead of storing them."""
        parts = []
        if self.cfg.vision.kind == "hf_vision" and self.cfg.vision.pretrained:
            parts.append("video.vision.model.")
        if self.cfg.audio.kind == "hf_whisper" and self.cfg.audio.pretrained:
            parts.append("video.audio.encoder.")
        keys = {k for k in self.state_dict() if k.startswith(tuple(parts))}
        if self.cfg.llm.kind == "hf" and self.cfg.llm.pretrained:
            keys |= {k for k in self.state_dict() if k.startswith("llm.") and "lora_" not in k
                     and "trainable_tokens" not in k and "modules_to_save" not in k}
        return keys - self.trained

    def token_row_keys(self) -> list[str]:
        """Keys of the LLM's input-embedding and output-head weights (one key when tied)."""
        ptr = {v.data_ptr(): k for k, v in reversed(list(self.state_dict(keep_vars=True).items()))}
        emb, head = self.llm.get_input_embeddings(), self.llm.get_output_embeddings()
        mods = [emb] if head is None else [emb, head]
        # peft's trainable-token wrapper answers .weight with merged weights: the stored one is its base layer's
        w = [m.token_adapter.get_base_layer().weight if backbones.is_token_wrapper(m) else m.weight for m in mods]
        return list(dict.fromkeys(ptr[x.data_ptr()] for x in w))

    def hf_configs(self) -> dict[str, dict]:
        """The full transformers configs of the HF backbones (what :meth:`load` rebuilds them from)."""
        out = {}
        if self.cfg.llm.kind == "hf":
            out["llm"] = (self.llm.get_base_model() if backbones.is_lora(self.llm) else self.llm).config.to_dict()
        if self.cfg.vision.kind == "hf_vision":
            out["vision"] = self.video.vision.model.config.to_dict()
        if self.cfg.audio.kind == "hf_whisper":
            out["audio"] = self.video.audio.encoder.config.to_dict()
        for d in out.values():   # runtime-only fields that from_dict must not see
            d.pop("quantization_config", None)
        return out

    def save(self, path: str | Path) -> None:
        """``config.json`` + ``model.safetensors`` + ``tokenizer/`` (+ ``backbones.json``), written atomically
        per file (the processor saves its ``processor_config.json`` beside them: :class:`damo.pipeline.DamoPipeline`).

        With pretrained backbones (named by hub id or folder in the config) only what differs from
        them is stored: new modules, LoRA adapters, the LLM's rows of our added tokens, and any
        pretrained weight a stage trained; ``base.json`` names the base weights and lists what it
        refers to. :meth:`load` rebuilds the pretrained parts from their names, then applies these.
        A 7B LLM with LoRA thus saves a few hundred MB instead of its full 15-30 GB. The LoRA adapter
        is also written in peft's own format (``llm_adapter/``) for HF tooling.

        Without pretrained parts everything is stored, and ``backbones.json`` holds the full
        transformers configs of HF backbones, so :meth:`load` rebuilds them without fetching anything.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path / "tokenizer"))
        hf = self.hf_configs()
        base = self.pretrained_keys()
        rows = {}
        if base:
            ids = torch.as_tensor(self.new_token_ids, dtype=torch.long)
            sd = self.state_dict()
            rows = {k: sd[k][ids] for k in self.token_row_keys() if k in base}
        files = {"config.json": json.dumps(asdict(self.cfg), indent=2)} | (
            {"backbones.json": json.dumps(hf, indent=2)} if hf else {}) | (
            {"base.json": json.dumps({"base": {p: getattr(self.cfg, p).name_or_path for p in ("vision", "audio", "llm")
                                               if getattr(self.cfg, p).pretrained and getattr(self.cfg, p).kind.startswith("hf")},
                                      "referenced": len(base), "token_ids": self.new_token_ids,
                                      "trained": sorted(self.trained)}, indent=2)} if base else {})
        for name, text in files.items():
            tmp = path / f"{name}.tmp"
            tmp.write_text(text)
            tmp.replace(path / name)
        if not base:
            (path / "base.json").unlink(missing_ok=True)
        if backbones.is_lora(self.llm):
            # adapter and token-row deltas only: the resized embeddings are base weights plus token_rows above
            self.llm.save_pretrained(str(path / "llm_adapter"), save_embedding_layers=False)
        # tied weights (embeddings and LM head, peft's shared token deltas) are stored once:
        # safetensors refuses shared storage, and the rebuilt model shares it again on load
        state, seen = {}, set()
        for k, v in self.state_dict().items():
            key = (v.data_ptr(), tuple(v.shape), v.dtype)
            if k in base or (v.numel() and key in seen):
                continue
            seen.add(key)
            state[k] = v.detach().cpu().contiguous()
        state |= {f"token_rows::{k}": v.detach().cpu().contiguous() for k, v in rows.items()}
        save_file(state, str(path / "model.safetensors.tmp"), metadata={"format": "pt"})
        (path / "model.safetensors.tmp").replace(path / "model.safetensors")   # last: marks the folder complete

    @classmethod
    def load(cls, path: str | Path, allow_pickle: bool = False, dtype: str | None = None) -> "DamoModel":
        """Rebuild a saved model exactly. Weights come from ``model.safetensors`` (plus, when the
        folder has a ``base.json``, the pretrained weights it names); a pickled ``model.bin``/``model.pt``
        is read only with ``allow_pickle=True`` (unpickling can run code). ``dtype`` (``float32``,
        ``bfloat16``, ``float16``) replaces the saved ``dtype`` of the LLM and the towers; the modules
        DaMO adds stay float32 and run under :meth:`autocast`."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a DaMO model folder (needs config.json and model.safetensors)")
        weights = path / "model.safetensors"
        if not weights.is_file():
            pickled = [path / f"model{s}" for s in (".bin", ".pt") if (path / f"model{s}").is_file()]
            if not pickled:
                raise FileNotFoundError(f"{path} is not a DaMO model folder (needs config.json and model.safetensors)")
            weights = pickled[0]
        try:
            saved = loads((path / "config.json").read_text(encoding="utf-8"), "config.json")
            if not isinstance(saved, dict) or not isinstance(saved.get("compressor"), dict):
                raise ValueError("not a DaMO model config (an object with 'compressor', 'llm', ...)")
            saved["compressor"].setdefault("placement", "fuser")   # saved before the switch: in front of the fuser
            cfg = DamoConfig.from_dict(saved)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path / 'config.json'}: {e}; it does not describe a model DaMO can build "
                             "(save the model again, or restore the file)") from None
        if dtype is not None:
            backbones.resolve_dtype(dtype)                  # validates
            cfg.vision.dtype = cfg.audio.dtype = cfg.llm.dtype = dtype
        state = {grouped_name(k): v for k, v in backbones.load_state_file(weights, allow_pickle=allow_pickle).items()}
        rows = {k.split("::", 1)[1]: state.pop(k) for k in [k for k in state if k.startswith("token_rows::")]}
        tok = PreTrainedTokenizerFast.from_pretrained(str(path / "tokenizer"))
        build = copy.deepcopy(cfg)
        ref = json.loads((path / "base.json").read_text()) if (path / "base.json").is_file() else None
        hf = json.loads((path / "backbones.json").read_text()) if (path / "backbones.json").is_file() else {}
        for part, hf_cfg in ({} if ref else hf).items():     # rebuild HF backbones from their configs: weights come from `state`
            sub = getattr(build, part)
            sub.pretrained, sub.config, sub.submodule = False, hf_cfg, None
            sub.family = backbones.FAMILY_OF_MODEL_TYPE.get(hf_cfg["model_type"], hf_cfg["model_type"])
        if not ref:
            cls._check_shapes(path, build, tok, state)
        model = cls(build, tok)
        model.cfg = cfg
        ptr = {k: v.data_ptr() for k, v in model.state_dict().items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        loaded = {ptr[k] for k in state if k in ptr}
        base = model.pretrained_keys() if ref else set()
        if ref:
            model.trained = {grouped_name(k) for k in ref["trained"]}
            base -= model.trained
        missing = [k for k in missing if ptr[k] not in loaded and k not in base]   # tied aliases, pretrained weights
        if missing or unexpected or set(rows) - set(ptr):
            raise ValueError(f"checkpoint {path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        if rows:
            ids = torch.as_tensor(ref["token_ids"], dtype=torch.long)
            sd = model.state_dict()
            with torch.no_grad():
                for k, v in rows.items():
                    sd[k][ids] = v.to(sd[k].dtype)
        model.llm.tie_weights()
        return model.eval()

    @classmethod
    def _check_shapes(cls, path: Path, build: DamoConfig, tok: PreTrainedTokenizerFast, state: dict) -> None:
        """Refuse a config that disagrees with the weights before any memory is given to it: the
        model is built on the meta device (shapes, no storage) and every tensor of the file must be
        one of its parameters with the same shape (an edited ``hidden: 1000000`` would otherwise
        allocate terabytes before the weights were read)."""
        with torch.device("meta"):
            meta = cls(build, tok).state_dict(keep_vars=True)
        expected = {k: tuple(v.shape) for k, v in meta.items()}
        present = {id(meta[k]) for k in state if k in meta}                  # a tied alias is present with its twin
        missing = [k for k, v in meta.items() if k not in state and id(v) not in present]
        unexpected = sorted(set(state) - set(meta))
        wrong = [(k, tuple(v.shape), expected[k]) for k, v in state.items() if k in expected
                 and tuple(v.shape) != expected[k]]
        if wrong:
            more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
            what = f"{wrong[0][0]} is {list(wrong[0][1])} in the weights but {list(wrong[0][2])} by the config{more}"
        elif missing or unexpected:
            what = (f"the config has {len(meta)} tensors, {len(missing)} of them not in the weights (e.g. "
                    f"{missing[:2]}), and the weights {len(unexpected)} tensors the config has no place for "
                    f"(e.g. {unexpected[:2]})")
        else:
            return
        raise ValueError(f"{path / 'config.json'} does not match {path / 'model.safetensors'}: {what}; "
                         "the config was edited or belongs to another model")

    # transformers-style names for the same folder format
    save_pretrained = save

    @classmethod
    def from_pretrained(cls, path: str | Path, allow_pickle: bool = False, dtype: str | None = None) -> "DamoModel":
        """Alias of :meth:`load` (transformers naming)."""
        return cls.load(path, allow_pickle=allow_pickle, dtype=dtype)
