"""``run_demo()``: runs the example pipelines on the embedded node and reports each run."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any, Hashable, TextIO

import handoff
from handoff import DAG, ExecutionResult
from handoff.demo.pipelines import (
    GPU_STEP,
    check_gpu_placement,
    ensure_gpu,
    getting_started_dag,
    image_pipeline_dag,
    simple_pipeline_dag,
)
from handoff.demo.report import format_allocations, format_image_report, format_timing


def _run(dag: DAG, **opts: Any) -> tuple[ExecutionResult, float]:
    t0 = time.perf_counter()
    result = handoff.execute(dag, **opts)
    return result, time.perf_counter() - t0


def run_demo(*, n_images: int = 5, out: TextIO | None = None,
             out_dir: str | None = None) -> dict[Hashable, ExecutionResult]:
    """Run the example pipelines on the embedded node and print results, allocations, timing.

    Starts the embedded node if none is running, and gives it a gpu (see ``ensure_gpu``)
    when the cluster has none. The image run shows its progress on stderr and writes its
    images, its HTML report (``report.html``) and its trace (``trace.json``) to ``out_dir``
    (a new temporary directory by default), printing their paths. Returns
    ``{dag_id: ExecutionResult}``.
    """
    out = out or sys.stdout
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="handoff-demo-")
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)

    def say(*parts: Any) -> None:
        print(*parts, file=out, flush=True)

    t0 = time.perf_counter()
    here = handoff.node_name()
    started = time.perf_counter() - t0
    say(f"Handoff {handoff.__version__} demo on node {here!r} (started in {started:.2f} s)")
    runs: dict[Hashable, ExecutionResult] = {}

    say("\n== Getting started: data_source -> double -> sum ==")
    result, wall = _run(getting_started_dag())
    runs[result.dag_id] = result
    say(f"The sum is: {result.results['sum']}")
    say(f"totals (as_list over data_source, double): {result.results['totals']}")
    say(result.results["parametrized"])
    say("Allocations:\n" + format_allocations(result))
    say("Timing:\n" + format_timing(result, wall))

    say("\n== Simple data pipeline: generate -> filter -> transform -> aggregate -> format ==")
    result, wall = _run(simple_pipeline_dag(output_node=here))
    runs[result.dag_id] = result
    say(result.results["format_output"])
    say("Allocations:\n" + format_allocations(result))
    say("Timing:\n" + format_timing(result, wall))

    say(f"\n== Image processing: {n_images} images, 11 functions, {GPU_STEP} needs a gpu ==")
    if ensure_gpu():
        say(f"No node has a gpu: registered node {here!r} with gpu=1 so {GPU_STEP} can be placed.")
    dag = image_pipeline_dag(n_images, out_dir=os.path.join(out_dir, "images"))
    result, wall = _run(dag, allocation_strategy="cost_optimized", max_retries=2, progress=True)
    runs[result.dag_id] = result
    say(format_image_report(result, per_image=False))
    say("Allocations:\n" + format_allocations(result))
    node, caps = check_gpu_placement(result)
    say(f"{GPU_STEP} ran on {node!r}, which has gpu={caps['gpu']:g}")
    say("Timing:\n" + format_timing(result, wall))
    say(f"Trace (open in https://ui.perfetto.dev or chrome://tracing): "
        f"{result.to_trace(os.path.join(out_dir, 'trace.json'))}")
    say(f"Report (open in a browser): {result.report(os.path.join(out_dir, 'report.html'))}")

    say(f"\nDemo finished in {time.perf_counter() - t0:.2f} s")
    return runs
