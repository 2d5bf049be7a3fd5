"""Command line of fsslib; bad input gets one clear line, not a traceback.

    python -m fsslib prepare {synthetic,pascal5i,coco20i,fss1000} [--root DIR]
    python -m fsslib train EXPERIMENT|CONFIG.json [key=value ...] [--run-dir DIR]
    python -m fsslib eval RUN_DIR [key=value ...]
    python -m fsslib baselines [key=value ...]
    python -m fsslib ablation NAME [key=value ...] [--seeds 0,1,2]
    python -m fsslib reproduce [--profile fast|default|full|gpu|pascal5i|coco20i]
    python -m fsslib collapse [--seeds 0,1,2,3,4] [--jobs 2]
    python -m fsslib doctor [--device cpu|cuda]

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


def command_train(args) -> None:
    from .engine import distributed
    from .engine.episodic import default_run_dir, train_fewshot
    from .engine.trainer import TrainConfig
    from .experiments.configs import experiment
    from .models.registry import config_fields

    overrides = parse_overrides(args.overrides)
    distributed.init_from_env(overrides.get("device"))  # under torchrun: join the process group
    if args.config.endswith(".json"):
        path = Path(args.config)
        if not path.exists():
            raise ValueError(f"config file {path} does not exist")
        config = TrainConfig.from_dict(json.loads(path.read_text())["train"])
        run_dir = args.run_dir or path.parent
    else:
        config, run_dir = experiment(args.config), args.run_dir
    values = {k: v for k, v in vars(config).items()}
    for key, value in overrides.items():
        if key.startswith("model_args."):
            name = key.split(".", 1)[1]
            if name not in config_fields(config.model):
                raise ValueError(f"unknown model key '{name}' for {config.model}; valid: {sorted(config_fields(config.model))}")
            values["model_args"] = {**values["model_args"], name: value}
        else:
            values[key] = value
    config = TrainConfig.from_dict(values)
    run_dir = Path(run_dir) if run_dir else default_run_dir(config)
    train_fewshot(config, run_dir)
    if distributed.is_main():
        print(f"finished {run_dir}")


def command_eval(args) -> None:
    from .data import build_source
    from .engine.episodic import load_run
    from .engine.protocol import EvalProtocol, evaluate, format_summary, summarize

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
    from .engine.protocol import EvalProtocol, format_summary, summarize
    from .experiments.baselines import baseline_rows

    protocol = apply_to_protocol(EvalProtocol(), parse_overrides(args.overrides))
    print(format_summary(summarize(baseline_rows(args.fold, protocol=protocol))))


def command_ablation(args) -> None:
    from .engine.protocol import EvalProtocol
    from .experiments.ablation import ablation_table, format_ablation, results_dir, run_ablation
    from .experiments.tables import TABLES

    if args.name not in TABLES:
        raise ValueError(f"unknown ablation '{args.name}'; valid names: {sorted(TABLES)}")
    variants, references = TABLES[args.name]
    protocol = apply_to_protocol(EvalProtocol(seeds=(0,), shots=(1, 5)), parse_overrides(args.overrides))
    seeds = tuple(int(s) for s in args.seeds.split(","))
    rows = run_ablation(variants, fold=args.fold, seeds=seeds, protocol=protocol, results=results_dir(args.name))
    table = format_ablation(ablation_table(rows, references))
    (results_dir(args.name) / "table.md").write_text(table + "\n")
    print(table)


def command_bench(args) -> None:
    import os

    import torch

    from .experiments.bench import BENCH_SETTINGS, format_bench, inference_rows, training_rows
    from .runtime import default_device

    methods = args.methods.split(",") if args.methods else ["protonet", *BENCH_SETTINGS]
    print(f"device: {default_device(args.device)}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} intra-op threads\n", flush=True)
    inference = inference_rows([m for m in methods if m in BENCH_SETTINGS], repeats=args.repeats, device=args.device)
    training = training_rows(methods, device=args.device)
    print(format_bench(inference, training, images=args.images, episodes=args.episodes))


def command_collapse(args) -> None:
    from .experiments.collapse import collapse_table, format_collapse_table, run_study

    from .experiments.ablation import results_dir

    seeds = tuple(int(s) for s in args.seeds.split(","))
    table = format_collapse_table(collapse_table(run_study(seeds, jobs=args.jobs, episodes=args.episodes)))
    path = results_dir("collapse") / "table.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")
    print(table)
    print(f"wrote {path}")


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

    source = build_source(args.benchmark, args.root)
    print(f"{args.benchmark} at {source.root}:", ", ".join(f"{k} {v} images" for k, v in split_sizes(source).items()))
    if args.benchmark != "fss1000":
        print(fold_summary(source).to_string())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsslib", description="few-shot segmentation library")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="generate the synthetic benchmark or index a real one")
    prepare.add_argument("benchmark", choices=("synthetic", "pascal5i", "coco20i", "fss1000"))
    prepare.add_argument("--root", help="the dataset's folder (default: under $FSSLIB_DATA or ./data)")
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
                "collapse": command_collapse, "doctor": command_doctor}
    try:
        if args.command == "reproduce":
            from .experiments.reproduce import reproduce

            if reproduce(args.profile, args.jobs):
                return 1  # the failures were listed; every other result was written
        elif handlers[args.command](args):
            return 1
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and a rerun continues from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
