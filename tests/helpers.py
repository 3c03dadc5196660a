"""Test helpers: a simulated all-reduce over threads (one thread = one data-parallel rank)."""

import threading

import torch


class ThreadAllReduce:
    """All-reduce across ``world_size`` threads: each rank calls the reducer with its tensor
    and receives the element-wise sum/max over all ranks (like ``dist.all_reduce``)."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self._barrier = threading.Barrier(world_size)
        self._lock = threading.Lock()
        self._slots: list = []

    def __call__(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        with self._lock:
            self._slots.append(tensor.detach().clone())
        self._barrier.wait()
        stacked = torch.stack(self._slots)
        out = stacked.sum(0) if op == "sum" else stacked.max(0).values
        self._barrier.wait()
        with self._lock:
            self._slots.clear()
        self._barrier.wait()
        return out


def run_ranks(fn, world_size: int):
    """Run ``fn(rank, reduce)`` on ``world_size`` threads; return the results by rank."""
    reduce = ThreadAllReduce(world_size)
    results = [None] * world_size
    errors = []

    def target(rank):
        try:
            results[rank] = fn(rank, reduce)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            reduce._barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
