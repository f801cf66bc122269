"""The Elixir guides' "Getting started" and "Simple data pipeline" examples, in Python.

    python examples/simple_pipeline.py [--seed 1] [--threshold 30] [--operation square]

The DAGs come from ``handoff.demo`` (``getting_started_dag`` and ``simple_pipeline_dag``),
where every task is a plain module-level function; read that module for the
``Function(...)`` definitions. This script runs them on an embedded local node, then
re-runs the data pipeline with changed ``extra_args`` as the guide's "Experiment" section
does, and shows a validation error.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import handoff
from handoff import DAG, Function
from handoff.demo import format_allocations, getting_started_dag, simple_pipeline_dag


def with_extra_args(dag: DAG, new_id: str, changes: dict) -> DAG:
    """A copy of ``dag`` named ``new_id``, with ``changes[fid]`` as that function's extra_args."""
    copy = DAG(new_id)
    for fn in dag:
        if fn.id in changes:
            fn = dataclasses.replace(fn, extra_args=changes[fn.id])
        copy.add_function(fn)
    return copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="seed of the data (default 1)")
    parser.add_argument("--threshold", type=float, default=30, help="filter threshold (default 30)")
    parser.add_argument("--operation", default="square", choices=["square", "sqrt", "log"])
    args = parser.parse_args(argv)

    # Getting started: data_source -> double -> sum.
    dag = getting_started_dag()
    dag.validate()
    result = handoff.execute(dag)
    print(f"The sum is: {result.results['sum']}")
    print(f"Totals (as_list): {result.results['totals']}")
    print(result.results["parametrized"])

    # The simple data pipeline; its report is pinned to this node (the guide's Node.self()).
    dag = simple_pipeline_dag(
        threshold=args.threshold, operation=args.operation, seed=args.seed,
        output_node=handoff.node_name(),
    )
    dag.validate()
    print("\nExecuting data pipeline...\n")
    result = handoff.execute(dag)
    print(result.results["format_output"])
    print("Function allocations:\n" + format_allocations(result))

    # Experiment: same functions, a higher threshold and another transformation.
    modified = with_extra_args(dag, "simple_pipeline_dag_modified", {
        "filter_data": [50],
        "transform_data": ["sqrt"],
    })
    modified.validate()
    print("\nExecuting modified data pipeline...\n")
    result = handoff.execute(modified)
    print(result.results["format_output"])
    print("Modified DAG allocations:\n" + format_allocations(result))

    # Error handling: a dependency that is not in the DAG.
    invalid = DAG().add_function(Function(id="invalid", args=["non_existent"], code=print))
    try:
        invalid.validate()
        print("\nDAG is valid")
    except handoff.MissingFunctionError as exc:
        print(f"\nDAG has missing function: {exc.missing_id!r} ({exc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())  # handoff stops its embedded node at exit
