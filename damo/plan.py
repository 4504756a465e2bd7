"""A dry run of a recipe at full scale, offline: parameters and per-GPU memory per stage.

:func:`plan` builds the whole model of a config on PyTorch's meta device (shapes, no values, no
memory) from the config alone: every HF tower is built from the transformers config the file
states (``pretrained`` is ignored, so nothing is fetched), and a stand-in tokenizer of the LLM's
vocabulary size plus our added tokens takes the place of the real one. For each stage it then

1. marks the stage's trainable parameters (:func:`damo.train.loop.set_trainable`: a pattern that
   matches nothing fails here, before any GPU time is spent) and counts total and trainable
   parameters per top-level module;
2. runs one forward and backward of the stage's losses on meta tensors for one clip of
   ``frames`` frames (all of which the towers see; the LLM reads at most ``llm_frames`` frame tokens)
   and a question + answer of ``text_tokens`` tokens, through the real processor, collator and
   model, recording the bytes autograd saves for the backward pass
   (``torch.autograd.graph.saved_tensors_hooks``). This is done with the LLM's gradient
   checkpointing on and off: the difference is what its decoder layers save, of which a
   checkpointed run keeps only each layer's input plus one layer's worth while it recomputes.

Memory per GPU (bytes; ``P`` all parameters, ``P_t`` trainable, ``A`` activations of one clip,
``m`` the micro-batch, ``L`` tokens per clip, ``V`` the vocabulary, ``C`` the LLM width):

- the micro-batch is the stage's: its global ``batch`` split over ``gpus x grad_accum``
  micro-batches (the largest of them), unless ``micro_batch`` is given;
- weights: frozen parameters in bf16 (``dtype: auto`` on GPU), trainable ones in fp32 (LoRA and
  new modules stay fp32; the forward runs under bf16 autocast): ``2 (P - P_t) + 4 P_t``;
- gradients ``4 P_t`` and AdamW's two moments ``8 P_t`` (fp32);
- DDP replicates all of it and adds its gradient buckets (``4 P_t``);
  FSDP (full sharding) divides weights, gradients and moments by the GPU count and adds the
  largest unit gathered at once (twice, for prefetch);
- activations ``m x A`` at bf16 (half the fp32 bytes the meta run records);
- a preference stage's clip is two rows (chosen and rejected); a GRPO stage's prompt is ``group``
  rows teacher-forced at once, plus the KV cache of sampling them (bf16, every layer, prompt +
  ``max_new_tokens`` positions); a loss with a frozen reference (FPO ``dpo``, GRPO ``beta > 0``)
  adds that copy's weights in bf16 (``2 P``), unsharded;
- logits where a stage reads the LLM: ``m L V x 14`` bytes, the bf16 logits, their fp32 copy, the
  fp32 log-softmax the loss keeps and its fp32 gradient (:func:`damo.train.losses.lm`), alive together
  in the backward;
- peft's trainable token rows merge into a full ``V x C`` bf16 copy of the embeddings and of an untied
  head in every forward: ``2 V C`` bytes per wrapped matrix;
- FSDP with ``grad_accum > 1`` reduce-scatters once per step: the micro-steps before the last keep the
  trainable parameters' gradients whole (``4 P_t`` instead of ``4 P_t / gpus``);
- FSDP's transient peaks, as :func:`damo.train.loop.run_stage` runs it: the model is sharded on the meta
  device and each GPU allocates its shards, then receives the values one whole tensor at a time (``load``:
  the shards plus the largest tensor, in fp32), and the stage's end gathers the trainable weights into
  rank 0's CPU one tensor at a time (``end``: the shards plus the largest trainable tensor, in fp32); the
  per-GPU figure is the largest of the steady state and these. Host memory per node: every process
  holds the model on the CPU, and at a FSDP stage's end rank 0 also the gathered trainable weights
  (``host_gb_per_node``, 8 processes per node);
- plus a fixed allowance for the CUDA context and allocator fragmentation (``OVERHEAD_GB``).

This is an estimate for planning (the order of magnitude and what dominates), not a measurement.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import PretrainedConfig, PreTrainedTokenizerFast

from damo.config import Recipe, Stage
from damo.data.collate import Collator
from damo.data.schema import Sample
from damo.model import backbones
from damo.model import tokenizer as tk
from damo.model.batch import Batch
from damo.model.configuration_damo import DamoConfig
from damo.model.modeling_damo import DamoModel
from damo.model.presets import get_preset
from damo.model.vlm import LORA_TARGETS, VLMConfig, video_spec
from damo.model.vlm_video import VideoSpec
from damo.model.processing import ClipTensors
from damo.train.loop import StageLoss, set_trainable
from damo.train.losses import stage_losses, stage_settings

GB = 1024 ** 3
OVERHEAD_GB = 2.0          # CUDA context, NCCL buffers, allocator fragmentation
DEFAULT_FRAMES = 180       # sampled frames of a clip the towers see: 3 minutes at 1 fps (ActivityNet-length videos)
GPUS_PER_NODE = 8
LOGIT_BYTES = 2 + 4 + 4 + 4   # bf16 logits, fp32 copy, fp32 log-softmax, its fp32 gradient
PARALLEL_MODES = ("ddp", "fsdp")


def standin_tokenizer(cfg: DamoConfig) -> PreTrainedTokenizerFast:
    """A tokenizer with the LLM's vocabulary size and our special tokens added as
    :func:`damo.model.backbones.load_tokenizer` adds them: the same ``len(tokenizer)``, so the same
    embedding and head shapes, without the real tokenizer files. Words split on whitespace, one
    token each, so a text of ``n`` words is ``n`` tokens."""
    if cfg.llm.kind != "hf":
        from damo.model.tokenizer import train_tokenizer
        return train_tokenizer(["a b c d e f g h"], cfg.llm.vocab_size)
    size = cfg.llm.config.get("vocab_size")
    if not size:
        raise ValueError("damo plan builds the LLM from its config: write the LLM's transformers config out in "
                         "llm.config (at least vocab_size and the layer sizes), as damo/resources/configs/paper-*.yaml do")
    base = Tokenizer(models.WordLevel({f"w{i}": i for i in range(size)}, unk_token="w0"))
    base.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=base, unk_token="w0", eos_token="w2")
    tk.add_special_tokens(tok)
    tok.add_special_tokens({"bos_token": tk.BOS})
    return tok


def skeleton_config(cfg: DamoConfig) -> DamoConfig:
    """The config with every pretrained tower built from its stated transformers config instead."""
    out = copy.deepcopy(cfg)
    for part in (out.vision, out.audio, out.llm):
        if part.kind.startswith("hf") and part.pretrained:
            if not part.config:
                raise ValueError(f"{part.kind} {part.name_or_path!r} has no stated transformers config; damo plan "
                                 "needs the tower's config fields written out (see damo/resources/configs/paper-*.yaml)")
            part.pretrained = False
    out.llm.submodule = None
    return out


def build_meta(cfg: DamoConfig) -> DamoModel:
    """The whole model on the meta device: every parameter has its real shape and no storage."""
    tok = standin_tokenizer(cfg)
    with torch.device("meta"):
        return DamoModel(skeleton_config(cfg), tok)


def module_counts(model: DamoModel) -> dict[str, dict[str, int]]:
    """``{module: {total, trainable}}`` per top-level group, the video group per part (``video.vision``,
    ``video.fuseformer``, ...) so the towers show on their own (a shared tensor counted once)."""
    out: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        top = ".".join(parts[:2]) if parts[0] == "video" else parts[0]
        c = out.setdefault(top, {"total": 0, "trainable": 0})
        c["total"] += p.numel()
        c["trainable"] += p.numel() if p.requires_grad else 0
    return out


def probe_batch(model: DamoModel, stage: Stage, frames: int, text_tokens: int) -> Batch:
    """One clip of ``frames`` frames with a question and an answer of ``text_tokens`` tokens in all, made
    by the model's processor and the training collator, moved to the meta device."""
    c = model.cfg
    T = frames
    clip = ClipTensors(frames=torch.zeros(T, c.vision.image_size, c.vision.image_size, 3, dtype=torch.uint8),
                       mel=torch.zeros(T, c.audio.frames, c.audio.n_mels), times=torch.arange(T) + 0.5,
                       duration=float(T))
    collate = Collator.for_model(model)
    q = min(text_tokens // 2, collate.processor.config.max_query_tokens)
    task = "dense_caption" if stage.tasks == ["dense_caption"] else "grounding"
    words = ["w5"] * (text_tokens - q)
    sample = Sample(id="plan", video="plan", duration=float(T), task=task, query=" ".join(["w4"] * q),
                    answer=" ".join(words), spans=[[T * 0.25, T * 0.5]], captions=[" ".join(words)])
    batch = collate([(sample, clip)])
    L = batch.input_ids.shape[1]
    # a 4-D mask is used as given: transformers' padding checks read values (bidirectional video attention
    # makes its 4-D mask from the 2-D one)
    mask = (torch.ones(1, L, dtype=torch.bool, device="meta") if c.video_attention == "bidirectional" else
            torch.ones(1, 1, L, L, dtype=torch.bool, device="meta"))
    return replace(batch.to("meta"), attention_mask=mask)


@contextmanager
def _count_saved(acc: list[int]):
    def pack(t: torch.Tensor):
        acc[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def _checkpointing(model: DamoModel, on: bool) -> None:
    llm = model.llm.get_base_model() if backbones.is_lora(model.llm) else model.llm
    if on:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        llm.gradient_checkpointing_disable()


def saved_bytes(model: DamoModel, stage: Stage, batch: Batch, checkpointing: bool) -> int:
    """Bytes autograd saves for backward in one forward of the stage's losses (meta tensors), after
    running the backward to check it goes through."""
    _checkpointing(model, checkpointing)
    acc = [0]
    with _count_saved(acc), torch.device("meta"):      # tensors the losses create go to meta too
        total = StageLoss(model, stage)(batch)[0]
    total.backward()
    model.zero_grad(set_to_none=True)
    return acc[0]


def activation_bytes(model: DamoModel, stage: Stage, frames: int, text_tokens: int) -> dict:
    """Activation bytes of one clip (fp32 as recorded) with the LLM's gradient checkpointing."""
    batch = probe_batch(model, stage, frames, text_tokens)
    model.train()
    # tokens per frame from the budget formula: the largest K training can draw (the memory worst case),
    # and no random draw, which would be made on the meta device
    model.video.compressor.eval()
    full = saved_bytes(model, stage, batch, checkpointing=False)
    ckpt = saved_bytes(model, stage, batch, checkpointing=True)
    _checkpointing(model, model.cfg.llm.gradient_checkpointing)
    llm = model.llm.get_base_model() if backbones.is_lora(model.llm) else model.llm
    n_layers, C = llm.config.num_hidden_layers, llm.config.hidden_size
    L = batch.input_ids.shape[1]
    if not model.cfg.llm.gradient_checkpointing:
        return {"bytes": full, "tokens": L}
    inside = max(0, full - ckpt)                       # what the decoder layers save without checkpointing
    kept = ckpt + n_layers * L * C * 4 + inside // n_layers
    return {"bytes": kept, "tokens": L}


def kv_cache_bytes(c: PretrainedConfig, rows: int, positions: int) -> int:
    """bf16 keys and values of every layer of the LLM of config ``c`` for ``rows`` sequences of ``positions`` tokens."""
    head_dim = c.hidden_size // c.num_attention_heads
    return 2 * 2 * c.num_hidden_layers * rows * positions * c.num_key_value_heads * head_dim


def largest_unit(model: DamoModel) -> int:
    """Parameters of the largest FSDP unit gathered whole at once: a layer of any ``*layers`` list
    (:func:`damo.train.distributed.fsdp_units`), or the root with everything outside those layers."""
    from damo.train.distributed import fsdp_units

    sizes = [sum(p.numel() for p in u.parameters()) for u in fsdp_units(model)]
    return max(sizes + [sum(p.numel() for p in model.parameters()) - sum(sizes)])


def memory_gb(total: int, trainable: int, act_fp32: int, gpus: int, micro_batch: int, unit: int,
              reference: bool = False, logits: int = 0, token_rows: int = 0, tensor: int = 0,
              trained_tensor: int = 0, accumulate: bool = False) -> dict[str, float]:
    """Per-GPU memory (GB) under DDP and FSDP (the largest of FSDP's steady state, ``fsdp_steady``,
    and its ``fsdp_load`` and ``fsdp_end`` peaks); ``reference``: a frozen copy of the model is held;
    ``logits``: logit values of one clip (``L x V``); ``token_rows``: values of the matrices peft's
    trainable tokens copy (``V x C`` each); ``tensor``, ``trained_tensor``: values of the largest parameter
    and of the largest trainable one; ``accumulate``: more than one micro-batch per step (``grad_accum``).
    See the module docstring for the model."""
    weights = 2 * (total - trainable) + 4 * trainable + (2 * total if reference else 0)
    grads, adam = 4 * trainable, 8 * trainable
    act = micro_batch * (act_fp32 / 2 + logits * LOGIT_BYTES) + 2 * token_rows     # bf16 autocast
    ddp = weights + grads + adam + 4 * trainable + act
    shards = (weights + grads + adam) / gpus
    whole_grads = grads * (1 - 1 / gpus) if accumulate else 0      # kept unsharded until the step's last micro-batch
    steady = shards + whole_grads + 2 * 2 * unit + act
    load, end = shards + 4 * tensor, shards + 4 * trained_tensor
    out = {"ddp": ddp, "fsdp": max(steady, load, end), "fsdp_steady": steady, "fsdp_load": load, "fsdp_end": end}
    return {k: round(v / GB + OVERHEAD_GB, 1) for k, v in out.items()}


def host_gb_per_node(total: int, trainable: int, gpus: int) -> dict[str, float]:
    """Host memory per node (GB): each process holds the model on the CPU (bf16 frozen, fp32
    trainable); under FSDP rank 0 also receives the trained weights at the stage's end."""
    weights = 2 * (total - trainable) + 4 * trainable
    ranks = min(gpus, GPUS_PER_NODE)
    return {"ddp": round(ranks * weights / GB, 1), "fsdp": round((ranks * weights + 4 * trainable) / GB, 1)}


def stage_micro_batch(stage: Stage, gpus: int) -> int:
    """Clips per GPU per forward: the largest of the ``gpus x grad_accum`` micro-batches the stage's
    global batch splits into (:func:`damo.train.distributed.micro_batches`)."""
    return max(1, math.ceil(stage.batch / (gpus * stage.grad_accum)))


def token_row_values(model: DamoModel) -> int:
    """Values of the full matrices peft's trainable tokens merge in every forward (``V x C`` each)."""
    return sum(m.token_adapter.get_base_layer().weight.numel() for m in model.llm.modules()
               if backbones.is_token_wrapper(m))


@dataclass
class PlanOptions:
    gpus: int = 8
    gpu_gb: float = 80.0
    frames: int | None = None          # frames the towers see per clip (default: uniform_frames, else DEFAULT_FRAMES, at least llm_frames)
    text_tokens: int = 256
    micro_batch: int | None = None     # clips per GPU per forward (default: each stage's, from its batch)


def plan(cfg: DamoConfig, recipe: Recipe | None = None, opts: PlanOptions | None = None) -> dict:
    """Per stage: ``modules`` ``{name: {total, trainable}}``, ``total``, ``trainable``, ``micro_batch``,
    ``activation_gb`` (one clip, bf16), ``logits_gb`` (one clip), ``memory_gb`` ``{ddp, fsdp, fsdp_steady,
    fsdp_load, fsdp_end}`` per GPU, ``host_gb_per_node`` and ``fits`` per mode (``<= gpu_gb``).
    Without a recipe there is one stage, ``all``, training every parameter."""
    opts = opts or PlanOptions()
    if opts.gpus < 1 or (opts.micro_batch is not None and opts.micro_batch < 1) or opts.text_tokens < 8:
        raise ValueError("gpus and micro_batch must be >= 1 and text_tokens >= 8")
    frames = opts.frames or cfg.uniform_frames or max(DEFAULT_FRAMES, cfg.llm_frames)
    model = build_meta(cfg)
    unit = largest_unit(model)
    vocab = model.llm.get_output_embeddings().weight.shape[0]
    token_rows = token_row_values(model)
    tensor = max(p.numel() for p in model.parameters())
    stages = recipe.stages if recipe else [Stage(name="all", losses={"lm": 1.0}, steps=1)]
    out = {"config": {"frames": frames, "text_tokens": opts.text_tokens, "gpus": opts.gpus, "gpu_gb": opts.gpu_gb,
                      "micro_batch": opts.micro_batch}, "stages": {}}
    for st in stages:
        set_trainable(model, st.trainable)
        counts = module_counts(model)
        total = sum(c["total"] for c in counts.values())
        trainable = sum(c["trainable"] for c in counts.values())
        entry = {"modules": counts, "total": total, "trainable": trainable}
        kind, reads_llm = stage_losses(st.name, st.losses)
        settings = [x for x in stage_settings(st).values() if x is not None]
        if kind == "samples":
            act = activation_bytes(model, st, frames, opts.text_tokens)
        else:   # a preference pair: chosen and rejected rows of one clip; a GRPO prompt: its group's rows
            probe = Stage(name=st.name, losses={"lm": 1.0}, steps=1, trainable=st.trainable, tasks=st.tasks)
            act = activation_bytes(model, probe, frames, opts.text_tokens)
            rows = 2 if kind == "pairs" else settings[0].group
            act["bytes"] *= rows
            if kind == "rollouts":       # the sampling KV cache, in the fp32-equivalent bytes act counts
                llm = model.llm.get_base_model() if backbones.is_lora(model.llm) else model.llm
                act["bytes"] += 2 * kv_cache_bytes(llm.config, rows, act["tokens"] + settings[0].max_new_tokens)
        micro = opts.micro_batch or (stage_micro_batch(st, opts.gpus) if recipe else 1)
        logits = act["tokens"] * vocab * (1 if kind == "samples" else rows) if reads_llm else 0
        trained_tensor = max((p.numel() for p in model.parameters() if p.requires_grad), default=0)
        mem = memory_gb(total, trainable, act["bytes"], opts.gpus, micro, unit,
                        reference=any(x.reference for x in settings), logits=logits, token_rows=token_rows,
                        tensor=tensor, trained_tensor=trained_tensor, accumulate=st.grad_accum > 1)
        entry |= {"tokens": act["tokens"], "micro_batch": micro, "activation_gb": round(act["bytes"] / 2 / GB, 2),
                  "logits_gb": round(logits * LOGIT_BYTES / GB, 2), "memory_gb": mem,
                  "host_gb_per_node": host_gb_per_node(total, trainable, opts.gpus),
                  "fits": {k: mem[k] <= opts.gpu_gb for k in PARALLEL_MODES}}
        out["stages"][st.name] = entry
    return out


def layer_activation_bytes(text: PretrainedConfig, lora: dict | None) -> int:
    """Bytes one decoder layer of a Qwen2.5-VL / Qwen3-VL / Qwen2.5-Omni language model keeps for the
    backward, per token, training under bf16 autocast with flash attention (or PyTorch's flash
    kernel), read off the layer's code (transformers 5, peft 0.21) and checked against what autograd
    saves in a real forward (tests/test_vlm_train.py). ``C`` width, ``I`` MLP width, ``Q``/``K`` the
    query and key-value widths, ``h`` heads, bytes:

    - the two RMSNorms: their fp32 input and inverse RMS, ``2 (4C + 4)``; Qwen3's per-head query and
      key norms likewise, ``4 (Q + K) + 4 (h + h_kv)``;
    - attention: queries, keys, values, output (bf16) and the log-sum-exp per head (fp32),
      ``2Q + 4K + 2Q + 4h`` (the rotary tables are the model's, shared by every layer);
    - the MLP's gate, its SiLU and the up projection, ``6I``;
    - each LoRA adapter its own bf16 copy of its input (peft casts the input to the adapter's fp32,
      autocast back) and its rank-``r`` middle, ``2 in + 2r``; without LoRA (every weight trains) the
      projections' shared inputs and the norms' normalised outputs, ``2C + 2C + 2I + 2 x 2C`` (Qwen3
      also its query and key norms', ``2 (Q + K)``)."""
    C, I, h, kv = text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads
    qwen3 = text.model_type.startswith("qwen3")
    d = text.head_dim if qwen3 else C // h              # Qwen3 states its head width; the others derive it
    Q, K = h * d, kv * d
    out = 2 * (4 * C + 4) + 4 * Q + 4 * K + 4 * h + 6 * I
    if qwen3:
        out += 4 * (Q + K) + 4 * (h + kv)
    if not lora:
        return out + 8 * C + 2 * I + (2 * (Q + K) if qwen3 else 0)
    inputs = {"q_proj": C, "k_proj": C, "v_proj": C, "o_proj": Q, "gate_proj": C, "up_proj": C, "down_proj": I}
    return out + sum(2 * inputs[t] + 2 * int(lora.get("r", 16)) for t in lora.get("targets", LORA_TARGETS))


def plan_vlm(cfg: VLMConfig, opts: PlanOptions | None = None, recipe: Recipe | None = None) -> dict:
    """:func:`plan` for a whole VLM (:class:`damo.model.vlm.VLMConfig`): its parameters per module
    (``visual``: vision tower and merger, ``language_model``, ``lm_head``, ``evidence``) and the per-GPU
    memory of weights, gradients and AdamW states. ``tokens`` is the most the LLM reads for one clip
    under the preset and the config's video settings (its visual token budget) plus ``text_tokens``.

    Without a recipe there is one stage, ``all``, training every parameter or, with ``lora``, the
    adapters (and the evidence heads), without activations. With a recipe each stage trains its
    ``trainable`` globs (named as a trained VLM's are: ``model.*lora_*``, ``evidence.*``) and adds the
    activations of its micro-batch: the language model's (:func:`layer_activation_bytes` per layer
    and token; with ``gradient_checkpointing`` each layer keeps only its bf16 input, ``2C``, and one
    layer's worth lives while it is recomputed), the logits at the answer's positions alone (what
    :meth:`~damo.model.vlm.VideoLLM.forward` computes; an answer of ``text_tokens / 2`` tokens, or
    ``max_new_tokens`` in GRPO), counted per value as :func:`plan` counts them, and for a GRPO stage
    its ``group`` rows of prompt + ``max_new_tokens`` plus the sampling KV cache. The vision
    tower is frozen (its forward keeps nothing for the backward) and left out, as are the evidence heads
    (a few vectors per temporal patch)."""
    opts = opts or PlanOptions()
    with torch.device("meta"):
        model, evidence = cfg.build()
    held = nn.ModuleDict({"model": model} | ({"evidence": evidence} if evidence else {}))   # a VideoLLM's names
    held.trained = set()
    preset = video_spec(get_preset(cfg.preset), cfg.video)
    spec = VideoSpec(patch=model.config.vision_config.patch_size, **preset.video)
    visual = spec.total_pixels // spec.factor ** 2
    text = model.config.text_config
    unit, tensor = largest_unit(held), max(p.numel() for p in held.parameters())
    out = {"config": {"frames": spec.max_frames, "text_tokens": opts.text_tokens, "gpus": opts.gpus,
                      "gpu_gb": opts.gpu_gb, "micro_batch": opts.micro_batch, "preset": cfg.preset,
                      "visual_tokens_max": visual}, "stages": {}}
    for st in recipe.stages if recipe else [None]:
        if st is not None:
            set_trainable(held, st.trainable)
        counts: dict[str, dict[str, int]] = {}
        for name, p in held.named_parameters():
            c = counts.setdefault(name.removeprefix("model.").removeprefix("model.").split(".")[0],
                                  {"total": 0, "trainable": 0})
            c["total"] += p.numel()
            c["trainable"] += p.numel() if p.requires_grad else 0
        total = sum(c["total"] for c in counts.values())
        trainable = sum(c["trainable"] for c in counts.values())
        tokens = visual + opts.text_tokens
        entry = {"modules": counts, "total": total, "trainable": trainable}
        if st is None:
            micro = opts.micro_batch or 1
            mem = memory_gb(total, trainable, 0, opts.gpus, micro, unit)
            out["stages"]["all"] = entry | {"micro_batch": micro, "tokens": tokens, "activation_gb": None,
                                            "memory_gb": mem, "fits": {k: v <= opts.gpu_gb for k, v in mem.items()}}
            continue
        settings = [x for x in stage_settings(st).values() if x is not None]
        rollouts = stage_losses(st.name, st.losses)[0] == "rollouts"
        rows = settings[0].group if rollouts else 1
        tokens += settings[0].max_new_tokens if rollouts else 0
        layer = layer_activation_bytes(text, cfg.lora)
        layers = text.num_hidden_layers
        act = rows * tokens * (layers * 2 * text.hidden_size + layer if cfg.gradient_checkpointing else layers * layer)
        if rollouts:
            act += kv_cache_bytes(text, rows, tokens)
        answer = settings[0].max_new_tokens if rollouts else opts.text_tokens // 2
        logits = rows * (answer + 1) * model.lm_head.weight.shape[0]     # VideoLLM.forward: the answers' positions only
        micro = opts.micro_batch or stage_micro_batch(st, opts.gpus)
        # memory_gb takes the fp32 bytes a meta run records and counts half: these are bf16 already
        mem = memory_gb(total, trainable, 2 * act, opts.gpus, micro, unit,
                        reference=any(x.reference for x in settings), logits=logits, tensor=tensor,
                        trained_tensor=max((p.numel() for p in held.parameters() if p.requires_grad), default=0),
                        accumulate=st.grad_accum > 1)
        out["stages"][st.name] = entry | {
            "tokens": tokens, "micro_batch": micro, "layer_activation_bytes_per_token": layer,
            "activation_gb": round(act / GB, 2), "logits_gb": round(logits * LOGIT_BYTES / GB, 2), "memory_gb": mem,
            "host_gb_per_node": host_gb_per_node(total, trainable, opts.gpus),
            "fits": {k: mem[k] <= opts.gpu_gb for k in PARALLEL_MODES}}
    return out


def format_plan(p: dict, name: str = "") -> str:
    """The plan as a readable table per stage."""
    c = p["config"]
    micro = "micro-batch from each stage's batch" if c["micro_batch"] is None else f"micro-batch {c['micro_batch']}"
    lines = [f"{name}: {c['frames']} frames seen by the towers, {c['text_tokens']} text tokens, {micro}, "
             f"{c['gpus']} x {c['gpu_gb']:g} GB"]
    for st, e in p["stages"].items():
        lines.append(f"\nstage {st}: {e['total'] / 1e9:.3f} B parameters, {e['trainable'] / 1e6:.1f} M trainable, "
                     f"{e['tokens']} LLM tokens, micro-batch {e['micro_batch']}, "
                     + (f"activations {e['activation_gb']:.2f} GB and logits {e['logits_gb']:.2f} GB per clip"
                        if e["activation_gb"] is not None else
                        "activations not estimated (weights, gradients, AdamW only)"))
        lines.append(f"  {'module':<16}{'total':>16}{'trainable':>16}")
        for m, v in e["modules"].items():
            lines.append(f"  {m:<16}{v['total']:>16,}{v['trainable']:>16,}")
        mem = e["memory_gb"]
        for mode in PARALLEL_MODES:
            ok = "fits" if e["fits"][mode] else "DOES NOT FIT"
            peaks = (f" = max(steady {mem['fsdp_steady']:.1f}, sharding {mem['fsdp_load']:.1f}, "
                     f"gathering at the stage's end {mem['fsdp_end']:.1f})" if mode == "fsdp" and "fsdp_load" in mem
                     else "")
            lines.append(f"  memory per GPU, {mode}: {mem[mode]:.1f} GB{peaks} ({ok})")
        if "host_gb_per_node" in e:
            h = e["host_gb_per_node"]
            lines.append(f"  host memory per node: ddp {h['ddp']:.1f} GB, fsdp {h['fsdp']:.1f} GB")
    return "\n".join(lines)
