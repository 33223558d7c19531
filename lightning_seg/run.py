"""One home for a run: its keys, its label, its folder, its records and the fingerprint of its settings.

A run is one ``lightning-seg fit`` of one resolved config. Everything that names it is derived here, from
that config, and read back from here by every other part (CLI, grid, aggregation, plots, W&B, notebooks):

- :class:`RunKeys`: ``dataset, model, loss, fraction, fold, seed``, what tables and dashboards group by. The
  ``loss`` key is the loss's *label* (:func:`loss_label`): its registry name, then every argument that differs
  from the loss's default (``additive_lam=0.7``); the same string in the folder, the records, the aggregate
  tables and the W&B config.
- :class:`RunIdentity`: the keys and the run's *settings*, everything that defines what the run computes (the
  resolved model with its ``model_kwargs``, the loss with all its arguments, optimizer and scheduler with
  theirs, the data settings, the training length and validation cadence, precision, the seed, the checkpoint
  selection), with their SHA-256 *fingerprint*. Not in the settings: loggers, progress bars, worker counts,
  output paths, the accelerator (:data:`TRAINER_NOT_DEFINING`, :data:`DATA_NOT_DEFINING`, :data:`OBSERVERS`).
- the folder ``runs/<dataset>/<model>/<loss>/fold<k>_frac<f>_seed<s>-<fingerprint[:8]>``: runs whose settings
  differ never share one (:meth:`RunIdentity.relpath`), and the name stays readable.
- :class:`RunFolder`: the files of a run folder. Records (:class:`Records`) are JSON written atomically; paths
  inside them are relative to the folder, so a moved folder keeps working.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import inspect
import json
import platform
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .atomic import write_json_atomic

#: Where runs go when the config names no ``trainer.default_root_dir``.
RUNS_ROOT = Path("runs")
#: Characters of the fingerprint in a folder name: 8 hex digits; the full fingerprint is in ``run.json``.
SHORT = 8


class Records:
    """Record files of a run folder, by name. A new record is one more line here.

    ``run.json`` is written when ``fit`` starts and updated when it ends; the others are written whole when
    their content is final. Checkpoint paths inside records are relative to the run folder.
    """

    #: identity and state: keys, fingerprint, settings, ``status`` (``training``, ``trained``, ``failed``)
    RUN = "run.json"
    #: the best checkpoint so far: ``path``, ``monitor``, ``mode``, ``score``, ``step``, ``epoch``
    BEST = "best.json"
    #: metrics of the last ``test``, with the checkpoint tested
    TEST_METRICS = "test_metrics.json"
    #: a grid run's final record: keys, fingerprint, test metrics, wall time, host, command
    RESULT = "result.json"
    #: per test image and class: Dice, IoU, HD95, NSD, clDice and the empty-class case (docs/evaluation.md)
    PER_IMAGE = "per_image_metrics.csv"
    #: the last test's evaluation settings, library versions, checkpoint, per-class summaries and calibration
    EVALUATION = "test_evaluation.json"
    #: the last test's reliability diagram
    RELIABILITY = "reliability.png"


class RunFolderError(ValueError):
    """A run folder that cannot be used for the run asked for; the message says why and what to do."""


# --------------------------------------------------------------------------------------------- settings

#: Trainer arguments that do not change what a run computes: where it writes, what it shows, where it runs.
#: ``callbacks`` are read separately (:data:`OBSERVERS`); ``devices``/``num_nodes`` only count when they ask for
#: more than one device (data-parallel training changes the effective batch).
TRAINER_NOT_DEFINING = frozenset(
    {
        "logger",
        "callbacks",
        "default_root_dir",
        "enable_progress_bar",
        "enable_model_summary",
        "enable_checkpointing",
        "log_every_n_steps",
        "profiler",
        "detect_anomaly",
        "num_sanity_val_steps",
        "accelerator",
        "strategy",
        "devices",
        "num_nodes",
        "barebones",
        "inference_mode",
        "use_distributed_sampler",
        "plugins",
        "enable_autolog_hparams",
        "model_registry",
    }
)
#: Data arguments that do not change what a run computes (where the files are, how they are loaded).
DATA_NOT_DEFINING = frozenset({"data_dir", "num_workers", "download", "mirror", "verify"})
#: Module arguments the CLI links from the data (``num_classes``, ...): the data's own settings define them.
LINKED_FROM_DATA = frozenset({"num_classes", "in_channels", "class_names", "ignore_index", "curvilinear_classes"})
#: Module arguments that do not change what training computes: the test-time evaluation settings, recorded with
#: the scores they produce (``Records.EVALUATION``), so that a run can be tested again under another setting.
MODEL_NOT_DEFINING = frozenset({"evaluation"})
#: Callbacks that only observe a run (import paths of base classes); any other callback is part of the settings.
OBSERVERS = (
    "lightning.pytorch.callbacks.ProgressBar",
    "lightning.pytorch.callbacks.ModelSummary",
    "lightning.pytorch.callbacks.LearningRateMonitor",
    "lightning.pytorch.callbacks.DeviceStatsMonitor",
    "lightning_seg.callbacks.LossPartsLogger",
    "lightning_seg.callbacks.PredictionOverlays",
    "lightning_seg.callbacks.HostMemoryReuse",  # how fast a CPU step goes, not what it computes
)
#: Top-level options of the run's config that define it besides model, data and trainer.
CHECKPOINT_DEFINING = ("monitor", "mode")


def import_object(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import {path!r}: {error}") from None


def object_path(obj: Any) -> str:
    """``module.qualname`` of a class or function: one spelling whatever alias the config used."""
    return f"{obj.__module__}.{obj.__qualname__}"


def _plain(value: Any) -> Any:
    """``value`` as JSON data, stable across processes (callables as import paths, no memory addresses)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if inspect.isclass(value) or inspect.isfunction(value):
        return object_path(value)
    return re.sub(r" at 0x[0-9a-f]+", "", repr(value))


