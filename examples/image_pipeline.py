"""The Elixir guide's image-processing pipeline, on one machine.

    python examples/image_pipeline.py [--images 5] [--workers K]

Images are numpy arrays; short sleeps stand in for the time real image work takes. The
DAG (``handoff.demo.image_pipeline_dag``) has 11 functions: load, resize, four effects in
parallel (grayscale, sepia, blur, edge detection), thumbnails, a quality report, a collage
and two saves (which record what they would write; nothing touches the disk). Every
function costs ``{"cpu": 1}``; ``edge_detection`` costs ``{"cpu": 1, "gpu": 1}``.

A node detects no gpu by itself, so on a machine alone the gpu step would fit no node and
the run would fail with an AllocationError. This script therefore registers the local node
with ``gpu=1`` (its other capacities unchanged) when no node of the cluster has a gpu; see
``handoff.demo.ensure_gpu``. ``examples/cluster_image_pipeline.py`` runs the same DAG on a
cluster whose gpu belongs to another node.
"""

from __future__ import annotations

import argparse
import sys
import time

import handoff
from handoff.demo import (
    GPU_STEP,
    check_gpu_placement,
    ensure_gpu,
    format_allocations,
    format_image_report,
    format_timing,
    image_pipeline_dag,
)


def describe(dag: handoff.DAG) -> str:
    """One line per function: its dependencies and its cost."""
    deps = {fn.id: ", ".join(map(str, fn.dependency_ids)) or "-" for fn in dag}
    width = max(map(len, deps.values()))
    return "\n".join(f"  {fn.id!s:<18} <- {deps[fn.id]:<{width}}  cost {fn.cost}" for fn in dag)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5, help="number of images (default 5)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: cpu count)")
    args = parser.parse_args(argv)

    handoff.start(workers=args.workers)
    here = handoff.node_name()
    print(f"Local node {here!r}: {handoff.discover_nodes()[here]}")
    if ensure_gpu():
        print(f"No node has a gpu: registered {here!r} with gpu=1 so {GPU_STEP} can be placed")

    dag = image_pipeline_dag(args.images)
    dag.validate()
    print(f"\nDAG {dag.id!r}:\n{describe(dag)}")
    print(f"\nExecuting the image pipeline on {args.images} images...\n")
    t0 = time.perf_counter()
    result = handoff.execute(dag, allocation_strategy="cost_optimized", max_retries=2)
    wall = time.perf_counter() - t0

    print("Pipeline completed successfully!")
    print(format_image_report(result))
    print("\nNode allocation:\n" + format_allocations(result))
    print("\nTiming:\n" + format_timing(result, wall))
    node, caps = check_gpu_placement(result)
    print(f"\n{GPU_STEP} ran on {node!r}, which has gpu={caps['gpu']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())  # handoff stops its embedded node at exit
