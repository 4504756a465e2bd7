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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(
            f"real test data not found at {SHARED_DATA}; put the shared data folder there (beside the clone) "
            "or set DAMO_SHARED_DATA to it (README, Quick start)")
    return SHARED_DATA
