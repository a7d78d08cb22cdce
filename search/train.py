"""Training: devices, seeds, the fit / evaluate loop and Hinton knowledge distillation.

One loop serves teachers, strategies and finetuning. Strategies hook into it with ``extra_loss``
(a penalty added to every step, e.g. SNL's Lasso on masks) and ``on_epoch_end`` (inspect the model,
return True to stop, e.g. once a ReLU budget is met). Selection is on the validation split.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search import heap, progress
from search.data import Dataset, Loader
from search.errors import SearchError
from search.layout import preferred_format


def pick_device(preferred: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU; chosen at run time, never assumed."""
    if preferred == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preferred)
    except RuntimeError:
        raise SearchError(f"bad device {preferred!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SearchError("device cuda was asked for but no CUDA device is available; use --device cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so CPU runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def preserved_rng(device: torch.device | None = None) -> Iterator[None]:
    """Put every global random stream back on exit, so side work whose cost depends on a cache
    (training or loading the teacher, measuring criticality) never moves the caller's streams: a
    trial then gives the same result with a cold cache or a warm one.

    ``torch.random.fork_rng`` restores torch's CPU generator and the listed CUDA devices' ones, but
    not Python's ``random`` nor NumPy's, which are saved here. CUDA is forked when the work runs on it
    or CUDA is already initialized; otherwise it is left uninitialized (a CPU job on a GPU machine,
    or a parent process that later forks workers, must not initialize it).
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    use_cuda = torch.cuda.is_available() and (torch.cuda.is_initialized() or (device is not None and device.type == "cuda"))
    devices = list(range(torch.cuda.device_count())) if use_cuda else []
    try:
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Every field is an option of the command that trains: ``--set teacher.KEY=VALUE``
    for the full-ReLU teacher, ``--set train.KEY=VALUE`` for a strategy's final training phase.

    Schedules, stepped once per epoch: ``cosine`` from ``lr`` to ``min_lr`` over the epochs;
    ``step`` multiplies by ``gamma`` at each epoch of ``milestones`` (SNL's teacher: 80,120);
    ``restarts`` is cosine with warm restarts (SGDR: periods of ``restart_epochs`` epochs, each
    ``restart_mult`` times longer; CryptoNAS: 10, 2, so 310 epochs end a period); ``constant``.
    ``grad_clip`` > 0 clips gradient norms, over all parameters at once (``clip_mode=global``,
    PyTorch's usual) or per parameter tensor (``per_tensor``, TensorFlow's ``clip_by_norm`` as the
    ENAS/CryptoNAS code uses it).
    """

    epochs: int = 30
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: Literal["cosine", "constant", "step", "restarts"] = "cosine"
    min_lr: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    restart_epochs: int = 10
    restart_mult: int = 2
    grad_clip: float = 0.0
    clip_mode: Literal["global", "per_tensor"] = "global"
    augment: bool = True
    kd_weight: float = 0.0
    kd_temperature: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs, self.epochs >= 0, "an integer >= 0"),
            ("lr", self.lr, self.lr > 0, "a number > 0"),
            ("momentum", self.momentum, 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0"),
            ("batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1"),
            ("min_lr", self.min_lr, self.min_lr >= 0, "a number >= 0"),
            ("milestones", ",".join(map(str, self.milestones)), list(self.milestones) == sorted(set(self.milestones))
             and all(m >= 1 for m in self.milestones), "increasing epoch numbers >= 1, e.g. 80,120"),
            ("gamma", self.gamma, 0 < self.gamma <= 1, "a number in (0, 1]"),
            ("restart_epochs", self.restart_epochs, self.restart_epochs >= 1, "an integer >= 1"),
            ("restart_mult", self.restart_mult, self.restart_mult >= 1, "an integer >= 1"),
            ("grad_clip", self.grad_clip, self.grad_clip >= 0, "a number >= 0 (0: no clipping)"),
            ("kd_weight", self.kd_weight, self.kd_weight >= 0, "a number >= 0"),
            ("kd_temperature", self.kd_temperature, self.kd_temperature > 0, "a number > 0"),
        ]
        for key, value, ok, expected in checks:
            if not ok:
                raise SearchError(f"bad value {value} for {key}: expected {expected}")
        if (self.schedule == "step") != bool(self.milestones):
            raise SearchError("schedule step and milestones go together: milestones are the epochs at which schedule step "
                              "multiplies lr by gamma, e.g. schedule=step milestones=80,120")


