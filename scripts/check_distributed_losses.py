"""Check that a loss under ``torch.distributed`` equals the loss of the whole batch on one process.

Two (``--world-size``) processes initialise a gloo process group on this machine; each takes its share of one
random batch (the shares may differ in size: ``--sizes``) and calls ``build_loss(name)`` on it. This process,
without ``torch.distributed``, calls the same loss on the whole batch. For every loss the table gives the largest
differences between each process and the single process in the value, in the logged parts (``L_CE, L_Dice,
p̄, D, α``) and in the gradient, where a process's gradient is compared with ``world_size ×`` its slice of the
single-process gradient (DDP then averages the processes: see ``lightning_seg/losses/distributed.py``).
A second column set, ``sync_stats=False``, shows how far the per-process losses are from the global one.

    python scripts/check_distributed_losses.py                       # the paper's losses, float64
    python scripts/check_distributed_losses.py --dtype float32 --sizes 1 3 --ignore-frac 0.3
    python scripts/check_distributed_losses.py --losses ce dice caml:pbar=max_class caml_fixed_r:r=3

Exit status 1 if any synchronised difference exceeds ``--tolerance`` (relative to the magnitude).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_seg.losses import build_loss

PAPER_LOSSES = ["ce", "dice", "additive", "ml", "caml", "caml_fixed_r:r=2"]
FIELDS = ("ce", "dice_loss", "p_bar", "dice_coef", "alpha")


def parse_loss(spec: str) -> tuple[str, dict]:
    """``name`` or ``name:key=value,key=value`` (numbers where they parse, else strings)."""
    name, _, args = spec.partition(":")
    kwargs = {}
    for item in filter(None, args.split(",")):
        key, _, value = item.partition("=")
        try:
            kwargs[key] = float(value)
        except ValueError:
            kwargs[key] = value
    return name, kwargs


def evaluate(spec: str, logits: torch.Tensor, target: torch.Tensor, **extra) -> dict:
    name, kwargs = parse_loss(spec)
    loss = build_loss(name, **kwargs, **extra)
    x = logits.detach().clone().requires_grad_(True)
    value = loss(x, target)
    value.backward()
    return {"value": value.detach(), "grad": x.grad, "parts": loss.parts.as_dict()}


def make_batch(args) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(args.seed)
    n = sum(args.sizes)
    dtype = getattr(torch, args.dtype)
    logits = (2.0 * torch.randn(n, args.classes, args.size, args.size, generator=g, dtype=torch.float64)).to(dtype)
    target = torch.randint(0, args.classes, (n, args.size, args.size), generator=g)
    target[torch.rand(target.shape, generator=g) < args.ignore_frac] = 255
    return logits, target


def worker(rank: int, args, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=len(args.sizes), timeout=timedelta(seconds=120)
    )
    logits, target = make_batch(args)
    start = sum(args.sizes[:rank])
    share = slice(start, start + args.sizes[rank])
    results = {
        (spec, sync): evaluate(spec, logits[share], target[share], sync_stats=sync)
        for spec in args.losses
        for sync in (True, False)
    }
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(float(b.abs().max()), 1e-12) if b.numel() else 1.0
    return float((a - b).abs().max()) / scale if b.numel() else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--losses", nargs="+", default=PAPER_LOSSES, help="name or name:key=value,... ")
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 2], help="images per process (default 2 2)")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--size", type=int, default=16, help="square image side")
    parser.add_argument("--ignore-frac", type=float, default=0.1)
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, help="default: 1e-9 (float64), 1e-4 (float32)")
    args = parser.parse_args(argv)
    tolerance = args.tolerance or (1e-9 if args.dtype == "float64" else 1e-4)
    world_size = len(args.sizes)

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(args, os.path.join(tmp, "pg"), tmp), nprocs=world_size, join=True)
        per_rank = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]

    logits, target = make_batch(args)
    print(f"{world_size} processes (gloo), images per process {args.sizes}, {args.dtype}, C={args.classes}")
    print("| loss | value | parts | gradient (÷ world size) | sync_stats=False: value | check |")
    print("|---|---:|---:|---:|---:|---|")
    failed = False
    for spec in args.losses:
        whole = evaluate(spec, logits, target)
        slices = torch.split(whole["grad"], args.sizes)
        value = max(relative(r[(spec, True)]["value"], whole["value"]) for r in per_rank)
        parts = max(relative(r[(spec, True)]["parts"][f], whole["parts"][f]) for r in per_rank for f in FIELDS)
        grad = max(relative(r[(spec, True)]["grad"] / world_size, s) for r, s in zip(per_rank, slices, strict=True))
        spread = max(relative(r[(spec, False)]["value"], whole["value"]) for r in per_rank)
        ok = max(value, parts, grad) <= tolerance
        failed |= not ok
        print(f"| {spec} | {value:.1e} | {parts:.1e} | {grad:.1e} | {spread:.1e} | {'ok' if ok else 'MISMATCH'} |")
    print(f"(largest relative differences; tolerance {tolerance:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
