"""Batch statistics across processes: differentiable sums and concatenations over ``torch.distributed``.

The paper's Dice, ``p̄`` and ``D`` are statistics of the whole batch. Under data-parallel training each process
holds a share of the batch, so every batch-level sum a loss uses is summed over the processes (one
``all_reduce``), and statistics that are not sums (TopK's selection, Lovász's sort) see the concatenated
batch (one ``all_gather``). Both keep the autograd graph to the process's own logits.

Gradients. On process ``k`` the loss ``L`` is a function of global quantities ``G = Σ_j g_j(x_j)`` and is the
same number on every process. The derivative of the single-process loss of the concatenated batch with
respect to ``x_k`` is ``∂L/∂G · ∂g_k/∂x_k``. The backward of these operations sums the incoming gradients over
the processes (an ``all_reduce``), as the exact adjoint of a sum whose result every process uses; since the
incoming gradients are identical, process ``k`` gets ``K · ∂L/∂G · ∂g_k/∂x_k``: ``K`` (the number of
processes) times its slice of the single-process gradient. Data-parallel training (DDP, FSDP) then averages
the parameter gradients over the ``K`` processes, which divides that factor out again: the optimizer sees the
gradient of the single-process loss of the concatenated batch, exactly, whatever the optimizer (Adam, SGD,
weight decay, gradient clipping all act on the same numbers as on one device with the whole batch).

Summing in the backward (rather than scaling by ``K``) is also what keeps the gradient exact where a global
quantity with a gradient feeds a per-pixel term that is summed again (CAML's per-pixel ``α_i = (1 - p_i)^D``
with ``alpha_grad="full"``): the other processes' pixels depend on this process's logits through ``D``.

Every process must call the loss the same number of times with tensors of the same trailing shape, and run
its backward: a process that skips a call (or raises on its own bad input) leaves the others waiting in the
collective until the process group's timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable


def active_world_size() -> int:
    """Number of processes of the default group when ``torch.distributed`` is initialised, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _AllReduceSum(torch.autograd.Function):
    """``Σ_j x_j`` on every process; the backward sums the incoming gradients over the processes."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def _gather_sizes(n: int, device: torch.device, world_size: int) -> list[int]:
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.empty_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


class _AllGatherCat(torch.autograd.Function):
    """The processes' tensors concatenated along dim 0 in rank order (dim 0 may differ between processes); the
    backward sums the incoming gradients over the processes and returns this process's slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        world_size = dist.get_world_size()
        sizes = _gather_sizes(x.shape[0], x.device, world_size)
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x.detach()
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded)
        rank = dist.get_rank()
        ctx.bounds = (sum(sizes[:rank]), sum(sizes[: rank + 1]))
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        start, end = ctx.bounds
        return grad[start:end]


@dataclass(frozen=True)
class ProcessReduction:
    """How a loss call combines its batch statistics: over ``world_size`` processes, or locally when 1.

    Attributes:
        world_size: number of processes whose shares make up the batch (1: this process's batch only).
    """

    #: Number of processes the statistics run over.
    world_size: int = 1

    @classmethod
    def current(cls, sync: bool) -> ProcessReduction:
        """Over every process of the default group if ``sync`` and ``torch.distributed`` runs more than one."""
        return cls(active_world_size() if sync else 1)

    @property
    def synchronised(self) -> bool:
        return self.world_size > 1

    def sum(self, x: Tensor) -> Tensor:
        """Element-wise sum of ``x`` over the processes (``x`` itself when local); differentiable."""
        return _AllReduceSum.apply(x) if self.synchronised else x

    def sum_each(self, tensors: list[Tensor]) -> list[Tensor]:
        """:meth:`sum` of each tensor (same dtype and device), all in one ``all_reduce``."""
        if not self.synchronised:
            return tensors
        flat = self.sum(torch.cat([t.reshape(-1) for t in tensors]))
        return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)]

    def cat(self, x: Tensor) -> Tensor:
        """The processes' ``x`` concatenated along dim 0 in rank order (``x`` itself when local); differentiable
        with respect to this process's ``x``."""
        if not self.synchronised:
            return x
        if x.dtype == torch.bool:  # not every backend gathers bool tensors
            return _AllGatherCat.apply(x.to(torch.uint8)).bool()
        return _AllGatherCat.apply(x)
