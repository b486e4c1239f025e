"""The ``hardneg`` command line: ``hardneg verify | bench | reproduce``.

Each sub-command lives in its own module and is imported only when run, so ``hardneg --help`` stays fast
and no framework is imported unless a command needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from . import SPEC_VERSION, __version__

# sub-command name -> module that provides ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS = {
    "verify": ("conformance.cli", "Verify implementations against the reference (the conformance suite)."),
    "bench": ("hardneg.bench.cli", "Benchmark speed and memory of each backend against naive code."),
    "reproduce": ("hardneg.reproduce.cli", "SimCLR vs debiased vs hard-negative experiment on bundled data."),
}


def build_parser(available: Optional[dict] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hardneg",
        description="Contrastive learning with hard negative samples: reference, conformance, benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"hardneg {__version__} (spec {SPEC_VERSION})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in (available or COMMANDS).items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a command whose module is not part of this install
            if exc.name is None or not module.startswith(exc.name):
                raise
            p.set_defaults(_missing=f"'hardneg {name}' is not available in this installation ({exc})")
            continue
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_missing", None):
        print(args._missing, file=sys.stderr)
        return 2
    return int(args._run(args) or 0)
