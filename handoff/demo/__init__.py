"""The example pipelines and ``run_demo()``, which ``python -m handoff demo`` runs.

``pipelines``: the Elixir guides' examples as DAG builders (module-level task functions, so
workers import them by reference); ``report``: how a run is shown; ``runner``: the demo.
``examples/`` runs these builders; this package must not depend on that folder, which is
not part of an installed package.
"""

from __future__ import annotations

from handoff.demo.pipelines import (
    identity,
    double,
    map_list,
    inspect_value,
    sum_each,
    getting_started_dag,
    generate_data,
    filter_data,
    transform_data,
    aggregate_data,
    format_output,
    simple_pipeline_dag,
    Image,
    SEPIA,
    load_image,
    resize_image,
    grayscale,
    sepia,
    blur_image,
    edge_detection,
    create_thumbnail,
    assess_quality,
    create_collage,
    save_image,
    load_images_task,
    resize_images_task,
    apply_image_effect_task,
    quality_assessment_task,
    create_collage_task,
    save_images_task,
    save_single_image_task,
    GPU_STEP,
    image_pipeline_dag,
    ensure_gpu,
    check_gpu_placement,
)
from handoff.demo.report import format_allocations, format_image_report, format_timing
from handoff.demo.runner import run_demo

__all__ = [
    "getting_started_dag",
    "simple_pipeline_dag",
    "image_pipeline_dag",
    "ensure_gpu",
    "check_gpu_placement",
    "format_allocations",
    "format_timing",
    "format_image_report",
    "run_demo",
    "GPU_STEP",
]
