"""The compiled core and its pure-Python twin agree: same outputs, same errors, same floats.

Random graphs, ledgers and allocation batches are fed to both implementations; every result
is compared exactly. The ReadyTracker is also checked against a direct definition of
readiness. Also here: how handoff._core selects an implementation.
"""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handoff import _core
from handoff.config import pure_python_from_env


def both():
    impls = _core.implementations()
    if "cython" not in impls:
        pytest.fail(_core.NOT_BUILT)
    return impls["cython"], impls["python"]


def outcome(fn, *args):
    """fn(*args), or the exception's type and message, in a comparable form."""
    try:
        result = fn(*args)
    except Exception as exc:  # noqa: BLE001 - the point is to compare any failure
        return ("raised", type(exc).__name__, str(exc))
    return ("ok", normalize(result))


def normalize(value):
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tolist())
    if isinstance(value, tuple):
        return tuple(normalize(v) for v in value)
    return value


def csr(deps):
    indptr = np.zeros(len(deps) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(d) for d in deps])
    indices = np.array([d for ds in deps for d in ds], dtype=np.int64)
    return len(deps), indptr, indices


def random_graph(rng, n, acyclic):
    """Dependency lists over n functions; acyclic graphs only point to lower ranks of a shuffle."""
    perm = rng.permutation(n)
    deps = [[] for _ in range(n)]
    for rank in range(n):
        k = int(rng.integers(0, 4))
        if acyclic:
            choices = rng.integers(0, rank, size=k) if rank else []
        else:
            choices = rng.integers(0, n, size=k)
        deps[perm[rank]] = [int(perm[c]) for c in choices]  # duplicates allowed
    return deps


# -- selection ---------------------------------------------------------------------------


def test_compiled_core_is_built():
    assert "cython" in _core.implementations(), _core.NOT_BUILT


def test_implementations_share_one_api():
    for impl in both():
        for name in _core.API:
            assert hasattr(impl, name), f"{impl.name} lacks {name}"
            assert hasattr(_core, name)


def test_selected_implementation_follows_the_environment():
    assert _core.IMPLEMENTATION == ("python" if pure_python_from_env() else "cython")
    assert _core.ResourceLedger is _core.implementations()[_core.IMPLEMENTATION].ResourceLedger


def run_without_build(pure: bool) -> subprocess.CompletedProcess:
    """Import handoff._core in a fresh interpreter where the compiled modules cannot be imported."""
    root = Path(_core.__file__).resolve().parents[2]
    code = (
        "import sys\n"
        "for m in ('graph', 'ledger', 'allocator'):\n"
        "    sys.modules['handoff._core.' + m] = None\n"
        "import handoff._core as c\n"
        "print(c.IMPLEMENTATION, sorted(c.implementations()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HANDOFF_PURE_PYTHON"}
    if pure:
        env["HANDOFF_PURE_PYTHON"] = "1"
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_missing_build_says_how_to_build():
    proc = run_without_build(pure=False)
    assert proc.returncode != 0
    assert "ImportError: handoff's compiled core (handoff._core) is not built" in proc.stderr
    assert "pip install -e ." in proc.stderr and "HANDOFF_PURE_PYTHON=1" in proc.stderr


def test_pure_python_needs_no_build():
    proc = run_without_build(pure=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "python ['python']"


# -- graph kernels -----------------------------------------------------------------------


def compare_graph(deps):
    cy, py = both()
    args = csr(deps)
    for name in ("reverse_csr", "find_cycle", "topological_order", "levels"):
        assert outcome(getattr(cy, name), *args) == outcome(getattr(py, name), *args), name


@pytest.mark.parametrize("seed", range(40))
def test_graph_kernels_agree_on_random_graphs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 400))
    deps = random_graph(rng, n, acyclic=seed % 2 == 0)
    compare_graph(deps)
    cycle = both()[0].find_cycle(*csr(deps))
    if cycle is not None:
        for a, b in itertools.pairwise(cycle.tolist()):
            assert b in deps[a]


graphs = st.integers(0, 12).flatmap(
    lambda n: st.lists(
        st.lists(st.integers(0, max(n - 1, 0)), max_size=4 if n else 0), min_size=n, max_size=n
    )
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs)
def test_graph_kernels_agree_on_small_graphs(deps):
    compare_graph(deps)


# -- ReadyTracker ------------------------------------------------------------------------


