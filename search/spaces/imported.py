"""Models from outside the registry: an import path ``package.module:factory``, or a name a package
declares in the ``search.models`` entry-point group.

A factory is any callable (function or class) taking ``num_classes``, ``input_size`` where its
signature names it, and its options as keyword arguments with defaults. :class:`ImportedModel` wraps
it so that it looks like a registry builder to the rest of the package (same call, same declared
options for ``--set`` validation, result made of ReLU sites by :func:`search.relu.linearizable`):
every command that takes a model name takes an import path too, and a checkpoint that records the
path rebuilds the model.
"""

from __future__ import annotations

import enum
import functools
import importlib
import inspect
import typing
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from search.errors import SearchError
from search.relu import linearizable

ENTRY_POINT_GROUP = "search.models"
_GIVEN = ("num_classes", "input_size")  # passed by the package, not options


def plugin_models() -> dict[str, str]:
    """Name -> import path of every model that installed packages declare in ``search.models``."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def is_import_path(name: str) -> bool:
    return ":" in name


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _import(target: str, what: str) -> Callable[..., Any]:
    """The callable at ``target`` (``module:attr`` or ``module:attr.attr``)."""
    module_name, _, attr = target.partition(":")
    if not all(part.isidentifier() for part in [*module_name.split("."), *attr.split(".")]):
        raise SearchError(f"bad model import path {target!r}: expected package.module:factory")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise SearchError(f"{what}: cannot import module {module_name!r} ({_first_line(err)}); "
                          "is the folder holding it on PYTHONPATH?") from None
    except Exception as err:  # the module's own code failed: say how, not where in importlib
        raise SearchError(f"{what}: importing module {module_name!r} raised {_first_line(err)}") from None
    for part in attr.split("."):
        if not hasattr(found, part):
            raise SearchError(f"{what}: module {module_name!r} has no attribute {attr!r}")
        found = getattr(found, part)
    if not callable(found):
        raise SearchError(f"{what}: {target} is a {type(found).__name__}, not a callable model factory")
    return found


def _declaration(factory: Callable[..., Any], what: str) -> tuple[inspect.Signature, dict[str, Any]]:
    """The factory's signature and resolved type hints, checked: every option a keyword with a default."""
    try:
        signature = inspect.signature(factory)
        hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception as err:  # no signature (some builtins), or annotations that do not evaluate
        raise SearchError(f"{what}: cannot read the factory's signature ({_first_line(err)})") from None
    params = signature.parameters
    if "num_classes" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise SearchError(f"{what}: the factory does not take num_classes; give it a num_classes keyword argument")
    for name, param in params.items():
        if param.kind is param.POSITIONAL_ONLY:
            raise SearchError(f"{what}: the factory's argument {name!r} is positional-only; "
                              "a factory's arguments must be keyword arguments")
        if name not in _GIVEN and param.kind is not param.VAR_KEYWORD and param.kind is not param.VAR_POSITIONAL \
                and param.default is param.empty:
            raise SearchError(f"{what}: option {name!r} of the factory has no default; "
                              "a factory's options must be keyword arguments with defaults")
    return signature, {k: v for k, v in hints.items() if k in params}


def _enum_of(hint: Any) -> type[enum.Enum] | None:
    """The Enum a hint names (alone or in ``Optional``): ``--set`` gives its member's name."""
    for arg in (hint, *typing.get_args(hint)):
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            return arg
    return None


class ImportedModel:
    """A registry-style builder around a user's factory.

    ``__signature__`` and ``__annotations__`` are the factory's, so :func:`search.options.declared_options`
    reads its options as it reads a built-in model's.
    """

    def __init__(self, factory: Callable[..., Any], what: str) -> None:
        self.factory = factory
        self.what = what
        self.__signature__, self.__annotations__ = _declaration(factory, what)
        self.__doc__ = factory.__doc__
        self.takes_input_size = "input_size" in self.__signature__.parameters

    def unconverted(self, num_classes: int = 10, input_size: Sequence[int] = (3, 32, 32), **options: Any) -> nn.Module:
        """The factory's model as it made it (what the parameter-count check builds, on the meta device)."""
        for key, value in options.items():  # Enum options travel as member names (plain data in checkpoints)
            kind = _enum_of(self.__annotations__.get(key))
            if kind is not None and isinstance(value, str):
                options[key] = kind[value]
        extra = {"input_size": tuple(input_size)} if self.takes_input_size else {}
        try:
            model = self.factory(num_classes=num_classes, **extra, **options)
        except SearchError:
            raise
        except Exception as err:  # the user's code: report it as one line, whatever it raised
            raise SearchError(f"{self.what}: the factory raised {_first_line(err)}") from None
        if not isinstance(model, nn.Module):
            raise SearchError(f"{self.what}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
        return model

    def __call__(self, num_classes: int = 10, input_size: Sequence[int] = (3, 32, 32), **options: Any) -> nn.Module:
        """The factory's model with its ReLUs made into sites."""
        model = self.unconverted(num_classes, input_size, **options)
        try:
            return linearizable(model, tuple(input_size))
        except SearchError as err:
            raise SearchError(f"{self.what}: {err}") from None
        except Exception as err:  # a forward pass of the user's code on a zero input
            shape = "x".join(map(str, input_size))
            raise SearchError(f"{self.what}: cannot run it on input {shape} to find its ReLUs ({_first_line(err)})") from None


@functools.cache
def imported_builder(target: str, what: str) -> ImportedModel:
    """The builder for ``target`` (``package.module:factory``), imported once per process;
    ``what`` names the model in messages."""
    return ImportedModel(_import(target, what), what)
