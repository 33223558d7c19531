"""The benchmark scripts under benchmarks/: they run end to end in CPU smoke mode (nothing is timed here)."""

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import REPO


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_row(output) -> list[str]:
    """The cells of the one row of a benchmark's Markdown table in ``output``, whose header and rule have as many
    columns."""
    header, rule, row = output.read_text().splitlines()
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == len(header.strip("|").split("|")) == len(rule.strip("|").split("|"))
    return cells


def check_paired_cells(cells: list[str]) -> float:
    """The cells of ``turns.step_cells`` and ``turns.ratio_cell`` (two step times and their ratio, twice, then the
    paired ratio's median with its quartiles): each ratio is that of the rounded times shown, to their rounding, and
    the median lies between the quartiles. Returns the median."""
    for times, ratio in ((cells[0], cells[1]), (cells[2], cells[3])):
        first, second = map(float, times.split(" / "))
        assert float(ratio) == pytest.approx(first / second, abs=0.002 + 0.001 * first / second)
    median, spread = cells[4].split(" (")
    low, high = map(float, spread.rstrip(")").split(" – "))
    assert low <= float(median) <= high
    return float(median)


def test_packed_throughput_counts_steps_inside_the_common_window():
    packing = load_benchmark("packing")
    # Worker A: 4 steps of 1 s from t=0; worker B: 2 steps of 2 s from t=0.5. Common window [0.5, 4] (3.5 s):
    # A completes 4 - 0.5 = 3.5 steps in it, B 1 + (4 - 2.5) / 2 = 1.75 steps; 5.25 steps × 4 images = 21 images.
    result = packing.packed_throughput([[0, 1, 2, 3, 4], [0.5, 2.5, 4.5]], batch=4)
    assert result["error"] is None
    assert (result["start"], result["end"], result["seconds"]) == (0.5, 4, 3.5)
    assert result["steps"] == pytest.approx([3.5, 1.75])
    assert result["images"] == pytest.approx(21)
    assert result["aggregate"] == pytest.approx(6.0)
    assert result["per_run"] == pytest.approx(3.0)
    # One worker: its own steps over its own span.
    assert packing.packed_throughput([[10, 10.5, 11, 12]], batch=2)["aggregate"] == pytest.approx(6 / 2)


def test_packed_throughput_invalid_windows():
    packing = load_benchmark("packing")
    disjoint = packing.packed_throughput([[0, 1, 2], [3, 4, 5]], batch=4)
    assert disjoint["aggregate"] is None and "do not overlap" in disjoint["error"]
    # Window [9, 10] = 1 s against a median span of 10 s.
    short = packing.packed_throughput([[0, 5, 10], [9, 14, 19]], batch=4)
    assert short["aggregate"] is None and "shorter" in short["error"]
    assert packing.packed_throughput([[0, 5, 10], [9, 14, 19]], batch=4, min_overlap=0.05)["error"] is None
    with pytest.raises(ValueError):
        packing.packed_throughput([[0]], batch=4)


