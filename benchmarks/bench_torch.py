"""hardneg_torch against the naive transliteration and the matrix-product floor, side by side in one run.

B = 4096 pairs, d = 128, float32, forward+backward (issue 4's targets). Each measurement runs in its own process.
On a shared machine run it under the heavy-run lock::

    flock /tmp/hardneg-heavy.lock python benchmarks/bench_torch.py [--rounds 3] [--reps 3] [--large 65536]

The same run measures the symmetric cross layout (spec 1.1, issue 13): ``hardneg_torch_cross``
(``hcl_loss(..., layout="cross")``) against ``naive_torch_cross``, a CLIP-style transliteration of the released
arithmetic (two full B x B logit matrices, the released formula per direction:
:func:`hardneg.bench.naive_torch.hcl_loss_cross`), and the three (B x d)(d x B) products both directions need
at least (``hardneg.bench.naive_torch:build_floor_cross``, :func:`hardneg.bench.naive_torch.floor_cross`).
"""

import sys

from hardneg.bench.compare import main

if __name__ == "__main__":
    sys.exit(main("torch"))
