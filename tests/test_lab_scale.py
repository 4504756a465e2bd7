"""Lab-scale paths: batched generation equals one-at-a-time, datasets on disk (video roots, missing
videos, worker processes), and the real Charades-STA video through convert -> eval."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from damo.cli import main
from damo.config import Recipe
from damo.data.dataset import ClipLoader, find_video, resolve_videos
from damo.data.schema import Sample, load_samples
from damo.data.synthetic import synth_samples
from damo.eval.evaluate import predict
from damo.model.processing import DamoProcessor
from damo.pipeline import DamoPipeline, processor_of
from damo.train.recipe import run_recipe

from helpers import TINY_MODEL


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained briefly on procedural clips: it emits answers with evidence tokens."""
    work = tmp_path_factory.mktemp("run")
    recipe = Recipe.from_dict({
        "model": TINY_MODEL, "seed": 0, "data": {"train": "synth://easy?n=16&seed=0"},
        "stages": [{"name": "ground", "losses": {"lm": 1.0, "grounding_bce": 5.0}, "steps": 80, "batch": 8,
                    "lr": 3e-3, "warmup": 5}]})
    model = run_recipe(recipe, work, progress=False, log=lambda *_: None)
    return model, work / "model"


@pytest.mark.parametrize("frame_times", ["centre", "start"])
def test_the_loader_names_the_cache_file_it_writes(trained, clip_mkv, tmp_path, frame_times):
    """The web demo deletes an upload's cache entry by this name: it must be the file the loader wrote,
    whatever the sampling phase."""
    model, _ = trained
    proc = DamoProcessor(model.tokenizer, replace(processor_of(model).config, frame_times=frame_times))
    clips = ClipLoader(proc, cache_dir=tmp_path)
    clips.raw(str(clip_mkv))
    assert [p.name for p in tmp_path.glob("*.npz")] == [clips.cache_file(str(clip_mkv)).name]
    assert ClipLoader(proc, cache="off").cache_file(str(clip_mkv)) is None


def test_batch_of_8_predicts_exactly_what_batch_of_1_does(trained):
    model, _ = trained
    # clips of different lengths and questions of different lengths: prompts are left-padded
    samples = [s for s in synth_samples("synth://standard?n=6&seed=3&split=test") if s.task == "grounding"][:12]
    assert len({s.duration for s in samples}) > 1 and len({len(s.query) for s in samples}) > 1
    pipe = DamoPipeline(model)
    clips = ClipLoader(pipe.processor)
    one = predict(pipe, samples, clips, batch_size=1, progress=False)
    eight = predict(pipe, samples, clips, batch_size=8, progress=False)
    # the same answers and spans; a span's confidence may move by float noise across a rounding step
    assert [(p.id, p.answer, [sp[:2] for sp in p.spans]) for p in eight] == \
        [(p.id, p.answer, [sp[:2] for sp in p.spans]) for p in one]
    for a, b in zip(eight, one):
        assert [sp[2] for sp in a.spans] == pytest.approx([sp[2] for sp in b.spans], abs=2e-3)
    assert any("<evi>" not in p.answer and p.spans for p in one)      # real grounded answers were compared


def test_video_ids_resolve_under_a_root_and_missing_ones_are_listed(tmp_path):
    (tmp_path / "a.mkv").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.mp4").write_bytes(b"x")
    assert find_video("a", tmp_path) == str(tmp_path / "a.mkv")
    assert find_video("sub/b.mp4", tmp_path) == str(tmp_path / "sub" / "b.mp4")
    assert find_video("synth://easy/0/test/1", tmp_path) == "synth://easy/0/test/1"
    samples = [Sample(id=f"q{i}", video=v, duration=5.0, task="grounding", query="when?", spans=[[1.0, 2.0]])
               for i, v in enumerate(["a", "gone1", "a", "gone2", "gone1"])]
    with pytest.raises(FileNotFoundError, match=r"2 videos \(3 samples\) not found.*gone1, gone2.*--on-missing skip"):
        resolve_videos(samples, tmp_path)
    kept, missing = resolve_videos(samples, tmp_path, on_missing="skip")
    assert [s.id for s in kept] == ["q0", "q2"] and kept[0].video == str(tmp_path / "a.mkv")
    assert missing.videos == ["gone1", "gone2"] and missing.samples == ["q1", "q3", "q4"]


