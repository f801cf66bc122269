"""The Elixir guides' example pipelines as DAG builders.

Every task is a module-level function here, so worker processes (and other nodes, which
have the same package installed) import it by reference instead of receiving its code.
The image pipeline does real numpy work on generated pictures (grayscale, sepia, blur, Sobel
edges, thumbnails, a collage) and writes the thumbnails (PPM) and the collage (PNG) to an
output directory; the whole demo runs in a few seconds.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import zlib
from typing import Any, Callable, Hashable, Mapping

import numpy as np

import handoff
from handoff import DAG, ExecutionResult, Function
from handoff.demo.imagefiles import png_bytes, ppm_bytes


# ---- getting started: data_source -> double -> sum ---------------------------------------


def identity(value: Any) -> Any:
    return value


def double(x: float) -> float:
    return x * 2


def map_list(items: list, fn: Callable[[Any], Any]) -> list:
    """``Enum.map/2``: the dependency's result comes first, the function from extra_args."""
    return [fn(x) for x in items]


def inspect_value(value: Any, label: str) -> str:
    """``IO.inspect/2`` with a label, returning the text instead of printing it."""
    return f"{label}: {value!r}"


def sum_each(lists: list[list[float]]) -> list[float]:
    """Receives every dependency's result in one list (``argument_inclusion="as_list"``)."""
    return [sum(values) for values in lists]


def getting_started_dag(dag_id: Hashable = "getting_started") -> DAG:
    """The "Getting started" DAG: ``sum`` is 30, ``totals`` is ``[15, 30]``."""
    return (
        DAG(dag_id)
        .add_function(Function(id="data_source", code=identity, extra_args=[[1, 2, 3, 4, 5]]))
        .add_function(Function(
            id="double", args=["data_source"], code=map_list, extra_args=[double],
        ))
        .add_function(Function(id="sum", args=["double"], code=sum))
        .add_function(Function(
            id="parametrized", args=["data_source"], code=inspect_value,
            extra_args=["inspected with options"],
        ))
        .add_function(Function(
            id="totals", args=["data_source", "double"], code=sum_each,
            argument_inclusion="as_list",
        ))
    )


# ---- simple data pipeline: generate -> filter -> transform -> aggregate -> format ---------


def generate_data(count: int = 100, seed: int | None = None) -> list[float]:
    """``count`` random values in [0, 100); the same values for the same seed."""
    rng = random.Random(seed)
    return [rng.random() * 100 for _ in range(count)]


def filter_data(data: list[float], threshold: float) -> list[float]:
    return [x for x in data if x > threshold]


TRANSFORMS: dict[str, Callable[[float], float]] = {
    "square": lambda x: x * x,
    "sqrt": math.sqrt,
    "log": math.log,
}


def transform_data(data: list[float], operation: str) -> list[float]:
    """Apply ``operation`` (square, sqrt or log) to every value; anything else leaves them."""
    fn = TRANSFORMS.get(operation)
    return list(data) if fn is None else [fn(x) for x in data]


def aggregate_data(data: list[float]) -> dict[str, float]:
    return {
        "count": len(data),
        "min": min(data),
        "max": max(data),
        "mean": statistics.mean(data),
        "median": statistics.median(data),
        "stddev": statistics.pstdev(data),
    }


def format_output(stats: Mapping[str, float], original_data: list[float]) -> str:
    return (
        "DATA PIPELINE RESULTS\n"
        "---------------------\n"
        f"Original filtered data count: {len(original_data)}\n"
        "\n"
        "STATISTICS:\n"
        f"  Count:  {stats['count']}\n"
        f"  Min:    {stats['min']:.2f}\n"
        f"  Max:    {stats['max']:.2f}\n"
        f"  Mean:   {stats['mean']:.2f}\n"
        f"  Median: {stats['median']:.2f}\n"
        f"  StdDev: {stats['stddev']:.2f}\n"
    )


