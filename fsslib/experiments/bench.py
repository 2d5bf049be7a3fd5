"""``python -m fsslib bench``: speed and memory as ratios that do not depend on the machine.

Three measurements, each printed as a table:

1. **Inference per episode** of every method (random weights, eval mode, one episode, supports
   and query in one batched backbone call) divided by one plain forward of *its* backbone on one
   image of the same size: ResNet-50 at 473x473 for SSP, PFENet, MSPF and MSDNet, VGG-16 at
   417x417 for PANet. An episode needs K+1 passes through the stages the method reads (SSP stops
   at layer3): that is the floor of the ratio.
   A second column divides by a torchvision ResNet-50 forward at 473 (not dilated),
   the denominator of the authors'-implementation ratios of the method records (``bench``), and a third
   divides their multiply-adds, which no noise on the machine moves.
   The support object covers the middle half of the rows and third of the columns. Two heads
   cost what the data make them cost: PFENet's and MSPF's support layer4 and every max/mean
   cosine prior touch only the object's cells (and their neighbourhood), and SSP's ASBP compares
   every query cell with the selected background ``S_b`` only; random weights select few cells,
   so SSP is also timed with every cell in ``S_b``, its most expensive case.
2. **Evaluation with the frozen-feature cache** (``engine.feature_cache``) vs features recomputed
   per episode, for a protocol of ``episodes x seeds`` episodes served by ``images`` test images
   (a PASCAL-5i fold: a few hundred images). Computed from measured times: without the cache
   every episode costs a full forward; with it, each image is extracted once and each episode
   costs the head on cached features. For PFENet and MSPF the head includes layer4 of the
   masked support features (their prior needs it), which no cache can hold. The same ratio is
   also computed from multiply-adds (``torch.utils.flop_counter``: convolutions and matrix
   products) instead of seconds: what the computation itself allows, whatever the kernels.
3. **Training step** time and peak memory of each method under its synthetic-benchmark recipe
   (8 one-shot episodes, 128x128, the small backbone), each method in a fresh process so its
   peak resident memory (or peak CUDA memory) is its own.
"""
from __future__ import annotations

import multiprocessing
import resource
import time
from dataclasses import dataclass

import torch

from ..models import build_model
from ..models.registry import METHODS, method_record, records
from ..runtime import default_device


def bench_settings() -> dict:
    """``{method: BenchSettings}`` of the methods timed at their paper's scale (from their records)."""
    return {r.name: r.bench for r in records() if r.bench is not None}


