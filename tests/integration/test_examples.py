"""The demo and the example scripts, run as a user would: real processes, checked output."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import handoff
from handoff.demo import aggregate_data, filter_data, generate_data, transform_data
from handoff.demo.imagefiles import read_png

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PACKAGE_ROOT = Path(handoff.__file__).resolve().parents[1]
RUN_TIMEOUT = 120

pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 60)


def child_env() -> dict[str, str]:
    """The environment of child processes: they import the same handoff as this test."""
    path = [str(PACKAGE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}


def run(*args: str) -> subprocess.CompletedProcess:
    """Run a Python command line in the repository root; fail with its output if it fails."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
        timeout=RUN_TIMEOUT, check=False, env=child_env(),
    )
    assert proc.returncode == 0, (
        f"{' '.join(args)} exited with {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc


def expected_report(threshold: float, operation: str, seed: int = 1) -> dict[str, str]:
    """The numbers the pipeline's report should print, computed here without Handoff."""
    kept = filter_data(generate_data(100, seed), threshold)
    stats = aggregate_data(transform_data(kept, operation))
    return {
        "Original filtered data count": str(len(kept)),
        "Count": str(stats["count"]),
        "Mean": f"{stats['mean']:.2f}",
        "StdDev": f"{stats['stddev']:.2f}",
    }


def report_values(text: str) -> list[dict[str, str]]:
    """Every printed report's ``Label: value`` lines, one dict per report."""
    reports = []
    for block in text.split("DATA PIPELINE RESULTS")[1:]:
        found = dict(re.findall(r"^\s*([A-Za-z][A-Za-z ]*?):\s+(\S+)\s*$", block, re.MULTILINE))
        reports.append(found)
    return reports


def assert_report(found: dict[str, str], expected: dict[str, str]) -> None:
    for label, value in expected.items():
        printed = found.get(label)
        assert printed == value, f"{label}: printed {printed!r}, expected {value!r}"


def allocated_nodes(text: str) -> dict[str, str]:
    """``function -> node`` lines printed by ``format_allocations``."""
    return dict(re.findall(r"^\s+(\S+)\s+-> (\S+)\s*$", text, re.MULTILINE))


def test_demo_command(tmp_path):
    proc = run("-m", "handoff", "demo", "--out", str(tmp_path))
    out = proc.stdout
    assert "The sum is: 30" in out
    assert "[15, 30]" in out
    reports = report_values(out)
    assert len(reports) == 1
    assert_report(reports[0], expected_report(30, "square"))
    assert re.search(r"edge_detection ran on '[^']+', which has gpu=1", out)
    assert set(allocated_nodes(out)) >= {"sum", "format_output", "edge_detection", "save_collage"}
    assert "Demo finished in" in out
    # the image run's progress (its last frame, as stderr is no terminal), files and report
    assert re.search(r"total\s.*11/11", proc.stderr), proc.stderr
    collage = tmp_path / "images" / "final_collage.png"
    assert f"Collage written to: {collage} (640x480 PNG" in out
    image = read_png(collage.read_bytes())
    assert image.shape == (480, 640, 3) and len(np.unique(image.reshape(-1, 3), axis=0)) > 1000
    thumbs = sorted((tmp_path / "images").glob("thumb_*.ppm"))
    assert len(thumbs) == 5 and all(t.read_bytes().startswith(b"P6\n48 48\n255\n") for t in thumbs)
    report = tmp_path / "report.html"
    assert f"Report (open in a browser): {report}" in out
    html = report.read_text(encoding="utf-8")
    assert "distributed_img_proc_dag" in html and "<script" in html
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert sum(1 for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "attempt") == 11


def test_help_lists_commands():
    out = run("-m", "handoff", "--help").stdout
    assert "demo" in out
    assert "python -m handoff.node" in out
    assert "python -m handoff.keygen" in out


def test_simple_pipeline_example():
    out = run(str(EXAMPLES / "simple_pipeline.py")).stdout
    assert "The sum is: 30" in out
    first, modified = report_values(out)
    assert_report(first, expected_report(30, "square"))
    assert_report(modified, expected_report(50, "sqrt"))
    assert "DAG has missing function: 'non_existent'" in out


def test_image_pipeline_example():
    out = run(str(EXAMPLES / "image_pipeline.py"), "--images", "4").stdout
    assert "Pipeline completed successfully!" in out
    line = r"^\s+(grayscale|sepia|blur|edge)_image_\d\.jpg: Sharpness"
    per_image = re.findall(line, out, re.MULTILINE)
    assert len(per_image) == 16
    allocations = allocated_nodes(out)
    assert len(allocations) == 11
    assert re.search(r"edge_detection ran on '[^']+', which has gpu=1", out)


def test_cluster_image_pipeline_example(local_cluster):
    """Three node processes, one with a gpu; the example joins them and the gpu step lands there."""
    cpu = {"cpu": 2, "memory": 4000}
    cluster = local_cluster(3, names=["cpu1", "cpu2", "gpu1"], resources=[cpu, cpu, {**cpu, "gpu": 1}])
    out = run(str(EXAMPLES / "cluster_image_pipeline.py"), cluster["cpu1"].address, "--images", "3").stdout
    assert "gpu1: " in out
    assert "Pipeline completed successfully!" in out
    allocations = allocated_nodes(out)
    assert allocations["edge_detection"] == "gpu1"
    assert "edge_detection ran on 'gpu1', which has gpu=1" in out


@pytest.mark.slow
def test_see_a_run_example_on_three_nodes(local_cluster, tmp_path):
    """The README's "See a run": three nodes, the script's progress, report and trace."""
    cluster = local_cluster(3, names=["n1", "n2", "n3"], resources={"cpu": 2}, workers=2)
    proc = run(str(EXAMPLES / "see_a_run.py"), cluster["n1"].address, "--out", str(tmp_path), "--images", "6")
    out = proc.stdout
    assert "flowchart LR" in out
    assert re.search(r"thumbnail\s.*6/6.*1 failed", proc.stderr), proc.stderr  # the final frame
    per_node = re.search(r"Functions per node: (\{.*\})", out).group(1)
    assert set(ast.literal_eval(per_node)) <= {"n1", "n2", "n3"}  # the driver has no cpu to offer
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "photo-batch" in html and "thumbnail cache not ready" in html
    trace = json.loads((tmp_path / "trace.json").read_text())
    attempts = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "attempt"]
    assert len(attempts) == 6 * 6 + 2 + 1  # 38 functions and the failed first thumbnail
    assert read_png((tmp_path / "collage.png").read_bytes()).shape == (720, 960, 3)
