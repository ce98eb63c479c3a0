"""torch.distributed helpers: torchrun detection, init/teardown, rank-0 guards, gathering."""
import datetime
import os
import time

import torch
import torch.distributed as dist

from .errors import ConfigError


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device_pref: str = "auto", timeout_s: int = 600) -> torch.device:
    """Initialise the process group when launched by torchrun; return this process's device.

    nccl on CUDA, gloo on CPU. ``timeout_s`` bounds how long a collective waits
    for a dead peer before erroring instead of hanging.
    """
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")  # device_pref: a schema choice
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device is cuda but no CUDA device is available (use auto or cpu)")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1 and not is_dist():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return device


def barrier():
    if is_dist():
        dist.barrier()


def shutdown(wait_for_peers: bool = True):
    """Tear down the process group.

    A barrier and a short pause before destroying it: gloo's background thread
    can otherwise deadlock against the GIL in the process group's destructor
    (seen as a hang at exit in about 1 run in 4 on CPU). After a failure
    (``wait_for_peers`` false) the peers may be dead or stuck, and the barrier
    would only add another run.dist_timeout_s before this rank exits: the
    group is destroyed without it.
    """
    if is_dist():
        if wait_for_peers:
            dist.barrier()
            time.sleep(0.2)
        dist.destroy_process_group()


def sum_over_ranks(total: torch.Tensor, count: int):
    """(sum of ``total``, sum of ``count``) over every rank, as (float, int); ``total`` a 0-d
    tensor on this rank's device. One all-reduce, a host sync: for log intervals, not every step."""
    if not is_dist():
        return total.item(), count
    both = torch.stack([total.detach().float(), torch.tensor(float(count), device=total.device)])
    dist.all_reduce(both)
    return both[0].item(), int(both[1].item())


def mean_over_ranks(total: torch.Tensor, count: int) -> float:
    """sum / count over every rank; nan when the count is 0."""
    total, count = sum_over_ranks(total, count)
    return total / count if count else float("nan")


def rank0_flag(flag: bool, device) -> bool:
    """Rank 0's ``flag`` on every rank (one broadcast): a decision every rank must take alike,
    such as a checkpoint by rank 0's clock (a checkpoint is a collective under FSDP)."""
    if not is_dist():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def all_gather_objects(obj):
    """List of ``obj`` from every rank (just [obj] without a process group)."""
    if not is_dist():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out