def effective_producers(deps, inline, i):
    """Non-inline functions i reads, looking through inline ones: the definition, directly."""
    found = set()
    todo = list(deps[i])
    while todo:
        d = todo.pop()
        if inline[d]:
            todo.extend(deps[d])
        else:
            found.add(d)
    return found


@pytest.mark.parametrize("seed", range(30))
def test_ready_trackers_agree_and_match_the_definition(seed):
    cy, py = both()
    rng = np.random.default_rng(1000 + seed)
    n = int(rng.integers(1, 150))
    deps = random_graph(rng, n, acyclic=True)
    inline = (rng.random(n) < rng.choice([0.0, 0.3, 0.7])).astype(np.uint8)
    args = (*csr(deps), inline)
    tc, tp = cy.ReadyTracker(*args), py.ReadyTracker(*args)
    producers = [effective_producers(deps, inline, i) for i in range(n)]
    done = set()

    def check_state():
        assert tc.remaining == tp.remaining == int((inline == 0).sum()) - len(done)
        for i in range(n):
            expected = not inline[i] and i not in done and producers[i] <= done
            assert tc.is_ready(i) == tp.is_ready(i) == expected
            assert tc.is_complete(i) == tp.is_complete(i) == (i in done)

    ready = tc.initial().tolist()
    assert ready == tp.initial().tolist()
    assert ready == [i for i in range(n) if not inline[i] and not producers[i]]
    check_state()
    while ready:
        i = ready.pop(int(rng.integers(0, len(ready))))
        new_c, new_p = tc.complete(i), tp.complete(i)
        assert new_c.tolist() == new_p.tolist()
        done.add(i)
        assert len(set(new_c.tolist())) == len(new_c)  # reported once
        ready.extend(new_c.tolist())
        if rng.random() < 0.2:
            check_state()
    check_state()
    assert tc.remaining == 0
    assert outcome(tc.complete, 0) == outcome(tp.complete, 0)


# -- ledger ------------------------------------------------------------------------------

NODES = ["n0", "n1", "n2", "n3", "n4"]
RESOURCES = ["cpu", "memory", "gpu", "fpga", "tpu"]


def random_amounts(rng, names, scale):
    k = int(rng.integers(0, len(names) + 1))
    picked = rng.choice(names, size=k, replace=False)
    # small integers make ties and exact fits common; fractions exercise the tolerance
    return {
        str(r): float(rng.choice([0, 1, 2, 0.1, 0.2, 0.3, scale * rng.random()])) for r in picked
    }


def ledger_state(led):
    return (led.nodes, led.resources, led.capacity_matrix().tolist(), led.used_matrix().tolist())


@pytest.mark.parametrize("seed", range(25))
def test_ledgers_agree_on_random_operations(seed):
    cy, py = both()
    rng = np.random.default_rng(2000 + seed)
    lc, lp = cy.ResourceLedger(), py.ResourceLedger()
    for _ in range(300):
        op = rng.choice(
            [
                "register",
                "unregister",
                "request",
                "release",
                "available",
                "fits",
                "vec",
                "views",
                "bad",
            ]
        )
        node = str(rng.choice(NODES))
        req = random_amounts(rng, RESOURCES[: int(rng.integers(1, 6))], 4)
        if op == "register":
            caps = random_amounts(rng, RESOURCES, 10)
            calls = [("register", node, caps)]
        elif op == "unregister":
            calls = [("unregister", node)]
        elif op == "request":
            calls = [("request", node, req)]
        elif op == "release":
            calls = [("release", node, req)]
        elif op == "available":
            calls = [("available", node, req), ("free", node), ("used", node), ("capacity", node)]
        elif op == "fits":
            calls = [("fits_total", req), ("fitting_nodes_total", req), ("capacities",)]
        elif op == "vec":
            i = int(rng.integers(0, 6))
            vec = rng.choice([0.0, 0.5, 1.0, 3.0], size=int(rng.integers(0, len(lc.resources) + 2)))
            method = str(rng.choice(["request_vec", "release_vec", "available_vec"]))
            calls = [(method, i, vec)]
        elif op == "views":
            calls = [
                ("node_index", node),
                ("has_node", node),
                ("node_name", int(rng.integers(0, 6))),
                ("resource_vector", req),
            ]
        else:
            calls = [("request", node, {"cpu": -1.0}), ("register", node, {"cpu": float("nan")})]
        for name, *args in calls:
            assert outcome(getattr(lc, name), *args) == outcome(getattr(lp, name), *args), (
                name,
                args,
            )
        assert ledger_state(lc) == ledger_state(lp)


# -- allocator ---------------------------------------------------------------------------


