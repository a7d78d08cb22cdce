"""What the driver shows while a study runs: one live line per running trial, a permanent line per
finished one.

On a terminal the live lines are drawn by rich (``rich.live.Live``) below the permanent lines; off a
terminal (CI, ``> log``) each running trial gets a plain line when it enters a phase and then at most
every ``PLAIN_EVERY_S`` seconds, so a log stays readable over a day-long run. ``quiet`` keeps only the
permanent lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, Literal

Mode = Literal["live", "plain", "quiet"]
PLAIN_EVERY_S = 30.0


def choose_mode(quiet: bool) -> Mode:
    if quiet:
        return "quiet"
    return "live" if sys.stdout.isatty() else "plain"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def describe(number: int, strategy: str, event: Mapping[str, Any]) -> str:
    """One line of a running trial: phase, epoch k/K, validation accuracy, ReLUs, elapsed, ETA. A
    phase that may end early (SNL's mask phase stops at its target) shows K and the ETA as bounds: ≤."""
    relus = event.get("relus")
    shown_relus = f" relus {int(relus):,}" if isinstance(relus, (int, float)) and relus == relus else ""
    bound = "≤" if event.get("open_ended") else ""
    return (f"trial {number:>3} {strategy:<12} {event['phase']} {int(event['epoch'])}/{bound}{int(event['epochs'])} "
            f"val_acc {float(event['val_acc']):.4f}{shown_relus} elapsed {_duration(float(event['elapsed_s']))} "
            f"eta {bound}{_duration(float(event['eta_s']))}")


class TrialDisplay:
    """The study's output: call :meth:`running` with each progress event, :meth:`finished` with each
    finished trial's permanent line, :meth:`close` at the end."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self._lines: dict[int, str] = {}
        self._last_plain: dict[int, tuple[str, float]] = {}  # trial -> (phase, time of its last plain line)
        self._live: Any = None
        if mode == "live":
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(), refresh_per_second=4, transient=True, redirect_stdout=True,
                              redirect_stderr=False, auto_refresh=True)
            self._live.start()

    def running(self, number: int, strategy: str, event: Mapping[str, Any]) -> None:
        line = describe(number, strategy, event)
        if self.mode == "live":
            self._lines[number] = line
            self._refresh()
        elif self.mode == "plain":
            phase, last = self._last_plain.get(number, ("", 0.0))
            now = time.monotonic()
            if event["phase"] != phase or now - last >= PLAIN_EVERY_S:
                self._last_plain[number] = (str(event["phase"]), now)
                print(line, flush=True)

    def finished(self, number: int, line: str) -> None:
        self._lines.pop(number, None)
        self._last_plain.pop(number, None)
        self.say(line)
        if self.mode == "live":
            self._refresh()

    def say(self, line: str) -> None:
        """A permanent line (above the live lines on a terminal)."""
        if self._live is not None:
            self._live.console.print(line, highlight=False, markup=False, soft_wrap=True)
        else:
            print(line, flush=True)

    def __getstate__(self) -> dict[str, Any]:
        """Ray Tune pickles its configuration, callbacks and all: a copy is an inert, quiet display."""
        return {"mode": "quiet"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["mode"])  # type: ignore[misc]

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _refresh(self) -> None:
        from rich.text import Text

        self._live.update(Text("\n".join(self._lines[n] for n in sorted(self._lines))))
