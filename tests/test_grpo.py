"""GRPO: the objective against TRL's GRPOTrainer, rewards on hand-worked spans, group advantages,
rollouts through the model's sampling, and the stage in the loop."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from damo.config import Recipe
from damo.data.schema import Sample
from damo.model.modeling_damo import DamoModel
from damo.model.tokenizer import train_tokenizer
from damo.pipeline import processor_of
from damo.train.grpo import (AGGREGATIONS, REWARDS, GRPOSettings, Rollouts, format_reward, group_advantages,
                             grpo_loss, iou_reward, iou_v2_reward, span_f1_reward)
from helpers import TINY_MODEL, assert_same_weights, clip, tiny_cfg


# ------------------------------------------------------------------ TRL equality
def trl_loss(loss_type: str, logp, old, adv, mask, ref, beta, eps, eps_high, max_len, num_items):
    """TRL 1.16.0's ``GRPOTrainer._compute_loss`` run on the given log-probs: the trainer's own method
    with a stand-in ``self`` whose model call returns ``logp`` (one process, no accumulation)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    class Acc:
        num_processes = 1

        def gather(self, x):
            return x

        def gather_for_metrics(self, x):
            return x

        def reduce(self, x, reduction="sum"):
            return x

    me = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        loss_type=loss_type, epsilon_low=eps, epsilon_high=eps_high, use_vllm=False,
        vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=max_len, accelerator=Acc(),
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None))
    B, L = logp.shape
    inputs = {"prompt_ids": torch.zeros(B, 3, dtype=torch.long), "prompt_mask": torch.ones(B, 3, dtype=torch.long),
              "completion_ids": torch.zeros(B, L, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": torch.tensor(float(num_items))}
    return GRPOTrainer._compute_loss(me, None, inputs), me._metrics["train"]


@pytest.mark.parametrize("loss_type", AGGREGATIONS)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_gradient_equal_trls(loss_type, beta):
    g = torch.Generator().manual_seed(0)
    B, L = 6, 7
    base = -torch.rand(B, L, generator=g) * 3
    old = base + 0.3 * torch.randn(B, L, generator=g)        # ratios well outside [0.8, 1.28]: both clips bite
    ref = base + 0.5 * torch.randn(B, L, generator=g)
    adv = torch.randn(B, generator=g)
    lengths = torch.tensor([7, 5, 1, 3, 7, 2])
    mask = torch.arange(L)[None] < lengths[:, None]
    ours_in = base.clone().requires_grad_(True)
    theirs_in = base.clone().requires_grad_(True)
    ours = grpo_loss(ours_in, old, adv, mask, ref, beta, 0.2, 0.28, loss_type, max_new_tokens=10, num_items=40)
    theirs, metrics = trl_loss(loss_type, theirs_in, old, adv, mask, ref, beta, 0.2, 0.28, 10, 40)
    assert ours.loss.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-7)
    ours.loss.backward()
    theirs.backward()
    assert torch.allclose(ours_in.grad, theirs_in.grad, rtol=1e-5, atol=1e-7)
    assert ours_in.grad.abs().sum() > 0
    assert ours.clip == pytest.approx(metrics["clip_ratio/region_mean"][0], rel=1e-6)
    assert 0 < ours.clip < 1
    if beta:
        assert ours.kl == pytest.approx(metrics["kl"][0], rel=1e-6) and ours.kl > 0


def test_aggregations_differ_on_unequal_lengths():
    """The four aggregations are not one formula under four names: with completions of unequal length
    each weighs tokens differently."""
    logp = -torch.rand(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]).bool()
    adv = torch.tensor([1.0, -2.0, 0.5])
    got = {t: float(grpo_loss(logp, logp, adv, mask, loss_type=t, max_new_tokens=8, num_items=16).loss)
           for t in AGGREGATIONS}
    # ratio 1 everywhere: per-token loss is -A
    assert got["grpo"] == pytest.approx(-(1.0 - 2.0 + 0.5) / 3)
    assert got["bnpo"] == pytest.approx(-(5 * 1.0 - 2.0 + 2 * 0.5) / 8)
    assert got["dr_grpo"] == pytest.approx(-(5 * 1.0 - 2.0 + 2 * 0.5) / (3 * 8))
    assert got["dapo"] == pytest.approx(-(5 * 1.0 - 2.0 + 2 * 0.5) / 16)


