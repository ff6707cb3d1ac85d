"""Data parallelism over the processes torchrun starts: one process per device, each taking a share of every batch.

`init()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and joins the
process group, NCCL on CUDA and gloo on the CPU; without it (WORLD_SIZE unset or 1) nothing is initialised and
every method of the `World` it returns is a no-op, so one process runs exactly as it would without this module.

Why the gradients are averaged by hand and not by DistributedDataParallel: DDP averages a parameter's gradient
when autograd hands it over, and only after its own forward() armed it. The Deep Ritz loss differentiates
∇ₓΦ, which no longer depends on the parameters that shift Φ by a constant (the head's bias), and it reaches the
potential through value_and_velocity, which DDP's forward never sees. Measured with 2 gloo processes, the MLP
EnergyPotential and the pathwise loss (torch 2.13): DDP left the ranks' gradients unaveraged (they differed by
4.5e-2) and raised at the next step, with find_unused_parameters=True as well; with static_graph=True they stayed
unaveraged, silently, for as many steps as it ran; calling the module's methods past DDP's forward did the same.
(The covariance estimator with its control variate, whose loss uses Φ itself, was averaged correctly.) One
all-reduce of all gradients after backward matched a single process on the whole batch to 2e-9 for every loss
and entry point; it gives up only DDP's overlap of communication with the backward pass.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among `size` processes: its `rank`, its `local_rank` on its machine, and the `device`
    its collectives run on (cuda:LOCAL_RANK under NCCL, else the CPU). The default is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def shard(self, n: int) -> slice:
        """This rank's contiguous block of range(n); the first n mod size ranks take one item more."""
        sizes = self.share_sizes(n)
        start = sum(sizes[: self.rank])
        return slice(start, start + sizes[self.rank])

    def share_sizes(self, n: int) -> list[int]:
        """How many of n items each rank takes, in rank order."""
        return [n // self.size + (r < n % self.size) for r in range(self.size)]

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's `tensor` (same shape and dtype on all ranks), in rank order, on the tensor's device."""
        if self.size == 1:
            return [tensor]
        local = tensor.to(self.device)
        gathered = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(gathered, local.contiguous())
        return [g.to(tensor.device) for g in gathered]

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The sum of every rank's `tensor` (same shape and dtype on all ranks), on the tensor's device."""
        if self.size == 1:
            return tensor
        total = tensor.to(self.device).clone()
        dist.all_reduce(total)
        return total.to(tensor.device)

    def broadcast_value(self, value: float) -> float:
        """Rank 0's `value` on every rank, e.g. its clock, so that all ranks take the same decisions."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return t.item()

    def broadcast_(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's `module`, as DDP does when it wraps one."""
        if self.size == 1:
            return
        for tensor in module.state_dict().values():
            local = tensor.to(self.device)
            dist.broadcast(local, src=0)
            tensor.copy_(local)

    def check_agree(self, value: int, what: str) -> None:
        """Raise RuntimeError on every rank unless all ranks hold the same integer `value`."""
        values = [int(v) for v in self.all_gather(torch.tensor([value], dtype=torch.int64))]
        if len(set(values)) > 1:
            raise RuntimeError(f"the ranks disagree on {what}: {values} for ranks 0..{self.size - 1}")

    def average_gradients(self, module: nn.Module, *scalars: Tensor) -> list[Tensor]:
        """Replace each parameter's gradient by its mean over the ranks and return the means of `scalars` (e.g. the
        loss), all in one all-reduce. A gradient missing on some ranks counts as zero there; one missing on every
        rank stays missing, as in a single process. With equal shares of a batch-mean loss this is the gradient of
        the whole batch; the sums are the same on every rank, so their weights stay identical."""
        if self.size == 1:
            return list(scalars)
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("average_gradients: the module has no parameters that require gradients")
        like = params[0]
        present = torch.tensor([p.grad is not None for p in params], dtype=like.dtype, device=like.device)
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
            + [present]
            + [s.detach().reshape(1).to(like.device) for s in scalars]
        )
        total = self.all_reduce_sum(flat) / self.size
        *grads, present, means = total.split([p.numel() for p in params] + [len(params), len(scalars)])
        for p, grad, seen in zip(params, grads, present.tolist()):
            if seen:
                p.grad = grad.view_as(p).to(p.dtype)
        return list(means.unbind())

    def sample_sharded(self, fn: Callable[[int, torch.Generator], Tensor], n: int, seed: int = 0) -> Tensor:
        """n samples [n, ...] on every rank: rank r draws its share(n) with fn(count, generator seeded seed + r), and
        the shares are gathered in rank order, on fn's device. One process draws fn(n, generator seeded `seed`)."""
        if n < self.size:
            raise ValueError(f"cannot share {n} samples among {self.size} processes; ask for at least {self.size}")
        sizes = self.share_sizes(n)
        mine = fn(sizes[self.rank], torch.Generator().manual_seed(seed + self.rank))
        if mine.shape[:1] != (sizes[self.rank],):
            raise ValueError(f"sample_sharded: fn returned shape {tuple(mine.shape)} for {sizes[self.rank]} samples")
        if self.size == 1:
            return mine
        # all_gather needs equal shapes: pad the shorter shares to the longest (rank 0's) and trim after
        padded = torch.cat([mine, mine.new_zeros(sizes[0] - len(mine), *mine.shape[1:])])
        return torch.cat([share[:size] for share, size in zip(self.all_gather(padded), sizes)])

    def gather_rng_states(self, device: torch.device) -> dict[str, Tensor]:
        """Every rank's torch RNG state (and its CUDA one when training on `device` = CUDA) as CPU tensors named
        rng.rank.<r>.torch / .cuda, on every rank; nothing for a single process, whose state the checkpoint holds."""
        if self.size == 1:
            return {}
        own = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(device)
        return {
            f"rng.rank.{r}.{name}": state.cpu()
            for name, state in own.items()
            for r, state in enumerate(self.all_gather(state))
        }

    def restore_rng_states(self, tensors: Mapping[str, Tensor], device: torch.device, source: str) -> None:
        """Set this rank's torch (and CUDA) RNG to its state among `tensors` (from gather_rng_states); warn when the
        checkpoint was written by a different number of processes, whose noise cannot be continued exactly."""
        written_by = sum(k.startswith("rng.rank.") and k.endswith(".torch") for k in tensors) or 1
        if written_by != self.size and self.is_main:
            warnings.warn(
                f"{source} was written by {written_by} process(es) and is resumed by {self.size}: the "
                f"batches continue exactly, the noise of the loss differs from an uninterrupted run",
                stacklevel=2,
            )
        own = f"rng.rank.{self.rank}."
        if self.size == 1 or own + "torch" not in tensors:
            return
        torch.set_rng_state(tensors[own + "torch"])
        if device.type == "cuda" and own + "cuda" in tensors:
            torch.cuda.set_rng_state(tensors[own + "cuda"], device)


