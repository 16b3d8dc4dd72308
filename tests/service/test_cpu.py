"""service/cpu.py on fake cgroup trees (cgroup v2 and v1, as a container and a node show them),
and the TensorFlow thread default that follows the quota instead of the node's cores."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from plexserve import runner
from plexserve.cpu import available_cpus, cgroup_quota

NODE_CORES = 64


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v2_tree(tmp_path: Path, own_path: str = "/", **cpu_max: str) -> tuple[Path, Path]:
    """A cgroup v2 mount: `cpu_max` maps a folder under the root ("" = the root) to cpu.max."""
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    for folder, text in cpu_max.items():
        write(root / folder.replace("__", "/") / "cpu.max", text + "\n")
    proc = tmp_path / "proc_self_cgroup"
    write(proc, f"0::{own_path}\n")
    return root, proc


def cpus(root: Path, proc: Path, mask: int = NODE_CORES) -> float:
    return available_cpus(
        root, proc, affinity=lambda: set(range(mask)), cpu_count=lambda: NODE_CORES
    ).cpus


def test_a_pod_limited_to_2_cpus_on_a_64_core_node_gets_2_not_64(tmp_path: Path) -> None:
    # Inside a container (cgroup namespace): /proc/self/cgroup says "0::/", the mount is the
    # container's own cgroup and its cpu.max holds the limit (limits.cpu: "2").
    root, proc = v2_tree(tmp_path, "/", **{"": "200000 100000"})
    available = available_cpus(
        root, proc, affinity=lambda: set(range(NODE_CORES)), cpu_count=lambda: NODE_CORES
    )
    assert available.cpus == 2
    assert available.node_cpus == NODE_CORES
    assert runner.default_intra_op_threads(available) == 1
    text = available.describe()
    assert "2 CPUs available" in text and "200000 100000" in text and "64 CPUs" in text


@pytest.mark.parametrize(
    ("cpu_max", "expected_cpus", "threads"),
    [
        ("400000 100000", 4.0, 3),  # limits.cpu: "4"
        ("150000 100000", 1.5, 1),  # 1.5 CPUs: 2 busy threads' worth, one left to the front end
        ("50000 100000", 0.5, 1),  # below one CPU: still one thread
        ("max 100000", float(NODE_CORES), NODE_CORES - 1),  # no limit: the node's cores
    ],
)
def test_the_thread_default_follows_the_v2_quota(
    tmp_path: Path, cpu_max: str, expected_cpus: float, threads: int
) -> None:
    root, proc = v2_tree(tmp_path, "/", **{"": cpu_max})
    available = available_cpus(
        root, proc, affinity=lambda: set(range(NODE_CORES)), cpu_count=lambda: NODE_CORES
    )
    assert available.cpus == expected_cpus
    assert runner.default_intra_op_threads(available) == threads


def test_v2_without_a_namespace_reads_the_own_cgroup_and_every_ancestor(tmp_path: Path) -> None:
    # On a node (no cgroup namespace) the process's path is the full one; a limit on the pod's
    # cgroup applies to its containers even when theirs says "max": the smallest quota wins.
    pod = "kubepods.slice/kubepods-burstable.slice/pod1"
    root, proc = v2_tree(
        tmp_path,
        f"/{pod}/cri-containerd-abc.scope",
        **{
            f"{pod}/cri-containerd-abc.scope".replace("/", "__"): "max 100000",
            pod.replace("/", "__"): "300000 100000",
            "kubepods.slice": "6400000 100000",
        },
    )
    assert cpus(root, proc) == 3


def test_the_affinity_mask_bounds_the_quota(tmp_path: Path) -> None:
    root, proc = v2_tree(tmp_path, "/", **{"": "800000 100000"})
    assert cpus(root, proc, mask=3) == 3  # taskset / a cpuset of 3 CPUs under an 8-CPU quota


def test_cgroup_v1_cfs_quota_and_period(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "250000\n")
    write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "proc_self_cgroup"
    # v1 inside a container: the path names the host's cgroup, the mount is the container's own.
    write(proc, "4:cpu,cpuacct:/kubepods/burstable/pod1/abc\n3:memory:/kubepods/x\n0::/\n")
    assert cpus(root, proc) == 2.5
    quota = cgroup_quota(root, proc)
    assert quota is not None and "cpu.cfs_quota_us 250000" in quota.source

    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")  # no limit
    assert cgroup_quota(root, proc) is None
    assert cpus(root, proc) == NODE_CORES


def test_cgroup_v1_nested_path_on_a_separate_cpu_mount(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cpu" / "batch" / "cpu.cfs_quota_us", "100000\n")
    write(root / "cpu" / "batch" / "cpu.cfs_period_us", "100000\n")
    (root / "cpu" / "batch" / "job7").mkdir()
    proc = tmp_path / "proc_self_cgroup"
    write(proc, "1:cpu:/batch/job7\n2:cpuacct:/batch/job7\n")
    assert cpus(root, proc) == 1


@pytest.mark.parametrize("content", ["", "garbage\n", "100000\n", "0 100000\n", "-5 100000\n"])
def test_a_malformed_cpu_max_is_ignored(tmp_path: Path, content: str) -> None:
    root, proc = v2_tree(tmp_path, "/", **{"": content.strip()})
    assert cpus(root, proc) == NODE_CORES


def test_no_cgroup_files_at_all_means_the_affinity_mask(tmp_path: Path) -> None:
    assert cpus(tmp_path / "missing", tmp_path / "missing-too", mask=6) == 6


def test_configure_tensorflow_sets_threads_from_the_quota_and_logs_what_it_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root, proc = v2_tree(tmp_path, "/", **{"": "400000 100000"})
    found = available_cpus(
        root, proc, affinity=lambda: set(range(NODE_CORES)), cpu_count=lambda: NODE_CORES
    )
    monkeypatch.setattr(runner, "available_cpus", lambda: found)
    asked: dict[str, int] = {}
    # TensorFlow's pools cannot be resized once it ran (the suite already ran it): record the
    # counts the server asks for instead.
    monkeypatch.setattr(
        runner, "_set_threads", lambda kind, wanted: asked.__setitem__(kind, wanted)
    )
    with caplog.at_level(logging.INFO, logger="plexserve.runner"):
        runner.configure_tensorflow(None, 1, "auto")
    assert asked == {"intra_op": 3, "inter_op": 1}
    line = next(r.getMessage() for r in caplog.records if "CPUs available" in r.getMessage())
    assert "4 CPUs available" in line and "400000 100000" in line
    assert "machine's 64 CPUs" in line and "intra-op threads 3" in line

    asked.clear()
    runner.configure_tensorflow(2, 1, "auto")  # an explicit count wins over the quota
    assert asked == {"intra_op": 2, "inter_op": 1}
