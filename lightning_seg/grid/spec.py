"""Experiment grids: a YAML file that expands into single ``lightning-seg fit`` runs.

A grid names its axes once and crosses them in blocks::

    config_dir: ..                  # data/<name>.yaml and losses/<name>.yaml live here (relative to this file)
    base: [base.yaml]               # composed first by every run, relative to config_dir
    args: {trainer.max_epochs: 200} # overrides for every run
    fold: [0, 1, 2, 3, 4]           # axis defaults, used by blocks that do not name the axis
    seed: [0, 1, 2]
    variants:                       # named values of an axis; a plain name has a default meaning (below)
      loss:
        additive_lam=0.7: {config: losses/additive.yaml, args: {model.init_args.loss.init_args.lam: 0.7}}
    blocks:                         # each block is a cartesian product of its axes
      - {data: [chase], model: [unet], loss: [ce, dice, additive_lam=0.7, ml, caml], fraction: [1.0, 0.25]}

Without a variant, a ``data`` value ``x`` composes ``data/x.yaml``, a ``loss`` value ``losses/x.yaml``, and a
``model`` value sets ``model.init_args.model: x`` (a name of :func:`lightning_seg.models.build_model`).
The values are names in the grid file only: a run's keys, labels and folder come from its resolved config
(:mod:`lightning_seg.run`), exactly as for a hand-started ``lightning-seg fit``, so the shipped grids name their
variants by those labels. Each run gets the folder ``<data>/<model>/<loss>/fold<k>_frac<f>_seed<s>-<fingerprint>``
under the grid's output root.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from ..run import RunIdentity, RunKeys, import_object, settings_diff

AXES = ("data", "model", "loss", "fraction", "fold", "seed")
NAMED_AXES = ("data", "model", "loss")
GRID_KEYS = {"config_dir", "base", "args", "variants", "blocks", *AXES}
BLOCK_KEYS = {"args", *AXES}
VARIANT_KEYS = {"config", "args"}
#: The options each run's fold, fraction and seed set (last on its command line).
AXIS_OPTIONS = ("data.init_args.fold", "data.init_args.train_fraction", "seed_everything")


class GridError(ValueError):
    """A grid file that cannot be expanded; the message names the file and the offending entry."""


@dataclass(frozen=True, eq=False)
class Run:
    """One training run of a grid: its identity (keys, settings, fingerprint), the config files it composes and
    its command-line overrides. Two runs are the same run when their fingerprints are equal."""

    identity: RunIdentity
    configs: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    #: the data module's class path and arguments as configured (for :func:`check_runs`)
    data_config: dict = field(default_factory=dict, repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and self.identity.fingerprint == other.identity.fingerprint

    def __hash__(self) -> int:
        return hash(self.identity.fingerprint)

    @property
    def data(self) -> str:
        return self.identity.keys.dataset

    @property
    def model(self) -> str:
        return self.identity.keys.model

    @property
    def loss(self) -> str:
        return self.identity.keys.loss

    @property
    def fraction(self) -> float:
        return self.identity.keys.fraction

    @property
    def fold(self) -> int:
        return self.identity.keys.fold

    @property
    def seed(self) -> int:
        return self.identity.keys.seed

    @property
    def keys(self) -> dict:
        """``dataset, model, loss, fraction, fold, seed`` (:class:`lightning_seg.run.RunKeys`)."""
        return self.identity.keys.as_dict()

    @property
    def relpath(self) -> Path:
        """The run's folder under the grid's output root (:attr:`lightning_seg.run.RunIdentity.relpath`)."""
        return self.identity.relpath

    def command(self, run_dir: Path) -> list[str]:
        """The ``lightning-seg fit`` command line of this run, writing into ``run_dir``, testing after fit.

        Run again after a crash or a kill, the same command resumes the run from its last checkpoint.
        """
        cmd = [sys.executable, "-m", "lightning_seg.cli", "fit"]
        for config in self.configs:
            cmd += ["--config", config]
        return [*cmd, *self.args, *self.axis_args(), f"--trainer.default_root_dir={run_dir}", "--test_after_fit=true"]

    def axis_args(self) -> list[str]:
        return [
            f"--{option}={value}"
            for option, value in zip(AXIS_OPTIONS, (self.fold, self.fraction, self.seed), strict=True)
        ]


@cache
def _template(configs: tuple[str, ...], args: tuple[str, ...]) -> tuple[RunIdentity, dict]:
    """The identity and data config of ``fit`` with these configs and overrides, parsed once per process."""
    from ..cli import fit_identity

    identity, resolved = fit_identity([arg for config in configs for arg in ("--config", config)] + list(args))
    return identity, resolved["data"]


def check_runs(runs: Iterable[Run]) -> None:
    """Build each distinct data module of ``runs`` once (nothing is loaded): a fold or training fraction that its
    split file does not have is a :class:`GridError` before any run starts, naming every run it concerns."""
    problems: dict[str, list[str]] = {}
    seen: dict[str, str | None] = {}
    for run in runs:
        data = run.data_config
        init_args = {**(data.get("init_args") or {}), "fold": run.fold, "train_fraction": run.fraction}
        key = json.dumps([data.get("class_path"), init_args], sort_keys=True, default=str)
        if key not in seen:
            seen[key] = None
            try:
                import_object(data["class_path"])(**init_args)
            except Exception as error:  # noqa: BLE001 - each data error is reported with its runs
                seen[key] = f"{data['class_path'].rsplit('.', 1)[-1]}: {error}"
        if seen[key] is not None:
            problems.setdefault(seen[key], []).append(str(run.relpath))
    if problems:
        lines = [
            f"{message} (runs: {', '.join(folders[:3])}{' …' if len(folders) > 3 else ''})"
            for message, folders in problems.items()
        ]
        raise GridError("the data of some runs cannot be built; nothing was started:\n  " + "\n  ".join(lines))


def _as_list(value, where: str) -> list:
    if isinstance(value, list):
        if not value:
            raise GridError(f"{where}: the list is empty")
        return value
    return [value]


def _paths(config_dir: Path, value, where: str) -> list[str]:
    """Config files named by a grid entry (one name or a list, or nothing), resolved against ``config_dir``."""
    if value is None:
        return []
    paths = [config_dir / name for name in _as_list(value, where)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise GridError(f"{where}: config file(s) not found: {missing}")
    return [str(p) for p in paths]


def _override(key: str, value) -> str:
    """``--key=value`` with the value in the syntax jsonargparse reads (JSON for lists and mappings)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | dict):
        text = json.dumps(value)
    elif value is None:
        text = "null"
    else:
        text = str(value)
    return f"--{key}={text}"