def signature_defaults(obj: Any, skip: tuple[str, ...] = ()) -> dict:
    """Defaults of the keyword arguments of a class (its ``__init__`` through the MRO) or a function."""
    defaults: dict = {}
    functions = (
        [base.__init__ for base in reversed(obj.__mro__) if "__init__" in vars(base)] if inspect.isclass(obj) else [obj]
    )
    for function in functions:  # subclasses' defaults win
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in parameters:
            if p.name not in skip and p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                if p.default is not p.empty:
                    defaults[p.name] = p.default
    return _plain(defaults)


def resolve_class_spec(spec: Any, skip: tuple[str, ...] = ()) -> Any:
    """A ``{class_path, init_args}`` spec with its class path canonical and every default filled in; an
    import path (a function such as the module's default ``adam``) canonical; anything else unchanged."""
    if isinstance(spec, Mapping) and "class_path" in spec:
        cls = import_object(spec["class_path"])
        given = {k: v for k, v in (spec.get("init_args") or {}).items() if k not in skip}
        return {"class_path": object_path(cls), "init_args": {**signature_defaults(cls, skip), **_plain(given)}}
    if isinstance(spec, str) and "." in spec:
        return object_path(import_object(spec))
    return _plain(spec)


def _loss_class_spec(spec: Any) -> dict:
    """The loss as ``{class_path, init_args}`` whether the config gave a registry name or a class."""
    from .losses import LOSSES

    if isinstance(spec, str):
        if spec not in LOSSES:
            raise ValueError(f"unknown loss {spec!r}; registered: {', '.join(sorted(LOSSES))}")
        spec = {"class_path": object_path(LOSSES[spec])}
    # ignore_index comes from the data (the module checks that both agree)
    return resolve_class_spec(spec, skip=("ignore_index",))


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def loss_label(spec: Any) -> str:
    """The loss's label: its registry name, then ``_<arg>=<value>`` for each argument off its default.

    >>> loss_label("caml"), loss_label({"class_path": "lightning_seg.losses.Additive", "init_args": {"lam": 0.7}})
    ('caml', 'additive_lam=0.7')
    """
    resolved = _loss_class_spec(spec)
    cls = import_object(resolved["class_path"])
    defaults = signature_defaults(cls, skip=("ignore_index",))
    changed = [f"{k}={_format_value(v)}" for k, v in sorted(resolved["init_args"].items()) if defaults.get(k, ...) != v]
    name = getattr(cls, "name", "") or cls.__name__.lower()
    return re.sub(r"[/\\\s]", "-", "_".join([name, *changed]))


