"""Clusters: the launcher configs pass Ray's own validation, a study runs on a real two-node Ray, and
the worker node killed mid-trial (``--trial-retries`` 0 and 1) leaves a study that completes on the head.

The two nodes are two network namespaces on this machine joined by a veth pair (DESIGN.md), made and
stopped by ``tests/helpers.py``; the tests of this file share one such cluster.
"""

from __future__ import annotations

import gc
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.study import cluster as ray_cluster
from search.study import rundir
from search.study.searcher import CRASHED
from tests.conftest import PROJECT_ROOT
from tests.helpers import HEAD_IP, RUNNING_LINE, WORKER_IP, Cluster, load, network_namespaces, two_node_cluster

CURVE = "tests.strategies_for_tests:Curve"
NAP = "tests.strategies_for_tests:Nap"
# A user's model module that no node has: 1x8x8 digits, three ReLU layers of 64 each.
USER_MODEL = """
from torch import nn


def make(num_classes: int = 10, input_size: tuple = (1, 8, 8), channels: int = 1) -> nn.Module:
    layers = [nn.Conv2d(input_size[0], channels, 3, padding=1), nn.ReLU()]
    layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * input_size[1] * input_size[2], num_classes))
"""


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One two-node cluster for every test of this file (starting one takes about 10 s): each test
    runs a study of its own on it, with a run directory of its own."""
    with network_namespaces() as namespaces, two_node_cluster(namespaces, tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def cluster(two_nodes: Cluster) -> Cluster:
    """The shared cluster with both nodes alive (a test before this one may have killed the worker)."""
    if two_nodes.worker is None:
        two_nodes.start_worker(time.monotonic() + 120)
    return two_nodes


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return ["--cache-dir", str(tmp_path_factory.getbasetemp() / "search-cache")]


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


def test_study_runs_trials_on_both_nodes(cluster: Cluster, tmp_path: Path, cache: list[str]) -> None:
    run_dir = tmp_path / "run"
    # 6 epochs of 1.2 s: a trial reports its progress once it has run 5 s (search.study.trainable.REPORT_EVERY_S)
    # The model is the user's own module, on the driver's path only: the job ships it to both nodes.
    # Two trials of one CPU each on two one-CPU nodes: one runs on each.
    user_code = tmp_path / "user_code"
    user_code.mkdir()
    (user_code / "remote_only_model.py").write_text(USER_MODEL)
    driver = cluster.run(["--strategy", CURVE, "--model", "remote_only_model:make", "--set", "epochs=6", "--set", "seconds=1.2",
                          "--no-early-stop", "--trials", "2", "--run-dir", str(run_dir), *cache],
                         driver_path=user_code)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stdout[-2000:] + stderr[-3000:]
    settings = rundir.read_settings(run_dir)
    trials = optuna.load_study(study_name=settings.study_name, storage=settings.storage).get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
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


def _kill_worker_mid_trial(cluster: Cluster, markers: Path, driver: subprocess.Popen[str]) -> None:
    """Kill the worker node once a trial has started sleeping on it (its Nap left a marker)."""
    deadline = time.monotonic() + 120
    while not list(markers.glob(f"{WORKER_IP}-*")):
        if time.monotonic() > deadline or driver.poll() is not None:
            raise AssertionError(f"no trial started on the worker node: {driver.communicate()}")
        time.sleep(0.2)
    for old in markers.iterdir():
        old.unlink()
    cluster.kill_worker()


def test_worker_node_killed_mid_trial(cluster: Cluster, tmp_path: Path, cache: list[str]) -> None:
    """Two one-CPU nodes, two Nap trials (5 s) at a time; the worker node is killed once a trial is
    sleeping on it. Retries 0 (default): that trial is FAILED and the study completes on the head.
    Then, with the worker back, ``--resume --trial-retries 1``: the killed trial is rerun on the head."""
    run_dir, markers = tmp_path / "run", tmp_path / "markers"
    markers.mkdir()
    driver = cluster.run(["--strategy", NAP, "--set", "seconds=5", "--set", f"marker={markers}", "--trials", "2",
                          "--concurrency", "2", "--run-dir", str(run_dir), *cache])
    _kill_worker_mid_trial(cluster, markers, driver)
    stdout, stderr = driver.communicate(timeout=240)
    assert driver.returncode == 0, stdout[-2000:] + stderr[-3000:]
    trials = load(run_dir)[1].get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(trials) == 2 and len(failed) == 1, stdout
    assert failed[0].user_attrs["fail_reason"] == CRASHED
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 1
    assert f"FAILED: {CRASHED}" in stdout

    cluster.start_worker(time.monotonic() + 120)
    driver = cluster.run(["--resume", "--run-dir", str(run_dir), "--trials", "4", "--trial-retries", "1", *cache])
    _kill_worker_mid_trial(cluster, markers, driver)
    stdout, stderr = driver.communicate(timeout=240)
    assert driver.returncode == 0, stdout[-2000:] + stderr[-3000:]
    trials = load(run_dir)[1].get_trials()
    new = [t for t in trials if t.number >= 2]
    assert len(new) == 2 and all(t.state == TrialState.COMPLETE for t in new), [t.user_attrs for t in new]
    assert {t.user_attrs["node_ip"] for t in new} == {HEAD_IP}, "the worker's trial was rerun on the head"


def test_nothing_is_collected_while_ray_stops_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray handle freed by the collector while Ray's core worker shuts down ends the process: while a
    background disconnect runs (the study's summary and report are written meanwhile), the garbage of
    before it is not collected; once it is over, it is."""
    shutting_down, freed = threading.Event(), threading.Event()
    monkeypatch.setattr(ray_cluster, "_shut_down", lambda: shutting_down.wait(30))

    class InACycle:  # stands for a Ray handle that Tune's objects left in a reference cycle
        def __init__(self) -> None:
            self.cycle = self

        def __del__(self) -> None:
            freed.set()

    InACycle()
    ray_cluster.disconnect(background=True)
    gc.collect()
    assert not freed.is_set(), "collected while Ray was stopping"
    shutting_down.set()
    ray_cluster.wait_disconnected()
    gc.collect()
    assert freed.is_set()
