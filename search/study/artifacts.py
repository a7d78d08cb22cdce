"""Trial files into the run directory, from any node of the cluster.

A trial may run on a machine that cannot see the run directory. It hands its model, log and result to
an :class:`ArtifactStore` actor pinned to the driver's node, which writes ``trials/<n>/model.pt``,
``trials/<n>/log.txt`` and, last, ``trials/<n>/result.json`` atomically there. One small actor, no
shared filesystem needed. The result file is on disk before the trial reports to Ray Tune, so a
finished trial is never lost to whatever happens to the driver afterwards (:func:`read_result`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from search.study.rundir import trial_model_path, write_atomic

RESULT_FILE = "result.json"


class ArtifactStore:
    """Writes trial files under ``run_dir``; runs as a Ray actor on the driver's node."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = Path(run_dir)

    def append_log(self, number: int, text: str) -> None:
        """Add a running trial's new log lines to ``trials/<n>/log.txt`` (``tail -f`` follows it)."""
        append_log(self.run_dir, number, text)

    def save(self, number: int, models: dict[str, bytes], log: str, result: dict[str, Any]) -> None:
        """Write trial ``number``'s models (by file name: ``model.pt``, ``model-<B>.pt`` of its mask
        path), its log, then its result; a model already on disk is not written again (a trial saves
        each result as it finishes, then everything at its end)."""
        model_path = trial_model_path(self.run_dir, number)
        model_path.parent.mkdir(parents=True, exist_ok=True)
        for name, model in models.items():
            path = model_path.with_name(name)
            if not path.is_file() or path.stat().st_size != len(model):
                write_atomic(path, model)
        write_atomic(model_path.with_name("log.txt"), log.encode())  # the whole log, over what append_log wrote
        write_atomic(model_path.with_name(RESULT_FILE), json.dumps(result, default=str).encode())


def append_log(run_dir: str | os.PathLike[str], number: int, text: str) -> None:
    """Add ``text`` to trial ``number``'s ``trials/<n>/log.txt``: its own lines as it runs (through
    :class:`ArtifactStore`), and, from the driver, why the rung rule stopped it."""
    path = trial_model_path(run_dir, number).with_name("log.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        log.write(text)


def read_result(run_dir: str | os.PathLike[str], number: int) -> dict[str, Any] | None:
    """What trial ``number`` reported, if it got as far as saving it (None otherwise or if unreadable)."""
    path = trial_model_path(run_dir, number).with_name(RESULT_FILE)
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and "status" in result else None


def start_store(run_dir: str | os.PathLike[str]) -> Any:
    """An ArtifactStore actor on this (the driver's) node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0)(ArtifactStore).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
    )
    return actor.remote(str(Path(run_dir).resolve()))
