"""Seeing a run on a 3-node cluster: the trace of every attempt, the HTML report in a real
(headless) browser, and the progress display on a terminal (and not elsewhere)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections import Counter, defaultdict

import numpy as np
import pytest

import handoff
from handoff import DAG, Function
from handoff.observe import render_page
from handoff.observe.record import RunRecord
from handoff.observe.view import build_view
from handoff.protocol.rows import ResultRow
from handoff.testing import LocalCluster
from browser import console_errors, headless_chrome, png_colours
from nodes import child_env

pytestmark = pytest.mark.timeout(180)

NODES = ["node0", "node1", "node2"]


def block(i):
    return np.full(1000, i, dtype=np.float64)


def total(*blocks):
    return float(sum(np.sum(b) for b in blocks))


def refuse(x):
    raise ValueError(f"refused {x:g}")


def spread_dag() -> DAG:
    """Nine blocks made round-robin on the three nodes, a sum per node over the others'
    blocks (so values cross nodes), and a grand total."""
    dag = DAG("spread")
    for i in range(9):
        dag.add_function(Function(id=f"block-{i}", code=block, extra_args=[i], node=NODES[i % 3]))
    for n in range(3):
        dag.add_function(Function(id=f"sum-{n}", code=total, node=NODES[n],
                                  args=[f"block-{i}" for i in range(9) if i % 3 != n]))
    dag.add_function(Function(id="grand", code=total, args=["sum-0", "sum-1", "sum-2"], node=NODES[0]))
    return dag


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run that succeeds and one that fails, on three nodes with this process as driver."""
    handoff.stop()
    out = tmp_path_factory.mktemp("seeing")
    with LocalCluster(3, names=NODES, resources={"cpu": 2}, workers=2) as cluster:
        cluster.connect()
        try:
            ok = handoff.execute(spread_dag())
            failing = spread_dag()
            failing.add_function(Function(id="refuse", code=refuse, args=["grand"], node=NODES[2]))
            with pytest.raises(handoff.FunctionError) as caught:
                handoff.execute(failing, max_retries=1)
            yield ok, caught.value, out
        finally:
            handoff.stop()


def x_events(doc, cat):
    return [e for e in doc["traceEvents"] if e["ph"] == "X" and e.get("cat") == cat]


def test_trace_of_a_run_on_three_nodes(runs):
    ok, _, out = runs
    assert ok.results["grand"] == 2 * sum(1000.0 * i for i in range(9))
    path = ok.to_trace(out / "spread.json")
    doc = json.loads(open(path).read())
    attempts = x_events(doc, "attempt")
    # every attempt once; each function has a successful one on the node that holds its value
    # (a node falsely thought lost on a busy machine would add attempts, never remove one)
    assert all(n == 1 for n in Counter((e["name"], e["args"]["attempt"]) for e in attempts).values())
    done = {(e["name"], e["args"]["node"]) for e in attempts if e["args"]["outcome"] == "ok"}
    assert set(ok.allocations.items()) <= done and {fid for fid, _ in done} == set(ok.allocations)
    assert all(e["args"]["bytes_out"] > 0 for e in attempts if e["args"]["outcome"] == "ok")
    once = len(attempts) == len(ok.allocations)
    names = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"}
    assert sorted(names.values()) == NODES
    end = doc["otherData"]["duration_us"]
    assert all(0 <= e["ts"] <= e["ts"] + e["dur"] <= end for e in x_events(doc, "attempt") + x_events(doc, "fetch"))
    flows = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] in ("s", "f"):
            flows[e["id"]].append(e["ph"])
    # each sum fetches the six blocks made on the two other nodes, the grand total two sums
    assert len(flows) == 3 * 6 + 2 if once else len(flows) >= 3 * 6 + 2
    assert all(sorted(p) == ["f", "s"] for p in flows.values())
    assert {e["args"]["function_id"]: e["args"]["bytes_in"] for e in attempts}["sum-0"] >= 6 * 8000


def test_failed_run_keeps_its_partial_result(runs):
    _, error, out = runs
    assert error.function_id == "refuse" and error.attempts == 2
    partial = error.result
    assert partial is not None and partial.allocations["grand"] == NODES[0]
    assert partial.results["grand"] > 0
    doc = json.loads(open(partial.to_trace(out / "failing.json")).read())
    refused = [e for e in x_events(doc, "attempt") if e["name"] == "refuse"]
    assert sorted(e["args"]["attempt"] for e in refused) == [1, 2]
    assert {e["args"]["outcome"] for e in refused} == {"failed"}


