"""``python -m evaluation.compare <run dirs | sweep folder | offline W&B runs | wandb://entity/project/group>
[--baseline NAME] [--rows auto|run|experiment] [--metrics top1,auroc,...] [--out FOLDER]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from evaluation.compare.sources import SourceError, load_runs
from evaluation.compare.table import DEFAULT_METRICS, CompareError


def option_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``--resamples`` or ``--out`` (checked before any run is read), else None."""
    if args.resamples < 1:
        return f"--resamples {args.resamples}: give 1 or more bootstrap resamples (default 1000)"
    if args.out.exists() and not args.out.is_dir():
        return f"--out {args.out} is a file; give a folder for the report (it is made if missing)"
    return None


class LevelPrefix(logging.Formatter):
    """``warning: <message>``, like the ``error:`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, write the report, print its path; 2 with one line on bad input."""
    if not logging.getLogger().handlers:  # a command line, not a host that set up its own logging
        handler = logging.StreamHandler()
        handler.setFormatter(LevelPrefix())
        logging.basicConfig(level=logging.WARNING, handlers=[handler])
    parser = argparse.ArgumentParser(prog="python -m evaluation.compare", description=__doc__)
    parser.add_argument(
        "sources", nargs="+", help="run dirs, sweep folders, offline W&B runs, wandb:// groups"
    )
    parser.add_argument(
        "--baseline", help="experiment or run name the diffs are taken against (default: first run)"
    )
    parser.add_argument("--rows", choices=("auto", "run", "experiment"), default="auto")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="metric names, comma separated")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="output folder")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    if (problem := option_problem(args)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from evaluation.compare.report import write_report  # after argument checks: imports torch

    try:
        runs = load_runs(args.sources)
        report = write_report(
            runs, args.out, args.baseline, args.rows, args.metrics.split(","), args.resamples, args.seed
        )
    except (SourceError, CompareError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.read_text())
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
