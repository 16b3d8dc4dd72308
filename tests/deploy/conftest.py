"""Fixtures for tests/deploy: the real tools, run as subprocesses.

kubectl (its built-in kustomize) renders the manifests; hadolint, shellcheck and
kubernetes-validate live in .tools-venv, which `make tools` builds (`make test` and
`make deploy-check` do it first). Rendered YAML is parsed by the tools venv's PyYAML, so the
product's venv needs no YAML package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TOOLS_BIN = ROOT / ".tools-venv" / "bin"
KUBERNETES_VERSION = "1.30.0"

Manifest = dict[str, Any]


@pytest.fixture(scope="session")
def tools() -> Path:
    """The tools venv's bin folder. Missing in CI means the Makefile wiring broke: fail there."""
    if not (TOOLS_BIN / "kubernetes-validate").exists():
        message = "no .tools-venv (hadolint, shellcheck, kubernetes-validate): run `make tools`"
        if os.environ.get("CI"):
            pytest.fail(message + " -- `make test` should have built it")
        pytest.skip(message)
    return TOOLS_BIN


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: it renders the kustomizations (`kubectl kustomize`)")
    return path


def run(args: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs
    )


_YAML_TO_JSON = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))"


def load_yaml(tools: Path, text: str) -> list[Any]:
    """Every document of a YAML text, parsed by the tools venv's PyYAML."""
    parsed = run([tools / "python", "-c", _YAML_TO_JSON], input=text)
    assert parsed.returncode == 0, parsed.stderr
    documents: list[Any] = json.loads(parsed.stdout)
    return documents


@pytest.fixture(scope="session")
def render(kubectl: str, tools: Path) -> Callable[[Path], tuple[str, list[Manifest]]]:
    """render(kustomization folder) -> (the YAML kubectl prints, the objects it holds)."""
    cache: dict[Path, tuple[str, list[Manifest]]] = {}

    def render(folder: Path) -> tuple[str, list[Manifest]]:
        if folder not in cache:
            rendered = run([kubectl, "kustomize", folder])
            assert rendered.returncode == 0, rendered.stderr
            documents = load_yaml(tools, rendered.stdout)
            cache[folder] = (rendered.stdout, [m for m in documents if m])
        return cache[folder]

    return render


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(pod_spec: Manifest, name: str) -> Manifest:
    return next(c for c in pod_spec["containers"] if c["name"] == name)
