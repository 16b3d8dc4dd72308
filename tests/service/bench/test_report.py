"""JSON and CSV files of a run, `--compare` side by side, and the plot."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import pytest

from plexserve.bench import BenchError
from plexserve.bench.report import load_run, write_csv, write_json
from plexserve.cli import main


def step(concurrency: int, rps: float, p50: float, p99: float, **extra: Any) -> dict[str, Any]:
    return {
        "mode": "closed",
        "concurrency": concurrency,
        "duration_s": 1.0,
        "requests": int(rps),
        "ok": int(rps),
        "errors": extra.get("errors", {}),
        "requests_per_s": rps,
        "rows_per_s": 2 * rps,
        "achieved_rate": rps,
        "latency_ms": {"p50": p50, "p90": p50, "p99": p99, "p99.9": p99, "max": p99, "mean": p50},
        "send_lag_ms": {"p50": 0.0, "p99": 0.0, "max": 0.0},
        "processes": 1,
        "requests_by_process": [int(rps)],
        "server": extra.get("server", {"available": False, "reason": "no server"}),
    }


def run(*steps: dict[str, Any], host: str = "box") -> dict[str, Any]:
    return {
        "tool": "plexserve bench",
        "settings": {"model": "mlp", "target": "h:1", "rows": 2},
        "environment": {"host": host, "cpu_count": 2, "date": "2026-11-27T00:00:00+00:00"},
        "steps": list(steps),
    }


def test_json_round_trips_and_csv_has_one_row_per_step(tmp_path: Path) -> None:
    document = run(
        step(1, 100.0, 1.0, 2.0),
        step(
            8,
            400.0,
            4.0,
            9.0,
            errors={"NOT_FOUND": 3},
            server={"available": True, "queue_ms": 1.5, "compute_ms": 2.5, "batch_rows": 4.0},
        ),
    )
    write_json(document, tmp_path / "run.json")
    assert load_run(tmp_path / "run.json") == document
    write_csv(document, tmp_path / "run.csv")
    with (tmp_path / "run.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["step"] for r in rows] == ["concurrency 1", "concurrency 8"]
    assert rows[1]["requests_per_s"] == "400.0" and rows[1]["rows_per_s"] == "800.0"
    assert rows[1]["p99_ms"] == "9.0" and rows[1]["errors_by_code"] == "NOT_FOUND=3"
    assert rows[1]["server_batch_rows"] == "4.0" and rows[1]["server_metrics"] == "available"
    assert rows[0]["server_queue_ms"] == "" and rows[0]["server_metrics"] == (
        "not available (no server)"
    )


def test_compare_prints_both_runs_with_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_json(run(step(1, 100.0, 2.0, 4.0), step(8, 400.0, 8.0, 20.0)), tmp_path / "a.json")
    write_json(
        run(step(1, 150.0, 1.0, 5.0), step(32, 900.0, 30.0, 60.0), host="other"),
        tmp_path / "b.json",
    )
    assert main(["bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "A: " in out and "B: " in out and "other (2 CPUs)" in out
    lines = {line.split("  ")[0]: line.split() for line in out.splitlines()}
    # step, req/s A, B, B/A, p50 A, B, B/A, p99 A, B, B/A, errors A, B
    assert lines["concurrency 1"][2:] == "100 150 1.50 2.00 1.00 0.50 4.00 5.00 1.25 0 0".split()
    assert lines["concurrency 8"][2:] == "400 - - 8.00 - - 20.0 - - 0 -".split()
    assert lines["concurrency 32"][2:] == "- 900 - - 30.0 - - 60.0 - - 0".split()


def test_compare_refuses_a_file_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.json").write_text("{}")
    assert main(["bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 2
    assert "not a plexserve bench run" in capsys.readouterr().err
    with pytest.raises(BenchError):
        load_run(tmp_path / "missing.json")


def test_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # the optional extra 'plot'
    from plexserve.bench.plot import plot_runs

    document = run(step(1, 100.0, 2.0, 4.0), step(8, 400.0, 8.0, 20.0))
    plot_runs([("a", document), ("b", document)], tmp_path / "run.png")
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    write_json(run(step(1, 100.0, 2.0, 4.0)), tmp_path / "a.json")
    argv = ["bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "a.json")]
    assert main([*argv, "--plot", str(tmp_path / "run.png")]) == 2
    assert "pip install 'plexserve[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "run.png").exists()