def _check_keys(entry: Mapping, allowed: set, where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise GridError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


@dataclass
class Grid:
    """A parsed grid file; :meth:`runs` expands it."""

    path: Path
    config_dir: Path
    base: list[str]
    args: dict
    defaults: dict
    variants: dict
    blocks: list[dict]

    @classmethod
    def load(cls, path: str | Path) -> Grid:
        path = Path(path)
        if not path.is_file():
            raise GridError(f"grid file {path} does not exist")
        spec = yaml.safe_load(path.read_text()) or {}
        if not isinstance(spec, dict):
            raise GridError(f"{path}: a grid file is a mapping with a 'blocks' list")
        _check_keys(spec, GRID_KEYS, str(path))
        if not spec.get("blocks"):
            raise GridError(f"{path}: no 'blocks'; a grid needs at least one block of axes to cross")
        config_dir = (path.parent / spec.get("config_dir", ".")).resolve()
        variants = spec.get("variants") or {}
        _check_keys(variants, set(NAMED_AXES), f"{path}: variants")
        for axis, named in variants.items():
            for name, variant in named.items():
                _check_keys(variant, VARIANT_KEYS, f"{path}: variants.{axis}.{name}")
        return cls(
            path=path,
            config_dir=config_dir,
            base=_paths(config_dir, spec.get("base"), f"{path}: base"),
            args=dict(spec.get("args") or {}),
            defaults={axis: spec[axis] for axis in AXES if axis in spec},
            variants=variants,
            blocks=list(spec["blocks"]),
        )

    @property
    def name(self) -> str:
        return self.path.stem

    def _resolve(self, axis: str, name: str, where: str) -> tuple[list[str], dict]:
        """Config files and overrides that one value of a named axis stands for."""
        variant = self.variants.get(axis, {}).get(name)
        if variant is not None:
            return _paths(self.config_dir, variant.get("config"), where), dict(variant.get("args") or {})
        if axis == "model":
            return [], {"model.init_args.model": name}
        config = self.config_dir / ("data" if axis == "data" else "losses") / f"{name}.yaml"
        if not config.is_file():
            raise GridError(f"{where}: {axis} '{name}' is neither a variant in the grid nor a config at {config}")
        return [str(config)], {}

    def runs(self, overrides: Iterable[str] = ()) -> list[Run]:
        """Every run of every block, in block order; ``overrides`` (``key=value``) are appended to each run's args.

        Each run's identity comes from its resolved config (:func:`lightning_seg.cli.fit_identity`), parsed once
        per distinct (configs, overrides) and completed with the run's fold, fraction and seed. The same run named
        by two blocks is kept once; two runs with the same keys but other settings are an error.
        """
        extra = []
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise GridError(f"override {item!r} is not key=value")
            if key.removeprefix("--") in AXIS_OPTIONS:
                raise GridError(
                    f"--set {key.removeprefix('--')}: fold, fraction and seed are the grid's axes; set them in the grid "
                    "file (fold: [...], fraction: [...], seed: [...])"
                )
            extra.append(_override(key.removeprefix("--"), yaml.safe_load(value)))
        runs: dict[Run, Run] = {}
        by_keys: dict[RunKeys, Run] = {}
        for index, block in enumerate(self.blocks):
            where = f"{self.path}: blocks[{index}]"
            if not isinstance(block, dict):
                raise GridError(f"{where}: a block is a mapping of axes")
            _check_keys(block, BLOCK_KEYS, where)
            axes = {}
            for axis in AXES:
                if axis not in block and axis not in self.defaults:
                    raise GridError(f"{where}: axis '{axis}' is given neither in the block nor at the top level")
                axes[axis] = _as_list(block.get(axis, self.defaults.get(axis)), f"{where}.{axis}")
            for fraction in axes["fraction"]:
                if not isinstance(fraction, int | float) or not 0 < fraction <= 1:
                    raise GridError(f"{where}: fraction {fraction!r} is not in (0, 1]")
            args = {**self.args, **(block.get("args") or {})}
            for data, model, loss, fraction, fold, seed in itertools.product(*(axes[a] for a in AXES)):
                configs, run_args = list(self.base), dict(args)
                for axis, value in (("data", data), ("model", model), ("loss", loss)):
                    axis_configs, axis_args = self._resolve(axis, str(value), where)
                    configs += axis_configs
                    run_args.update(axis_args)
                command_args = tuple(_override(k, v) for k, v in run_args.items()) + tuple(extra)
                try:
                    template, data_config = _template(tuple(configs), command_args)
                except ValueError as error:
                    raise GridError(f"{where}: data={data}, model={model}, loss={loss}: {error}") from None
                identity = template.with_overrides(int(fold), float(fraction), int(seed))
                run = Run(identity=identity, configs=tuple(configs), args=command_args, data_config=data_config)
                earlier = by_keys.get(identity.keys)
                if earlier is not None and earlier != run:
                    raise GridError(
                        f"{where}: run {run.relpath.parent}/{identity.keys.leaf} is also defined by an earlier block "
                        f"with other settings ({settings_diff(earlier.identity.settings, identity.settings)}): tables "
                        "could not tell them apart"
                    )
                by_keys[identity.keys] = run
                runs.setdefault(run, run)
        return list(runs.values())
