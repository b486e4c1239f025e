"""``hardneg reproduce``: pre-train with NT-Xent, debiased and hard-negative losses on the bundled digits.

Imports nothing heavy at module level: ``hardneg --help`` imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("torch", "jax", "tf"),
        default="torch",
        help="framework whose hcl_loss trains the encoder (default: torch)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="30 epochs and 2 seeds instead of 150 epochs and 5 seeds (about a minute on 2 cores)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="use seeds 0..N-1 (default: 5, or 2 with --quick)",
    )
    parser.add_argument(
        "--out",
        default="reproduce-out",
        metavar="DIR",
        help="directory for results.md, results.json and the PNG figures (default: ./reproduce-out)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")


def run(args: argparse.Namespace) -> int:
    from .experiment import BackendUnavailable, run_experiment
    from .recipe import DEFAULT, QUICK

    config = QUICK if args.quick else DEFAULT
    if args.seeds is not None:
        if args.seeds < 1:
            print("hardneg reproduce: --seeds must be >= 1", file=sys.stderr)
            return 2
        config = config.with_seeds(args.seeds)
    n = len(config.seeds)
    print(
        f"hardneg reproduce: backend {args.backend}, {len(config.methods)} methods x {n} seed{'s' * (n > 1)} "
        f"x {config.epochs} epochs -> {args.out}",
        file=sys.stderr,
    )
    try:
        results = run_experiment(config, args.backend, progress=not args.no_progress)
    except BackendUnavailable as exc:
        print(f"hardneg reproduce: {exc}", file=sys.stderr)
        return 2
    from .report import markdown, write_all

    paths = write_all(results, args.out)
    print(markdown(results.record))
    print("wrote " + ", ".join(paths.values()), file=sys.stderr)
    return 0
