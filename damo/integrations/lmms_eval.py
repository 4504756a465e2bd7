"""DaMO models as an lmms-eval model (lmms-eval 0.7.3; the ``lmms`` extra).

    lmms-eval --model damo --model_args pretrained=runs/demo/model --tasks timelens_charades --batch_size 8
    lmms-eval --model damo --model_args pretrained=TencentARC/TimeLens-8B,preset=timelens,dtype=bfloat16 \\
        --tasks timelens --device cuda

``pyproject.toml`` registers :data:`MANIFEST` under lmms-eval's ``lmms_eval.models`` entry point, so installing
DaMO is enough for ``--model damo``. ``--model_args``: ``pretrained`` (a DaMO model folder, or a Qwen2.5-VL,
Qwen3-VL or Qwen2.5-Omni checkpoint), ``preset`` (the whole VLMs' presets of ``damo ground``), ``dtype``,
``device`` (``auto``: CUDA when there is one; under ``torchrun`` or ``accelerate launch`` each process takes the
GPU of its ``LOCAL_RANK`` and lmms-eval splits the documents), ``batch_size`` and ``spans`` (below).

``generate_until`` answers one video per request (the task's ``doc_to_visual``), ``batch_size`` requests at a
time, greedily, cut at the first of the task's ``until`` strings. A DaMO model says *when* with its evidence
tokens, not in its words, so by default its best span is written before the answer as "The event happens in
12.50 - 17.00 seconds." (the sentence the TimeLens and Charades-STA tasks' prompts ask for, which their parsers
read; ``spans=none`` leaves the answer alone). A whole VLM's answer is its own text (``spans=none``).
``loglikelihood`` scores each continuation after the model's prompt for the context, one request at a time.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm

import damo
from damo.model.modeling_damo import DamoModel
from damo.ranks import device_for

SPANS = ("prefix", "none")


def span_sentence(span: list[float]) -> str:
    return f"The event happens in {span[0]:.2f} - {span[1]:.2f} seconds."


class DamoLMM(lmms):
    """One DaMO model (or a whole VLM under a preset) answering lmms-eval's requests."""

    is_simple = True

    def __init__(self, pretrained: str, preset: str | None = None, dtype: str | None = None, device: str = "auto",
                 batch_size: int | str = 8, spans: str | None = None, **unknown: object) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"--model damo takes no {', '.join(sorted(unknown))}; its model_args: pretrained, "
                             f"preset, dtype, device, batch_size, spans")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"--model damo: batch_size must be a whole number >= 1, got {batch_size!r}")
        if spans not in (None, *SPANS):
            raise ValueError(f"--model damo: spans must be one of {', '.join(SPANS)}, got {spans!r}")
        self.grounder = damo.load(pretrained, device=device_for(device), dtype=dtype, preset=preset)
        self.model = self.grounder.model
        self.batch_size = int(batch_size)
        self.spans = spans or ("prefix" if isinstance(self.model, DamoModel) else "none")

    def _video(self, request: Instance) -> str:
        """The one video file the request's task gives for its document."""
        _, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if len(visuals) != 1 or not isinstance(visuals[0], str):
            raise ValueError(f"--model damo answers about one video file per question; task {task} gives "
                             f"{len(visuals)} visuals for document {doc_id}")
        return visuals[0]

    def _text(self, row: dict, until: list[str]) -> str:
        text = row["answer"]
        if self.spans == "prefix" and row["spans"]:
            text = f"{span_sentence(row['spans'][0])} {text}"
        for stop in until:
            text = text.split(stop)[0] if stop else text
        return text

    def generate_until(self, requests: list[Instance]) -> list[str]:
        out: list[str] = []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="damo")
        for i in range(0, len(requests), self.batch_size):
            chunk = requests[i:i + self.batch_size]
            clips = [self.grounder.clips(self._video(r)) for r in chunk]
            contexts = [r.args[0] for r in chunk]
            steps = max(int(r.args[1].get("max_new_tokens", self.grounder.max_new_tokens)) for r in chunk)
            with torch.no_grad():
                rows = self.grounder.pipeline.answer(clips, contexts, steps)
            for r, row in zip(chunk, rows):
                until = r.args[1].get("until") or []
                out.append(self._text(row, [until] if isinstance(until, str) else until))
            bar.update(len(chunk))
        bar.close()
        return out

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        out = []
        for r in tqdm(requests, disable=self.rank != 0, desc="damo loglikelihood"):
            context, continuation, _, doc_id, task, split = r.args
            if callable(continuation):          # output_type loglikelihood: the target of the document
                continuation = continuation(self.task_dict[task][split][doc_id])
            out.append(self._continuation_logprob(self.grounder.clips(self._video(r)), context, continuation))
        return out

    def _continuation_logprob(self, clip, context: str, continuation: str) -> tuple[float, bool]:
        """log P(continuation | video, the model's prompt for ``context``), and whether greedy decoding from
        that prompt would write exactly those tokens."""
        if isinstance(self.model, DamoModel):
            proc = self.grounder.pipeline.processor
            batch = proc.generation_batch([clip], [context])
            cont = proc.encode(continuation)
            ids = torch.cat([batch.input_ids, torch.tensor([cont])], 1)
            none = torch.zeros(0, dtype=torch.long)
            batch = replace(batch, input_ids=ids, attention_mask=torch.ones_like(ids), evi_batch=none, evi_pos=none)
            with self.model.autocast():
                logits = self.model(batch.to(next(self.model.parameters()).device))["logits"]
        else:
            batch = self.model.inputs([clip], [context], [continuation])
            cont = self.model.processor.encode(continuation)
            # logits and labels at the last prompt token and the answer's tokens (the end of the turn left out)
            ids = batch.labels[:, :len(cont) + 1]
            logits = self.model(batch)["logits"][:, :len(cont) + 1]
        n = len(cont)
        logp = F.log_softmax(logits[0, -n - 1:-1].float(), -1)               # the positions predicting cont
        target = ids[0, -n:].to(logp.device)
        return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("--model damo answers one question per request; multi-round tasks are not "
                                  "supported")


MANIFEST = ModelManifest(model_id="damo", simple_class_path=f"{__name__}.DamoLMM")
