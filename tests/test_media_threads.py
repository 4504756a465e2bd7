"""The thread default reaches torch and the decoder in every command (the rule itself: test_threads.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from damo import cli
from damo.media import decode as decode_mod
from damo.media import decode_clip
from damo.media.decode import decoder_threads, media_threads

REPO = Path(__file__).resolve().parents[1]


def test_every_subcommand_sets_threads_before_running(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "_setup_threads", lambda: calls.append(1))
    with pytest.raises(SystemExit, match="--gt and --pred"):
        cli.main(["eval", "--task", "charades-sta"])   # the scoring path, which never calls _setup_torch
    assert calls == [1]


@pytest.mark.parametrize("env, expected", [({"DAMO_THREADS": "1"}, "1 1"), ({"DAMO_THREADS": "2"}, "2 2"),
                                           ({"OMP_NUM_THREADS": "2"}, "2 2")])
def test_thread_default_reaches_torch(env, expected):
    base = {k: v for k, v in os.environ.items() if k not in ("DAMO_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    code = ("import os; from damo import cli; cli._setup_threads(); import torch; "
            "print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])")
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, cwd=str(REPO),
                         capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[-2].strip() == expected


def test_decoder_threads_follow_damo_threads_else_the_idle_cores(monkeypatch):
    monkeypatch.setenv("DAMO_THREADS", "2")
    assert media_threads() == 2
    assert decoder_threads(640, 360, 500) == 2 and decoder_threads(176, 144, 500) == 1   # small frames: one thread
    assert decoder_threads(176, 144, 5000) == 2                                          # unless they are dense
    monkeypatch.delenv("DAMO_THREADS")
    assert 1 <= media_threads() <= (os.cpu_count() or 1)


def test_a_thread_count_that_is_not_a_number_is_named(monkeypatch):
    base = {k: v for k, v in os.environ.items() if k not in ("DAMO_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-m", "damo.cli", "--help"], env={**base, "DAMO_THREADS": "two"},
                         cwd=str(REPO), capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "DAMO_THREADS='two' is not a number of threads" in out.stderr
    monkeypatch.setenv("DAMO_THREADS", "1.5")
    with pytest.raises(ValueError, match="DAMO_THREADS='1.5'"):
        media_threads()


def test_a_process_held_to_one_core_defaults_to_one_thread():
    # taskset and container CPU limits: the cores counted are those the process may run on
    base = {k: v for k, v in os.environ.items() if k not in ("DAMO_THREADS", "OMP_NUM_THREADS")}
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from damo import cli; from damo.media.decode import media_threads; from damo.threads import usable_cores; "
            "cli._setup_threads(); print(usable_cores(), media_threads(), os.environ['OMP_NUM_THREADS'])")
    out = subprocess.run([sys.executable, "-c", code], env=base, cwd=str(REPO), capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["1", "1", "1"]


@pytest.mark.parametrize("name", ["bikes.mp4", "big_buck_bunny_0_30.webm"])
def test_decoder_threads_change_no_pixel(shared_data, monkeypatch, name):
    clips = []
    for threads in ("1", "2"):
        monkeypatch.setenv("DAMO_THREADS", threads)
        clips.append(decode_clip(shared_data / "videos" / name, fps=2.0, size=32, audio=False))
    np.testing.assert_array_equal(clips[0].frames, clips[1].frames)
    np.testing.assert_array_equal(clips[0].times, clips[1].times)


def test_the_first_gop_decides_the_threads_and_threads_change_no_pick(shared_data, monkeypatch):
    """carphone is 176x144 but 4.9 KB a frame: threaded; transparent.webm is 200x200 at 30 bytes: not."""
    seen = []
    rule = decode_mod.decoder_threads

    def recording(*args):
        seen.append(args)
        return rule(*args)

    monkeypatch.setattr(decode_mod, "decoder_threads", recording)
    monkeypatch.setenv("DAMO_THREADS", "2")
    carphone = shared_data / "videos" / "carphone_pristine.mp4"
    fast = decode_clip(carphone, fps=2.0, size=32, audio=False)
    decode_clip(shared_data / "videos" / "transparent.webm", fps=2.0, size=32, audio=False)
    (w, h, dense), (_, _, sparse) = seen
    assert (w, h) == (176, 144) and dense > 3000 > sparse
    assert [rule(*a) for a in seen] == [2, 1]
    full = decode_clip(carphone, fps=2.0, size=32, mode="sequential", audio=False)
    np.testing.assert_array_equal(fast.frames, full.frames)
    np.testing.assert_array_equal(fast.times, full.times)
