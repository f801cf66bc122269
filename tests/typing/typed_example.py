"""Must type-check under mypy --strict: what a type checker knows about decorated functions.

Checked by tests/unit/test_typing.py, never run.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

import handoff
from handoff import Ref


@handoff.fn
def load(path: str) -> npt.NDArray[np.float64]:
    return np.zeros(3)


@handoff.fn(cost={"cpu": 1}, cache=True)
def stats(a: npt.NDArray[np.float64]) -> tuple[float, int]:
    return float(a.mean()), len(a)


@handoff.fn
def label(mean: float, count: int, prefix: str = "") -> str:
    return f"{prefix}{mean}/{count}"


def build() -> tuple[Ref[npt.NDArray[np.float64]], Ref[str]]:
    array: Ref[npt.NDArray[np.float64]] = load("a.npy")
    pair: Ref[tuple[float, int]] = stats(array)
    mean, count = pair.unpack()
    typed_mean: Ref[float] = mean
    typed_count: Ref[int] = count
    return array, label(typed_mean, typed_count, prefix="mean ")


def values() -> None:
    array, text = build()
    out: str = handoff.run(text)
    arrays: list[npt.NDArray[np.float64]] = handoff.run([array, array])
    by_name: dict[str, str] = handoff.run({"text": text})
    here: npt.NDArray[np.float64] = load.local("b.npy")
    dag: handoff.DAG = handoff.dag_of([array, text])
    print(out, arrays, by_name, here, dag)
