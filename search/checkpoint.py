"""Saving and loading linearized models: the model's name, options and weights with its masks.

A checkpoint is a plain dict of tensors, strings and numbers, so it loads with
``torch.load(weights_only=True)``; the architecture is rebuilt from the model space by name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.errors import SearchError
from search.spaces import build_model

FORMAT = "search.linearized/1"


def atomic_save(payload: Any, path: str | os.PathLike[str]) -> None:
    """Write with torch.save to a temporary file, then rename: a crash never leaves half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    model_name: str,
    model_options: dict[str, Any],
    num_classes: int,
    input_size: tuple[int, int, int],
    info: dict[str, Any] | None = None,
) -> None:
    """Save ``model`` (weights and masks) so :func:`load_model` rebuilds it exactly."""
    atomic_save(
        {
            "format": FORMAT,
            "model": model_name,
            "options": dict(model_options),
            "num_classes": num_classes,
            "input_size": list(input_size),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "info": dict(info or {}),
        },
        path,
    )


# What load_model needs of a checkpoint, checked before it is used.
_FIELDS: dict[str, Callable[[Any], bool]] = {
    "model": lambda v: isinstance(v, str),
    "options": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    "num_classes": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "input_size": lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(n, int) and n >= 1 for n in v),
    "state_dict": lambda v: isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values()),
}


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw checkpoint dict, or a SearchError saying why the file is not one."""
    if Path(path).is_dir():
        raise SearchError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not Path(path).is_file():
        raise SearchError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights-only errors all mean "not a checkpoint"
        raise SearchError(f"{path} is not a search checkpoint: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SearchError(f"{path} is not a search checkpoint (expected format {FORMAT})")
    for key, ok in _FIELDS.items():
        if not ok(payload.get(key)):
            raise SearchError(f"{path} is a damaged search checkpoint: field {key!r} is missing or malformed")
    return payload


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved model with its masks; returns (model, checkpoint dict without weights)."""
    payload = read_checkpoint(path)
    model = build_model(
        payload["model"], num_classes=payload["num_classes"], input_size=tuple(payload["input_size"]), **payload["options"]
    )
    try:
        model.load_state_dict(payload.pop("state_dict"))
    except RuntimeError as err:
        raise SearchError(f"checkpoint {path} does not match model {payload['model']}: {str(err).splitlines()[0]}") from None
    return model, payload
