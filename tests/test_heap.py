"""search.heap: a training process reuses the memory a step freed instead of faulting it back in.

Each case runs in a fresh interpreter: the policy is process-wide and lasts, so it must not leak into
this test process (or be already on in it). What is counted is the minor page faults of steps that
allocate and free the same activations, the cost the policy removes.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's mallopt")

# a step's activations: 3 tensors of 40 MiB (above any mmap threshold glibc picks), freed after it
TENSORS, PAGES_EACH, STEPS = 3, 10240, 3
PAGES_TOUCHED = TENSORS * PAGES_EACH * STEPS

STEPS_SCRIPT = f"""
import resource, sys, torch
{{before}}
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step(): return [torch.ones({PAGES_EACH * 1024}) + i for i in range({TENSORS})]
# the heap settles at the steps' size: torch's aligned blocks leave gaps that it fills in the first 2-6 steps
for _ in range(12): step()
start = faults()
for _ in range({STEPS}): step()
print(faults() - start)
"""


def faults_of_steps(before: str, env: dict[str, str] | None = None) -> int:
    """Page faults of STEPS steps after ``before`` ran, in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", STEPS_SCRIPT.format(before=before)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})}, check=True)
    return int(done.stdout.split()[-1])


def test_glibc_alone_faults_a_steps_freed_memory_back_in_page_by_page() -> None:
    """The premise, so the next test can fail: by default most pages of every step fault again."""
    assert faults_of_steps("") > PAGES_TOUCHED / 2


def test_keeping_freed_memory_leaves_repeated_steps_almost_without_page_faults() -> None:
    assert faults_of_steps("from search import heap; assert heap.keep_freed_memory()") < PAGES_TOUCHED / 20


def test_fit_on_cpu_keeps_freed_memory_for_the_rest_of_the_process() -> None:
    train_briefly = ("from torch import nn; from search.data import load_dataset; from search.train import TrainConfig, fit\n"
                     "model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
                     "fit(model, load_dataset('digits'), TrainConfig(epochs=1, batch_size=256), torch.device('cpu'),\n"
                     "    log=lambda _: None)")
    assert faults_of_steps(train_briefly) < PAGES_TOUCHED / 20


@pytest.mark.parametrize("setting", ["MALLOC_TRIM_THRESHOLD_=131072", "MALLOC_MMAP_MAX_=65536",
                                     "GLIBC_TUNABLES=glibc.malloc.trim_threshold=131072"])
def test_a_users_own_malloc_settings_are_left_in_force(setting: str) -> None:
    name, value = setting.split("=", 1)
    keep = "from search import heap; assert not heap.keep_freed_memory()"
    assert faults_of_steps(keep, {name: value}) > PAGES_TOUCHED / 2
