"""One training loop for every method, and for backbone pre-training.

A run lives in a directory::

    config.json      the full TrainConfig (and the model's config), written at the start
    checkpoint.pt    model, optimiser, scheduler, step and RNG states (atomic writes)
    log.csv          step, loss and its named parts, learning rate, seconds
    model.pt         final weights, written when the run has finished

``fit`` resumes from ``checkpoint.pt`` when there is one. The data of step ``s`` depends only on
``(seed, s)`` (``EpisodeDataset`` draws item ``i`` from ``(seed, i)`` and seeds its transforms per
item), and the RNG states are restored, so a run interrupted and resumed on the CPU ends with
the same weights as an uninterrupted one. Ctrl-C saves a checkpoint before stopping.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..models.registry import REFERENCE_METHOD
from ..runtime import default_device
from . import distributed


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.json`` in its run directory."""

    #: "episodic" (a few-shot method) or "pretrain" (supervised segmentation of a fold's base classes).
    task: str = "episodic"
    model: str = REFERENCE_METHOD
    #: Keyword arguments of ``build_model(model, ...)`` (the method's config fields).
    model_args: dict = field(default_factory=dict)
    benchmark: str = "synthetic"
    data_root: str | None = None
    fold: int = 0
    shot: int = 1
    way: int = 1
    image_size: int | None = None
    convention: str | None = None
    augment: bool = True
    #: Train the head on features computed once per image (needs a fully frozen backbone, BatchNorm
    #: included, and augment=False); see engine.feature_cache.
    cache_features: bool = False
    #: 0 exactly for the methods without episodic training (their records say so): the fine-tuning
    #: baseline and the DINOv2 prototype row, whose runs hold the initial weights.
    steps: int = 1000
    batch_size: int = 8
    optimizer: str = "adamw"  # or "sgd"
    lr: float = 5e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    schedule: str = "cosine"  # "poly", "step" or "constant"
    poly_power: float = 0.9
    step_size: int = 0  # "step": multiply by gamma every step_size steps
    gamma: float = 0.1
    #: Linear learning-rate warm-up over the first steps (0: none), multiplying the schedule.
    warmup_steps: int = 0
    grad_clip: float | None = None
    #: Channels-last memory format for the model's convolutions (faster with oneDNN on CPU and with
    #: tensor cores on CUDA; the results are the same up to float rounding).
    channels_last: bool = False
    #: Split each rank's share of a step's episodes into this many chunks whose gradients are
    #: accumulated (memory); accumulate=N in one process = N torchrun processes, same global batch.
    accumulate: int = 1
    #: Mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); ignored on CPU.
    amp: bool = True
    #: ``torch.compile`` backend for the training forward pass (e.g. "inductor" on CUDA; "eager"
    #: only traces, which checks that a model compiles); None runs the model as is.
    compile: str | None = None
    seed: int = 0
    num_workers: int = 0
    log_every: int = 20
    checkpoint_every: int = 200
    device: str | None = None

    #: Inclusive ``(low, high)`` bounds of numeric fields (``None``: unbounded); ``fold`` and
    #: ``way`` get theirs from the benchmark in ``__post_init__``.
    _BOUNDS = {"shot": (1, None), "way": (1, None), "steps": (0, None), "batch_size": (1, None),
               "step_size": (0, None), "warmup_steps": (0, None), "accumulate": (1, None), "seed": (0, None),
               "num_workers": (0, None), "log_every": (1, None), "checkpoint_every": (1, None),
               "image_size": (1, None), "weight_decay": (0, None), "momentum": (0, 1)}
    #: Fields that must be above 0.
    _POSITIVE = ("lr", "poly_power", "gamma", "grad_clip")

    def __post_init__(self):
        """Reject a wrong type or value of any field, naming it: a run must fail here, before its
        folder or ``config.json`` is written, not steps into training."""
        from ..data.folds import BENCHMARKS, COCO_CONVENTIONS, NUM_FOLDS, base_classes
        from ..models.registry import METHODS, method_record

        choices = {"task": ("episodic", "pretrain"), "optimizer": ("adamw", "sgd"),
                   "schedule": ("cosine", "poly", "step", "constant"), "benchmark": (*BENCHMARKS, "fss1000")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        if self.task == "episodic" and self.model not in METHODS:
            raise ValueError(f"unknown model {self.model!r}; valid names: {sorted(METHODS)}")
        if self.task == "episodic" and isinstance(self.steps, int):
            trains = method_record(self.model).episodic_training
            if trains and self.steps == 0:
                raise ValueError(f"steps must be at least 1 for {self.model!r}: a run of 0 steps would store its "
                                 "untrained weights as finished")
            if not trains and self.steps != 0:
                raise ValueError(f"steps must be 0 for {self.model!r}: it has no episodic training (it adapts to "
                                 f"each test episode inside its forward pass), got {self.steps}")
        if self.convention is not None and (self.benchmark != "coco20i" or self.convention not in COCO_CONVENTIONS):
            raise ValueError(f"convention must be null, or one of {COCO_CONVENTIONS} for coco20i; got "
                             f"{self.convention!r} for {self.benchmark}")
        bounds, notes = dict(self._BOUNDS), {}
        if self.benchmark == "fss1000":  # one fixed train/val/test class split
            bounds["fold"], notes["fold"] = (0, 0), " (fss1000 has no folds)"
        else:
            bounds["fold"], notes["fold"] = (0, NUM_FOLDS - 1), f" ({self.benchmark} has {NUM_FOLDS} folds)"
        for f in fields(self):
            self._check_field(f.name, f.type, *bounds.get(f.name, (None, None)), notes.get(f.name, ""))
        if self.task == "episodic" and self.benchmark != "fss1000":
            classes = len(base_classes(self.benchmark, self.fold, self.convention))
            if self.way > classes:
                raise ValueError(f"way must be an int in 1..{classes} (the training classes of {self.benchmark} "
                                 f"fold {self.fold}), got {self.way}")
        if self.schedule == "step" and self.step_size <= 0:
            raise ValueError("schedule='step' needs step_size > 0")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError) as e:
                raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got "
                                 f"{self.device!r} ({e})") from None

    def _check_field(self, name: str, annotation: str, low, high, note: str) -> None:
        """``name`` holds its annotated type (a bool is no int; an int is a valid float; floats are
        finite) within ``[low, high]`` (above 0 for :attr:`_POSITIVE`)."""
        value = getattr(self, name)
        kinds = [k.strip() for k in annotation.split("|")]
        if value is None and "None" in kinds:
            return
        kind = kinds[0]
        if kind == "bool":
            valid, what = isinstance(value, bool), "true or false"
        elif kind in ("int", "float"):
            number = (int, float) if kind == "float" else int
            valid = isinstance(value, number) and not isinstance(value, bool) and math.isfinite(value)
            what = "an int" if kind == "int" else "a number"
            if name in self._POSITIVE:
                valid, what = valid and value > 0, f"{what} > 0"
            elif low is not None and high is not None:
                valid, what = valid and low <= value <= high, f"{what} in {low}..{high}" if low < high else str(low)
            elif low is not None:
                valid, what = valid and value >= low, f"{what} >= {low}"
        else:
            valid, what = isinstance(value, {"str": str, "dict": dict}[kind]), f"a {kind}"
        if not valid:
            what += " or null" if "None" in kinds else ""
            raise ValueError(f"{name} must be {what}{note}, got {value!r}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"unknown training config key(s) {unknown}; valid keys: {sorted(valid)}")
        return cls(**values)


def runs_dir() -> Path:
    """``$FSSLIB_RUNS`` if set, else the repository's ``runs/``."""
    path = Path(os.environ.get("FSSLIB_RUNS") or Path(__file__).resolve().parents[2] / "runs")
    path.mkdir(parents=True, exist_ok=True)
    return path


def learning_rate_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based)."""
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    progress = step / max(config.steps, 1)
    if config.schedule == "cosine":
        return warmup * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "poly":  # PFENet, SSP: (1 - t / T) ** 0.9
        return warmup * (1 - progress) ** config.poly_power
    if config.schedule == "step":
        return warmup * config.gamma ** (step // config.step_size)
    return warmup


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; unfreeze a stage or train a head")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def to_device(batch: dict, device: torch.device) -> dict:
    """Move every tensor of a batch (and of nested feature dicts) to ``device``."""
    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=True)
        return {k: move(v) for k, v in value.items()} if isinstance(value, dict) else value
    return {k: move(v) for k, v in batch.items()}


def _rng_states() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_states(states: dict) -> None:
    """Restore :func:`_rng_states`. Generator states are CPU byte tensors whatever device the run
    uses (a checkpoint mapped to a GPU would carry them there); CUDA states are restored for the
    devices this machine has (none on a CPU-only machine resuming a GPU run)."""
    torch.set_rng_state(states["torch"].cpu())
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if torch.cuda.is_available():
        for index, state in enumerate(states["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state.cpu(), index)


def pin_memory_for(dataset: Dataset, index: int, device: torch.device) -> bool:
    """Whether a DataLoader should pin its batches: only for a CUDA device, and only when the
    items are CPU tensors (a cached-feature dataset may already yield them on the GPU, and only
    dense CPU tensors can be pinned). Item ``index`` stands for all: a dataset keeps one device."""
    if device.type != "cuda":
        return False

    def tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from tensors(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from tensors(v)

    return all(t.device.type == "cpu" for t in tensors(dataset[index]))


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # an interruption mid-write never corrupts the last good checkpoint


class Trainer:
    """Runs ``steps`` optimisation steps of ``model`` on ``dataset`` items ``step * batch_size + i``.

    ``model(batch)`` returns an output dict and ``model.loss(output, batch)`` returns
    ``(total, {name: value})``; every method and the pre-training classifier follow that contract.
    """

    def __init__(self, config: TrainConfig, model: nn.Module, dataset: Dataset | Callable[[], Dataset],
                 run_dir: str | os.PathLike, collate_fn=None, extra_config: dict | None = None):
        """``dataset`` may be a function that builds it: it is then called only when there are
        steps left to run (building a cached-feature dataset takes seconds that loading a
        finished run should not spend)."""
        self.config, self.model = config, model
        self._dataset = dataset
        self.run_dir = Path(run_dir)
        self.collate_fn = collate_fn
        self.device = default_device(config.device)
        self.record = {"train": asdict(config), **(extra_config or {})}

    @property
    def dataset(self) -> Dataset:
        if not isinstance(self._dataset, Dataset):
            self._dataset = self._dataset()
        config = self.config
        if len(self._dataset) < config.steps * config.batch_size:
            raise ValueError(f"dataset has {len(self._dataset)} items; "
                             f"{config.steps} steps x {config.batch_size} needed")
        return self._dataset

    @property
    def finished(self) -> bool:
        return (self.run_dir / "model.pt").exists()

    def _check_config(self) -> None:
        path = self.run_dir / "config.json"
        record = json.loads(json.dumps(self.record))  # tuples -> lists, as stored
        if path.exists():
            stored = json.loads(path.read_text())
            # A field added to TrainConfig after the run was written takes its default, which by
            # construction reproduces the behaviour from before the field existed.
            defaults = json.loads(json.dumps(asdict(TrainConfig())))
            stored["train"] = {**defaults, **stored["train"]}
            if stored != record:
                changed = sorted(k for k in set(stored["train"]) | set(record["train"])
                                 if stored["train"].get(k) != record["train"].get(k))
                raise ValueError(f"run {self.run_dir} was started with another config "
                                 f"(differs in {changed or 'model'}); "
                                 "use another run directory or delete it")
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1))

    def fit(self, progress: bool = True, stop_after: int | None = None) -> nn.Module:
        """Train to ``config.steps`` (resuming if a checkpoint exists); returns the model.

        ``stop_after`` ends the call after that many steps, checkpointing first (used to test
        resumption; an interrupted run behaves the same). Under torchrun every rank calls this;
        rank 0 owns the run directory (see ``engine.distributed``).
        """
        if distributed.is_main():
            self._check_config()
        distributed.barrier()
        if self.finished:
            return self._load_finished()
        if self.config.steps == 0:  # a method without episodic training: the run is its initial weights
            if distributed.is_main():
                _atomic_save(self.model.state_dict(), self.run_dir / "model.pt")
            distributed.barrier()
            return self.model.to(self.device)
        with RunLock(self.run_dir) if distributed.is_main() else contextlib.nullcontext():
            return self._fit(progress and distributed.is_main(), stop_after)

    def _load_finished(self) -> nn.Module:
        model = self.model.to(self.device)
        model.load_state_dict(torch.load(self.run_dir / "model.pt", map_location=self.device, weights_only=True))
        return model

    def _episode_indices(self, first_step: int) -> list[int]:
        """Dataset items of this rank from ``first_step`` on: step ``s`` is items ``s*B .. s*B+B-1``
        of the global batch ``B``, and rank ``r`` takes the ``r``-th of ``world`` equal slices."""
        config, world = self.config, distributed.world_size()
        if config.batch_size % (world * config.accumulate):
            raise ValueError(f"batch_size={config.batch_size} (the global batch) must be divisible by world size "
                             f"{world} x accumulate {config.accumulate}")
        share = config.batch_size // world
        offset = distributed.rank() * share
        return [s * config.batch_size + offset + j for s in range(first_step, config.steps) for j in range(share)]

    def _fit(self, progress: bool, stop_after: int | None) -> nn.Module:
        from tqdm.auto import tqdm

        config = self.config
        model = self.model.to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(config, model)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(config, s))
        step, rng_states = self._resume(model, optimizer, scheduler)
        # DDP broadcasts rank 0's weights and averages gradients; some switches leave parameters
        # unused in a forward pass (e.g. an auxiliary classifier with its loss off).
        ddp = DistributedDataParallel(model, find_unused_parameters=True) if distributed.world_size() > 1 else None
        net = ddp if ddp is not None else model
        if config.compile:
            net = torch.compile(net, backend=config.compile)
        amp_dtype = self._amp_dtype()
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

        micro_batch = config.batch_size // (distributed.world_size() * config.accumulate)
        indices = self._episode_indices(step)
        pin = bool(indices) and pin_memory_for(self.dataset, indices[0], self.device)
        loader = DataLoader(self.dataset, batch_size=micro_batch, collate_fn=self.collate_fn, sampler=indices,
                            num_workers=config.num_workers, pin_memory=pin)
        batches = iter(loader)  # creating it draws a seed from torch's RNG, so restore RNG states after
        if rng_states is not None:
            _set_rng_states(rng_states)
        log = self._open_log(step)
        started = time.perf_counter()
        last_step = config.steps if stop_after is None else min(config.steps, step + stop_after)
        model.train()
        bar = tqdm(total=config.steps, initial=step, desc=f"{self.run_dir.name} on {self.device}", disable=not progress,
                   leave=False)
        try:
            while step < last_step:
                optimizer.zero_grad(set_to_none=True)
                loss_sum, parts_sum = torch.zeros((), device=self.device), {}
                for chunk in range(config.accumulate):
                    batch = to_device(next(batches), self.device)
                    # Gradients are exchanged once per step, after the last chunk.
                    last_chunk = chunk == config.accumulate - 1
                    with ddp.no_sync() if ddp is not None and not last_chunk else contextlib.nullcontext():
                        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                            output = net(batch)
                            loss, parts = model.loss(output, batch)
                        scaler.scale(loss / config.accumulate).backward()
                    loss_sum += loss.detach() / config.accumulate
                    for name, value in parts.items():
                        parts_sum[name] = parts_sum.get(name, 0.0) + value / config.accumulate
                if config.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                bar.update()
                if step % config.log_every == 0 or step == config.steps:
                    loss_value = distributed.mean_over_ranks(loss_sum).item()  # every rank takes part
                    if distributed.is_main():
                        log.writerow({"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                                      "seconds": round(time.perf_counter() - started, 2), **parts_sum})
                    bar.set_postfix(loss=f"{loss_value:.3f}")
                if step % config.checkpoint_every == 0 and step < config.steps:
                    self._checkpoint(model, optimizer, scheduler, step)
            if step < config.steps:
                self._checkpoint(model, optimizer, scheduler, step)
            elif distributed.is_main():
                _atomic_save(model.state_dict(), self.run_dir / "model.pt")
                (self.run_dir / "checkpoint.pt").unlink(missing_ok=True)
        except KeyboardInterrupt:
            self._checkpoint(model, optimizer, scheduler, step)
            raise
        finally:
            bar.close()
            self._log_file.close()
        distributed.barrier()
        return model

    def _amp_dtype(self) -> torch.dtype | None:
        if not (self.config.amp and self.device.type == "cuda"):
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _resume(self, model, optimizer, scheduler) -> tuple[int, dict | None]:
        """Load the checkpoint if there is one: ``(step, RNG states)``; else seed and start at 0."""
        path = self.run_dir / "checkpoint.pt"
        if not path.exists():
            torch.manual_seed(self.config.seed)
            np.random.seed(self.config.seed)
            random.seed(self.config.seed)
            return 0, None
        # On the CPU: load_state_dict copies into the model's and optimiser's own devices, and the
        # RNG states must stay CPU tensors.
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return state["step"], state["rng"]

    def _checkpoint(self, model, optimizer, scheduler, step: int) -> None:
        self._log_file.flush()
        if not distributed.is_main():
            return
        _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "step": step, "rng": _rng_states()},
                     self.run_dir / "checkpoint.pt")

    def _open_log(self, step: int):
        """Open ``log.csv``, dropping rows logged after the checkpoint we resume from."""
        path = self.run_dir / "log.csv" if distributed.is_main() else Path(os.devnull)
        rows = []
        if path.is_file() and step > 0:
            with open(path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        self._log_file = open(path, "w", newline="")
        writer = _LazyCsv(self._log_file)
        for row in rows:
            writer.writerow(row)
        return writer


class RunInUse(RuntimeError):
    """Another live process holds the lock of a run (it is training it right now)."""


class RunLock:
    """``run_dir/<name>`` holding the training process's id: two processes (e.g. two ablation
    commands sharing runs) never train the same run at once. A lock left by a process that no
    longer exists (killed) is taken over.

    A lock held by a live process raises :class:`RunInUse`, or, with ``wait`` (a message to
    print), waits for that process to finish: a second notebook that needs the backbone another
    notebook is pre-training waits for it instead of failing.
    """

    def __init__(self, run_dir: Path, name: str = "lock", wait: str | None = None, poll_seconds: float = 2.0):
        self.path = Path(run_dir) / name
        self.wait, self.poll_seconds = wait, poll_seconds

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        announced = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is None or not _alive(owner) or owner == os.getpid():
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                if self.wait is None:
                    raise RunInUse(f"run {self.path.parent} is being trained by process {owner}; wait for it to "
                                   f"finish (or remove {self.path} if that process is not training it)") from None
                if not announced:
                    print(f"{self.wait} (process {owner} holds {self.path}); waiting for it to finish", flush=True)
                    announced = True
                time.sleep(self.poll_seconds)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or -1)
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _LazyCsv:
    """A CSV writer whose header is the first row's keys (loss parts differ between methods)."""

    def __init__(self, file):
        self.file, self.writer = file, None

    def writerow(self, row: dict) -> None:
        if self.writer is None:
            self.writer = csv.DictWriter(self.file, fieldnames=list(row))
            self.writer.writeheader()
        self.writer.writerow(row)


def read_log(run_dir: str | os.PathLike):
    """The loss log of a run as a DataFrame."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "log.csv")