def test_packing_cpu_smoke(tmp_path):
    output = tmp_path / "results.md"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "packing.py"),
        "--device",
        "cpu",
        "--size",
        "32",
        "--packs",
        "1",
        "2",
    ]
    command += ["--steps", "3", "--warmup", "1", "--base-channels", "4", "--min-overlap", "0"]
    command += ["--output", str(output), "--date", "2000-01-01"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = output.read_text().splitlines()
    assert lines[0].startswith("| date | device | torch | model | precision |")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [row[6] for row in rows] == ["1", "2"]
    for row in rows:
        assert row[0] == "2000-01-01" and row[3] == "unet (4 base channels)" and row[5] == "4 × 32²"
        aggregate, per_run = float(row[7]), float(row[8])
        assert aggregate > 0 and per_run > 0
    assert rows[0][9] == "1.00×"
    assert done.stdout.splitlines()[2:] == lines[2:]  # the same rows were printed


def test_evaluation_benchmark_cpu_smoke(tmp_path):
    command = [sys.executable, str(REPO / "benchmarks" / "evaluation.py"), "--datasets", "synthetic"]
    command += ["--repeats", "1", "--base-channels", "4", "--date", "2000-01-01"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    header, _, row = done.stdout.splitlines()
    assert header.startswith("| date | device | dataset | test images |")
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[0] == "2000-01-01" and cells[2:5] == ["synthetic", "8", "64×64"]
    forward, evaluation, ratio = map(float, cells[5:8])
    assert forward > 0 and evaluation > 0 and ratio > 0


def test_losses_cpu_smoke(tmp_path):
    output = tmp_path / "losses.md"
    command = [sys.executable, str(REPO / "benchmarks" / "losses.py"), "--device", "cpu", "--size", "16"]
    command += [
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--ignore-frac",
        "0.2",
        "--output",
        str(output),
        "--date",
        "2000-01-01",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = output.read_text().splitlines()
    assert lines[0].startswith("| date | device | torch | logits | loss |")
    rows = {cells[4]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert list(rows)[:2] == ["F.cross_entropy", "MONAI DiceCELoss(batch=True)"]
    for name in ("ce", "dice", "additive(lam=0.5)", "ml", "caml", "caml_fixed_r(r=2.0)", "caml(pbar=max_class)"):
        assert name in rows
    for cells in rows.values():
        assert cells[0] == "2000-01-01" and cells[3] == "4×5×16×16 float32"
        assert float(cells[5]) > 0 and float(cells[6].rstrip("×")) > 0
    assert rows["F.cross_entropy"][6] == "1.00×"


def test_overhead_phases_split_the_wall_time():
    overhead = load_benchmark("overhead")
    # process 0-20 s; fit from 4, training 6-16; steps of 1 s at 6, 8 (epoch 0) and 11, 13 (epoch 1);
    # a validation 9-10.5 holding a checkpoint write 10-10.5, another write 14.5-15 outside it
    clock = {
        "events": {"fit_start": 4.0, "train_start": 6.0, "train_end": 16.0, "sanity_start": 5.0, "sanity_end": 5.5},
        "steps": [(6.0, 7.0, 0), (8.0, 9.0, 0), (11.0, 12.0, 1), (13.0, 14.0, 1)],
        "validations": [(9.0, 10.5)],
        "checkpoints": [(10.0, 10.5), (14.5, 15.0)],
    }
    p = overhead.phases(clock, (0.0, 20.0))
    assert (p["steps"], p["validations"], p["step_ms"]) == (4, 1, 1000.0)
    assert (p["startup"], p["setup"], p["train"], p["test_and_exit"], p["wall"]) == (4.0, 2.0, 10.0, 4.0, 20.0)
    assert p["validation"] == 1.0 and p["checkpoint"] == 1.0
    # the epoch end 9-11 minus the validation and its checkpoint inside it
    assert p["epoch_ends"] == pytest.approx(0.5)
    # 10 s of training: 4 in steps, 1 validation, 1 checkpoint, 0.5 epoch end, the rest between steps
    assert p["between"] == pytest.approx(3.5)
    assert p["outside_train"] == pytest.approx(0.6) and p["outside_process"] == pytest.approx(0.8)


def test_step_clock_records_a_fit(tmp_path):
    import json

    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from lightning_seg import SegmentationModule
    from lightning_seg.callbacks import RunCheckpoint

    overhead = load_benchmark("overhead")
    data = [{"image": torch.randn(1, 8, 8), "mask": torch.randint(0, 2, (8, 8))} for _ in range(4)]
    clock = overhead.StepClock(str(tmp_path / "clock.json"))
    trainer = L.Trainer(
        max_steps=6,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock, RunCheckpoint(monitor="val/miou", mode="max")],
    )
    trainer.fit(SegmentationModule(model="tiny", loss="ce"), DataLoader(data, batch_size=3), DataLoader(data[:2]))
    record = json.loads((tmp_path / "clock.json").read_text())
    assert [epoch for *_, epoch in record["steps"]] == [0, 0, 1, 1, 2, 2]
    assert record["step_images"] == [3, 1] * 3
    assert len(record["validations"]) == 2 and len(record["checkpoints"]) >= 1
    assert {"fit_start", "train_start", "train_end", "fit_end"} <= set(record["events"])
    p = overhead.phases(record, (record["events"]["fit_start"] - 1.0, record["events"]["fit_end"] + 1.0))
    assert p["steps"] == 6 and p["validations"] == 2 and 0 < p["outside_train"] < 1
    assert len(record["step_cpu"]) == 6 and p["step_cpu_ms"] > 0 and 0 < p["outside_cpu"] < 1
    full = record["step_cpu"][::2]  # the per-step figures: the batches of 3 only
    assert p["full_steps"] == 3 and p["step_cpu_mean_ms"] == pytest.approx(1000 * sum(full) / 3)
    assert p["step_cpu_ms"] == pytest.approx(overhead.step_cpu_ms(full))
    faults = record["faults"]["train_end"] - record["faults"]["train_start"]
    assert faults >= 0 and p["faults_per_step"] == faults / 6


def test_faults_count_the_fresh_pages_a_process_writes():
    import mmap

    overhead = load_benchmark("overhead")
    fresh = mmap.mmap(-1, 4 * 2**20)  # anonymous: no page of it is in memory before it is written
    before = overhead.faults()
    for offset in range(0, len(fresh), 4096):
        fresh[offset] = 1
    # a fault per 4 KiB page (1,024), or per 2 MiB page where the kernel gives huge pages
    assert overhead.faults() - before >= len(fresh) // 2**21


def test_checkpoint_cost_cpu_smoke(tmp_path):
    """The checkpoint benchmark runs; the finished run keeps less than the former scheme, best weights only."""
    output = tmp_path / "results.md"
    command = [sys.executable, str(REPO / "benchmarks" / "checkpoints.py"), "--epochs", "2", "--steps", "1"]
    command += ["--size", "16", "--base-channels", "4", "--output", str(output), "--date", "2000-01-01"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in output.read_text().splitlines()[2:]]
    before, now = rows
    assert [before[2], now[2]] == ["before", "now"] and now[0] == "2000-01-01"
    assert now[9].startswith("best-step") and "," not in now[9]  # one file: the best weights
    assert "last.ckpt" in before[9]
    best, last = (int(n) for n in now[6].split(" + "))
    assert 1 <= best <= 2 and last == 0  # at most one best per validation; no last.ckpt within 5 minutes


def test_overhead_cpu_smoke(tmp_path, require_data):
    """The overhead benchmark runs end to end on the smallest real fraction: a real fit, bare Lightning, plain."""
    output, records = tmp_path / "overhead.md", tmp_path / "overhead.jsonl"
    command = [sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--datasets", "chase", "--repeats", "1"]
    command += ["--max-steps", "4", "--val-check-interval", "2", "--data-dir", str(require_data)]
    command += ["--set", "data.init_args.num_workers=0", "--set", "data.init_args.batch_size=3"]
    command += ["--output", str(output), "--date", "2000-01-01"]
    done = subprocess.run(
        [*command, "--records", str(records)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cells = one_row(output)
    assert cells[0] == "2000-01-01" and cells[1].startswith("CPU ") and "1 thread)" in cells[1]
    # chase 1/4's 4 images in batches of 3: every other step is a batch of one, left out of the per-step figures
    assert cells[2:6] == ["chase (0.25)", "tiny(channels=8), ÷8", "4 (2 full)", "2"]
    lightning, bare, plain = map(float, cells[6].split(" / "))
    assert min(lightning, bare, plain) > 0
    # the overheads are the ratios of the rounded step times shown, to their rounding
    assert float(cells[7].rstrip("%")) == pytest.approx(100 * (lightning / plain - 1), abs=1.5)
    assert float(cells[8].rstrip("%")) == pytest.approx(100 * (bare / plain - 1), abs=1.5)
    means = list(map(float, cells[9].split(" / ")))
    assert min(means) > 0 and float(cells[10].rstrip("%")) == pytest.approx(100 * (means[0] / means[2] - 1), abs=1.5)
    # the record holds the repeat the row was made of, and names what produced it
    (record,) = map(json.loads, records.read_text().splitlines())
    assert (record["dataset"], record["machine"], record["model"]) == ("chase", cells[1], cells[3])
    assert record["command"][1:] == [*command[2:], "--records", str(records)]
    assert (
        record["code"]["commit"]
        == subprocess.check_output(["git", "-C", str(REPO), "rev-parse", "HEAD"], text=True).strip()
    )
    runs = [record[k] for k in ("lightning", "bare", "plain")]
    assert all(len(r) == 1 for r in runs)
    assert [r[0]["full_steps"] for r in runs] == [2, 2, 2]  # each side's step times: its batches of 3 only
    assert [f"{r[0]['step_cpu_ms']:.2f}" for r in runs] == cells[6].split(" / ")
    # the plot draws what the row shows
    (point,) = load_benchmark("overhead_plot").read_records(records)
    assert [f"{point[k]:+.0%}" for k in ("module", "bare", "module_mean")] == [cells[7], cells[8], cells[10]]
    assert [f"{point[k]:.1%}" for k in ("outside", "bare_outside", "plain_outside")] == [cells[11], *cells[16:18]]
    assert len(cells) == 24 and all(float(n) >= 0 for n in cells[23].split(" / "))  # page faults per step
    with pytest.raises(subprocess.CalledProcessError) as refused:  # the same file, other columns: refused at once
        output.write_text("| date | other |\n|---|---|\n")
        subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=True)
    assert "its last table has other columns" in refused.value.stderr


@pytest.mark.parametrize(
    ("records", "output", "message"),
    [
        ("no-folder/r.jsonl", None, "--records {tmp}/no-folder/r.jsonl: no folder {tmp}/no-folder; create it or give"),
        ("o.md", "o.md", "--records {tmp}/o.md: the --output file; give the JSON lines a file of their own"),
        ("r.md", None, "--records {tmp}/r.md: holds lines that are not JSON objects; give a file of records"),
    ],
)
def test_overhead_refuses_a_records_file_before_it_runs(tmp_path, records, output, message):
    overhead = load_benchmark("overhead")
    (tmp_path / "r.md").write_text("| date | machine |\n")
    argv = ["--records", str(tmp_path / records), *(["--output", str(tmp_path / output)] if output else [])]
    with pytest.raises(SystemExit, match=re.escape(message.format(tmp=tmp_path))):
        overhead.main(argv)


@pytest.mark.parametrize(
    ("compare", "turns"),
    [
        ("profiler", "PassThroughProfiler / NullProfiler"),
        ("hook-bookkeeping", "nn.Module.__setattr__ / object.__setattr__"),
        ("nonfinite-guard", "NonFiniteGuard(patience=1) / NonFiniteGuard(patience=0)"),
    ],
)
def test_the_turns_benchmark_alternates_two_settings_in_blocks_of_steps(tmp_path, require_data, compare, turns):
    """A real fit of 8 steps in blocks of 2: each setting runs 4 steps, in turns, and the row gives their ratios."""
    output = tmp_path / "turns.md"
    command = [sys.executable, str(REPO / "benchmarks" / "turns.py"), "--datasets", "chase", "--block", "2"]
    command += ["--compare", compare]
    command += ["--max-steps", "8", "--val-check-interval", "4", "--data-dir", str(require_data)]
    command += ["--set", "data.init_args.num_workers=0", "--output", str(output), "--date", "2000-01-01"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = one_row(output)
    assert cells[0] == "2000-01-01" and cells[1].startswith("CPU ") and cells[2] == "chase (0.25)"
    assert cells[3:6] == ["tiny(channels=8), ÷8", turns, "4"]
    check_paired_cells(cells[6:11])
    assert cells[11] == "3"  # 4 blocks of 2 steps, by turns: 3 neighbours


def test_the_paired_ratio_compares_every_two_neighbouring_blocks():
    turns = load_benchmark("turns")
    labels = [0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0]
    seconds = [3.0, 9.0, 6.0, 2.0, 3.0, 4.0, 4.0, 8.0, 4.0, 2.0, 1.0]
    # block medians 6, 3, 6, 3, 1: each neighbour pair as first turn / second turn, in either order
    assert turns.paired_ratio(labels, seconds) == [2.0, 2.0, 2.0, 1 / 3]
    assert turns.paired_ratio([1, 1, 0, 0], [1.0, 1.0, 2.0, 2.0]) == [2.0]
    assert turns.paired_ratio([0, 0], [1.0, 1.0]) == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["--block", "0"], "--block must be ≥ 1, got 0"),
        (["--max-steps", "7"], "--max-steps must exceed --block (7) for both turns to run, got 7"),
        (["--compare", "optimizer"], "argument --compare: invalid choice: 'optimizer'"),
    ],
)
def test_the_turns_benchmark_refuses_bad_arguments_before_any_fit(capsys, bad, message):
    turns = load_benchmark("turns")
    with pytest.raises(SystemExit) as refused:
        turns.main(["--datasets", "chase", *bad])
    assert refused.value.code == 2 and message in capsys.readouterr().err


def test_the_alternating_clock_turns_the_nonfinite_guard_off_and_on(tmp_path):
    from lightning_seg.callbacks import NonFiniteGuard

    turns = load_benchmark("turns")
    guard = NonFiniteGuard(patience=1)
    callback = turns.Alternating(str(tmp_path / "clock.json"), compare="nonfinite-guard", block=1)
    trainer = SimpleNamespace(global_step=0, callbacks=[guard, callback])
    seen = []
    for step in range(4):
        trainer.global_step = step
        callback.on_train_batch_start(trainer, None, None, step)
        seen.append(guard.patience)
    assert seen == [1, 0, 1, 0]
    trainer.callbacks = [callback]
    with pytest.raises(RuntimeError, match="the fit has no NonFiniteGuard"):
        callback.on_train_batch_start(trainer, None, None, 4)


@pytest.mark.parametrize(
    ("options", "compared"),
    [
        ([], "Lightning / plain twin"),
        (["--control"], "plain twin / second plain twin"),
        (["--twin-first"], "Lightning / plain twin before it"),
    ],
)
def test_the_twin_benchmark_pairs_every_real_step_with_a_plain_one(tmp_path, require_data, options, compared):
    """A real fit of 6 steps with its plain twin: the row's ratios follow from its step times."""
    output = tmp_path / "twin.md"
    command = [sys.executable, str(REPO / "benchmarks" / "twin.py"), "--datasets", "chase", "--max-steps", "6"]
    command += ["--val-check-interval", "3", "--data-dir", str(require_data), "--set", "data.init_args.num_workers=0"]
    command += ["--set", "data.init_args.batch_size=3", "--output", str(output), "--date", "2000-01-01", *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = one_row(output)
    assert cells[0] == "2000-01-01" and cells[1].startswith("CPU ")
    # chase 1/4's 4 images in batches of 3: the batches of one are left out of the figures
    assert cells[2:6] == ["chase (0.25)", "tiny(channels=8), ÷8", compared, "6 (3 full)"]
    median = check_paired_cells(cells[6:11])
    # the overhead in whole per cent of the unrounded median, the median cell to three decimals
    assert abs(float(cells[11].rstrip("%")) - 100 * (median - 1)) <= 0.56


def test_a_failed_fit_ends_a_benchmark_with_the_fits_own_error_line(tmp_path):
    twin = load_benchmark("twin")
    with pytest.raises(SystemExit) as failed:
        twin.main(["--datasets", "chase", "--data-dir", str(tmp_path / "none"), "--max-steps", "4"])
    message = str(failed.value.code)
    assert "\n" not in message and "the chase fit failed (exit 1): lightning-seg: error: " in message
    assert f"dataset folder {tmp_path / 'none' / 'chase'} not found" in message


@pytest.mark.parametrize("first", [False, True])
def test_the_plain_twin_trains_its_own_copy_on_the_real_steps_batch(tmp_path, first):
    """Each twin takes one Adam step on the batch at every real step, outside the step's time; the real model is
    left alone."""
    import torch

    from lightning_seg.losses import build_loss
    from lightning_seg.models import build_model

    twin = load_benchmark("twin")
    torch.manual_seed(0)
    real = SimpleNamespace(model=build_model("tiny", 1, 2, channels=4), loss=build_loss("caml"))
    before = [p.detach().clone() for p in real.model.parameters()]
    clock = twin.PlainTwin(str(tmp_path / "clock.json"), twins=2, first=first)
    trainer = SimpleNamespace(current_epoch=0, global_step=0)
    clock.on_train_start(trainer, real)
    batch = {"image": torch.randn(2, 1, 8, 8), "mask": torch.randint(0, 2, (2, 8, 8))}
    for step in range(3):
        clock.on_train_batch_start(trainer, real, batch, step)
        assert [len(seconds) for seconds in clock.twin_cpu] == [step + first] * 2  # before the step, or not yet
        clock.on_train_batch_end(trainer, real, None, batch, step)
    assert len(clock.step_cpu) == 3 and [len(seconds) for seconds in clock.twin_cpu] == [3, 3]
    # nothing runs between the clock's two hooks here: a twin inside the step's time would make it the longer
    assert max(clock.step_cpu) < min(clock.twin_cpu[0] + clock.twin_cpu[1])
    for model, _, optimizer in clock.plain:
        assert model is not real.model and optimizer.state_dict()["state"][0]["step"].item() == 3
        assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    # the two twins start from the same weights and see the same batches: they stay equal
    first, second = (list(model.parameters()) for model, _, _ in clock.plain)
    assert all(torch.equal(p, q) for p, q in zip(first, second, strict=True))
    assert all(torch.equal(p, q) for p, q in zip(real.model.parameters(), before, strict=True))


@pytest.mark.parametrize(
    ("real", "twin", "expected"),
    [
        ([2.0, 3.0], [1.0, 2.0], [2.0, 1.5]),
        ([], [], []),
        ([1.0], [1.0, 1.0], "1 real steps against 2 twin steps"),
        ([1.0], [0.0], "a twin step took no CPU time"),
    ],
)
def test_the_paired_ratios_are_per_step(real, twin, expected):
    paired_ratios = load_benchmark("twin").paired_ratios
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=re.escape(expected)):
            paired_ratios(real, twin)
    else:
        assert paired_ratios(real, twin) == expected


def test_a_twin_record_compares_the_real_steps_or_the_two_twins_of_full_batches():
    compared = load_benchmark("twin").compared
    clock = {"step_cpu": [3.0, 0.5, 4.0], "twin_cpu": [[2.0, 0.4, 3.0]], "step_images": [4, 1, 4]}
    assert compared(clock, control=False) == ("Lightning / plain twin", [3.0, 4.0], [2.0, 3.0])
    assert compared(clock, control=False, first=True) == ("Lightning / plain twin before it", [3.0, 4.0], [2.0, 3.0])
    clock = {"step_cpu": [3.0, 0.5], "twin_cpu": [[2.0, 0.4], [1.0, 0.3]], "step_images": [4, 1]}
    assert compared(clock, control=True) == ("plain twin / second plain twin", [2.0], [1.0])
    assert compared(clock, control=True, first=True)[0] == "plain twin / second plain twin, before the step"


@pytest.mark.parametrize(
    ("steps", "batches", "epochs"),
    [
        (7, ["a0", "b0", "c0", "a1", "b1", "c1", "a2"], [0, 1, 2]),  # the last pass cut short, none begun after it
        (3, ["a0", "b0", "c0"], [0]),
        (0, [], []),
    ],
)
def test_the_loops_outside_lightning_take_the_batches_of_a_fit_of_as_many_steps(steps, batches, epochs):
    """Passes of a 3-batch loader, each after ``set_epoch`` with the pass's number, as Lightning sets it."""

    class Sampler:
        epoch, epochs = 0, []

        def set_epoch(self, epoch):
            self.epoch = epoch
            self.epochs.append(epoch)

    sampler = Sampler()

    class Loader:
        batch_sampler = SimpleNamespace(sampler=sampler)

        def __iter__(self):
            return iter(f"{name}{sampler.epoch}" for name in "abc")

    assert list(load_benchmark("overhead").training_batches(Loader(), steps)) == batches
    assert sampler.epochs == epochs


@pytest.mark.parametrize(
    ("values", "images", "expected"),
    [
        ([1.0, 2.0, 3.0], [4, 4, 4], [1.0, 2.0, 3.0]),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [4, 4, 1, 4, 4, 1], [1.0, 2.0, 4.0, 5.0]),  # COVID-19 1/8: 9 slices
        ([0, 1, 0, 1], [2, 3, 2, 3], [1, 1]),  # the largest batch is the full one, wherever it falls
        ([], [], []),
        ([1.0], [4, 1], "1 steps against 2 batch sizes"),
    ],
)
def test_per_step_figures_take_the_steps_of_full_batches(values, images, expected):
    overhead = load_benchmark("overhead")
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=re.escape(expected)):
            overhead.full_batches(values, images)
    else:
        assert overhead.full_batches(values, images) == expected


@pytest.mark.parametrize(
    ("total", "full", "short", "cell"),
    [
        (3600, 3600, None, "3600"),
        (3600, 2400, None, "3600 (2400 full)"),
        (1998, 1998, True, "1998 (1998 full)"),  # turns.py: the fewer steps of a turn, though the other lost some
        (1998, 1332, False, "1998"),
    ],
)
def test_a_row_counts_the_steps_and_says_how_many_were_full(total, full, short, cell):
    assert load_benchmark("overhead").steps_cell(total, full, short) == cell


def test_the_turns_leave_the_short_batches_out_of_both_turns_and_the_pairs(tmp_path, monkeypatch):
    turns = load_benchmark("turns")
    # with the steps of one image, the blocks' medians would be 1.05, 1.0 and 1.05
    clock = {
        "labels": [0, 0, 1, 1, 0, 0],
        "step_cpu": [2.0, 0.1, 1.0, 1.0, 2.0, 0.1],
        "step_images": [4, 1, 4, 4, 4, 1],
    }
    monkeypatch.setattr(turns, "run_fit", lambda *args, **kwargs: clock)
    args = SimpleNamespace(compare="profiler", block=2, control=False)
    steps, counts, pairs = turns.run("covid19", args, tmp_path)
    assert steps == ([2.0, 2.0], [1.0, 1.0]) and counts == (4, 2) and pairs == [2.0, 2.0]
    # steps each: the fewer of the two turns', marked where a turn lost steps of short batches
    assert turns.row("d", "m", "tiny", "a / b", "covid19", steps, counts, pairs).split(" | ")[5] == "2 (2 full)"


def test_a_block_without_a_full_batch_pairs_with_neither_neighbour():
    """The blocks are those the fit ran: leaving a step out never joins the blocks on either side of it."""
    paired_ratio = load_benchmark("turns").paired_ratio
    labels, seconds = [0, 1, 0, 1, 0], [2.0, 0.1, 4.0, 1.0, 2.0]
    assert paired_ratio(labels, seconds, [4, 1, 4, 4, 4]) == [4.0, 2.0]
    assert paired_ratio(labels, seconds) == [20.0, 40.0, 4.0, 2.0]


def test_the_alternating_clock_gives_each_block_of_steps_its_profiler(tmp_path):
    turns = load_benchmark("turns")
    callback = turns.Alternating(str(tmp_path / "clock.json"), block=3)
    trainer = SimpleNamespace(global_step=0, profiler=None)
    kinds = []
    for step in range(9):
        trainer.global_step = step
        callback.on_train_batch_start(trainer, None, None, step)
        kinds.append(type(trainer.profiler).__name__)
    assert kinds == ["PassThroughProfiler"] * 3 + ["NullProfiler"] * 3 + ["PassThroughProfiler"] * 3
    assert callback.labels == [0, 0, 0, 1, 1, 1, 0, 0, 0]
    control = turns.Alternating(str(tmp_path / "control.json"), block=1, control=True)
    assert [type(p).__name__ for p in control.settings] == ["PassThroughProfiler"] * 2
    assert control.settings[0] is not control.settings[1]


def test_the_alternating_clock_switches_the_modules_hook_bookkeeping(tmp_path, monkeypatch):
    """The module's fast path is off in the first turn and on in the second, as the module reads it."""
    import lightning_seg.module as module

    monkeypatch.setattr(module, "HOOK_BOOKKEEPING", module.HOOK_BOOKKEEPING)  # restored after the test
    turns = load_benchmark("turns")
    callback = turns.Alternating(str(tmp_path / "clock.json"), compare="hook-bookkeeping", block=2)
    trainer = SimpleNamespace(global_step=0)
    seen = []
    for step in range(6):
        trainer.global_step = step
        callback.on_train_batch_start(trainer, None, None, step)
        seen.append(sorted(module.HOOK_BOOKKEEPING))
    assert seen == [[], [], ["_current_fx_name"], ["_current_fx_name"], [], []]
    assert turns.turn_labels("hook-bookkeeping", control=True) == ("nn.Module.__setattr__",) * 2


@pytest.mark.parametrize(
    ("seconds", "expected_ms"),
    [
        ([0.004], 4.0),
        ([0.001, 0.010], 1.9),  # interpolated between the two, never below the fastest
        ([0.001 * k for k in range(1, 7)], 1.5),
        ([0.001 * k for k in range(11)], 1.0),  # 0..10 ms: the lower decile is 1 ms
    ],
)
def test_the_step_is_the_lower_decile_of_the_measured_steps(seconds, expected_ms):
    overhead = load_benchmark("overhead")
    assert overhead.step_cpu_ms(seconds) == pytest.approx(expected_ms)
    assert overhead.step_cpu_ms(seconds) >= 1000 * min(seconds)


def test_rows_are_appended_only_under_their_own_columns(tmp_path):
    models = load_benchmark("models")
    header = "| date | a | b |\n|---|---:|---:|"
    output = tmp_path / "table.md"
    models.append_table(output, header, ["| 1 | 2 | 3 |"])
    models.append_table(output, header, ["| 4 | 5 | 6 |"])
    assert output.read_text().splitlines() == [*header.splitlines(), "| 1 | 2 | 3 |", "| 4 | 5 | 6 |"]
    with pytest.raises(SystemExit, match=r"table\.md: its last table has other columns"):
        models.append_table(output, "| date | a | b | c |\n|---|---:|---:|---:|", ["| 7 | 8 | 9 | 0 |"])
    assert len(output.read_text().splitlines()) == 4  # nothing written


def test_prediction_cpu_smoke(tmp_path, capsys):
    prediction = load_benchmark("prediction")
    output = tmp_path / "prediction.md"
    args = ["--repeats", "2", "--warmup", "0", "--shapes", "2x3x8x8", "1x2x4x4", "--output", str(output)]
    assert prediction.main([*args, "--date", "2000-01-01"]) == 0
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in output.read_text().splitlines()[2:]]
    assert [(cells[0], cells[3]) for cells in rows] == [("2000-01-01", "2×3×8×8"), ("2000-01-01", "1×2×4×4")]
    assert all(float(cells[4]) > 0 and float(cells[5]) > 0 and cells[6].endswith("×") for cells in rows)
    with pytest.raises(SystemExit) as bad:
        prediction.main(["--shapes", "4x5"])
    assert (
        bad.value.code == 2
        and "a shape is N×C×H×W written NxCxHxW, e.g. 4x5x256x256; got '4x5'" in capsys.readouterr().err
    )


