"""A scikit-learn grid search on Handoff, through joblib: existing code, one ``with`` block.

    python examples/sklearn_grid_search.py [--join tcp://HOST:PORT] [--samples 300]

Fits ``GridSearchCV(SVC(), ...)`` with ``n_jobs=-1`` twice on the same generated dataset:
with joblib's default backend (loky, on this machine), then with the ``"handoff"`` backend
(an embedded node, or the cluster that ``--join`` names: every fold of every candidate is
a call on some node's workers). Prints both searches' best parameters and mean scores,
which are the same, and the wall time of each.
"""

from __future__ import annotations

import argparse
import time

import joblib
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import handoff
import handoff.joblib

GRID = {"C": [0.1, 1.0, 10.0], "gamma": [0.01, 0.1, 1.0]}


def search(X, y, backend: str) -> tuple[GridSearchCV, float]:
    started = time.perf_counter()
    with joblib.parallel_config(backend=backend):
        fitted = GridSearchCV(SVC(), GRID, cv=3, n_jobs=-1).fit(X, y)
    return fitted, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--join", help="address of a cluster node (default: an embedded node)")
    parser.add_argument("--samples", type=int, default=300, help="dataset size (default 300)")
    args = parser.parse_args(argv)

    X, y = make_classification(n_samples=args.samples, n_features=10, random_state=0)
    handoff.start(join=args.join, resources={"cpu": 0} if args.join else None)
    handoff.joblib.register()
    try:
        local, local_time = search(X, y, "loky")
        remote, remote_time = search(X, y, "handoff")
        print(f"worker slots (n_jobs=-1): {handoff.joblib.cluster_slots()}")
        print(f"loky:    best {local.best_params_} score {local.best_score_:.4f} in {local_time:.2f} s")
        print(f"handoff: best {remote.best_params_} score {remote.best_score_:.4f} in {remote_time:.2f} s")
        same = (
            local.best_params_ == remote.best_params_
            and list(local.cv_results_["mean_test_score"]) == list(remote.cv_results_["mean_test_score"])
        )
        print("same results" if same else "DIFFERENT results")
        return 0 if same else 1
    finally:
        handoff.stop()


if __name__ == "__main__":
    raise SystemExit(main())
