"""Running a grid's runs: one run in a subprocess (resumable, results written atomically) and a local packer.

Each run is a ``lightning-seg fit … --test_after_fit=true`` subprocess in its own folder
(:mod:`lightning_seg.run`: the folder name carries the fingerprint of the run's settings). Its states:

- **done**: ``result.json`` exists and names the run's fingerprint (written atomically, last). A done run is
  never started again; a run whose settings changed (``--set trainer.max_epochs=50``) is another run, in
  another folder.
- **partial**: the folder has a ``run.json`` (the run started) but no result: the next attempt runs the same
  command, which resumes from the run's ``last.ckpt`` (or only tests it, if it had finished training).
- **new**: nothing yet.

While a run is being worked on, its folder's ``run.lock`` is held with ``flock``, so that two grid processes
(two shells, or local and Ray) never train the same run at once; the kernel drops the lock when the holder
dies. Its output goes to ``run.log`` in the folder, appended across attempts. The run ends with its grid
(:mod:`lightning_seg.grid.parent`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..run import Records, RunFolder
from .parent import PARENT_PID_VARIABLE
from .spec import Run, check_runs

LOG = "run.log"
LOCK = "run.lock"
#: Lines of a failed run's log shown in the grid's summary.
TAIL_LINES = 8


class RunFailed(RuntimeError):
    """A run's process failed; ``cause`` is the one-line reason, ``tail`` the end of its log."""

    def __init__(self, relpath: Path, cause: str, log: Path, tail: str) -> None:
        super().__init__(f"run {relpath} failed: {cause}\nlog {log}:\n{tail}")
        self.cause, self.log, self.tail = cause, log, tail


class RunLocked(RuntimeError):
    """Another process is working on this run."""


def run_status(run_dir: Path, fingerprint: str | None = None) -> str:
    """``done``, ``partial`` or ``new`` (see the module docstring); with ``fingerprint``, done means done with it."""
    folder = RunFolder(run_dir)
    result = folder.read(Records.RESULT)
    if result is not None and (fingerprint is None or result.get("fingerprint") == fingerprint):
        return "done"
    if folder.record_path(Records.RUN).is_file() or folder.record_path(Records.TEST_METRICS).is_file():
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


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    with contextlib.suppress(OSError):
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", path.read_text(errors="replace"))  # no terminal colours
        kept = [line.rstrip() for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])
    return ""


def failure_cause(folder: RunFolder, returncode: int, log: Path) -> str:
    """Why a run failed, in one line: the reason it recorded (e.g. a non-finite loss), else its last
    ``lightning-seg: error:`` line, else its exit code."""
    record = folder.read(Records.RUN) or {}
    if record.get("status") == "failed" and record.get("reason"):
        return " ".join(record["reason"].split())
    with contextlib.suppress(OSError):
        errors = [line for line in log.read_text(errors="replace").splitlines() if "lightning-seg: error:" in line]
        if errors:
            return errors[-1].split("lightning-seg: error:", 1)[1].strip()
    return f"exit code {returncode}" if returncode else f"no {Records.TEST_METRICS} written"


def execute_run(run: Run, root: Path, env: dict | None = None) -> dict:
    """Run ``run`` to completion in ``root / run.relpath`` and return its result record.

    A done run returns its stored result without starting anything. A killed run resumes from its last
    checkpoint (the command itself does that); one that had finished testing is only finalised.
    """
    folder = RunFolder(Path(root) / run.relpath)
    fingerprint = run.identity.fingerprint
    if run_status(folder.path, fingerprint) == "done":
        return folder.read(Records.RESULT)
    with run_lock(folder.path):
        if run_status(folder.path, fingerprint) == "done":  # finished by another process while we waited
            return folder.read(Records.RESULT)
        started = time.monotonic()
        command = None
        tested = folder.read(Records.TEST_METRICS)
        if tested is None or tested.get("fingerprint") != fingerprint:
            command = run.command(folder.path)
            log_path = folder.path / LOG
            with open(log_path, "a") as log:
                log.write(f"# {dt.datetime.now().isoformat(timespec='seconds')} {' '.join(command)}\n")
                log.flush()
                returncode = subprocess.call(
                    [sys.executable, "-m", "lightning_seg.grid.parent", *command],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **(env or {}), PARENT_PID_VARIABLE: str(os.getpid())},
                )
            tested = folder.read(Records.TEST_METRICS)
            if returncode != 0 or tested is None:
                raise RunFailed(run.relpath, failure_cause(folder, returncode, log_path), log_path, _tail(log_path))
        trained = folder.read(Records.RUN) or {}
        result = {
            "keys": run.keys,
            "fingerprint": fingerprint,
            "cell": run.identity.cell,
            "metrics": tested["metrics"],
            "ckpt_path": tested.get("ckpt_path"),
            "ckpt_step": tested.get("ckpt_step"),
            "steps": trained.get("steps"),
            "epochs": trained.get("epochs"),
            "wall_s": round(time.monotonic() - started, 3),
            "host": socket.gethostname(),
            "cuda_visible_devices": {**os.environ, **(env or {})}.get("CUDA_VISIBLE_DEVICES"),
            "command": command,
            "finished": dt.datetime.now().isoformat(timespec="seconds"),
        }
        folder.write(Records.RESULT, result)
        return result


@dataclass
class GridReport:
    """What a grid execution did: runs done before it started, run now, failed (with messages), skipped."""

    done_before: list[Run] = field(default_factory=list)
    completed: list[Run] = field(default_factory=list)
    failed: dict[Run, RunFailed | str] = field(default_factory=dict)
    locked: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.locked

    def summary(self) -> str:
        """Counts, then each failed run: its folder, its cause, and the end of its log."""
        lines = [
            f"{len(self.done_before)} already done, {len(self.completed)} completed, "
            f"{len(self.failed)} failed, {len(self.locked)} busy in another process"
        ]
        for run, failure in self.failed.items():
            cause, tail = (failure.cause, failure.tail) if isinstance(failure, RunFailed) else (str(failure), "")
            lines.append(f"FAILED {run.relpath}: {cause}")
            if isinstance(failure, RunFailed):
                lines.append(f"  log {failure.log}, last lines:")
            lines += [f"  | {line}" for line in tail.splitlines()]
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

    The data of every run is checked first (:func:`~lightning_seg.grid.spec.check_runs`): a bad fold or fraction
    starts nothing. A failing run is reported and the others go on. ``on_progress(run, outcome)`` is called after each run
    with ``done``, ``completed``, ``failed`` or ``locked``.
    """
    check_runs(runs)
    report = GridReport()
    pending: queue.Queue[Run] = queue.Queue()
    for run in runs:
        if run_status(Path(root) / run.relpath, run.identity.fingerprint) == "done":
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
                    report.failed[run] = error if isinstance(error, RunFailed) else f"{type(error).__name__}: {error}"
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
