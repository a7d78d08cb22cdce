"""Clusters: the launcher configs pass Ray's own validation, and a study runs on a real two-node Ray.

The two nodes are two network namespaces on this machine joined by a veth pair (DESIGN.md): the head
and the driver in one, a worker in the other, on the private 10.213.7.0/24. Every Ray process the test
starts is a child of a ``ray start --block`` it launched in its own process group, with its own temp
directory, and is stopped through that; ``ray stop`` is never used (it would stop every Ray here).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search import rundir
from tests.conftest import PROJECT_ROOT

HEAD_IP, WORKER_IP, PORT = "10.213.7.1", "10.213.7.2", 6390
QUICK = "tests.strategies_for_tests:Quick"
RAY = str(Path(sys.executable).with_name("ray"))


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


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """Namespaces (head, worker) joined by a veth pair on 10.213.7.0/24, deleted afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make network namespaces")
    tag = uuid.uuid4().hex[:6]
    head, worker = f"srh{tag}", f"srw{tag}"
    try:
        _ip("netns", "add", head)
    except (subprocess.CalledProcessError, OSError) as err:
        pytest.skip(f"cannot create a network namespace here: {err}")
    try:
        _ip("netns", "add", worker)
        _ip("link", "add", f"vh{tag}", "type", "veth", "peer", "name", f"vw{tag}")
        for ns, dev, ip in ((head, f"vh{tag}", HEAD_IP), (worker, f"vw{tag}", WORKER_IP)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "route", "add", "default", "dev", dev)
        yield head, worker
    finally:
        for ns in (head, worker):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _env() -> dict[str, str]:
    """Token auth on for every node and the driver (Ray 2.60 never turns it on for an explicit
    address by itself); all of them read the same ~/.ray/auth_token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PYTHONPATH": str(PROJECT_ROOT), "RAY_AUTH_MODE": "token"}


def _start(ns: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``ray start --block`` in namespace ``ns``, in a process group of its own."""
    with open(log, "wb") as out:
        return subprocess.Popen(["ip", "netns", "exec", ns, RAY, "start", "--block", *args], cwd=PROJECT_ROOT,
                                env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen[bytes], *markers: str) -> None:
    """Stop a ``ray start --block`` and any of its Ray processes still alive (found by a string only
    the test's processes carry on their command line: its temp directory, its node's address)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    leftovers = [pid for m in markers for pid in subprocess.run(["pgrep", "-f", m], capture_output=True, text=True).stdout.split()]
    for pid in leftovers:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _nodes_alive(head: str) -> int:
    probe = (
        "import ray; ray.init(address='%s:%d', logging_level='ERROR');"
        "print(sum(n['Alive'] for n in ray.nodes()))" % (HEAD_IP, PORT)
    )
    done = subprocess.run(["ip", "netns", "exec", head, sys.executable, "-c", probe], env=_env(),
                          capture_output=True, text=True, timeout=120)
    return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else 0


def test_study_runs_trials_on_both_nodes(namespaces: tuple[str, str], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    head_ns, worker_ns = namespaces
    subprocess.run([RAY, "get-auth-token", "--generate"], env=_env(), capture_output=True, timeout=60, check=True)
    temp = f"/tmp/search-cluster-{uuid.uuid4().hex[:8]}"
    head = _start(head_ns, ["--head", f"--port={PORT}", f"--node-ip-address={HEAD_IP}", "--num-cpus=1",
                            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"], tmp_path / "head.log")
    worker = None
    try:
        deadline = time.monotonic() + 120
        while _nodes_alive(head_ns) < 1 and time.monotonic() < deadline:
            time.sleep(2)
        worker = _start(worker_ns, [f"--address={HEAD_IP}:{PORT}", f"--node-ip-address={WORKER_IP}", "--num-cpus=1",
                                    "--disable-usage-stats"], tmp_path / "worker.log")
        while _nodes_alive(head_ns) < 2 and time.monotonic() < deadline:
            time.sleep(2)
        assert _nodes_alive(head_ns) == 2, (tmp_path / "worker.log").read_text()[-2000:]

        run_dir = tmp_path / "run"
        cache = tmp_path_factory.getbasetemp() / "search-cache"
        done = subprocess.run(
            ["ip", "netns", "exec", head_ns, sys.executable, "-m", "search.run", "--strategy", QUICK, "--trials", "4",
             "--address", f"{HEAD_IP}:{PORT}", "--run-dir", str(run_dir), "--teacher-epochs", "2", "--cache-dir", str(cache)],
            cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        settings = rundir.read_settings(run_dir)
        trials = optuna.load_study(study_name=settings.study_name, storage=settings.storage).get_trials()
        assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
        assert {t.user_attrs["node_ip"] for t in trials} == {HEAD_IP, WORKER_IP}
        for trial in trials:  # models from both nodes reach the driver's run directory
            assert (run_dir / trial.user_attrs["model_path"]).is_file()
    finally:
        if worker is not None:
            _stop(worker, temp, f"--node-ip-address={WORKER_IP}")
        _stop(head, temp, f"--node-ip-address={HEAD_IP}")
        shutil.rmtree(temp, ignore_errors=True)
