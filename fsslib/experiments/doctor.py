"""``python -m fsslib doctor [--device cpu|cuda]``: does everything that training needs work on this machine?

Run it first on a new machine (a GPU especially): it prints the device, the versions and the
threads, then runs every method's tiny cycle on a tiny synthetic benchmark in a temporary folder
(nothing is written under ``runs/`` or the data folder):

    train 4 steps straight; train 2 steps and stop (an interruption); resume to 4 steps;
    the resumed weights must equal the straight run's; evaluate on a few test episodes.

A method without episodic training (the fine-tuning baseline) has runs of 0 steps: the check
stores and reloads its run, then evaluates it (its adaptation runs inside the evaluation).

Methods whose backbone is frozen entirely (PFENet, MSPF, MSDNet) run the cycle twice, on images
and on cached features. Then mixed precision (where the trainer uses it: CUDA) and
``torch.compile`` (inductor). One line per check, PASS or FAIL with the error; a failure does not
stop the other checks. On the CPU the resumed weights must be equal; on a GPU, whose kernels may
add in another order from run to run, within 1e-4.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.registry import METHODS, REFERENCE_METHOD, records
from ..runtime import default_device


def cached_methods() -> tuple[str, ...]:
    """Methods whose synthetic recipe freezes the whole backbone, so they also train on cached features."""
    return tuple(r.name for r in records() if r.synthetic_training.get("cache_features"))

STEPS, BATCH, IMAGE_SIZE = 4, 2, 64


@dataclass
class Check:
    name: str
    passed: bool | None  # None: skipped
    seconds: float
    detail: str = ""

    def line(self) -> str:
        status = {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]
        detail = f": {self.detail}" if self.detail else ""
        return f"{status}  {self.name} ({self.seconds:.1f} s){detail}"


def environment(device: torch.device) -> list[str]:
    import torchvision

    lines = [f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
             f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
             f"CUDA {torch.version.cuda or 'none'} (available: {torch.cuda.is_available()})",
             f"threads: {torch.get_num_threads()} intra-op, {os.cpu_count()} CPUs"]
    if device.type == "cuda":
        lines.append(f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    return lines


@contextmanager
def _temporary_runs(folder: Path):
    """Point ``$FSSLIB_RUNS`` (runs and the shared feature store) at ``folder`` for the checks."""
    before = os.environ.get("FSSLIB_RUNS")
    os.environ["FSSLIB_RUNS"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FSSLIB_RUNS", None)
        else:
            os.environ["FSSLIB_RUNS"] = before


def tiny_config(method: str, device: torch.device, cached: bool = False, **overrides):
    """The synthetic recipe's model settings for ``method`` (random small CNN), a narrow head, 4 steps."""
    from ..engine.trainer import TrainConfig
    from ..models.registry import config_fields, method_record
    from .configs import synthetic_model_args

    model_args = {**synthetic_model_args(method), "weights": None}
    if "width" in config_fields(method):
        model_args["width"] = 16
    if cached:
        model_args.update(frozen_stages="all", freeze_bn=True)
    steps = STEPS if method_record(method).episodic_training else 0
    values = dict(model=method, model_args=model_args, steps=steps, batch_size=BATCH, image_size=IMAGE_SIZE,
                  checkpoint_every=2, log_every=1, lr=1e-3, amp=False, device=str(device),
                  cache_features=cached, augment=not cached)
    return TrainConfig(**{**values, **overrides})


