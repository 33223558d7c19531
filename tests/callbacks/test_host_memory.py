"""HostMemoryReuse: glibc's malloc thresholds, set for a fit on the CPU so that a step's freed memory is reused."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from lightning_seg.callbacks import HostMemoryReuse, host_memory
from tests.conftest import REPO

MiB = 2**20

#: a process that pins glibc's thresholds at their starting values (128 KiB: what a process whose earlier
#: allocations never raised them has), counts the page faults of writing a 2 MiB tensor, then sets the thresholds
#: as the callback does in a CPU fit and counts again
FAULTS = """
import ctypes, resource
import lightning as L, torch
from lightning_seg.callbacks.host_memory import HostMemoryReuse, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD

def faults_per_tensor(n=21):
    # the median of the page faults that writing a 2 MiB tensor takes (freed at once: the next can reuse it)
    faults = []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(2**19)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sorted(faults)[n // 2]

libc = ctypes.CDLL(None)
assert libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024) and libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
pinned = faults_per_tensor()
trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
HostMemoryReuse().setup(trainer, None, "fit")
print(pinned, faults_per_tensor())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc thresholds: the C library is not glibc")
def test_a_cpu_fit_reuses_freed_host_memory_instead_of_faulting_it_in_again():
    done = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    pinned, reused = map(float, done.stdout.split())
    assert pinned >= 256  # a fresh mapping at every tensor: a fault per 4 KiB page (512), or per larger page
    assert reused == 0


@pytest.mark.parametrize(
    ("device", "stage", "calls"),
    [
        ("cpu", "fit", [(32 * MiB, 64 * MiB)]),
        ("cpu", "test", []),  # a test alone allocates no step after step
        ("cuda", "fit", []),  # a GPU step's tensors are not malloc's
    ],
)
def test_the_thresholds_are_set_at_the_setup_of_a_fit_on_the_cpu_only(monkeypatch, device, stage, calls):
    made = []
    monkeypatch.setattr(host_memory, "set_malloc_thresholds", lambda *args: made.append(args) or True)
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
    HostMemoryReuse().setup(trainer, None, stage)
    assert made == calls


def test_no_glibc_no_mallopt(monkeypatch):
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *_: pytest.fail("mallopt called without glibc"))
    assert host_memory.set_malloc_thresholds(MiB, MiB) is False


@pytest.mark.parametrize(
    ("mmap_threshold", "trim_threshold", "message"),
    [
        (-1, 0, f"mmap_threshold must lie in [0, {32 * MiB}] bytes (default {32 * MiB}), got -1"),
        (32 * MiB + 1, 0, f"mmap_threshold must lie in [0, {32 * MiB}] bytes (default {32 * MiB}), got {32 * MiB + 1}"),
        (0, -5, f"trim_threshold must lie in [0, {2**31 - 1}] bytes (default {64 * MiB}), got -5"),
        (0, 2**32, f"trim_threshold must lie in [0, {2**31 - 1}] bytes (default {64 * MiB}), got {2**32}"),  # C int
    ],
)
def test_thresholds_out_of_range_are_a_value_error_naming_the_argument(mmap_threshold, trim_threshold, message):
    with pytest.raises(ValueError, match=re.escape(f"HostMemoryReuse: {message}")):
        HostMemoryReuse(mmap_threshold, trim_threshold)
    with pytest.raises(ValueError, match=re.escape(message)):
        host_memory.set_malloc_thresholds(mmap_threshold, trim_threshold)


@pytest.mark.parametrize("configs", [["base.yaml", "data/synthetic.yaml"], ["demo.yaml"]])
def test_the_configs_train_with_it(configs):
    from lightning_seg.cli import build_cli

    cli = build_cli([x for name in configs for x in ("--config", str(REPO / "configs" / name))], run=False)
    assert [type(c) for c in cli.trainer.callbacks].count(HostMemoryReuse) == 1


def test_apply_sets_the_thresholds_without_a_trainer(monkeypatch):
    """What a loop of one's own calls (the overhead benchmark's plain loop): the callback's thresholds, at once."""
    made = []
    monkeypatch.setattr(host_memory, "set_malloc_thresholds", lambda *args: made.append(args) or False)
    assert HostMemoryReuse(MiB, 2 * MiB).apply() is False and made == [(MiB, 2 * MiB)]
