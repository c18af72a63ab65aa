"""One run across processes: ``torchrun`` + DistributedDataParallel (DDP).

``python -m torch.distributed.run --nproc_per_node=N train.py ...`` starts N copies of
``train.py``; torchrun tells each its place through ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``
(SLURM's ``srun`` does the same when a script sets them). Every rank builds the same model from
the same seed, draws the same batch order and the same noise, and trains on its own slice of
each device-resident global batch of ``trainer.batch_size`` rows; DDP averages the gradients,
and each rank's loss is weighted by its share of the batch, so the step equals one process's
step on the whole batch (to float rounding). Everything a run decides (the step's losses for
the divergence check and the epoch's figures, a stop on a signal) is agreed through one small
all-reduce per step, and validation runs the whole validation set on every rank (the same
weights give the same figures, so the scheduler, ``best.pt`` and early stopping agree without
talking). Rank 0 alone writes into the run directory.

What needs the whole batch at once is refused before any work (:func:`check_supported`):
``sparsity=batch_topk`` and ``lifetime`` select across the batch, ``kl`` takes the batch mean
of each feature, top-k's AuxK loss divides by the batch's mean squared residual, and dropout
draws a mask per process.

Backends: NCCL for CUDA tensors and gloo for CPU tensors (both in one process group where CUDA
is there), so a CPU run, the CPU-side stop flag and barriers go through gloo, and a CUDA run's
gradients through NCCL. A collective waits at most :data:`TIMEOUT_ENV` seconds (default 600):
a rank that dies makes the others fail at their next collective, in one line (:func:`describe_failure`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn

from aeexp.config import ConfigError
from aeexp.training.checkpointing import Checkpoints
from aeexp.training.interrupts import SIGNALS

TIMEOUT_ENV = "AEEXP_DDP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
STOP_SIGNALS = SIGNALS  # TERM, INT and (SLURM's warning) USR2: one rank's is every rank's
WHOLE_BATCH = {"batch_topk": "selects across the batch", "lifetime": "selects across the batch",
               "kl": "takes each feature's batch mean"}
# Words of a collective that failed because another rank died or hung (gloo, NCCL, the store).
PEER_FAILURE_WORDS = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe", "timed out", "timeout")


@dataclass(frozen=True)
class Ranks:
    """This process's place: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched(environ: Mapping[str, str] | None = None) -> bool:
    """Started by torchrun (or anything setting ``RANK`` and ``WORLD_SIZE``, as SLURM scripts do)."""
    environ = os.environ if environ is None else environ
    return "RANK" in environ and "WORLD_SIZE" in environ


def ranks_from_env(environ: Mapping[str, str] | None = None) -> Ranks:
    environ = os.environ if environ is None else environ
    if not launched(environ):
        return Ranks()
    rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    return Ranks(rank, world, int(environ.get("LOCAL_RANK", rank)))


def current() -> Ranks:
    """The process group's ranks once :func:`start` ran, else those of one process."""
    if not dist.is_available() or not dist.is_initialized():
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), ranks_from_env().local_rank)


def timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))


def start() -> Ranks:
    """Join the process group if torchrun started this process (once; later calls just say
    where it stands). NCCL serves CUDA tensors and gloo CPU ones."""
    if not launched() or not dist.is_available():
        return Ranks()
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and dist.is_nccl_available()
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout())
    return current()


