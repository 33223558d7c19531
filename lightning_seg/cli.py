"""``lightning-seg``: LightningCLI over :class:`SegmentationModule` and any :class:`SegmentationDataModule`.

``lightning-seg fit --config configs/synthetic/caml.yaml`` trains, ``lightning-seg test --config
configs/synthetic/caml.yaml --ckpt_path best`` evaluates the best checkpoint of that earlier fit. Each run
lives in ``trainer.default_root_dir``: checkpoints, ``best.json``, CSV logs and the resolved config.
"""

from __future__ import annotations

import ctypes
import importlib
import inspect
import math
import os
import signal
import sys
from pathlib import Path

import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

from .atomic import write_json_atomic
from .data import SegmentationDataModule
from .loggers import run_group, run_name
from .module import SegmentationModule


def _label(spec) -> str:
    """Name of a model or loss given as a registry name or as ``class_path`` + ``init_args``."""
    if isinstance(spec, str):
        return spec
    module, _, attribute = spec.class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), attribute)
    name = getattr(cls, "name", "") or cls.__name__.lower()
    defaults: dict = {}
    for base in reversed(cls.__mro__):  # subclasses' defaults win
        if "__init__" in vars(base):
            defaults.update((k, p.default) for k, p in inspect.signature(base.__init__).parameters.items())
    changed = [
        f"{k}={v}" for k, v in sorted(vars(spec.get("init_args") or Namespace()).items()) if defaults.get(k) != v
    ]
    return "_".join([name, *changed])


def run_keys(config: Namespace) -> dict:
    """``dataset, model, loss, fraction, fold, seed`` of a run, from its config: the keys dashboards group by."""
    data_cls = config.data.class_path.rsplit(".", 1)[-1]
    data_args = config.data.init_args
    model_args = config.model.init_args
    return {
        "dataset": data_cls.removesuffix("DataModule").lower() or data_cls.lower(),
        "model": model_args.model,
        "loss": _label(model_args.loss),
        "fraction": float(data_args.train_fraction),
        "fold": int(data_args.fold),
        "seed": config.seed_everything,
    }


def run_dir(config: Namespace) -> Path:
    """``runs/<data>/<model>/<loss>/fold<k>_frac<f>_seed<s>``: one folder per run, derived from its config.

    :func:`lightning_seg.loggers.run_metadata` reads the same keys back from such a folder.
    """
    keys = run_keys(config)
    leaf = f"fold{keys['fold']}_frac{keys['fraction']:g}_seed{keys['seed']}"
    return Path("runs") / keys["dataset"] / keys["model"] / keys["loss"] / leaf


class SegmentationCLI(LightningCLI):
    """Links the data's classes into the model, logs to CSV by default, resolves ``--ckpt_path best``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, test the best checkpoint in the same process (fit only).",
        )
        for attribute in ("num_classes", "in_channels", "class_names", "ignore_index", "curvilinear_classes"):
            parser.link_arguments(f"data.{attribute}", f"model.init_args.{attribute}", apply_on="instantiate")

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

    def before_instantiate_classes(self) -> None:
        config = self.active_config
        trainer = config.trainer
        if trainer.default_root_dir is None:
            trainer.default_root_dir = str(run_dir(config))
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
        keys = run_keys(config)
        for logger in loggers:
            init_args = logger.get("init_args")
            if init_args is not None and "save_dir" in init_args and init_args.save_dir is None:
                init_args.save_dir = trainer.default_root_dir
            if logger.class_path.endswith("WandbLogger") and init_args is not None:
                # W&B names from the run directory, unless the config chose its own.
                if init_args.get("name") is None:
                    init_args.name = run_name(keys)
                if "group" in init_args and init_args.group is None:
                    init_args.group = run_group(keys)
        if not any(logger.class_path.endswith(".CSVLogger") for logger in loggers):
            csv = Namespace(
                class_path="lightning.pytorch.loggers.CSVLogger",
                init_args=Namespace(save_dir=trainer.default_root_dir, name="logs"),
            )
            loggers.insert(0, csv)
        trainer.logger = loggers

    def log_config_to_wandb(self) -> None:
        """Put the resolved config (key ``cli``) and the run keys (:func:`run_keys`) into every W&B run."""
        wandb_loggers = [lg for lg in self.trainer.loggers if isinstance(lg, _LightningWandbLogger)]
        if not wandb_loggers:
            return
        config = self.active_config
        parser = self._parser(self.subcommand) if self.subcommand else self.parser
        resolved = yaml.safe_load(parser.dump(config, skip_none=False))
        run_config = {**run_keys(config), "cli": resolved}
        for logger in wandb_loggers:
            if hasattr(logger, "set_run_config"):
                logger.set_run_config(run_config)
            else:
                logger.experiment.config.update(run_config, allow_val_change=True)

    def before_fit(self) -> None:
        self.log_config_to_wandb()

    def before_test(self) -> None:
        self.log_config_to_wandb()
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "best" and not getattr(self.trainer.checkpoint_callback, "best_model_path", ""):
            restore = getattr(self.trainer.checkpoint_callback, "restore_best", None)
            if restore is None:
                raise ValueError("--ckpt_path best needs the lightning_seg.callbacks.BestCheckpoint callback")
            restore(self.trainer)

    before_validate = before_test

    def after_fit(self) -> None:
        if self.active_config.get("test_after_fit"):
            ckpt = "best" if getattr(self.trainer.checkpoint_callback, "best_model_path", "") else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
            self.after_test()

    def after_test(self) -> None:
        write_test_metrics(self.trainer, run_keys(self.active_config))


TEST_METRICS = "test_metrics.json"


def write_test_metrics(trainer, keys: dict) -> Path:
    """Write the ``test/`` metrics of the last test, the run keys and the checkpoint tested to
    ``<default_root_dir>/test_metrics.json``, atomically: the record that grids and aggregation read."""
    # NaN (a class absent from prediction and target) as null, so that the file is strict JSON.
    metrics = {
        k: None if math.isnan(float(v)) else float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith("test/")
    }
    record = {"keys": keys, "metrics": metrics, "ckpt_path": trainer.ckpt_path, "epochs": trainer.current_epoch}
    return write_json_atomic(Path(trainer.default_root_dir) / TEST_METRICS, record)


def build_cli(args: list[str] | None = None, run: bool = True) -> SegmentationCLI:
    """Parse ``args`` (``sys.argv`` when ``None``) and, with ``run``, execute the subcommand."""
    return SegmentationCLI(
        SegmentationModule,
        SegmentationDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
        run=run,
    )


PARENT_PID_VARIABLE = "LIGHTNING_SEG_PARENT_PID"


def end_with_parent() -> None:
    """When started by a grid (``LIGHTNING_SEG_PARENT_PID`` set), end on SIGTERM once that process dies, even
    by SIGKILL, so that a killed grid leaves no run behind to race its resumed copy. Linux only (prctl)."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if not parent or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the parent died before the line above
        sys.exit(f"{PARENT_PID_VARIABLE}={parent} is gone; not starting")


def main() -> None:
    end_with_parent()
    build_cli()


if __name__ == "__main__":
    main()
