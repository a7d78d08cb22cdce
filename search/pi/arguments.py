"""Command-line values shared by ``python -m search.pi`` and ``search.report --measure-pi``.

Free of torch, so the report's parser stays light: it checks ``--pi-images`` before anything is imported.
"""

from __future__ import annotations

import argparse

MAX_IMAGES = 10_000


def image_count(text: str) -> int:
    """An ``argparse`` type: a number of test images to measure, 1 to :data:`MAX_IMAGES`."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_IMAGES:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_IMAGES:,}, got {text!r}")
    return value
