"""Model registry: ``build_model(name, **options)``, one builder function per architecture.

As in timm, a builder is a plain function whose keyword arguments (with type hints and defaults) are
the model's options; the hints are what ``--set`` values are validated against.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from search.errors import SearchError
from search.options import declared_options, validate

ModelBuilder = Callable[..., nn.Module]
_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(fn: ModelBuilder) -> ModelBuilder:
    """Register ``fn`` under its function name."""
    _BUILDERS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def model_builder(name: str) -> ModelBuilder:
    try:
        return _BUILDERS[name]
    except KeyError:
        raise SearchError(f"unknown model {name!r}; accepted: {', '.join(list_models())}") from None


def model_options(name: str) -> dict[str, tuple[Any, Any]]:
    """Option name -> (type hint, default) of model ``name``."""
    return declared_options(model_builder(name))


def build_model(
    name: str,
    num_classes: int = 10,
    input_size: tuple[int, int, int] = (3, 32, 32),
    **options: Any,
) -> nn.Module:
    """Build model ``name`` for inputs of ``input_size`` (C, H, W); options are validated first."""
    builder = model_builder(name)
    typed = validate(builder, options, f"model {name}")
    if len(input_size) != 3 or min(input_size) <= 0:
        raise SearchError(f"input size must be C x H x W with positive sides, got {input_size}")
    return builder(num_classes=num_classes, input_size=tuple(input_size), **typed)


def check_model_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Typed copy of ``options`` for model ``name`` (raises SearchError on a bad key or value)."""
    return validate(model_builder(name), options, f"model {name}")