# ------------------------------------------------------------------ rewards and advantages
def test_rewards_on_hand_worked_spans():
    gt = [[2.0, 6.0]]
    assert iou_reward([[4.0, 8.0, 1.0]], gt, 10.0) == pytest.approx(2 / 6)
    # Time-R1 iou_v2: IoU x (1 - |4 - 2| / 10) x (1 - |8 - 6| / 10)
    assert iou_v2_reward([[4.0, 8.0, 1.0]], gt, 10.0) == pytest.approx(2 / 6 * 0.8 * 0.8)
    assert iou_reward([], gt, 10.0) == 0.0 and iou_v2_reward([], gt, 10.0) == 0.0
    assert format_reward([], gt, 10.0) == 0.0 and format_reward([[0.0, 1.0, 1.0]], gt, 10.0) == 1.0
    # several ground-truth spans: the one the top prediction overlaps most
    assert iou_reward([[10.0, 12.0, 1.0], [2.0, 6.0, 1.0]], [[2.0, 6.0], [11.0, 12.0]], 20.0) == pytest.approx(0.5)
    # span F1 over tIoU 0.1/0.3/0.5/0.7: two predictions against three spans, matched at IoU 0.6
    # ([0, 6] with [0, 10]) and 0.5 ([10, 12] with [11, 12]); at 0.1, 0.3 and 0.5 both match:
    # precision 1, recall 2/3, F1 0.8; at 0.7 none: F1 0
    pred = [[0.0, 6.0, 1.0], [10.0, 12.0, 1.0]]
    truth = [[0.0, 10.0], [11.0, 12.0], [20.0, 30.0]]
    assert span_f1_reward(pred, truth, 40.0) == pytest.approx((0.8 * 3 + 0.0) / 4)
    assert set(REWARDS) == {"iou", "iou_v2", "format", "span_f1"}


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2])
    adv, std = group_advantages(r, 4, "none")
    assert adv.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert std[1] == 0 and std[0] == pytest.approx(math.sqrt(0.5 / 3))
    adv, _ = group_advantages(r, 4, "group")
    assert adv[:4].tolist() == pytest.approx([0.5 / (math.sqrt(0.5 / 3) + 1e-4), -0.5 / (math.sqrt(0.5 / 3) + 1e-4),
                                              0.0, 0.0])
    assert adv[4:].abs().max() == 0


def test_a_group_that_scores_the_same_contributes_no_gradient():
    """Two prompts x 4 completions: the first group's rewards differ, the second's are all equal; the
    second group's completions get no gradient under both scalings and every aggregation."""
    rewards = torch.tensor([1.0, 0.0, 0.3, 0.7, 0.4, 0.4, 0.4, 0.4])
    mask = torch.ones(8, 5, dtype=torch.bool)
    for scale in ("group", "none"):
        adv, _ = group_advantages(rewards, 4, scale)
        for t in AGGREGATIONS:
            logp = (-torch.rand(8, 5)).requires_grad_(True)
            old = logp.detach() + 0.1 * torch.randn(8, 5)
            grpo_loss(logp, old, adv, mask, loss_type=t, max_new_tokens=5).loss.backward()
            assert logp.grad[4:].abs().max() == 0 and logp.grad[:4].abs().max() > 0, (scale, t)


def test_unknown_reward_fails_before_any_work_with_the_known_ones(tmp_path, monkeypatch):
    import damo.train.recipe as recipe

    def no_work(*a, **k):
        raise AssertionError("data was loaded before the settings were checked")

    monkeypatch.setattr(recipe, "dataset_samples", no_work)
    d = {"data": {"train": "synth://easy?n=2&seed=0"},
         "stages": [{"name": "rl", "losses": {"grpo": 1.0}, "steps": 1, "grpo": {"rewards": {"iuo": 1.0}}}]}
    with pytest.raises(ValueError, match=r"stage 'rl': grpo.rewards: unknown reward \['iuo'\]; known rewards: "
                                         r"\['format', 'iou', 'iou_v2', 'span_f1'\]"):
        recipe.run_recipe(Recipe.from_dict(d), tmp_path, progress=False, log=lambda *_: None)
    assert not any(tmp_path.iterdir())
    d["stages"][0]["losses"] = {"lm": 1.0}
    d["stages"][0]["grpo"] = {"group": 4}
    with pytest.raises(ValueError, match="'grpo' settings belong to a stage with the grpo loss"):
        Recipe.from_dict(d)


