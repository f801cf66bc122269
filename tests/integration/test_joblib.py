"""The joblib backend "handoff": scikit-learn's GridSearchCV with n_jobs=-1 on one node
gives what joblib's default backend gives (on a 3-node cluster: test_executor_cluster.py);
the example script runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import joblib
import pytest

import handoff
import handoff.joblib

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
GRID = {"C": [0.1, 10.0], "gamma": [0.05, 0.5]}


def grid_search(backend):
    # imported here: worker processes import this module to run square(), and need not
    # import scikit-learn for that
    from sklearn.datasets import make_classification
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = make_classification(n_samples=120, n_features=6, random_state=0)
    with joblib.parallel_config(backend=backend):
        return GridSearchCV(SVC(), GRID, cv=3, n_jobs=-1).fit(X, y)


def assert_same(a, b):
    assert a.best_params_ == b.best_params_
    for key in ("mean_test_score", "std_test_score", "split0_test_score", "split2_test_score"):
        assert list(a.cv_results_[key]) == list(b.cv_results_[key]), key


def square(x):
    return x * x


@pytest.fixture
def one_node():
    handoff.stop()
    handoff.start(workers=2)
    handoff.joblib.register()
    yield
    handoff.stop()


@pytest.mark.slow
def test_grid_search_on_one_node_matches_the_default_backend(one_node):
    assert_same(grid_search("handoff"), grid_search("loky"))


def test_n_jobs_minus_one_is_the_cluster_worker_slots(one_node):
    backend = handoff.joblib.HandoffBackend()
    assert backend.effective_n_jobs(-1) == 2
    assert backend.effective_n_jobs(-2) == 1
    assert backend.effective_n_jobs(3) == 3
    with pytest.raises(ValueError):
        backend.effective_n_jobs(0)


def test_parallel_calls_and_errors(one_node):
    with joblib.parallel_config(backend="handoff"):
        assert joblib.Parallel(n_jobs=-1)(joblib.delayed(square)(i) for i in range(100)) == [
            i * i for i in range(100)
        ]
        with pytest.raises(TypeError) as info:  # the remote exception's own type
            joblib.Parallel(n_jobs=2)(joblib.delayed(square)(x) for x in [1, None, 3])
        assert isinstance(info.value, handoff.FunctionError)


@pytest.mark.slow
def test_the_example_script_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(handoff.__file__).resolve().parents[1]), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
    proc = subprocess.run(
        [sys.executable, "examples/sklearn_grid_search.py", "--samples", "120"], cwd=ROOT,
        capture_output=True, text=True, timeout=200, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "same results" in proc.stdout
    assert "handoff: best {" in proc.stdout
