"""Data-parallel training under ``torchrun`` (one process per GPU, or several CPU processes).

``torchrun --nproc_per_node=N -m fsslib train NAME`` starts N copies of the command; each reads
its rank from the environment, :func:`init_from_env` joins the process group (NCCL on CUDA,
gloo on the CPU) and the :class:`~fsslib.engine.trainer.Trainer` then

- wraps the model in DistributedDataParallel, which averages gradients over ranks;
- gives rank ``r`` the ``r``-th slice of each step's episodes: ``TrainConfig.batch_size`` is the
  *global* batch, so a step sees the same episodes whatever the number of processes (per-rank
  batch = batch_size / world size, which must divide);
- writes checkpoints, ``log.csv`` and ``model.pt`` from rank 0 only, and resumes every rank from
  the same checkpoint.

Averaging per-rank mean losses is what gradient accumulation over the same slices computes in
one process (``TrainConfig.accumulate = world size``): the two give the same loss and weights up
to float rounding (tested with gloo and 2 processes). Multi-node works the same way (torchrun's
``--nnodes``/``--rdzv-endpoint``); nothing here assumes a single machine.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: str | None = None) -> torch.device | None:
    """Join the process group if launched by torchrun (``WORLD_SIZE`` > 1); returns the device of
    this rank (``cuda:LOCAL_RANK`` on GPUs), or ``None`` when not distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return None
    use_cuda = torch.cuda.is_available() and device != "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over ranks (a no-op in one process)."""
    if not dist.is_initialized():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()