# ------------------------------------------------------------------ sampling and rollouts
TEXTS = ["when does the red square appear?", "It happens in 1.0 - 3.0 seconds.", "0.0 1.5 2.5 4.0 5.0 6.0"]


def coupled_model() -> DamoModel:
    cfg = tiny_cfg()
    cfg.response = "coupled"
    torch.manual_seed(0)
    return DamoModel(cfg, train_tokenizer(TEXTS, 300))


def test_rollouts_score_groups_and_teacher_force_the_sampled_tokens():
    model = coupled_model()
    s = Sample(id="a", video="v0", duration=6.0, task="grounding", query=TEXTS[0], answer="It happens", spans=[[1.0, 3.0]],
               source="test")
    items = [(s, clip(6, 0)), (Sample(**{**s.__dict__, "id": "b", "video": "v1"}), clip(6, 1))]
    st = GRPOSettings(group=3, max_new_tokens=6, iterations=2, drop_zero_variance=False)
    batch, log = Rollouts(model, processor_of(model), st, seed=0).batch(items, step=0, part=0)
    assert batch.input_ids.shape[0] == 6 and batch.advantages.shape == (6,)
    assert {"reward", "reward_iou", "reward_format", "zero_variance", "completion_len"} <= set(log)
    # the labelled tokens are exactly the sampled ones; old log-probs are the model's on them
    n = (batch.labels != -100).sum(1)
    assert n.min() >= 1 and n.max() <= 7
    model.eval()
    with torch.no_grad():
        logits = model(batch)["logits"]
    from damo.train.grpo import token_logps
    assert torch.allclose(token_logps(logits, batch.labels), batch.old_logp, atol=1e-5)
    # same step, same seed: the same samples
    again, _ = Rollouts(model, processor_of(model), st, seed=0).batch(items, step=0, part=0)
    assert torch.equal(again.input_ids, batch.input_ids)


def test_sample_frames_draws_bernoullis_and_grounds_the_longest_run():
    from damo.model.evidence import sample_frames

    g = torch.Generator().manual_seed(0)
    z, run = sample_frames(torch.tensor([-30.0, 30, 30, -30, 30, 30, 30, -30]), 1.0, g)
    assert z.tolist() == [0, 1, 1, 0, 1, 1, 1, 0] and run == (4, 6)
    z, run = sample_frames(torch.full((4,), -30.0), 1.0, g)
    assert not z.any() and run is None
    draws = [sample_frames(torch.tensor([0.0, math.log(3)]), 1.0, g)[0] for _ in range(3000)]
    assert sum(d[1] for d in draws) / 3000 == pytest.approx(0.75, abs=0.03)     # sigmoid(log 3)


