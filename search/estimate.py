"""``--dry-run``'s compute estimate: a few timed training steps of each phase's network, times the steps.

Each phase a run trains (:class:`search.strategies.Phase`: the full-ReLU teacher's, then the
strategy's) is timed on the run's device with random images of the dataset's shape, through the
loader and the step :func:`search.train.fit` runs (:class:`search.train.TrainStep`: the same
optimizer, memory layout, autocast, teacher forward when the phase distils, and penalty), plus fit's
evaluation of the validation split after every epoch. A phase then costs
``runs x epochs x (ceil(train images / batch) x step + evaluation)``. Each network is timed once.

On CUDA the recipe's batch is timed as it is: a warm-up step, then ``TIMED_STEPS`` (more while they
take under ``TIMED_SECONDS``). On a CPU a step of a few hundred images takes seconds, so a dry run
times small batches instead: the same at ``PROBE_BATCH`` images, then at a batch sized to take about
``STEP_SECONDS`` (at most ``CPU_BATCH_CAP``), and extrapolates to the recipe's batch as a fixed cost
per step plus a cost per image through those two points; the evaluation is timed at that batch and
scaled per image. A rough figure: per image, a large batch can run faster or slower than a small one
(BENCHMARKS.md compares it with steps timed at the recipes' batches). Not counted: loading the data,
building models, the test evaluation, SNL's ReLU counts between steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from search.data import DatasetInfo, Loader, Split
from search.options import show_default
from search.spaces import build_model
from search.strategies import Phase, PhasesUnknown, Strategy
from search.train import EVAL_BATCH, TrainConfig, TrainStep, evaluate

PROBE_BATCH = 4  # images in the first CPU step: the warm-up, and the small end of the extrapolation
CPU_BATCH_CAP = 32  # the largest batch a dry run times on a CPU
STEP_SECONDS = 2.0  # about how long a timed CPU step may take: bounds a dry run to seconds per network
TIMED_STEPS = 2  # timed steps after the warm-up step at each batch, at least
TIMED_SECONDS = 0.3  # and more, while they take less than this in all
MAX_TIMED_STEPS = 50


@dataclass(frozen=True)
class Timing:
    """What one network's phase costs on a device: a step at the recipe's batch, an image evaluated."""

    step_seconds: float
    eval_seconds_per_image: float
    timed_batch: int  # the largest batch actually timed (the recipe's on CUDA)


@dataclass(frozen=True)
class PhaseEstimate:
    """One phase's steps and time (``timing`` None: nothing to time, the phase trains no epoch)."""

    phase: Phase
    steps_per_epoch: int
    val_images: int
    timing: Timing | None

    @property
    def run_seconds(self) -> float:
        """One run of the phase: every epoch's steps and its evaluation."""
        if self.timing is None:
            return 0.0
        epoch = self.steps_per_epoch * self.timing.step_seconds + self.val_images * self.timing.eval_seconds_per_image
        return self.phase.config.epochs * epoch

    @property
    def seconds(self) -> float:
        return self.phase.runs * self.run_seconds

    def line(self, device: torch.device) -> str:
        """``phase NAME[ xRUNS]: [up to] E epochs x S steps of batch B, ~T s/step on DEVICE (timed at batch b)
        + evaluation per epoch: [up to] TIME``."""
        phase, config = self.phase, self.phase.config
        if phase.runs == 0:
            return f"phase {phase.name}: not run ({phase.about})"
        runs = f" x{phase.runs}" if phase.runs > 1 else ""
        bound = "up to " if phase.up_to else ""
        epochs = f"{config.epochs:,} epoch{'s' if config.epochs != 1 else ''}"
        head = f"phase {phase.name}{runs}: {bound}{epochs} x {self.steps_per_epoch:,} steps of batch {config.batch_size}"
        if self.timing is None:
            return f"{head}: nothing to train"
        timing = self.timing
        timed = "" if timing.timed_batch == config.batch_size else f" (timed at batch {timing.timed_batch})"
        total = duration(self.seconds) if phase.runs == 1 else f"{phase.runs} x {duration(self.run_seconds)} = {duration(self.seconds)}"
        return (f"{head}, ~{timing.step_seconds:.3g} s/step on {device.type}{timed} + "
                f"{duration(self.val_images * timing.eval_seconds_per_image)} evaluation per epoch: {bound}{total}")


