"""A run's identity: labels, settings and fingerprint from the resolved config, its folder and its records."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lightning_seg.cli import fit_identity
from lightning_seg.run import (
    Records,
    RunFolder,
    RunFolderError,
    RunIdentity,
    RunKeys,
    code_version,
    cpu_info,
    find_run_folders,
    loss_label,
    machine,
    model_label,
    settings_diff,
)
from tests.conftest import compose

BASE = compose("base.yaml", "data/synthetic.yaml")


def identity(*args: str) -> RunIdentity:
    return fit_identity([*BASE, *args])[0]


@pytest.mark.parametrize(
    ("spec", "label"),
    [
        ("caml", "caml"),
        ("ce", "ce"),
        ({"class_path": "lightning_seg.losses.CAML"}, "caml"),  # alias, class form, defaults: the registry name
        ({"class_path": "lightning_seg.losses.Additive", "init_args": {"lam": 0.5}}, "additive"),  # λ's default
        ({"class_path": "lightning_seg.losses.Additive", "init_args": {"lam": 0.7}}, "additive_lam=0.7"),
        ({"class_path": "lightning_seg.losses.CAMLFixedR", "init_args": {"r": 3.0}}, "caml_fixed_r_r=3"),
        ({"class_path": "lightning_seg.losses.CAML", "init_args": {"pbar": "per_pixel"}}, "caml_pbar=per_pixel"),
        # ignore_index comes from the data, never part of the label
        ({"class_path": "lightning_seg.losses.Dice", "init_args": {"ignore_index": 7}}, "dice"),
        (
            {"class_path": "lightning_seg.losses.CAML", "init_args": {"alpha_grad": "none", "smooth": 0.0}},
            "caml_alpha_grad=none_smooth=0",
        ),
    ],
)
def test_loss_label_is_the_registry_name_and_the_arguments_off_their_defaults(spec, label):
    assert loss_label(spec) == label


def test_model_label_names_model_kwargs_off_the_factory_defaults():
    assert model_label("unet", None) == model_label("unet", {"base_channels": 64, "depth": 4}) == "unet"
    assert model_label("unet", {"depth": 3, "base_channels": 8}) == "unet_base_channels=8_depth=3"
    assert model_label("smp.Unet", {"encoder_name": "resnet34"}) == "smp.Unet_encoder_name=resnet34"


def test_unknown_loss_is_a_value_error():
    with pytest.raises(ValueError, match="unknown loss 'nope'; registered: additive"):
        loss_label("nope")


def test_keys_folder_and_w_and_b_names_of_a_parsed_config():
    run = identity("--model.init_args.loss=ml", "--data.init_args.train_fraction=0.25", "--seed_everything=3")
    assert run.keys == RunKeys("synthetic", "unet_base_channels=8_depth=3", "ml", 0.25, 0, 3)
    assert run.keys.name == "ml-fold0-seed3" and run.keys.group == "synthetic/unet_base_channels=8_depth=3/frac0.25"
    assert run.relpath == Path(
        "synthetic", "unet_base_channels=8_depth=3", "ml", f"fold0_frac0.25_seed3-{run.fingerprint[:8]}"
    )
    assert len(run.fingerprint) == 64 and len(run.cell) == 8
    assert run.wandb_config() == {**run.keys.as_dict(), "fingerprint": run.fingerprint, "cell": run.cell}


def test_what_defines_a_run_changes_its_fingerprint():
    base = identity()
    changed = {
        "learning rate": identity(
            "--model.init_args.optimizer=torch.optim.Adam", "--model.init_args.optimizer.init_args.lr=0.01"
        ),
        "optimizer": identity(
            "--model.init_args.optimizer=torch.optim.SGD", "--model.init_args.optimizer.init_args.lr=0.001"
        ),
        "loss argument": identity("--model.init_args.loss=caml", "--model.init_args.loss.init_args.pbar=per_pixel"),
        "model_kwargs": identity("--model.init_args.model_kwargs={base_channels: 16, depth: 3}"),
        "training length": identity("--trainer.max_epochs=31"),
        "step budget": identity("--trainer.max_steps=100"),
        "validation cadence": identity("--trainer.val_check_interval=5", "--trainer.check_val_every_n_epoch=null"),
        "precision": identity("--trainer.precision=bf16-mixed"),
        "crop": identity("--data.init_args.crop_size=32"),
        "augmentation": identity("--data.init_args.augment=false"),
        "image size": identity("--data.init_args.image_size=32"),
        "fold": identity("--data.init_args.fold=1"),
        "fraction": identity("--data.init_args.train_fraction=0.5"),
        "seed": identity("--seed_everything=1"),
        "model selection": identity("--checkpoint.monitor=val/dice"),
        "scheduler": identity(
            "--model.init_args.lr_scheduler=torch.optim.lr_scheduler.StepLR",
            "--model.init_args.lr_scheduler.init_args.step_size=3",
        ),
        "two devices": identity("--trainer.devices=2"),
    }
    fingerprints = {name: run.fingerprint for name, run in changed.items()}
    assert base.fingerprint not in fingerprints.values()
    assert len(set(fingerprints.values())) == len(fingerprints), "two different settings share a fingerprint"
    # fold and seed change the run, not its cell; everything else changes both
    assert changed["fold"].cell == changed["seed"].cell == base.cell
    assert changed["learning rate"].cell != base.cell


def test_what_does_not_define_a_run_leaves_its_fingerprint_alone(tmp_path):
    base = identity()
    same = [
        identity(f"--trainer.default_root_dir={tmp_path}"),
        identity("--data.init_args.num_workers=2"),
        identity("--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false"),
        identity("--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0"),
        identity("--trainer.accelerator=cpu", "--trainer.devices=1"),
        identity("--test_after_fit=true", "--checkpoint.every_minutes=0", "--checkpoint.keep_last=true"),
        identity("--nonfinite.patience=3"),
        identity(
            '--trainer.callbacks+={"class_path": "lightning_seg.callbacks.HostMemoryReuse", "init_args": {"trim_threshold": 0}}'
        ),
        identity(*compose("loggers/wandb.yaml")),
        # the loss by registry name or by its class with the default arguments: the same loss
        identity("--model.init_args.loss=lightning_seg.losses.CAML"),
        identity(f"--data.init_args.data_dir={tmp_path}"),
        # test-time evaluation settings: recorded with the scores they produce, a run can be re-tested under them
        identity("--model.init_args.evaluation.nsd_tolerance=1", "--model.init_args.evaluation.both_empty=perfect"),
    ]
    assert {run.fingerprint for run in same} == {base.fingerprint}


def test_a_registry_loss_name_takes_options_on_the_command_line():
    """The README's form: a registry name, then its arguments; the same run as the class form."""
    by_name = identity("--model.init_args.loss=additive", "--model.init_args.loss.init_args.lam=0.3")
    by_class = identity(
        "--model.init_args.loss=lightning_seg.losses.Additive", "--model.init_args.loss.init_args.lam=0.3"
    )
    # base.yaml's `loss: caml`, then only the loss's arguments
    from_config = identity("--model.init_args.loss.init_args.pbar=per_pixel")
    assert by_name.fingerprint == by_class.fingerprint and by_name.keys.loss == "additive_lam=0.3"
    assert from_config.keys.loss == "caml_pbar=per_pixel"


