"""D²VLM's semantic-capture pass reads one intermediate layer: it runs the decoder only that far and never
the output head, and gives the very states of a full pass."""
from __future__ import annotations

import random

import torch

from damo.data.collate import Collator
from damo.data.dataset import ClipLoader, load_dataset
from damo.model.configuration_damo import DamoConfig
from damo.train.recipe import build_model
from damo.pipeline import processor_of

from test_paper_models import tiny_stand_in


def test_capture_pass_stops_at_its_layer_without_the_head():
    samples = load_dataset("synth://easy?n=4&seed=0")
    d = tiny_stand_in("d2vlm", 600)
    d["llm"]["config"]["num_hidden_layers"] = 4
    model = build_model(DamoConfig.from_dict(d), samples, 0).eval()
    emb = torch.randn(2, 9, model.llm.config.hidden_size)
    mask = torch.ones(2, 9, dtype=torch.long)
    with torch.no_grad():
        full = model.llm(inputs_embeds=emb, attention_mask=mask, output_hidden_states=True).hidden_states
        for i in (0, 1, 3, 4, -2, -1):
            torch.testing.assert_close(model.hidden_state_at(emb, mask, i), full[i], rtol=0, atol=1e-6, msg=str(i))
    assert model.llm.get_decoder().config.num_hidden_layers == 4                 # restored
    # a training forward with <evi> tokens: the head runs once (the main pass), layers 1-2 twice, 3-4 once
    calls = {"head": 0, "layers": [0] * 4}
    model.llm.get_output_embeddings().register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    for k, layer in enumerate(model.llm.get_decoder().layers):
        layer.register_forward_hook(lambda *a, k=k: calls["layers"].__setitem__(k, calls["layers"][k] + 1))
    clips = ClipLoader(processor_of(model), memory=True)
    batch = Collator(processor_of(model))([(s, clips(s.video)) for s in samples[:2]], random.Random(0))
    assert len(batch.evi_batch) and model.cfg.evidence.capture_layer == 1
    model.train()
    model(batch)
    assert calls == {"head": 1, "layers": [2, 2, 1, 1]}
