"""A joblib backend that runs ``Parallel`` work (scikit-learn's ``n_jobs``) on the cluster.

``import handoff.joblib; handoff.joblib.register()``, then
``with joblib.parallel_config(backend="handoff"): ...``. Each batch of calls that joblib
makes (it sizes batches by their duration, as for its own process backend) is one
``handoff.Executor`` submission; ``n_jobs=-1`` is the cluster's worker slots.
"""

from __future__ import annotations

from typing import Any, Callable

import joblib  # type: ignore[import-untyped]
from joblib._parallel_backends import (  # type: ignore[import-untyped]
    AutoBatchingMixin,
    ParallelBackendBase,
)

__all__ = ["HandoffBackend", "cluster_slots", "register"]


def cluster_slots(timeout: float = 10.0) -> int:
    """Worker processes (or threads) over the live nodes, this process's node included."""
    import handoff

    total = 0
    for name in handoff.discover_nodes():
        try:
            total += int(handoff.node_stats(name, timeout=timeout)["pool"]["workers"])
        except handoff.HandoffError:  # gone meanwhile, or not answering: it holds no slot
            continue
    return max(total, 1)


class HandoffBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ``ParallelBackendBase`` over a ``handoff.Executor``.

    Keyword arguments (``max_retries``, ``allocation_strategy``, ``timeout``) are the
    executor's; ``parallel_config(backend="handoff", max_retries=0)`` passes them through.
    """

    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = -1

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                 **executor_options: Any) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.executor_options = executor_options
        self.executor: Any = None
        self.parallel: Any = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            return max(cluster_slots() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **backend_args: Any) -> int:
        import handoff

        self.parallel = parallel
        if self.executor is None:
            self.executor = handoff.Executor(**self.executor_options)
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        future = self.executor._core.submit(self.executor._options, func, (), {}, cache=False)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, out: Any) -> Any:
        return out.result()

    def terminate(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel what joblib will not read (a call raised): pending batches never run."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)


def register() -> None:
    """Register the joblib backend ``"handoff"``."""
    joblib.register_parallel_backend("handoff", HandoffBackend)
