"""hardneg_torch against the naive transliteration and the matrix-product floor, side by side in one run.

B = 4096 pairs, d = 128, float32, forward+backward (issue 4's targets). Each measurement runs in its own process.
On a shared machine run it under the heavy-run lock::

    flock /tmp/hardneg-heavy.lock python benchmarks/bench_torch.py [--rounds 3] [--reps 3] [--large 65536]
"""

import sys

from hardneg.bench.compare import main

if __name__ == "__main__":
    sys.exit(main("torch"))
