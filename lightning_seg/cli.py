"""``lightning-seg``: LightningCLI over :class:`SegmentationModule` and any :class:`SegmentationDataModule`.

``lightning-seg fit --config …`` trains one run into its folder (:mod:`lightning_seg.run`); the same command
again resumes it where it stopped, or says it has finished. ``lightning-seg test --config … --ckpt_path best``
evaluates the best checkpoint of that fit. Errors print one line naming the option or file and the fix;
``--debug`` (or ``LIGHTNING_SEG_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import os
import re
import signal
import sys
import warnings
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import yaml
from jsonargparse import Namespace
from jsonargparse._formatters import DefaultHelpFormatter
from lightning.pytorch.callbacks import Checkpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .callbacks import CheckpointError, ModelSize, NonFiniteError, NonFiniteGuard, RunCheckpoint
from .callbacks.checkpoint import inspect_checkpoint
from .data import SegmentationDataModule
from .losses import LOSSES, SegmentationLoss
from .models import MODELS
from .module import SegmentationModule
from .profilers import NullProfiler
from .run import RUNS_ROOT, Records, RunFolder, RunFolderError, RunIdentity, import_object, machine, object_path

#: Set to 1 for full tracebacks instead of one-line errors (same as ``--debug``).
DEBUG_VARIABLE = "LIGHTNING_SEG_DEBUG"
LOSS_OPTION = "--model.init_args.loss"


class ConfigError(ValueError):
    """A config file or option that cannot work; the message names it and the fix."""


def say(message: str) -> None:
    print(f"lightning-seg: {message}", flush=True)


# -------------------------------------------------------------------------------------- command line


def _option_value(args: list[str], index: int) -> tuple[str | None, int]:
    """The value of the option at ``args[index]`` (``--opt=value`` or ``--opt value``) and the next index."""
    arg = args[index]
    if "=" in arg:
        return arg.split("=", 1)[1], index + 1
    return (args[index + 1], index + 2) if index + 1 < len(args) else (None, index + 1)


def read_config_file(path: str) -> dict:
    """A ``--config`` file as a dict; a :class:`ConfigError` naming the file for a missing file or bad YAML."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"--config {path}: YAML syntax error{where}: {problem}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"--config {path}: a config file is a mapping of options, got {type(data).__name__}")
    return data or {}


def _nested(data: Mapping, *keys: str):
    for key in keys:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def prepare_args(args: list[str]) -> list[str]:
    """Check every ``--config`` file, and let a registry loss name take options.

    jsonargparse cannot apply ``--model.init_args.loss.init_args.pbar=per_pixel`` to a loss given by its registry
    name (``caml``, from the command line, a config file or the module's default). Before such an option, and
    before a config file that sets the loss's ``init_args`` only, the name is replaced by its class path: the
    same loss, now with options.
    """
    current = inspect.signature(SegmentationModule).parameters["loss"].default
    out: list[str] = []

    def expand() -> None:
        nonlocal current
        if isinstance(current, str) and current in LOSSES:
            current = object_path(LOSSES[current])
            out.append(f"{LOSS_OPTION}={current}")

    index = 0
    while index < len(args):
        arg = args[index]
        option = arg.split("=", 1)[0]
        if option in ("--config", "-c"):
            value, following = _option_value(args, index)
            if value is None:
                raise ConfigError("--config needs a file name")
            loss = _nested(read_config_file(value), "model", "init_args", "loss")
            if isinstance(loss, Mapping) and "class_path" not in loss:
                expand()
            elif loss is not None:
                current = loss
            out += args[index:following]
            index = following
            continue
        if option == LOSS_OPTION:
            value, following = _option_value(args, index)
            current = value
            out += args[index:following]
            index = following
            continue
        if option.startswith(LOSS_OPTION + "."):
            expand()
        out.append(arg)
        index += 1
    return out


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description printed as written (the short form of the options)."""


FIT_HELP = """\
Train a model with a loss on a dataset; the run goes to its own folder, and the same command again resumes it.

  lightning-seg fit --config configs/base.yaml --config configs/data/synthetic.yaml --config configs/losses/caml.yaml