def test_report_in_a_headless_browser(runs):
    ok, error, out = runs
    pages = {"ok": ok.report(out / "ok.html"), "failed": error.result.report(out / "failed.html")}
    for path in pages.values():
        html = open(path, encoding="utf-8").read()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page must load nothing"
    with headless_chrome() as browser:
        browser.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
        browser.get("file://" + str(pages["ok"]))
        assert browser.find_element("id", "state").text == "finished"
        assert console_errors(browser) == []
        rows = browser.find_elements("css selector", "#nodes tbody tr")
        assert sorted(r.find_element("css selector", "td").text for r in rows) == NODES
        functions = browser.find_element("css selector", "#summary [data-k=functions] .v").text
        assert functions == str(len(ok.allocations))
        assert len(browser.find_elements("css selector", "#dag g.fn")) == len(ok.allocations)
        assert png_colours(browser.get_screenshot_as_png()) > 20

        browser.get("file://" + str(pages["failed"]))
        assert console_errors(browser) == []
        assert browser.find_element("id", "state").text == "failed"
        failures = browser.find_elements("css selector", "#failures-section details.failure")
        assert len(failures) >= 2  # refuse's two attempts (and any lost input on a busy machine)
        final = browser.find_element("css selector", "#failures-section details.final")
        assert "refuse" in final.text and "ValueError: refused" in final.text
        final.click()
        assert "Traceback" in final.find_element("css selector", "pre").text

        large = out / "large.html"
        large.write_text(render_page(build_view(large_record(6000))), encoding="utf-8")
        browser.get("file://" + str(large))
        assert console_errors(browser) == []
        assert browser.find_element("css selector", "#summary [data-k=functions] .v").text == "6,000"
        assert len(browser.find_elements("css selector", "#dag g.fn")) == 7  # one box per group
        assert "busy fraction" in browser.find_element("id", "timeline-section").text


def large_record(n: int) -> RunRecord:
    """A record of ``n`` functions in 7 groups, past the page's limits for boxes and spans."""
    dag = DAG("large")
    for i in range(n):
        dag.add_function(Function(id=i, code=total, args=[i - 1] if i % 100 else [], group=f"g{i % 7}"))
    graph = dag.compile()
    record = RunRecord(dag.id, graph, [dag.functions[i] for i in graph.ids])
    for i in range(n):
        t = record.started_at + i * 1e-4
        record.add("abc"[i % 3], ResultRow("run", i, 1, True, t, t + 5e-5, 8, None, -1, None, i % 4))
    record.end(failed=False)
    return record


PROGRESS_CHILD = r"""
import time, handoff
from handoff import DAG, Function

def nap(i):
    time.sleep(0.03)
    return i

def total(*xs):
    return sum(xs)

handoff.start(workers=2)
dag = DAG("watched")
for i in range(120):
    dag.add_function(Function(id=i, code=nap, extra_args=[i], group="naps"))
dag.add_function(Function(id="sum", code=total, args=list(range(120))))
print("sum", handoff.execute(dag, progress=PROGRESS).results["sum"], flush=True)
handoff.stop()
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_progress_is_drawn_on_a_terminal():
    """progress="auto" on a pseudo-terminal, for a run of over a second (120 x 30 ms naps on 2
    workers take 1.8 s at least): group rows and a total row, ending at done."""
    code = PROGRESS_CHILD.replace("PROGRESS", '"auto"')
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are the terminal
        try:
            os.execve(sys.executable, [sys.executable, "-c", code], {**child_env(), "TERM": "xterm-256color"})
        finally:
            os._exit(127)
    out = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(fd)
        reaped, status = os.waitpid(pid, os.WNOHANG)  # the child may have ended already
        if reaped == 0:  # still running after the deadline: end it
            os.kill(pid, 9)
            _, status = os.waitpid(pid, 0)
    text = ANSI.sub("", out.decode("utf-8", "replace"))
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "sum 7140" in text
    assert re.search(r"naps\s.*120/120", text), text
    assert re.search(r"total\s.*121/121", text), text
    assert "\x1b[" in out.decode("utf-8", "replace")  # drawn in place with escape codes


def test_no_progress_when_stderr_is_not_a_terminal():
    proc = subprocess.run([sys.executable, "-c", PROGRESS_CHILD.replace("PROGRESS", '"auto"')],
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 0, proc.stderr
    assert "sum 7140" in proc.stdout
    assert "naps" not in proc.stderr and "\x1b[" not in proc.stderr
