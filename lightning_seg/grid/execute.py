"""Running a grid's runs: one run in a subprocess (resumable, results written atomically) and a local packer.

Each run is a ``lightning-seg fit … --test_after_fit=true`` subprocess in its own folder. Its states:

- **done**: ``result.json`` exists (written atomically, last). A done run is never started again.
- **partial**: the folder holds ``checkpoints/last.ckpt`` from a run that was killed; the next attempt resumes
  training from it (``--ckpt_path``) instead of starting over.
- **new**: nothing yet.

While a run is being worked on, its folder's ``run.lock`` is held with ``flock``, so that two grid processes
(two shells, or local and Ray) never train the same run at once; the kernel drops the lock when the holder
dies. Its output goes to ``run.log`` in the folder, appended across attempts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_json_atomic
from ..cli import PARENT_PID_VARIABLE, TEST_METRICS
from .spec import Run

RESULT = "result.json"
LOG = "run.log"
LOCK = "run.lock"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


class RunFailed(RuntimeError):
    """A run's process exited with an error; the message gives its log file and the log's last lines."""


class RunLocked(RuntimeError):
    """Another process is working on this run."""


def run_status(run_dir: Path) -> str:
    """``done``, ``partial`` or ``new`` (see the module docstring)."""
    if (run_dir / RESULT).is_file():
        return "done"
    if (run_dir / LAST_CHECKPOINT).is_file() or (run_dir / TEST_METRICS).is_file():
        return "partial"
    return "new"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{run_dir} is being run by another process") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def execute_run(run: Run, root: Path, env: dict | None = None) -> dict:
    """Run ``run`` to completion in ``root / run.relpath`` and return its result record.

    A done run returns its stored result without starting anything. A killed run resumes from its last
    checkpoint; one that had finished testing is only finalised.
    """
    run_dir = Path(root) / run.relpath
    if run_status(run_dir) == "done":
        return json.loads((run_dir / RESULT).read_text())
    with run_lock(run_dir):
        if run_status(run_dir) == "done":  # finished by another process while we waited for the lock
            return json.loads((run_dir / RESULT).read_text())
        started = time.monotonic()
        command = None
        if not (run_dir / TEST_METRICS).is_file():
            last = run_dir / LAST_CHECKPOINT
            command = run.command(run_dir, resume_from=last if last.is_file() else None)
            log_path = run_dir / LOG
            with open(log_path, "a") as log:
                log.write(f"# {dt.datetime.now().isoformat(timespec='seconds')} {' '.join(command)}\n")
                log.flush()
                returncode = subprocess.call(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    # the child ends itself when this process dies (lightning_seg.cli.main), so none is orphaned
                    env={**os.environ, **(env or {}), PARENT_PID_VARIABLE: str(os.getpid())},
                )
            if returncode != 0 or not (run_dir / TEST_METRICS).is_file():
                reason = f"exit code {returncode}" if returncode else f"no {TEST_METRICS} written"
                raise RunFailed(f"run {run.relpath} failed ({reason}); log {log_path}:\n{_tail(log_path)}")
        tested = json.loads((run_dir / TEST_METRICS).read_text())
        result = {
            "keys": run.keys,
            "metrics": tested["metrics"],
            "ckpt_path": tested.get("ckpt_path"),
            "epochs": tested.get("epochs"),
            "wall_s": round(time.monotonic() - started, 3),
            "host": socket.gethostname(),
            "cuda_visible_devices": {**os.environ, **(env or {})}.get("CUDA_VISIBLE_DEVICES"),
            "command": command,
            "finished": dt.datetime.now().isoformat(timespec="seconds"),
        }
        write_json_atomic(run_dir / RESULT, result)
        return result


@dataclass
class GridReport:
    """What a grid execution did: runs done before it started, run now, failed (with messages), skipped."""

    done_before: list[Run] = field(default_factory=list)
    completed: list[Run] = field(default_factory=list)
    failed: dict[Run, str] = field(default_factory=dict)
    locked: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.locked

    def summary(self) -> str:
        lines = [
            f"{len(self.done_before)} already done, {len(self.completed)} completed, "
            f"{len(self.failed)} failed, {len(self.locked)} busy in another process"
        ]
        lines += [f"FAILED {run.relpath}: {message.splitlines()[0]}" for run, message in self.failed.items()]
        return "\n".join(lines)


def local_slots(gpus: Sequence[str], runs_per_gpu: int, cpu_parallel: int) -> list[dict]:
    """Environment of each concurrent worker: ``runs_per_gpu`` per GPU, or ``cpu_parallel`` CPU-only workers.

    CPU workers share the cores evenly (``OMP_NUM_THREADS``) so that parallel runs do not oversubscribe them.
    """
    if runs_per_gpu < 1 or cpu_parallel < 1:
        raise ValueError("runs_per_gpu and parallel must be at least 1")
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(gpu)} for gpu in gpus for _ in range(runs_per_gpu)]
    threads = max(1, (os.cpu_count() or 1) // cpu_parallel)
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads)} for _ in range(cpu_parallel)]


def run_local(
    runs: Sequence[Run],
    root: Path,
    slots: Sequence[dict],
    on_progress: Callable[[Run, str], None] | None = None,
) -> GridReport:
    """Run every run not yet done, ``len(slots)`` at a time, each worker with its slot's environment.

    A failing run is reported and the others go on. ``on_progress(run, outcome)`` is called after each run
    with ``done``, ``completed``, ``failed`` or ``locked``.
    """
    report = GridReport()
    pending: queue.Queue[Run] = queue.Queue()
    for run in runs:
        if run_status(Path(root) / run.relpath) == "done":
            report.done_before.append(run)
            if on_progress:
                on_progress(run, "done")
        else:
            pending.put(run)
    lock = threading.Lock()

    def worker(env: dict) -> None:
        while True:
            try:
                run = pending.get_nowait()
            except queue.Empty:
                return
            try:
                execute_run(run, root, env)
                outcome = "completed"
            except RunLocked:
                outcome = "locked"
            except Exception as error:  # one broken run must not stop the grid
                outcome = "failed"
                with lock:
                    report.failed[run] = str(error)
            with lock:
                if outcome == "completed":
                    report.completed.append(run)
                elif outcome == "locked":
                    report.locked.append(run)
                if on_progress:
                    on_progress(run, outcome)

    threads = [threading.Thread(target=worker, args=(env,), daemon=True) for env in slots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return report
