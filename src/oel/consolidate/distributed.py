"""Consolidation on several processes with torch's own stack: DDP or FSDP2, one process per device.

    torchrun --nproc_per_node=8 -m oel.cli consolidate cfg.yaml parallel=fsdp
    accelerate launch --num_processes=8 -m oel.cli consolidate cfg.yaml parallel=ddp

The launcher sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `setup()`
reads them and joins (or reuses) the process group: nccl when CUDA is available (device
cuda:LOCAL_RANK), gloo on CPU. Without WORLD_SIZE (or with WORLD_SIZE=1) nothing
distributed happens: no process group, the single-process path is the one that runs.

What is split and what is summed, so that N ranks compute what one process would:
- the batch: every rank makes the same seeded draw of `batch_size` rows and takes its own
  contiguous block of it (`my_rows`); each row's sampling seed is derived from its index in
  the GLOBAL batch, so the union of the ranks' responses is the single-process batch;
- the loss: the single-process loss is the mean over ALL response tokens of the batch.
  Rank r's micro-batch j contributes `loss_rj * tokens_rj / tokens_total` (the global token
  count comes from one all-reduce). DDP and FSDP AVERAGE gradients over ranks, so the
  trainer multiplies by `world_size` to turn that average back into the required sum
  (`grad_scale`);
- metrics: token-weighted partial sums, summed over ranks (`all_sum`);
- checkpoints and the final model: written once, by rank 0, in the same HF format.

DDP replicates the weights and the optimizer state; FSDP2 (`fully_shard`) shards both
(decoder layers as units, plus the root), gathering weights layer by layer for each
forward. Under FSDP every generation step is a collective, so generation runs with
`synced_gpus` (ranks that finish early keep stepping until all are done).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from oel.consolidate import checkpoint
from oel.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

Parallel = Literal["none", "ddp", "fsdp"]


@dataclass(frozen=True)
class Topology:
    """Which process this is. `device` is None in a single process (the model config decides)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str | None = None
    owns_group: bool = False
    """This module created the process group, so it also destroys it."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """WORLD_SIZE as set by torchrun / accelerate launch; 1 when unset."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE: expected an integer, got {value!r}") from None


def is_main_process() -> bool:
    """Rank 0, or no launcher at all (the CLI shows its progress bar only there)."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(parallel: Parallel) -> Topology:
    """Join the launcher's process group, or stay single-process when there is none."""
    world = env_world_size()
    if world <= 1:
        if parallel != "none":
            log.info("parallel=%s but WORLD_SIZE is unset or 1: running as a single process", parallel)
        return Topology()
    if parallel == "none":
        raise ConfigError(f"parallel: 'none' under a launcher with WORLD_SIZE={world}; set parallel=ddp or "
                          "parallel=fsdp")
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        backend, device = "nccl", f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    else:
        backend, device = "gloo", "cpu"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend)
    topo = Topology(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)
    log.info("rank %d/%d on %s (%s)", topo.rank, topo.world_size, device, dist.get_backend())
    return topo


def my_rows(batch_size: int, topo: Topology) -> range:
    """This rank's contiguous block of the step's global batch (indices into the draw)."""
    if batch_size % topo.world_size:
        raise ConfigError(f"batch_size: {batch_size} is not divisible by the {topo.world_size} ranks")
    per_rank = batch_size // topo.world_size
    return range(topo.rank * per_rank, (topo.rank + 1) * per_rank)