def _best_time(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed runs after a warm-up (see :func:`_best_times`)."""
    return _best_times({"fn": fn}, repeats)["fn"]


def _best_times(functions: dict, repeats: int) -> dict:
    """The fastest of ``repeats`` timed runs of each function, after a warm-up of each.

    The functions take turns, one run each per round: on a shared machine other work only ever
    adds time, so the minimum is the steadiest estimate, and taking turns exposes every function
    to the same slow and fast spells (timing each in its own block moved ratios by a third).
    """
    for fn in functions.values():
        fn()  # warm-up (allocator, oneDNN kernels, cuDNN autotuning)
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(repeats):
        for key, fn in functions.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            best[key] = min(best[key], time.perf_counter() - start)
    return best


def _macs(fn) -> int:
    """Multiply-adds of the convolutions and matrix products ``fn`` runs (half the counted FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def _sync() -> None:
    """Wait for queued kernels on every GPU (``synchronize()`` alone waits for the current one only)."""
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def _episode(size: int, shot: int, device) -> dict:
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(1, shot, size, size, dtype=torch.long)
    masks[..., size // 4: 3 * size // 4, size // 3: 2 * size // 3] = 1
    return {"query_img": torch.randn(1, 3, size, size, generator=generator).to(device),
            "support_imgs": torch.randn(1, shot, 3, size, size, generator=generator).to(device),
            "support_masks": masks.to(device), "support_classes": torch.ones(1, 1, dtype=torch.long, device=device)}


@dataclass
class InferenceRow:
    method: str
    shot: int
    episode_s: float
    backbone_s: float
    torchvision_s: float
    extract_s: float
    head_s: float
    #: SSP only: the head with every pixel in the ASBP set S_b (random weights select a few)
    head_all_background_s: float | None = None
    head_all_background_macs: int = 0
    #: SSP only: |S_b| of the two self-support rounds and the number of feature cells
    background_selected: tuple[int, int, int] | None = None
    #: Multiply-adds (convolutions and matrix products) of an episode, of extracting one image's
    #: features, and of the head on extracted features
    episode_macs: int = 0
    extract_macs: int = 0
    head_macs: int = 0
    torchvision_macs: int = 0

    @property
    def ratio(self) -> float:
        return self.episode_s / self.backbone_s

    @property
    def floor(self) -> float:
        """K+1 passes through the stages the method reads, in units of a full backbone forward."""
        return (self.shot + 1) * self.extract_s / self.backbone_s

    @property
    def ratio_torchvision(self) -> float:
        return self.episode_s / self.torchvision_s

    @property
    def ratio_torchvision_macs(self) -> float:
        """The same ratio in multiply-adds: independent of the machine's speed and of its noise."""
        return self.episode_macs / self.torchvision_macs

    def cache_speedup(self, images: int, episodes: int, head_s: float | None = None) -> float:
        head_s = self.head_s if head_s is None else head_s
        episode_s = self.episode_s + head_s - self.head_s
        return episodes * episode_s / (images * self.extract_s + episodes * head_s)

    def cache_speedup_by_macs(self, images: int, episodes: int, head_macs: int | None = None) -> float:
        """The speed-up if time were proportional to multiply-adds: what any implementation of
        the same computation can expect, whatever its kernels (elementwise work counts as free)."""
        head_macs = self.head_macs if head_macs is None else head_macs
        episode_macs = self.episode_macs + head_macs - self.head_macs
        return episodes * episode_macs / (images * self.extract_macs + episodes * head_macs)


@torch.inference_mode()
def inference_rows(methods=None, shots=(1, 5), repeats: int = 3, device=None,
                   size: int | None = None) -> list[InferenceRow]:
    """Time every method; ``size`` replaces the methods' input sizes (a quick check, not the benchmark).

    Everything a method's rows divide (its episodes and heads, its backbone, the torchvision
    ResNet-50) is timed in the same rounds, so a machine that slows down for a while slows every
    term of a ratio alike.
    """
    import torchvision

    device = default_device(device)
    tv_resnet = torchvision.models.resnet50(weights=None).to(device).eval()
    tv_image = torch.randn(1, 3, 473, 473).to(device)  # drawn on the CPU: the same images on every device
    tv_macs = _macs(lambda: tv_resnet(tv_image))
    rows = []
    settings = bench_settings()
    for method in methods or settings:
        backbone, method_size = settings[method].backbone, size or settings[method].image_size
        torch.manual_seed(0)
        model = build_model(method, backbone=backbone, weights=None).to(device).eval()
        image = torch.randn(1, 3, method_size, method_size).to(device)
        last_stage = model.backbone.stage_names[-1]
        timed = {"torchvision": lambda: tv_resnet(tv_image),
                 "backbone": lambda: model.backbone(image, upto=last_stage),
                 "extract": lambda: model.extract(image)}
        episodes = {}
        # SSP's cost grows with the query pixels it selects as background
        selects_background = hasattr(model.config, "bg_threshold")
        for shot in shots:
            batch = _episode(method_size, shot, device)
            query_feats, support_feats = model.episode_features(batch)

            def head(batch=batch, query_feats=query_feats, support_feats=support_feats):
                return model.head(query_feats, support_feats, batch["support_masks"], 1, (method_size, method_size))

            episodes[shot] = (batch, head)
            timed[("episode", shot)] = lambda batch=batch: model(batch)
            timed[("head", shot)] = head
            if selects_background:  # ASBP costs h*w x |S_b|: also time the largest S_b, every pixel
                timed[("head_all_background", shot)] = lambda head=head: _every_cell_in_background(model, head)
        seconds = _best_times(timed, repeats)
        for shot, (batch, head) in episodes.items():
            row = InferenceRow(method, shot, seconds[("episode", shot)], seconds["backbone"], seconds["torchvision"],
                               seconds["extract"], seconds[("head", shot)], episode_macs=_macs(lambda: model(batch)),
                               extract_macs=_macs(lambda: model.extract(image)), head_macs=_macs(head),
                               torchvision_macs=tv_macs)
            if selects_background:
                output = head()
                row.background_selected = (int(output["bg_selected"].sum()), int(output["bg_selected_2"].sum()),
                                           output["bg_selected"].numel())
                row.head_all_background_s = seconds[("head_all_background", shot)]
                row.head_all_background_macs = _macs(lambda: _every_cell_in_background(model, head))
            rows.append(row)
    return rows


def _every_cell_in_background(model, head):
    """SSP's head with a background threshold every probability passes (S_b = every cell)."""
    threshold = model.config.bg_threshold
    model.config.bg_threshold = -1.0
    try:
        return head()
    finally:
        model.config.bg_threshold = threshold


def _train_step_worker(method: str, device: str, steps: int, queue) -> None:
    try:
        queue.put(_train_step(method, device, steps))
    except Exception as error:  # reported by the parent with the method's name
        queue.put(error)


def _train_step(method: str, device: str, steps: int) -> tuple:
    from ..engine.trainer import build_optimizer, to_device
    from .configs import synthetic_model_args

    torch.manual_seed(0)
    model = build_model(method, **synthetic_model_args(method)).to(device)
    training = method_record(method).synthetic_training
    if training.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(_TrainArgs(), model)
    batch = to_device(_synthetic_batch(8), torch.device(device))
    cached = training.get("cache_features", False)
    if cached:  # the recipe trains on cached features: the backbone is not part of the step
        with torch.no_grad():
            query_feats, support_feats = model.episode_features(batch)
        batch = {**batch, "query_feats": query_feats, "support_feats": support_feats}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        output = model(batch)
        loss, _ = model.loss(output, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = _best_time(step, steps)
    peak = torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else _peak_resident_bytes()
    return seconds, peak, cached, sum(p.numel() for p in model.parameters() if p.requires_grad)


def _peak_resident_bytes() -> int:
    """Peak resident memory of this process. ``VmHWM`` belongs to the process image (getrusage's
    ``ru_maxrss`` survives exec and would report the parent's peak in a spawned child)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class _TrainArgs:
    optimizer: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9


def _synthetic_batch(episodes: int, size: int = 128) -> dict:
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(episodes, 1, size, size, dtype=torch.long)
    masks[..., 32:96, 40:88] = 1
    return {"query_img": torch.randn(episodes, 3, size, size, generator=generator),
            "support_imgs": torch.randn(episodes, 1, 3, size, size, generator=generator),
            "support_masks": masks, "query_mask": masks[:, 0].clone(),
            "support_classes": torch.ones(episodes, 1, dtype=torch.long)}


def training_rows(methods=METHODS, steps: int = 5, device=None):
    """``[(method, seconds per step, peak bytes, cached features?, learnable parameters)]`` of the
    methods of ``methods`` that train on episodes."""
    device = str(default_device(device))
    context = multiprocessing.get_context("spawn")
    rows = []
    for method in (m for m in methods if method_record(m).episodic_training):
        queue = context.Queue()
        process = context.Process(target=_train_step_worker, args=(method, device, steps, queue))
        process.start()
        process.join()
        result = queue.get() if not queue.empty() else RuntimeError(f"exit code {process.exitcode}")
        if isinstance(result, Exception):
            raise RuntimeError(f"training-step benchmark of {method} failed: {result}")
        rows.append((method, *result))
    return rows


def format_bench(inference: list[InferenceRow], training, images: int = 500, episodes: int = 5000) -> str:
    lines = ["Inference per episode (random weights, one episode, eval mode):", "",
             "| method | shot | ms / episode | ÷ own backbone forward | floor: K+1 passes | ÷ torchvision R50 "
             "| the same in multiply-adds | authors ÷ torchvision R50 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in inference:
        authors = method_record(row.method).bench.authors_ratios
        reference = f"{authors[0 if row.shot == 1 else 1]:.1f}" if authors and row.shot in (1, 5) else "-"
        lines.append(f"| {row.method} | {row.shot} | {1000 * row.episode_s:.0f} | {row.ratio:.2f} | {row.floor:.2f} "
                     f"| {row.ratio_torchvision:.2f} | {row.ratio_torchvision_macs:.2f} | {reference} |")
    lines += ["", f"Evaluation, {episodes} episodes ({episodes // 1000} seeds x 1000) served by {images} test images: "
              "feature cache vs features per episode:", "",
              "| method | shot | speed-up with the cache | if time were multiply-adds "
              "| head / extraction, multiply-adds |",
              "|---|---|---|---|---|"]
    for row in inference:
        lines.append(f"| {row.method} | {row.shot} | {row.cache_speedup(images, episodes):.1f}x "
                     f"| {row.cache_speedup_by_macs(images, episodes):.1f}x | {row.head_macs / row.extract_macs:.3f} |")
    for row in (r for r in inference if r.head_all_background_s is not None):
        first, second, cells = row.background_selected
        worst_ms = 1000 * row.head_all_background_s
        lines.append(f"\nSSP {row.shot}-shot: random weights put {first} and {second} of {cells} cells in S_b "
                     f"(rounds 1 and 2); with every cell in S_b the head takes {worst_ms:.0f} ms "
                     f"instead of {1000 * row.head_s:.0f} ms and the cache speed-up is "
                     f"{row.cache_speedup(images, episodes, row.head_all_background_s):.1f}x "
                     f"({row.cache_speedup_by_macs(images, episodes, row.head_all_background_macs):.1f}x "
                     f"if time were multiply-adds).")
    lines += ["", "Training step (synthetic recipe: 8 one-shot episodes at 128x128, small backbone):", "",
              "| method | s / step | peak memory (MiB) | head on cached features | learnable parameters |",
              "|---|---|---|---|---|"]
    for method, seconds, peak, cached, params in training:
        lines.append(f"| {method} | {seconds:.3f} | {peak / 2**20:.0f} | {'yes' if cached else 'no'} | {params:,} |")
    return "\n".join(lines)