def test_augmentation_cpu_smoke(tmp_path, capsys):
    augmentation = load_benchmark("augmentation")
    output = tmp_path / "augmentation.md"
    args = ["--datasets", "synthetic", "--repeats", "2", "--items", "4", "--output", str(output)]
    assert augmentation.main([*args, "--date", "2000-01-01"]) == 0
    cells = one_row(output)
    assert (cells[0], cells[3], cells[4]) == ("2000-01-01", "synthetic", "1×48×48")
    assert float(cells[5]) > 0 and float(cells[6]) > 0 and cells[7].endswith("×")
    with pytest.raises(SystemExit) as bad:
        augmentation.main(["--items", "0"])
    assert bad.value.code == 2 and "--repeats and --items must be ≥ 1" in capsys.readouterr().err


def overhead_record(dataset: str, plain_ms: list[float], lightning_ms: list[float], *options: str) -> dict:
    """A record as ``overhead.py --records`` writes it: repeats with the figures the plot reads."""
    runs = {
        "lightning": [{"step_cpu_ms": ms, "step_cpu_mean_ms": 2 * ms, "outside_train": 0.2} for ms in lightning_ms],
        "bare": [{"step_cpu_ms": ms, "step_cpu_mean_ms": ms, "outside_train": 0.1} for ms in plain_ms],
        "plain": [
            {"step_cpu_ms": ms, "step_cpu_mean_ms": ms, "step_mean_ms": 9.0, "wall_per_step_ms": 10.0}
            for ms in plain_ms
        ],
    }
    code = {"lightning_seg": "0", "commit": "a" * 40, "modified": False}
    command = ["benchmarks/overhead.py", "--datasets", dataset, *options]
    record = {"dataset": dataset, "machine": "CPU x", "model": "tiny(channels=8), ÷8", "code": code, "command": command}
    return {**record, **runs}


