"""``hardneg reproduce --task graphs``: InfoGraph with the released and the corrected hard-negative JSD.

The paper's graph experiment at CPU scale: an InfoGraph model (3 GIN layers of 32, sum pooling, the two
projection heads; plain PyTorch, no PyTorch Geometric) is pre-trained without labels on a synthetic
graph-classification set generated with networkx (8 families, random sizes, edge noise; nothing is
downloaded) with ``hardneg_torch.jsd_loss`` — upstream InfoGraph (β = 0, τ⁺ = 0), the released HCL code's
``JSD_hard`` (``convention="released"``, τ⁺ = 0.5, β ∈ {0, 1, 2, 10}) and the paper's construction
(``convention="corrected"``, τ⁺ = 1/8, the same β) — once per seed; the frozen graph embeddings are then
classified by an SVC in 10-fold cross-validation, as the released code evaluates them.

Modules
-------
data        the graph families, edge noise, the degree-histogram baseline, PyG-style batching (NumPy)
model_torch the GIN encoder and InfoGraph's heads (torch)
evaluate    SVC with an inner grid over C in outer stratified 10-fold CV (scikit-learn)
experiment  methods, presets, training loop, the JSON record (paired t-intervals vs InfoGraph)
report      results.md, results.json, graphs_accuracy_vs_beta.png

Only the torch backend exists for this task (the model is written in PyTorch).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Entry point of ``hardneg reproduce --task graphs``; returns the process exit status.

    Reads ``args.quick`` (bool), ``args.seeds`` (None or int >= 1: seeds 0 … N−1), ``args.out`` (directory),
    ``args.no_progress`` (bool) and ``args.backend`` (only ``"torch"``: anything else prints a message on
    stderr and returns 2, as does ``--seeds`` < 1 or a missing torch / scikit-learn / networkx).
    """
    backend = getattr(args, "backend", "torch")
    if backend != "torch":
        print(
            f"hardneg reproduce --task graphs: only --backend torch is available (the InfoGraph model is written "
            f"in PyTorch); got --backend {backend}",
            file=sys.stderr,
        )
        return 2
    seeds = getattr(args, "seeds", None)
    if seeds is not None and seeds < 1:
        print("hardneg reproduce: --seeds must be >= 1", file=sys.stderr)
        return 2
    try:
        import networkx  # noqa: F401
        import sklearn  # noqa: F401
        import torch  # noqa: F401

        import hardneg_torch  # noqa: F401
    except ModuleNotFoundError as exc:
        print(
            f"hardneg reproduce --task graphs: {exc}. Install it with: pip install 'hardneg[torch,reproduce]'",
            file=sys.stderr,
        )
        return 2
    from .experiment import DEFAULT, QUICK, run_experiment
    from .report import markdown, write_all

    cfg = QUICK if getattr(args, "quick", False) else DEFAULT
    if seeds is not None:
        cfg = cfg.with_seeds(seeds)
    n = len(cfg.seeds)
    print(
        f"hardneg reproduce --task graphs: backend torch, {len(cfg.methods)} methods x {n} seed{'s' * (n > 1)} "
        f"x {cfg.epochs} epochs -> {args.out}",
        file=sys.stderr,
    )
    record = run_experiment(cfg, progress=not getattr(args, "no_progress", False))
    paths = write_all(record, args.out)
    print(markdown(record))
    print("wrote " + ", ".join(paths.values()), file=sys.stderr)
    return 0
