"""Many processes, one run: torchrun / DistributedDataParallel support for training and evaluation.

``torchrun --nproc_per_node=N train.py ...`` (or ``--nnodes=M --rdzv_endpoint=...``) sets RANK, WORLD_SIZE and
LOCAL_RANK in every process; :func:`init` then joins the process group with no flag: NCCL when the device is CUDA
(each process on ``cuda:LOCAL_RANK``), gloo on the CPU.  Plain ``python train.py`` never calls torch.distributed:
every helper here is then a no-op (or the plain single-process operation).

What is shared how (docs/distributed.md 'What changes under torchrun'):
- training: the generator and the discriminator each run under DDP (gradients averaged over the ranks); their
  BatchNorm layers become synchronised BatchNorm (torch's SyncBatchNorm on CUDA, :class:`CPUSyncBatchNorm` here on
  the CPU), so N processes with ``--batch_size=b`` compute what one process computes with a batch of N*b;
- data: the global batch (N*b clips, one slice of the global shuffled order) is cut into N slices, rank r takes
  slice r (engine.Trainer);
- evaluation: the test videos are shared out over the ranks (:func:`shard`), every rank gets all per-frame PSNRs
  back (evaluation.predict_psnr_sharded), so every rank takes the same decisions; only rank 0 writes and prints.

The process group has a timeout (``FFP_DIST_TIMEOUT`` seconds, default 1800): a rank that waits longer than that
for a peer gives up with an error instead of hanging.  A dead peer is usually noticed at once (gloo: the
connection closes) and torchrun stops the remaining workers when one fails.

"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ffpvad.errors import UserError

TIMEOUT_ENV = "FFP_DIST_TIMEOUT"
# gloo instead of NCCL on CUDA: several processes may then share one GPU (NCCL refuses two ranks on one device), with
# the collectives on the CPU.  For checks on a one-GPU machine (bench/device_check.py), not for training speed.
BACKEND_ENV = "FFP_DIST_BACKEND"
DEFAULT_TIMEOUT_S = 1800.0
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class _Group:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: Any  # torch.device of this rank's collectives (cuda:LOCAL_RANK for NCCL, cpu for gloo)


_group: Optional[_Group] = None
_saved_stdout = None


# --- who am I ---------------------------------------------------------------------------------------------------

def launched() -> bool:
    """True when started by torchrun (or any launcher that sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return all(name in os.environ for name in _LAUNCH_VARS)


def _env_int(name: str, default: int) -> int:
    return int(os.environ[name]) if launched() else default


def rank() -> int:
    return _group.rank if _group else _env_int("RANK", 0)


def world_size() -> int:
    return _group.world_size if _group else _env_int("WORLD_SIZE", 1)


def local_rank() -> Optional[int]:
    """LOCAL_RANK under torchrun, None otherwise."""
    return _env_int("LOCAL_RANK", 0) if launched() else None


def backend_override() -> Optional[str]:
    """FFP_DIST_BACKEND (nccl or gloo) when set, else None (NCCL on CUDA, gloo on the CPU)."""
    name = os.environ.get(BACKEND_ENV, "").strip().lower()
    if name and name not in ("nccl", "gloo"):
        raise UserError(f"{BACKEND_ENV}={name} is not a backend: use nccl or gloo (or leave it unset)")
    return name or None


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size())) if launched() else 1


def is_main() -> bool:
    """Rank 0 (and the only process of a plain run): the one that writes checkpoints, logs and prints."""
    return rank() == 0


def active() -> bool:
    """A process group with more than one rank is up: collectives are needed."""
    return _group is not None and _group.world_size > 1


# --- the process group ------------------------------------------------------------------------------------------

def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}={text} is not a number of seconds") from None
    if value <= 0:
        raise UserError(f"{TIMEOUT_ENV} must be positive (seconds), got {text}")
    return value


