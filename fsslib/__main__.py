"""Command line of fsslib; bad input gets one clear line, not a traceback.

    python -m fsslib prepare {synthetic,pascal5i,coco20i,fss1000} [--root DIR] [--pretrain] [--examples DIR] [--fold F]
    python -m fsslib train EXPERIMENT|CONFIG.json [key=value ...] [--run-dir DIR]
    python -m fsslib eval RUN_DIR [key=value ...]
    python -m fsslib baselines [key=value ...]
    python -m fsslib ablation NAME [key=value ...] [--seeds 0,1,2]
    python -m fsslib reproduce [--profile fast|default|full|gpu|pascal5i|coco20i]
    python -m fsslib collapse [--seeds 0,1,2,3,4] [--jobs 2]
    python -m fsslib doctor [--device cpu|cuda]
    python -m fsslib benchmark-report [--fold F] [--episodes N] [--seeds 0,1,2]
    python -m fsslib factors [--profile fast|default|full|gpu]
    python -m fsslib segment --support IMG --support-mask MASK|x0,y0,x1,y1 --query IMG [--query IMG ...]
                             [--run RUN_DIR | --method protonet] --out DIR

``key=value`` sets a field of the training config (``model_args.scale=10`` a model field) or,
for ``eval``/``baselines``, of the evaluation protocol (``episodes=500 seeds=0,1 shots=1,5``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

from .data import DatasetError
from .engine.trainer import RunInUse
from .models.registry import REFERENCE_METHOD


def parse_value(text: str):
    """JSON where it parses (numbers, true, null, lists), a comma list as a tuple, else the string."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    if "," in text:
        return tuple(parse_value(part) for part in text.split(","))
    return text


def parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        overrides[key] = parse_value(value)
    return overrides


