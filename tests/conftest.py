"""Shared test fixtures. Tests are offline, CPU-only and deterministic."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the suite's tensors are tiny: one intra-op thread is as fast and never thrashes on a busy CPU
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
# Real public data lives beside the repository, never inside it.
SHARED_DATA = Path(os.environ.get("DAMO_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """A run that selects a browser test stops before running anything when the browser is missing."""
    import helpers

    missing = [p for p in (helpers.CHROMIUM, helpers.CHROMEDRIVER) if not Path(p).is_file()]
    if missing and any(item.get_closest_marker("browser") for item in session.items):
        pytest.exit(f"the web demo's browser tests need {' and '.join(missing)}: install Debian's chromium and "
                    "chromium-driver (scripts/setup does so when run as root; else sudo apt-get install chromium "
                    "chromium-driver), or leave those tests out with -m 'not browser'", returncode=1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(
            f"real test data not found at {SHARED_DATA}; put the shared data folder there (beside the clone) "
            "or set DAMO_SHARED_DATA to it (README, Quick start)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def clip_mkv(tmp_path_factory) -> Path:
    """A real 13 s Matroska file (H.264 + PCM) of the procedural video synth://standard/0/test/0, named with a
    space; read it, never change it."""
    from damo.data import synthetic

    spec = synthetic.generate_spec("standard", 0, "test", 0)
    return synthetic.write_video(spec, tmp_path_factory.mktemp("clip") / "my clip.mkv")

