"""JAX's quick run (the default of `hardneg verify` for a compiling framework): few compiled programs, full reach.

JAX compiles one program per combination of shapes, dtype and static options, about a second of CPU each. A quick
run (fewer than FEW_PROGRAMS_BELOW examples per feature) draws each feature's static options and shapes from a
few fixed combinations (conformance.strategies.quick_combinations), so that the examples of a feature reuse a
handful of programs; every other run draws them freely. These tests check both sides on the strategies alone
(no framework is run): the quick run stays inside its combinations and still uses every choice of every option
somewhere, and a thorough run (--max-examples 50 or more, or any other framework) reaches every option, size and
combination that the strategies can draw.
"""

import math

import pytest

pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, find, given, settings  # noqa: E402

import hardneg  # noqa: E402
from conformance import jsd_suite  # noqa: E402
from conformance import strategies as cs  # noqa: E402
from conformance.suite import FEATURES, FEW_PROGRAMS_BELOW, _Ctx, _space, quick_or_all, verify  # noqa: E402

#: every option of the spec supported (our backends support them all)
SUPPORTED = {k: True for k in ("float64", "float32", "float16", "bfloat16", "sum", "none", "sum_or_none", "clamp_off",
                               "easy", "beta_inf", "unnormalized", "shared", "per_anchor", "labels", "labels_bank",
                               "layout", "cross", "cross_oneway", "cross_bank_shared", "cross_bank_per_anchor",
                               "cross_labels", "temperature_grad", "temperature_tensor")}
