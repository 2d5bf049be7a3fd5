"""Command line: ``python -m fsslib {prepare,reproduce} ...`` (one clear line on bad input)."""
from __future__ import annotations

import argparse
import sys

from .data import DatasetError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsslib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="generate the synthetic benchmark or index a real one")
    prepare.add_argument("benchmark", choices=("synthetic", "pascal5i", "coco20i", "fss1000"))
    prepare.add_argument("--root", help="the dataset's folder (default: under $FSSLIB_DATA or ./data)")

    reproduce = commands.add_parser("reproduce", help="the main job on the synthetic benchmark")
    reproduce.add_argument("--profile", default="default", choices=("fast", "default", "full"))

    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            from .data import build_source
            from .data.summary import fold_summary, split_sizes

            source = build_source(args.benchmark, args.root)
            print(f"{args.benchmark} at {source.root}:",
                  ", ".join(f"{k} {v} images" for k, v in split_sizes(source).items()))
            if args.benchmark != "fss1000":
                print(fold_summary(source).to_string())
        elif args.command == "reproduce":
            from .experiments.reproduce import reproduce as run

            run(args.profile)
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and reused on the next run", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