class Estimator:
    """Times phases on ``device`` with ``threads`` torch threads (default: as set) for a dataset of
    ``train_images`` / ``val_images`` images. The teacher forward of distilling phases runs the
    full-ReLU ``model_name`` (built once, untrained: its cost is its architecture's)."""

    def __init__(self, info: DatasetInfo, train_images: int, val_images: int, device: torch.device, model_name: str,
                 model_options: Mapping[str, Any], threads: int | None = None) -> None:
        self.info, self.train_images, self.val_images, self.device = info, train_images, val_images, device
        self.threads = threads if threads is not None else torch.get_num_threads()
        self._base = (model_name, model_options)
        self._teacher: nn.Module | None = None
        self._timings: dict[tuple[nn.Module, bool], Timing] = {}  # keyed by the network itself: an id could be reused
        self._images = torch.Generator().manual_seed(0)

    def estimate(self, phase: Phase) -> PhaseEstimate:
        steps = math.ceil(self.train_images / phase.config.batch_size)
        if phase.runs == 0 or phase.config.epochs == 0 or steps == 0:
            return PhaseEstimate(phase, steps, self.val_images, None)
        key = (phase.network, phase.distils)
        if key not in self._timings:
            with torch_threads(self.threads):
                self._timings[key] = self._time(phase)
        return PhaseEstimate(phase, steps, self.val_images, self._timings[key])

    def method(self) -> str:
        """How the figures were measured, for the total line."""
        threads = f"{self.threads} torch thread{'s' if self.threads != 1 else ''}"
        if self.device.type == "cuda":
            return f"{threads}; the recipes' batches timed with random images"
        return (f"{threads}; random images; CPU steps timed at batches of at most {CPU_BATCH_CAP} and extrapolated to "
                "the recipes' batches: a rough figure")

    def _time(self, phase: Phase) -> Timing:
        config = phase.config
        if phase.distils and self._teacher is None:
            self._teacher = base_network(*self._base, self.info)
        step = TrainStep.build(phase.network, config, self.device, self._teacher if phase.distils else None, phase.penalty)
        if self.device.type == "cuda":
            self._steps(step, config.batch_size, 1)  # warm-up
            seconds = self._steps(step, config.batch_size, TIMED_STEPS, TIMED_SECONDS)
            return Timing(seconds, self._evaluation(step, min(EVAL_BATCH, self.val_images)), config.batch_size)
        small = min(PROBE_BATCH, config.batch_size)
        self._steps(step, small, 1)  # warm-up: the first step pays one-time costs (kernels built, memory taken)
        points = [(small, self._steps(step, small, TIMED_STEPS, TIMED_SECONDS))]
        large = max(small, min(config.batch_size, CPU_BATCH_CAP, int(STEP_SECONDS * small / max(points[0][1], 1e-9))))
        if large > small:
            self._steps(step, large, 1)  # warm-up at this shape
            points.append((large, self._steps(step, large, TIMED_STEPS, TIMED_SECONDS)))
        return Timing(extrapolate(points, config.batch_size), self._evaluation(step, large), large)

    def _steps(self, step: TrainStep, batch: int, count: int, seconds: float = 0.0) -> float:
        """Mean seconds of ``count`` training steps of ``batch`` random images, loader included; of
        more (up to ``MAX_TIMED_STEPS``) until ``seconds`` have passed, so a small network's steps of
        milliseconds are timed over enough of them to rise above the clock's noise."""
        loader = Loader(self._random(batch * count), self.info, batch, self.device, shuffle=True, augment=step.config.augment,
                        memory_format=step.memory_format)
        step.model.train()
        self._sync()
        done, start = 0, time.perf_counter()
        while done < count or (time.perf_counter() - start < seconds and done < MAX_TIMED_STEPS):
            for x, y in loader:
                step(x, y)
                done += 1
        self._sync()
        return (time.perf_counter() - start) / done

    def _evaluation(self, step: TrainStep, images: int) -> float:
        """Seconds per image of fit's evaluation, timed over ``images`` random ones after a warm-up."""
        loader = Loader(self._random(images), self.info, EVAL_BATCH, self.device, memory_format=step.memory_format)
        evaluate(step.model, loader)
        start = time.perf_counter()
        evaluate(step.model, loader)  # returns a Python number: the device is done when it returns
        return (time.perf_counter() - start) / images

    def _random(self, count: int) -> Split:
        shape = (count, *self.info.input_shape)
        return Split(torch.randint(0, 256, shape, dtype=torch.uint8, generator=self._images),
                     torch.randint(0, self.info.num_classes, (count,), generator=self._images))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def extrapolate(points: Sequence[tuple[int, float]], batch: int) -> float:
    """Seconds of a step of ``batch`` images from timed (batch, seconds) points: the largest point
    itself at its batch; else through the two points as fixed cost + cost per image, or per image
    alone from the largest when timing noise gives a negative cost."""
    small, t_small = points[0]
    large, t_large = points[-1]
    if batch == large:
        return t_large
    per_image = (t_large - t_small) / (large - small) if large > small else -1.0
    fixed = t_large - per_image * large
    if per_image <= 0 or fixed < 0:
        return t_large * batch / large
    return fixed + per_image * batch