def test_with_overrides_equals_parsing_the_overrides():
    template = identity()
    parsed = identity("--data.init_args.fold=2", "--data.init_args.train_fraction=0.25", "--seed_everything=7")
    derived = template.with_overrides(2, 0.25, 7)
    assert derived.fingerprint == parsed.fingerprint and derived.keys == parsed.keys
    # the cell holds the fraction, not the fold or the seed
    assert derived.cell == template.with_overrides(0, 0.25, 0).cell != template.cell


def test_settings_diff_names_the_options_that_differ():
    a, b = identity(), identity("--trainer.max_steps=50", "--model.init_args.optimizer=torch.optim.SGD")
    diff = settings_diff(a.settings, b.settings)
    assert "trainer.max_steps 180 → 50" in diff
    assert "model.init_args.optimizer lightning_seg.module.adam → " in diff


def test_a_folder_holding_other_settings_is_refused_with_what_differs(tmp_path):
    folder = RunFolder(tmp_path / "run")
    adam = "--model.init_args.optimizer=torch.optim.Adam"
    first = identity(adam, "--model.init_args.optimizer.init_args.lr=0.001")
    folder.check(first)  # new folder: fine
    folder.start(first)
    folder.check(first)  # same run: fine (resume)
    other = identity(adam, "--model.init_args.optimizer.init_args.lr=0.01")
    with pytest.raises(RunFolderError) as error:
        folder.check(other)
    message = str(error.value)
    assert "holds a run with other settings (model.init_args.optimizer.init_args.lr 0.001 → 0.01)" in message
    assert "--trainer.default_root_dir" in message and str(other.relpath) in message
    record = json.loads((folder.path / Records.RUN).read_text())
    assert record["fingerprint"] == first.fingerprint and record["status"] == "training"
    assert RunIdentity.from_record(record).fingerprint == first.fingerprint