def random_cluster(impl, rng, n_nodes, n_res):
    led = impl.ResourceLedger()
    for j in range(n_nodes):
        caps = {
            f"r{r}": float(rng.choice([0, 1, 2, 4, 8, 0.5, 10 * rng.random()]))
            for r in range(n_res)
        }
        led.register(f"node{j}", caps)
    return led


def claim_some(led, rng, n_nodes, n_res):
    for _ in range(n_nodes):
        led.request_vec(int(rng.integers(0, n_nodes)), rng.choice([0, 0.5, 1, 2], size=n_res))


def twin_clusters(seed, min_nodes, max_nodes):
    """(rng, nodes, resources, [compiled ledger, pure-Python ledger]): identical random
    clusters and claims for both, then the generator for the rest of the test."""
    rng = np.random.default_rng(seed)
    n_nodes, n_res = int(rng.integers(min_nodes, max_nodes)), int(rng.integers(1, 5))
    state = rng.bit_generator.state
    ledgers = []
    for impl in both():
        rng.bit_generator.state = state  # the same draws for both
        led = random_cluster(impl, rng, n_nodes, n_res)
        claim_some(led, rng, n_nodes, n_res)  # no draws without nodes
        ledgers.append(led)
    return rng, n_nodes, n_res, ledgers


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("strategy", ["first_available", "load_balanced", "cost_optimized"])
def test_allocations_agree_on_random_batches(seed, strategy):
    cy, py = both()
    rng, n_nodes, n_res, ledgers = twin_clusters(3000 + seed, 0, 12)
    m = int(rng.integers(0, 200))
    width = int(rng.integers(0, n_res + 1))
    reqs = rng.choice([0, 0.5, 1, 1, 2, 3, 0.1, 0.2], size=(m, width))
    pinned = np.where(rng.random(m) < 0.2, rng.integers(0, max(n_nodes, 1), size=m), -1)
    if n_nodes == 0:
        pinned[:] = -1
    for claim in (False, True):
        out_c = cy.allocate(ledgers[0], reqs, pinned, strategy, claim)
        out_p = py.allocate(ledgers[1], reqs, pinned, strategy, claim)
        assert out_c.tolist() == out_p.tolist()
        assert ledger_state(ledgers[0]) == ledger_state(ledgers[1])
    cap, used = ledgers[0].capacity_matrix(), ledgers[0].used_matrix()
    assert np.all(used <= cap + 1e-9 * np.maximum(cap, 1) * 4 + 1e-12)


def best_fit_by_definition(cap, used, v):
    """cost_optimized spelt out: min over fitting nodes of (fit, spare, index), in plain floats.

    fit sums (free - req) / cap over requested resources (req > 0) the node declares, spare
    sums free / cap over the declared resources not requested; both in column order.
    """
    keys = []
    for j in range(len(cap)):
        if any(
            x > 0 and used[j][r] + x > cap[j][r] + 1e-9 * max(cap[j][r], 1.0)
            for r, x in enumerate(v)
        ):
            continue
        fit = spare = 0.0
        for r, x in enumerate(v):
            c = cap[j][r]
            if c > 0:
                if x > 0:
                    fit += ((c - used[j][r]) - x) / c
                else:
                    spare += (c - used[j][r]) / c
        keys.append((fit, spare, j))
    return min(keys)[2] if keys else -1


@pytest.mark.parametrize("seed", range(30))
def test_cost_optimized_agrees_and_matches_the_definition(seed):
    cy, py = both()
    rng = np.random.default_rng(4000 + seed)
    n_nodes, n_res = int(rng.integers(1, 8)), int(rng.integers(1, 5))
    # few distinct capacities and many zero requests: ties on fit, decided by spare, are common
    caps = rng.choice([0.0, 1.0, 2.0, 4.0], size=(n_nodes, n_res))
    reqs = rng.choice([0.0, 0.0, 0.5, 1.0], size=(int(rng.integers(1, 40)), n_res))
    ledgers = []
    for impl in (cy, py):
        led = impl.ResourceLedger()
        for j in range(n_nodes):
            led.register(j, {f"r{r}": float(caps[j, r]) for r in range(n_res)})
        ledgers.append(led)
    for v in reqs:
        expected = best_fit_by_definition(
            ledgers[1].capacity_matrix().tolist(), ledgers[1].used_matrix().tolist(), v.tolist()
        )
        got = [
            impl.allocate(led, v[None, :], None, "cost_optimized").tolist()
            for impl, led in zip((cy, py), ledgers)
        ]
        assert got == [[expected], [expected]]
        assert ledger_state(ledgers[0]) == ledger_state(ledgers[1])