# Fields added after teachers were first cached: they enter a teacher's cache key only when set away
# from their default, so adding a training option does not invalidate every cached teacher.
LATER_FIELDS = ("nesterov", "min_lr", "milestones", "gamma", "restart_epochs", "restart_mult", "grad_clip", "clip_mode")


DEFAULT_TEACHER_CONFIGS: dict[str, TrainConfig] = {
    "digits": TrainConfig(epochs=15, lr=0.05, batch_size=64),
    "cifar10": TrainConfig(epochs=30),
    "cifar100": TrainConfig(epochs=60),
    "tinyimagenet": TrainConfig(epochs=60),
}


def teacher_config(dataset: str, epochs: int | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The full-ReLU training recipe for ``dataset``: its default, with the ``teacher.KEY`` options
    in ``overrides`` (typed) and ``epochs`` (``--teacher-epochs``) when given."""
    recipe = DEFAULT_TEACHER_CONFIGS.get(dataset, TrainConfig())
    overrides = dict(overrides or {})
    if epochs is not None:
        if epochs < 1:
            raise SearchError(f"bad value {epochs} for teacher epochs: expected an integer >= 1")
        if "epochs" in overrides and overrides["epochs"] != epochs:
            raise SearchError("--teacher-epochs and --set teacher.epochs disagree; give one of them")
        overrides["epochs"] = epochs
    return replace(recipe, **overrides)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch learning-rate schedule ``config.schedule`` names (None for constant)."""
    lr_scheduler = torch.optim.lr_scheduler
    if config.schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1), eta_min=config.min_lr)
    if config.schedule == "step":
        return lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.gamma)
    if config.schedule == "restarts":
        return lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=config.restart_epochs, T_mult=config.restart_mult,
                                                        eta_min=config.min_lr)
    return None


def clip_gradients(params: list[torch.Tensor], config: TrainConfig) -> None:
    """Clip gradient norms to ``config.grad_clip``: of all parameters together, or of each tensor."""
    if config.clip_mode == "global":
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        return
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(config.grad_clip / (norm + 1e-6), max=1.0) for norm in norms]
    torch._foreach_mul_(grads, scales)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton distillation: T^2 * KL(softmax(teacher/T) || softmax(student/T))."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1), reduction="batchmean", log_target=True
    ) * (t * t)


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_acc: float
    val_acc: float
    lr: float
    seconds: float


