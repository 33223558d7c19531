"""The trainer's profiler when no profiler is asked for."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from lightning.pytorch.profilers import PassThroughProfiler

#: one context for every action: entering and leaving it does nothing, so it can be shared and nested
_NOTHING = nullcontext()


class NullProfiler(PassThroughProfiler):
    """Lightning's default profiler (:class:`~lightning.pytorch.profilers.PassThroughProfiler`: measures
    nothing) without its cost per hook.

    Lightning wraps every hook it calls, once per callback, in ``trainer.profiler.profile(name)``; the default
    profiler's ``profile`` is a generator-based context manager, built afresh at each call. A training step calls
    13 such hooks plus 6 per callback (55 with the CLI's 7 callbacks; counted with ``--trainer.profiler=simple``).
    Here ``profile`` returns one shared context that does nothing: what that saves per step is measured by
    ``benchmarks/turns.py --compare profiler`` (benchmarks/README.md).

    The CLI gives it to the trainer when the config asks for no profiler (``trainer.profiler: null``); a
    profiler given in the config (``--trainer.profiler=simple``, ``advanced``, a class) is used as it is.

    Example:
        >>> profiler = NullProfiler()
        >>> with profiler.profile("run_training_batch"):
        ...     pass
        >>> profiler.summary()
        ''
    """

    def profile(self, action_name: str) -> AbstractContextManager:
        return _NOTHING
