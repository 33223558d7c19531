"""Host memory that a training step on the CPU frees, kept for the next step: glibc's two malloc thresholds."""

from __future__ import annotations

import ctypes
import logging
import platform

import lightning as L

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's ``malloc.h``)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: the highest ``M_MMAP_THRESHOLD`` glibc's own adjustment raises the threshold to on a 64-bit system, and the
#: most that older glibc versions take (``HEAP_MAX_SIZE / 2``)
MAX_MMAP_THRESHOLD = 32 * 2**20
#: ``mallopt`` takes a C ``int``: a larger value would be cut to its low 32 bits
MAX_TRIM_THRESHOLD = 2**31 - 1
DEFAULT_TRIM_THRESHOLD = 64 * 2**20


def check_thresholds(mmap_threshold: int, trim_threshold: int) -> None:
    """Raises:
    ValueError: ``mmap_threshold`` outside ``[0, MAX_MMAP_THRESHOLD]`` or ``trim_threshold`` outside
        ``[0, MAX_TRIM_THRESHOLD]``, naming the argument, its range and its default."""
    for name, value, most, default in (
        ("mmap_threshold", mmap_threshold, MAX_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD),
        ("trim_threshold", trim_threshold, MAX_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD),
    ):
        if not 0 <= value <= most:
            raise ValueError(f"HostMemoryReuse: {name} must lie in [0, {most}] bytes (default {default}), got {value}")


def set_malloc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` for this process; whether both were taken (``False``
    where the C library is not glibc). Setting either turns off glibc's own adjustment of both for the process.

    Raises:
        ValueError: a threshold out of range (:func:`check_thresholds`).
    """
    check_thresholds(mmap_threshold, trim_threshold)
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # an interpreter that does not export the C library's symbols
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


class HostMemoryReuse(L.Callback):
    """Keeps the host memory that a training step on the CPU frees for the next step, instead of handing it back to
    the system and taking a page fault for every 4 KiB of it at the next step.

    glibc's ``malloc`` hands a freed block of ``M_MMAP_THRESHOLD`` bytes or more back to the system at once (128 KiB
    at first, raised by glibc as such blocks are freed), and trims the top of its heap once more than
    ``M_TRIM_THRESHOLD`` bytes lie free there. A step on the CPU allocates and frees tensors of the same sizes at
    every step; where they are larger than the thresholds that the process's earlier allocations left, every step
    maps fresh pages. In a CHASE fit of a 128-channel two-layer model on 28² crops (4 × 128 × 28² floats, 1.6 MiB
    per activation) that was 86,000 page faults a second, a fifth of the CPU time spent in the kernel and steps a
    third longer than with the thresholds set (benchmarks/README.md). At ``setup`` of a fit on the CPU this callback
    sets both (:func:`set_malloc_thresholds`): blocks below ``mmap_threshold`` come from the heap and are reused,
    and up to ``trim_threshold`` bytes stay free at its top. So the process keeps freed memory instead of handing it
    back: freed blocks anywhere in its heap, and up to ``trim_threshold`` bytes at the top (with the CPU pilot's
    model and images, 12-33 MiB more resident memory at the peak, 1-3 %: benchmarks/README.md). The setting holds
    for the rest of the process (a test after the fit, later fits in a notebook) and for the loader workers it
    forks; glibc has no way to read the old values back, and no longer adjusts the thresholds itself. Under
    ``LD_PRELOAD``-ed jemalloc or tcmalloc it changes nothing.

    It does nothing on a GPU (the tensors of a GPU step are not ``malloc``'s) or where the C library is not glibc. It
    changes how fast a run goes, never what it computes: a run's identity leaves it out
    (:data:`lightning_seg.run.OBSERVERS`).

    Args:
        mmap_threshold: bytes from which a block is mapped, and handed back when freed (at most
            :data:`MAX_MMAP_THRESHOLD`, the default).
        trim_threshold: free bytes at the top of the heap above which glibc hands them back (default 64 MiB, at most
            :data:`MAX_TRIM_THRESHOLD`).

    Raises:
        ValueError: a threshold out of range (:func:`check_thresholds`).

    Example:
        >>> HostMemoryReuse(mmap_threshold=2**20).trim_threshold == 64 * 2**20
        True
    """

    def __init__(self, mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = DEFAULT_TRIM_THRESHOLD) -> None:
        check_thresholds(mmap_threshold, trim_threshold)
        self.mmap_threshold = mmap_threshold
        self.trim_threshold = trim_threshold

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.strategy.root_device.type == "cpu":
            self.apply()

    def apply(self) -> bool:
        """Set the thresholds in this process now (:func:`set_malloc_thresholds`), as ``setup`` does for a CPU fit
        (also for a loop without a trainer); whether they were taken."""
        applied = set_malloc_thresholds(self.mmap_threshold, self.trim_threshold)
        if applied:
            log.debug("malloc thresholds set: mmap %d, trim %d bytes", self.mmap_threshold, self.trim_threshold)
        else:
            log.debug("malloc thresholds left as they are: the C library is not glibc, or it refused them")
        return applied
