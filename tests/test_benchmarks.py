"""The benchmark scripts under benchmarks/: they run end to end in CPU smoke mode (nothing is timed here)."""

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKING = REPO / "benchmarks" / "packing.py"


def load_packing():
    spec = importlib.util.spec_from_file_location("benchmark_packing", PACKING)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_packed_throughput_counts_steps_inside_the_common_window():
    packing = load_packing()
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
    packing = load_packing()
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
    command = [sys.executable, str(PACKING), "--device", "cpu", "--size", "32", "--packs", "1", "2"]
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
