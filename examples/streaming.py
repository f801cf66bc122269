"""Streaming: a DAG as a long-lived pipeline that items are pushed through.

``record -> load (2 replicas) -> embed (a "model" loaded once per replica, batches of 8)``:
records are pushed one by one, flow through the stages in worker processes, and come out in
push order. Record 13 is corrupt: its load raises, so its output is a ``handoff.ItemError``
and the pipeline goes on. Then the same DAG once more with ``map``.

    python examples/streaming.py [--records 40]
"""

from __future__ import annotations

import argparse

import numpy as np

import handoff
from handoff import DAG, Function

DIM = 16


def load(n: int) -> np.ndarray:
    """Stands for reading record ``n`` from storage."""
    if n == 13:
        raise ValueError(f"record {n} is corrupt")
    return np.random.default_rng(n).random(DIM)


def load_model() -> dict:
    """Runs once per replica, when it starts: the state its calls share."""
    return {"weights": np.linspace(0.0, 1.0, DIM), "batches": 0}


def embed(state: dict, batch: list) -> tuple[list, dict]:
    """One call per batch: a value per item, and the new state."""
    values = [float(v @ state["weights"]) for v in batch]
    return values, {**state, "batches": state["batches"] + 1}


def pipeline() -> DAG:
    dag = DAG("embed")
    dag.add_function(Function(id="record", type="input"))
    dag.add_function(Function(id="load", args=["record"], code=load, parallelism=2))
    dag.add_function(Function(id="embed", args=["load"], code=embed, init=load_model,
                              batch_size=8, batch_timeout=0.05))
    return dag


def expected(n: int) -> float | None:
    """The same computation in this process, to check the pipeline's answers."""
    if n == 13:
        return None
    return float(load(n) @ load_model()["weights"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=40)
    args = parser.parse_args()
    n = args.records

    with handoff.stream(pipeline(), max_pending=100) as pipe:
        for record in range(n):
            pipe.push(record)  # blocks if 100 records are in flight
        pipe.close()  # no more input: the last partial batch runs, results() ends
        outputs = list(pipe.results())
        stats = pipe.stats()

    matches = 0
    for record, out in enumerate(outputs):
        if isinstance(out, handoff.ItemError):
            print(f"record {out.item}: failed in {out.function_id!r}: {out.exc_type}: {out.message}")
        elif abs(out - expected(record)) < 1e-9:  # type: ignore[operator]
            matches += 1
    print(f"{matches} of {n - 1} embeddings match a local computation, in push order")
    for fid, info in stats["functions"].items():
        print(f"{fid}: {info['items']} items on {', '.join(info['replicas'])}")

    # the same pipeline as one bounded call: at most max_pending records in flight
    first = list(handoff.stream(pipeline(), max_pending=4).map(range(5)))
    print("map:", [round(v, 4) for v in first])


if __name__ == "__main__":
    main()