def test_evidence_policy_scores_each_evi_as_its_token_plus_its_drawn_frames():
    """Interleaved <evi> responses: the rollout keeps each <evi>'s drawn frames, and the action's
    log-prob is the token's plus D2VLM eq. 6 of the draw, equal to what the sampling pass had."""
    from damo.train.fpo import interval_logprob
    from damo.train.grpo import policy_logps, token_logps

    model = DamoModel(tiny_cfg(), train_tokenizer(TEXTS, 300))
    s = Sample(id="a", video="v0", duration=6.0, task="grounding", query=TEXTS[0], answer="It happens", spans=[[1.0, 3.0]],
               source="test")
    st = GRPOSettings(group=4, max_new_tokens=8, iterations=2, drop_zero_variance=False)
    evi = model.evi_id
    with torch.no_grad():     # the default response is interleaved; make <evi> likely so draws happen
        w = model.llm.get_output_embeddings().weight
        w[evi] = 3 * w.mean(0)
    for seed in range(20):
        batch, _ = Rollouts(model, processor_of(model), st, seed=seed).batch([(s, clip(6, 0))], step=0, part=0)
        if len(batch.evi_batch):
            break
    assert len(batch.evi_batch) and batch.evi_actions.shape == batch.evi_targets.shape
    model.eval()
    with torch.no_grad():
        out = model(batch)
    lp = policy_logps(out, batch)
    assert torch.allclose(lp, batch.old_logp, atol=1e-5)
    plain = token_logps(out["logits"], batch.labels)
    g = interval_logprob(out["evi_logits"], batch.evi_actions, batch.evi_mask[batch.evi_batch])
    r, p = batch.evi_batch[0], batch.evi_pos[0] - 1
    assert float(lp[r, p]) == pytest.approx(float(plain[r, p] + g[0]), rel=1e-5)
    assert float(g[0]) < 0


def test_lape_rollouts_sample_time_tokens_that_mean_their_anchor():
    """LAPE time tokens are sampled actions: a sampled <t_i> reads as anchor i's time and enters the LLM as
    that anchor's embedding, so teacher forcing the rollout gives the sampling pass's log-probs."""
    from damo.train.grpo import policy_logps

    cfg = tiny_cfg()
    cfg.response, cfg.time_encoding, cfg.time_bins = "coupled", "lape", 7
    torch.manual_seed(0)
    model = DamoModel(cfg, train_tokenizer(TEXTS, 300))
    t3 = model.coord_axes["t"][3]
    with torch.no_grad():     # make a time token likely so the rollouts write some
        w = model.llm.get_output_embeddings().weight
        w[t3] = 4 * w.mean(0)
    s = Sample(id="a", video="v0", duration=6.0, task="grounding", query=TEXTS[0], answer="It happens", spans=[[1.0, 3.0]],
               source="test")
    st = GRPOSettings(group=4, max_new_tokens=6, iterations=2, drop_zero_variance=False)
    rollouts = Rollouts(model, processor_of(model), st, seed=0)
    rows = model.generate(processor_of(model).generation_batch([clip(6, 0)] * 4, [s.query] * 4), 6, seed=0,
                          policy=rollouts.policy)
    coords = [(i, v) for r in rows for i, v in zip([x for x in r["ids"] if x in model.axis_of], r["coords"])]
    assert coords and all(v == ("t", model.coord_axes["t"].index(i) / 6 * 6.0) for i, v in coords)
    batch, _ = rollouts.batch([(s, clip(6, 0))], step=0, part=0)
    assert any(int(x) in model.axis_of for x in batch.labels.flatten())
    model.eval()
    with torch.no_grad():
        assert torch.allclose(policy_logps(model(batch), batch), batch.old_logp, atol=1e-5)


def test_grpo_stage_runs_in_the_loop_and_logs_rewards():
    from damo.config import Stage
    from damo.train.loop import run_stage

    model = coupled_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    samples = [Sample(id=f"s{i}", video=f"v{i}", duration=6.0, task="grounding", query=TEXTS[0], answer="It happens",
                      spans=[[1.0, 3.0]], source="test") for i in range(3)]
    clips = {f"v{i}": clip(6, i) for i in range(3)}
    stage = Stage(name="rl", losses={"grpo": 1.0}, steps=3, batch=2, grad_accum=2, warmup=1, lr=1e-2,
                  trainable=["llm.*"], grpo={"group": 3, "max_new_tokens": 5, "beta": 0.1, "loss_type": "dapo",
                                             "drop_zero_variance": False, "rewards": {"iou": 1.0, "format": 0.5}})
    stats = run_stage(model, stage, samples, clips.__getitem__, 0, progress=False)
    for k in ("grpo", "reward", "reward_iou", "reward_iou_std", "reward_format", "zero_variance", "kl", "clip",
              "completion_len"):
        assert k in stats and math.isfinite(stats[k]), k
    assert stats["kl_start"] == pytest.approx(0.0, abs=1e-6) and stats["kl"] > 0   # the policy moved from the reference
    assert 1 <= stats["completion_len"] <= 6
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("llm.") for k in changed)


