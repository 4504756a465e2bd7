"""How a generated token is chosen: the decoding settings of a model (``model.generation``, as
transformers' ``GenerationConfig`` holds them) and the step that applies them to a batch's logits.
:meth:`~damo.model.modeling_damo.DamoModel.generate` runs the decoding loop with them."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Generation:
    """How the next token is chosen (transformers' ``generate`` settings, each with its meaning there):
    greedy by default; ``do_sample`` draws from the softmax at ``temperature``, kept to the smallest
    set of tokens reaching ``top_p`` of the mass; ``repetition_penalty`` > 1 divides the positive
    (multiplies the negative) logits of every token already in the prompt or answer, except the video
    placeholders and ``<evi>`` (D²VLM's ``RepetitionPenaltyLogitsProcessor``, d2vlm/utils/inference.py).
    ``tasks``: per task, fields that differ (the sample's own task name: E.T. Bench's ``rar`` ... when
    the sample keeps it in ``meta['task']``, else the canonical task)."""
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    tasks: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and 0 < self.top_p <= 1 and self.repetition_penalty > 0):
            raise ValueError(f"model.generation needs temperature > 0, 0 < top_p <= 1 and repetition_penalty > 0; "
                             f"got {self.temperature}, {self.top_p}, {self.repetition_penalty}")

    def for_task(self, task: str | None) -> "Generation":
        """The settings of one task: these, with the task's own fields over them."""
        return replace(self, tasks={}, **self.tasks.get(task, {})) if task in self.tasks else replace(self, tasks={})


def generation_of(fields: dict | None) -> Generation:
    """``model.generation`` as :class:`Generation`, or one line saying what is wrong."""
    fields = fields or {}
    names = set(Generation.__dataclass_fields__)
    bad = (set(fields) - names) | ({k for t in fields.get("tasks", {}).values() for k in t} - (names - {"tasks"}))
    if bad:
        raise ValueError(f"model.generation takes {sorted(names)} (per task, the same but tasks); got {sorted(bad)}")
    g = Generation(**fields)
    for t in g.tasks:
        g.for_task(t)                                           # checks each task's values
    return g


def next_tokens(logits: torch.Tensor, history: list[list[int]], settings: list[Generation],
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of each row from its logits ``(B, V)``, under that row's :class:`Generation`;
    ``history``: each row's ids the repetition penalty counts (prompt text and answer so far)."""
    out = []
    for x, seen, g in zip(logits.float(), history, settings):
        if g.repetition_penalty != 1.0 and seen:
            i = torch.as_tensor(sorted(set(seen)), device=x.device)
            v = x[i]
            x = x.index_put((i,), torch.where(v < 0, v * g.repetition_penalty, v / g.repetition_penalty))
        if not g.do_sample:
            out.append(x.argmax())
            continue
        p = torch.softmax(x / g.temperature, -1)
        if g.top_p < 1:
            ps, order = p.sort(descending=True)
            drop = ps.cumsum(0) - ps > g.top_p                     # tokens past the top_p mass
            p = p.index_put((order[drop],), torch.zeros(int(drop.sum()), device=p.device))
        out.append(torch.multinomial(p / p.sum(), 1, generator=generator)[0])
    return torch.stack(out)


def stop_ids(tokenizer: PreTrainedTokenizerBase, stops: Sequence[str] = ()) -> list[list[int]]:
    """What ends an answer as token id sequences: the eos token, then each stop string a chat template
    closes its turns with (``model.chat.stop``)."""
    ids = [tokenizer(x, add_special_tokens=False)["input_ids"] for x in stops]
    return [[tokenizer.eos_token_id]] + [x for x in ids if x]


def stop_length(ids: list[int], stops: list[list[int]]) -> int:
    """How many of the last ``ids`` are one of the ``stops`` (the eos token, a chat's stop string as
    token ids, matched as sequences as the authors' ``KeywordsStoppingCriteria`` does); 0: none."""
    return next((len(x) for x in stops if len(ids) >= len(x) and ids[-len(x):] == x), 0)