def init(device: str | torch.device | None = None) -> World:
    """Join the process group torchrun describes in the environment: NCCL with this process pinned to
    cuda:LOCAL_RANK when `device` is CUDA (the default where available), gloo otherwise. A single process (no
    WORLD_SIZE, or 1) initialises nothing. Call it before building the model, so that "cuda" means this rank's GPU."""
    if dist.is_available() and dist.is_initialized():
        return current()
    env = read_env()
    if env["WORLD_SIZE"] == 1:
        return World()
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        if env["LOCAL_RANK"] >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={env['LOCAL_RANK']} but this machine shows "
                f"{torch.cuda.device_count()} GPU(s); start at most that many processes per node"
            )
        torch.cuda.set_device(env["LOCAL_RANK"])
    dist.init_process_group("nccl" if kind == "cuda" else "gloo", rank=env["RANK"], world_size=env["WORLD_SIZE"])
    return current()


def current() -> World:
    """The World of the initialised process group, or a single process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    nccl = dist.get_backend() == "nccl"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    return World(dist.get_rank(), dist.get_world_size(), local_rank, device)


def cleanup() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def read_env() -> dict[str, int]:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them, checked; a single process when WORLD_SIZE is unset."""
    if os.environ.get("WORLD_SIZE", "1").strip() == "1":
        return {"RANK": 0, "WORLD_SIZE": 1, "LOCAL_RANK": 0}
    raw = {name: os.environ.get(name, "") for name in ENV}
    bad = [f"{name}={value!r}" for name, value in raw.items() if not value.strip().isdigit()]
    if bad:
        raise ValueError(
            f"torchrun's environment must hold non-negative integers, got {', '.join(bad)}; start the "
            f"processes with torchrun"
        )
    values = {name: int(value) for name, value in raw.items()}
    if not values["RANK"] < values["WORLD_SIZE"]:
        raise ValueError(f"RANK={values['RANK']} must be below WORLD_SIZE={values['WORLD_SIZE']}")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={values['WORLD_SIZE']} but {' and '.join(missing)} unset; start the processes with torchrun"
        )
    return values