@settings(max_examples=100, deadline=None)
@given(
    caps=st.lists(
        st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.0, 0.5]), min_size=2, max_size=2),
        min_size=1,
        max_size=5,
    ),
    reqs=st.lists(
        st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=2, max_size=2), max_size=12
    ),
    strategy=st.sampled_from(["first_available", "load_balanced", "cost_optimized"]),
)
def test_allocations_agree_on_small_clusters(caps, reqs, strategy):
    cy, py = both()
    outs = []
    for impl in (cy, py):
        led = impl.ResourceLedger()
        for j, row in enumerate(caps):
            led.register(j, {"a": row[0], "b": row[1]})
        out = impl.allocate(
            led, np.array(reqs, dtype=np.float64).reshape(len(reqs), 2), None, strategy
        )
        outs.append((out.tolist(), ledger_state(led)))
    assert outs[0] == outs[1]


# -- ranking -----------------------------------------------------------------------------


def test_ranking_agrees_with_allocate_on_the_issue_case():
    """a = {cpu 3, gpu 1}, b = {cpu 4}, cpu 2, cost_optimized: both pick a, and rank a first.

    a leaves 1/3 of its cpu, b 1/2: a is the tighter fit; its free gpu is the secondary key,
    which decides only among exact ties (a ranking that summed it in would put b first).
    """
    for impl in both():
        led = impl.ResourceLedger()
        led.register("a", {"cpu": 3, "gpu": 1})
        led.register("b", {"cpu": 4})
        v = led.resource_vector({"cpu": 2})
        assert impl.allocate(led, v[None, :], None, "cost_optimized", False).tolist() == [0]
        assert impl.rank_nodes(led, v, [0, 1], "cost_optimized").tolist() == [0, 1]
        assert impl.rank_nodes(led, v, [1, 0], "cost_optimized").tolist() == [0, 1]


def rank_both(ledgers, v, rows, strategy):
    cy, py = both()
    got = [
        outcome(impl.rank_nodes, led, v, rows, strategy)
        for impl, led in zip((cy, py), ledgers)
    ]
    assert got[0] == got[1]
    return got[0]


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("strategy", ["first_available", "load_balanced", "cost_optimized"])
def test_rankings_agree_and_lead_with_allocates_choice(seed, strategy):
    cy, py = both()
    rng, n_nodes, n_res, ledgers = twin_clusters(5000 + seed, 1, 10)
    for _ in range(20):
        v = rng.choice([0, 0.5, 1, 2, 3, 0.1], size=int(rng.integers(0, n_res + 1)))
        everyone = list(range(n_nodes))
        ranked = rank_both(ledgers, v, everyone, strategy)[1][2]
        assert sorted(ranked) == everyone
        chosen = cy.allocate(ledgers[0], v[None, :], None, strategy, False).tolist()[0]
        fitting = [j for j in ranked if ledgers[0].available_vec(j, v)]
        assert ranked[: len(fitting)] == fitting  # nodes with room first
        assert chosen == (fitting[0] if fitting else -1)
        subset = rng.permutation(n_nodes)[: int(rng.integers(0, n_nodes + 1))]
        kept = set(subset.tolist())
        in_order = rank_both(ledgers, v, np.sort(subset), strategy)[1][2]
        assert in_order == [j for j in ranked if j in kept]  # a subset ranks as in the whole
        shuffled = rank_both(ledgers, v, subset, strategy)[1][2]
        assert sorted(shuffled) == sorted(kept)
        if strategy == "first_available":  # no score: room first, then the order given
            given_order = subset.tolist()
            room = [j for j in given_order if ledgers[0].available_vec(j, v)]
            assert shuffled == room + [j for j in given_order if j not in room]


def test_ranking_rejects_bad_input_alike():
    ledgers = []
    for impl in both():
        led = impl.ResourceLedger()
        led.register("a", {"cpu": 1})
        ledgers.append(led)
    for v, rows, strategy in [
        ([1.0], [1], "cost_optimized"),
        ([1.0], [-1], "load_balanced"),
        ([1.0, 2.0], [0], "load_balanced"),
        ([-1.0], [0], "load_balanced"),
        ([[1.0]], [0], "load_balanced"),
        ([1.0], [[0]], "load_balanced"),
        ([1.0], [0], "fastest"),
    ]:
        assert rank_both(ledgers, np.array(v), np.array(rows), strategy)[0] == "raised"
