"""deploy/grafana/plexserve.json: a Grafana dashboard that parses, whose every panel reads the
`datasource` variable, whose `model` variable exists, and whose every query names metrics and
labels that a live plexserve server exposes (a real server on port 0 that has answered a few
requests, scraped over HTTP). Renaming a metric or a label in service/metrics.py fails here.
The queries' syntax is checked by promql-parser (a Rust port of Prometheus' parser) from the
tools venv."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from plexserve.export import export_model
from tests.deploy.conftest import ROOT, run
from tests.harness import RunningServer, infer_request
from tests.service.test_observability import linear_model, ones

DASHBOARD = ROOT / "deploy" / "grafana" / "plexserve.json"
PANEL_TYPES = {"row", "timeseries", "stat", "table"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
METRIC = re.compile(r"\b(?:plexserve|process)_\w+")
SELECTOR = re.compile(r"\b(plexserve_\w+)(\{[^}]*\})?")
PROCESS_WIDE = {"plexserve_event_loop_busy_ratio"}  # one per process, like process_*
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
# Labels Prometheus gives every series of a target when it scrapes: never in the server's text.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "container", "endpoint"}
# Grafana's interval variables, replaced by a duration before the parser sees a query.
INTERVALS = re.compile(r"\$__(?:rate_interval|interval|range)")


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' collapsed panels included, rows themselves excluded."""
    found = []
    for panel in dashboard["panels"]:
        found += panel.get("panels", [])
        if panel["type"] != "row":
            found.append(panel)
    return found


def variable(dashboard: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    assert len(matches) == 1, f"no template variable '{name}'"
    return matches[0]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL query of the dashboard: panel targets, then the `model` variable's."""
    exprs = [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]
    return [*exprs, variable(dashboard, "model")["definition"]]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    """Sample name -> label names, from /metrics of a server that has answered requests: a
    padded batch (3 rows where 1, 2 or 4 are allowed), a plain one, and an unknown model."""
    root = tmp_path_factory.mktemp("grafana")
    export_model(linear_model(), root, "m")
    (root / "m" / "config.yaml").write_text("batching: {allowed_batch_sizes: [1, 2, 4]}\n")
    server = RunningServer(root)
    try:
        server.stub.ModelInfer(infer_request("m", ones(3)))
        server.stub.ModelInfer(infer_request("m", ones(1)))
        with pytest.raises(grpc.RpcError) as unknown:
            server.stub.ModelInfer(infer_request("no_such_model", ones(1)))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    finally:
        server.close()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    yield labels


def test_the_dashboard_is_a_grafana_dashboard_of_known_panel_types() -> None:
    dashboard = load_dashboard()
    assert dashboard["title"] == "plexserve" and dashboard["uid"] == "plexserve"
    assert 36 <= dashboard["schemaVersion"] <= 41
    rows = [panel for panel in dashboard["panels"] if panel["type"] == "row"]
    every = panels(dashboard)
    assert {panel["type"] for panel in every} <= PANEL_TYPES - {"row"}
    ids = [panel["id"] for panel in rows + every]
    assert len(ids) == len(set(ids))
    for panel in every:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]


def test_every_panel_and_query_reads_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    source = variable(dashboard, "datasource")
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, (panel["title"], target["refId"])
    assert variable(dashboard, "model")["datasource"] == DATASOURCE


def test_the_model_variable_lists_the_served_models_and_filters_every_query() -> None:
    dashboard = load_dashboard()
    model = variable(dashboard, "model")
    assert model["type"] == "query"
    assert model["definition"] == "label_values(plexserve_requests_total, model)"
    assert model["query"]["query"] == model["definition"]
    assert model["multi"] and model["includeAll"] and model["allValue"] == ".*"
    for expr in expressions(dashboard)[:-1]:
        for name, matchers in SELECTOR.findall(expr):
            if name in PROCESS_WIDE:  # no model label: kept to the processes serving $model
                assert 'and on (instance, job) plexserve_model_state{model=~"$model"}' in expr
                continue
            assert 'model=~"$model"' in matchers, f"{name} is not filtered by $model in {expr}"


def test_every_queried_metric_is_in_a_live_scrape(scraped: dict[str, set[str]]) -> None:
    """Names as Prometheus stores them: `_total`, `_bucket`, `_sum`, `_count` included."""
    dashboard = load_dashboard()
    queried = {name for expr in expressions(dashboard) for name in METRIC.findall(expr)}
    missing = sorted(queried - set(scraped))
    assert not missing, f"the dashboard queries metrics the server does not expose: {missing}"
    # what the dashboard must show (issue 6), so that dropping a panel fails too
    assert queried >= {
        "plexserve_requests_total",
        "plexserve_request_duration_seconds_bucket",
        "plexserve_queue_duration_seconds_sum",
        "plexserve_compute_duration_seconds_sum",
        "plexserve_batch_size_rows_sum",
        "plexserve_batch_size_rows_bucket",
        "plexserve_padding_rows_total",
        "plexserve_queue_depth_rows",
        "plexserve_inflight_requests",
        "plexserve_model_state",
        "plexserve_model_load_duration_seconds",
        "plexserve_model_warmup_duration_seconds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    }


def test_every_grouping_and_matcher_label_is_on_the_queried_metrics(
    scraped: dict[str, set[str]],
) -> None:
    """A label a query groups or filters by is on at least one of the query's metrics (target
    labels such as `instance` come from Prometheus, not from the server)."""
    for expr in expressions(load_dashboard()):
        available = set().union(*(scraped.get(name, set()) for name in METRIC.findall(expr)))
        used = {
            label.strip()
            for group in GROUPING.findall(expr)
            for label in group.split(",")
            if label.strip()
        }
        used |= {
            label
            for matchers in re.findall(r"\{([^}]*)\}", expr)
            for label in MATCHER.findall(matchers)
        }
        unknown = sorted(used - available - TARGET_LABELS)
        assert not unknown, f"labels {unknown} are on none of the metrics of {expr}"


def test_every_query_is_valid_promql(tools: Path) -> None:
    queries = [INTERVALS.sub("5m", expr) for expr in expressions(load_dashboard())[:-1]]
    code = (
        "import json, sys, promql_parser\n"
        "for q in json.load(sys.stdin):\n"
        "    try:\n"
        "        promql_parser.parse(q)\n"
        "    except ValueError as error:\n"
        "        print(f'{error}: {q}')\n"
    )
    checked = run([tools / "python", "-c", code], input=json.dumps(queries))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == ""