#: the hcl_loss features that draw from a Space (the error contract draws nothing; special cases get theirs in
#: the driver)
DRAWING = [f for f in FEATURES if f not in jsd_suite.FEATURES and f not in ("errors", "special_cases")]
SETTINGS = settings(max_examples=60, database=None, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def _ctx(programs: str) -> _Ctx:
    def target(z1, z2, *, memory_budget=None, **kw):  # a backend's signature: memory_budget is drawn too
        raise AssertionError("not called")

    return _Ctx(target=target, adapter=None, path=None, want_grad=True, supported=SUPPORTED, base="float64", seed=0,
                shrink_budget=1, progress=None, programs=programs)


def program(case) -> tuple:
    """What JAX compiles a program for: the dtype, the shapes and the static options (beta: its mode)."""
    p = case.params
    beta = "inf" if math.isinf(p["beta"]) else "zero" if p["beta"] == 0.0 or p["estimator"] == "easy" else "finite"
    shape = lambda x: None if x is None else x.shape  # noqa: E731
    return (case.dtype, case.z1.shape, shape(case.negatives), case.labels is not None, p.get("layout") == "cross",
            p.get("symmetric", True), p["estimator"], p["clamp"], p["normalize"], p["reduction"], beta,
            case.extras.get("memory_budget"), case.temperature_grad)


def _draw(strategy) -> list:
    out = []

    @SETTINGS
    @given(strategy)
    def collect(case):
        out.append(case)

    collect()
    return out


def test_a_quick_run_draws_each_feature_from_its_few_combinations():
    """Within a feature every example of a quick run is one of at most QUICK_COMBINATIONS programs — and each of
    them is drawn — while its values (geometry, temperature, beta, tau+, seeds) still vary."""
    ctx = _ctx("few")
    total = set()
    for feature in DRAWING:
        space = _space(ctx, feature)
        assert space.programs == "few"
        drawn = _draw(cs.cases(space))
        keys = {program(c) for c in drawn}
        assert len(keys) == len(cs.quick_combinations(space)) <= cs.QUICK_COMBINATIONS, (feature, keys)
        assert {c.z1.shape[0] for c in drawn} <= {s[0] for s in cs.QUICK_SHAPES}
        assert len({c.params["temperature"] for c in drawn}) > 5 and len({c.origin["seed"] for c in drawn}) > 10
        total |= keys
    # far fewer programs than examples: a quick run of 10 examples per feature compiled ~10 programs per feature
    assert len(total) <= cs.QUICK_COMBINATIONS * len(DRAWING)


def test_a_quick_run_uses_every_choice_of_every_option_somewhere():
    """Over the features of a quick run, every reduction, estimator, clamp, normalisation, beta mode, memory budget,
    layout and bank, labels, tensor temperature, dtype and quick shape is drawn (the rotation spreads them)."""
    ctx = _ctx("few")
    combos = [(f, c) for f in DRAWING for c in cs.quick_combinations(_space(ctx, f))]
    seen = {}
    for f, c in combos:
        for k, v in c.items():
            seen.setdefault(k, set()).add(v)
        seen.setdefault("dtype", set()).add(_space(ctx, f).dtype)
    full = _space(_ctx("all"), "combined")
    assert seen["reduction"] == set(full.reductions) and seen["estimator"] == set(full.estimators)
    assert seen["clamp"] == {True, False} and seen["normalize"] == {True, False}
    assert seen["labels"] == {True, False} and seen["temperature_grad"] == {True, False}
    assert seen["symmetric"] == {True, False}
    assert seen["beta"] == {"finite", "zero", "inf"}
    assert seen["memory_budget"] == set(full.memory_budgets) == {None, 4096, 1}
    assert seen["layout"] == {("in_batch", "none"), ("bank", "shared"), ("bank", "per_anchor"), ("cross", "none"),
                              ("cross", "shared"), ("cross", "per_anchor")}
    assert seen["shape"] == set(range(len(cs.QUICK_SHAPES)))
    assert seen["dtype"] == {"float64", "float32", "float16", "bfloat16"}


def test_a_full_run_reaches_every_size_and_combinations_outside_the_quick_ones():
    """--max-examples >= FEW_PROGRAMS_BELOW (and every framework that does not compile) draws freely: sizes and
    combinations of options that no quick combination has are reached."""
    assert quick_or_all("jax", 10) == "few" and quick_or_all("jax", FEW_PROGRAMS_BELOW) == "all"
    assert quick_or_all("jax", 200) == "all"
    for fw in ("numpy", "torch", "tensorflow", "command"):
        assert quick_or_all(fw, 1) == "all"
    quick, full = _ctx("few"), _ctx("all")
    fs = settings(max_examples=5000, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    for feature in ("hard", "bank_per_anchor", "cross_labels", "combined", "float16"):
        space = _space(full, feature)
        assert space.programs == "all"
        quick_keys = {program(c) for c in _draw(cs.cases(_space(quick, feature)))}
        outside = find(cs.cases(space), lambda c, q=quick_keys: program(c) not in q
                       and c.z1.shape[0] not in {s[0] for s in cs.QUICK_SHAPES}, settings=fs)
        assert program(outside) not in quick_keys
    big = find(cs.cases(_space(full, "hard")), lambda c: c.z1.shape == (64, 128) and c.params["reduction"] == "none",
               settings=fs)
    assert big.z1.shape == (64, 128)
    one = find(cs.cases(_space(full, "bank_per_anchor")), lambda c: c.z1.shape[0] == 1 and c.negatives.shape[1] == 64,
               settings=fs)
    assert one.negatives.shape == (1, 64, one.z1.shape[1])


def test_the_graph_objective_quick_run_and_its_full_reach():
    key = lambda c: (c.local.shape, c.graph.shape, c.dtype, c.params["convention"], c.params["beta"] == 0.0)  # noqa
    quick = _draw(jsd_suite.jsd_cases("float64", few=True, rotation=3))
    assert len({key(c) for c in quick}) == 2
    assert {c.local.shape + (c.graph.shape[0],) for c in quick} <= {(n, d, g) for n, g, d in jsd_suite.QUICK_SHAPES}
    assert len({c.params["tau_plus"] for c in quick}) > 5
    full = jsd_suite.jsd_cases("float64")
    fs = settings(max_examples=3000, database=None, deadline=None)
    for n, g, d in ((1, 2, 1), (7, 4, 3), (6, 5, 1)):
        c = find(full, lambda c, n=n, g=g, d=d: c.local.shape == (n, d) and c.graph.shape[0] == g, settings=fs)
        assert c.local.shape == (n, d)


def test_a_report_verified_in_parts_is_the_report_verified_at_once():
    """The JAX backend is verified by two worker processes (hcl_loss's features, the graph objective's): their merged
    report is the report of one process, feature by feature (each feature's examples depend on the seed only)."""
    from conformance.cli import _examples_table, _part_features
    from conformance.report import merge_reports

    hcl, jsd = _part_features("hcl"), _part_features("jsd")
    assert hcl + jsd == list(FEATURES) and set(jsd) == set(jsd_suite.FEATURES)
    feats = ["hard", "labels", "jsd_released", "jsd_errors"]
    whole = verify(hardneg.hcl_loss, framework="numpy", max_examples=3, seed=4, features=feats).to_dict()
    parts = [verify(hardneg.hcl_loss, framework="numpy", max_examples=3, seed=4, features=f).to_dict()
             for f in (["jsd_released", "jsd_errors"], ["hard", "labels"])]  # any order
    merged = merge_reports(parts)
    for k in ("ok", "verdict", "examples", "worst_value", "worst_grad", "features_verified"):
        assert merged[k] == whole[k], k
    assert [f["name"] for f in merged["features"]] == feats
    for a, b in zip(merged["features"], whole["features"]):
        assert (a["status"], a["examples"], a["worst_value"], a["worst_grad"]) == \
            (b["status"], b["examples"], b["worst_value"], b["worst_grad"])
    table = _examples_table({"numpy": merged}).splitlines()
    assert table[0].split() == ["examples", "per", "feature", "numpy"]
    rows = {line.split()[0]: line.split()[1] for line in table[2:]}
    assert rows == {f["name"]: str(f["examples"]) for f in whole["features"]}
    assert int(rows["hard"]) == 3 and int(rows["jsd_errors"]) == len(jsd_suite.error_cases())


def test_the_probes_have_the_simplest_combinations_shape():
    """The suite's probes of the target's options are calls in the quick shapes (B, d, K) and (N, G, d) of the
    simplest combinations: the programs compiled to probe are the ones the features' first combinations reuse."""
    from conformance.suite import _probe_case

    for bank in ("shared", "per_anchor"):
        c = _probe_case(bank=bank)
        assert (c.z1.shape[0], c.z1.shape[1], c.negatives.shape[-2]) == cs.QUICK_SHAPES[0]
    j = jsd_suite._probe_case("float32")
    assert j.local.shape + (j.graph.shape[0],) == (5, 2, 3) and jsd_suite.QUICK_SHAPES[0] == (5, 3, 2)
    first = jsd_suite.quick_combinations()[0]
    assert (first["convention"], first["beta"], first["reduction"]) == ("released", "positive", "mean")
    assert (j.params["convention"], j.params["beta"] > 0, j.params["reduction"]) == ("released", True, "mean")