def train_resume_evaluate(config, source, folder: Path) -> str:
    """The cycle of the module docstring; returns a summary, raises on any failure."""
    from ..engine.episodic import train_fewshot
    from ..engine.protocol import EvalProtocol, evaluate
    from ..engine.statistics import per_seed

    straight = train_fewshot(config, folder / "straight", progress=False, source=source)
    if config.steps:
        train_fewshot(config, folder / "resumed", progress=False, stop_after=config.steps // 2, source=source)
        if not (folder / "resumed" / "checkpoint.pt").exists():
            raise RuntimeError("the interrupted run left no checkpoint")
    resumed = train_fewshot(config, folder / "resumed", progress=False, source=source)  # 0 steps: loaded
    exact = torch.device(config.device).type == "cpu"
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        same = torch.equal(a, b) if exact or not a.is_floating_point() else torch.allclose(a, b, atol=1e-4, rtol=1e-4)
        if not same:
            raise RuntimeError(f"the resumed run's {name} differs from the uninterrupted run's")
    rows = evaluate(resumed, source, config.fold, EvalProtocol(episodes=4, seeds=(0,), shots=(1, 2),
                                                               image_size=IMAGE_SIZE), device=config.device)
    miou = per_seed(rows)["miou"]
    if not all(math.isfinite(v) for v in miou):
        raise RuntimeError(f"evaluation gave mIoU {miou.tolist()}")
    return "resumed = uninterrupted, mIoU " + " / ".join(f"{v:.1f}" for v in miou) + " (1 / 2 shots)"


def train_once(config, source, folder: Path) -> str:
    """Train ``config`` and check that its logged losses are finite."""
    from ..engine.episodic import train_fewshot
    from ..engine.trainer import read_log

    train_fewshot(config, folder, progress=False, source=source)
    losses = read_log(folder)["loss"]
    if not losses.map(math.isfinite).all():
        raise RuntimeError(f"non-finite loss: {losses.tolist()}")
    return f"losses {losses.iloc[0]:.3f} -> {losses.iloc[-1]:.3f}"


def run_checks(device: str | torch.device | None = None, methods: tuple[str, ...] | None = None,
               compile_check: bool = True, report: Callable[[str], None] = print) -> list[Check]:
    """Every check of the module docstring on ``device``; each line is reported as it finishes.
    ``methods``: a subset of the methods; ``compile_check=False`` leaves out ``torch.compile``."""
    from ..data import SyntheticConfig, prepare_synthetic

    device = default_device(device)
    for line in environment(device):
        report(line)
    checks: list[Check] = []

    def check(name: str, work: Callable[[], str] | None, skip_reason: str = "") -> None:
        start = time.perf_counter()
        if work is None:
            result = Check(name, None, 0.0, skip_reason)
        else:
            try:
                result = Check(name, True, 0.0, work())
            except Exception as error:  # noqa: BLE001 - every check reports, none stops the others
                last = traceback.extract_tb(error.__traceback__)[-1]
                where = f" [{Path(last.filename).name}:{last.lineno}]"
                result = Check(name, False, 0.0, f"{type(error).__name__}: {error}{where}")
        result.seconds = time.perf_counter() - start
        checks.append(result)
        report(result.line())

    with tempfile.TemporaryDirectory(prefix="fsslib-doctor-") as tmp, _temporary_runs(Path(tmp) / "runs"):
        folder = Path(tmp)
        source = prepare_synthetic(folder / "data", SyntheticConfig.fast(), progress=False)
        for method in methods or METHODS:
            for cached in (False, True) if method in cached_methods() else (False,):
                kind = "cached features" if cached else "images"
                run = folder / f"{method}-{'cached' if cached else 'images'}"
                check(f"{method}, {kind}: train -> interrupt -> resume -> evaluate",
                      lambda: train_resume_evaluate(tiny_config(method, device, cached), source, run))
        if device.type == "cuda":
            amp_method = cached_methods()[0]  # a head with BatchNorm and a prior: where float16 bites
            check(f"mixed precision (autocast + the trainer's loss scaling), {amp_method}",
                  lambda: train_once(tiny_config(amp_method, device, amp=True), source, folder / "amp"))
        else:
            check("mixed precision", None, "the trainer uses autocast on CUDA only")
        if compile_check:
            check(f"torch.compile (inductor), {REFERENCE_METHOD}",
                  lambda: train_once(tiny_config(REFERENCE_METHOD, device, compile="inductor", steps=2), source,
                                     folder / "compile"))
    return checks
