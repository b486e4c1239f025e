"""Draw the anchor x candidate pictures of docs/layouts.md: ``python docs/assets/layouts/generate.py``.

One SVG per layout (B = 4 pairs, K = 3 bank rows): a row per anchor, a column per candidate row, each cell
coloured by what the candidate is to that anchor (docs/spec.md §3). Plain text, deterministic, no dependency:
tests/test_reference.py checks that the files are what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
B, K = 4, 3
CELL, GAP = 24, 14
LEFT, TOP = 64, 52

COLOURS = {
    "pos": ("#2e7d32", "positive"),
    "neg": ("#f57c00", "negative"),
    "self": ("#424242", "the anchor itself"),
    "off": ("#e8e8e8", "not a candidate"),
}


def _text(x, y, s, size=12, anchor="middle", weight="normal"):
    return (f'<text x="{x}" y="{y}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}" '
            f'font-family="DejaVu Sans, Arial, sans-serif" fill="#212121">{s}</text>')


def _block(x0, y0, rows, cols, kind, col_title=None):
    """One grid: ``kind(i, j)`` gives the cell's colour key; rows/cols are label lists."""
    out = []
    for j, c in enumerate(cols):
        out.append(_text(x0 + j * CELL + CELL / 2, y0 - 6, c, size=10))
    if col_title:
        out.append(_text(x0 + len(cols) * CELL / 2, y0 - 22, col_title, size=11, weight="bold"))
    for i, _ in enumerate(rows):
        for j, _ in enumerate(cols):
            colour = COLOURS[kind(i, j)][0]
            out.append(f'<rect x="{x0 + j * CELL}" y="{y0 + i * CELL}" width="{CELL - 2}" height="{CELL - 2}" '
                       f'rx="3" fill="{colour}"/>')
    return out


def _rows(y0, labels, title):
    out = [_text(LEFT - 8, y0 + i * CELL + CELL / 2 + 4, s, size=10, anchor="end") for i, s in enumerate(labels)]
    out.append(f'<text x="12" y="{y0 + len(labels) * CELL / 2}" font-size="11" font-weight="bold" '
               f'font-family="DejaVu Sans, Arial, sans-serif" fill="#212121" text-anchor="middle" '
               f'transform="rotate(-90 12 {y0 + len(labels) * CELL / 2})">{title}</text>')
    return out


def _svg(title, parts, width, height, keys):
    legend_y = height - 18
    items, x = [], LEFT
    for k in keys:
        colour, name = COLOURS[k]
        items.append(f'<rect x="{x}" y="{legend_y - 11}" width="14" height="14" rx="3" fill="{colour}"/>')
        items.append(_text(x + 20, legend_y, name, size=11, anchor="start"))
        x += 28 + 7 * len(name)
    width = max(width, x)
    body = "\n".join(parts + items)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{title}">\n<title>{title}</title>\n'
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>\n{body}\n</svg>\n')


def in_batch():
    labels = [f"z1[{i}]" for i in range(B)] + [f"z2[{i}]" for i in range(B)]
    n = 2 * B

    def kind(i, j):
        return "self" if i == j else "pos" if j == (i + B) % n else "neg"

    parts = _rows(TOP, labels, "anchors") + _block(LEFT, TOP, labels, labels, kind, "candidates")
    return _svg("layout in_batch: 2B anchors, every other row a candidate", parts,
                LEFT + n * CELL + 20, TOP + n * CELL + 44, ["pos", "neg", "self"])


def bank(per_anchor):
    rows = [f"z1[{i}]" for i in range(B)]
    cols = [f"z2[{j}]" for j in range(B)] + [f"v[{k}]" if not per_anchor else f"v[i,{k}]" for k in range(K)]

    def kind(i, j):
        if j < B:
            return "pos" if i == j else "off"
        return "neg"

    x_bank = LEFT + B * CELL + GAP
    parts = _rows(TOP, rows, "anchors")
    parts += _block(LEFT, TOP, rows, cols[:B], lambda i, j: kind(i, j), "z2")
    title = "own bank rows" if per_anchor else "bank (shared)"
    parts += _block(x_bank, TOP, rows, cols[B:], lambda i, j: kind(i, j + B), title)
    name = "per-anchor bank (B, K, d)" if per_anchor else "shared bank (K, d)"
    return _svg(f"layout bank, {name}: B anchors, bank negatives only", parts,
                x_bank + K * CELL + 40, TOP + B * CELL + 44, ["pos", "neg", "off"])


def cross():
    z1 = [f"z1[{i}]" for i in range(B)]
    z2 = [f"z2[{i}]" for i in range(B)]
    bank_cols = [f"v[{k}]" for k in range(K)]
    x_bank = LEFT + B * CELL + GAP
    y2 = TOP + B * CELL + 44
    parts = _rows(TOP, z1, "z1 anchors")
    parts += _block(LEFT, TOP, z1, z2, lambda i, j: "pos" if i == j else "neg", "z2")
    parts += _block(x_bank, TOP, z1, bank_cols, lambda i, j: "neg", "bank (optional)")
    parts += _rows(y2, z2, "z2 anchors")
    parts += _block(LEFT, y2, z2, z1, lambda i, j: "pos" if i == j else "neg", "z1")
    parts += _block(x_bank, y2, z2, bank_cols, lambda i, j: "off", "bank")
    parts.append(_text(x_bank + K * CELL + 8, y2 + B * CELL / 2 + 4, "symmetric=True only", size=10, anchor="start"))
    return _svg("layout cross: anchors z1 against z2 (+ bank), and with symmetric=True z2 against z1",
                parts, x_bank + K * CELL + 130, y2 + B * CELL + 44, ["pos", "neg", "off"])


FILES = {
    "in_batch.svg": in_batch,
    "bank_shared.svg": lambda: bank(False),
    "bank_per_anchor.svg": lambda: bank(True),
    "cross.svg": cross,
}


def main(check: bool = False) -> int:
    stale = []
    for name, draw in FILES.items():
        text = draw()
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("out of date:", ", ".join(stale), file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv[1:]))
