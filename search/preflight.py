"""Checks of command-line values that torch would otherwise reject late, with a traceback.

``torch.device("gpu")`` raises RuntimeError and ``torch.manual_seed(2**70)`` raises when training
starts; checked here, they are one ``error:`` line before anything loads or trains.
"""

from __future__ import annotations

import re

import torch

from search.errors import SearchError
from search.train import pick_device

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
SEED_LIMIT = 2**63  # torch.manual_seed takes a 64-bit seed; numpy reduces it modulo 2**32


def check_device(text: str) -> torch.device:
    """The device ``--device text`` names (auto, cpu, cuda, cuda:N or mps), as :func:`pick_device` picks it."""
    if not _DEVICE.fullmatch(text):
        raise SearchError(f"bad value {text!r} for --device: expected auto, cpu, cuda, cuda:N or mps")
    if text == "mps" and not torch.backends.mps.is_available():
        raise SearchError("device mps was asked for but is not available here; use --device cpu or auto")
    device = pick_device(text)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SearchError(f"bad value {text!r} for --device: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_seed(seed: int) -> int:
    """``seed`` when every generator the training seeds accepts it."""
    if not 0 <= seed < SEED_LIMIT:
        raise SearchError(f"bad value {seed} for --seed: expected an integer in 0..{SEED_LIMIT - 1}")
    return seed
