r"""Scale-out on torch.distributed: process group from torchrun's environment, DDP / FSDP2 wrapping.

Nothing here communicates by hand: gradients are averaged by DDP (or reduce-scattered by FSDP2), and
metrics by ``torch.distributed.all_reduce``. Launch with

    torchrun --nproc_per_node 8 -m allroads.llm dpo --config cfg.json                  # DDP
    torchrun --nproc_per_node 8 -m allroads.llm dpo --config cfg.json --fsdp true      # FSDP2 (6.9B)

FSDP2 (``torch.distributed.fsdp.fully_shard``) shards every transformer layer and then the root module;
on CUDA with bf16 it computes in bf16 and reduces gradients in fp32 (:class:`MixedPrecisionPolicy`), the
sharded fp32 parameters staying the optimizer's master weights. It runs on CPU with gloo too (the tests).

Gradient scaling: each rank divides its summed per-example loss by its own share of the global
batch (``batch_size / world_size``); DDP's all-reduce and FSDP2's reduce-scatter *average* over ranks,
so the synchronised gradient is that of the global-batch mean, the same as one process with the whole batch.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "wrap_model", "unwrap", "is_fsdp", "no_sync", "clip_grad_norm",
           "all_reduce_sum", "barrier"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    """Global rank (0 writes metrics, the final model and the checkpoint's completion mark)."""
    world_size: int = 1
    """Number of processes."""
    local_rank: int = 0
    """Rank on this machine (its CUDA device index)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _info() -> DistInfo:
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_distributed(backend: str | None = None, *, fsdp: bool = False) -> DistInfo:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (no-op when
    already initialised; backend nccl for CUDA tensors and gloo for CPU ones, gloo alone without CUDA). Without torchrun there is no group, except
    with ``fsdp=True``: FSDP2 needs one, so a one-process group (an in-memory store) is made."""
    if dist.is_available() and dist.is_initialized():
        return _info()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not fsdp:
        return DistInfo()
    cuda = torch.cuda.is_available()
    backend = backend or ("cpu:gloo,cuda:nccl" if cuda else "gloo")  # CPU tensors (metrics) reduce over gloo
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend=backend)
    else:  # a plain process asking for FSDP: a group of one
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return _info()


def _layer_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks (``GPTNeoXLayer`` …: classes named ``*Layer`` inside a ``ModuleList``)."""
    layers = []
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList):
            layers += [c for c in m if type(c).__name__.endswith("Layer")]
    return layers


def wrap_model(model, info: DistInfo, *, fsdp: bool = False, device: torch.device | None = None, bf16: bool = False):
    """FSDP2 (``fsdp=True``: ``fully_shard`` on each transformer layer, then the root; bf16 compute and fp32
    gradient reduction on CUDA when ``bf16``) or DDP (``fsdp=False``, world size > 1) around ``model``, in place
    for FSDP2. Returns the module to train (the model itself when neither applies)."""
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        device = device or torch.device("cpu")
        if not dist.is_initialized():
            info = init_distributed(fsdp=True)
        mesh = init_device_mesh(device.type, (info.world_size,))
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if bf16 and device.type == "cuda" else MixedPrecisionPolicy())
        for layer in _layer_modules(model):
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        return fully_shard(model, mesh=mesh, mp_policy=mp)
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device is not None and device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def is_fsdp(model) -> bool:
    """True for a module sharded by FSDP2's ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def unwrap(model):
    """The plain module inside DDP (for save_pretrained and attribute access); an FSDP2 module is itself."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def no_sync(model, sync: bool):
    """Skip DDP / FSDP2 gradient synchronisation on all but the last micro-batch of an accumulation."""
    if sync:
        return contextlib.nullcontext()
    if is_fsdp(model):
        return _fsdp_no_sync(model)
    if hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm(model, max_norm: float) -> float:
    """Clip the global gradient norm (over all ranks' shards under FSDP2) to ``max_norm``; the norm before."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