def test_init_runs_only_the_stages_the_saved_model_lacks_then_grpo_on_evidence_tokens(tmp_path):
    """A recipe of two stages trains a model with interleaved <evi> answers; the same recipe plus a
    grpo stage, started with init from that model, runs only the grpo stage and writes its rewards."""
    from damo.train.recipe import run_recipe

    def recipe(extra: list[dict], **kw) -> Recipe:
        return Recipe.from_dict({"model": TINY_MODEL, "seed": 0, "data": {"train": "synth://easy?n=8&seed=0"}, **kw,
                                 "stages": [{"name": "ground", "losses": {"lm": 1.0, "grounding_bce": 5.0},
                                             "steps": 4, "batch": 4, "warmup": 1}, *extra]})
    run_recipe(recipe([]), tmp_path / "sft", progress=False, log=lambda *_: None)
    rl = {"name": "grpo", "tasks": ["grounding"], "losses": {"grpo": 1.0}, "steps": 2, "batch": 2, "warmup": 1,
          "trainable": ["llm.*", "evidence.*"], "grpo": {"group": 2, "max_new_tokens": 12}}
    said = []
    run_recipe(recipe([rl], init=str(tmp_path / "sft" / "model")), tmp_path / "rl", progress=False, log=said.append)
    assert any("trained through ground; running grpo" in m for m in said)
    assert not (tmp_path / "rl" / "stages" / "ground").exists()
    stats = json.loads((tmp_path / "rl" / "stages" / "grpo" / "stats.json").read_text())
    history = json.loads((tmp_path / "rl" / "stages" / "grpo" / "history.json").read_text())
    assert {"reward_iou", "reward_format", "zero_variance", "completion_len"} <= set(stats)
    assert len(history["reward"]) == 2 and len(history["grpo"]) == 2
    with pytest.raises(ValueError, match="nothing is left to run"):
        run_recipe(recipe([], init=str(tmp_path / "sft" / "model")), tmp_path / "again", progress=False,
                   log=lambda *_: None)
    with pytest.raises(FileNotFoundError, match="--init .*nowhere: no model.safetensors there"):
        run_recipe(recipe([rl], init=str(tmp_path / "nowhere")), tmp_path / "x", progress=False, log=lambda *_: None)


# ------------------------------------------------------------------ difficulty band and early stopping
def grounding(i: int, span: list[float]) -> Sample:
    return Sample(id=f"s{i}", video=f"v{i}", duration=6.0, task="grounding", query=TEXTS[0], answer="It happens",
                  spans=[span], source="test")


def test_difficulty_band_keeps_the_prompts_whose_starting_iou_is_inside_it(monkeypatch):
    """A model taught to answer 1.0 - 3.0 meets prompts of different ground truths: the band keeps
    exactly those whose IoU, computed here from the model's own greedy answers, falls inside it,
    and the stage trains on those alone."""
    from damo.config import Stage
    from damo.spans import span_iou
    from damo.train import grpo
    from damo.train.loop import run_stage

    model = coupled_model()
    clips = {f"v{i}": clip(6, i) for i in range(5)}
    run_stage(model, Stage(name="sft", losses={"lm": 1.0}, steps=30, batch=4, warmup=1, lr=1e-2, trainable=["llm.*"]),
              [grounding(i, [1.0, 3.0]) for i in range(4)], clips.__getitem__, 0, progress=False)
    prompts = [grounding(i, sp) for i, sp in enumerate([[1.0, 3.0], [2.0, 4.0], [0.0, 1.5], [4.0, 6.0], [1.5, 3.0]])]
    proc = processor_of(model)
    rows = model.generate(proc.generation_batch([clips[s.video] for s in prompts], [s.query for s in prompts]), 16)
    ious = []
    for r, s in zip(rows, prompts):
        spans = proc.decode(r["ids"], r["evidence"], r["coords"], 6.0, clips[s.video].times.tolist())["spans"]
        ious.append(float(span_iou([spans[0][:2]], [s.spans[0]])[0, 0]) if spans else 0.0)
    lo, hi = 0.1, 0.9
    inside = {s.id for s, v in zip(prompts, ious) if lo <= v <= hi}
    assert 0 < len(inside) < len(prompts), ious          # the band splits these prompts
    seen: set[str] = set()
    batch = grpo.Rollouts.batch

    def record(self, items, step, part):
        seen.update(s.id for s, _ in items)
        return batch(self, items, step, part)

    monkeypatch.setattr(grpo.Rollouts, "batch", record)
    stage = Stage(name="rl", losses={"grpo": 1.0}, steps=4, batch=4, warmup=1, lr=1e-3, trainable=["llm.*"],
                  grpo={"group": 2, "max_new_tokens": 16, "difficulty": [lo, hi]})
    stats = run_stage(model, stage, prompts, clips.__getitem__, 0, progress=False)
    assert stats["difficulty_kept"] == len(inside) and stats["difficulty_dropped"] == len(prompts) - len(inside)
    assert seen == inside


