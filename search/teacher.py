"""The full-ReLU teacher, trained once per (model, options, data, recipe) and cached on disk.

The cache is content-addressed: the key hashes the model name and options, a fingerprint of the
training data and the training recipe, so changing any of them trains a new teacher and nothing stale
is reused. A file lock lets concurrent trials share one training run instead of racing.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.checkpoint import load_model, save_model
from search.data import Dataset, Loader
from search.spaces import build_model
from search.train import LATER_FIELDS, TrainConfig, evaluate, fit, preserved_rng

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("SEARCH_CACHE_DIR", Path.home() / ".cache" / "search")).expanduser()


def data_fingerprint(data: Dataset) -> str:
    """Hash of every split's images and labels: a different data directory means a different teacher."""
    digest = hashlib.sha256(data.info.name.encode())
    for split in (data.train, data.val, data.test):
        digest.update(split.images.contiguous().numpy().tobytes())
        digest.update(split.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def recipe_record(config: TrainConfig) -> dict[str, Any]:
    """The recipe as the cache key sees it: every field, except those of ``LATER_FIELDS`` left at
    their default (so teachers cached before those options existed keep their keys)."""
    defaults = TrainConfig()
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in LATER_FIELDS or v != getattr(defaults, k)}


def teacher_key(model_name: str, model_options: dict[str, Any], data: Dataset, config: TrainConfig) -> str:
    record = {
        "version": CACHE_VERSION,
        "model": model_name,
        "options": model_options,
        "data": data_fingerprint(data),
        "train": recipe_record(config),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:20]


def get_teacher(
    model_name: str,
    model_options: dict[str, Any],
    data: Dataset,
    config: TrainConfig,
    device: torch.device,
    cache_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained full-ReLU teacher and its record (key, val/test accuracy, whether it was cached).

    Training reseeds and draws from the global RNGs and loading builds a model (drawing its init), so
    both run under :func:`preserved_rng`: the caller's streams are the same whether the cache was
    cold or warm.
    """
    with preserved_rng(device):
        return _fetch_teacher(model_name, model_options, data, config, device, cache_dir, log)


def _fetch_teacher(
    model_name: str,
    model_options: dict[str, Any],
    data: Dataset,
    config: TrainConfig,
    device: torch.device,
    cache_dir: str | os.PathLike[str] | None,
    log: Callable[[str], None],
) -> tuple[nn.Module, dict[str, Any]]:
    folder = Path(cache_dir or default_cache_dir()) / "teachers"
    folder.mkdir(parents=True, exist_ok=True)
    key = teacher_key(model_name, model_options, data, config)
    path = folder / f"{key}.pt"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            model, payload = load_model(path)
            log(f"teacher {model_name} from cache {path} (val_acc {payload['info']['val_acc']:.4f})")
            return model.to(device).eval(), {**payload["info"], "key": key, "cached": True, "path": str(path)}
        log(f"training teacher {model_name} on {data.info.name} ({config.epochs} epochs); cached as {path}")
        model = build_model(model_name, num_classes=data.info.num_classes, input_size=data.info.input_shape, **model_options)
        result = fit(model, data, config, device, log=log, label="teacher")
        test_acc = evaluate(model, Loader(data.test, data.info, 512, device))
        info = {"val_acc": result.best_val_acc, "test_acc": test_acc, "epochs": config.epochs}
        save_model(model, path, model_name, model_options, data.info.num_classes, data.info.input_shape, info)
        return model.eval(), {**info, "key": key, "cached": False, "path": str(path)}
