"""Joining a Ray cluster or starting a local one for a study, quietly and with clear errors.

An unreachable ``--address`` is checked with a plain TCP connection first (a few seconds), because
``ray.init`` would otherwise retry for a long time before failing with a traceback. A GPU request on
a cluster without GPUs would leave every trial pending forever, so it is dropped with a warning. A
local Ray runs in a head process of its own (:mod:`search.study.localray`, started early by the command
line) that the driver joins, and is watched by :mod:`search.study.reaper`, so none of its processes
outlives the driver, however the driver ends. On a cluster, the user's own modules named by import path
(``--model pkg.mod:factory``, ``--strategy pkg.mod:Class``) travel with the job (Ray's runtime
environment, ``py_modules``), so other nodes import them without having them installed.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from search.errors import SearchError
from search.study import localray, reaper

CONNECT_TIMEOUT_S = 5.0
_head: localray.LocalRay | None = None  # the local Ray this process joined
_reaper: subprocess.Popen[bytes] | None = None  # watches it
_stopping: threading.Thread | None = None  # a background disconnect() under way


@dataclass(frozen=True)
class Resources:
    """Per-trial resources after checking them against the cluster."""

    cpus: float
    gpus: float


def parse_address(address: str) -> tuple[str, int] | None:
    """``host:port`` -> (host, port); ``auto`` -> None; anything else is a SearchError."""
    if address == "auto":
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SearchError(f"bad --address {address!r}: expected auto or host:port of a Ray head node, e.g. 10.0.0.5:6379")
    return host.strip("[]"), int(port)


def check_reachable(address: str) -> None:
    """Fail fast, in one line, when nothing listens at ``address``."""
    target = parse_address(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise SearchError(
            f"cannot reach a Ray cluster at {address}: {err.strerror or err}; start one with `ray start --head` "
            "and pass the address it prints, use --address auto on a cluster node, or omit --address to run locally"
        ) from None


def quiet(verbose: bool) -> None:
    """Keep Ray's and Optuna's chatter out of the study's output unless ``verbose``."""
    import optuna

    level = logging.INFO if verbose else logging.WARNING
    optuna.logging.set_verbosity(level)
    if not verbose:
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the old reporter prints nothing at verbose=0
        # Even Ray's errors: a fault the study meets (a full disk, say) ends it with one line of its own.
        for name in ("ray", "ray.tune", "ray.train", "ray.data", "optuna"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", module=r"ray(\..*)?")
        warnings.filterwarnings("ignore", module=r"optuna(\..*)?")


def user_code(names: Iterable[str]) -> list[str]:
    """Where the modules of the import paths among ``names`` (``pkg.mod:attr``) live, to ship to a
    cluster's nodes: the top-level package's folder or the module's file. Left out: names without a
    module part (registry names), this package, and installed packages (site-packages or
    dist-packages), which a cluster's nodes are expected to have installed like torch."""
    found: dict[str, None] = {}
    for name in names:
        module, colon, _ = name.partition(":")
        top = module.split(".")[0]
        if not colon or not top or top == "search":
            continue
        spec = importlib.util.find_spec(top)
        if spec is None or spec.origin in (None, "built-in", "frozen"):
            continue
        locations = list(spec.submodule_search_locations or [])
        where = Path(locations[0]) if locations else Path(spec.origin)
        if not {"site-packages", "dist-packages"} & set(where.parts):
            found[str(where.resolve())] = None
    return list(found)


def connect(address: str | None, verbose: bool, ship: Sequence[str] = ()) -> bool:
    """Join the cluster at ``address`` (checked with :func:`check_reachable` first), or this run's own
    local Ray (:func:`localray.take`); True for the local one, which :func:`disconnect` stops. On a
    cluster, ``ship`` (:func:`user_code`) goes with the job to every node; a local Ray's workers import
    from the driver's own path already."""
    wait_disconnected()
    level = logging.INFO if verbose else logging.ERROR
    if address:
        _join(address, level, verbose, ship)
    else:
        _join_local(level, verbose)
    if not verbose:
        for name in ("ray", "ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    return not address


def _join_local(level: int, verbose: bool) -> None:
    """Join this run's head (started early, or now) and start the reaper that watches its Ray."""
    import ray

    global _head, _reaper
    _head = localray.take()
    try:
        address = _head.address()
        logging.getLogger("ray").setLevel(level)  # as ray.init sets it, for what Ray logs before that
        _enable_local_token()
        ray.init(address=address, logging_level=level, log_to_driver=verbose, configure_logging=True)
    except BaseException as err:
        _stop_head()
        if isinstance(err, (ConnectionError, ray.exceptions.AuthenticationError)):
            raise SearchError(f"cannot join the local Ray started for this run: {str(err).splitlines()[0]}") from None
        raise
    _reaper = reaper.start(ray._private.worker._global_node.get_session_dir_path())


def _enable_local_token() -> None:
    """Token authentication as the head's ``ray.init`` set it up, which Ray's own drivers of a local
    Ray get only when they find it by themselves (``ray.init()``): enabled, unless RAY_AUTH_MODE says
    otherwise, with the token the head saved in ~/.ray/auth_token."""
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _join(address: str, level: int, verbose: bool, ship: Sequence[str]) -> None:
    import ray

    try:
        ray.init(address=address, logging_level=level, log_to_driver=verbose, configure_logging=True,
                 runtime_env={"py_modules": list(ship)} if ship else None)
    except ConnectionError as err:
        raise SearchError(f"cannot join a Ray cluster at --address {address}: {str(err).splitlines()[0]}") from None
    except ray.exceptions.AuthenticationError:
        raise SearchError(
            f"the Ray cluster at --address {address} uses token authentication: set RAY_AUTH_MODE=token and make "
            "the cluster's token available (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)"
        ) from None


def disconnect(background: bool = False) -> None:
    """Leave Ray, and stop this run's local Ray (its head shuts it down, the reaper stops whatever is
    left). ``background``: in a thread of its own, so the caller's last work (the summary, the report)
    overlaps Ray's 1-3 s of stopping processes; :func:`connect`, :func:`wait_disconnected` and the
    interpreter's exit wait for it."""
    global _stopping
    wait_disconnected()
    if background:
        # Ray's handles guard against a stopped Ray, but not against one stopping: a handle freed by
        # the collector while Ray's core worker shuts down ends the process ("The core worker has
        # already been shutdown"). Nothing that exists now is collected until the shutdown is over.
        gc.freeze()
        _stopping = threading.Thread(target=_shut_down, name="ray-shutdown")
        _stopping.start()
    else:
        _shut_down()


def wait_disconnected() -> None:
    """Return once a background :func:`disconnect` has finished."""
    global _stopping
    if _stopping is not None:
        _stopping.join()
        _stopping = None
        gc.unfreeze()


def _shut_down() -> None:
    import ray

    global _reaper
    try:
        if ray.is_initialized():
            ray.shutdown()
    finally:
        _stop_head()
        if _reaper is not None:
            _reaper.stdin.close()  # type: ignore[union-attr]
            try:
                _reaper.wait(reaper.GRACE_S * 3)
            except subprocess.TimeoutExpired:  # it goes on alone; the driver need not wait
                pass
            _reaper = None


def _stop_head() -> None:
    global _head
    if _head is not None:
        _head.stop()
        _head = None


def fit_resources(cpus: float, gpus: float | None, warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Resources:
    """The per-trial request, with GPUs dropped (and a warning) where the cluster has none;
    ``gpus`` None means one GPU per trial where the cluster has GPUs, else none."""
    import ray

    available = ray.cluster_resources()
    if gpus is None:
        gpus = 1.0 if available.get("GPU", 0) >= 1 else 0.0
    if cpus <= 0 or gpus < 0:
        raise SearchError(f"bad per-trial resources cpus={cpus} gpus={gpus}: expected cpus > 0 and gpus >= 0")
    if cpus > available.get("CPU", 0):
        raise SearchError(f"--cpus-per-trial {cpus} is more than the cluster's {available.get('CPU', 0):g} CPUs")
    if gpus > 0 and available.get("GPU", 0) == 0:
        warn(f"warning: the Ray cluster has no GPU; ignoring --gpus-per-trial {gpus:g} (trials run on CPU)")
        gpus = 0.0
    return Resources(cpus, gpus)