def test_overhead_plot_draws_the_ratios_of_the_medians_over_repeats(tmp_path):
    plot = load_benchmark("overhead_plot")
    records = tmp_path / "overhead.jsonl"
    # skewed repeats: the ratio of the medians (4 / 2 = 2) is neither the median of the ratios (1.25) nor the ratio of
    # the means (21 / 13)
    chase = overhead_record("chase", [1.0, 2.0, 10.0], [3.0, 4.0, 14.0])
    covid = overhead_record("covid19", [10.0], [11.0], "--model-kwargs", '{"channels": 32}')
    records.write_text(json.dumps(chase) + "\n\n" + json.dumps(covid) + "\n")  # a blank line is skipped
    chase, covid = plot.read_records(records)
    assert (
        chase["step_ms"] == 2.0 and chase["module"] == pytest.approx(1.0) and chase["module_mean"] == pytest.approx(3.0)
    )
    assert chase["bare"] == 0 and (chase["outside"], chase["bare_outside"]) == (0.2, 0.1)
    assert chase["plain_outside"] == pytest.approx(0.1)  # 1 - 9 ms of steps / 10 ms of wall per step
    assert covid["step_ms"] == 10.0 and covid["module"] == pytest.approx(0.1)
    assert chase["settings"] == {"loss": "caml", "max_steps": None, "val_check_interval": None, "set": [], "threads": 1}
    fig = plot.figure([chase, covid])
    per_step, outside = fig.axes
    # chase's Lightning run and bare Lightning, then covid19's, a colour per dataset, a line style per series
    assert [line.get_ydata()[0] for line in per_step.lines[:4]] == pytest.approx([100.0, 0.0, 10.0, 0.0])
    assert [line.get_linestyle() for line in per_step.lines[:4]] == ["-", ":", "-", ":"]
    assert len({line.get_color() for line in per_step.lines[:4]}) == 2
    assert [line.get_xdata().tolist() for line in outside.lines[:3]] == [[2.0]] * 3  # chase's three series
    assert [line.get_ydata()[0] for line in outside.lines[:3]] == pytest.approx([20.0, 10.0, 10.0])
    png = plot.plot([chase, covid], tmp_path / "figures" / "overhead.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "overhead.jsonl: no such file; give the file of overhead.py --records"),
        ("\n", "overhead.jsonl: no records in it; write them with overhead.py --records"),
        (b"\x89PNG\r\n", "overhead.jsonl: not a text file ("),
        (
            "| date | machine |\n",
            "overhead.jsonl:1: not JSON (a Markdown table of --output?); give the file of --records",
        ),
        ('{"dataset": "chase"}\n', "overhead.jsonl:1: not a record of overhead.py --records (KeyError: 'lightning')"),
        ("RECORD\n[]\n", "overhead.jsonl:2: not a record of overhead.py --records (TypeError"),
        ('RECORD\n{"dataset": null}\n', "overhead.jsonl:2: not a record of overhead.py --records (KeyError"),
        ("NULL_CODE\n", "overhead.jsonl:1: not a record of overhead.py --records (TypeError: 'NoneType'"),
        ("FOREIGN\n", "overhead.jsonl:1: not a record of overhead.py --records (ValueError: its command is not overh"),
        ("RECORD\nOTHER_LOSS\n", "overhead.jsonl:2: chase on this machine ran with other loss than in an earlier line"),
    ],
)
def test_overhead_plot_refuses_what_is_not_a_records_file_in_one_line(tmp_path, capsys, content, message):
    plot = load_benchmark("overhead_plot")
    records = tmp_path / "overhead.jsonl"
    record = overhead_record("chase", [1.0], [1.0])
    if isinstance(content, bytes):
        records.write_bytes(content)
    elif content is not None:
        replacements = {
            "RECORD": record,
            "NULL_CODE": {**record, "code": None},
            "FOREIGN": {**record, "command": ["overhead.py", "--no-such-option"]},
            "OTHER_LOSS": overhead_record("chase", [1.0], [1.0], "--loss", "ce"),
        }
        for name, value in replacements.items():
            content = content.replace(name, json.dumps(value))
        records.write_text(content)
    with pytest.raises(SystemExit) as exit:
        plot.main([str(records), "--output", str(tmp_path / "x.png")])
    assert exit.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"overhead_plot.py: error: {records}") and message in line
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("output", ["x.xyz", "x"])
def test_overhead_plot_refuses_an_output_it_cannot_write(tmp_path, capsys, output):
    plot = load_benchmark("overhead_plot")
    with pytest.raises(SystemExit) as exit:
        plot.main([str(tmp_path / "overhead.jsonl"), "--output", str(tmp_path / output)])
    assert exit.value.code == 2
    assert f"--output {tmp_path / output}: give a file ending in .png, .pdf, .svg" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("models", "labels", "whole"),
    [
        (["tiny(channels=8), ÷8", "tiny(channels=32), ÷8"], ["8", "32"], "tiny(channels=…), ÷8"),
        (["tiny(channels=8), ÷8", "tiny(channels=8), ÷2"], ["8", "2"], "tiny(channels=8), ÷…"),
        (["unet(), ÷2", "tiny(channels=8), ÷2"], ["unet(", "tiny(channels=8"], "…), ÷2"),
        (["tiny(channels=8), ÷8"] * 2, ["", ""], "tiny(channels=8), ÷8"),  # nothing tells them apart: no labels
    ],
)
def test_overhead_plot_labels_a_point_with_what_tells_its_model_apart(models, labels, whole):
    assert load_benchmark("overhead_plot").model_labels(models) == (labels, whole)


