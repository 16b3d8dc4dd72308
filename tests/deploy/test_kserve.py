"""deploy/kserve: the ClusterServingRuntime and the example InferenceServices validate against
KServe's own resource models (the `kserve` SDK, tests/deploy/kserve_validate.py, in .tools-venv),
render with kustomize, and agree with what the server does: its flags take the runtime's args,
the probes and ports are the ones it serves, and a model laid out as KServe's storage initializer
leaves it serves with the runtime's own arguments."""

from __future__ import annotations

import dataclasses
import re
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from plexserve.export import export_model
from plexserve.proto import grpc_service_pb2 as pb
from tests.deploy.conftest import ROOT, Manifest, one, run
from tests.harness import LOCAL_PORT_0, RunningServer, constant_model, infer_request, output_arrays

KSERVE = ROOT / "deploy" / "kserve"
RUNTIME = KSERVE / "runtime" / "clusterservingruntime.yaml"
EXAMPLES = ["cpu", "gpu", "canary"]
KUSTOMIZATIONS = ["runtime"] + [f"examples/{e}" for e in EXAMPLES]
VALIDATOR = ROOT / "tests" / "deploy" / "kserve_validate.py"
MOUNT = "/mnt/models"  # where KServe's storage initializer leaves the model

Render = Callable[[Path], tuple[str, list[Manifest]]]