def init(device) -> None:
    """Join torchrun's process group (NCCL for a CUDA device, gloo for the CPU); nothing without torchrun.

    ``device`` is the resolved device (runtime.resolve_device gives cuda:LOCAL_RANK under torchrun) or a plain
    device name (cpu, cuda:N).  On ranks other than 0 standard output goes to /dev/null (progress bars are rank 0's
    alone: the callers
    pass progress=is_main()), so the console shows one run; errors still reach stderr from every rank.
    """
    global _group
    if _group is not None or not launched():
        return


    device = torch.device(device) if isinstance(device, str) else device
    backend = backend_override() or ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed: install a build with distributed support")
    timeout = datetime.timedelta(seconds=timeout_seconds())
    if backend == "nccl":
        torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=timeout, device_id=device)
    else:
        dist.init_process_group(backend, timeout=timeout)
    _group = _Group(dist.get_rank(), dist.get_world_size(), local_rank() or 0, backend,
                    device if backend == "nccl" else torch.device("cpu"))
    atexit.register(shutdown)
    if _group.rank != 0:
        _silence()


def _silence() -> None:
    global _saved_stdout
    if _saved_stdout is None:
        _saved_stdout = sys.stdout
        sys.stdout = open(os.devnull, "w")


def shutdown() -> None:
    """Leave the process group (idempotent); restore standard output."""
    global _group, _saved_stdout
    if _group is not None:
        _group = None
        if dist.is_initialized():
            # DDP wrappers left in reference cycles would otherwise be freed at interpreter exit, after the group
            # is gone, and their gloo threads' destructors abort the process ("terminate called without an active
            # exception", SIGABRT) after a run that has saved: free them now, while the group still exists.
            gc.collect()
            dist.destroy_process_group()
    if _saved_stdout is not None:
        sys.stdout.close()
        sys.stdout, _saved_stdout = _saved_stdout, None


@contextlib.contextmanager
def process_group(device=None) -> Iterator[None]:
    """``with process_group(device):`` join torchrun's group (when launched by it) and always leave it at the end,
    whatever ends the block (an error, Ctrl-C)."""
    try:
        if device is not None:
            init(device)
        yield
        # A normal end: every rank arrives here before any leaves, so no rank tears its gloo pairs down while a
        # peer's last messages are still in flight (a rank aborted once with "terminate called without an active
        # exception" after its run had saved).  After an error torchrun stops the other ranks.
        barrier()
    finally:
        shutdown()


# --- collectives ------------------------------------------------------------------------------------------------