@pytest.mark.parametrize(("threads", "named"), [(1, "1 thread)"), (3, "3 threads)"), (None, None)])
def test_a_cpu_row_names_the_threads_of_the_runs_it_measures(threads, named):
    """Scripts whose runs are other processes name those runs' threads without setting this process's."""
    before = torch.get_num_threads()
    name = load_benchmark("models").device_name(torch.device("cpu"), threads=threads)
    plural = "" if before == 1 else "s"
    assert name.startswith("CPU ") and name.endswith(named or f" {before} thread{plural})")
    assert f"({os.cpu_count()} cores, " in name and torch.get_num_threads() == before


ALL_DATASETS = ["chase", "covid19", "drosophila"]


@pytest.mark.parametrize(
    ("name", "datasets", "widths", "model"),
    [
        ("overhead-steps", ALL_DATASETS, 4, "tiny(channels=…), ÷8"),
        ("overhead-steps-4f07c5f", ALL_DATASETS, 5, "tiny(channels=…), ÷8"),
        ("overhead-workers-4f07c5f", ["drosophila"], 1, "tiny(channels=128), ÷8"),
    ],
)
def test_the_committed_overhead_records_are_drawable(name, datasets, widths, model):
    """benchmarks/results/<name>.jsonl, the source of a figure or a figure of benchmarks/README.md, reads with
    today's reader: one point for each dataset at each width of one model."""
    plot = load_benchmark("overhead_plot")
    points = plot.read_records(REPO / "benchmarks" / "results" / f"{name}.jsonl")
    assert sorted({p["dataset"] for p in points}) == datasets
    assert len(points) == len(datasets) * widths == len({(p["dataset"], p["model"]) for p in points})
    assert plot.model_labels([p["model"] for p in points])[1] == model