def load(path: Path) -> Manifest:
    (document,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return dict(document)


def runtime_container() -> Manifest:
    return one_container(load(RUNTIME)["spec"]["containers"], "kserve-container")


def one_container(containers: list[Manifest], name: str) -> Manifest:
    (found,) = [c for c in containers if c["name"] == name]
    return found


def example(name: str) -> Manifest:
    return load(KSERVE / "examples" / name / "inferenceservice.yaml")


def validate(tools: Path, files: list[Path]) -> dict[str, list[str]]:
    """One run of the validator (its import costs a second) over `files`: lines per file."""
    result = run([tools / "python", VALIDATOR, *files])
    lines: dict[str, list[str]] = {str(f): [] for f in files}
    for line in (result.stdout + result.stderr).splitlines():
        path = next((p for p in lines if line.startswith(f"{p}: ")), None)
        assert path is not None, f"validator output names no file: {line}"
        lines[path].append(line)
    assert (result.returncode == 0) == all(
        all(" valid (kserve " in line for line in found) for found in lines.values()
    ), result.stdout + result.stderr
    return lines


def mutate(document: Manifest, change: Callable[[Manifest], None]) -> str:
    copy: Manifest = yaml.safe_load(yaml.safe_dump(document))
    change(copy)
    return yaml.safe_dump(copy)


BROKEN: dict[str, tuple[Callable[[Manifest], None], str]] = {
    "misspelt-field": (
        lambda d: d["spec"]["containers"][0].update(readinesProbe={}),
        "V1Container has no field 'readinesProbe'",
    ),
    "misplaced-field": (
        lambda d: d["spec"].update(supportedModelFormat=[]),
        "V1alpha1ServingRuntimeSpec has no field 'supportedModelFormat'",
    ),
    "string-for-int": (
        lambda d: d["spec"]["containers"][0]["readinessProbe"].update(periodSeconds="5"),
        "periodSeconds: expected int, got '5'",
    ),
    "int-for-quantity-string": (
        lambda d: d["spec"]["containers"][0]["resources"]["limits"].update(cpu=2),
        "limits.cpu: expected str, got 2",
    ),
    "container-without-name": (
        lambda d: d["spec"]["containers"][0].pop("name"),
        "V1Container: 1 validation error for V1Container name Field required",
    ),
}


def test_every_manifest_validates_and_the_validator_rejects_what_kserve_would_not(
    tools: Path, tmp_path: Path
) -> None:
    manifests = sorted(f for f in KSERVE.rglob("*.yaml") if f.name != "kustomization.yaml")
    assert len(manifests) == 1 + len(EXAMPLES)
    broken = {}
    for case, (change, _) in BROKEN.items():
        broken[case] = tmp_path / f"{case}.yaml"
        broken[case].write_text(mutate(load(RUNTIME), change))
    lines = validate(tools, [*manifests, *broken.values()])
    for manifest in manifests:
        assert len(lines[str(manifest)]) == 1, lines[str(manifest)]
        assert "valid (kserve 0.21.0 SDK models)" in lines[str(manifest)][0]
    for case, (_, expected) in BROKEN.items():
        found = lines[str(broken[case])]
        assert any(expected in line for line in found), (case, found)
        assert not any(" valid (kserve " in line for line in found), (case, found)


def test_every_kustomization_renders_and_the_rendered_objects_validate(
    render: Render, tools: Path, tmp_path: Path
) -> None:
    rendered = []
    for folder in KUSTOMIZATIONS:
        yaml_text, manifests = render(KSERVE / folder)
        assert [m["kind"] for m in manifests] in (["ClusterServingRuntime"], ["InferenceService"])
        rendered.append(tmp_path / f"{folder.replace('/', '-')}.yaml")
        rendered[-1].write_text(yaml_text)
    lines = validate(tools, rendered)
    for path in rendered:
        assert [" valid (kserve " in line for line in lines[str(path)]] == [True], lines[str(path)]


def test_runtime_args_are_flags_the_server_takes_on_kserves_ports_and_mount() -> None:
    from plexserve.cli import parser

    container = runtime_container()
    parsed, unknown = parser().parse_known_args(container["args"])
    assert unknown == []
    assert parsed.command == "serve"
    assert parsed.model_name == "{{.Name}}"  # KServe's template: the InferenceService's name
    assert str(parsed.model_dir) == MOUNT
    assert (parsed.http_port, parsed.grpc_port) == (8080, 8081)  # KServe's HTTP and gRPC ports
    # The probes and the metrics annotation name the server's own HTTP port and paths.
    for probe, path in [
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ]:
        assert container[probe]["httpGet"] == {"path": path, "port": parsed.http_port}, probe
    annotations = load(RUNTIME)["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(parsed.http_port)
    assert annotations["prometheus.kserve.io/path"] == "/metrics"
    assert "ports" not in container  # one port per InferenceService: the examples choose it


# A ServingRuntime cannot set the pod's terminationGracePeriodSeconds: Kubernetes' default holds.
KUBERNETES_DEFAULT_TERMINATION_GRACE = 30


def test_runtime_shutdown_ends_before_the_default_termination_grace() -> None:
    from plexserve.cli import parser

    parsed = parser().parse_args(runtime_container()["args"])
    assert parsed.lame_duck >= 5  # long enough for endpoint changes to reach the routers
    # (+1 s: the server's last flush of the streams that never end by themselves)
    assert parsed.lame_duck + parsed.grace_period + 1 < KUBERNETES_DEFAULT_TERMINATION_GRACE


def test_runtime_runs_restricted_as_the_images_user() -> None:
    from tests.deploy.test_k8s import dockerfile_user

    spec = load(RUNTIME)["spec"]
    container = runtime_container()
    context = container["securityContext"]
    assert context["runAsUser"] == int(dockerfile_user().split(":")[0])
    assert context["runAsNonRoot"] is True and context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert any(v["name"] == tmp["name"] and "emptyDir" in v for v in spec["volumes"])
    assert {"requests", "limits"} <= set(container["resources"])


def test_runtime_supports_tensorflow_over_v2_and_grpc_v2() -> None:
    spec = load(RUNTIME)["spec"]
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
    assert [f["name"] for f in spec["supportedModelFormats"]] == ["tensorflow"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_use_the_runtime_and_expose_its_grpc_port_as_h2c(name: str) -> None:
    from plexserve.cli import parser

    runtime = load(RUNTIME)
    model = example(name)["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f["version"]) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    grpc_port = parser().parse_args(runtime_container()["args"]).grpc_port
    if model["protocolVersion"] == "grpc-v2":
        assert model["ports"] == [{"name": "h2c", "containerPort": grpc_port, "protocol": "TCP"}]
    # args an InferenceService adds are appended to the runtime's: they must parse with them
    combined = runtime_container()["args"] + model.get("args", [])
    assert parser().parse_known_args(combined)[1] == []


def test_gpu_example_takes_the_gpu_image_and_one_gpu() -> None:
    predictor = example("gpu")["spec"]["predictor"]
    assert predictor["model"]["runtimeVersion"] == "gpu"  # KServe's tag replacement: plexserve:gpu
    resources = predictor["model"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in predictor[
        "tolerations"
    ]
    assert "nvidia.com" not in (KSERVE / "examples" / "cpu" / "inferenceservice.yaml").read_text()


def test_canary_example_rolls_a_new_model_out_over_the_cpu_example() -> None:
    cpu, canary = example("cpu"), example("canary")
    assert canary["metadata"]["name"] == cpu["metadata"]["name"]  # the same InferenceService
    predictor = canary["spec"]["predictor"]
    assert 0 < predictor["canaryTrafficPercent"] < 100
    assert predictor["model"]["storageUri"] != cpu["spec"]["predictor"]["model"]["storageUri"]
    # Canary splitting needs Knative: the example asks for it instead of failing silently.
    assert canary["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"


def test_kustomize_image_override_reaches_the_runtime_container(
    render: Render, tmp_path: Path
) -> None:
    import os

    relative = os.path.relpath(KSERVE / "runtime", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources:\n  - {relative}\nimages:\n"
        "  - name: plexserve\n    newName: registry.example/ml/plexserve\n    newTag: 0.1.0-cpu\n"
    )
    manifests = render(tmp_path)[1]
    runtime = one(manifests, "ClusterServingRuntime", "plexserve")
    container = one_container(runtime["spec"]["containers"], "kserve-container")
    assert container["image"] == "registry.example/ml/plexserve:0.1.0-cpu"


# --- the runtime's own arguments serve a model laid out as KServe leaves it ---


def kserve_args(container: Manifest, isvc_name: str, mount: Path) -> list[str]:
    """The container's args as KServe runs them: `{{.Name}}` is the InferenceService's name
    (Go's template over its metadata), and /mnt/models is where the model is mounted (here: a
    temporary folder)."""
    args = [a.replace("{{.Name}}", isvc_name) for a in container["args"]]
    assert not [a for a in args if "{{" in a], f"a placeholder this test does not fill: {args}"
    return [a.replace(MOUNT, str(mount)) for a in args]


@pytest.fixture()
def kserve_server(tmp_path: Path) -> Iterator[tuple[RunningServer, str, Path]]:
    from plexserve.cli import parser, server_settings

    # What the storage initializer leaves for a storageUri that points at a SavedModel's folder:
    # its files directly in /mnt/models.
    export_model(constant_model(5.0), tmp_path / "export", "m", 1)
    mount = tmp_path / "mnt" / "models"
    mount.parent.mkdir()
    shutil.move(tmp_path / "export" / "m" / "1", mount)
    name = example("cpu")["metadata"]["name"]

    parsed = parser().parse_args(kserve_args(runtime_container(), name, mount))
    settings = server_settings(parsed)
    assert settings.single_model is not None and settings.single_model.name == name
    # The manifest's ports (8080, 8081) may be taken on a test machine: port 0 on loopback.
    fields: dict[str, Any] = {
        f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
    }
    fields.update(LOCAL_PORT_0)
    running = RunningServer(fields.pop("repository"), **fields)
    yield running, name, mount
    running.close()


def test_a_model_laid_out_by_kserve_serves_with_the_runtimes_own_args(
    kserve_server: tuple[RunningServer, str, Path],
) -> None:
    server, name, _ = kserve_server
    assert server.stub.ServerReady(pb.ServerReadyRequest()).ready
    assert server.stub.ModelReady(pb.ModelReadyRequest(name=name)).ready
    response = server.stub.ModelInfer(infer_request(name, {"x": np.ones((2, 2), np.float32)}))
    assert (response.model_name, response.model_version) == (name, "1")
    assert output_arrays(response)["y"].tolist() == [[5.0], [5.0]]
    # The readiness probe's path on the HTTP port says ready, as KServe's probe will ask.
    http = f"http://127.0.0.1:{server.server.http.port}"
    probe = runtime_container()["readinessProbe"]["httpGet"]["path"]
    with urllib.request.urlopen(http + probe) as reply:
        assert reply.status == 200
    with urllib.request.urlopen(f"{http}/v2/models/{name}/ready") as reply:
        assert reply.status == 200
    with urllib.request.urlopen(f"{http}/metrics") as reply:
        assert re.search(rf'plexserve_model_state\{{[^}}]*model="{name}"', reply.read().decode())