def apply_to_protocol(protocol, overrides: dict):
    valid = {f.name for f in fields(protocol)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown protocol key(s) {unknown}; valid keys: {sorted(valid)}")
    for key in ("seeds", "shots"):
        if key in overrides and not isinstance(overrides[key], (tuple, list)):
            overrides[key] = (overrides[key],)
    return replace(protocol, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def override_train_values(values: dict, overrides: dict) -> dict:
    """``values`` (a TrainConfig as a dict) with ``key=value`` overrides applied; ``model_args.X``
    sets field X of the model's config and must be one (of the ``model=`` override's model, if any)."""
    from .models.registry import config_fields

    model = overrides.get("model", values.get("model"))
    values = dict(values)
    for key, value in overrides.items():
        if key.startswith("model_args."):
            name = key.split(".", 1)[1]
            if name not in config_fields(model):
                raise ValueError(f"unknown model key '{name}' for {model}; valid: {sorted(config_fields(model))}")
            values["model_args"] = {**values["model_args"], name: value}
        else:
            values[key] = value
    return values


def check_experiment_overrides(name: str, overrides: dict) -> None:
    """Reject unknown keys and bad values of ``train NAME key=value ...`` before ``experiment(name)``
    runs, which pre-trains the fold's backbone on first use (minutes): on the config the overrides
    make of the recipe's defaults (its values but the pre-trained weights), and by building the model."""
    from .engine.trainer import TrainConfig
    from .experiments.configs import synthetic_model_args
    from .models.registry import METHODS, build_model

    if name not in METHODS:
        raise ValueError(f"unknown experiment '{name}'; valid names: {list(METHODS)} (or a path to a config.json)")
    base = vars(TrainConfig(model=name, model_args=synthetic_model_args(name)))
    config = TrainConfig.from_dict(override_train_values(base, overrides))
    try:
        build_model(config.model, **config.model_args)
    except (TypeError, ValueError) as e:  # a TypeError: a value of the wrong type reached a layer
        raise ValueError(f"cannot build {config.model} with model_args {config.model_args}: {e}") from None


def read_train_values(path: Path) -> dict:
    """The ``train`` values of a run's ``config.json``, or one clear error naming the file."""
    if not path.exists():
        raise ValueError(f"config file {path} does not exist")
    try:
        values = json.loads(path.read_text())["train"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"config file {path} is not a run's config.json (JSON with a 'train' object): {e!r}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path}: 'train' must be an object of TrainConfig fields, got {values!r}")
    return values


def command_train(args) -> None:
    from .engine import distributed
    from .engine.episodic import default_run_dir, train_fewshot
    from .engine.trainer import TrainConfig
    from .experiments.configs import experiment

    # Every key and value is checked before any work: nothing is pre-trained or written for a typo.
    overrides = parse_overrides(args.overrides)
    if args.config.endswith(".json"):
        path = Path(args.config)
        config = TrainConfig.from_dict(override_train_values(read_train_values(path), overrides))
        run_dir = args.run_dir or path.parent
        distributed.init_from_env(overrides.get("device"))  # under torchrun: join the process group
    else:
        check_experiment_overrides(args.config, overrides)
        distributed.init_from_env(overrides.get("device"))
        recipe, run_dir = experiment(args.config), args.run_dir
        config = TrainConfig.from_dict(override_train_values(vars(recipe), overrides))
    run_dir = Path(run_dir) if run_dir else default_run_dir(config)
    if distributed.is_main():
        print(f"run folder {run_dir} (an interrupted run resumes there)", flush=True)
    train_fewshot(config, run_dir)
    if distributed.is_main():
        print(f"finished {run_dir}")


def command_eval(args) -> None:
    from .data import build_source
    from .engine.episodic import load_run
    from .engine.protocol import EvalProtocol, evaluate
    from .engine.statistics import format_summary, summarize

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.json").exists():
        raise ValueError(f"no run at {run_dir} (expected {run_dir / 'config.json'})")
    model, config = load_run(run_dir)
    protocol = apply_to_protocol(EvalProtocol(), parse_overrides(args.overrides))
    source = build_source(config.benchmark, config.data_root)
    start = time.perf_counter()
    rows = evaluate(model, source, config.fold, protocol, method=run_dir.name, progress=True)
    seconds = time.perf_counter() - start
    rows.to_csv(run_dir / "eval_rows.csv", index=False)
    print(format_summary(summarize(rows)))
    episodes = protocol.episodes * len(protocol.seeds) * len(protocol.shots)
    print(f"{episodes} episodes evaluated in {seconds:.1f} s (features computed once per test image)")


def command_baselines(args) -> None:
    from .engine.protocol import EvalProtocol
    from .engine.statistics import format_summary, summarize
    from .experiments.baselines import baseline_rows

    protocol = apply_to_protocol(EvalProtocol(), parse_overrides(args.overrides))
    print(format_summary(summarize(baseline_rows(args.fold, protocol=protocol))))


def parse_seeds(text: str, option: str = "--seeds") -> tuple[int, ...]:
    """``"0,1,2"`` as ``(0, 1, 2)``, or one clear error naming ``option``."""
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0:
        raise ValueError(f"{option} must be comma-separated ints >= 0 (e.g. {option} 0,1,2), got {text!r}")
    return seeds


def command_ablation(args) -> None:
    from .data.folds import NUM_FOLDS
    from .engine.protocol import EvalProtocol
    from .engine.trainer import runs_dir
    from .experiments.ablation import ablation_table, format_ablation, run_ablation
    from .experiments.tables import TABLES

    if args.name not in TABLES:
        raise ValueError(f"unknown ablation '{args.name}'; valid names: {sorted(TABLES)}")
    if not 0 <= args.fold < NUM_FOLDS:
        raise ValueError(f"--fold must be in 0..{NUM_FOLDS - 1} (the synthetic benchmark has {NUM_FOLDS} folds), "
                         f"got {args.fold}")
    variants, references = TABLES[args.name]
    protocol = apply_to_protocol(EvalProtocol(seeds=(0,), shots=(1, 5)), parse_overrides(args.overrides))
    seeds = parse_seeds(args.seeds)
    # Working state, never the committed results: a fresh clone trains and evaluates every run.
    rows = run_ablation(variants, fold=args.fold, seeds=seeds, protocol=protocol,
                        results=runs_dir() / "evaluations" / "ablation")
    table = format_ablation(ablation_table(rows, references))
    path = runs_dir() / "tables" / f"{args.name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")
    print(table)
    print(f"wrote {path}")


def command_bench(args) -> None:
    import os

    import torch

    from .experiments.bench import bench_settings, format_bench, inference_rows, training_rows
    from .models.registry import METHODS
    from .runtime import default_device

    methods = args.methods.split(",") if args.methods else list(METHODS)
    print(f"device: {default_device(args.device)}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} intra-op threads\n", flush=True)
    inference = inference_rows([m for m in methods if m in bench_settings()], repeats=args.repeats,
                               device=args.device)
    training = training_rows(methods, device=args.device)
    print(format_bench(inference, training, images=args.images, episodes=args.episodes))


def command_collapse(args) -> None:
    from .experiments.ablation import results_dir
    from .experiments.collapse import collapse_table, format_collapse_table, run_study

    seeds = tuple(int(s) for s in args.seeds.split(","))
    table = format_collapse_table(collapse_table(run_study(seeds, jobs=args.jobs, episodes=args.episodes)))
    path = results_dir("collapse") / "table.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")
    print(table)
    print(f"wrote {path}")


