"""See a run: a photo batch on a cluster, with live progress, a trace and an HTML report.

    # three nodes, in other terminals (or on other machines, with --key-file):
    python -m handoff.node --name n1 --listen tcp://127.0.0.1:5601 --resources cpu=2
    python -m handoff.node --name n2 --listen tcp://127.0.0.1:5602 --join tcp://127.0.0.1:5601 --resources cpu=2
    python -m handoff.node --name n3 --listen tcp://127.0.0.1:5603 --join tcp://127.0.0.1:5601 --resources cpu=2
    # then:
    python examples/see_a_run.py tcp://127.0.0.1:5601 --out run/ [--images 24]

This process joins the cluster with no resources of its own (so every function runs on the
nodes), prints the DAG as Mermaid text, runs it with a progress display per function group,
and writes ``report.html`` (open it in a browser, offline), ``trace.json`` (open it in
https://ui.perfetto.dev or chrome://tracing) and the images to ``--out``. One step fails on
its first attempt on purpose, so the report has a failure to show.
"""

from __future__ import annotations

import argparse
import os
import sys

import handoff
from handoff import DAG, Function
from handoff.demo.pipelines import (
    blur_image, create_collage, create_thumbnail, edge_detection, grayscale, load_image,
    resize_image, save_image, sepia,
)

EFFECTS = {"grayscale": grayscale, "sepia": sepia, "blur": blur_image, "edges": edge_detection}


def load(name: str, seed: int):
    return resize_image(load_image(name, seed), 320, 240)


def effect(img, name: str):
    return EFFECTS[name](img)


def thumbnail(img, marker: str):
    """Fails the first time it runs for ``marker`` (a file it then creates), like a flaky disk."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise OSError(f"thumbnail cache not ready ({os.path.basename(marker)})")
    return create_thumbnail(img, 64)


def collage(*images):
    return create_collage(list(images), 960, 720)


def save(img, path: str):
    return save_image(img, path)


CPU = {"cpu": 1}


def photo_batch(n: int, out: str) -> DAG:
    """Per photo: load, four effects, a thumbnail of the sepia one; then a collage of the edges
    and thumbnails, saved as PNG. Every step costs a cpu, so it runs on the nodes."""
    dag = DAG("photo-batch")
    edges = []
    for i in range(n):
        src = f"load-{i}"
        dag.add_function(Function(id=src, code=load, extra_args=[f"photo_{i}.jpg", i], group="load",
                                  cost=CPU))
        for name in EFFECTS:
            dag.add_function(Function(id=f"{name}-{i}", code=effect, args=[src], extra_args=[name],
                                      group=name, cost=CPU))
        edges.append(f"edges-{i}")
        marker = os.path.join(out, f".thumb-{i}") if i == 0 else os.devnull
        dag.add_function(Function(id=f"thumb-{i}", code=thumbnail, args=[f"sepia-{i}"],
                                  extra_args=[marker], group="thumbnail", cost=CPU))
    dag.add_function(Function(id="collage", code=collage, args=edges + [f"thumb-{i}" for i in range(n)],
                              cost=CPU))
    dag.add_function(Function(id="save", code=save, args=["collage"], cost=CPU,
                              extra_args=[os.path.join(out, "collage.png")]))
    return dag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="address of any node of the cluster, tcp://HOST:PORT")
    parser.add_argument("--out", default="run", help="directory for the report, trace and images")
    parser.add_argument("--images", type=int, default=24, help="number of photos (default 24)")
    parser.add_argument("--key-file", default=None, help="the cluster key, if the cluster has one")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    for i in range(args.images):  # each run starts with a cold "cache"
        marker = os.path.join(out, f".thumb-{i}")
        if os.path.exists(marker):
            os.unlink(marker)

    handoff.start(join=args.address, resources={"cpu": 0}, key_file=args.key_file)
    dag = photo_batch(args.images, out)
    print(f"DAG {dag.id!r} as Mermaid ({len(dag)} functions):\n{dag.to_mermaid()}")
    result = handoff.execute(dag, progress=True, max_retries=2, allocation_strategy="load_balanced")
    saved = result.results["save"]
    print(f"Collage: {saved['saved_path']} ({saved['shape'][1]}x{saved['shape'][0]})")
    print("Functions per node:", dict(sorted(
        (node, list(result.allocations.values()).count(node)) for node in set(result.allocations.values()))))
    print(f"Trace: {result.to_trace(os.path.join(out, 'trace.json'))}")
    print(f"Report: {result.report(os.path.join(out, 'report.html'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