@dataclass
class FitResult:
    best_val_acc: float
    best_epoch: int
    history: list[EpochStats] = field(default_factory=list)
    stopped_early: bool = False


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.nesterov and config.momentum > 0)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader) -> float:
    """Top-1 accuracy (a fraction) of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    correct: torch.Tensor | int = 0  # summed on the device: one host sync per evaluation, not per batch
    total = 0
    for x, y in loader:
        with _autocast(x.device):
            correct = correct + (model(x).argmax(1) == y).sum()
        total += len(y)
    model.train(was_training)
    return int(correct) / max(total, 1)


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda")


EVAL_BATCH = 512  # batch of fit's evaluation of the validation split after every epoch


@dataclass
class TrainStep:
    """One optimizer step of :func:`fit`: forward (float16 autocast on CUDA), cross-entropy plus Hinton
    KD from ``teacher`` plus ``extra_loss``, backward, clipping, optimizer step. One object serves
    ``fit`` and ``--dry-run``'s estimate (:mod:`search.estimate`), so the step timed is the step run."""

    model: nn.Module
    config: TrainConfig
    device: torch.device
    memory_format: torch.memory_format  # of the model's weights and of the batches it takes
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    teacher: nn.Module | None  # set only when the step distils (a teacher and kd_weight > 0)
    extra_loss: Callable[[nn.Module], torch.Tensor] | None

    @classmethod
    def build(cls, model: nn.Module, config: TrainConfig, device: torch.device, teacher: nn.Module | None = None,
              extra_loss: Callable[[nn.Module], torch.Tensor] | None = None) -> TrainStep:
        """The step training ``model`` with ``config``; the model (and teacher) moved to ``device``,
        channels-last where the device is faster so (:mod:`search.layout`)."""
        memory_format = preferred_format(device, model)
        model.to(device, memory_format=memory_format)
        if teacher is not None:
            teacher.to(device, memory_format=memory_format).eval()
        params = [p for p in model.parameters() if p.requires_grad]
        return cls(model, config, device, memory_format, params, make_optimizer(params, config),
                   torch.amp.GradScaler(device.type, enabled=device.type == "cuda"),
                   teacher if teacher is not None and config.kd_weight > 0 else None, extra_loss)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on one batch; its loss and logits."""
        config = self.config
        with _autocast(self.device):
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
                loss = loss + config.kd_weight * kd_loss(logits.float(), teacher_logits.float(), config.kd_temperature)
            if self.extra_loss is not None:
                loss = loss + self.extra_loss(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.params, config)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, logits


def fit(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    device: torch.device,
    teacher: nn.Module | None = None,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    on_epoch_end: Callable[[EpochStats], bool] | None = None,
    on_step_end: Callable[[], bool] | None = None,
    select_best: bool = True,
    log: Callable[[str], None] = print,
    label: str = "train",
) -> FitResult:
    """Train ``model`` in place; keep the weights of the best validation epoch when ``select_best``.
    Training runs channels-last where the device is faster so (:mod:`search.layout`); the model comes
    back in the usual NCHW layout. On CPU, the process keeps freed memory for the next step from
    then on (:mod:`search.heap`).

    ``teacher`` adds Hinton KD with ``config.kd_weight`` and ``config.kd_temperature``.
    ``on_epoch_end`` returning True stops training after that epoch. ``on_step_end`` returning True
    ends the epoch after that optimizer step (its statistics cover the steps taken; ``on_epoch_end``
    still runs).
    """
    seed_everything(config.seed)
    if device.type == "cpu":  # activations live in host memory: reuse it step after step (search.heap)
        heap.keep_freed_memory()
    step = TrainStep.build(model, config, device, teacher, extra_loss)
    memory_format = step.memory_format
    train_loader = Loader(data.train, data.info, config.batch_size, device, shuffle=True, augment=config.augment, seed=config.seed,
                          memory_format=memory_format)
    val_loader = Loader(data.val, data.info, EVAL_BATCH, device, memory_format=memory_format)
    optimizer = step.optimizer
    schedule = make_schedule(optimizer, config)
    result = FitResult(best_val_acc=-1.0, best_epoch=-1)
    best_state = None
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for x, y in train_loader:
            loss, logits = step(x, y)
            total_loss += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if on_step_end is not None and on_step_end():
                break
        lr = optimizer.param_groups[0]["lr"]
        if schedule is not None:
            schedule.step()
        mean_loss = float(total_loss) / max(seen, 1)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"{label}: loss became {mean_loss} in epoch {epoch}")
        stats = EpochStats(epoch, mean_loss, int(correct) / max(seen, 1), evaluate(model, val_loader), lr, time.perf_counter() - start)
        result.history.append(stats)
        log(
            f"{label} epoch {epoch}/{config.epochs} loss {stats.loss:.4f} train_acc {stats.train_acc:.4f} "
            f"val_acc {stats.val_acc:.4f} lr {stats.lr:.2g} ({stats.seconds:.1f}s)"
        )
        if stats.val_acc > result.best_val_acc:
            result.best_val_acc, result.best_epoch = stats.val_acc, epoch
            if select_best:
                best_state = copy.deepcopy(model.state_dict())
        stop = on_epoch_end is not None and on_epoch_end(stats)
        progress.epoch_done(label, epoch, config.epochs, stats.val_acc, stats.seconds,
                            open_ended=on_epoch_end is not None or on_step_end is not None)  # after on_epoch_end: it may note a count
        if stop:
            result.stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format)  # the layout is fit's own business: hand back the usual one
    return result

