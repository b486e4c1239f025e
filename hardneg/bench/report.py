"""Terminal tables of a benchmark run: times and memory per batch, headline ratios, largest batch in budget."""

from __future__ import annotations

from typing import Dict, List

from .harness import format_bytes

__all__ = ["format_results"]


def _cell(m: dict) -> str:
    if m is None:
        return "-"
    if m["status"] != "ok":
        return {"over_budget": "> budget", "oom": "OOM", "timeout": "timeout"}.get(m["status"], m["status"])
    return f"{m['median_s']:.3g}s {format_bytes(m['extra_bytes'])}"


def _table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _ratio(x, fmt="{:.2f}x"):
    return "-" if x is None else fmt.format(x)


def format_results(data: dict) -> str:
    """Human-readable report of ``Harness.to_json(...)``: one table per (estimator, dtype), then ratios."""
    out: List[str] = []
    ms = data["measurements"]
    groups: Dict[tuple, List[dict]] = {}
    for m in ms:
        groups.setdefault((m["estimator"], m["dtype"]), []).append(m)
    for (est, dtype), rows in groups.items():
        batches = sorted({m["batch"] for m in rows})
        impls = list(dict.fromkeys(m["impl"] for m in rows))
        by = {(m["impl"], m["batch"]): m for m in rows}
        st = data["settings"]
        out.append(f"\nforward+backward: median time per step and peak memory above a B={st['small_batch']} run"
                   f"  (estimator={est}, {dtype}, d={st['dim']}, {st['device']})")
        out.append(_table(["implementation"] + [f"B={b}" for b in batches],
                          [[i] + [_cell(by.get((i, b))) for b in batches] for i in impls]))
    rat = [r for r in data["ratios"] if r["baseline"] or r["floor"] or r.get("symmetric_floor")]
    if rat:
        out.append("\nratios from this run (speedup = baseline time / time; x floor = time / floor time, 3 products"
                   " S = U U^T, G U, G^T U; x sym floor = time / symmetric floor time, 2 products S = U U^T,"
                   " (G + G^T) U; memory = extra memory / baseline's)")
        out.append(_table(
            ["implementation", "estimator", "dtype", "B", "baseline", "speedup", "memory", "x floor", "x sym floor"],
            [[r["impl"], r["estimator"], r["dtype"], r["batch"], r["baseline"] or "-",
              _ratio(r["speedup_vs_baseline"]), _ratio(r["memory_vs_baseline"], "{:.3f}"),
              _ratio(r["time_vs_floor"]), _ratio(r.get("time_vs_symmetric_floor"))] for r in rat]))
    if data.get("max_batch"):
        out.append(f"\nlargest batch in the budget ({format_bytes(data['settings']['budget_bytes'])}), by doubling")
        rows = []
        for r in data["max_batch"]:
            fit = "-" if r["largest_fit"] is None else str(r["largest_fit"])
            if r["stopped_by"] == "time_cap" and r["largest_fit"] is not None:
                fit = ">= " + fit  # memory would have allowed more; the search stopped for time
            why = {"time_cap": f"time cap: next step predicted > {r['time_cap_s']:.0f} s",
                   "over_budget": "next doubling over budget", "oom": "next doubling out of memory",
                   "max_batch": "search limit"}.get(r["stopped_by"], f"next doubling: {r['stopped_by']}")
            rows.append([r["impl"], r["estimator"], r["dtype"], fit, why])
        out.append(_table(["implementation", "estimator", "dtype", "largest B", "stopped"], rows))
    failures = [m for m in ms if m["status"] not in ("ok", "over_budget")]
    if failures:
        out.append("\nfailed measurements")
        for m in failures:
            out.append(f"  {m['impl']} {m['dtype']} B={m['batch']}: {m['status']}: {m['message']}")
    if data["meta"].get("skipped"):
        out.append("\nskipped")
        out.extend(f"  {s}" for s in data["meta"]["skipped"])
    return "\n".join(out)