def barrier() -> None:
    if active():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` without a group."""
    if not active():
        return [obj]

    out: list[Any] = [None] * _group.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (the same answer everywhere)."""
    if not active():
        return bool(flag)

    tensor = torch.tensor([1.0 if flag else 0.0], device=_group.device)
    dist.all_reduce(tensor)
    return bool(tensor.item() > 0)


def all_reduce_mean(values):
    """The mean over the ranks of a tensor (same shape everywhere); the tensor itself without a group."""
    if not active():
        return values

    reduced = values.detach().to(_group.device).clone()
    dist.all_reduce(reduced)  # SUM: gloo has no AVG
    return (reduced / _group.world_size).to(values.device)


def broadcast_module(module) -> None:
    """Make every rank's parameters and buffers bit-identical to rank 0's (one broadcast per dtype)."""
    if not active():
        return

    tensors = list(module.parameters()) + list(module.buffers())
    by_dtype: dict[Any, list] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    with torch.no_grad():
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group]).to(_group.device)
            dist.broadcast(flat, src=0)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view(t.shape))
                offset += t.numel()


def in_turn(fn: Callable[[], Any]) -> Any:
    """``fn()`` on every rank, but rank 0 first, then the first rank of every other node, then the rest.

    For work that writes shared files (the frame cache, the generated toy dataset): the first caller builds them,
    the others find them (on a shared filesystem; with node-local disks each node's first rank builds its own).
    A UserError on any rank is raised on every rank, with its message.
    """
    if not active():
        return fn()
    first_of_node = local_rank() == 0 and rank() != 0
    turns = (rank() == 0, first_of_node, rank() != 0 and not first_of_node)
    result = None
    for mine in turns:
        error = None
        if mine:
            try:
                result = fn()
            except UserError as exc:
                error = str(exc)
        errors = [e for e in all_gather_object(error) if e is not None]
        if errors:
            raise UserError(errors[0])
    return result


# --- sharded evaluation -----------------------------------------------------------------------------------------

def shard(counts: Sequence[int], n_ranks: int, which: int) -> list[int]:
    """The videos (indices, in order) rank ``which`` of ``n_ranks`` predicts: longest first to the least-loaded
    rank, so the ranks get about the same number of frames.  Deterministic: every rank computes the same split."""
    loads = [0] * n_ranks
    owner = [0] * len(counts)
    for v in sorted(range(len(counts)), key=lambda k: (-counts[k], k)):
        r = min(range(n_ranks), key=lambda k: (loads[k], k))
        owner[v] = r
        loads[r] += counts[v]
    return [v for v in range(len(counts)) if owner[v] == which]


def concat_across_ranks(*lists: list) -> tuple[list, ...]:
    """Each list concatenated over the ranks (rank order), on every rank: for order-free per-frame values such as
    the pixel-level accumulator's."""
    parts = all_gather_object(lists)
    return tuple([x for part in parts for x in part[k]] for k in range(len(lists)))


# --- DDP and synchronised BatchNorm -----------------------------------------------------------------------------

def wrap(module, device):
    """DDP around a trained network (the ranks must call it in the same order); the module itself without a group."""
    if not active():
        return module

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def sync_batchnorm(module, device):
    """BatchNorm layers that normalise with the statistics of the global batch (all ranks): torch's SyncBatchNorm on
    CUDA, :class:`CPUSyncBatchNorm` on the CPU (torch's runs on GPUs only).  Same parameter and buffer names, so
    the state dict is unchanged.  The module itself without a group."""
    if not active():
        return module

    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module, _cpu_sync_bn_class())


def _convert(module, cls):

    out = module
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert(child, cls))
    return out


_CPU_SYNC_BN = None


def _cpu_sync_bn_class():
    """Built on first use (this module does not import torch at import time)."""
    global _CPU_SYNC_BN
    if _CPU_SYNC_BN is not None:
        return _CPU_SYNC_BN

    class _AllReduceSum(torch.autograd.Function):
        """Sum over the ranks, differentiable: the gradient of a sum shared by all ranks is the sum of theirs."""

        @staticmethod
        def forward(ctx, tensor):
            tensor = tensor.clone(memory_format=torch.contiguous_format)
            dist.all_reduce(tensor)
            return tensor

        @staticmethod
        def backward(ctx, grad):
            return _AllReduceSum.apply(grad)

    all_reduce = _AllReduceSum.apply

    class CPUSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
        """BatchNorm over the global batch for gloo/CPU ranks, by autograd-aware all-reduces (two passes: mean,
        then the centred sum of squares, in float64).  In eval mode, or without a group, plain BatchNorm."""

        def _check_input_dim(self, input):
            if input.dim() < 2:
                raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

        def forward(self, x):
            if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
                return super().forward(x)
            factor = 0.0 if self.momentum is None else self.momentum
            if self.track_running_stats:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    factor = 1.0 / float(self.num_batches_tracked)
            dims = [0, *range(2, x.dim())]
            shape = [1, -1] + [1] * (x.dim() - 2)
            xd = x.double()
            count = torch.tensor([x.numel() // x.size(1)], dtype=torch.float64, device=x.device)
            total = all_reduce(torch.cat([xd.sum(dims), count]))
            n = total[-1]
            mean = total[:-1] / n
            centred = xd - mean.view(shape)
            var = all_reduce(centred.pow(2).sum(dims)) / n
            y = (centred * torch.rsqrt(var + self.eps).view(shape)).to(torch.float32)
            if self.affine:
                y = y * self.weight.view(shape) + self.bias.view(shape)
            if self.track_running_stats:
                with torch.no_grad():
                    unbiased = var * (n / (n - 1).clamp_min(1))
                    self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                    self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
            return y.to(x.dtype)

    _CPU_SYNC_BN = CPUSyncBatchNorm
    return CPUSyncBatchNorm