def test_a_folder_of_files_without_run_json_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(RunFolderError, match="no run.json"):
        RunFolder(tmp_path).check(identity())


def test_record_paths_are_relative_to_the_folder(tmp_path):
    folder = RunFolder(tmp_path / "a")
    assert folder.relative(folder.best_checkpoint(12)) == "checkpoints/best-step12.ckpt"
    assert folder.relative(tmp_path / "elsewhere.ckpt") == str(tmp_path / "elsewhere.ckpt")
    moved = RunFolder(tmp_path / "b")
    assert moved.resolve("checkpoints/best-step12.ckpt") == tmp_path / "b" / "checkpoints" / "best-step12.ckpt"
    with pytest.raises(RunFolderError, match="no best checkpoint recorded"):
        folder.best_path()
    folder.write(Records.BEST, {"path": "checkpoints/best-step12.ckpt"})
    with pytest.raises(RunFolderError, match="which does not exist"):
        folder.best_path()
    (folder.path / Records.RUN).write_text("{not json")
    with pytest.raises(RunFolderError, match="unreadable"):
        folder.identity()


def test_run_folders_are_found_by_their_run_json(tmp_path):
    for name in ("x/a", "y/b/c"):
        RunFolder(tmp_path / name).start(identity())
    (tmp_path / "z").mkdir()
    assert [f.path for f in find_run_folders(tmp_path)] == [tmp_path / "x/a", tmp_path / "y/b/c"]


def test_code_version_names_the_commit_and_whether_tracked_files_differ_from_it(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True).stdout

    assert code_version(tmp_path) | {"lightning_seg": None} == {"lightning_seg": None, "commit": None, "modified": None}
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a")
    head = git("rev-parse", "HEAD").strip()
    assert code_version(tmp_path)["commit"] == head and len(head) == 40
    assert code_version(tmp_path)["modified"] is False
    (tmp_path / "b.py").write_text("")  # untracked: not the code of the commit, but not a change of it either
    assert code_version(tmp_path)["modified"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) == {**code_version(), "commit": head, "modified": True}


EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            EPYC + "\n" + EPYC.replace("25", "23").replace("EPYC", "Other"),
            {"processor": "AMD EPYC", "family/model": "25/17"},
        ),
        ("processor\t: 0\nmodel name\t: Some CPU\n", {"processor": "Some CPU", "family/model": None}),
    ],
)
def test_cpu_info_reads_the_first_processor(tmp_path, text, expected):
    (tmp_path / "cpuinfo").write_text(text)
    assert cpu_info(tmp_path / "cpuinfo") == expected


def test_cpu_info_without_the_file_names_the_platform(tmp_path, monkeypatch):
    monkeypatch.setattr("platform.processor", lambda: "")
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert cpu_info(tmp_path / "missing") == {"processor": "x86_64", "family/model": None}


def test_the_machine_names_the_kernels_and_a_gpu_only_for_a_cuda_device(monkeypatch):
    import torch

    record = machine()
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and record["torch"] == torch.__version__
    assert record["threads"] == torch.get_num_threads() and record["gpu"] is record["device"] is None
    assert machine("cpu") == {**record, "device": "cpu"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"GPU {device.index}")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # asking would start CUDA in this process
    assert machine("cuda:1") == {**record, "device": "cuda:1", "gpu": None}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert machine(torch.device("cuda", 1))["gpu"] == "GPU 1" and machine("cuda:0")["gpu"] == "GPU 0"
    assert json.loads(json.dumps(record)) == record  # a JSON record as it is


def test_a_new_attempt_clears_the_machine_until_it_ends(tmp_path):
    """The machine in run.json is the one of the attempt that ended the training, never an earlier attempt's."""
    folder = RunFolder(tmp_path / "run")
    folder.start(identity())
    folder.set_status("trained", machine={"processor": "elsewhere"})
    assert folder.read(Records.RUN)["machine"] == {"processor": "elsewhere"}
    folder.start(identity())  # resumed, perhaps on another machine
    assert folder.read(Records.RUN)["status"] == "training" and folder.read(Records.RUN)["machine"] is None
