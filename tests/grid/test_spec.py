"""Grid files: expansion of the shipped grids against the paper's tables, the run commands, and bad files."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
import yaml

from lightning_seg.cli import build_cli
from lightning_seg.grid import Grid, GridError, check_runs
from lightning_seg.grid.aggregate import PAPER_TABLES
from tests.conftest import CONFIGS

GRIDS = CONFIGS / "grids"


def paper_cells() -> set[tuple]:
    with open(PAPER_TABLES, newline="") as handle:
        return {(r["dataset"], r["model"], float(r["fraction"]), r["loss"]) for r in csv.DictReader(handle)}


def test_paper_grid_is_exactly_the_papers_tables_over_5_folds_and_3_seeds():
    runs = Grid.load(GRIDS / "paper.yaml").runs()
    cells = Counter((r.data, r.model, r.fraction, r.loss) for r in runs)
    assert set(cells) == paper_cells()
    assert set(cells.values()) == {15}
    assert {(r.fold, r.seed) for r in runs} == {(f, s) for f in range(5) for s in range(3)}
    assert len(runs) == 15 * len(paper_cells()) == 2340


def test_reduced_preset():
    runs = Grid.load(GRIDS / "reduced.yaml").runs()
    assert len(runs) == 90
    assert {r.model for r in runs} == {"unet"} and {r.fold for r in runs} == {0} and {r.seed for r in runs} == {0, 1, 2}
    fractions = {d: sorted({r.fraction for r in runs if r.data == d}) for d in ("covid19", "chase", "drosophila")}
    assert fractions == {"covid19": [0.125, 1.0], "chase": [0.25, 1.0], "drosophila": [0.125, 1.0]}
    # the paper's best λ per dataset (Tables 1-3)
    additive = {(r.data, r.loss) for r in runs if r.loss.startswith("additive")}
    assert additive == {("covid19", "additive"), ("chase", "additive_lam=0.7"), ("drosophila", "additive_lam=0.7")}
    assert {(r.data, r.model, r.fraction, r.loss) for r in runs} <= paper_cells()


@pytest.mark.parametrize("name", ["paper", "reduced", "synthetic"])
def test_every_run_has_its_own_folder_and_existing_configs(name):
    runs = Grid.load(GRIDS / f"{name}.yaml").runs()
    assert len({r.relpath for r in runs}) == len(runs)
    assert all(Path(c).is_file() for r in runs for c in r.configs)


def test_a_run_command_parses_with_the_cli_into_the_runs_identity(tmp_path):
    grid = Grid.load(GRIDS / "synthetic.yaml")
    run = next(r for r in grid.runs() if r.loss == "additive" and r.fraction == 0.25 and r.seed == 2)
    command = run.command(tmp_path / run.relpath)
    assert command[1:4] == ["-m", "lightning_seg.cli", "fit"]
    cli = build_cli(command[4:], run=False)  # run=False: no subcommand
    config = cli.config
    assert config.model.init_args.loss.init_args.lam == 0.5
    assert config.data.init_args.fold == run.fold and config.data.init_args.train_fraction == run.fraction
    assert config.seed_everything == run.seed and config.trainer.max_steps == 60
    assert config.trainer.default_root_dir == str(tmp_path / run.relpath) and config.test_after_fit is True
    # the grid's identity of the run is the one the run computes for itself: same keys, fingerprint, folder
    assert cli.identity.fingerprint == run.identity.fingerprint and cli.identity.relpath == run.relpath
    assert run.keys == cli.identity.keys.as_dict()


def test_overrides_come_after_the_grids_args_and_make_other_runs(tmp_path):
    grid = Grid.load(GRIDS / "synthetic.yaml")
    plain = grid.runs()[0]
    run = grid.runs(
        ["trainer.max_steps=30", "data.init_args.augment=false", "model.init_args.model_kwargs={depth: 2}"]
    )[0]
    command = run.command(tmp_path)
    steps = [a for a in command if a.startswith("--trainer.max_steps=")]
    assert steps == ["--trainer.max_steps=60", "--trainer.max_steps=30"]  # the later one wins in jsonargparse
    assert "--data.init_args.augment=false" in command and '--model.init_args.model_kwargs={"depth": 2}' in command
    assert run.model == "unet_depth=2" and run.loss == plain.loss and run.relpath != plain.relpath
    assert run.identity.settings["trainer"]["max_steps"] == 30
    # the same keys, other settings: another run in another folder
    longer = grid.runs(["trainer.max_steps=500"])[0]
    assert longer.keys == plain.keys and longer.relpath != plain.relpath


def test_shipped_loss_variants_are_named_by_the_label_their_config_gets():
    """Grid names are handles, labels come from the config; the shipped grids use the labels, so they read alike."""
    for name in ("paper", "reduced", "synthetic", "pilot-cpu", "demo"):
        grid = Grid.load(GRIDS / f"{name}.yaml")
        named = {variant for variant in grid.variants.get("loss", {})}
        labels = {run.loss for run in grid.runs()}
        assert named <= labels, f"{name}.yaml: variants {sorted(named - labels)} are not labels"


def test_folds_and_fractions_are_checked_against_the_splits_before_anything_runs(tmp_path):
    check_runs(Grid.load(GRIDS / "synthetic.yaml").runs())  # every fold and fraction exists
    bad = Grid.load(
        write_grid(tmp_path, {**VALID, "fold": [0, 7], "blocks": [{"data": ["synthetic"], "loss": ["ce"]}]})
    )
    with pytest.raises(GridError) as error:
        check_runs(bad.runs())
    message = str(error.value)
    assert "nothing was started" in message and "SyntheticDataModule: fold must lie in [0, 4], got 7" in message
    assert "fold7_frac1_seed0" in message and "fold0_" not in message


def write_grid(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"config_dir": str(CONFIGS), **spec}, sort_keys=False))
    return path


VALID = {"base": ["base.yaml"], "model": ["unet"], "fold": [0], "seed": [0], "fraction": [1.0]}


def test_variants_and_block_args(tmp_path):
    spec = {
        **VALID,
        "args": {"trainer.max_epochs": 5, "data.init_args.augment": True},
        "variants": {
            "model": {
                "small": {
                    "args": {"model.init_args.model": "unet", "model.init_args.model_kwargs": {"base_channels": 8}}
                }
            }
        },
        "blocks": [{"data": ["synthetic"], "loss": ["ml"], "model": ["small"], "args": {"trainer.max_epochs": 7}}],
    }
    (run,) = Grid.load(write_grid(tmp_path, spec)).runs()
    assert run.relpath == Path(f"synthetic/unet_base_channels=8/ml/fold0_frac1_seed0-{run.identity.fingerprint[:8]}")
    assert run.configs == tuple(str(CONFIGS / c) for c in ("base.yaml", "data/synthetic.yaml", "losses/ml.yaml"))
    assert run.args == (
        "--trainer.max_epochs=7",
        "--data.init_args.augment=true",
        "--model.init_args.model=unet",
        '--model.init_args.model_kwargs={"base_channels": 8}',
    )


def test_the_same_run_in_two_blocks_is_kept_once(tmp_path):
    blocks = [{"data": ["synthetic"], "loss": ["ce", "ml"]}, {"data": ["synthetic"], "loss": ["ml", "caml"]}]
    runs = Grid.load(write_grid(tmp_path, {**VALID, "blocks": blocks})).runs()
    assert [r.loss for r in runs] == ["ce", "ml", "caml"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**VALID}, "no 'blocks'"),
        ({**VALID, "blocks": [{"data": ["synthetic"], "loss": ["ce"], "epochs": 3}]}, r"unknown key\(s\) \['epochs'\]"),
        ({**VALID, "blok": 1, "blocks": [{}]}, r"unknown key\(s\) \['blok'\]"),
        ({**VALID, "blocks": [{"data": ["synthetic"]}]}, "axis 'loss' is given neither in the block nor at the top"),
        ({**VALID, "blocks": [{"data": ["synthetic"], "loss": ["nope"]}]}, "loss 'nope' is neither a variant"),
        ({**VALID, "blocks": [{"data": ["mnist"], "loss": ["ce"]}]}, "data 'mnist' is neither a variant"),
        ({**VALID, "blocks": [{"data": ["synthetic"], "loss": []}]}, "the list is empty"),
        (
            {**VALID, "blocks": [{"data": ["synthetic"], "loss": ["ce"], "fraction": [0]}]},
            r"fraction 0 is not in \(0, 1\]",
        ),
        ({**VALID, "blocks": [{"data": ["synthetic"], "loss": ["ce"], "fraction": [1.5]}]}, r"fraction 1.5 is not in"),
        ({**VALID, "base": ["missing.yaml"], "blocks": [{}]}, "config file\\(s\\) not found"),
        ({**VALID, "variants": {"optimizer": {}}, "blocks": [{}]}, r"variants: unknown key\(s\) \['optimizer'\]"),
        ({**VALID, "variants": {"loss": {"x": {"cfg": "a"}}}, "blocks": [{}]}, r"variants.loss.x: unknown key"),
        (
            {
                **VALID,
                "blocks": [
                    {"data": ["synthetic"], "loss": ["ce"]},
                    {"data": ["synthetic"], "loss": ["ce"], "args": {"trainer.max_steps": 1}},
                ],
            },
            r"is also defined by an earlier block with other settings \(trainer.max_steps 180 → 1\)",
        ),
    ],
)
def test_bad_grid_files_are_rejected_with_the_reason(tmp_path, spec, message):
    with pytest.raises(GridError, match=message):
        Grid.load(write_grid(tmp_path, spec)).runs()


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(GridError, match="does not exist"):
        Grid.load(tmp_path / "nope.yaml")
    grid = Grid.load(write_grid(tmp_path, {**VALID, "blocks": [{"data": ["synthetic"], "loss": ["ce"]}]}))
    with pytest.raises(GridError, match="'max_epochs' is not key=value"):
        grid.runs(["max_epochs"])
