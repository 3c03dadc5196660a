"""Sharding with FSDP2, the way Lightning recommends for new code: ``fully_shard`` applied in
``LightningModule.configure_model`` and run by Lightning's ``ModelParallelStrategy``.

* :class:`FSDP2Strategy` (``--trainer.strategy fsdp2``) is ``ModelParallelStrategy`` with every
  rank in one data-parallel group (no tensor parallelism): pure FSDP over all devices of all
  nodes. Unlike Lightning's ``fsdp`` strategy it also runs on CPU (gloo), which is how the
  package tests it.
* :func:`shard_model` shards each decoder layer (the classes a model lists in
  ``_no_split_modules``, found from the model, not hard-coded to one family) and then the root,
  so embeddings, final norm and LM head form the root's group.
* :func:`gathered` holds all parameters of a sharded model unsharded for a block of
  inference calls (HF ``generate``): one all-gather per layer per call instead of one per
  token, and no collective inside ``generate``, so ranks may generate different lengths.
* :func:`reshard` returns every FSDP group of a module to its sharded state. FSDP2 keeps the
  root group unsharded after a forward (it expects a backward); a no-grad forward (the
  teacher) leaves it so until told otherwise.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn

PRECISION_PARAM_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all ranks (``data_parallel_size`` = world size, no tensor parallelism).

    Args:
        save_distributed_checkpoint: each rank writes its own shard into a checkpoint folder
            (True, the scalable default; ``lit-scsdpo consolidate`` turns it into one file), or
            rank 0 gathers the full state into one file (False: needs the full model, its
            gradients' AdamW moments and the teacher in rank 0's host memory).
        **kwargs: ``process_group_backend``, ``timeout`` (see ``ModelParallelStrategy``).
    """

    strategy_name = "fsdp2"

    def __init__(self, save_distributed_checkpoint: bool = True, **kwargs: Any) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def setup_environment(self) -> None:
        # the world size is known only once the cluster environment is: all of it is data parallel
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="FSDP2 (fully_shard) over all ranks",
                                   override=True)


FSDP2Strategy.register_strategies(StrategyRegistry)


def decoder_layer_classes(model: nn.Module) -> set[type]:
    """The module classes to shard (and checkpoint) one by one: the model's
    ``_no_split_modules`` (the HF convention, e.g. ``Qwen3DecoderLayer``), else the class of the
    largest ``nn.ModuleList`` of identical blocks."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if classes:
        return classes
    best: Optional[nn.ModuleList] = None
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(c) for c in m}) == 1:
            if best is None or len(m) > len(best):
                best = m
    if best is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers found to shard (no _no_split_modules "
                         f"and no list of identical blocks)")
    return {type(best[0])}


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def shard_model(model: nn.Module, mesh: Any, param_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """``fully_shard`` each decoder layer, then the root, on ``mesh`` (1-D, data parallel).

    ``param_dtype``: the compute dtype of the all-gathered parameters (bf16 under
    ``bf16-mixed``); the sharded parameters, gradients (reduced in fp32) and optimizer state
    keep the dtype the module has (fp32 master weights)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    layer_classes = tuple(decoder_layer_classes(model))
    for m in list(model.modules()):
        if isinstance(m, layer_classes):
            fully_shard(m, mesh=mesh, mp_policy=mp)  # freed after its forward, gathered again in backward
    fully_shard(model, mesh=mesh, mp_policy=mp)  # the root: FSDP2 keeps it gathered until backward
    return model


def shard_models(models: list[nn.Module], mesh: Any, precision: str) -> None:
    """What ``configure_model`` does under :class:`FSDP2Strategy`: :func:`shard_model` on every
    model, over the mesh's data-parallel dimension, with ``precision``'s compute dtype. A no-op
    without a mesh (one device, DDP); tensor parallelism is refused."""
    if mesh is None:
        return
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(f"trainer.strategy: tensor parallelism (size {mesh['tensor_parallel'].size()}) is "
                         f"not supported; shard with --trainer.strategy fsdp2 (all ranks data parallel)")
    dp_mesh = mesh["data_parallel"] if "data_parallel" in names else mesh
    for model in models:
        shard_model(model, dp_mesh, PRECISION_PARAM_DTYPES.get(precision))


def check_strategy(strategy: Any) -> None:
    """Refuse Lightning's FSDP1 strategy: the package shards with FSDP2 in ``configure_model``."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy):
        raise ValueError("trainer.strategy=fsdp (FSDP1, FullyShardedDataParallel) is not supported: the package "
                         "shards with FSDP2 in configure_model; use --trainer.strategy fsdp2")


def _fsdp_modules(module: nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def reshard(module: nn.Module) -> None:
    """Free the unsharded parameters of every FSDP group in ``module`` (a no-op when none is
    unsharded, or when nothing is sharded)."""
    for m in _fsdp_modules(module):
        m.reshard()


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """All parameters of a sharded ``model`` unsharded for the duration (identity otherwise).

    Every rank must enter together (one all-gather per FSDP group); inside, forwards run no
    collective. Memory: one full copy of the parameters in the compute dtype."""
    mods = _fsdp_modules(model)
    if not mods:
        yield model
        return
    layers = [m for m in mods if m is not model]  # the root never reshards after forward (FSDP2)
    for m in mods:
        m.unshard()
    for m in layers:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for m in layers:
            m.set_reshard_after_forward(True, recurse=False)  # shard_model's setting
        reshard(model)


def local_parameter_bytes(module: nn.Module) -> int:
    """Bytes of the parameters this rank holds (its shards under FSDP2; tied parameters once)."""
    total = 0
    for p in module.parameters():
        t = p.to_local() if hasattr(p, "to_local") else p
        total += t.numel() * t.element_size()
    return total
