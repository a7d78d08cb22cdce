"""Same seed, same result, whatever the state of the teacher and criticality caches.

Training a teacher (or measuring criticality) reseeds and draws from the global RNGs, while reading
either from the cache draws nothing (or something else): without isolation, a student built after
``ctx.teacher()`` started from different weights with a cold cache than with a warm one. Real training
on digits, tiny epochs, so the file takes seconds.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from search.checkpoint import read_checkpoint
from search.data import Dataset, load_dataset
from search.pipeline import Job, execute, prepare
from search.strategies import Context
from search.strategies.criticality import criticality
from search.teacher import get_teacher
from search.train import TrainConfig, seed_everything

CPU = torch.device("cpu")
Run = tuple[int, float, float, dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a loaded 2-core machine two threads make each small kernel wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _draws() -> tuple[float, float, list[float]]:
    """One draw from each global stream a trial may use."""
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def _run(job: Job, data: Dataset, out: Path) -> Run:
    """relus, val_acc, test_acc and the saved weights of one job."""
    result = execute(prepare(Job(**{**vars(job), "out": str(out)})), log=lambda _line: None, data=data)
    return result.outcome.relus, result.outcome.val_acc, result.test_acc, read_checkpoint(out)["state_dict"]


def _assert_same(first: Run, second: Run, what: str) -> None:
    assert first[:3] == second[:3], f"{what}: (relus, val_acc, test_acc) {first[:3]} != {second[:3]}"
    assert first[3].keys() == second[3].keys()
    for name, tensor in first[3].items():
        assert torch.equal(tensor, second[3][name]), f"{what}: weights {name} differ"


def test_fetching_the_teacher_leaves_global_rngs_alone(digits: Dataset, tmp_path: Path) -> None:
    """Cold (trains) and warm (loads) fetches, and criticality measured or read, draw nothing visible.
    Each call comes after a first draw, as in a trial, so a reseed to the trial's own seed shows too."""
    seed_everything(5)
    _draws()
    expected = _draws()
    recipe = TrainConfig(epochs=1, batch_size=64)

    def teacher() -> torch.nn.Module:
        return get_teacher("resnet_tiny", {"width": 0.5}, digits, recipe, CPU, tmp_path, lambda _line: None)[0]

    ctx = Context("resnet_tiny", {"width": 0.5}, digits, None, CPU, 5, teacher, tmp_path, lambda _line: None)
    for state in ("cold", "warm"):
        seed_everything(5)
        _draws()
        model = teacher()
        assert _draws() == expected, f"{state} teacher fetch moved the global RNGs"
        seed_everything(5)
        _draws()
        criticality(ctx, TrainConfig(epochs=1, batch_size=64, seed=5), model)
        assert _draws() == expected, f"{state} criticality moved the global RNGs"


def test_snl_same_seed_same_result_with_cold_or_warm_teacher_cache(digits: Dataset, tmp_path: Path) -> None:
    options: dict[str, Any] = {"max_epochs": 4, "finetune_epochs": 1, "lam": 0.05, "warmup": 0}
    job = Job(strategy="snl", dataset="digits", budget=2000, seed=3, teacher_epochs=1, strategy_options=options,
              cache_dir=str(tmp_path / "cache"))
    cold = _run(job, digits, tmp_path / "cold.pt")
    _assert_same(cold, _run(job, digits, tmp_path / "warm.pt"), "snl, warm teacher cache")


def test_deepreduce_same_seed_same_result_whatever_is_cached(digits: Dataset, tmp_path: Path) -> None:
    """alpha=0.5 builds the student from scratch after the teacher and criticality are fetched."""
    cache = tmp_path / "cache"
    options: dict[str, Any] = {"n_cull": 1, "alpha": 0.5, "epochs": 1, "criticality_epochs": 1}
    job = Job(strategy="deepreduce", dataset="digits", seed=3, teacher_epochs=1, strategy_options=options, cache_dir=str(cache))
    cold = _run(job, digits, tmp_path / "cold.pt")
    _assert_same(cold, _run(job, digits, tmp_path / "warm.pt"), "deepreduce, both caches warm")
    shutil.rmtree(cache / "criticality")
    _assert_same(cold, _run(job, digits, tmp_path / "fresh-criticality.pt"), "deepreduce, criticality measured again")
    shutil.rmtree(cache / "teachers")
    _assert_same(cold, _run(job, digits, tmp_path / "fresh-teacher.pt"), "deepreduce, teacher trained again")
