"""Start single- or multi-process training on GPUs, on CPUs, or under torchrun/SLURM.

* GPUs: Detectron2's own `launch` (one process per GPU, NCCL).
* CPU (``MODEL.DEVICE cpu`` or no CUDA) with ``num_processes > 1``: processes spawned here
  with the gloo backend. Detectron2 v0.6's `launch` asserts CUDA in its workers.
* torchrun (detected from its environment variables) or ``--dist-url env://`` (e.g. one
  ``srun`` task per GPU; SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` fill in
  ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` when those are unset): the processes already
  exist; each one joins the group through ``env://`` and runs ``main_func`` itself.

In every case Detectron2's per-machine process group is created, so
``comm.get_local_rank()``/``get_local_size()`` work.
"""
import logging
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = ["launch", "started_by_torchrun"]

DEFAULT_TIMEOUT = timedelta(minutes=30)
logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_to_torch_env() -> None:
    """Fill torchrun's variables from SLURM's when a job is started by ``srun`` directly."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    ntasks_per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
    if ntasks_per_node.isdigit():
        os.environ["LOCAL_WORLD_SIZE"] = ntasks_per_node
    os.environ.setdefault("MASTER_ADDR", os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"))
    os.environ.setdefault("MASTER_PORT", "29500")


def started_by_torchrun() -> bool:
    """True inside a process started by torchrun / torch.distributed.run."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def _create_local_group(local_size: int, machine_rank: int) -> None:
    """Create Detectron2's per-machine process group (upstream API or v0.6 global)."""
    if hasattr(comm, "create_local_process_group"):  # Detectron2 > 0.6
        comm.create_local_process_group(local_size)
        return
    num_machines = dist.get_world_size() // local_size
    for i in range(num_machines):
        group = dist.new_group(list(range(i * local_size, (i + 1) * local_size)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _init_worker(backend, init_method, world_size, rank, local_rank, local_size, timeout):
    dist.init_process_group(
        backend=backend, init_method=init_method, world_size=world_size, rank=rank,
        timeout=timeout,
    )
    _create_local_group(local_size, rank // local_size)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    else:  # share the CPU cores between the processes of this machine
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))
    comm.synchronize()


def _run_and_leave_group(main_func, args):
    """Run ``main_func``, then leave the process groups together, the local one first.

    A rank that exits while gloo still holds connections of a group to a slower rank makes
    that rank abort in C++ ("terminate called without an active exception"); closing each
    group after a barrier on it avoids the race.
    """
    main_func(*args)
    local_group = getattr(comm, "_LOCAL_PROCESS_GROUP", None)
    if local_group is not None:
        dist.barrier(group=local_group)
        dist.destroy_process_group(local_group)
        comm._LOCAL_PROCESS_GROUP = None
    dist.barrier()
    dist.destroy_process_group()


def _cpu_worker(local_rank, main_func, world_size, local_size, machine_rank, dist_url, args,
                timeout):
    rank = machine_rank * local_size + local_rank
    try:
        _init_worker("gloo", dist_url, world_size, rank, local_rank, local_size, timeout)
    except Exception:
        logger.error(f"Process group URL: {dist_url}")
        raise
    _run_and_leave_group(main_func, args)


def launch(main_func, num_processes_per_machine, num_machines=1, machine_rank=0,
           dist_url=None, args=(), timeout=DEFAULT_TIMEOUT, device="cuda"):
    """Run ``main_func(*args)`` in one or many processes (see module doc).

    Args:
        num_processes_per_machine: GPUs per machine, or CPU processes per machine when
            ``device`` is "cpu" or CUDA is unavailable.
        dist_url: "auto", "tcp://host:port", "file://..." or "env://" (torchrun/SLURM).
        device: the model device (cfg.MODEL.DEVICE); "cpu" selects the gloo backend.
    """
    use_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if dist_url == "env://" or started_by_torchrun():
        _slurm_to_torch_env()
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1:
            rank = int(os.environ["RANK"])
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            local_size = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes_per_machine))
            _init_worker("nccl" if use_cuda else "gloo", "env://", world_size, rank,
                         local_rank, local_size, timeout)
            _run_and_leave_group(main_func, args)
        else:
            main_func(*args)
        return

    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        main_func(*args)
    elif use_cuda:
        d2_launch(main_func, num_processes_per_machine, num_machines, machine_rank, dist_url,
                  args=args, timeout=timeout)
    else:
        if dist_url in (None, "auto"):
            assert num_machines == 1, "dist_url=auto works on one machine only"
            dist_url = f"tcp://127.0.0.1:{_free_port()}"
        mp.spawn(
            _cpu_worker, nprocs=num_processes_per_machine, daemon=False,
            args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url,
                  args, timeout),
        )
