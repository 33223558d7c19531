"""A grid's runs end with the grid: ``python -m lightning_seg.grid.parent COMMAND…`` runs COMMAND so that it gets
``SIGTERM`` when the process that started it dies, even by ``SIGKILL`` (Linux ``PR_SET_PDEATHSIG``).

So a killed grid leaves no run behind to race its resumed copy. The signal setting survives ``exec``, so the
run is COMMAND itself (same process id), not a child of this module. Elsewhere than Linux it is a plain exec.
A run stopped by ``SIGTERM`` saves its resumable state first (:class:`lightning_seg.callbacks.RunCheckpoint`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

#: Set by the grid to its own process id; a run started by a process that is already gone does not start.
PARENT_PID_VARIABLE = "LIGHTNING_SEG_PARENT_PID"
PR_SET_PDEATHSIG = 1


def end_with_parent() -> None:
    """With ``LIGHTNING_SEG_PARENT_PID`` set, get ``SIGTERM`` when the parent dies; exit now if it already has."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if not parent or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before the line above
        sys.exit(f"{PARENT_PID_VARIABLE}={parent} is gone; not starting")


def main(argv: list[str] | None = None) -> None:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        sys.exit("usage: python -m lightning_seg.grid.parent COMMAND [ARG ...]")
    end_with_parent()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