def stop() -> None:
    """Leave the process group (at the end of ``train.py``), if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (through a CPU tensor, so gloo serves it whatever the device)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(torch.zeros(1))


def broadcast_text(text: str) -> str:
    """Rank 0's ``text`` on every rank (the run directory: Hydra's folder has a timestamp,
    which ranks started a second apart would each compute differently)."""
    if not dist.is_available() or not dist.is_initialized():
        return text
    box = [text]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def check_same_run_dir(run_dir, checkpoint) -> None:
    """Every rank must see the run directory rank 0 sees (a shared filesystem across machines):
    a rank that found no checkpoint to resume from would start afresh beside ranks that resumed.
    All ranks refuse together, in one line, before any work."""
    if not dist.is_available() or not dist.is_initialized():
        return
    seen = "none" if checkpoint is None else f"{checkpoint.path} at step {checkpoint.state.get('global_step')}"
    differs = torch.tensor([float(broadcast_text(seen) != seen)])
    dist.all_reduce(differs)
    if differs.item():
        raise ConfigError("hydra.run.dir", f"{run_dir}: {int(differs.item())} rank(s) see other files there than "
                          "rank 0 (to resume, every machine needs the run directory on a shared filesystem)")


@contextlib.contextmanager
def main_rank_first() -> Iterator[None]:
    """Rank 0 does the block first (a dataset's download), then the others (they find it done)."""
    ranks = current()
    if not ranks.is_main:
        barrier()
    yield
    if ranks.is_main:
        barrier()


def rank_device(device: torch.device) -> torch.device:
    """A CUDA run's rank trains on ``cuda:LOCAL_RANK``; CPU runs stay on the CPU."""
    if device.type != "cuda" or not dist.is_initialized():
        return device
    index = current().local_rank
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def check_supported(cfg: Any, device: torch.device) -> None:
    """Refuse, in one line before any work, what cannot be split across ranks exactly."""
    if not dist.is_available() or not dist.is_initialized():
        return
    if device.type not in ("cpu", "cuda"):
        raise ConfigError("device.name", f"got {device.type!r}, but a torchrun run needs cpu (gloo) or cuda (NCCL)")
    sparsity = cfg.sparsity.get("name")
    if sparsity in WHOLE_BATCH:
        raise ConfigError("sparsity", f"{sparsity} {WHOLE_BATCH[sparsity]}, so it needs the whole batch on one process; "
                          "not supported with DDP (allowed: none, l1, topk with sparsity.aux_weight=0)")
    if sparsity == "topk" and float(cfg.sparsity.get("aux_weight") or 0) > 0:
        raise ConfigError("sparsity.aux_weight", f"got {cfg.sparsity.aux_weight}, but AuxK divides by the whole "
                          "batch's mean squared residual; not supported with DDP (allowed: 0)")


def check_no_dropout(model: nn.Module) -> None:
    """Each process would draw its own dropout mask, and the ranks' random streams would part."""
    rates = [m.p for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if rates:
        raise ConfigError("model dropout", f"got {rates[0]}, but each process would draw its own mask; "
                          "not supported with DDP (allowed: 0)")


def shard_bounds(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [begin, end) of a batch of ``rows`` that ``rank`` trains on: contiguous slices
    (views, no copy) as ``torch.tensor_split`` cuts them, the first ``rows % world`` one row longer."""
    size, extra = divmod(rows, world)
    begin = rank * size + min(rank, extra)
    return begin, begin + size + (rank < extra)


def describe_failure(err: BaseException, ranks: Ranks) -> str | None:
    """One line for an error that came from another rank's death or silence, else None."""
    if ranks.world == 1 and not dist.is_initialized():
        return None
    text = str(err).strip()
    is_dist_error = isinstance(err, getattr(dist, "DistError", ())) or isinstance(err, RuntimeError) and any(
        word in text.lower() for word in PEER_FAILURE_WORDS)
    if not is_dist_error:
        return None
    first = text.splitlines()[0] if text else type(err).__name__
    first = first.split("] ", 1)[-1] if first.startswith("[") else first  # gloo's source position
    return (f"rank {ranks.rank} of {ranks.world} stopped: another process of this run failed or stopped answering "
            f"({first[:200]}); torchrun's report and that rank's output say why")


class PartsModule(nn.Module):
    """``forward`` is the model's ``forward_parts``: DDP syncs gradients only of what goes
    through ``forward``, and the trainer needs the parts (reconstruction, dense and sparse code)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_parts(x)


class SilentRunLog:
    """The RunLog of a rank other than 0: it keeps what the trainer records (a failure's
    metrics are returned as rank 0 would write them) and writes nothing anywhere."""

    def __init__(self) -> None:
        self.recorded: dict[str, Any] = {}

    def __enter__(self) -> "SilentRunLog":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def write(self, metrics: dict[str, Any]) -> None:
        self.recorded = dict(metrics)

    def failed(self, err: BaseException) -> dict[str, Any]:
        return {**self.recorded, "status": "failed", "error": f"{type(err).__name__}: {err}"}

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None  # step, epoch, pictures, finish, ...: rank 0's to write


class Distributed:
    """What the trainer asks of the process group; with one process (no torchrun) every
    method is the identity, so a single-process run does exactly what it did before."""

    def __init__(self, device: torch.device):
        self.ranks = current()
        self.active = dist.is_available() and dist.is_initialized()
        self.device = device
        self.check_every = 1 if device.type == "cpu" else 10  # reading the flags syncs a GPU
        self.flags = torch.zeros(len(STOP_SIGNALS), device=device) if self.active else None  # this rank's signals
        self.flagged = False
        self.agreed: torch.Tensor | None = None  # the signals counted over ranks at the latest step

    @property
    def is_main(self) -> bool:
        return self.ranks.is_main

    def checkpoints(self, run_dir) -> Checkpoints:
        """Rank 0 writes ``last.pt`` / ``best.pt``; every rank waits until it has (a signal's
        stop must not end the run while rank 0 is still saving)."""
        return Checkpoints(run_dir, writes=self.is_main, after_write=barrier if self.active else None)

    def run_log(self, make: Callable[[], Any]):
        """Rank 0's RunLog (``make()``); other ranks get a :class:`SilentRunLog`: nothing in the
        run directory, no tracker started."""
        return make() if self.is_main else SilentRunLog()

    def forward_parts(self, model: nn.Module, compile: bool) -> Callable:
        """``model.forward_parts``, through DDP under torchrun, compiled if asked. The model
        itself stays unwrapped: its state dict (no ``module.`` prefix), hooks and pictures."""
        if not self.active:
            return torch.compile(model.forward_parts) if compile else model.forward_parts
        check_no_dropout(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(PartsModule(model), device_ids=ids)  # buffers: rank 0's
        return torch.compile(wrapped) if compile else wrapped

    def shard(self, clean: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This rank's rows of the global batch (targets and noisy inputs) and the weight of
        its loss: its rows x world / the batch's rows, so DDP's mean over ranks is the whole
        batch's mean. A rank left without rows (a last batch shorter than the world) trains
        on the first row with weight 0, so every rank still takes part in the step."""
        if not self.active:
            return clean, inputs, 1.0
        rows = len(clean)
        begin, end = shard_bounds(rows, self.ranks.rank, self.ranks.world)
        if begin == end:
            return clean[:1], inputs[:1], 0.0
        return clean[begin:end], inputs[begin:end], (end - begin) * self.ranks.world / rows

    def batch_terms(self, terms: torch.Tensor, weight: float, interrupts) -> torch.Tensor:
        """The whole batch's (loss, mse, penalty, aux) from each rank's, weighted by rows, and
        with them the ranks' stop flags (read by :meth:`stop_requested`): one all-reduce."""
        if not self.active:
            return terms
        if not self.flagged and interrupts.signum in STOP_SIGNALS:
            self.flags[STOP_SIGNALS.index(interrupts.signum)] = 1.0  # on the device: no sync
            self.flagged = True
        both = torch.cat([terms.float() * (weight / self.ranks.world), self.flags])
        dist.all_reduce(both)
        self.agreed = both[len(terms):]
        return both[:len(terms)]

    def stop_requested(self, interrupts, step: int) -> bool:
        """Whether any rank was signalled, decided at the same step on every rank; the
        signal is recorded where this rank got none, so every rank stops alike."""
        if not self.active:
            return interrupts.requested
        if step % self.check_every or self.agreed is None:
            return False
        counts = self.agreed.tolist()
        if not any(counts):
            return False
        if interrupts.signum is None:
            interrupts.signum, interrupts.external = STOP_SIGNALS[next(i for i, c in enumerate(counts) if c)], True
        return True
