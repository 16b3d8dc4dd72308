"""deploy/k8s: every kustomization renders with `kubectl kustomize`, validates against the
Kubernetes 1.30 schemas (`kubernetes-validate --strict`), and holds what users rely on: gRPC probes
on 8500, a restrictive securityContext, a termination grace above the server's, a headless gRPC
Service, a GPU per pod in the gpu overlay, and Kubernetes objects that point at each other."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy.conftest import (
    K8S,
    KUBERNETES_VERSION,
    ROOT,
    Manifest,
    container,
    load_yaml,
    one,
    run,
)

Render = Callable[[Path], tuple[str, list[Manifest]]]
OVERLAYS = ["cpu", "gpu"]


def user_overlay(folder: Path, overlay: str, components: list[str]) -> Path:
    """An overlay a user would write: one of ours plus components."""
    relative = os.path.relpath(K8S, folder)  # kustomize takes relative paths only
    (folder / "kustomization.yaml").write_text(
        f"resources:\n  - {relative}/overlays/{overlay}\ncomponents:\n"
        + "".join(f"  - {relative}/components/{c}\n" for c in components)
    )
    return folder


@pytest.fixture(scope="session")
def with_components(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cpu-pvc-queue-depth")
    return user_overlay(folder, "cpu", ["pvc-repository", "scale-on-queue-depth"])


@pytest.fixture(scope="session")
def with_tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return user_overlay(tmp_path_factory.mktemp("gpu-tls"), "gpu", ["tls"])


@pytest.fixture(scope="session")
def kustomizations(with_components: Path, with_tls: Path) -> dict[str, Path]:
    return {
        "overlays/cpu": K8S / "overlays" / "cpu",
        "overlays/gpu": K8S / "overlays" / "gpu",
        "bench": K8S / "bench",
        "cpu+pvc+queue-depth": with_components,
        "gpu+tls": with_tls,
    }


ALL = ["overlays/cpu", "overlays/gpu", "bench", "cpu+pvc+queue-depth", "gpu+tls"]


def validate(tools: Path, yaml_text: str, tmp_path: Path) -> tuple[int, list[str]]:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml_text)
    result = run(
        [tools / "kubernetes-validate", "-k", KUBERNETES_VERSION, "--strict", "--quiet", rendered]
    )
    return result.returncode, (result.stdout + result.stderr).splitlines()


def server_pod(manifests: list[Manifest]) -> Manifest:
    return one(manifests, "Deployment", "plexserve")["spec"]["template"]["spec"]


@pytest.mark.parametrize("name", ALL)
def test_renders_and_validates_strictly_for_kubernetes_1_30(
    name: str, render: Render, tools: Path, kustomizations: dict[str, Path], tmp_path: Path
) -> None:
    yaml_text, manifests = render(kustomizations[name])
    assert manifests
    status, lines = validate(tools, yaml_text, tmp_path)
    problems = [line for line in lines if "ServiceMonitor" not in line]  # a CRD: no schema
    assert status == 0 and problems == [], "\n".join(lines)


def test_the_validator_rejects_a_field_kubernetes_does_not_have(
    render: Render, tools: Path, tmp_path: Path
) -> None:
    yaml_text, _ = render(K8S / "overlays" / "cpu")
    field = "terminationGracePeriodSeconds: 40"
    broken = yaml_text.replace(field, f"{field}\n      graceSeconds: 40")
    assert broken != yaml_text
    status, lines = validate(tools, broken, tmp_path)
    assert status != 0
    assert any("graceSeconds" in line for line in lines), lines


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_native_grpc_health_on_8500(overlay: str, render: Render) -> None:
    server = container(server_pod(render(K8S / "overlays" / overlay)[1]), "plexserve")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": 8500, "service": ""}, probe
        assert not {"httpGet", "tcpSocket", "exec"} & set(server[probe]), probe
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": 8500, "http-metrics": 8501}


def dockerfile_user() -> str:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "the Dockerfile sets no USER"
    return users[-1]


@pytest.mark.parametrize("name", ALL)
def test_every_pod_runs_restricted_as_the_images_user(
    name: str, render: Render, kustomizations: dict[str, Path]
) -> None:
    uid = int(dockerfile_user().split(":")[0])
    assert uid != 0
    manifests = render(kustomizations[name])[1]
    pods = [m["spec"]["template"]["spec"] for m in manifests if m["kind"] in ("Deployment", "Job")]
    assert pods
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in pod.get("initContainers", []) + pod["containers"]:
            context = c["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] == uid, c["name"]
            assert context["readOnlyRootFilesystem"] is True, c["name"]
            assert context["allowPrivilegeEscalation"] is False, c["name"]
            assert context["capabilities"] == {"drop": ["ALL"]}, c["name"]
            # With a read-only root, /tmp must be a volume (HOME and caches point there).
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, c["name"]
            assert {"requests", "limits"} <= set(c["resources"]), c["name"]


def flags(args: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def test_termination_grace_exceeds_prestop_lame_duck_and_grace_period(render: Render) -> None:
    """SIGKILL never comes before the server's own shutdown ends: preStop (if any), then its
    lame duck, then its grace period, then a second to close the streams left."""
    pod = server_pod(render(K8S / "overlays" / "cpu")[1])
    server = container(pod, "plexserve")
    from plexserve.cli import parser

    parsed = parser().parse_args(server["args"])
    pre_stop = server.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    sleep = float(pre_stop[1]) if pre_stop else 0.0  # the server's lame duck replaces it
    assert parsed.lame_duck >= 5  # long enough for endpoint and DNS changes to reach clients
    assert (
        pod["terminationGracePeriodSeconds"] >= sleep + parsed.lame_duck + parsed.grace_period + 5
    )


def test_server_args_are_flags_the_server_accepts(render: Render) -> None:
    from plexserve.cli import parser

    server = container(server_pod(render(K8S / "overlays" / "cpu")[1]), "plexserve")
    parsed, unknown = parser().parse_known_args(server["args"])
    assert parsed.command == "serve"
    assert parsed.grpc_port == 8500 and parsed.grace_period == 25 and str(parsed.repo) == "/models"
    assert unknown == []


def serve_options() -> set[str]:
    """Every option string `plexserve serve` accepts."""
    import argparse

    from plexserve.cli import parser

    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {o for action in commands.choices["serve"]._actions for o in action.option_strings}


def test_every_flag_the_deployment_names_is_one_the_server_takes(render: Render) -> None:
    """Comments included: advice that names a flag the server refuses stops the pod at start."""
    text = (K8S / "base" / "deployment.yaml").read_text()
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text))
    assert {"--tf-intra-op-threads", "--tf-inter-op-threads"} <= named
    assert named - serve_options() == set()
    from plexserve.cli import parser

    server = container(server_pod(render(K8S / "overlays" / "cpu")[1]), "plexserve")
    advised = [*server["args"], "--tf-intra-op-threads=3", "--tf-inter-op-threads=2"]
    parsed = parser().parse_args(advised)
    assert (parsed.tf_intra_op_threads, parsed.tf_inter_op_threads) == (3, 2)


def test_the_server_config_comes_from_the_configmap(render: Render, tmp_path: Path) -> None:
    manifests = render(K8S / "overlays" / "cpu")[1]
    pod = server_pod(manifests)
    server = container(pod, "plexserve")
    config_path = Path(flags(server["args"])["config"])
    mount = next(m for m in server["volumeMounts"] if Path(m["mountPath"]) == config_path.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = one(manifests, "ConfigMap", volume["configMap"]["name"])
    assert config_path.name in config_map["data"]
    from plexserve.settings import ServerConfig  # the server's own loader accepts it

    (tmp_path / config_path.name).write_text(config_map["data"][config_path.name])
    config = ServerConfig.load(tmp_path / config_path.name)
    assert config.models["multi_task"]["batching"]["max_batch_size"] == 32


def test_grpc_service_is_headless_and_metrics_are_scraped_from_the_server_pods(
    render: Render,
) -> None:
    manifests = render(K8S / "overlays" / "cpu")[1]
    deployment = one(manifests, "Deployment", "plexserve")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    grpc = one(manifests, "Service", "plexserve-grpc")["spec"]
    assert grpc["clusterIP"] == "None"
    assert grpc["selector"].items() <= pod_labels.items()
    assert [(p["port"], p["targetPort"]) for p in grpc["ports"]] == [(8500, "grpc")]

    metrics = one(manifests, "Service", "plexserve-metrics")
    assert metrics["spec"]["selector"].items() <= pod_labels.items()
    assert [(p["port"], p["name"]) for p in metrics["spec"]["ports"]] == [(8501, "http-metrics")]
    monitor = one(manifests, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == ["http-metrics"]

    budget = one(manifests, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["maxUnavailable"] == 1 < deployment["spec"]["replicas"]


def test_gpu_overlay_asks_one_gpu_on_gpu_nodes_and_cpu_overlay_none(render: Render) -> None:
    gpu_pod = server_pod(render(K8S / "overlays" / "gpu")[1])
    server = container(gpu_pod, "plexserve")
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["image"].endswith(":gpu")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod[
        "tolerations"
    ]
    assert gpu_pod["nodeSelector"]
    assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in gpu_pod["initContainers"])

    cpu_yaml, cpu_manifests = render(K8S / "overlays" / "cpu")
    assert "nvidia.com" not in cpu_yaml
    cpu_server = container(server_pod(cpu_manifests), "plexserve")
    assert cpu_server["image"].endswith(":cpu")


def test_init_container_builds_the_demo_models_into_the_served_volume(render: Render) -> None:
    pod = server_pod(render(K8S / "overlays" / "cpu")[1])
    (init,) = pod["initContainers"]
    script = " ".join(init["args"])
    demo_models = re.search(r"^DEMO_MODELS := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert demo_models is not None
    assert f"for model in {demo_models.group(1)};" in script
    assert 'plexserve build "$model" --repo /models' in script
    written = {m["name"] for m in init["volumeMounts"] if m["mountPath"] == "/models"}
    served = [m for m in container(pod, "plexserve")["volumeMounts"] if m["mountPath"] == "/models"]
    assert [m["name"] for m in served] == list(written) and served[0]["readOnly"] is True


def test_hpa_scales_the_deployment_on_cpu_and_with_the_component_on_queue_depth(
    render: Render, with_components: Path, tools: Path
) -> None:
    hpa = one(render(K8S / "overlays" / "cpu")[1], "HorizontalPodAutoscaler")["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        "plexserve",
    )
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]

    manifests = render(with_components)[1]
    metrics = one(manifests, "HorizontalPodAutoscaler")["spec"]["metrics"]
    (pods_metric,) = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert pods_metric["metric"]["name"] == "plexserve_queue_depth_rows"

    # The adapter rule publishes the metric under the very name the HPA asks for.
    adapter = K8S / "components" / "scale-on-queue-depth" / "prometheus-adapter-values.yaml"
    (values,) = load_yaml(tools, adapter.read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == "plexserve_queue_depth_rows"
    assert rule["seriesQuery"].startswith("plexserve_queue_depth_rows{")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_pvc_component_replaces_the_init_container_with_a_read_only_claim(
    render: Render, with_components: Path
) -> None:
    manifests = render(with_components)[1]
    pod = server_pod(manifests)
    assert not pod.get("initContainers")
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert set(models) == {"name", "persistentVolumeClaim"}
    assert models["persistentVolumeClaim"]["readOnly"] is True
    claim = one(manifests, "PersistentVolumeClaim", models["persistentVolumeClaim"]["claimName"])
    job = one(manifests, "Job", "plexserve-build-models")["spec"]["template"]["spec"]
    assert claim["metadata"]["name"] in {
        v.get("persistentVolumeClaim", {}).get("claimName") for v in job["volumes"]
    }


def test_bench_job_targets_the_headless_service(render: Render) -> None:
    manifests = render(K8S / "bench")[1]
    job = one(manifests, "Job", "plexserve-bench")["spec"]["template"]
    bench = container(job["spec"], "bench")
    assert bench["args"][0] == "bench"
    assert flags(bench["args"]) == {
        "target": "plexserve-grpc:8500",
        "model": "multi_task",
        "concurrency": "1,8,32",
    }
    # Not a server pod: the Services must not send traffic to the load generator.
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] != "server"


def test_tls_component_turns_tls_on_and_moves_the_probes_to_plain_http(
    render: Render, with_tls: Path
) -> None:
    pod = server_pod(render(with_tls)[1])
    server = container(pod, "plexserve")
    args = flags(server["args"])
    assert args["tls-cert"] == "/etc/plexserve/tls/tls.crt"
    assert args["tls-key"] == "/etc/plexserve/tls/tls.key"
    from plexserve.cli import parser  # the server's own flags take them

    parsed, unknown = parser().parse_known_args(server["args"])
    assert unknown == [] and (parsed.tls_cert, parsed.tls_key) == (
        Path(args["tls-cert"]),
        Path(args["tls-key"]),
    )
    mount = next(m for m in server["volumeMounts"] if m["name"] == "tls")
    assert mount["mountPath"] == "/etc/plexserve/tls" and mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "plexserve-tls"
    # The kubelet's gRPC probes cannot speak TLS: with TLS on 8500 they would always fail.
    for probe, path in [
        ("startupProbe", "/v2/health/ready"),
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ]:
        assert "grpc" not in server[probe], probe
        assert server[probe]["httpGet"] == {"path": path, "port": 8501}, probe
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1  # the gpu overlay is kept