def model_label(model: str, kwargs: Mapping | None) -> str:
    """The model's label: its registry name, then ``_<arg>=<value>`` for each ``model_kwargs`` entry off the
    factory's default (``unet``, ``unet_base_channels=8_depth=3``, ``smp.Unet_encoder_name=resnet34``)."""
    from .models import MODELS

    factory = MODELS.get(model)
    defaults = signature_defaults(factory, skip=("in_channels", "num_classes")) if factory is not None else {}
    changed = [
        f"{k}={_format_value(v)}" for k, v in sorted(_plain(dict(kwargs or {})).items()) if defaults.get(k, ...) != v
    ]
    return re.sub(r"[/\\\s]", "-", "_".join([model, *changed]))


def dataset_label(class_path: str) -> str:
    """``Covid19DataModule`` → ``covid19``."""
    name = class_path.rsplit(".", 1)[-1]
    return name.removesuffix("DataModule").lower() or name.lower()


def _resolved_model_kwargs(model: str, kwargs: Mapping | None) -> dict:
    """``model_kwargs`` with the registered factory's defaults filled in (``smp.<Arch>``: as given)."""
    from .models import MODELS

    factory = MODELS.get(model)
    defaults = signature_defaults(factory, skip=("in_channels", "num_classes")) if factory is not None else {}
    return {**defaults, **_plain(dict(kwargs or {}))}


def _data_parallel(trainer: Mapping) -> int | str:
    """Devices × nodes when the config asks for more than one; 1 otherwise (``auto`` counts as one device)."""
    devices = trainer.get("devices", "auto")
    if isinstance(devices, list):
        count: int | str = len(devices)
    elif isinstance(devices, str) and devices.replace(",", "").strip().isdigit():
        count = len([d for d in devices.split(",") if d.strip()]) if "," in devices else int(devices)
    elif isinstance(devices, int) and devices > 0:
        count = devices
    else:
        count = 1
    return count * int(trainer.get("num_nodes") or 1) if isinstance(count, int) else count


def _is_observer(class_path: str) -> bool:
    cls = import_object(class_path)
    return any(issubclass(cls, import_object(path)) for path in OBSERVERS)


def experiment_settings(config: Mapping) -> dict:
    """The settings that define a run, from its resolved config (``parser.dump`` of a ``fit`` config as a dict).

    Every class is spelled by its canonical import path and carries all its arguments, defaults included, so
    that ``loss: caml`` and ``class_path: lightning_seg.losses.CAML`` are the same settings.
    """
    model = dict(config["model"])
    model_args = {
        k: v for k, v in (model.get("init_args") or {}).items() if k not in LINKED_FROM_DATA | MODEL_NOT_DEFINING
    }
    model_args["loss"] = _loss_class_spec(model_args.get("loss", "caml"))
    if "model" in model_args:
        model_args["model_kwargs"] = _resolved_model_kwargs(model_args["model"], model_args.get("model_kwargs"))
    for key in ("optimizer", "lr_scheduler"):
        if key in model_args:
            model_args[key] = resolve_class_spec(model_args[key], skip=("params", "optimizer"))
    data = dict(config["data"])
    data_args = {k: v for k, v in (data.get("init_args") or {}).items() if k not in DATA_NOT_DEFINING}
    trainer_config = dict(config.get("trainer") or {})
    trainer = {k: _plain(v) for k, v in trainer_config.items() if k not in TRAINER_NOT_DEFINING}
    if _data_parallel(trainer_config) != 1:
        trainer["data_parallel"] = _data_parallel(trainer_config)
    callbacks = trainer_config.get("callbacks") or []
    shaping = [
        resolve_class_spec(cb) for cb in callbacks if isinstance(cb, Mapping) and not _is_observer(cb["class_path"])
    ]
    if shaping:
        trainer["callbacks"] = shaping
    settings = {
        "seed_everything": config.get("seed_everything"),
        "model": {"class_path": object_path(import_object(model["class_path"])), "init_args": _plain(model_args)},
        "data": {"class_path": object_path(import_object(data["class_path"])), "init_args": _plain(data_args)},
        "trainer": trainer,
    }
    checkpoint = config.get("checkpoint")
    if isinstance(checkpoint, Mapping):
        settings["checkpoint"] = {k: _plain(checkpoint.get(k)) for k in CHECKPOINT_DEFINING}
    return settings