def test_a_stage_with_patience_stops_on_a_plateau_and_keeps_its_best_weights(monkeypatch):
    """Validation rewards scripted as 0.2, 0.6, 0.4, 0.5 (one per evaluation, every 2 steps) with
    patience 2: the stage stops after its 8th of 20 steps, and its weights are those of step 4."""
    from damo.config import Stage
    from damo.train import grpo
    from damo.train.loop import run_stage

    model = coupled_model()
    samples = [grounding(i, [1.0, 3.0]) for i in range(3)]
    clips = {f"v{i}": clip(6, i) for i in range(3)}
    script, snapshots = iter([0.2, 0.6, 0.4, 0.5, 0.9, 0.9]), []
    real = grpo.greedy_rewards

    def scripted(m, proc, val, clips_, st):
        assert [s.id for s in val] == ["s0", "s1"]           # the first `val` validation prompts
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        v = next(script)
        return [r | {"iou": v} for r in real(m, proc, val, clips_, st)]

    monkeypatch.setattr(grpo, "greedy_rewards", scripted)
    stage = Stage(name="rl", losses={"grpo": 1.0}, steps=20, batch=2, warmup=1, lr=1e-2, trainable=["llm.*"],
                  grpo={"group": 2, "max_new_tokens": 6, "drop_zero_variance": False, "rewards": {"iou": 1.0},
                        "eval_every": 2, "patience": 2, "val": 2})
    stats = run_stage(model, stage, samples, clips.__getitem__, 0, progress=False, val=samples)
    assert len(snapshots) == 4 and stats["best_step"] == 4 and stats["val_reward_best"] == pytest.approx(0.6)
    assert not all(torch.equal(v, snapshots[3][k]) for k, v in snapshots[1].items())     # training moved on
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[1][k]), k