def command_benchmark_report(args) -> None:
    from .experiments.benchmark_report import format_report, measure

    seeds = parse_seeds(args.seeds)
    if args.episodes < 1:
        raise ValueError(f"--episodes must be an int >= 1, got {args.episodes}")
    print(format_report(*measure(args.fold, args.episodes, seeds)))


def command_factors(args) -> None:
    from .experiments.factors import FACTOR_COLUMNS, write_factors
    from .experiments.profiles import PROFILES, notebook_profile

    profile = PROFILES[args.profile] if args.profile else notebook_profile()
    csv, figure = write_factors(profile, progress=True)
    import pandas as pd

    table = pd.read_csv(csv)[FACTOR_COLUMNS]
    print(table.to_string(index=False))
    print(f"wrote {csv} and {figure}")


def command_segment(args) -> None:
    from .analysis.segment import (
        Support,
        iou,
        read_image,
        read_mask,
        run_segmenter,
        segment,
        training_free_segmenter,
        write_segmentations,
    )

    if len(args.support) != len(args.support_mask):
        raise ValueError(f"each --support needs its --support-mask: got {len(args.support)} --support and "
                         f"{len(args.support_mask)} --support-mask")
    supports = []
    for image_path, mask_spec in zip(args.support, args.support_mask):
        image = read_image(image_path)
        supports.append(Support(image, read_mask(mask_spec, image.shape[:2], f"support image {image_path}"),
                                image_path))
    queries = [read_image(path) for path in args.query]
    if args.query_mask and len(args.query_mask) != len(args.query):
        raise ValueError(f"--query-mask is optional, but then one per --query: got {len(args.query)} --query and "
                         f"{len(args.query_mask)} --query-mask")
    truths = [read_mask(spec, image.shape[:2], f"query image {path}", allow_empty=True)
              for spec, image, path in zip(args.query_mask or [], queries, args.query)]
    if args.run:
        segmenter = run_segmenter(args.run, args.size, args.device)
    else:
        weights = None if args.weights == "random" else args.weights
        segmenter = training_free_segmenter(args.backbone, weights, args.fold, args.size, args.device)
    print(f"{segmenter.description}, {len(supports)}-shot, on {segmenter.device}")
    results = segment(segmenter, supports, queries, names=args.query)
    written = write_segmentations(results, args.out, supports)
    for result, mask_path, overlay_path in zip(results, written["masks"], written["overlays"]):
        print(f"{result.name}: object {100 * result.object_fraction:.1f}% of the image -> {mask_path}, {overlay_path}")
    for result, truth in zip(results, truths):
        print(f"{result.name}: IoU with its true mask {iou(result.mask, truth):.2f}")
    print(f"supports and overlays side by side: {written['overview']}")


