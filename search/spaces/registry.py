"""Model registry: ``build_model(name, **options)``, one builder function per architecture.

As in timm, a builder is a plain function whose keyword arguments (with type hints and defaults) are
the model's options; the hints are what ``--set`` values are validated against. A name that is not
registered may be an import path ``package.module:factory`` or a model a package adds through the
``search.models`` entry-point group (:mod:`search.spaces.imported`); both build like registered ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from search.errors import SearchError
from search.options import declared_options, option_lines, validate
from search.spaces.imported import ImportedModel, imported_builder, is_import_path, plugin_models

ModelBuilder = Callable[..., nn.Module]
_BUILDERS: dict[str, ModelBuilder] = {}
MAX_PARAMETERS = 2**30  # 4 GiB of float32 weights; training needs several times that


def register_model(fn: ModelBuilder) -> ModelBuilder:
    """Register ``fn`` under its function name."""
    _BUILDERS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Registered models and those installed packages add as ``search.models`` entry points."""
    return sorted({*_BUILDERS, *plugin_models()})


def model_builder(name: str) -> ModelBuilder:
    """The builder of a registered name, an import path ``package.module:factory`` or a plug-in's name."""
    if name in _BUILDERS:
        return _BUILDERS[name]
    if is_import_path(name):
        return imported_builder(name, f"model {name}")
    plugins = plugin_models()
    if name in plugins:
        return imported_builder(plugins[name], f"model {name} ({plugins[name]})")
    raise SearchError(f"unknown model {name!r}; accepted: {', '.join(list_models())}, "
                      "or your own as package.module:factory")


def model_options(name: str) -> dict[str, tuple[Any, Any]]:
    """Option name -> (type hint, default) of model ``name``."""
    return declared_options(model_builder(name))


def describe_models() -> str:
    """One block per model, registered or plug-in: where it comes from, its docstring's first line and
    its ``--set`` options (name, values, default). A plug-in that does not load says why in its block."""
    plugins = plugin_models()
    parts = []
    for name in list_models():
        head = f"model {name} ({'built in' if name in _BUILDERS else 'plug-in ' + plugins[name]})"
        try:
            builder = model_builder(name)
            declared = declared_options(builder)
        except SearchError as err:
            parts.append(f"{head}: cannot be loaded: {err}")
            continue
        summary = (builder.__doc__ or "").strip().splitlines()
        parts.append("\n".join([f"{head}: {summary[0]}" if summary else head, *option_lines(declared, unset="none")]))
    return "\n\n".join(parts)


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
    check_size(name, builder, num_classes, tuple(input_size), typed)
    return builder(num_classes=num_classes, input_size=tuple(input_size), **typed)


def check_size(name: str, builder: ModelBuilder, num_classes: int, input_size: tuple[int, ...], typed: Mapping[str, Any]) -> int:
    """The model's parameter count, from a build on the meta device (no memory, no init).

    A typo such as ``width=64`` for ``0.64`` would otherwise allocate tens of GB, or fail inside torch
    with a traceback, before anything could say why."""
    make = builder.unconverted if isinstance(builder, ImportedModel) else builder  # converting needs a real forward pass
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in make(num_classes=num_classes, input_size=input_size, **typed).parameters())
    except SearchError:
        raise
    except (RuntimeError, ValueError, OverflowError, MemoryError, TypeError) as err:  # torch says "too big" in all of these
        described = ", ".join(f"{k}={v}" for k, v in typed.items()) or "default options"
        raise SearchError(f"cannot build model {name} ({described}): {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if count > MAX_PARAMETERS:
        described = ", ".join(f"{k}={v}" for k, v in typed.items()) or "default options"
        raise SearchError(
            f"model {name} ({described}) has {count:,} parameters ({count * 4 / 2**30:,.0f} GiB of weights); "
            f"at most {MAX_PARAMETERS:,} are supported"
        )
    return count


def check_model_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Typed copy of ``options`` for model ``name`` (raises SearchError on a bad key or value)."""
    return validate(model_builder(name), options, f"model {name}")
