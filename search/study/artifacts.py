"""Trial files into the run directory, from any node of the cluster.

A trial may run on a machine that cannot see the run directory. It hands its model and log to an
:class:`ArtifactStore` actor pinned to the driver's node, which writes ``trials/<n>/model.pt`` and
``trials/<n>/log.txt`` atomically there. One small actor, no shared filesystem needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from search.study.rundir import trial_model_path


class ArtifactStore:
    """Writes trial files under ``run_dir``; runs as a Ray actor on the driver's node."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = Path(run_dir)

    def save(self, number: int, model: bytes | None, log: str) -> None:
        """Write trial ``number``'s model (when it produced one) and its log."""
        model_path = trial_model_path(self.run_dir, number)
        model_path.parent.mkdir(parents=True, exist_ok=True)
        if model is not None:
            _write(model_path, model)
        _write(model_path.with_name("log.txt"), log.encode())


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def start_store(run_dir: str | os.PathLike[str]) -> Any:
    """An ArtifactStore actor on this (the driver's) node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0)(ArtifactStore).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
    )
    return actor.remote(str(Path(run_dir).resolve()))