def test_charades_convert_with_video_root_then_eval_on_the_real_video(trained, shared_data, tmp_path, capsys):
    _, model_dir = trained
    root = tmp_path / "videos"
    root.mkdir()
    (root / "0F7LW.mp4").symlink_to(shared_data / "videos" / "charades_0F7LW.mp4")
    gt = shared_data / "charades_sta" / "charades_sta_test.txt"
    durations = shared_data / "charades_sta" / "Charades_v1_test.csv"
    out = tmp_path / "test.jsonl"
    args = ["data", "convert", "--format", "charades-sta", "--in", str(gt), "--durations", str(durations),
            "--out", str(out), "--video-root", str(root)]
    with pytest.raises(SystemExit, match=r"1333 videos \(3713 samples\) not found"):
        main(args)
    assert not out.exists()                                   # nothing written before the check
    assert main(args + ["--on-missing", "skip"]) == 0
    report = json.loads(capsys.readouterr().out)
    samples = load_samples(out)
    assert report["samples"] == len(samples) == 7 and report["missing"]["videos"] == 1333
    assert {s.video for s in samples} == {str(root / "0F7LW.mp4")}
    assert main(["eval", "--data", str(out), "--model", str(model_dir), "--out", str(tmp_path / "ev"),
                 "--batch-size", "4", "--device", "cpu"]) == 0
    preds = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 7 and all(0 <= sp[0] <= sp[1] <= 30.7 for p in preds for sp in p["spans"])   # the file is 30.65 s
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 7