def simple_pipeline_dag(
    dag_id: Hashable = "simple_pipeline_dag",
    *,
    threshold: float = 30,
    operation: str = "square",
    count: int = 100,
    seed: int | None = 1,
    output_node: str | None = None,
) -> DAG:
    """The "Simple data pipeline" DAG; ``format_output`` is the printable report.

    ``seed`` is fixed by default so runs are repeatable (None draws fresh data).
    ``output_node`` pins the report to a node, as the guide pins it to ``Node.self()``.
    """
    return (
        DAG(dag_id)
        .add_function(Function(id="generate_data", code=generate_data, extra_args=[count, seed]))
        .add_function(Function(
            id="filter_data", args=["generate_data"], code=filter_data, extra_args=[threshold],
        ))
        .add_function(Function(
            id="transform_data", args=["filter_data"], code=transform_data, extra_args=[operation],
        ))
        .add_function(Function(id="aggregate_data", args=["transform_data"], code=aggregate_data))
        .add_function(Function(
            id="format_output", args=["aggregate_data", "filter_data"], code=format_output,
            node=output_node,
        ))
    )


# ---- image processing: numpy arrays as images ----------------------------------------------

Image = np.ndarray  # height x width x 3, uint8
SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)


def load_image(name: str, seed: int) -> Image:
    """A synthetic picture (stripes, a disc and noise) of a random size, like a loaded file."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    h, w = int(rng.integers(120, 181)), int(rng.integers(160, 241))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    freq = rng.uniform(0.03, 0.2, 3)
    channels = [127 + 100 * np.sin(freq[c] * (x + (c + 1) * y)) for c in range(3)]
    img = np.stack(channels, axis=-1)
    cx, cy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)
    disc = (x - cx) ** 2 + (y - cy) ** 2 < (h / 4) ** 2
    img[disc] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def resize_image(img: Image, width: int, height: int) -> Image:
    """Nearest-neighbour resize."""
    rows = np.arange(height) * img.shape[0] // height
    cols = np.arange(width) * img.shape[1] // width
    return img[rows][:, cols]


def _luminance(img: Image) -> np.ndarray:
    return img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def grayscale(img: Image) -> Image:
    gray = _luminance(img).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def sepia(img: Image) -> Image:
    return np.clip(img.astype(np.float32) @ SEPIA.T, 0, 255).astype(np.uint8)


def _box_blur(a: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, by running sums along each axis; edges repeat."""
    a = a.astype(np.float32)
    k = 2 * radius + 1
    for axis in (0, 1):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (radius + 1, radius)
        c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis)
        hi = [slice(None)] * a.ndim
        lo = [slice(None)] * a.ndim
        hi[axis], lo[axis] = slice(k, None), slice(None, -k)
        a = (c[tuple(hi)] - c[tuple(lo)]) / k
    return a


def blur_image(img: Image, radius: int = 5) -> Image:
    return np.clip(_box_blur(img, radius), 0, 255).astype(np.uint8) if radius > 0 else img.copy()


def edge_detection(img: Image) -> Image:
    """Sobel gradient magnitude (the step the guide runs on a GPU)."""
    g = np.pad(_luminance(img), 1, mode="edge")
    gx = (g[:-2, 2:] + 2 * g[1:-1, 2:] + g[2:, 2:]) - (g[:-2, :-2] + 2 * g[1:-1, :-2] + g[2:, :-2])
    gy = (g[2:, :-2] + 2 * g[2:, 1:-1] + g[2:, 2:]) - (g[:-2, :-2] + 2 * g[:-2, 1:-1] + g[:-2, 2:])
    mag = np.hypot(gx, gy)
    mag = (mag * (255.0 / mag.max())) if mag.max() > 0 else mag
    return np.repeat(mag.astype(np.uint8)[..., None], 3, axis=-1)


def create_thumbnail(img: Image, size: int = 150) -> Image:
    return resize_image(img, size, size)