def _digest(settings: Mapping) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _changes(old: Any, new: Any, key: str) -> list[str]:
    """``key old → new`` for each setting that differs; a class swapped for another is one change."""
    if isinstance(old, Mapping) and isinstance(new, Mapping) and old.get("class_path") == new.get("class_path"):
        return [
            c
            for k in sorted(old.keys() | new.keys())
            for c in _changes(old.get(k, ...), new.get(k, ...), f"{key}.{k}".lstrip("."))
        ]
    if old == new:
        return []

    def shown(value: Any) -> str:
        if value is ...:
            return "(unset)"
        if isinstance(value, Mapping) and "class_path" in value:
            return value["class_path"]
        return _format_value(value)

    return [f"{key} {shown(old)} → {shown(new)}"]


def settings_diff(old: Mapping, new: Mapping, limit: int = 4) -> str:
    """``trainer.max_epochs 3 → 50, model.init_args.optimizer.init_args.lr 0.001 → 0.01`` (at most ``limit``)."""
    changes = _changes(old, new, "")
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return ", ".join(changes[:limit]) + more


# ------------------------------------------------------------------------------------------------ identity


@dataclass(frozen=True)
class RunKeys:
    """What a run is compared by: dataset, model, loss label, training fraction, fold, seed."""

    dataset: str
    model: str
    loss: str
    fraction: float
    fold: int
    seed: int | None

    @classmethod
    def from_settings(cls, settings: Mapping) -> RunKeys:
        model_args, data_args = settings["model"]["init_args"], settings["data"]["init_args"]
        return cls(
            dataset=dataset_label(settings["data"]["class_path"]),
            model=model_label(model_args["model"], model_args.get("model_kwargs"))
            if "model" in model_args
            else settings["model"]["class_path"].rsplit(".", 1)[-1].lower(),
            loss=loss_label(model_args["loss"]),
            fraction=float(data_args["train_fraction"]),
            fold=int(data_args["fold"]),
            seed=settings.get("seed_everything"),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "loss": self.loss,
            "fraction": self.fraction,
            "fold": self.fold,
            "seed": self.seed,
        }

    @property
    def name(self) -> str:
        """W&B run name: ``caml-fold0-seed0``."""
        return f"{self.loss}-fold{self.fold}-seed{self.seed}"

    @property
    def group(self) -> str:
        """W&B group and plot title: ``<dataset>/<model>/frac<f>``, the runs one comparison panel holds."""
        return group_name(self.dataset, self.model, self.fraction)

    @property
    def leaf(self) -> str:
        return f"fold{self.fold}_frac{self.fraction:g}_seed{self.seed}"


def group_name(dataset: str, model: str, fraction: float) -> str:
    return f"{dataset}/{model}/frac{fraction:g}"


