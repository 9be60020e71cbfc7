"""Data-parallel training with torchrun: one process per device, gradients averaged by DDP.

multi_gpu_train.json layers these onto train.json. Every rank holds the same five networks
(DDP broadcasts rank 0's weights when it wraps them, then averages each step's gradients), draws
its own patches (the dataset seed is offset by the rank), and runs the same optimizers, Lookahead,
SWA and schedules, so the ranks stay identical. Only rank 0 reports: TensorBoard, the progress bar,
validation, checkpoints and model.pt. BIN normalises with each rank's own batch by default (like
BatchNorm without synchronisation); ``sync_batch_statistics`` averages its batch moments over all
ranks instead (``synchronise_batch_statistics``). Measured on 2 CPU ranks x batch 1 (the README
schedule): 30.25 dB per rank, 30.45 dB synchronised -- within the seed spread, so the default stays
per rank, which costs no communication inside the forward pass.
Each helper joins the torchrun job on first use (no `initialize` step: MONAI puts the bundle on the
import path only when the run starts).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from ignite.handlers import ProgressBar
from monai.handlers import StatsHandler, TensorBoardStatsHandler, ValidationHandler
from torch.nn.parallel import DistributedDataParallel

from ..core.settings import flag
from .checkpoints import StateSaver
from .handlers import ImageGridHandler, LearningRateLogger, RunProgressBar
from .model_facts import ModelFactsWriter
from .networks import BatchInstanceNorm2d

__all__ = [
    "join",
    "rank",
    "is_rank_zero",
    "local_device",
    "destroy_process_group",
    "wrap",
    "synchronise_batch_statistics",
    "summary_writer",
    "handlers_for_rank",
    "rank_zero_first",
]

# Handlers that write files or print: attached on rank 0 only.
REPORTING_HANDLERS = (
    ProgressBar,
    RunProgressBar,
    StatsHandler,
    TensorBoardStatsHandler,
    LearningRateLogger,
    ImageGridHandler,
    ValidationHandler,
    StateSaver,
    ModelFactsWriter,
)


def join() -> None:
    """Join the torchrun job once (NCCL on GPUs, gloo on CPUs); refuse to run outside torchrun."""
    if dist.is_initialized():
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "multi_gpu_train.json runs under torchrun: torchrun --nproc_per_node N "
            "-m monai.bundle run training --config_file \"['bundle/configs/train.json',"
            "'bundle/configs/multi_gpu_train.json']\""
        )
    local_device()
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def rank() -> int:
    join()
    return dist.get_rank()


def is_rank_zero() -> bool:
    return rank() == 0


def local_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` (made current) when CUDA is available, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _replica_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes; its gradient flows back to every process."""
    return dist_nn.all_reduce(tensor) / dist.get_world_size()


def synchronise_batch_statistics(network: torch.nn.Module) -> torch.nn.Module:
    """Make every BIN layer of ``network`` take its batch moments over all processes' batches."""
    for module in network.modules():
        if isinstance(module, BatchInstanceNorm2d):
            module.replica_mean = _replica_mean
    return network


def wrap(network: torch.nn.Module, device: torch.device, sync_batch_statistics=False) -> DistributedDataParallel:
    """DDP around one network (with BIN batch moments over all processes if ``sync_batch_statistics``).
    Its only buffers are constants (the generators' skip weight), so they are not re-broadcast at
    every forward."""
    join()
    if flag(sync_batch_statistics, "sync_batch_statistics"):
        synchronise_batch_statistics(network)
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=device_ids, broadcast_buffers=False)


class _SilentWriter:
    """Stands in for a SummaryWriter on ranks other than 0: accepts every call, writes nothing."""

    def __getattr__(self, name: str) -> Callable:
        return lambda *args, **kwargs: None


def summary_writer(log_dir: str):
    """A TensorBoard writer on rank 0; elsewhere one that writes nothing (so no rank but 0 makes files)."""
    if is_rank_zero():
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=log_dir)
    return _SilentWriter()


def handlers_for_rank(handlers: Sequence) -> list:
    """All handlers on rank 0; on the others only those that keep the ranks in step (resume, schedules,
    epoch seeding, rho clipping, SWA), none that reports or saves."""
    if is_rank_zero():
        return list(handlers)
    return [handler for handler in handlers if not isinstance(handler, REPORTING_HANDLERS)]


def rank_zero_first(function: Callable, *args, **kwargs):
    """``function(*args, **kwargs)`` on rank 0 first (e.g. building the simulated data), then on the
    others, which then find its result on disk instead of building it again."""
    if not is_rank_zero():
        dist.barrier()
    result = function(*args, **kwargs)
    if is_rank_zero():
        dist.barrier()
    return result