def assess_quality(img: Image) -> dict[str, float]:
    """Scores on the guide's scales: sharpness, exposure and color balance 0-10, noise 0-5."""
    g = _luminance(img)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    means = img.reshape(-1, 3).mean(axis=0)
    return {
        "sharpness": float(min(10.0, lap.std() / 10)),
        "noise_level": float(min(5.0, (g - _box_blur(g, 1)).std() / 5)),
        "exposure": float(g.mean() / 25.5),
        "color_balance": float(max(0.0, 10 - means.std() / 5)),
    }


def create_collage(images: list[Image], width: int = 1200, height: int = 800) -> Image:
    """Tile ``images`` on a grid filling a ``width`` x ``height`` canvas."""
    cols = max(1, math.ceil(math.sqrt(len(images))))
    rows = max(1, math.ceil(len(images) / cols))
    th, tw = height // rows, width // cols
    canvas = np.zeros((height, width, 3), np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = resize_image(img, tw, th)
    return canvas


def save_image(img: Image, output_path: str | None) -> dict[str, Any]:
    """Encode ``img`` (PNG, or PPM for a ``.ppm`` path) and write it to ``output_path``; with
    no path it is only encoded. Returns the path, shape, size in bytes and a checksum."""
    path = output_path or ""
    data = ppm_bytes(img) if path.endswith(".ppm") else png_bytes(img)
    if output_path:
        os.makedirs(os.path.dirname(output_path) or ".", exist_ok=True)
        with open(output_path, "wb") as f:
            f.write(data)
    return {"saved_path": output_path, "shape": img.shape, "bytes": len(data), "crc32": zlib.crc32(data)}


# The tasks of the DAG: each maps a step over a {file name: image} dict.

def load_images_task(names: list[str], seed: int) -> dict[str, Image]:
    return {name: load_image(name, seed) for name in names}


def resize_images_task(images: dict[str, Image], width: int, height: int) -> dict[str, Image]:
    return {name: resize_image(img, width, height) for name, img in images.items()}


def apply_image_effect_task(
    images: dict[str, Image], effect_name: str, transform: Callable[..., Image], *args: Any,
) -> dict[str, Image]:
    """``transform(img, *args)`` on every image (the guide's /3 and /4 variants)."""
    return {name: transform(img, *args) for name, img in images.items()}


def quality_assessment_task(gray: dict, sepia_imgs: dict, blur: dict, edge: dict) -> dict:
    effects = {"grayscale": gray, "sepia": sepia_imgs, "blur": blur, "edge": edge}
    return {
        f"{effect}_{name}": assess_quality(img)
        for effect, images in effects.items()
        for name, img in images.items()
    }


def create_collage_task(
    gray: dict, sepia_imgs: dict, blur: dict, edge: dict, options: Mapping[str, int],
) -> Image:
    images = [*gray.values(), *sepia_imgs.values(), *blur.values(), *edge.values()]
    return create_collage(images, **options)


def _output(out_dir: str | None, filename: str) -> str | None:
    return os.path.join(out_dir, filename) if out_dir else None


def save_images_task(images: dict[str, Image], output_prefix: str, out_dir: str | None = None) -> dict[str, dict]:
    """Each image as ``{prefix}_{name}.ppm`` in ``out_dir`` (only encoded without one)."""
    return {name: save_image(img, _output(out_dir, f"{output_prefix}_{name.rsplit('.', 1)[0]}.ppm"))
            for name, img in images.items()}


def save_single_image_task(image: Image, base_filename: str, out_dir: str | None = None) -> dict[str, Any]:
    return save_image(image, _output(out_dir, f"{base_filename}.png"))


GPU_STEP = "edge_detection"


def image_pipeline_dag(
    n_images: int = 5,
    dag_id: Hashable = "distributed_img_proc_dag",
    *,
    seed: int = 0,
    size: tuple[int, int] = (160, 120),
    thumbnail: int = 48,
    collage: tuple[int, int] = (640, 480),
    out_dir: str | None = None,
) -> DAG:
    """The guide's image-processing DAG (11 functions); ``edge_detection`` costs a gpu.

    Sizes are scaled down from the guide's (800x600, 150 px thumbnails, a 1600x1200
    collage) so the example stays quick; pass the guide's values to see the real load.
    Every other step costs one cpu. The thumbnails (PPM) and the collage (PNG) are written
    to ``out_dir`` (which every node must be able to write: a shared or local path); without
    one they are encoded and not written.
    """
    names = [f"image_{i}.jpg" for i in range(1, n_images + 1)]
    cpu = {"cpu": 1}
    effects = ["grayscale_effect", "sepia_effect", "blur_effect", GPU_STEP]
    return (
        DAG(dag_id)
        .add_function(Function(
            id="load_images", code=load_images_task, extra_args=[names, seed], cost=cpu,
        ))
        .add_function(Function(
            id="resize_images", args=["load_images"], code=resize_images_task,
            extra_args=[*size], cost=cpu,
        ))
        .add_function(Function(
            id="grayscale_effect", args=["resize_images"], code=apply_image_effect_task,
            extra_args=["grayscale", grayscale], cost=cpu,
        ))
        .add_function(Function(
            id="sepia_effect", args=["resize_images"], code=apply_image_effect_task,
            extra_args=["sepia", sepia], cost=cpu,
        ))
        .add_function(Function(
            id="blur_effect", args=["resize_images"], code=apply_image_effect_task,
            extra_args=["blur", blur_image, 5], cost=cpu,
        ))
        .add_function(Function(
            id=GPU_STEP, args=["resize_images"], code=apply_image_effect_task,
            extra_args=["edge_detection", edge_detection], cost={"cpu": 1, "gpu": 1},
        ))
        .add_function(Function(
            id="create_thumbnails", args=["resize_images"], code=apply_image_effect_task,
            extra_args=["thumbnail", create_thumbnail, thumbnail], cost=cpu,
        ))
        .add_function(Function(
            id="quality_report", args=effects, code=quality_assessment_task, cost=cpu,
        ))
        .add_function(Function(
            id="create_collage", args=effects, code=create_collage_task,
            extra_args=[{"width": collage[0], "height": collage[1]}], cost=cpu,
        ))
        .add_function(Function(
            id="save_thumbnails", args=["create_thumbnails"], code=save_images_task,
            extra_args=["thumb", out_dir], cost=cpu,
        ))
        .add_function(Function(
            id="save_collage", args=["create_collage"], code=save_single_image_task,
            extra_args=["final_collage", out_dir], cost=cpu,
        ))
    )


def ensure_gpu() -> bool:
    """Give the local node one gpu if no node of the cluster has one; True if it did.

    The image pipeline's ``edge_detection`` needs a gpu, and a node detects none by itself
    (pass ``--resources ...,gpu=1`` to ``python -m handoff.node`` on a machine that has one).
    Without any, the run would fail at start with an AllocationError; the demo pretends the
    local machine has one instead. The other capacities are kept as they are.
    """
    nodes = handoff.discover_nodes()
    if any(caps.get("gpu", 0) >= 1 for caps in nodes.values()):
        return False
    here = handoff.node_name()
    handoff.register_local_node({**nodes.get(here, {}), "gpu": 1})
    return True


def check_gpu_placement(result: ExecutionResult) -> tuple[str, dict[str, float]]:
    """The node that ran the gpu step and its capacities; RuntimeError if it has no gpu."""
    node = result.allocations[GPU_STEP]
    caps = handoff.discover_nodes().get(node, {})
    if caps.get("gpu", 0) < 1:
        raise RuntimeError(f"{GPU_STEP} ran on node {node!r}, which has no gpu: {caps}")
    return node, caps
