"""examples/image_pipeline_decorated.py run as a user would: real processes, checked output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import handoff
from handoff.demo.pipelines import assess_quality, edge_detection, grayscale, load_image, resize_image

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = Path(handoff.__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(240)


def test_decorated_image_pipeline_example(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "image_pipeline_decorated.py"), "--images", "3",
         "--workers", "2", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^Run 1: 26 functions .* edge detection: 3 computed, 0 loaded from the cache$", out, re.M)
    assert re.search(r"^Run 2: 26 functions .* edge detection: 0 computed, 3 loaded from the cache$", out, re.M)
    metrics = dict(re.findall(r"^\s+(\w+_image_\d\.jpg): (Sharpness: \S+, Noise: \S+)$", out, re.M))
    assert len(metrics) == 12
    for effect, transform in (("grayscale", grayscale), ("edge", edge_detection)):
        for i in (1, 2, 3):
            m = assess_quality(transform(resize_image(load_image(f"image_{i}.jpg", 0), 160, 120)))
            assert metrics[f"{effect}_image_{i}.jpg"] == \
                f"Sharpness: {m['sharpness']:.1f}, Noise: {m['noise_level']:.1f}"
    assert re.search(r"^Collage 640x480: \d+ bytes; thumbnails: 3 images, \d+ bytes; "
                     r"written to .*out$", out, re.M)
    assert sorted(os.listdir(tmp_path / "out")) == [
        "final_collage.png", "thumb_image_1.ppm", "thumb_image_2.ppm", "thumb_image_3.ppm"]
