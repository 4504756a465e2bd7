"""One thread rule for every command: DAMO_THREADS, else the cores idle now (a short idle sample)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from damo import cli, threads
from damo.config import Recipe

from helpers import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
STAT = """cpu  {a} 0 0 {b} 0 0 0 0 0 0
cpu0 {c0} 0 0 {i0} {w0} 0 0 0 0 0
cpu1 {c1} 0 0 {i1} 0 0 0 {s1} 0 0
intr 1 2 3
"""


def stat(c0=0, i0=0, w0=0, c1=0, i1=0, s1=0) -> str:
    return STAT.format(a=c0 + c1, b=i0 + i1, c0=c0, i0=i0, w0=w0, c1=c1, i1=i1, s1=s1)


def test_the_rule_rounds_the_idle_cores_and_stays_within_the_usable_ones():
    assert threads.threads_for(2, 1.9) == 2       # idle machine
    assert threads.threads_for(2, 1.2) == 1       # another job holds most of a core
    assert threads.threads_for(2, 0.0) == 1       # both busy: never below one
    assert threads.threads_for(1, 2.0) == 1       # held to one core (taskset) while the machine is idle
    assert threads.threads_for(64, 64.0) == threads.MAX_THREADS


def test_idle_time_is_read_per_usable_core():
    before = stat(c0=100, i0=100, c1=100, i1=100)
    # core 0 busy for the whole window; core 1 idle half of it, stolen by the host the other half
    after = stat(c0=120, i0=100, c1=100, i1=110, s1=10)
    both = threads.idle_between(threads.cpu_ticks(before, {0, 1}), threads.cpu_ticks(after, {0, 1}))
    assert both == pytest.approx(0.5)
    core1 = threads.idle_between(threads.cpu_ticks(before, {1}), threads.cpu_ticks(after, {1}))
    assert core1 == pytest.approx(0.5)
    # iowait is idle: a core waiting on a disk is free to compute
    waiting = stat(c0=100, i0=100, w0=20, c1=100, i1=120)
    assert threads.idle_between(threads.cpu_ticks(before, {0, 1}), threads.cpu_ticks(waiting, {0, 1})) == 2.0


def test_a_core_kept_busy_by_another_process_is_not_counted_idle():
    """The sampler and a spinning process share one core: the sample finds it busy (the machine's other
    core is not this process's, so nothing else can look idle)."""
    code = ("import os, subprocess, sys, time; from damo import threads; cpu = min(os.sched_getaffinity(0)); "
            "os.sched_setaffinity(0, {cpu}); "
            "spin = subprocess.Popen([sys.executable, '-c', 'while True: pass']); time.sleep(0.5); "
            "print(round(threads.sample_idle(0.5), 2), threads.threads()); spin.kill()")
    env = {k: v for k, v in os.environ.items() if k != "DAMO_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(REPO), capture_output=True, text=True,
                         check=True, timeout=60)
    idle, n = out.stdout.split()
    assert float(idle) < 0.5 and n == "1"


def test_damo_threads_wins_even_above_the_cores(monkeypatch):
    monkeypatch.setattr(threads, "sample_idle", lambda window=threads.WINDOW_S: pytest.fail("sampled"))
    monkeypatch.setenv("DAMO_THREADS", str(threads.usable_cores() + 1))
    assert threads.threads() == threads.usable_cores() + 1


def test_a_recent_sample_is_reused_only_when_asked(monkeypatch):
    calls = []
    monkeypatch.delenv("DAMO_THREADS", raising=False)
    monkeypatch.setattr(threads, "_last", None)
    monkeypatch.setattr(threads, "sample_idle", lambda window=threads.WINDOW_S: calls.append(1) or 1.0)
    assert threads.idle_cores(max_age=60) == 1.0 and threads.idle_cores(max_age=60) == 1.0
    assert len(calls) == 1
    threads.idle_cores()
    assert len(calls) == 2


def test_omp_num_threads_counts_as_damo_threads_for_the_whole_command():
    base = {k: v for k, v in os.environ.items() if k not in ("DAMO_THREADS", "OMP_NUM_THREADS")}
    code = ("import os; from damo import cli; from damo.threads import threads; cli._setup_threads(); "
            "import torch; print(threads(), os.environ['DAMO_THREADS'], torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=base | {"OMP_NUM_THREADS": "2"}, cwd=str(REPO),
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "2", "2"]


@pytest.fixture
def command_env(monkeypatch):
    """A command in this process sets the thread variables and torch's threads: put both back after."""
    for var in ("DAMO_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    monkeypatch.delenv("DAMO_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    n = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(n)


@pytest.mark.parametrize("pinned", [True, False])
def test_the_demo_says_its_threads_before_training(tmp_path, command_env, capsys, pinned):
    seen = {}

    class Stop(Exception):
        pass

    def run_recipe(recipe, workdir, **kw):
        seen.update(kw)
        raise Stop

    if pinned:
        command_env.setenv("DAMO_THREADS", "2")
    command_env.setattr(threads, "sample_idle", lambda window=threads.WINDOW_S: 2.0)   # an idle 2-core machine
    command_env.setattr(threads, "_last", None)
    command_env.setattr("damo.data.synthetic.synthesize", lambda *a, **k: None)
    command_env.setattr("damo.train.recipe.run_recipe", run_recipe)
    with pytest.raises(Stop):
        cli.main(["demo", "--workdir", str(tmp_path)])
    first = capsys.readouterr().out.splitlines()[0]
    n = 2 if pinned else min(2, threads.usable_cores())
    why = "DAMO_THREADS" if pinned else "the cores idle now; re-checked at each stage"
    assert first == f"training on {n} thread{'s' if n > 1 else ''} ({why}); set DAMO_THREADS to change"
    assert torch.get_num_threads() == n and seen["threads_per_stage"] is True


def test_each_trained_stage_chooses_its_threads_again(tmp_path, monkeypatch):
    from damo.train import recipe as recipe_mod

    chosen = iter([1, 2])
    monkeypatch.setattr(recipe_mod, "use_threads", lambda: next(chosen))
    stage = {"losses": {"lm": 1.0}, "steps": 1, "batch": 2, "text_only": True, "trainable": ["llm.*"]}
    rec = Recipe.from_dict({"model": TINY_MODEL, "data": {"train": "synth://easy?n=4&seed=0"},
                            "stages": [stage | {"name": "a"}, stage | {"name": "b"}]})
    logs: list[str] = []
    recipe_mod.run_recipe(rec, tmp_path, progress=False, log=logs.append, threads_per_stage=True)
    assert [m for m in logs if m.endswith("threads")] == ["stage a: 1 threads", "stage b: 2 threads"]
