"""Batch statistics across processes: every registered loss on two gloo processes, each holding a share of a
batch, against the same loss on the whole batch in this (non-distributed) process.

On every process the value and the logged parts must equal the single-process ones, and the gradient on the
process's logits must be twice (the number of processes) its slice of the single-process gradient, which DDP's
averaging turns into the exact single-process gradient (checked with a real DDP step). With
``sync_stats=False`` each process computes the loss of its own share.

The two worker processes are started once for the module (``torch.multiprocessing``) and run every case of a
scenario in one round trip; every wait is bounded.
"""

from __future__ import annotations

import os
import queue
import tempfile
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lightning_seg.losses import LOSSES, build_loss
from lightning_seg.losses.paper import PBARS

WORLD_SIZE = 2
IGNORE = 255
#: Seconds to wait for the workers to start, and for one scenario's results.
START_TIMEOUT, CASE_TIMEOUT = 120, 120
NUM_CLASSES = 4
ALPHA_GRADS = ("pbar", "none", "full")

#: (registry name, arguments): the paper's losses with every CAML reading and gradient option, and every survey
#: loss (defaults, plus the options that change how the batch enters).
CONFIGS: list[tuple[str, dict]] = [
    ("ce", {}),
    ("dice", {}),
    ("dice", {"absent_classes": "exclude"}),
    ("dice", {"smooth": 0.0}),
    ("additive", {"lam": 0.3}),
    ("ml", {}),
    *[("caml", {"pbar": p, "alpha_grad": g}) for p in PBARS for g in ALPHA_GRADS],
    ("caml", {"absent_classes": "exclude"}),
    *[("caml_fixed_r", {"r": 2.0, "pbar": p}) for p in PBARS],
    *[(name, {}) for name in sorted(LOSSES) if name not in {"ce", "dice", "additive", "ml", "caml", "caml_fixed_r"}],
    ("lovasz", {"per_image": True}),
    ("lovasz", {"classes": "all"}),
    ("weighted_ce", {"weight": [1.0, 2.0, 0.5, 3.0]}),
    ("weighted_ce", {"weight": "inverse_sqrt_frequency"}),
    ("focal", {"alpha": [1.0, 2.0, 0.5, 3.0]}),
    ("tversky", {"absent_classes": "exclude"}),
    ("boundary", {"region_weight": 1.0}),
    ("hausdorff_dt", {"dice_weight": 1.0}),
    ("ce_kl_region", {"temperature": 10.0}),
]


def cfg_id(cfg) -> str:
    name, kw = cfg
    return name + ("[" + ",".join(f"{k}={v}" for k, v in kw.items()) + "]" if kw else "")


# ---------------------------------------------------------------------------------------------------------------
# Scenarios: a batch and how it is split between the two processes
# ---------------------------------------------------------------------------------------------------------------