The options changed most often (every option is listed below them):
  --config FILE                                 a YAML config (repeatable; later files and options win)
  --model.init_args.model NAME                  unet | transunet | convformer_unet | tiny | smp.<Arch>
  --model.init_args.model_kwargs DICT           e.g. '{base_channels: 16}'
  --model.init_args.loss NAME                   ce | dice | additive | ml | caml | caml_fixed_r | ... (docs/losses.md)
  --model.init_args.loss.init_args.ARG VALUE    a loss argument, e.g. --model.init_args.loss.init_args.lam=0.3
  --model.init_args.optimizer CLASS             default Adam with lr 1e-3, e.g. torch.optim.SGD
  --model.init_args.optimizer.init_args.lr LR   the learning rate
  --data.init_args.fold K                       cross-validation fold (0-4)
  --data.init_args.train_fraction F             share of the training set, e.g. 0.125
  --trainer.max_steps N                         training length in optimizer steps (or --trainer.max_epochs N)
  --seed_everything S                           the seed
  --trainer.default_root_dir DIR                the run folder (default runs/<data>/<model>/<loss>/fold<k>_frac<f>_seed<s>-<fingerprint>)
  --test_after_fit true                         test the best checkpoint when training ends
  --checkpoint.every_minutes M                  least time between two resumable checkpoints (default 5)
  --nonfinite.patience K                        stop after K non-finite steps in a row (default 1; 0: no check)
  --ckpt_path last|PATH                         resume from this checkpoint (default: the run's own last.ckpt)
  --debug                                       full tracebacks (or LIGHTNING_SEG_DEBUG=1)
"""
TEST_HELP = """\
Evaluate a checkpoint on the test split and write test_metrics.json into the run folder.

  lightning-seg test --config <the fit's configs and options> --ckpt_path best

  --ckpt_path best|last|PATH   the run's best checkpoint (best.json), its last.ckpt, or a file
  --debug                      full tracebacks (or LIGHTNING_SEG_DEBUG=1)
"""
USAGE = "lightning-seg {command} [--config FILE ...] [--OPTION VALUE ...]   (--help for all options)"


def _parser_kwargs() -> dict:
    sub = {"exit_on_error": False, "formatter_class": HelpFormatter}
    return {
        **sub,  # jsonargparse gives subcommands the main parser's formatter
        "description": "Train (fit) and evaluate (test) segmentation models and losses; `lightning-seg fit --help`.",
        "fit": {**sub, "description": FIT_HELP, "usage": USAGE.format(command="fit")},
        "test": {**sub, "description": TEST_HELP, "usage": USAGE.format(command="test")},
        "validate": {**sub, "usage": USAGE.format(command="validate")},
        "predict": {**sub, "usage": USAGE.format(command="predict")},
    }


def _short_parse_error(message: str) -> str:
    """jsonargparse's nested complaint as one line: ``--trainer.max_epochs: expected int, given 'abc'``."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    if not keys:
        return " ".join(line.strip() for line in message.splitlines()[:2] if line.strip())
    option = "--" + ".init_args.".join(keys)
    lines = [line.strip().removeprefix("- ").strip() for line in message.splitlines()]
    classes = [found[1] for line in lines if (found := re.match(r"Problem with given class_path '([^']+)'", line))]
    detail = next(
        (
            line
            for line in lines
            if line
            and not re.match(
                r"(Parser key|Does not validate|Subtypes|Errors|Problem with|Given value|Expected a <class 'NoneType'>)",
                line,
            )
        ),
        "invalid value",
    )
    detail = re.sub(r"Expected a <class '([\w.]+)'>", r"expected \1", detail)
    given = next(
        (line.removeprefix("Given value: ") for line in reversed(lines) if line.startswith("Given value:")), None
    )
    where = f" ({classes[-1]})" if classes else ""
    shown = f", given {given!r}" if given is not None and not given.startswith("NestedArg") else ""
    return f"{option}{where}: {detail}{shown}"


# ------------------------------------------------------------------------------------------------ quiet


_NOISE = (
    "TPU available",
    "HPU available",
    "💡 Tip",
    "litlogger",
    "LitLogger",
    "Skipping setting a default `ModelSummary`",
    "Seed set to",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(noise in record.getMessage() for noise in _NOISE)


def quiet() -> None:
    """Drop the per-run lines that say nothing about the run (accelerators it has no use for, adverts,
    library deprecations it cannot act on)."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.fabric.utilities.seed",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    # Logging steps are counted over the whole run, across epoch ends (module.is_logging_step), so an epoch
    # shorter than log_every_n_steps still logs: Lightning's warning about it does not apply.
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval")
    # A resume from inside an epoch goes on from the next batch (data.base.resume_position): the training loader
    # need not be resumable in Lightning's sense.
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")


# -------------------------------------------------------------------------------------------------- CLI


def _label_error(error: BaseException, components: dict[str, type], config: Namespace) -> ConfigError:
    """An error raised while building the classes of the config, as one line naming the option it came from:
    the component (``data``, ``model``, ...) whose ``__init__`` raised it, and the argument its message starts with."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    message = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
    frames = []
    traceback = root.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for frame in reversed(frames):  # innermost first
        owner = frame.f_locals.get("self")
        key = next((key for key, cls in components.items() if isinstance(owner, cls)), None)
        if key is None:
            continue
        value = config.get(key)
        subclass_spec = isinstance(value, Namespace) and "init_args" in value
        arguments = value.init_args if subclass_spec else value
        names = sorted(vars(arguments), key=len, reverse=True) if isinstance(arguments, Namespace) else []
        argument = next((name for name in names if message.startswith(name)), None)
        option = f"--{key}" + (f"{'.init_args' if subclass_spec else ''}.{argument}" if argument else "")
        return ConfigError(f"{option}: {message}")
    return ConfigError(message)


def _is_a(callback, cls: type) -> bool:
    return (
        issubclass(import_object(callback.class_path), cls)
        if isinstance(callback, Namespace)
        else isinstance(callback, cls)
    )


def _callbacks(config: Namespace) -> list:
    callbacks = config.trainer.get("callbacks") or []
    return list(callbacks) if isinstance(callbacks, list) else [callbacks]


class SegmentationCLI(LightningCLI):
    """LightningCLI that gives each run its folder and records, resumes it, and reports errors in one line."""

    def add_core_arguments_to_parser(self, parser) -> None:
        """Model and data first, so that ``--help`` shows the project's own options before the trainer's."""
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data)
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, test the best checkpoint in the same process (fit only).",
        )
        # Always present, configured under `checkpoint:` and `nonfinite:` (not in trainer.callbacks).
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        for attribute in ("num_classes", "in_channels", "class_names", "ignore_index", "curvilinear_classes"):
            parser.link_arguments(f"data.{attribute}", f"model.init_args.{attribute}", apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        """``args`` is always given (:func:`build_cli` reads ``sys.argv``), so LightningCLI's warning about
        arguments given twice does not apply."""
        self.config = parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        """Keep the config as given when ``--ckpt_path`` names a file (resuming a fit, testing a checkpoint).

        LightningCLI would re-parse the model from the checkpoint's hyperparameters, which resets every
        argument the module does not save (the loss, the optimiser) to its default: a resumed ML run would go
        on as CAML. Here the config, not the checkpoint, is the record of a run.
        """

    @property
    def active_config(self) -> Namespace:
        """The parsed config of the subcommand being run (the whole config without subcommands)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def resolved_config(self) -> dict:
        parser = self._parser(self.subcommand)
        return yaml.safe_load(parser.dump(self.active_config, skip_none=False, skip_validation=True))

    def _check_names(self, config: Namespace) -> None:
        model_args = config.model.init_args
        loss = model_args.get("loss")
        if isinstance(loss, str) and loss not in LOSSES:
            raise ConfigError(f"{LOSS_OPTION}: unknown loss {loss!r}; registered: {', '.join(sorted(LOSSES))}")
        model = model_args.get("model")
        if isinstance(model, str) and model not in MODELS and not model.startswith("smp."):
            raise ConfigError(
                f"--model.init_args.model: unknown model {model!r}; registered: {', '.join(sorted(MODELS))}, "
                "or smp.<Arch> for a segmentation-models-pytorch architecture"
            )
        for callback in _callbacks(config):
            if _is_a(callback, Checkpoint):
                raise ConfigError(
                    f"--trainer.callbacks: {callback.class_path} is a checkpoint callback; checkpoints are configured "
                    f"under `checkpoint:` ({', '.join(inspect.signature(RunCheckpoint).parameters)}): remove it from "
                    "trainer.callbacks"
                )

    def before_instantiate_classes(self) -> None:
        config = self.active_config
        self._check_names(config)
        self.identity = RunIdentity.from_config(self.resolved_config())
        trainer = config.trainer
        self.run_folder = RunFolder(trainer.default_root_dir or RUNS_ROOT / self.identity.relpath)
        if self.subcommand in ("fit", "test", "validate"):
            self.run_folder.check(self.identity)
        trainer.default_root_dir = str(self.run_folder.path)
        callbacks = _callbacks(config)
        if trainer.get("enable_progress_bar") is False:  # the option wins over a progress bar in the config's list
            callbacks = [cb for cb in callbacks if not _is_a(cb, ProgressBar)]
        summaries = [cb for cb in callbacks if _is_a(cb, ModelSummary)]
        if trainer.get("enable_model_summary") is not False and not summaries:
            callbacks.append(Namespace(class_path=object_path(ModelSize), init_args=Namespace()))
        trainer.callbacks = callbacks
        # A CSV log in the run directory always, beside whatever loggers the config adds (W&B, ...).
        if trainer.logger is False:
            return
        loggers = (
            []
            if trainer.logger in (None, True)
            else list(trainer.logger)
            if isinstance(trainer.logger, list)
            else [trainer.logger]
        )
        keys = self.identity.keys
        for logger in loggers:
            init_args = logger.get("init_args")
            if init_args is not None and "save_dir" in init_args and init_args.save_dir is None:
                init_args.save_dir = trainer.default_root_dir
            if logger.class_path.endswith("WandbLogger") and init_args is not None:
                # W&B names from the run's keys, unless the config chose its own.
                if init_args.get("name") is None:
                    init_args.name = keys.name
                if "group" in init_args and init_args.group is None:
                    init_args.group = keys.group
        if not any(logger.class_path.endswith(".CSVLogger") for logger in loggers):
            csv = Namespace(
                class_path="lightning.pytorch.loggers.CSVLogger",
                init_args=Namespace(save_dir=trainer.default_root_dir, name="logs"),
            )
            loggers.insert(0, csv)
        trainer.logger = loggers

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            components = {"data": SegmentationDataModule, "model.init_args.loss": SegmentationLoss}
            components |= {"model": SegmentationModule}
            components |= {"checkpoint": RunCheckpoint, "nonfinite": NonFiniteGuard}
            raise _label_error(error, components, self.active_config) from error

    def instantiate_trainer(self, **kwargs):
        """The trainer; with no profiler in the config, with :class:`~lightning_seg.profilers.NullProfiler` (what
        Lightning's default does, at less cost per hook) instead of Lightning's default."""
        if self._get(self.config_init, "trainer", default={}).get("profiler") is None:
            kwargs.setdefault("profiler", NullProfiler())
        return super().instantiate_trainer(**kwargs)

    @property
    def checkpoints(self) -> RunCheckpoint:
        return next(cb for cb in self.trainer.callbacks if isinstance(cb, RunCheckpoint))

    def log_config_to_wandb(self) -> None:
        """Put the resolved config (key ``cli``), the run keys and the fingerprint into every W&B run."""
        wandb_loggers = [lg for lg in self.trainer.loggers if isinstance(lg, _LightningWandbLogger)]
        if not wandb_loggers:
            return
        run_config = {**self.identity.wandb_config(), "cli": self.resolved_config()}
        for logger in wandb_loggers:
            if hasattr(logger, "set_run_config"):
                logger.set_run_config(run_config)
            else:
                logger.experiment.config.update(run_config, allow_val_change=True)

    # --- fit ------------------------------------------------------------------------------------------
    def before_fit(self) -> None:
        self.log_config_to_wandb()

    def _resume_from(self, ckpt_path: str | None) -> Path | None:
        """The checkpoint fit goes on from: ``ckpt_path`` if it names a file, else the run's own ``last.ckpt``
        (``previous.ckpt`` if that is unreadable); ``None`` to start from scratch."""
        folder = self.run_folder
        if ckpt_path not in (None, "last"):
            if ckpt_path == "best":
                raise ConfigError(
                    "--ckpt_path best: a best checkpoint holds weights only; fit resumes from last or PATH"
                )
            if not inspect_checkpoint(ckpt_path)["resumable"]:
                raise CheckpointError(
                    f"--ckpt_path {ckpt_path}: holds weights only (no optimizer state); fit cannot resume from it"
                )
            return Path(ckpt_path)
        set_aside = False
        for candidate in (folder.last_checkpoint, folder.previous_checkpoint):
            if not candidate.exists():
                continue
            try:
                info = inspect_checkpoint(candidate)
            except CheckpointError as error:
                corrupt = candidate.with_name(candidate.name + ".corrupt")
                os.replace(candidate, corrupt)
                say(f"{error}; set aside as {folder.relative(corrupt)}")
                set_aside = True
                continue
            say(
                f"resuming {folder.path} from {folder.relative(candidate)} (step {info['step']}, epoch {info['epoch']})"
            )
            return candidate
        if ckpt_path == "last":
            raise CheckpointError(f"--ckpt_path last: no resumable checkpoint in {folder.checkpoints}")
        if set_aside:
            say(f"no readable resumable checkpoint in {folder.checkpoints}: starting {folder.path} again from scratch")
        return None

    def fit(self, model, datamodule=None, ckpt_path: str | None = None, weights_only: bool | None = None) -> None:
        folder = self.run_folder
        resume = self._resume_from(ckpt_path)
        self._trained_before = resume is None and ckpt_path is None and folder.status() == "trained"
        if self._trained_before:
            say(f"{folder.path} has finished training; nothing to train (delete the folder to train it again)")
            return
        folder.start(self.identity)
        try:
            self.trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        except NonFiniteError as error:
            folder.set_status("failed", reason=str(error), machine=machine(self.trainer.strategy.root_device))
            raise
        best = folder.best()
        folder.set_status(
            "trained",
            steps=self.trainer.global_step,
            epochs=self.trainer.current_epoch,
            checkpoint_writes=self.checkpoints.writes,
            machine=machine(self.trainer.strategy.root_device),
        )
        if best is None:
            say(f"{folder.path}: trained {self.trainer.global_step} steps; no validation recorded a best checkpoint")
        else:
            say(
                f"{folder.path}: trained {self.trainer.global_step} steps; best {best['monitor']} {best['score']:.4f} "
                f"at step {best['step']} ({best['path']})"
            )

    def after_fit(self) -> None:
        if self.active_config.get("test_after_fit"):
            self.test(self.model, self.datamodule, ckpt_path="best" if self.run_folder.best() else None)
        if self.run_folder.status() == "trained":
            self.checkpoints.finish()

    # --- test -----------------------------------------------------------------------------------------
    def _checkpoint_to_evaluate(self, ckpt_path: str | None) -> Path | None:
        folder = self.run_folder
        if ckpt_path is None:
            return None
        path = (
            folder.best_path()
            if ckpt_path == "best"
            else folder.last_checkpoint
            if ckpt_path == "last"
            else Path(ckpt_path)
        )
        inspect_checkpoint(path)
        return path

    def test(
        self, model, datamodule=None, ckpt_path: str | None = None, verbose: bool = True, weights_only=None
    ) -> None:
        self.log_config_to_wandb()
        path = self._checkpoint_to_evaluate(ckpt_path)
        self.trainer.test(model, datamodule=datamodule, ckpt_path=path, verbose=verbose, weights_only=True)
        record = write_test_metrics(self.trainer, self.run_folder, self.identity, path)
        miou = record["metrics"].get("test/miou")
        tested = record["ckpt_path"] or "the weights in memory"
        say(f"{self.run_folder.path}: test/miou {'–' if miou is None else f'{miou:.4f}'} with {tested}")

    def validate(
        self, model, datamodule=None, ckpt_path: str | None = None, verbose: bool = True, weights_only=None
    ) -> None:
        path = self._checkpoint_to_evaluate(ckpt_path)
        self.trainer.validate(model, datamodule=datamodule, ckpt_path=path, verbose=verbose, weights_only=True)


def write_test_metrics(trainer, folder: RunFolder, identity: RunIdentity, checkpoint: Path | None) -> dict:
    """Write the ``test/`` metrics of the last test, the run's keys and the checkpoint tested to
    ``test_metrics.json`` in the run folder, atomically: the record that grids and aggregation read."""
    # NaN (a class absent from prediction and target) as null, so that the file is strict JSON.
    metrics = {
        k: None if math.isnan(float(v)) else float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith("test/")
    }
    info = inspect_checkpoint(checkpoint) if checkpoint is not None else {}
    record = {
        "keys": identity.keys.as_dict(),
        "fingerprint": identity.fingerprint,
        "metrics": metrics,
        "ckpt_path": folder.relative(checkpoint) if checkpoint is not None else None,
        "ckpt_step": info.get("step"),
        "ckpt_epoch": info.get("epoch"),
    }
    folder.write(Records.TEST_METRICS, record)
    return record


CLI_ARGUMENTS = {
    "model_class": SegmentationModule,
    "datamodule_class": SegmentationDataModule,
    "subclass_mode_model": True,
    "subclass_mode_data": True,
    "save_config_kwargs": {"overwrite": True},
    "auto_configure_optimizers": False,
}


def build_cli(args: list[str] | None = None, run: bool = True) -> SegmentationCLI:
    """Parse ``args`` (``sys.argv`` when ``None``) and, with ``run``, execute the subcommand."""
    quiet()
    args = prepare_args(list(sys.argv[1:] if args is None else args))
    try:
        return SegmentationCLI(**CLI_ARGUMENTS, args=args, run=run, parser_kwargs=_parser_kwargs())
    except argparse.ArgumentError as error:
        raise ConfigError(_short_parse_error(str(error))) from error


class _ParserReady(Exception):
    def __init__(self, cli: SegmentationCLI) -> None:
        self.cli = cli


class _ParserOnly(SegmentationCLI):
    def setup_parser(self, *args) -> None:
        super().setup_parser(*args)
        raise _ParserReady(self)


@cache
def _fit_parser():
    try:
        _ParserOnly(**CLI_ARGUMENTS, args=[], parser_kwargs=_parser_kwargs())
    except _ParserReady as ready:
        return ready.cli._subcommand_parsers["fit"]
    raise AssertionError("the parser was not built")


def fit_identity(args: list[str]) -> tuple[RunIdentity, dict]:
    """The identity of the run ``lightning-seg fit ARGS`` would train, and its resolved config (nothing is built).

    Raises:
        ConfigError: the arguments do not parse.
    """
    parser = _fit_parser()
    try:
        config = parser.parse_args(prepare_args(list(args)))
    except argparse.ArgumentError as error:
        raise ConfigError(_short_parse_error(str(error))) from error
    resolved = yaml.safe_load(parser.dump(config, skip_none=False, skip_check=True))
    loss = resolved["model"]["init_args"].get("loss")
    if isinstance(loss, str) and loss not in LOSSES:
        raise ConfigError(f"{LOSS_OPTION}: unknown loss {loss!r}; registered: {', '.join(sorted(LOSSES))}")
    return RunIdentity.from_config(resolved), resolved


#: Errors whose message is the whole story: no "see --debug" hint.
EXPLAINED = (ConfigError, RunFolderError, CheckpointError, NonFiniteError)


def debug_requested(args: Sequence[str] = ()) -> bool:
    """Whether a failure should show its traceback: ``--debug`` among ``args``, or ``LIGHTNING_SEG_DEBUG`` set and not 0."""
    return "--debug" in args or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def describe(error: BaseException, traceback_by: str = f"--debug or {DEBUG_VARIABLE}=1") -> str:
    """An error in one line: its message alone when it says everything (:data:`EXPLAINED`), else its type and
    message and how to see the traceback (``traceback_by``)."""
    if isinstance(error, EXPLAINED):
        return str(error)
    return f"{type(error).__name__}: {error} (the traceback: {traceback_by})"


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [arg for arg in args if arg != "--debug"]
    try:
        build_cli(args)
    except SIGTERMException:
        sys.exit(128 + signal.SIGTERM)
    except Exception as error:
        if debug:
            raise
        print(f"lightning-seg: error: {describe(error)}", file=sys.stderr, flush=True)
        sys.exit(2 if isinstance(error, ConfigError | RunFolderError) else 1)


if __name__ == "__main__":
    main()
