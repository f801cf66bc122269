"""The image-processing pipeline on a cluster: join it, run, check where the gpu step ran.

    # a node with a gpu, in another terminal (or on another machine, with --key-file):
    python -m handoff.node --name gpu1 --listen tcp://127.0.0.1:5555 \\
        --resources cpu=2,gpu=1,memory=4000
    # then:
    python examples/cluster_image_pipeline.py tcp://127.0.0.1:5555 [--images 5]

This process starts an embedded node that joins the cluster at ADDRESS and becomes a full
peer (it runs cpu steps too). It does not give itself a gpu: ``edge_detection`` must be
placed on a node that has one, and the script exits with status 1 if it ran anywhere else,
or with status 2 if no node of the cluster has a gpu. To join a cluster over the network,
pass ``--listen tcp://THIS_HOST:PORT`` and the cluster's ``--key-file``.
"""

from __future__ import annotations

import argparse
import sys
import time

import handoff
from handoff.demo import (
    GPU_STEP,
    check_gpu_placement,
    format_allocations,
    format_image_report,
    format_timing,
    image_pipeline_dag,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="address of any node of the cluster, tcp://HOST:PORT")
    parser.add_argument("--images", type=int, default=5, help="number of images (default 5)")
    parser.add_argument("--name", default=None, help="this node's name (default: generated)")
    parser.add_argument("--listen", default=None, help="this node's address (default: loopback)")
    parser.add_argument("--key-file", default=None, help="the cluster key, if the cluster has one")
    parser.add_argument("--workers", type=int, default=None, help="local worker processes")
    args = parser.parse_args(argv)

    handoff.start(name=args.name, listen=args.listen, join=args.address,
                  key_file=args.key_file, workers=args.workers)
    nodes = handoff.discover_nodes()
    print(f"Joined the cluster at {args.address} as {handoff.node_name()!r}; nodes:")
    for name, caps in sorted(nodes.items()):
        print(f"  {name}: {caps}")
    if not any(caps.get("gpu", 0) >= 1 for caps in nodes.values()):
        print(f"No node of the cluster has a gpu, so {GPU_STEP} cannot be placed; start one "
              "with python -m handoff.node --resources ...,gpu=1", file=sys.stderr)
        return 2

    dag = image_pipeline_dag(args.images, dag_id="cluster_img_proc_dag")
    dag.validate()
    print(f"\nExecuting the image pipeline on {args.images} images across {len(nodes)} nodes...\n")
    t0 = time.perf_counter()
    result = handoff.execute(dag, allocation_strategy="cost_optimized", max_retries=2)
    wall = time.perf_counter() - t0

    print("Pipeline completed successfully!")
    print(format_image_report(result, per_image=False))
    print("\nNode allocation:\n" + format_allocations(result))
    print("\nTiming:\n" + format_timing(result, wall))
    try:
        node, caps = check_gpu_placement(result)
    except RuntimeError as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    print(f"\n{GPU_STEP} ran on {node!r}, which has gpu={caps['gpu']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())  # handoff stops its embedded node at exit