def blobs(n: int, seed: int) -> torch.Tensor:
    """Blob-like N×8×8 targets over NUM_CLASSES classes (distance maps need regions, not noise)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    target = torch.zeros(n, 8, 8, dtype=torch.long)
    for b in range(n):
        for k in range(1, NUM_CLASSES):
            cy, cx = torch.randint(0, 8, (2,), generator=g).tolist()
            target[b][(yy - cy) ** 2 + (xx - cx) ** 2 <= 4] = k
    return target


def make_scenario(name: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Float64 logits (N×C×8×8), targets and the number of images of each process (rank order)."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    if name == "even":  # 2 + 2 images, a few ignored pixels on both
        target, sizes = blobs(4, 0), [2, 2]
        target[0, 0, :3] = IGNORE
        target[3, 5, 2:4] = IGNORE
    elif name == "ignored_on_one_rank":  # the second process has half its pixels ignored: uneven valid counts
        target, sizes = blobs(4, 1), [2, 2]
        target[2:, :4] = IGNORE
    elif name == "class_on_one_rank":  # class 3 only in the first process's image; 1 + 3 images
        target, sizes = blobs(4, 2), [1, 3]
        target[1:][target[1:] == 3] = 0
        target[0, 6:, 6:] = 3
    elif name == "all_ignored_on_one_rank":  # the first process has no labelled pixel at all
        target, sizes = blobs(3, 3), [1, 2]
        target[0] = IGNORE
    else:
        raise ValueError(name)
    logits = 2.0 * torch.randn(target.shape[0], NUM_CLASSES, 8, 8, generator=g, dtype=torch.float64)
    return logits, target, sizes


SCENARIOS = ["even", "ignored_on_one_rank", "class_on_one_rank", "all_ignored_on_one_rank"]


def loss_result(name: str, kwargs: dict, logits: torch.Tensor, target: torch.Tensor) -> dict:
    """Value, gradient and logged parts of one loss call."""
    fn = build_loss(name, **kwargs)
    x = logits.detach().clone().requires_grad_(True)
    value = fn(x, target)
    (grad,) = torch.autograd.grad(value, x)
    return {"value": value.detach(), "grad": grad, "parts": fn.parts.as_dict()}


# ---------------------------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------------------------


def ddp_step(loss_name: str, kwargs: dict, state: dict, images: torch.Tensor, target: torch.Tensor) -> dict:
    """One SGD step of a tiny convolutional model under DistributedDataParallel; the parameters after it."""
    torch.manual_seed(0)
    model = nn.Conv2d(2, NUM_CLASSES, 3, padding=1).double()
    model.load_state_dict(state)
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.5)
    loss = build_loss(loss_name, **kwargs)(ddp(images), target)
    loss.backward()
    optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_task(task: dict) -> object:
    if task["kind"] == "losses":
        return [
            loss_result(name, {**kwargs, **task["extra"]}, task["logits"], task["target"])
            for name, kwargs in task["configs"]
        ]
    if task["kind"] == "ddp_step":
        return ddp_step(task["loss"], task["kwargs"], task["state"], task["images"], task["target"])
    raise ValueError(task["kind"])


def worker(rank: int, init_file: str, tasks: mp.Queue, results: mp.Queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60)
    )
    results.put((rank, "ready", None))
    try:
        while (task := tasks.get()) is not None:
            try:
                results.put((rank, "ok", run_task(task)))
            except Exception:
                results.put((rank, "error", traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class Group:
    """Two worker processes sharing one gloo process group; :meth:`run` gives each its task, returns both results."""

    def __init__(self) -> None:
        # fork: the workers start with this process's imports (seconds, not a fresh torch import); they run
        # single-threaded, so no OpenMP pool is used across the fork.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.init_file = os.path.join(tempfile.mkdtemp(), "pg")
        self.tasks = [ctx.Queue() for _ in range(WORLD_SIZE)]
        self.results = ctx.Queue()
        self.procs = [
            ctx.Process(target=worker, args=(rank, self.init_file, self.tasks[rank], self.results), daemon=True)
            for rank in range(WORLD_SIZE)
        ]
        for proc in self.procs:
            proc.start()
        self.broken: str | None = None
        self.collect(START_TIMEOUT)

    def collect(self, timeout: float) -> list:
        out: list = [None] * WORLD_SIZE
        for _ in range(WORLD_SIZE):
            try:
                rank, status, payload = self.results.get(timeout=timeout)
            except queue.Empty:
                self.broken = f"no answer from the worker processes within {timeout} s"
                pytest.fail(self.broken)
            if status == "error":
                self.broken = f"worker {rank} failed:\n{payload}"
                pytest.fail(self.broken)
            out[rank] = payload
        return out

    def run(self, tasks: list[dict]) -> list:
        if self.broken:
            pytest.fail(f"the process group is unusable: {self.broken}")
        for q, task in zip(self.tasks, tasks, strict=True):
            q.put(task)
        return self.collect(CASE_TIMEOUT)

    def close(self) -> None:
        for q in self.tasks:
            q.put(None)
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


@pytest.fixture(scope="module")
def group():
    g = Group()
    yield g
    g.close()


def shares(tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(tensor, sizes))


def loss_tasks(logits, target, sizes, extra: dict) -> list[dict]:
    return [
        {"kind": "losses", "configs": CONFIGS, "extra": extra, "logits": x, "target": t}
        for x, t in zip(shares(logits, sizes), shares(target, sizes), strict=True)
    ]


@pytest.fixture(scope="module")
def synced(group) -> dict:
    """Per scenario: (inputs, per-rank results of every config with the default ``sync_stats=True``)."""
    out = {}
    for name in SCENARIOS:
        logits, target, sizes = make_scenario(name)
        out[name] = ((logits, target, sizes), group.run(loss_tasks(logits, target, sizes, {})))
    return out


@pytest.fixture(scope="module")
def local(group) -> dict:
    logits, target, sizes = make_scenario("ignored_on_one_rank")
    return (logits, target, sizes), group.run(loss_tasks(logits, target, sizes, {"sync_stats": False}))


def assert_close(actual, expected, what: str, rtol=1e-9, atol=1e-11) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------


def test_scenarios_cover_what_the_issue_asks():
    """Ignored pixels on one process only, a class on one process only, uneven valid-pixel counts."""
    _, target, sizes = make_scenario("ignored_on_one_rank")
    first, second = shares(target, sizes)
    assert not (first == IGNORE).any() and (second == IGNORE).any()
    assert (first != IGNORE).sum() != (second != IGNORE).sum()
    _, target, sizes = make_scenario("class_on_one_rank")
    first, second = shares(target, sizes)
    assert (first == 3).any() and not (second == 3).any() and sizes[0] != sizes[1]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=[cfg_id(c) for c in CONFIGS])
def test_value_parts_and_gradient_equal_the_whole_batch(synced, scenario, index):
    name, kwargs = CONFIGS[index]
    (logits, target, sizes), results = synced[scenario]
    expected = loss_result(name, kwargs, logits, target)
    grads = shares(expected["grad"], sizes)
    for rank, per_config in enumerate(results):
        got = per_config[index]
        assert_close(got["value"], expected["value"], f"rank {rank} value")
        for field, value in expected["parts"].items():
            assert_close(got["parts"][field], value, f"rank {rank} parts.{field}")
        # DDP averages over the processes: each process carries WORLD_SIZE times its slice.
        assert_close(got["grad"], WORLD_SIZE * grads[rank], f"rank {rank} gradient")


@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=[cfg_id(c) for c in CONFIGS])
def test_sync_stats_off_uses_each_process_share(local, index):
    name, kwargs = CONFIGS[index]
    (logits, target, sizes), results = local
    for rank, (x, t) in enumerate(zip(shares(logits, sizes), shares(target, sizes), strict=True)):
        expected = loss_result(name, kwargs, x, t)
        got = results[rank][index]
        assert_close(got["value"], expected["value"], f"rank {rank} value")
        assert_close(got["grad"], expected["grad"], f"rank {rank} gradient")


def test_statistics_really_differ_between_the_shares(local, synced):
    """The scenario is one where per-process statistics are not the global ones (else the tests above prove
    nothing): CAML's p̄, D and α differ between the processes' shares and from the whole batch's."""
    index = CONFIGS.index(("caml", {"pbar": "true_class", "alpha_grad": "pbar"}))
    (_, results) = local
    per_rank = [results[rank][index]["parts"] for rank in range(WORLD_SIZE)]
    global_parts = synced["ignored_on_one_rank"][1][0][index]["parts"]
    for field in ("p_bar", "dice_coef", "alpha"):
        values = [float(p[field]) for p in per_rank] + [float(global_parts[field])]
        assert len({round(v, 6) for v in values}) == 3, (field, values)


@pytest.mark.parametrize("loss", ["dice", "caml", "caml_fixed_r"])
def test_a_ddp_optimizer_step_equals_the_single_process_step(group, loss):
    """The chosen gradient factor: after DDP's averaging, one SGD step on two processes is the step of one
    process on the whole batch."""
    torch.manual_seed(0)
    model = nn.Conv2d(2, NUM_CLASSES, 3, padding=1).double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    logits, target, sizes = make_scenario("class_on_one_rank")
    images = torch.randn(target.shape[0], 2, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    kwargs = {"r": 2.0} if loss == "caml_fixed_r" else {}
    tasks = [
        {"kind": "ddp_step", "loss": loss, "kwargs": kwargs, "state": state, "images": x, "target": t}
        for x, t in zip(shares(images, sizes), shares(target, sizes), strict=True)
    ]
    results = group.run(tasks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    build_loss(loss, **kwargs)(model(images), target).backward()
    optimizer.step()
    for rank in range(WORLD_SIZE):
        for key, value in model.state_dict().items():
            assert_close(results[rank][key], value, f"rank {rank} {key}")
