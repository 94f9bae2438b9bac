"""Collective helpers for exact distributed evaluation (docs/metrics.md, "Distributed evaluation").

Every helper works with ``torch.distributed`` when a process group is initialized and is a no-op
(single-process semantics) otherwise, so metric code is written once. No Lightning import here.

Sharding rule: rank ``r`` of ``W`` takes indices ``r, r + W, r + 2W, ...`` of ``range(n)``; no index is
padded or duplicated, so the union over ranks is exactly ``range(n)``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_rank_zero() -> bool:
    return rank() == 0


def shard(n: int) -> list[int]:
    """The indices of ``range(n)`` this rank evaluates: ``range(rank, n, world_size)``."""
    return list(range(rank(), n, world_size()))


def _comm_device(tensor: torch.Tensor) -> torch.device:
    """NCCL only moves CUDA tensors; gloo moves anything on CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (returns a new tensor on the input's device; identity when not distributed)."""
    if not is_distributed():
        return tensor.clone()
    buf = tensor.detach().to(_comm_device(tensor)).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(tensor.device)


def all_gather_rows(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Gather a ``[n_r, ...]`` tensor from every rank, where ``n_r`` may differ between ranks.

    Returns the list of per-rank tensors (index = rank), trimmed to their true lengths: padding used
    for the collective never reaches the caller.
    """
    if not is_distributed():
        return [tensor]
    dev = _comm_device(tensor)
    local = tensor.detach().to(dev).contiguous()
    n_local = torch.tensor([local.shape[0]], device=dev, dtype=torch.long)
    sizes = [torch.zeros_like(n_local) for _ in range(world_size())]
    dist.all_gather(sizes, n_local)
    sizes_int = [int(s.item()) for s in sizes]
    n_max = max(sizes_int)
    padded = torch.zeros((n_max, *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[: local.shape[0]] = local
    bufs = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(bufs, padded)
    return [b[:s].to(tensor.device) for b, s in zip(bufs, sizes_int)]


def gather_by_index(indices: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather ``rows`` tagged with their global ``indices`` and return both sorted by index.

    Because every rank evaluates a disjoint shard, the result is identical to what one process that
    evaluated ``range(n)`` in order would hold.
    """
    idx = torch.cat(all_gather_rows(indices.long()))
    data = torch.cat(all_gather_rows(rows))
    order = torch.argsort(idx)
    if torch.unique(idx).numel() != idx.numel():
        raise RuntimeError("gather_by_index: an index was evaluated on more than one rank")
    return idx[order], data[order]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank (in-memory only; nothing is written to disk)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    device = _comm_device(torch.empty(0)) if dist.get_backend() == "nccl" else None
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
