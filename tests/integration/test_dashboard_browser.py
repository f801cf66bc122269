"""The live dashboard in headless Chromium: it loads without console errors, shows one row per
node of a 3-node cluster, and follows a running DAG's progress as its functions finish."""

from __future__ import annotations

import os
import threading

import pytest
from browser import console_errors, headless_chrome

import handoff
from handoff import DAG, Function
from handoff.testing import wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

WAIT = 60.0


def wait_for_file(path: str) -> str:
    """Workload: says it started (``path``.started), then runs until the test creates ``path``."""
    open(path + ".started", "w").close()
    wait_until(lambda: os.path.exists(path), 120, interval=0.02)
    return path


def cells(driver, table: str) -> list[list[str]]:
    """The rows of a table of the page, read in one script (the page redraws every second)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map("
        "tr => Array.from(tr.cells).map(td => td.textContent))", f"#{table} tbody tr")


def test_the_dashboard_page_follows_a_run_on_a_three_node_cluster(local_cluster, handoff_driver, tmp_path):
    cluster = local_cluster(3, resources={"cpu": 1}, extra_args=["--dashboard", "127.0.0.1:0"])
    handoff_driver(cluster, dashboard="127.0.0.1:0")
    url = handoff.dashboard_url()
    assert url is not None
    releases = [str(tmp_path / f"release{i}") for i in range(6)]
    dag = DAG("watched")
    for i, path in enumerate(releases):
        dag.add_function(Function(id=f"step{i}", code=wait_for_file, extra_args=[path], cost={"cpu": 1}))
    started = lambda: [p for p in releases if os.path.exists(p + ".started")]  # noqa: E731
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(r=handoff.execute(dag, timeout=WAIT * 2)))
    runner.start()
    try:
        with headless_chrome() as driver:
            driver.get(url)
            assert wait_until(lambda: len(cells(driver, "cluster")) == 4, WAIT)
            rows = cells(driver, "cluster")
            assert sorted(r[0] for r in rows) == ["driver", "node0", "node1", "node2"]
            assert {r[1] for r in rows} == {"alive"}
            assert wait_until(lambda: cells(driver, "runs") == [["watched", "running", "0 / 6"]], WAIT)
            assert wait_until(lambda: len(started()) == 3, WAIT)  # one on each node
            running = started()
            for done in (1, 3):  # release steps that run (the others wait for a node)
                for path in running[:done]:
                    open(path, "a").close()
                assert wait_until(lambda: cells(driver, "runs") ==
                                  [["watched", "running", f"{done} / 6"]], WAIT), cells(driver, "runs")
            for path in releases:
                open(path, "a").close()
            assert wait_until(lambda: cells(driver, "runs") == [], WAIT)
            assert wait_until(lambda: driver.find_element("id", "state").text == "finished", WAIT)
            assert console_errors(driver) == []
    finally:
        for path in releases:
            open(path, "a").close()
        runner.join(WAIT)
    assert outcome["r"].results["step5"] == releases[5]
