"""The metrics module: what the dashboard asks for exists, and counting from domain events."""

from __future__ import annotations

import json
import re
from pathlib import Path

from orchestrator.infrastructure.metrics import Metrics, status_class

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"


def test_every_metric_the_dashboard_reads_exists() -> None:
    defined = {
        sample.name for family in Metrics().registry.collect() for sample in family.samples
    } | {family.name for family in Metrics().registry.collect()}
    dashboard = json.loads((DASHBOARD / "orchestrator.json").read_text())
    wanted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"orchestrator_[a-z_]+", target["expr"])
    }
    assert wanted
    missing = {
        name
        for name in wanted
        if name not in defined and re.sub(r"_(bucket|sum|count|total)$", "", name) not in defined
    }
    assert missing == set()


def test_status_classes() -> None:
    assert [status_class(s) for s in (200, 204, 404, 503, None)] == [
        "2xx",
        "2xx",
        "4xx",
        "5xx",
        "error",
    ]
