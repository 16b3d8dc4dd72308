"""`make image-test` from the suite: builds the image with buildah on a local debootstrap base,
runs it as its non-root user on a read-only root filesystem, and answers ModelInfer from outside
(deploy/image/image-test.sh). 3-5 minutes, root and ~11 GB of disk at its peak, so it runs only
when asked (`make image-test`, or PLEXSERVE_IMAGE_TEST=1 with `make test`); CI does not run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT


@pytest.mark.skipif(
    os.environ.get("PLEXSERVE_IMAGE_TEST") != "1",
    reason="the image test takes 3-5 min and root: `make image-test`, or PLEXSERVE_IMAGE_TEST=1",
)
def test_image_builds_runs_read_only_and_answers_model_infer(tmp_path: Path) -> None:
    result = subprocess.run(
        ["deploy/image/image-test.sh"],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "image-test: PASS" in result.stdout, output[-6000:]
    assert "image sizes: cpu " in result.stdout  # both variants' sizes, as the README quotes them
    # What the run checked, in its own words (pytest -rA shows it).
    print(result.stdout)