@pytest.mark.parametrize(
    ("options", "compared"),
    [
        (["--compare", "manual-optimization"], "automatic / manual optimisation (Lightning)"),
        (["--compare", "manual-optimization", "--control"], "automatic / automatic optimisation (Lightning)"),
        (["--compare", "fabric"], "Fabric / plain twin"),
        (["--compare", "fabric", "--control"], "plain / plain twin"),
    ],
)
def test_the_loops_benchmark_pairs_two_loops_on_a_real_fits_parts(tmp_path, require_data, options, compared):
    """8 steps on chase 1/4's 4 images in batches of 3 (every other step a batch of one, left out of the figures)."""
    output = tmp_path / "loops.md"
    command = [sys.executable, str(REPO / "benchmarks" / "loops.py"), *options, "--datasets", "chase"]
    command += ["--steps", "8", "--block", "2", "--data-dir", str(require_data)]
    command += ["--set", "data.init_args.num_workers=0", "--set", "data.init_args.batch_size=3"]
    command += ["--output", str(output), "--date", "2000-01-01"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = one_row(output)
    assert cells[0] == "2000-01-01" and cells[1].startswith("CPU ") and "1 thread)" in cells[1]
    assert cells[2:6] == ["chase (0.25)", "tiny(channels=8), ÷8", compared, "8 (4 full)"]
    check_paired_cells(cells[6:11])


def test_a_failed_loops_run_ends_in_one_line_naming_the_dataset(tmp_path, monkeypatch):
    loops = load_benchmark("loops")
    monkeypatch.delenv("LIGHTNING_SEG_DEBUG", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    threads, during = torch.get_num_threads(), []
    name = loops.device_name
    monkeypatch.setattr(loops, "device_name", lambda *a, **k: during.append(torch.get_num_threads()) or name(*a, **k))
    torch.set_num_threads(2)
    try:
        with pytest.raises(SystemExit) as failed:
            loops.main(["--datasets", "chase", "--steps", "20", "--data-dir", str(tmp_path / "none")])
        # the loops ran with --threads 1 (the default); the caller's process has its own count back
        assert during == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    # only the script hides CUDA: a caller's process keeps its devices (Ray's GPU tests run in the same workers)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    message = str(failed.value.code)
    assert "\n" not in message and message.startswith("loops.py: error: the chase run failed: FileNotFoundError: ")
    assert f"dataset folder {tmp_path / 'none' / 'chase'} not found" in message
    assert message.endswith("(the traceback: LIGHTNING_SEG_DEBUG=1)")
    monkeypatch.setenv("LIGHTNING_SEG_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        loops.main(["--datasets", "chase", "--steps", "20", "--data-dir", str(tmp_path / "none")])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["--block", "0"], "--block must be ≥ 1, got 0"),
        (["--steps", "14"], "--steps must exceed two blocks (14) for a pair of turns, got 14"),
        (["--compare", "trainer"], "argument --compare: invalid choice: 'trainer'"),
        (["--max-steps", "100"], "--max-steps and --val-check-interval set a fit's trainer, which these loops do not"),
        (["--threads", "0"], "argument --threads: must be ≥ 1, got 0"),
        (["--threads", "two"], "argument --threads: must be an integer ≥ 1, got 'two'"),
    ],
)
def test_the_loops_benchmark_refuses_bad_arguments_before_any_run(capsys, bad, message):
    with pytest.raises(SystemExit) as refused:
        load_benchmark("loops").main(["--datasets", "chase", *bad])
    assert refused.value.code == 2 and message in capsys.readouterr().err


def test_manual_optimisation_by_turns_trains_as_automatic_optimisation_does(tmp_path):
    """The same model, batches and Adam: a fit that switches kinds every step ends with the weights of a fit in
    automatic optimisation alone, and stops at its own count of steps."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from lightning_seg.losses import build_loss
    from lightning_seg.models import build_model

    loops = load_benchmark("loops")
    torch.manual_seed(0)
    data = [{"image": torch.randn(1, 8, 8), "mask": torch.randint(0, 2, (8, 8))} for _ in range(6)]
    model = build_model("tiny", 1, 2, channels=4)
    fits = {}
    for name in ("automatic", "by turns"):
        module = loops.SwitchingModule(copy.deepcopy(model), build_loss("ce"))
        clock = loops.OptimisationTurns(str(tmp_path / f"{name}.json"), steps=7, block=1 if name == "by turns" else 7)
        trainer = L.Trainer(
            max_epochs=-1,  # the clock alone ends the fit
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            callbacks=[clock],
        )
        trainer.fit(module, DataLoader(data, batch_size=2))
        loop = trainer.fit_loop.epoch_loop
        steps = loop.automatic_optimization.optim_progress.optimizer_steps
        fits[name] = (module, clock.labels, (steps, loop.manual_optimization.optim_step_progress.total.completed))
    (automatic, labels, counts), (switching, turns, switching_counts) = fits["automatic"], fits["by turns"]
    assert labels == [0] * 7 and turns == [0, 1, 0, 1, 0, 1, 0]
    assert counts == (7, 0) and switching_counts == (4, 3)  # the optimizer steps each kind took
    control = loops.OptimisationTurns(str(tmp_path / "control.json"), steps=7, block=1, control=True)
    module = SimpleNamespace(automatic_optimization=True)
    for step in range(3):
        control.on_train_batch_start(None, module, {"mask": torch.zeros(2, 8, 8)}, step)
        assert module.automatic_optimization  # the control's second turn is automatic too
    assert control.labels == [0, 1, 0]
    for p, q in zip(automatic.parameters(), switching.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), switching.parameters(), strict=True))


@pytest.mark.parametrize("control", [False, True])
def test_the_fabric_sides_share_nothing_and_do_the_same_arithmetic(control):
    import lightning as L
    import torch

    from lightning_seg.losses import build_loss
    from lightning_seg.models import build_model

    loops = load_benchmark("loops")
    torch.manual_seed(0)
    model, loss = build_model("tiny", 1, 2, channels=4), build_loss("caml")
    before = [p.detach().clone() for p in model.parameters()]
    first, second = loops.sides(model, loss, control)
    assert isinstance(first[0], L.fabric.wrappers._FabricModule) is not control
    assert (first[3] is torch.Tensor.backward) is control and second[3] is torch.Tensor.backward
    ids = [{id(p) for p in side[0].parameters()} for side in (first, second)]
    assert not ids[0] & ids[1] and second[1] is not loss and first[2] is not second[2]
    assert {id(p) for group in second[2].param_groups for p in group["params"]} == ids[1]
    for _ in range(3):
        batch = {"image": torch.randn(2, 1, 8, 8), "mask": torch.randint(0, 2, (2, 8, 8))}
        assert loops.timed_step(*first, batch) > 0 and loops.timed_step(*second, batch) > 0
    for p, q in zip(first[0].parameters(), second[0].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert any(not torch.equal(p, q) for p, q in zip(second[0].parameters(), before, strict=True))  # both stepped


@pytest.mark.parametrize(
    ("labels", "images", "message"),
    [
        ([0, 1, 0, 1], [3, 1, 3, 1], "4 steps (2 of full batches) fill less than two turns of --block 1"),
        ([0, 0, 0, 0], [3, 3, 3, 3], "4 steps (4 of full batches) fill less than two turns of --block 4"),
    ],
)
def test_turns_without_full_batches_on_both_sides_end_in_one_line(labels, images, message):
    turns = load_benchmark("turns")
    clock = {"labels": labels, "step_cpu": [1.0] * len(labels), "step_images": images}
    with pytest.raises(SystemExit, match=re.escape(message)):
        turns.by_turns(clock, int(message.split("--block ")[1]))