class SingleProcess:
    """No process group: every method is the identity. The base of the distributed strategies."""

    synced_generation = False

    def __init__(self, topo: Topology, scorer: torch.nn.Module) -> None:
        self.topo = topo
        self.scorer = scorer
        self.train_module: torch.nn.Module = scorer
        """What the student's scoring pass (the one with gradients) calls."""

    @property
    def grad_scale(self) -> float:
        """Undo the wrappers' gradient averaging over ranks (the loss needs their sum)."""
        return float(self.topo.world_size)

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager[None]:
        """Context of one micro-batch's forward+backward; gradients are synced only if `sync`."""
        return contextlib.nullcontext()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        return list(values)

    def all_true(self, flag: bool) -> bool:
        return flag

    def barrier(self) -> None:
        pass

    def grad_norm(self, params: Sequence[torch.nn.Parameter], clip: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(params, clip))

    @contextlib.contextmanager
    def full_weights(self) -> Iterator[None]:
        """Inside: the student's modules hold their full, unsharded weights (to save them)."""
        yield

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> tuple[str, dict[str, Any]] | None:
        """(file name, state) for the checkpoint; None = the optimizer's own state_dict (replicated)."""
        return None

    def load_checkpoint(self, path: Path, model: Any, optimizer: torch.optim.Optimizer) -> int:
        """Restore weights and optimizer state on this rank; returns the checkpoint's step."""
        return checkpoint.load_checkpoint(path, model=model, optimizer=optimizer)

    def close(self) -> None:
        pass


