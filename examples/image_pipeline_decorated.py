"""The image pipeline of ``image_pipeline.py``, written with ``@handoff.fn``.

    python examples/image_pipeline_decorated.py [--images 5] [--workers K] [--cache-dir DIR] [--runs 2] [--out DIR]

Each call of a decorated function adds one function to the DAG and returns a ``Ref``; refs
passed to other calls, also inside lists and dicts, become its edges. Here every image is
its own chain (load, resize, four effects), so images go through the pipeline in parallel.
Edge detection costs a gpu and is cached (``cache=True``): a second run in the same cache
directory loads it from the node that computed it instead of running it again, which the
"edge detection" line shows. ``summarize`` returns a ``tuple``, unpacked into two refs.
With ``--out DIR`` the thumbnails (PPM) and the collage (PNG) are written there; without
it they are only encoded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import handoff
from handoff.demo import GPU_STEP, ensure_gpu
from handoff.demo.pipelines import (
    Image,
    assess_quality,
    blur_image,
    create_collage,
    create_thumbnail,
    edge_detection,
    grayscale,
    load_image,
    resize_image,
    save_image,
    sepia,
)

CPU = {"cpu": 1}


@handoff.fn(cost=CPU)
def load(name: str, seed: int) -> Image:
    return load_image(name, seed)


@handoff.fn(cost=CPU)
def resize(img: Image, width: int, height: int) -> Image:
    return resize_image(img, width, height)


@handoff.fn(cost=CPU)
def effect(img: Image, name: str) -> Image:
    transforms = {"grayscale": grayscale, "sepia": sepia, "blur": blur_image,
                  "thumbnail": lambda i: create_thumbnail(i, 48)}
    return transforms[name](img)


@handoff.fn(cost={"cpu": 1, "gpu": 1}, cache=True)
def edges(img: Image) -> Image:
    return edge_detection(img)


@handoff.fn(cost=CPU)
def summarize(effects: dict[str, dict[str, Image]]) -> tuple[dict[str, dict[str, float]], Image]:
    """Quality metrics per effect and image, and the collage of every effect's images."""
    quality = {f"{kind}_{name}": assess_quality(img)
               for kind, images in effects.items() for name, img in images.items()}
    everything = [img for images in effects.values() for img in images.values()]
    return quality, create_collage(everything, 640, 480)


@handoff.fn(cost=CPU)
def save(images: dict[str, Image], prefix: str, out: str | None, ext: str) -> dict[str, dict[str, Any]]:
    """Each image encoded and, given a directory, written there (PNG, or PPM for ``ext="ppm"``);
    with no directory it is only encoded, as PNG."""
    return {name: save_image(img, os.path.join(out, f"{prefix}_{name.rsplit('.', 1)[0]}.{ext}") if out
                             else None)
            for name, img in images.items()}


def pipeline(n_images: int, out: str | None) -> dict[str, handoff.Ref[Any]]:
    """The refs the script wants back; nothing runs yet."""
    names = [f"image_{i}.jpg" for i in range(1, n_images + 1)]
    resized = {name: resize(load(name, 0), 160, 120) for name in names}
    effects = {
        "grayscale": {n: effect(img, "grayscale") for n, img in resized.items()},
        "sepia": {n: effect(img, "sepia") for n, img in resized.items()},
        "blur": {n: effect(img, "blur") for n, img in resized.items()},
        "edge": {n: edges(img) for n, img in resized.items()},
    }
    quality, collage = summarize(effects)  # a dict of dicts of refs: each is an edge
    thumbs = {n: effect(img, "thumbnail") for n, img in resized.items()}
    return {"quality": quality, "collage": save({"collage": collage}, "final", out, "png"),
            "thumbnails": save(thumbs, "thumb", out, "ppm"), "edges": effects["edge"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5, help="number of images (default 5)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: cpu count)")
    parser.add_argument("--cache-dir", default=None, help="the result cache (default: the user's)")
    parser.add_argument("--runs", type=int, default=2, help="times to run the pipeline (default 2)")
    parser.add_argument("--out", default=None, help="write the thumbnails and the collage here")
    args = parser.parse_args(argv)

    handoff.start(workers=args.workers, cache_dir=args.cache_dir)
    if ensure_gpu():
        print(f"No node has a gpu: registered {handoff.node_name()!r} with gpu=1")
    for run in range(1, args.runs + 1):
        refs = pipeline(args.images, args.out)
        dag = handoff.dag_of(refs)
        t0 = time.perf_counter()
        result = handoff.execute(dag, allocation_strategy="cost_optimized")
        wall = time.perf_counter() - t0
        edge_ids = [ref.id for ref in refs["edges"].values()]
        loaded = sum(result.stats[fid].cached for fid in edge_ids)
        print(f"Run {run}: {len(dag)} functions in {wall:.2f} s; edge detection: "
              f"{len(edge_ids) - loaded} computed, {loaded} loaded from the cache")
    out = handoff.run({k: refs[k] for k in ("quality", "collage", "thumbnails")})
    collage = out["collage"]["collage"]
    where = f"written to {args.out}" if args.out else "encoded, not written (no --out)"
    print(f"Collage {collage['shape'][1]}x{collage['shape'][0]}: {collage['bytes']} bytes; "
          f"thumbnails: {len(out['thumbnails'])} images, "
          f"{sum(t['bytes'] for t in out['thumbnails'].values())} bytes; {where}")
    print("Quality metrics:")
    for image_id, m in sorted(out["quality"].items()):
        print(f"  {image_id}: Sharpness: {m['sharpness']:.1f}, Noise: {m['noise_level']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())  # handoff stops its embedded node at exit
