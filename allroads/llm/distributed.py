r"""Scale-out on torch.distributed: process group from torchrun's environment, DDP / FSDP wrapping.

Nothing here communicates by hand: gradients are averaged by DDP (or reduce-scattered by FSDP), and
metrics by ``torch.distributed.all_reduce``. Launch with

    torchrun --nproc_per_node 8 -m allroads.llm dpo --config cfg.json          # DDP
    torchrun --nproc_per_node 8 -m allroads.llm dpo --config cfg.json --fsdp true   # FSDP (6.9B)

Gradient scaling: each rank divides its summed per-example loss by its own share of the global
batch (``batch_size / world_size``); DDP's all-reduce *averages* over ranks, so the synchronised
gradient is that of the global-batch mean, the same as one process with the whole batch.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "wrap_model", "unwrap", "full_state_dict", "no_sync", "all_reduce_sum", "barrier"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (no-op
    when absent or already initialised). Backend: nccl on CUDA, gloo on CPU."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def wrap_model(model, info: DistInfo, *, fsdp: bool = False, device: torch.device | None = None):
    """DDP (default) or FSDP (``fsdp=True``, one unit per transformer layer) around ``model``."""
    if not info.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        layer_classes = {type(m) for m in model.modules() if type(m).__name__.endswith("Layer")}
        return FSDP(model, auto_wrap_policy=ModuleWrapPolicy(layer_classes), use_orig_params=True,
                    device_id=device if device is not None and device.type == "cuda" else None)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device is not None and device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap(model):
    """The plain module inside DDP / FSDP (for save_pretrained and attribute access)."""
    return getattr(model, "module", model)


def full_state_dict(model) -> dict | None:
    """Full (unsharded) state dict for saving: FSDP gathers to rank 0 on CPU; otherwise the module's."""
    try:
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:  # pragma: no cover
        FSDP = None
    if FSDP is not None and isinstance(model, FSDP):
        cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, cfg):
            return model.state_dict()
    return unwrap(model).state_dict()


def no_sync(model, sync: bool):
    """Skip DDP/FSDP gradient synchronisation on all but the last micro-batch of an accumulation."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
