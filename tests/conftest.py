"""Shared fixtures. Reference data lives in ../shared/reference (read only, never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_reference_dir() -> Path:
    return Path(os.environ.get("GMYOLO_SHARED", REPO_ROOT.parent / "shared")) / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    ref = shared_reference_dir()
    if not ref.is_dir():
        pytest.skip(f"reference data not found at {ref} (set GMYOLO_SHARED to the shared/ folder)")
    return ref


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