def test_eval_of_ids_with_a_root_skips_missing_videos_and_reports_them(trained, shared_data, tmp_path):
    _, model_dir = trained
    root = tmp_path / "videos"
    root.mkdir()
    (root / "chaplin.mp4").symlink_to(shared_data / "videos" / "chaplin.mp4")
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(Sample(id=f"q{i}", video=v, duration=9.6, task="grounding", query="when?",
                                                 spans=[[1.0, 2.0]]).to_dict()) for i, v in enumerate(["chaplin", "lost"])))
    with pytest.raises(FileNotFoundError, match="1 videos"):
        main(["eval", "--data", str(data), "--model", str(model_dir), "--video-root", str(root)])
    assert main(["eval", "--data", str(data), "--model", str(model_dir), "--video-root", str(root), "--on-missing",
                 "skip", "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["overall"]["n"] == 1 and m["skipped"] == {"videos": ["lost"], "samples": ["q1"]}


PEAK_SCRIPT = """
import json, sys, numpy as np, torch
torch.set_num_threads(1)
from damo.config import Stage
from damo.data.dataset import ClipLoader
from damo.data.schema import Sample
from damo.media import Clip, sources
from damo.model.configuration_damo import DamoConfig
from damo.model.modeling_damo import DamoModel
from damo.model.tokenizer import train_tokenizer
from damo.train.loop import run_stage
from damo.pipeline import DamoPipeline


def noise_clip(ref, fps, size, phase):    # a 40-s clip of random frames: as big as a decoded one, made in no time
    rng = np.random.default_rng(int(ref.rsplit("/", 1)[1]))
    return Clip(frames=rng.integers(0, 256, (40, size, size, 3), dtype=np.uint8), times=np.arange(40) + 0.5,
                audio=np.zeros(40 * 16000, np.float32), duration=40.0, fps=1.0, has_audio=False, source=ref)


sources.SCHEMES["noise"] = sources.Scheme(video="__main__:noise_clip")
n, memory = int(sys.argv[1]), sys.argv[2] == "1"
samples = [Sample(id=str(i), video=f"noise://{i}", duration=40.0, task="grounding", query="when?", answer="now",
                  spans=[[3.0, 9.0]]) for i in range(n)]
model = DamoModel(DamoConfig.from_dict(json.loads(sys.argv[3])), train_tokenizer(["when? now"], 300))
stage = Stage(name="s", losses={"lm": 1.0}, steps=8, batch=8, trainable=["projector.*"])   # same work, n videos
run_stage(model, stage, samples, ClipLoader(DamoPipeline(model).processor, memory=memory), 0, progress=False)
print(json.dumps({"clips": n, "peak_mb": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024}))
"""


def _train_peak(n: int, memory: bool) -> dict:
    import subprocess
    import sys

    cfg = json.dumps(TINY_MODEL | {"vision": {"width": 32, "layers": 1, "image_size": 128, "patch": 32}})
    r = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(n), "1" if memory else "0", cfg], capture_output=True,
                       text=True, check=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_memory_does_not_grow_with_the_number_of_clips():
    """40-s clips of 128 px: 64 videos take about 125 MB as tensors. Streaming them (loaded per step,
    nothing kept) must cost no more peak memory than 8 videos; keeping them (the opt-in in-memory
    store) does grow, which shows the measurement can see the difference."""
    small, large = _train_peak(8, False), _train_peak(64, False)
    kept = _train_peak(64, True)
    assert large["clips"] >= 8 * small["clips"]
    budget = 40    # MB; the 64 clips' tensors alone are ~125 MB
    assert large["peak_mb"] - small["peak_mb"] < budget, (small, large)
    assert kept["peak_mb"] - large["peak_mb"] > budget, (large, kept)


def test_worker_processes_decode_after_the_parent_has(shared_data, tmp_path):
    """A data-loader worker is forked from a process that has decoded (and holds swscale contexts
    with threads): it must decode on its own instead of waiting on its parent's threads."""
    from torch.utils.data import DataLoader

    from damo.data.dataset import ClipDataset
    from damo.media import decode_clip
    from damo.model.configuration_damo import DamoConfig
    from damo.model.modeling_damo import DamoModel
    from damo.model.tokenizer import train_tokenizer

    videos = [str(shared_data / "videos" / n) for n in ("chaplin.mp4", "bikes.mp4", "charades_0F7LW.mp4")]
    decode_clip(videos[0], 1.0, 32)
    model = DamoModel(DamoConfig.from_dict(TINY_MODEL), train_tokenizer(["when?"], 300))
    samples = [Sample(id=str(i), video=v, duration=10.0, task="grounding", query="when?") for i, v in enumerate(videos)]
    ds = ClipDataset(samples, ClipLoader(processor_of(model), cache_dir=tmp_path))
    got = list(DataLoader(ds, batch_size=None, num_workers=2, timeout=120))   # raises instead of hanging
    assert [c.frames.shape[1:] for _, _, c in got] == [(32, 32, 3)] * 3


def test_training_through_worker_processes_sees_the_same_batches():
    from damo.config import Stage
    from damo.model.configuration_damo import DamoConfig
    from damo.model.modeling_damo import DamoModel
    from damo.model.tokenizer import train_tokenizer
    from damo.train.loop import run_stage

    samples = synth_samples("synth://easy?n=4&seed=0")
    stats = []
    for workers in (0, 2):
        import torch
        torch.manual_seed(0)
        model = DamoModel(DamoConfig.from_dict(TINY_MODEL), train_tokenizer([s.query for s in samples], 300))
        stage = Stage(name="s", losses={"lm": 1.0, "grounding_bce": 1.0}, steps=4, batch=4, warmup=1,
                      trainable=["projector.*", "llm.*", "evidence.*"])
        stats.append(run_stage(model, stage, samples, ClipLoader(processor_of(model)), 0, progress=False,
                               num_workers=workers))
    assert stats[0] == pytest.approx(stats[1], rel=1e-6)


def test_a_long_clip_in_the_batch_does_not_change_how_a_short_one_is_grouped(trained):
    """Over the llm_frames budget consecutive frames share a token; a batch must not impose a long
    clip's grouping on a short one."""
    import numpy as np
    import torch

    from damo.model.processing import ClipTensors

    model, _ = trained
    pipe = DamoPipeline(model)
    pipe.processor.config.llm_frames = 8      # a 12-frame clip is grouped in pairs, a 6-frame one is not
    g = torch.Generator().manual_seed(0)
    clips = [ClipTensors(frames=torch.randint(0, 255, (T, 32, 32, 3), generator=g, dtype=torch.uint8),
                         mel=torch.randn(T, 25, 32, generator=g), times=torch.arange(T) + 0.5, duration=float(T))
             for T in (6, 12)]
    alone = [pipe.answer([c], ["when?"], 8)[0] for c in clips]
    together = pipe.answer(clips, ["when?", "when?"], 8)
    for a, b in zip(alone, together):
        assert a["answer"] == b["answer"]
        np.testing.assert_allclose(np.array(a["spans"]), np.array(b["spans"]), atol=1e-5)