class DataParallel(SingleProcess):
    """DDP: full replicas; gradients averaged by all-reduce during the last micro-batch's backward."""

    def __init__(self, topo: Topology, scorer: torch.nn.Module) -> None:
        super().__init__(topo, scorer)
        from torch.nn.parallel import DistributedDataParallel

        on_cuda = topo.device is not None and topo.device.startswith("cuda")
        self.train_module = DistributedDataParallel(scorer, device_ids=[topo.local_rank] if on_cuda else None)

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if sync else self.train_module.no_sync()

    def _reduce(self, values: Sequence[float], op: Any) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self.topo.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        import torch.distributed as dist

        return self._reduce(values, dist.ReduceOp.SUM)

    def all_true(self, flag: bool) -> bool:
        import torch.distributed as dist

        return self._reduce([1.0 if flag else 0.0], dist.ReduceOp.MIN)[0] > 0

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if self.topo.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class FullyShardedDataParallel(DataParallel):
    """FSDP2: weights, gradients and AdamW state sharded over ranks; decoder layers are the units."""

    synced_generation = True

    def __init__(self, topo: Topology, scorer: torch.nn.Module, frozen_teacher: torch.nn.Module | None,
                 mixed_precision: bool = False) -> None:
        SingleProcess.__init__(self, topo, scorer)
        for module in (scorer, frozen_teacher):
            if module is not None:
                shard(module, topo, mixed_precision=mixed_precision)
        self.train_module = scorer

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager[None]:
        self.scorer.set_requires_gradient_sync(sync)  # type: ignore[operator]
        return contextlib.nullcontext()

    def grad_norm(self, params: Sequence[torch.nn.Parameter], clip: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    @contextlib.contextmanager
    def full_weights(self) -> Iterator[None]:
        """Rank 0's modules hold full float32 copies (on CPU) of every sharded parameter.

        Gathered from the shards themselves (`full_tensor`, a collective every rank joins),
        not from FSDP's compute copies, which are bf16 under `fsdp_mixed_precision`. Other
        ranks drop what they gather, so only rank 0 pays the CPU memory. The sharded
        parameters are put back on exit.
        """
        from torch.distributed.tensor import DTensor

        swapped: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
        gathered: dict[int, torch.nn.Parameter | None] = {}  # tied weights: gathered once on EVERY rank
        for module in self.scorer.modules():
            for name, param in list(module._parameters.items()):
                if not isinstance(param, DTensor):
                    continue
                if id(param) not in gathered:
                    full = param.full_tensor().detach()
                    gathered[id(param)] = (torch.nn.Parameter(full.cpu(), requires_grad=param.requires_grad)
                                           if self.topo.is_main else None)
                copy = gathered[id(param)]
                if copy is not None:
                    swapped.append((module, name, param))
                    module._parameters[name] = copy
        try:
            yield
        finally:
            for module, name, param in swapped:
                module._parameters[name] = param

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> tuple[str, dict[str, Any]] | None:
        """The full AdamW state gathered to rank 0's CPU (a collective: every rank calls it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return checkpoint.OPTIMIZER_FSDP_FILE, get_optimizer_state_dict(self.scorer, optimizer, options=options)

    def load_checkpoint(self, path: Path, model: Any, optimizer: torch.optim.Optimizer) -> int:
        """Every rank reads the full checkpoint and keeps its own shards of it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        optimizer_file = path / checkpoint.OPTIMIZER_FSDP_FILE
        if not optimizer_file.is_file():
            raise TrainingError(f"{path}: has no {checkpoint.OPTIMIZER_FSDP_FILE} (written without FSDP? "
                                "resume it with the parallel setting that wrote it)")
        adapter = path / checkpoint.ADAPTER_FILE
        if adapter.is_file():
            copy_into_shards(dict(model.named_parameters()), _load_safetensors([adapter]), path)
        else:
            files = [f for f in sorted(path.glob("*.safetensors")) if f.name != checkpoint.ADAPTER_FILE]
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            copy_into_shards(checkpoint.module_tensors(base), _load_safetensors(files), path)
        full = torch.load(optimizer_file, weights_only=True)
        set_optimizer_state_dict(self.scorer, optimizer, full, options=StateDictOptions(full_state_dict=True))
        return int(checkpoint.read_state(path)["step"])


def _load_safetensors(files: Sequence[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def copy_into_shards(targets: dict[str, torch.Tensor], values: dict[str, torch.Tensor], where: Path) -> None:
    """Copy full tensors into (possibly sharded) model tensors; each rank keeps its shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for name, value in values.items():
        if name not in targets:
            raise TrainingError(f"{where}: checkpoint tensor {name} is not in the model (different config?)")
        target = targets[name]
        with torch.no_grad():
            if isinstance(target, DTensor):
                value = distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements)
            target.copy_(value)


def decoder_layer_types(lm: Any) -> tuple[type, ...]:
    """The transformer block classes, as named by the HF model's `_no_split_modules`."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    names = set(getattr(base, "_no_split_modules", None) or [])
    types_ = tuple({type(m) for m in base.modules() if type(m).__name__ in names})
    if not types_:
        raise TrainingError(f"{type(base).__name__}: no decoder layer class found (_no_split_modules={sorted(names)}); "
                            "cannot shard it with parallel=fsdp")
    return types_


def shard(scorer: torch.nn.Module, topo: Topology, *, mixed_precision: bool = False) -> None:
    """fully_shard every decoder layer, then the scorer as the root (embeddings, norm, head).

    `generate` is registered as a forward method so that generation, which does not call
    the root's forward, still gathers the root's weights. `mixed_precision`: weights are
    gathered as bf16 for compute while the shards (and AdamW) stay float32.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh("cuda" if topo.device and topo.device.startswith("cuda") else "cpu", (topo.world_size,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision
              else MixedPrecisionPolicy())
    layer_types = decoder_layer_types(scorer.lm)  # type: ignore[arg-type]
    for module in list(scorer.modules()):
        if isinstance(module, layer_types):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(scorer, mesh=mesh, mp_policy=policy)
    register_fsdp_forward_method(scorer, "generate")


def make_strategy(parallel: Parallel, topo: Topology, scorer: torch.nn.Module,
                  frozen_teacher: torch.nn.Module | None = None, *, mixed_precision: bool = False) -> SingleProcess:
    """The strategy for `parallel` (always `SingleProcess` without a launcher)."""
    if not topo.distributed:
        return SingleProcess(topo, scorer)
    if parallel == "ddp":
        return DataParallel(topo, scorer)
    return FullyShardedDataParallel(topo, scorer, frozen_teacher, mixed_precision=mixed_precision)
