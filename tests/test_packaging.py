"""The wheel carries everything a user needs: installed into a fresh environment and run from a folder
outside the source tree, ``damo`` starts and finds its shipped recipes and model configs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(args: list, **kw) -> str:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kw)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.slow
def test_the_wheel_installs_and_finds_its_recipes(tmp_path):
    # build from a copy, so the source tree gets no build/ or egg-info
    src = tmp_path / "src"
    shutil.copytree(REPO / "damo", src / "damo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", tmp_path / "dist", src])
    (wheel,) = (tmp_path / "dist").glob("damo-*.whl")

    # a fresh environment that borrows this one's packages (torch, transformers, ...) but not damo
    # (nor a source tree on PYTHONPATH, where pip would find damo already installed)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env_dir = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", env_dir])
    py = env_dir / "bin" / "python"
    site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel], env=env)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert "--recipe" in run([env_dir / "bin" / "damo", "demo", "--help"], cwd=outside, env=env)
    code = ("import damo, damo.cli as c; from damo.config import find, load_recipe; "
            "r = load_recipe(c.build_parser().parse_args(['demo']).recipe); "
            "print(damo.__file__); print(len(r.stages), r.model.llm.layers); print(find('configs', 'paper-damo'))")
    where, sizes, config = run([py, "-c", code], cwd=outside, env=env).splitlines()
    assert Path(where).is_relative_to(env_dir) and Path(config).is_relative_to(env_dir)
    assert sizes == "5 4"
