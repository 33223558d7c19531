"""The training protocol (docs/protocol.md): step budgets per dataset, the same for every fraction in every grid,
and validations counted in steps across epoch ends."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from lightning_seg.cli import SegmentationCLI, build_cli
from lightning_seg.data import SegmentationDataModule
from lightning_seg.grid import Grid
from lightning_seg.module import SegmentationModule
from tests.conftest import CONFIGS, compose

DATASETS = ("drosophila", "covid19", "chase", "synthetic")
#: the reduced training fractions of each paper dataset (PROTOCOL.md)
REDUCED = {"drosophila": {0.25, 0.125}, "covid19": {0.25, 0.125}, "chase": {0.5, 0.25}}


class ParseOnly(SegmentationCLI):
    """The CLI's parser and config handling, without building the model, data or trainer."""

    def instantiate_classes(self) -> None:
        pass


def parser():
    """The ``fit`` parser of ``lightning-seg`` (the CLI without subcommands parses the same arguments)."""
    cli = ParseOnly(
        SegmentationModule,
        SegmentationDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=compose("base.yaml", "data/synthetic.yaml"),
        run=False,
    )
    return cli.parser


def budget(trainer) -> tuple[int, int]:
    """``(max_steps, validations)`` of a resolved trainer config in the step form; asserts the form."""
    assert trainer.max_epochs is None and trainer.check_val_every_n_epoch is None
    assert isinstance(trainer.val_check_interval, int) and trainer.max_steps > 0
    # the last step is a validation: model selection sees the end of training
    assert trainer.max_steps % trainer.val_check_interval == 0, (trainer.max_steps, trainer.val_check_interval)
    return trainer.max_steps, trainer.max_steps // trainer.val_check_interval


def test_every_dataset_config_sets_a_step_budget_with_the_same_number_of_validations():
    cli_parser = parser()
    budgets = {
        name: budget(cli_parser.parse_args(compose("base.yaml", f"data/{name}.yaml")).trainer) for name in DATASETS
    }
    # docs/protocol.md: 200 full-data epochs at batch 4 for the paper's datasets, 20 validations everywhere
    assert budgets == {"drosophila": (2400, 20), "covid19": (3600, 20), "chase": (800, 20), "synthetic": (180, 20)}
    demo = cli_parser.parse_args(["--config", str(CONFIGS / "demo.yaml")]).trainer
    assert budget(demo) == budgets["synthetic"]


@pytest.mark.parametrize("name", DATASETS)
def test_an_epoch_is_at_least_a_validation_interval_and_one_pass_in_the_epoch_form(name):
    cli_parser = parser()
    steps = cli_parser.parse_args(compose("base.yaml", f"data/{name}.yaml"))
    assert steps.data.init_args.min_epoch_steps == steps.trainer.val_check_interval
    epochs = cli_parser.parse_args(compose("base.yaml", f"data/{name}.yaml", "trainer/epochs.yaml"))
    assert epochs.data.init_args.min_epoch_steps == 1
    assert epochs.data.class_path == steps.data.class_path  # the epoch form changes the option, not the data


def test_the_demo_config_has_the_synthetic_settings():
    cli_parser = parser()
    demo = cli_parser.parse_args(["--config", str(CONFIGS / "demo.yaml")])
    composed = cli_parser.parse_args(compose("base.yaml", "data/synthetic.yaml", "losses/caml.yaml"))
    assert demo.data.init_args == composed.data.init_args


@pytest.mark.parametrize("name", ["paper", "reduced", "synthetic"])
def test_every_fraction_of_a_dataset_gets_the_same_steps_and_validations(name):
    """Each run's config files and trainer overrides go through the CLI's own parser, once per distinct set
    (the other overrides name the fold, fraction, seed, model and loss arguments, never the trainer)."""
    cli_parser = parser()
    resolved: dict[tuple, tuple[int, int]] = {}
    per_dataset: dict[str, set] = defaultdict(set)
    fractions: dict[str, set] = defaultdict(set)
    for run in Grid.load(CONFIGS / "grids" / f"{name}.yaml").runs():
        key = (run.configs, tuple(arg for arg in run.args if arg.startswith("--trainer.")))
        if key not in resolved:
            resolved[key] = budget(cli_parser.parse_args([*compose(*key[0]), *key[1]]).trainer)
        per_dataset[run.data].add(resolved[key])
        fractions[run.data].add(run.fraction)
    for data, budgets in per_dataset.items():
        assert len(budgets) == 1, f"{name}: {data} runs have different step budgets {budgets}"
        assert 1.0 in fractions[data] and len(fractions[data]) > 1, (data, fractions[data])
        assert fractions[data] - {1.0} <= REDUCED.get(data, {0.25})


def validation_steps(root: Path) -> list[int]:
    """Steps of the rows of the run's CSV log that hold a validation mIoU."""
    (path,) = root.glob("logs/version_*/metrics.csv")
    with path.open() as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get("val/miou")]


TINY_FIT = [
    "--model.init_args.model=tiny",
    "--model.init_args.model_kwargs={}",
    "--data.init_args.image_size=16",
    "--trainer.enable_model_summary=false",
]


