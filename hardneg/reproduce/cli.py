"""``hardneg reproduce``: pre-train with NT-Xent, debiased and hard-negative losses on the bundled digits.

Imports no framework, scikit-learn or matplotlib until run: ``hardneg --help`` imports this module to build
its parser.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .recipe import DEFAULT, QUICK  # NumPy only

    parser.add_argument(
        "--backend",
        choices=("torch", "jax", "tf"),
        default="torch",
        help="framework whose hcl_loss trains the encoder (default: torch)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK.epochs} epochs and {len(QUICK.seeds)} seeds instead of {DEFAULT.epochs} epochs and "
        f"{len(DEFAULT.seeds)} seeds (under a minute on 2 cores instead of a few)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help=f"use seeds 0..N-1 (default: {len(DEFAULT.seeds)}, or {len(QUICK.seeds)} with --quick)",
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
