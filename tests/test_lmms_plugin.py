"""The lmms-eval model plugin on the installed lmms-eval 0.7.3: registered through its entry point, requests built
as its task loader builds them from the timelens task's own files, answers scored by that task's own
process_results and aggregation functions, on real videos."""
from __future__ import annotations

import copy
import tomllib
from dataclasses import replace
from importlib import import_module
from pathlib import Path

import pytest
import torch
import yaml
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelRegistryV2

import damo
from damo.eval.grounding import hull_iou
from damo.integrations.lmms_eval import DamoLMM, span_sentence
from damo.model import tokenizer as tk
from damo.model.modeling_damo import DamoModel
from helpers import tiny_cfg
from lmms_tasks import TASKS, task_utils
from test_ground import build_scripted_model
import vlm_tiny

NONE = torch.zeros(0, dtype=torch.long)

timelens = task_utils("timelens")
VIDEOS = ("charades_0F7LW.mp4", "test_video.mp4", "bikes.mp4")


def task_config(name: str) -> dict:
    """The task's YAML as the task loader reads it (the ``!function`` lines are the functions loaded below)."""
    text = (TASKS / "timelens" / name).read_text()
    return yaml.safe_load("".join(line for line in text.splitlines(True) if "!function" not in line))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny DaMO model whose greedy answer is ``<evi> </evi> red``: one grounded span and a word."""
    return build_scripted_model(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory) -> Path:
    """A tiny untrained DaMO model: it writes ordinary tokens from the first step."""
    torch.manual_seed(0)
    prompt = task_config("_default_yaml_template")["lmms_eval_specific_kwargs"]["default"]
    texts = [prompt["pre_prompt"], prompt["post_prompt"], "a person opens the door", "red", "It happens in"] * 20
    path = tmp_path_factory.mktemp("random") / "model"
    DamoModel(tiny_cfg(), tk.train_tokenizer(texts, 300)).save(path)
    return path


@pytest.fixture(scope="module")
def docs(shared_data) -> list[dict]:
    queries = ("a person opens the door", "the bikes pass by", "someone turns on the light", "a car drives")
    return [{"video_path": str(shared_data / "videos" / VIDEOS[i % 3]), "query": q, "span": [[1.0 + i, 4.0 + i]]}
            for i, q in enumerate(queries)]


def requests(docs: list[dict], task: str = "timelens_charades", split: str = "charades") -> list[Instance]:
    """generate_until requests as ConfigurableTask.construct_requests makes them for this task."""
    cfg = task_config("_default_yaml_template")
    kwargs = {**cfg["lmms_eval_specific_kwargs"], **cfg["lmms_eval_specific_kwargs"]["default"]}
    gen = {**cfg["generation_kwargs"], "until": ["\n\n"]}       # the loader adds its few-shot delimiter
    return [Instance(request_type="generate_until", idx=0, metadata={"task": task, "doc_id": i, "repeats": 1},
                     arguments=(timelens.timelens_doc_to_text(d, kwargs), copy.deepcopy(gen),
                                timelens.timelens_doc_to_visual, i, task, split))
            for i, d in enumerate(docs)]


def plugin(model_dir: Path, docs: list[dict], **args) -> DamoLMM:
    """The model as lmms-eval makes it: the class its registry resolves for ``--model damo``, built from
    ``--model_args`` and the command's own settings."""
    entry = tomllib.loads(Path("pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]["damo"]
    module, name = entry.split(":")
    registry = ModelRegistryV2()
    registry.register_manifest(getattr(import_module(module), name))
    cls = registry.get_model_class("damo")
    assert cls is DamoLMM and issubclass(cls, lmms)
    lm = cls.create_from_arg_string(f"pretrained={model_dir}", {"device": "cpu", **args})
    lm.task_dict = {"timelens_charades": {"charades": docs}}
    return lm


def test_answers_scored_by_the_timelens_task(model_dir, docs):
    lm = plugin(model_dir, docs, batch_size=3)
    got = lm.generate_until(requests(docs))
    # batched like one at a time, and each what DaMO's own API answers about that video and prompt
    assert got == plugin(model_dir, docs, batch_size=1).generate_until(requests(docs))
    g = damo.load(model_dir)
    own = [g.ground(d["video_path"], r.args[0]) for d, r in zip(docs, requests(docs))]
    assert all(o["spans"] for o in own)
    assert got == [f"{span_sentence([o['spans'][0]['start'], o['spans'][0]['end']])} {o['answer']}".split("\n\n")[0]
                   for o in own]
    # the task's process_results and aggregation read the model's best span back from the text
    results = [timelens.timelens_process_results(d, [a]) for d, a in zip(docs, got)]
    miou = timelens.timelens_aggregate_miou([r["timelens_mIOU"] for r in results], None)
    ious = [hull_iou(d["span"][0], [round(o["spans"][0]["start"], 2), round(o["spans"][0]["end"], 2)])
            for d, o in zip(docs, own)]
    assert miou == pytest.approx(sum(ious) * 100 / len(ious), abs=1e-9)


def test_loglikelihood_of_continuations(random_dir, docs):
    lm = plugin(random_dir, docs)
    model, proc = lm.model, lm.grounder.pipeline.processor
    reqs = requests(docs[:2])
    ll, want = [], []
    for r, d in zip(reqs, docs):
        clip = lm.grounder.clips(d["video_path"])
        batch = proc.generation_batch([clip], [r.args[0]])
        greedy = model.generate(batch, 3)[0]["ids"]                 # the cached decoder's first three tokens
        other = greedy[:2] + [proc.encode(" door")[0]]
        assert other[-1] != greedy[-1]
        for ids in (greedy, other):
            ll.append(Instance(request_type="loglikelihood", idx=0,
                               metadata={"task": r.task_name, "doc_id": r.doc_id, "repeats": 1},
                               arguments=(r.args[0], proc.tokenizer.decode(ids), *r.args[2:])))
            # one forward per token of the continuation, each on the prompt and the tokens before it
            total = 0.0
            for k, t in enumerate(ids):
                step = torch.cat([batch.input_ids, torch.tensor([ids[:k]], dtype=torch.long)], 1)
                with torch.no_grad():
                    logits = model(replace(batch, input_ids=step, attention_mask=torch.ones_like(step),
                                           evi_batch=NONE, evi_pos=NONE))["logits"]
                total += float(torch.log_softmax(logits[0, -1].float(), -1)[t])
            want.append((pytest.approx(total, abs=1e-4), ids is greedy))
    assert lm.loglikelihood(ll) == want
def test_a_whole_vlm_answers_in_its_own_words(tmp_path, docs):
    """A tiny random Qwen2.5-VL checkpoint under its family's preset: the answers are the text DaMO's API gives
    (cut at the task's token budget), and a continuation's log-probability is the sum of its tokens'."""
    folder = vlm_tiny.save("qwen2.5-vl", tmp_path / "qwen2.5-vl")
    lm = plugin(folder, docs, batch_size=2)
    reqs = requests(docs[:2])
    got = lm.generate_until(reqs)
    g = damo.load(folder)
    g.max_new_tokens = reqs[0].args[1]["max_new_tokens"]                # the task's, not the preset's
    assert got == [g.ground(d["video_path"], r.args[0])["answer"].split("\n\n")[0] for d, r in zip(docs, reqs)]
    # log P of a continuation: one forward per token on the prompt and the tokens before it
    r, vlm = reqs[0], lm.model
    prompt = vlm.inputs([lm.grounder.clips(docs[0]["video_path"])], [r.args[0]]).inputs
    cont = vlm.processor.encode(" the door opens")
    total, greedy = 0.0, True
    for k, t in enumerate(cont):
        ids = torch.cat([prompt["input_ids"], torch.tensor([cont[:k]], dtype=torch.long)], 1)
        per_token = {key: torch.cat([v, v.new_zeros(1, k)], 1) for key, v in prompt.items()       # text: type 0
                     if isinstance(v, torch.Tensor) and v.shape == prompt["input_ids"].shape}
        with torch.no_grad():
            inputs = prompt | per_token | {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            logits = vlm.model(**inputs).logits[0, -1]
        total += float(torch.log_softmax(logits.float(), -1)[t])
        greedy &= int(logits.argmax()) == t
    ll = Instance(request_type="loglikelihood", idx=0, metadata={"task": r.task_name, "doc_id": 0, "repeats": 1},
                  arguments=(r.args[0], " the door opens", *r.args[2:]))
    assert lm.loglikelihood([ll]) == [(pytest.approx(total, abs=1e-4), greedy)]


def test_bad_model_args_are_one_line(model_dir, docs):
    with pytest.raises(ValueError, match="--model damo takes no temperature; its model_args: pretrained, preset"):
        plugin(model_dir, docs, temperature=0)
    with pytest.raises(ValueError, match="spans must be one of prefix, none, got 'after'"):
        plugin(model_dir, docs, spans="after")
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1, got 'auto'"):
        plugin(model_dir, docs, batch_size="auto")