def command_doctor(args) -> int:
    import torch

    from .experiments.doctor import run_checks

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device cuda: torch {torch.__version__} sees no CUDA device on this machine")
    start = time.perf_counter()
    checks = run_checks(args.device, report=lambda line: print(line, flush=True))
    failed = [c for c in checks if c.passed is False]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed or skipped, {len(failed)} failed "
          f"({time.perf_counter() - start:.0f} s)")
    return 1 if failed else 0


def command_prepare(args) -> None:
    from .data import build_source
    from .data.summary import fold_summary, split_sizes

    if args.pretrain and args.benchmark != "synthetic":
        raise ValueError(f"--pretrain: only the synthetic benchmark pre-trains its backbone ({args.benchmark} "
                         "starts from ImageNet weights that you supply)")
    source = build_source(args.benchmark, args.root)
    print(f"{args.benchmark} at {source.root}:", ", ".join(f"{k} {v} images" for k, v in split_sizes(source).items()))
    if args.benchmark != "fss1000":
        print(fold_summary(source).to_string())
    if args.pretrain:
        from .engine.pretrain import learning_curve, pretrained_backbone

        weights = pretrained_backbone(args.fold, benchmark=args.benchmark, data_root=args.root)
        print(f"pre-trained backbone: {weights}\ntraining loss (per-pixel cross-entropy on the base classes):")
        print(learning_curve(weights.parent).to_string(index=False))
    if args.examples:
        from .analysis.segment import write_example

        paths = write_example(source, args.examples, args.fold)
        print(f"a novel class of fold {args.fold} (class {paths['class_id']}) as plain image files, to try "
              f"`python -m fsslib segment` on: {paths['support']}, {paths['support_mask']}, "
              + ", ".join(map(str, paths["queries"])) + "; the queries' true masks: "
              + ", ".join(map(str, paths["query_truths"])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsslib", description="few-shot segmentation library")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="generate the synthetic benchmark or index a real one")
    prepare.add_argument("benchmark", choices=("synthetic", "pascal5i", "coco20i", "fss1000"))
    prepare.add_argument("--root", help="the dataset's folder (default: under $FSSLIB_DATA or ./data)")
    prepare.add_argument("--pretrain", action="store_true", help="also pre-train the fold's backbone now (synthetic "
                         "benchmark; otherwise the first notebook or run that needs it does, 6-8 CPU minutes)")
    prepare.add_argument("--fold", type=int, default=0, help="fold whose backbone --pretrain trains and whose novel "
                         "class --examples writes (default 0)")
    prepare.add_argument("--examples", metavar="DIR", help="also write a support image, its mask and two queries of "
                         "a novel class as PNG files into DIR (to try `segment` on)")
    train = commands.add_parser("train", help="train an experiment (or resume a run from its config.json)")
    train.add_argument("config", help="experiment name (e.g. protonet) or a run's config.json")
    train.add_argument("overrides", nargs="*", help="key=value")
    train.add_argument("--run-dir")
    evaluate = commands.add_parser("eval", help="evaluate a finished run and print the summary")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("overrides", nargs="*", help="protocol key=value")
    baselines = commands.add_parser("baselines", help="trained baseline vs untrained and all-foreground")
    baselines.add_argument("overrides", nargs="*", help="protocol key=value")
    baselines.add_argument("--fold", type=int, default=0)
    ablation = commands.add_parser("ablation", help="train and evaluate a named ablation table")
    ablation.add_argument("name")
    ablation.add_argument("overrides", nargs="*", help="protocol key=value")
    ablation.add_argument("--seeds", default="0,1,2", help="training seeds, paired across variants")
    ablation.add_argument("--fold", type=int, default=0)
    bench = commands.add_parser("bench", help="speed and memory ratios of every method")
    bench.add_argument("--methods", help="comma-separated (default: all)")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--device")
    bench.add_argument("--images", type=int, default=500, help="test images of the evaluation protocol")
    bench.add_argument("--episodes", type=int, default=5000, help="episodes of the evaluation protocol")
    collapse = commands.add_parser("collapse", help="collapse rate of the prior-mask heads under each remedy "
                                   "(default profile's recipe)")
    collapse.add_argument("--seeds", default="0,1,2,3,4", help="training seeds")
    collapse.add_argument("--jobs", type=int, default=2)
    collapse.add_argument("--episodes", type=int, default=300, help="1-shot test episodes")
    report = commands.add_parser("benchmark-report", help="the properties the synthetic benchmark must have "
                                 "(colour does not identify a class, headroom, more shots help), measured")
    report.add_argument("--fold", type=int, default=0, choices=range(4))
    report.add_argument("--episodes", type=int, default=1000, help="test episodes per evaluation seed")
    report.add_argument("--seeds", default="0,1,2", help="evaluation seeds")
    factors = commands.add_parser("factors", help="every main-table method's mIoU split by each factor the "
                                  "synthetic benchmark records (trains and evaluates what is missing)")
    factors.add_argument("--profile", choices=("fast", "default", "full", "gpu"),
                         help="whose runs and protocol (default: the notebooks' profile, default or fast)")
    seg = commands.add_parser("segment", help="segment your own query images given support images and their masks "
                              "or boxes (a trained run, or training-free prototype matching)")
    seg.add_argument("--support", action="append", required=True, metavar="IMG",
                     help="a support image (repeat with its --support-mask for more shots)")
    seg.add_argument("--support-mask", action="append", required=True, metavar="MASK",
                     help="the support's object: a PNG of the image's size (non-zero = object) or a box x0,y0,x1,y1")
    seg.add_argument("--query", action="append", required=True, metavar="IMG", help="an image to segment (repeatable)")
    seg.add_argument("--query-mask", action="append", metavar="MASK", help="optional: the true mask of each --query "
                     "(in order), to print the prediction's IoU")
    how = seg.add_mutually_exclusive_group()
    how.add_argument("--run", metavar="RUN_DIR", help="a finished training run: its method, weights and input size")
    how.add_argument("--method", choices=(REFERENCE_METHOD,), default=REFERENCE_METHOD,
                     help="training-free: a pre-trained backbone with prototype matching (default)")
    seg.add_argument("--backbone", default="smallcnn", help="training-free backbone (smallcnn, resnet50, vgg16, ...)")
    seg.add_argument("--weights", default="synthetic", help="training-free backbone weights: 'synthetic' (the small "
                     "CNN pre-trained on --fold's base classes), 'imagenet', a checkpoint path, or 'random' (plumbing "
                     "tests only)")
    seg.add_argument("--fold", type=int, default=0, help="fold of the synthetic pre-trained backbone (default 0)")
    seg.add_argument("--size", type=int, help="network input size (default: the run's, else the backbone's)")
    seg.add_argument("--device", help="cpu or cuda (default: cuda where available)")
    seg.add_argument("--out", required=True, metavar="DIR", help="folder for <query>-mask.png and <query>-overlay.png")
    doctor = commands.add_parser("doctor", help="check this machine: every method's train -> interrupt -> "
                                 "resume -> evaluate cycle, mixed precision, torch.compile")
    doctor.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    reproduce = commands.add_parser("reproduce", help="every method and ablation: tables and figures "
                                    "(synthetic benchmark; pascal5i/coco20i on real data and a GPU)")
    reproduce.add_argument("--profile", choices=("fast", "default", "full", "gpu", "pascal5i", "coco20i"),
                           help="default: gpu where a CUDA device is visible, else default (the CPU profile)")
    reproduce.add_argument("--jobs", type=int, help="worker processes (default: the profile's, 2 for default/full)")

    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # commands write figures to files and never need a display
    handlers = {"prepare": command_prepare, "train": command_train, "eval": command_eval,
                "baselines": command_baselines, "ablation": command_ablation, "bench": command_bench,
                "collapse": command_collapse, "doctor": command_doctor,
                "benchmark-report": command_benchmark_report, "factors": command_factors,
                "segment": command_segment}
    try:
        if args.command == "reproduce":
            from .experiments.reproduce import reproduce

            if reproduce(args.profile, args.jobs):
                return 1  # the failures were listed; every other result was written
        elif handlers[args.command](args):
            return 1
    except (DatasetError, ValueError, FileNotFoundError, RunInUse) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and a rerun continues from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
