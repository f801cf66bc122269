"""Test your pipelines against real nodes: LocalCluster, membership waits, pytest fixtures.

Import it explicitly (``from handoff.testing import LocalCluster``); the pytest fixtures
``local_cluster`` and ``handoff_driver`` come from ``handoff.testing.plugin``, which pytest
loads by itself once handoff is installed.
"""

from handoff.testing.cluster import LocalCluster, NodeInfo
from handoff.testing.members import wait_for_departure, wait_for_members, wait_until
from handoff.testing.threads import thread_inside

__all__ = ["LocalCluster", "NodeInfo", "wait_for_members", "wait_for_departure", "thread_inside", "wait_until"]
