"""Clusters: the launcher configs pass Ray's own validation, and a study runs on a real two-node Ray.

The two nodes are two network namespaces on this machine joined by a veth pair (DESIGN.md), made and
stopped by ``tests/helpers.py`` (shared with the node-failure test of ``tests/test_reliability.py``).
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.study import rundir
from tests.conftest import PROJECT_ROOT
from tests.helpers import HEAD_IP, RUNNING_LINE, WORKER_IP, namespaces, two_node_cluster  # noqa: F401 (namespaces: a fixture)

CURVE = "tests.strategies_for_tests:Curve"
# A user's model module that no node has: 1x8x8 digits, three ReLU layers of 64 each.
USER_MODEL = """
from torch import nn


def make(num_classes: int = 10, input_size: tuple = (1, 8, 8), channels: int = 1) -> nn.Module:
    layers = [nn.Conv2d(input_size[0], channels, 3, padding=1), nn.ReLU()]
    layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * input_size[1] * input_size[2], num_classes))
"""


@pytest.mark.parametrize("name", ["ray_cluster.yaml", "ray_cluster.local.yaml"])
def test_cluster_config_passes_rays_validation(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((PROJECT_ROOT / name).read_text())
    config = prepare_config(raw)
    validate_config(config)
    commands = " ".join(config["setup_commands"])
    assert "pip install" in commands and "~/search" in commands and raw["file_mounts"]["~/search"] == "."
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP" in c for c in config["worker_start_ray_commands"])
    if raw["provider"]["type"] == "local":
        assert "available_node_types" not in raw
    else:
        workers = [t for n, t in raw["available_node_types"].items() if n != raw["head_node_type"]]
        assert workers and all(t["max_workers"] > 0 for t in workers)


def test_study_runs_trials_on_both_nodes(namespaces: tuple[str, str], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with two_node_cluster(namespaces, tmp_path) as cluster:
        run_dir = tmp_path / "run"
        cache = tmp_path_factory.getbasetemp() / "search-cache"
        # 6 epochs of 1.2 s: a trial reports its progress once it has run 5 s (search.study.trainable.REPORT_EVERY_S)
        # The model is the user's own module, on the driver's path only: the job ships it to both nodes.
        user_code = tmp_path / "user_code"
        user_code.mkdir()
        (user_code / "remote_only_model.py").write_text(USER_MODEL)
        driver = cluster.run(["--strategy", CURVE, "--model", "remote_only_model:make", "--set", "epochs=6", "--set", "seconds=1.2",
                              "--no-early-stop", "--trials", "4", "--run-dir", str(run_dir), "--cache-dir", str(cache)],
                             driver_path=user_code)
        stdout, stderr = driver.communicate(timeout=300)
        assert driver.returncode == 0, stdout[-2000:] + stderr[-3000:]
        settings = rundir.read_settings(run_dir)
        trials = optuna.load_study(study_name=settings.study_name, storage=settings.storage).get_trials()
        assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
        assert {t.user_attrs["node_ip"] for t in trials} == {HEAD_IP, WORKER_IP}
        assert settings.model == "remote_only_model:make" and all(t.user_attrs["relus"] <= 3 * 64 for t in trials)
        lines = stdout.splitlines()
        for trial in trials:  # models from both nodes reach the driver's run directory
            assert (run_dir / trial.user_attrs["model_path"]).is_file()
            # ... and so does their progress, before their permanent line (the trial still running)
            running = [i for i, line in enumerate(lines) if RUNNING_LINE.match(line) and line.split()[1] == str(trial.number)]
            done = [i for i, line in enumerate(lines) if line.split()[:2] == ["trial", str(trial.number)] and "accuracy=" in line]
            assert running and done and running[0] < done[0], (trial.number, trial.user_attrs["node_ip"], stdout[-3000:])
            assert sorted(trial.intermediate_values) == [1, 2, 3, 4, 5, 6], "every epoch is an intermediate value"
