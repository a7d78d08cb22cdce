"""Shared fixtures: the real CIFAR-10 subset beside the project, and an isolated teacher cache."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CIFAR_DIR = PROJECT_ROOT.parent / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """``../shared/data/cifar10`` (the real CIFAR-10 subset); tests using it skip where it is absent."""
    if not (CIFAR_DIR / "cifar-10-batches-py" / "data_batch_1").is_file():
        pytest.skip(f"CIFAR-10 subset not found at {CIFAR_DIR}")
    return CIFAR_DIR


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets the session's own teacher cache, never the user's ~/.cache/search."""
    cache = tmp_path_factory.getbasetemp() / "search-cache"
    monkeypatch.setenv("SEARCH_CACHE_DIR", str(cache))
    return cache


@contextmanager
def quick_estimates() -> Iterator[None]:
    """``--dry-run``'s estimate timing one step of 4 images per network (a warm-up step before it):
    for tests of what a dry run prints or how a command line ends, not of how close the estimate is
    (tests/test_dry_run.py checks that, at the real settings)."""
    with mock.patch.multiple("search.estimate", STEP_SECONDS=0.0, TIMED_STEPS=1, TIMED_SECONDS=0.0):
        yield