def test_a_step_budget_validates_on_schedule_when_an_epoch_is_shorter_than_the_interval(tmp_path):
    # 1/8 of the 24 synthetic training images: 3 images, one batch, so an epoch is one step
    args = [*compose("base.yaml", "data/synthetic.yaml", "losses/ce.yaml"), *TINY_FIT]
    args += ["--data.init_args.train_fraction=0.125", "--trainer.max_steps=6", "--trainer.val_check_interval=2"]
    args += ["--data.init_args.min_epoch_steps=1"]  # an epoch of one pass
    cli = build_cli(["fit", *args, f"--trainer.default_root_dir={tmp_path}"])
    assert len(cli.datamodule.train_dataloader()) == 1
    assert cli.trainer.global_step == 6 and cli.trainer.current_epoch == 6
    # after steps 2, 4 and 6 (the CSV counts steps from 0)
    assert validation_steps(tmp_path) == [1, 3, 5]
    assert {"train/miou", "val/miou", "val/loss"} <= set(cli.trainer.callback_metrics)


def test_epochs_of_several_passes_keep_the_step_schedule(tmp_path):
    # 1/4 of the 24 synthetic training images: 6 images, 2 steps per pass; epochs of 2 passes, 4 steps
    args = [*compose("base.yaml", "data/synthetic.yaml", "losses/ce.yaml"), *TINY_FIT]
    args += ["--data.init_args.train_fraction=0.25", "--data.init_args.min_epoch_steps=3"]
    args += ["--trainer.max_steps=12", "--trainer.val_check_interval=3"]
    cli = build_cli(["fit", *args, f"--trainer.default_root_dir={tmp_path}"])
    assert len(cli.datamodule.train_dataloader()) == 4
    assert cli.trainer.global_step == 12 and cli.trainer.current_epoch == 3
    assert validation_steps(tmp_path) == [2, 5, 8, 11]  # every 3 steps, within and across epochs


def test_the_epoch_form_validates_after_every_epoch(tmp_path):
    epochs = CONFIGS / "trainer" / "epochs.yaml"
    assert yaml.safe_load(epochs.read_text())["trainer"]["max_epochs"] == 200
    args = [*compose("base.yaml", "data/synthetic.yaml", "losses/ce.yaml", "trainer/epochs.yaml"), *TINY_FIT]
    args += ["--data.init_args.train_fraction=0.5", "--trainer.max_epochs=3"]  # 12 images: 3 steps per epoch
    cli = build_cli(["fit", *args, f"--trainer.default_root_dir={tmp_path}"])
    assert len(cli.datamodule.train_dataloader()) == 3  # one pass
    assert cli.trainer.global_step == 9
    assert validation_steps(tmp_path) == [2, 5, 8]


#: the short-batch table of docs/protocol.md: a cell (dataset, with "fold k" when one fold alone) and its columns
SHORT_BATCH_ROW = re.compile(
    r"^\| (?P<dataset>COVID-19|CHASE)(?: fold (?P<fold>\d))?,? (?P<fraction>full|1/\d) \| (?P<size>\d+) "
    r"\| (?P<batches>[^|]+) \| (?P<short>\d+) \| (?P<share>[\d.]+) % \| (?P<images>[\d.]+) \|$"
)


def test_the_protocol_names_every_cell_whose_passes_end_in_a_short_batch(require_data):
    """docs/protocol.md's table of the cells whose training set is not a multiple of the batch: each row as the data
    modules make it (every fold, or the one named), and no other cell of the grids' fractions has a short batch."""
    from lightning_seg.data import ChaseDataModule, Covid19DataModule, DrosophilaDataModule

    modules = {"drosophila": DrosophilaDataModule, "covid19": Covid19DataModule, "chase": ChaseDataModule}
    batches = {
        name: yaml.safe_load((CONFIGS / "data" / f"{name}.yaml").read_text())["data"]["init_args"]["batch_size"]
        for name in modules
    }
    sizes = {
        (name, fraction, fold): len(
            module(data_dir=require_data, train_fraction=fraction, fold=fold).split_ids()["train"]
        )
        for name, module in modules.items()
        for fraction in {1.0, *REDUCED[name]}
        for fold in range(5)
    }
    short = {cell for cell, size in sizes.items() if size % batches[cell[0]]}
    documented = set()
    text = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    for match in filter(None, map(SHORT_BATCH_ROW.match, text.splitlines())):
        name = {"COVID-19": "covid19", "CHASE": "chase"}[match["dataset"]]
        fraction = 1.0 if match["fraction"] == "full" else 1 / int(match["fraction"][2:])
        folds = range(5) if match["fold"] is None else [int(match["fold"])]
        size, batch = int(match["size"]), batches[name]
        assert {sizes[name, fraction, fold] for fold in folds} == {size}, match[0]
        steps = -(-size // batch)
        assert match["batches"].strip() == f"{size // batch} of {batch}, 1 of {size % batch}", match[0]
        assert int(match["short"]) == size % batch and match["share"] == f"{100 / steps:.1f}", match[0]
        assert match["images"] == f"{size / steps:.2f}", match[0]
        documented |= {(name, fraction, fold) for fold in folds}
    assert documented == short
