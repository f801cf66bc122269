"""``/metrics``: a dashboard snapshot in Prometheus' text format (prometheus-client).

Cluster gauges (nodes by state, each node's load and resources, runs in flight) come from the
status document, so any node's dashboard shows the whole cluster; counters (attempts, bytes,
dropped messages) are this node's own, so scrape every node for cluster totals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from handoff.node.dashboard import Snapshot

__all__ = ["render_metrics", "SnapshotCollector"]

STATES = ("alive", "suspect", "dead")


class SnapshotCollector(Collector):
    """Metrics of one snapshot (a fresh registry per scrape: nothing accumulates here)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        state, stats = self.snapshot.state, self.snapshot.stats
        me = state.get("node", "")
        nodes = state.get("nodes", {})
        count = GaugeMetricFamily("handoff_nodes", "Cluster members by state", labels=["state"])
        for name in STATES:
            count.add_metric([name], sum(1 for n in nodes.values() if n["state"] == name))
        yield count
        running = GaugeMetricFamily("handoff_node_running", "Functions running on a node's workers",
                                    labels=["node"])
        queued = GaugeMetricFamily("handoff_node_queued", "Functions sent to a node and not "
                                   "running yet (fetching inputs, waiting for resources or a worker)",
                                   labels=["node"])
        capacity = GaugeMetricFamily("handoff_node_capacity", "A node's total capacity",
                                     labels=["node", "resource"])
        used = GaugeMetricFamily("handoff_node_used", "A node's resources claimed by running work",
                                 labels=["node", "resource"])
        for name, node in nodes.items():
            if node["running"] is not None:
                running.add_metric([name], node["running"])
                queued.add_metric([name], node["queued"])
            for resource, amount in node["capacity"].items():
                capacity.add_metric([name, resource], amount)
            for resource, amount in node["used"].items():
                used.add_metric([name, resource], amount)
        yield from (running, queued, capacity, used)
        runs = state.get("runs", [])
        yield GaugeMetricFamily("handoff_runs_in_flight", "Runs in flight in the cluster",
                                value=len(runs))
        progress = GaugeMetricFamily("handoff_run_functions", "Functions of a run in flight, by "
                                     "where they are", labels=["dag_id", "driver", "state"])
        for run in runs:
            key = [run["dag_id"], run["driver"]]
            progress.add_metric(key + ["done"], run["done"])
            progress.add_metric(key + ["total"], run["total"])
            progress.add_metric(key + ["running"], run["running"])
            progress.add_metric(key + ["waiting"], run["waiting_count"])
        yield progress
        counters = stats.get("counters", {})
        attempts = CounterMetricFamily("handoff_attempts", f"Attempts that ended on node {me}",
                                       labels=["node", "outcome"])
        attempts.add_metric([me, "succeeded"], counters.get("attempts_succeeded", 0))
        attempts.add_metric([me, "failed"], counters.get("attempts_failed", 0))
        yield attempts
        store = stats.get("store", {})
        for name, value, text in (
            ("handoff_bytes_fetched", counters.get("bytes_fetched", 0), "Bytes of values fetched from peers"),
            ("handoff_bytes_served", store.get("bytes_served", 0), "Bytes of values served to peers"),
            ("handoff_dropped_messages", stats.get("dropped_messages", 0), "Bad messages dropped"),
            ("handoff_rejected_connections", stats.get("rejected_connections", 0),
             "Connections that failed to authenticate"),
        ):
            yield _counter(name, text, me, value)
        for name, value, text in (
            ("handoff_store_memory_bytes", store.get("memory_bytes", 0), "Bytes of values in memory"),
            ("handoff_store_disk_bytes", store.get("disk_bytes", 0), "Bytes of values spilled to disk"),
            ("handoff_store_values", store.get("values", 0), "Values held"),
            ("handoff_runs_orchestrated", stats.get("runs", 0), "Runs this node's driver orchestrates"),
        ):
            gauge = GaugeMetricFamily(name, text, labels=["node"])
            gauge.add_metric([me], value)
            yield gauge


def _counter(name: str, text: str, node: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=["node"])
    family.add_metric([node], value)
    return family


def render_metrics(snapshot: Snapshot) -> bytes:
    """The snapshot as Prometheus text exposition."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)
