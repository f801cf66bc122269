"""The cluster's state as one document: what ``python -m handoff status`` prints and the
dashboard serves at ``/api/state``.

Every node can answer. It reads its membership table (who is alive, suspect or dead), adds
its own report (load, the runs its driver orchestrates, recent failures) and asks each live
peer for theirs with a ``StatusAsk``; a peer that does not answer within ``PEER_TIMEOUT`` is
shown from what gossip last said about it (its capacity and free resources), with no load.
Requests that come in while a gathering is under way share its answer, so a burst of
queries costs one round of asks.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Hashable

from handoff.node.cluster.members import DEAD, LEFT, SUSPECT
from handoff.protocol.messages import StatusAsk, StatusQuery, StatusReport
from handoff.scheduler.waiting import progress

if TYPE_CHECKING:
    from handoff.node.runs import RunContext
    from handoff.node.server import Node, Timer
    from handoff.observe.record import RunRecord

__all__ = ["ClusterStatus", "PEER_TIMEOUT", "label"]

log = logging.getLogger("handoff.status")

PEER_TIMEOUT = 1.5  # seconds a gathering waits for the peers' reports
RECENT_FAILURES = 50  # failed attempts each node remembers
WAITING_SHOWN = 50  # waiting functions listed per run (all are counted)
VIEW_AGE = 1.0  # seconds a run's view document is reused (longer if it was slow to build)
Callback = Callable[[dict], None]


def label(value: Hashable) -> str:
    """A DAG or function id as text (JSON keys are strings; ids may be any hashable)."""
    return value if isinstance(value, str) else repr(value)


class ClusterStatus:
    """This node's part in status queries: its own report, gathering the peers' reports,
    answering status clients, and the recent failed attempts it ran."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.name = node.name
        self.failures: deque[dict] = deque(maxlen=RECENT_FAILURES)
        self.latest: dict | None = None  # the last document gathered
        self.latest_at = float("-inf")  # time.monotonic() when it was
        self._callbacks: list[Callback] = []
        self._asked: dict[str, int] = {}  # peer -> request id, while a gathering is under way
        self._reports: dict[str, dict] = {}
        self._timer: Timer | None = None
        self.last_record: RunRecord | None = None  # of the run this node's driver began last
        self._view: tuple[RunRecord, float, float, dict] | None = None  # record, built at, cost, view

    def run_started(self, ctx: RunContext) -> None:
        if ctx.record is not None and ctx.record.keep:
            self.last_record = ctx.record

    # ---- this node -------------------------------------------------------------------
    def attempt_failed(self, dag_id: Any, function_id: Any, attempt: int, error: Any) -> None:
        """An attempt that ran here failed (``error`` an ErrorRow, or None)."""
        text = f"{error.exc_type}: {error.message}" if error is not None else "failed"
        self.failures.append({"time": time.time(), "node": self.name, "dag_id": label(dag_id),
                              "function_id": label(function_id), "attempt": attempt,
                              "error": text[:500]})

    def report(self) -> dict:
        """This node's own part: capacity, use, running and queued work, runs, failures."""
        node = self.node
        capacity = dict(node.capacity)
        free = node.free_resources()
        used = {r: max(0.0, amount - free.get(r, 0.0)) for r, amount in capacity.items()}
        pool = node.execution.stats()
        running = int(pool.get("running", 0))
        queued = len(node.execution.jobs.jobs) - running  # fetching, blocked, on the pool's queue
        return {
            "name": self.name, "address": node.address, "capacity": capacity, "used": used,
            "running": running, "queued": max(0, queued), "workers": int(pool.get("workers", 0)),
            "runs": self.runs(), "failures": list(self.failures),
            "dashboard": node.dashboard.url if node.dashboard is not None else None,
        }

    def runs(self) -> list[dict]:
        """The runs this node orchestrates, with their progress and why work waits."""
        out = []
        orchestrator = self.node.runs.orchestrator
        now = time.monotonic()
        for run_id, ctx in list(self.node.runs.runs.items()):
            try:
                state = orchestrator.run(run_id)
                reasons = orchestrator.waiting(run_id, WAITING_SHOWN)
            except KeyError:
                continue  # ended in this very iteration
            done, running, waiting = progress(state)
            out.append({
                "dag_id": label(ctx.dag_id), "run_id": run_id, "driver": self.name,
                "done": done, "total": ctx.total,
                "running": running,  # queued-ahead ones are waiting
                "waiting": {label(fid): why for fid, why in reasons.items()},
                "waiting_count": waiting,
                "elapsed": round(now - state.submitted_at, 3),
            })
        return out

    def view(self, state: dict) -> dict:
        """The dashboard page's view document (``handoff.observe.page``): the last run this
        node's driver began (live while it runs), the cluster's members and runs in flight."""
        from handoff.observe.page import VIEW_VERSION
        from handoff.observe.view import build_view

        record = self.last_record
        if record is None:
            view: dict = {"version": VIEW_VERSION, "title": f"Handoff cluster seen from {self.name}"}
        else:
            # the run's part costs the loop up to a few 100 ms for a huge run: rebuilt at most
            # every VIEW_AGE seconds, and at most a tenth of the time (by its last cost)
            now = time.monotonic()
            cached = self._view
            if cached is None or cached[0] is not record or now - cached[1] > max(VIEW_AGE, 10 * cached[2]):
                view = build_view(record)
                cached = self._view = (record, now, time.monotonic() - now, view)
            view = dict(cached[3])
        view["cluster"] = [{"name": name, **{k: node.get(k) for k in
                            ("state", "address", "capacity", "used", "running", "queued")}}
                           for name, node in state["nodes"].items()]
        view["runs"] = [{"dag_id": run["dag_id"], "state": "running", "done": run["done"],
                         "total": run["total"]} for run in state["runs"]]
        return view

    # ---- messages --------------------------------------------------------------------
    def on_query(self, identity: bytes, msg: StatusQuery) -> None:
        """A status client: answer on its connection once the peers have reported."""
        transport, name = self.node.transport, self.name
        self.gather(lambda doc: transport.reply(identity, StatusReport(name, msg.request, doc)))

    def on_ask(self, msg: StatusAsk) -> None:
        self.node.transport.send(msg.sender, StatusReport(self.name, msg.request, self.report()))

    def on_report(self, msg: StatusReport) -> None:
        self.node.requests.answer(msg.request, msg.sender, msg.report)

    # ---- gathering -------------------------------------------------------------------
    def gather(self, callback: Callback) -> None:
        """On the loop: ``callback(document)`` once every live peer reported or the time is
        up. Joins the gathering under way, if any."""
        self._callbacks.append(callback)
        if self._timer is not None:
            return
        node = self.node
        self._reports = {self.name: self.report()}
        self._asked = {}
        for peer in node.peers.membership.alive():
            if peer == self.name:
                continue

            def answered(report: Any, error: str | None, peer: str = peer) -> None:
                self._answered(peer, report)

            request = node.requests.open(peer, answered)
            if node.transport.send(peer, StatusAsk(self.name, request)):
                self._asked[peer] = request
            else:
                node.requests.close(request, peer)
        if not self._asked:
            self._finish()
            return
        self._timer = node.after(PEER_TIMEOUT, self._finish)

    def _answered(self, peer: str, report: Any) -> None:
        if self._asked.pop(peer, None) is None:
            return  # after the gathering ended
        if isinstance(report, dict):
            self._reports[peer] = report
        if not self._asked and self._timer is not None:
            self._finish()

    def _finish(self) -> None:
        if self._timer is not None:
            self.node.cancel_timer(self._timer)
            self._timer = None
        for peer, request in self._asked.items():
            self.node.requests.close(request, peer)
        self._asked = {}
        doc = self.document(self._reports)
        self.latest, self.latest_at = doc, time.monotonic()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:  # one that fails must not cost the others their answer
            try:
                callback(doc)
            except Exception:
                log.exception("%s: a status callback failed", self.name)

    def document(self, reports: dict[str, dict]) -> dict:
        """The cluster's document from the membership table and the reports received."""
        nodes: dict[str, dict] = {}
        runs: list[dict] = []
        failures: list[dict] = []
        for row in sorted(self.node.peers.membership.digest(), key=lambda r: r.name):
            report = reports.get(row.name)
            status = row.status
            state = "dead" if status in (DEAD, LEFT) else "suspect" if status == SUSPECT else "alive"
            caps = dict(row.caps)
            entry: dict[str, Any] = {
                "state": state, "address": row.address, "capacity": caps,
                # what gossip last said, for a live node that does not answer
                "used": {} if state == "dead" else
                {r: max(0.0, a - row.free.get(r, a)) for r, a in caps.items()},
                "running": None, "queued": None, "workers": None, "dashboard": None,
                "answered": report is not None,
            }
            if status == LEFT:
                entry["left"] = True  # it said goodbye: stopped, not crashed
            if report is not None:
                for key in ("capacity", "used", "running", "queued", "workers", "dashboard"):
                    entry[key] = report.get(key)
                runs.extend(report.get("runs") or [])
                failures.extend(report.get("failures") or [])
            nodes[row.name] = entry
        failures.sort(key=lambda f: f.get("time", 0.0), reverse=True)
        return {"node": self.name, "time": time.time(), "nodes": nodes, "runs": runs,
                "recent_failures": failures[:RECENT_FAILURES]}
