"""pytest fixtures ``local_cluster`` and ``handoff_driver``; pytest loads this by itself
(the ``pytest11`` entry point), or add ``-p handoff.testing.plugin``."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import pytest


@pytest.fixture
def local_cluster() -> Iterator[Callable[..., Any]]:
    """A factory: ``local_cluster(n, resources=..., ...)`` takes ``LocalCluster``'s arguments
    and returns a started cluster; every cluster it made is closed when the test ends."""
    from handoff.testing import LocalCluster

    made: list[LocalCluster] = []

    def make(n: int = 2, **options: Any) -> LocalCluster:
        cluster = LocalCluster(n, **options)
        made.append(cluster)
        return cluster

    yield make
    errors = []
    for cluster in reversed(made):
        try:
            cluster.close()
        except Exception as exc:  # close the others all the same
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def handoff_driver() -> Iterator[Callable[..., str]]:
    """A factory: ``handoff_driver(cluster, name="driver", resources=None, **start_options)``
    stops any node already running in this process, starts one joined to ``cluster`` (no
    resources of its own unless given), waits until it sees every node and returns its name;
    stopped when the test ends."""
    import handoff

    def connect(cluster: Any, name: str = "driver", resources: Mapping[str, float] | None = None,
                **start_options: Any) -> str:
        handoff.stop()  # a node started earlier here (execute() with no start) is outside the cluster
        return cluster.connect(name, resources, **start_options)

    try:
        yield connect
    finally:
        handoff.stop()