@dataclass(frozen=True)
class RunIdentity:
    """A run's keys and settings; its fingerprint, its cell and its folder follow from them."""

    keys: RunKeys
    settings: dict

    @classmethod
    def from_config(cls, config: Mapping) -> RunIdentity:
        """From a resolved ``fit`` config as a dict (see :func:`experiment_settings`)."""
        settings = experiment_settings(config)
        return cls(RunKeys.from_settings(settings), settings)

    @classmethod
    def from_record(cls, record: Mapping) -> RunIdentity:
        return cls(RunKeys(**record["keys"]), record["settings"])

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the settings (canonical JSON)."""
        return _digest(self.settings)

    @cached_property
    def cell(self) -> str:
        """Fingerprint of the settings without fold and seed: the runs one table cell averages share it."""
        settings = json.loads(json.dumps(self.settings))
        settings.pop("seed_everything", None)
        settings["data"]["init_args"].pop("fold", None)
        return _digest(settings)[:SHORT]

    @property
    def relpath(self) -> Path:
        """``<dataset>/<model>/<loss>/fold<k>_frac<f>_seed<s>-<fingerprint[:8]>``."""
        k = self.keys
        return Path(k.dataset, k.model, k.loss, f"{k.leaf}-{self.fingerprint[:SHORT]}")

    def with_overrides(self, fold: int, fraction: float, seed: int | None) -> RunIdentity:
        """The identity of the same settings with another fold, training fraction and seed (what a grid varies).

        Equal to parsing the config with those three overridden last, without parsing it again.
        """
        settings = json.loads(json.dumps(self.settings))
        settings["data"]["init_args"].update(fold=int(fold), train_fraction=float(fraction))
        settings["seed_everything"] = seed
        return RunIdentity(RunKeys.from_settings(settings), settings)

    def record(self) -> dict:
        return {
            "keys": self.keys.as_dict(),
            "fingerprint": self.fingerprint,
            "cell": self.cell,
            "settings": self.settings,
        }

    def wandb_config(self) -> dict:
        """What W&B gets: the keys, the fingerprint and the cell (so that dashboards never mix settings)."""
        return {**self.keys.as_dict(), "fingerprint": self.fingerprint, "cell": self.cell}


def code_version(path: str | Path | None = None) -> dict:
    """The code that runs: this package's version, and the git commit of the checkout holding ``path`` (default:
    this package) with whether its tracked files differ from that commit (``modified``; untracked files are left
    out). ``commit`` and ``modified`` are ``None`` outside a git checkout or without git, ``modified`` alone when
    ``git status`` fails or takes over 5 s. The status takes no lock (``--no-optional-locks``): runs that start
    together, and the user's own git commands, never find the index locked by it.

    Example:
        >>> sorted(code_version())
        ['commit', 'lightning_seg', 'modified']
    """
    from . import __version__

    folder = str(path or Path(__file__).parent)

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "--no-optional-locks", "-C", folder, *args], capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD") or None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"lightning_seg": __version__, "commit": commit, "modified": None if status is None else bool(status)}


def cpu_info(path: str | Path = "/proc/cpuinfo") -> dict:
    """The processor's name, and its family and model numbers (``"25/17"``), from the first processor of ``path``
    (Linux); ``platform.processor()`` (or the architecture) and ``None`` where that file cannot be read.

    Example:
        >>> sorted(cpu_info())
        ['family/model', 'processor']
    """
    fields: dict[str, str] = {}
    try:
        with open(path, errors="replace") as lines:
            for line in lines:
                if not line.strip():
                    break  # the first processor's block ends
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    family, model = fields.get("cpu family"), fields.get("model")
    return {
        "processor": fields.get("model name") or platform.processor() or platform.machine(),
        "family/model": f"{family}/{model}" if family and model else None,
    }


def machine(device: Any = None) -> dict:
    """What a run's numbers depend on besides its code and settings: the processor (:func:`cpu_info`), the instruction
    set of torch's CPU kernels (``torch.backends.cpu.get_cpu_capability()``: ``AVX512``, ``AVX2``, ...), torch's
    version and intra-op threads, the ``device`` the run trained on, and that device's name when it is a CUDA device
    this process has already used (asking an unused one would start CUDA here, which a fork after it cannot
    inherit). Kernels round differently from one machine to another, and a few hundred steps from scratch carry
    that into other weights: the same commit and settings, with one thread, gave test mIoU 74.82 % on this project's
    machine of 2026-12-03 and 74.34 % on the one that ran the CPU pilot (results/pilot-cpu/README.md).

    Example:
        >>> sorted(machine())
        ['cpu_capability', 'device', 'family/model', 'gpu', 'processor', 'threads', 'torch']
    """
    import torch

    gpu = None
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_initialized():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        **cpu_info(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": None if device is None else str(device),
        "gpu": gpu,
    }


# -------------------------------------------------------------------------------------------------- folder


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunFolder:
    """The files of one run folder: records, checkpoints, logs."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        """The resumable state (weights, optimizer, loops, best so far), written on a time interval."""
        return self.checkpoints / "last.ckpt"

    @property
    def previous_checkpoint(self) -> Path:
        """The resumable state before ``last.ckpt``: what a run resumes from when ``last.ckpt`` is unreadable."""
        return self.checkpoints / "previous.ckpt"

    def best_checkpoint(self, step: int) -> Path:
        """Best weights (no optimizer state) of the validation after optimizer step ``step``."""
        return self.checkpoints / f"best-step{step}.ckpt"

    def record_path(self, name: str) -> Path:
        return self.path / name

    def read(self, name: str) -> dict | None:
        """A record, or ``None`` if there is none; an unreadable one is a :class:`RunFolderError`."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise RunFolderError(f"{path} is unreadable ({error}); delete it or the run folder") from None

    def write(self, name: str, record: Mapping) -> Path:
        return write_json_atomic(self.path / name, dict(record))

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the folder when it lies inside, else absolute."""
        path = Path(path).absolute()
        try:
            return str(path.relative_to(self.path.absolute()))
        except ValueError:
            return str(path)

    def resolve(self, path: str | Path) -> Path:
        """A path from a record: relative ones are relative to this folder."""
        return self.path / path if not Path(path).is_absolute() else Path(path)

    # --- identity and state ---------------------------------------------------------------------------
    def identity(self) -> RunIdentity | None:
        record = self.read(Records.RUN)
        return None if record is None else RunIdentity.from_record(record)

    def status(self) -> str | None:
        record = self.read(Records.RUN)
        return None if record is None else record.get("status")

    def check(self, identity: RunIdentity) -> None:
        """Raise :class:`RunFolderError` unless this folder is new or holds ``identity``'s run."""
        recorded = self.identity()
        if recorded is None:
            leftovers = [p.name for p in (self.checkpoints, self.path / Records.BEST) if p.exists()]
            if leftovers:
                raise RunFolderError(
                    f"{self.path} holds {', '.join(leftovers)} but no {Records.RUN}: it is not a run folder of this "
                    "version; choose another with --trainer.default_root_dir=DIR (or leave it unset)"
                )
            return
        if recorded.fingerprint != identity.fingerprint:
            raise RunFolderError(
                f"{self.path} holds a run with other settings ({settings_diff(recorded.settings, identity.settings)}); "
                f"choose another folder with --trainer.default_root_dir=DIR, or leave it unset for "
                f"{RUNS_ROOT / identity.relpath}"
            )

    def start(self, identity: RunIdentity) -> None:
        """Record ``identity`` (first time) and the status ``training``; the machine is recorded by the attempt that
        ends the training (a resumed run may end on another)."""
        record = self.read(Records.RUN) or {**identity.record(), "created": _now(), "code": code_version()}
        self.write(Records.RUN, {**record, "status": "training", "reason": None, "machine": None, "updated": _now()})

    def set_status(self, status: str, **fields: Any) -> None:
        record = self.read(Records.RUN)
        if record is not None:
            self.write(Records.RUN, {**record, "status": status, "reason": None, **fields, "updated": _now()})

    # --- best checkpoint ------------------------------------------------------------------------------
    def best(self) -> dict | None:
        return self.read(Records.BEST)

    def best_path(self) -> Path:
        """The best checkpoint recorded in ``best.json``; a :class:`RunFolderError` saying what to do if none."""
        best = self.best()
        if best is None:
            raise RunFolderError(
                f"no best checkpoint recorded in {self.path} ({Records.BEST} not found): run `lightning-seg fit` "
                "with the same config first, or pass --ckpt_path PATH"
            )
        path = self.resolve(best["path"])
        if not path.is_file():
            raise RunFolderError(f"{self.path / Records.BEST} names {best['path']}, which does not exist")
        return path


def find_run_folders(root: str | Path) -> Iterator[RunFolder]:
    """Every run folder under ``root`` (one with a ``run.json``), sorted; ``root`` itself may be one."""
    root = Path(root)
    for record in sorted(root.rglob(Records.RUN)):
        yield RunFolder(record.parent)
