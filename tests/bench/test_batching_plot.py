"""bench/batching_plot.py: the picture of batching on and off is drawn from the runs it names."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def batching_plot() -> ModuleType:
    spec = importlib.util.spec_from_file_location("batching_plot", ROOT / "bench/batching_plot.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_mode_is_one_run_of_its_steps_in_order_of_concurrency() -> None:
    runs = dict(batching_plot().batching_runs(RESULTS))
    assert list(runs) == ["batching on", "batching off"]
    for mode, run in (("on", runs["batching on"]), ("off", runs["batching off"])):
        assert [s["concurrency"] for s in run["steps"]] == [1, 8, 32, 64]
        for step in run["steps"]:
            saved = json.loads(
                (RESULTS / f"batching-{mode}-c{step['concurrency']}.json").read_text()
            )
            assert step == saved["steps"][0]  # drawn as measured, nothing recomputed
        assert run["environment"]["date"].startswith("2026-11-27")


def test_only_the_asked_concurrencies_are_drawn() -> None:
    runs = dict(batching_plot().batching_runs(RESULTS, levels=[1, 32]))
    assert [s["concurrency"] for s in runs["batching off"]["steps"]] == [1, 32]


def test_the_picture_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "batching.png"
    batching_plot().draw(RESULTS, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_runs_says_which_script_makes_them(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no batching-on-c.*json in .*: run bench/batching.py"):
        batching_plot().batching_runs(tmp_path)