def test_a_stage_killed_after_an_evaluation_resumes_to_the_same_stop_and_best_weights(tmp_path, monkeypatch):
    """Validation rewards 0.6, 0.4, 0.5, 0.3, ... at steps 2, 4, 6, 8 with patience 3 and a checkpoint every
    4 steps: uninterrupted, the stage stops after step 8 keeping step 2's weights. Killed during step 7
    (after step 6's evaluation), then resumed from step 4's checkpoint, it must remember the best reward,
    the evaluations since and step 2's weights, which exist only in that checkpoint's early-stopping state."""
    import copy

    from damo.config import Stage
    from damo.train import grpo
    from damo.train.loop import run_stage

    start = coupled_model()
    samples = [grounding(i, [1.0, 3.0]) for i in range(3)]
    clips = {f"v{i}": clip(6, i) for i in range(3)}
    rewards = [0.6, 0.4, 0.5, 0.3] + [0.2] * 6              # the validation reward at steps 2, 4, 6, ...
    real, batch, evaluations = grpo.greedy_rewards, grpo.Rollouts.batch, []

    def scripted(m, proc, val, clips_, st):
        v = rewards[len(evaluations)]
        evaluations.append(v)
        return [r | {"iou": v} for r in real(m, proc, val, clips_, st)]

    def killed_at_step_7(self, items, step, part):
        if step == 6:
            raise KeyboardInterrupt
        return batch(self, items, step, part)

    monkeypatch.setattr(grpo, "greedy_rewards", scripted)
    stage = Stage(name="rl", losses={"grpo": 1.0}, steps=20, batch=2, warmup=1, lr=1e-2, trainable=["llm.*"],
                  save_every=4, grpo={"group": 2, "max_new_tokens": 6, "drop_zero_variance": False,
                                      "rewards": {"iou": 1.0}, "eval_every": 2, "patience": 3})

    def run(model, folder, **kw) -> tuple[dict, dict]:
        stats = run_stage(model, stage, samples, clips.__getitem__, 0, progress=False, val=samples,
                          checkpoint_dir=folder / "checkpoints", history_file=folder / "history.json", **kw)
        return stats, json.loads((folder / "history.json").read_text())

    straight = copy.deepcopy(start)
    stats, history = run(straight, tmp_path / "straight")
    assert stats["best_step"] == 2 and stats["val_reward_best"] == pytest.approx(0.6)
    assert len(history["grpo"]) == 8 and history["val_reward"] == pytest.approx([0.6, 0.4, 0.5, 0.3])

    monkeypatch.setattr(grpo.Rollouts, "batch", killed_at_step_7)
    evaluations.clear()
    with pytest.raises(KeyboardInterrupt):
        run(copy.deepcopy(start), tmp_path / "killed")
    assert evaluations == [0.6, 0.4, 0.5]
    assert (tmp_path / "killed" / "checkpoints" / "latest").read_text() == "step-00000004"

    monkeypatch.setattr(grpo.Rollouts, "batch", batch)
    del evaluations[2:]                                       # the resumed stage evaluates again from step 6
    resumed = copy.deepcopy(start)
    stats_r, history_r = run(resumed, tmp_path / "killed")
    assert evaluations == [0.6, 0.4, 0.5, 0.3]
    assert {k: stats_r[k] for k in ("best_step", "val_reward_best")} == {k: stats[k] for k in ("best_step", "val_reward_best")}
    assert len(history_r["grpo"]) == 8 and history_r["val_reward"] == history["val_reward"]
    assert_same_weights(resumed, straight)
    assert not all(torch.equal(v, start.state_dict()[k]) for k, v in resumed.state_dict().items())


@pytest.mark.parametrize("settings, message", [
    ({"difficulty": [0.8, 0.2]}, r"grpo.difficulty must be \[lo, hi\] with 0 <= lo <= hi <= 1 \(an IoU band\), got \[0.8, 0.2\]"),
    ({"difficulty": 0.5}, r"grpo.difficulty must be \[lo, hi\]"),
    ({"eval_every": 5}, r"grpo.eval_every needs grpo.patience"),
    ({"patience": 3}, r"grpo.patience and grpo.val apply to validation evaluations: set grpo.eval_every too"),
    ({"eval_every": 5, "patience": 2, "val": 0}, r"grpo.val must be a number of validation prompts >= 1, got 0"),
])
def test_malformed_difficulty_and_stopping_settings_fail_in_one_line(settings, message):
    with pytest.raises(ValueError, match=message):
        GRPOSettings.from_dict(settings)


def test_stopping_without_validation_data_fails_before_any_work(tmp_path, monkeypatch):
    import damo.train.recipe as recipe

    def no_work(*a, **k):
        raise AssertionError("data was loaded before the settings were checked")

    monkeypatch.setattr(recipe, "dataset_samples", no_work)
    d = {"data": {"train": "synth://easy?n=2&seed=0"},
         "stages": [{"name": "rl", "losses": {"grpo": 1.0}, "steps": 1, "grpo": {"eval_every": 1, "patience": 1}}]}
    with pytest.raises(ValueError, match=r"stages \['rl'\] evaluate on validation data \(grpo.eval_every\): add "
                                         r"data.val to the recipe, or remove grpo.eval_every"):
        recipe.run_recipe(Recipe.from_dict(d), tmp_path, progress=False, log=lambda *_: None)
    assert not any(tmp_path.iterdir())
