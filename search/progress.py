"""Progress of running work, as it happens: phase, epoch k/K, validation accuracy, ReLU count, ETA.

:func:`search.train.fit` announces every finished epoch here, and a strategy notes the ReLU count its
model is heading to (SNL's current count while its masks train, a DeepReDuce or CryptoNAS plan's
count). Whoever runs the work may listen (:func:`listening`): a study trial forwards each event to the
driver, which shows it live, stores it as an Optuna intermediate value and may stop the trial early.
With nobody listening an announcement costs one context-variable lookup.

A listener may end the work by raising :class:`Stop` from its callback: the work then unwinds from
inside the epoch loop like any exception, and the caller that installed the listener catches it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

# fit()'s label -> phase: what the user sees (the trial lifecycle names these phases).
# "path": SNL finetuning the snapshot of another budget along the same mask phase (not the trial's own result).
_PHASES = {"teacher": "teacher", "criticality": "criticality", "snl-mask": "mask", "snl-finetune": "finetune", "snl-path": "path"}


def phase_of(label: str) -> str:
    """The phase a ``fit`` label belongs to (``criticality S2`` -> criticality; unknown labels: train)."""
    return _PHASES.get(label.split(" ", 1)[0], "finetune" if "finetune" in label else "train")


@dataclass(frozen=True)
class Progress:
    """One finished epoch of one phase."""

    phase: str
    epoch: int
    epochs: int
    val_acc: float
    relus: int | None  # the count the model is heading to, where known
    elapsed_s: float  # since the work started
    eta_s: float  # until this phase ends, at its mean epoch time so far
    step: int  # epochs finished so far in all phases: the x axis of a learning curve
    open_ended: bool = False  # the phase may end before ``epochs`` (SNL's mask phase, at its target): both are bounds


class Stop(Exception):
    """Raised by a listener to end the work (e.g. a trial pruned early); carries the reason."""


@dataclass
class _Listening:
    callback: Callable[[Progress], None]
    start: float = field(default_factory=time.perf_counter)
    relus: int | None = None
    step: int = 0
    phase_seconds: float = 0.0  # the current phase's epochs so far
    one_off: float = 0.0  # seconds of the running epoch that no other epoch repeats (see one_off)


_current: ContextVar[_Listening | None] = ContextVar("search_progress", default=None)


@contextmanager
def listening(callback: Callable[[Progress], None]) -> Iterator[None]:
    """Call ``callback`` with every :class:`Progress` announced while the block runs (in this thread)."""
    token = _current.set(_Listening(callback))
    try:
        yield
    finally:
        _current.reset(token)


def note_relus(count: int) -> None:
    """The ReLU count the model is heading to; carried by the following announcements."""
    state = _current.get()
    if state is not None:
        state.relus = int(count)


def one_off(seconds: float) -> None:
    """``seconds`` of the running epoch were a one-off (e.g. building a kernel on first use): the
    ETA leaves them out, or a minute's build in a 2 s epoch would promise hours."""
    state = _current.get()
    if state is not None:
        state.one_off += seconds


def epoch_done(label: str, epoch: int, epochs: int, val_acc: float, seconds: float, open_ended: bool = False) -> None:
    """Announce that ``epoch`` of ``epochs`` of the ``fit`` labelled ``label`` has finished, after
    ``seconds``; ``open_ended``: the phase may stop before ``epochs``."""
    state = _current.get()
    if state is None:
        return
    seconds, state.one_off = max(seconds - state.one_off, 0.0), 0.0
    state.phase_seconds = seconds if epoch == 1 else state.phase_seconds + seconds
    state.step += 1
    eta = state.phase_seconds / epoch * max(epochs - epoch, 0)
    state.callback(Progress(phase_of(label), epoch, epochs, float(val_acc), state.relus,
                            time.perf_counter() - state.start, eta, state.step, open_ended))
