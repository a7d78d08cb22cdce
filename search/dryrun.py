"""What ``--dry-run`` reports besides the plan: the data, and whether the teacher is cached already.

A dry run reads the data with the loader a run uses (so a missing or corrupt file fails the same way)
but downloads nothing, and looks the teacher up by the key a run computes, without training or
writing anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search.checkpoint import load_model
from search.data import Dataset, download_target, load_dataset
from search.outputs import check_writable_dir
from search.teacher import teacher_key
from search.train import TrainConfig


def check_data(name: str, data_dir: str | os.PathLike[str] | None, download: bool) -> tuple[Dataset | None, str]:
    """The dataset as a run would load it (None when a run would download it first) and a line saying so."""
    target = download_target(name, data_dir, download)
    if target is not None:
        check_writable_dir(target, "--data-dir")
        return None, f"data: {name} is not under {target}; a run would download it there first (--download)"
    data = load_dataset(name, data_dir, download)
    return data, describe_data(data)


def describe_data(data: Dataset) -> str:
    """``data: NAME, N train / V validation / T test images``."""
    return f"data: {data.info.name}, {len(data.train):,} train / {len(data.val):,} validation / {len(data.test):,} test images"


def teacher_status(
    model_name: str, model_options: Mapping[str, Any], data: Dataset | None, recipe: TrainConfig, cache_dir: Path
) -> str:
    """Whether the full-ReLU teacher of this model, data and recipe is cached (a cached file must load)."""
    if data is None:
        return "teacher: unknown until the data is downloaded (its cache key hashes the data)"
    path = teacher_file(model_name, model_options, data, recipe, cache_dir)
    if path.is_file():
        _, payload = load_model(path)
        info = payload.get("info")
        acc = info.get("val_acc") if isinstance(info, dict) else None
        return f"teacher: cached at {path}" + (f" (val_acc {acc:.4f})" if isinstance(acc, float) else "")
    return f"teacher: not cached; a run trains it first ({recipe.epochs} epochs) and caches it as {path}"


def teacher_file(model_name: str, model_options: Mapping[str, Any], data: Dataset, recipe: TrainConfig, cache_dir: Path) -> Path:
    """The file :func:`search.teacher.get_teacher` loads this teacher from, or trains it into."""
    return cache_dir / "teachers" / f"{teacher_key(model_name, dict(model_options), data, recipe)}.pt"
