"""Data-parallel concerns in one room: global reductions, the votes that keep ranks in step,
and the world-size scaling of a loss contribution. Algorithm code (losses, objectives, the
modules) calls these and never ``torch.distributed`` itself; FSDP2 sharding is in
:mod:`lit_scsdpo.sharding`.

Every function is the identity (or the plain local answer) on one process, so the same code
runs on a laptop, under DDP and under FSDP2.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor

ReduceOp = Literal["sum", "max"]


def initialized() -> bool:
    """Whether a ``torch.distributed`` process group is up."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def all_reduce(tensor: Tensor, op: ReduceOp, group: Optional[object] = None) -> Tensor:
    """The element-wise ``op`` (``sum`` or ``max``) of ``tensor`` over the ranks of ``group``
    (default: the world), as a new tensor on ``tensor``'s device; ``tensor`` is left as it is.
    NCCL reduces CUDA tensors only: CPU values (counts, rewards) travel through the GPU."""
    if op not in ("sum", "max"):
        raise ValueError(f"reduce op must be 'sum' or 'max', got {op!r}")
    if not initialized():
        return tensor
    import torch.distributed as dist

    comm = (torch.device("cuda", torch.cuda.current_device())
            if tensor.device.type == "cpu" and dist.get_backend(group) == "nccl" else tensor.device)
    out = tensor.detach().to(comm, copy=True)
    dist.all_reduce(out, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op], group=group)
    return out.to(tensor.device)


def distributed_reduce(group: Optional[object] = None):
    """A ``losses.Reduce`` callable over the ranks of ``group``: ``reduce(tensor, op)``."""

    def reduce(tensor: Tensor, op: ReduceOp) -> Tensor:
        return all_reduce(tensor, op, group)

    return reduce


def any_rank(flag: bool, device: Optional[torch.device] = None) -> bool:
    """True on every rank if ``flag`` is true on any. Skip decisions are taken this way, so that
    no rank waits in a collective (a backward, an all-reduce) that another rank skipped."""
    return bool(all_reduce(torch.tensor([float(flag)], device=device), "max").item() > 0)


def contribution_scale(world_size: int) -> int:
    """The factor of a rank's loss contribution before ``backward``: contributions (with global
    normalisers) sum to the global loss, and DDP / FSDP average gradients over ranks, so each
    rank's contribution is multiplied by the world size to make the average the sum."""
    return max(1, int(world_size))


def destroy_process_group() -> None:
    """Tear the process group down before the interpreter exits: left to static destructors,
    gloo's worker threads occasionally abort the process after a successful DDP run
    ("terminate called without an active exception", exit -6)."""
    if initialized():
        import torch.distributed as dist

        dist.destroy_process_group()
