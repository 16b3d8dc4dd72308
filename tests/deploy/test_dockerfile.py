"""The Dockerfile and the image scripts: hadolint and shellcheck pass (from .tools-venv), and the
Dockerfile keeps what the manifests and users rely on."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.deploy.conftest import ROOT, run

DOCKERFILE = ROOT / "Dockerfile"


def instructions(name: str) -> list[str]:
    """Arguments of every `name` instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.+)$", text, re.MULTILINE)]


def test_hadolint_passes(tools: Path) -> None:
    result = run([tools / "hadolint", DOCKERFILE])
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_shellcheck_passes_on_the_image_scripts(tools: Path) -> None:
    scripts = sorted((ROOT / "deploy" / "image").glob("*.sh"))
    assert scripts
    result = run([tools / "shellcheck", *scripts])
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_is_exec_form_so_the_server_gets_sigterm() -> None:
    (entrypoint,) = instructions("ENTRYPOINT")
    assert json.loads(entrypoint) == ["plexserve"]
    assert json.loads(instructions("CMD")[-1])[0] == "serve"


def test_runs_as_a_fixed_non_root_uid_and_exposes_both_ports() -> None:
    user = instructions("USER")[-1]
    assert re.fullmatch(r"[1-9][0-9]*:[0-9]+", user), f"USER {user}: numeric, non-root"
    assert instructions("EXPOSE") == ["8500 8501"]


def test_base_image_and_variant_are_build_arguments() -> None:
    args = instructions("ARG")
    assert "BASE_IMAGE=python:3.11-slim" in args
    assert "VARIANT=cpu" in args
    assert all(line.startswith("${BASE_IMAGE}") for line in instructions("FROM"))


def pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return dict(line.lower().split("==") for line in lines if "==" in line)


def test_cpu_variant_installs_tensorflow_cpu_at_the_locks_tensorflow_version() -> None:
    """Same TensorFlow in both variants: the CPU one without CUDA kernels (half the wheel)."""
    text = DOCKERFILE.read_text()
    assert 'cpu) tensorflow="tensorflow-cpu"' in text
    assert 'gpu) tensorflow="tensorflow[and-cuda]"' in text
    # nothing else may pull the full tensorflow wheel back in (tensorflow-serving-api would: it
    # is a test dependency only, plexserve serves TF Serving's API from its own stubs)
    assert "tensorflow-serving-api" not in text
    lock = pins(ROOT / "requirements.lock")
    constraints = pins(ROOT / "deploy" / "image" / "constraints.txt")
    assert constraints["tensorflow-cpu"] == lock["tensorflow"]


def test_the_dependency_filter_drops_exactly_tensorflow(tmp_path: Path) -> None:
    """The Dockerfile's own one-liner, run on pyproject.toml: every other dependency stays."""
    import subprocess
    import sys
    import tomllib

    script = re.search(
        r"python3 -c '(import re, tomllib;.+?)' > /tmp/dependencies.txt", DOCKERFILE.read_text()
    )
    assert script is not None
    kept = subprocess.run(
        [sys.executable, "-c", script.group(1)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(declared) - set(kept) == {"tensorflow"}
    assert set(kept) <= set(declared)