def teacher_phase(model_name: str, model_options: Mapping[str, Any], info: DatasetInfo, recipe: TrainConfig,
                  cached: bool) -> Phase:
    """The full-ReLU teacher's training, which a run does first unless the teacher is cached."""
    network = base_network(model_name, model_options, info)
    about = f"full-ReLU {model_name}" + ("; cached, a run loads it" if cached else "")
    return Phase("teacher", network, recipe, runs=0 if cached else 1, about=about)


def base_network(model_name: str, model_options: Mapping[str, Any], info: DatasetInfo) -> nn.Module:
    """The run's full-ReLU model, untrained: the teacher's architecture."""
    return build_model(model_name, num_classes=info.num_classes, input_size=info.input_shape, **model_options)


def strategy_phases(strategy: Strategy, options: Any, model_name: str, model_options: Mapping[str, Any], info: DatasetInfo,
                    budgets: Sequence[int], train_overrides: Mapping[str, Any]) -> tuple[list[Phase], str]:
    """The strategy's phases (:meth:`Strategy.phases`) and "", or none and why they are unknown."""
    try:
        return strategy.phases(model_name, model_options, info, budgets, options, train_overrides), ""
    except PhasesUnknown as unknown:
        return [], str(unknown)


def recipe_line(phase: Phase) -> str:
    """The phase's resolved TrainConfig, every field but the seed (the run's ``--seed``)."""
    notes = [phase.about] if phase.about else []
    if phase.distils:
        notes.append(f"KD from the teacher, weight {phase.config.kd_weight:g}")
    if phase.penalty is not None:
        notes.append("Lasso penalty on the masks")
    if phase.runs > 1:
        notes.append(f"{phase.runs} runs")
    fields = " ".join(f"{key}={show_default(value)}" for key, value in asdict(phase.config).items() if key != "seed")
    about = f" ({'; '.join(notes)})" if notes else ""
    return f"recipe {phase.name}{about}: {fields}"


def report(phases: Sequence[Phase], estimator: Estimator | None, unavailable: str = "", total: str = "estimate",
           say: Callable[[str], None] = print) -> float | None:
    """Say each phase's resolved recipe, then (unless ``unavailable`` says why not) its estimate as
    it is timed and a ``total`` line; returns the total seconds (None when unavailable)."""
    for phase in phases:
        say(recipe_line(phase))
    if estimator is None or unavailable:  # no estimator: ``unavailable`` says why
        say(f"{total}: unavailable: {unavailable}")
        return None
    start = time.perf_counter()
    estimates = []
    for phase in phases:
        estimates.append(estimator.estimate(phase))
        say(estimates[-1].line(estimator.device))
    seconds = sum(e.seconds for e in estimates)
    bound = "up to " if any(e.phase.up_to and e.seconds > 0 for e in estimates) else ""
    say(f"{total}: {bound}{duration(seconds)} on {estimator.device.type} ({estimator.method()}; "
        f"timing took {time.perf_counter() - start:.0f} s)")
    return seconds


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch threads (a study's trial gets one per CPU it reserves), then as before."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def duration(seconds: float) -> str:
    """A duration as a person reads it: 42 s, 3.5 min, 5.2 h, 3.1 days."""
    if seconds < 90:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
