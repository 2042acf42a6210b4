"""The Grafana dashboard (dashboards/prewarmer.json): Grafana 10 JSON; every query names a metric its source exports.

Which metrics exist is not written down here: a real sidecar /metrics endpoint (`metrics_app` around a fresh
`SidecarMetrics`) and a real gateway (worker processes, one invocation served) are scraped, and the sample names
Prometheus would store are read off the exposition (a counter `x` stores `x_total`, a histogram `x_bucket`,
`x_count` and `x_sum`, ...). Queries are parsed by a PromQL parser (promql-parser, the Rust parser's bindings), so
functions, keywords, label names and durations are never taken for metric names, and a query that does not parse
fails the test. Each selector must say whose metric it reads with its `job` matcher: `$job` for the sidecar,
`$gateway_job` for the prewarmer gateway.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from pathlib import Path

import aiohttp
import promql_parser
import pytest
from helpers import alive, serve_on_loopback
from prometheus_client.parser import text_string_to_metric_families

from prewarmer.gateway.app import GATEWAY, create_app
from prewarmer.gateway.config import load_config
from prewarmer.sidecar.metrics import SidecarMetrics, metrics_app

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "prewarmer.json"
FUNCTIONS = ROOT / "functions"

# What Grafana puts in place of its built-in interval variables (any valid duration will do for parsing).
GRAFANA_DURATIONS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__range_s": "3600"}
# The dashboard's job variables, and the process whose metrics a selector with that job reads.
SOURCE_OF_JOB_VARIABLE = {"job": "sidecar", "gateway_job": "gateway"}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))|\[\[(\w+)\]\]")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.S)

# The figures the dashboard is for (issue 16): each must be read by some panel.
REQUIRED = {
    ("sidecar", "faas_coldstarts_total"), ("sidecar", "faas_invocations_total"),
    ("sidecar", "faas_init_duration_seconds_bucket"), ("sidecar", "prewarmer_decisions_total"),
    ("sidecar", "prewarmer_control_tick_seconds_bucket"), ("sidecar", "prewarmer_consumer_lag"),
    ("sidecar", "prewarmer_budget_used_gb"), ("sidecar", "prewarmer_desired_instances"),
    ("gateway", "prewarmer_gateway_workers"), ("gateway", "prewarmer_gateway_idle_gb_seconds_total"),
}

SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum",
                   "_created"), "summary": ("", "_count", "_sum", "_created"), "info": ("_info",),
                   "stateset": ("",), "gaugehistogram": ("_bucket", "_gcount", "_gsum"), "unknown": ("",)}


def stored_names(exposition: str) -> set[str]:
    """The series names Prometheus stores from this scrape: every family's, with its type's suffixes, whether or
    not it has samples yet (a labelled counter nobody has incremented still has its HELP and TYPE)."""
    names: set[str] = set()
    for fam in text_string_to_metric_families(exposition):
        names.update(fam.name + suffix for suffix in SAMPLE_SUFFIXES[fam.type])
        sampled = {s.name for s in fam.samples}
        assert sampled <= names, f"samples {sampled - names} of {fam.name} ({fam.type}) not derived from its type"
    return names


async def _scrape(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url + "/metrics") as r:
        assert r.status == 200, f"{url}/metrics answered {r.status}"
        return await r.text()


async def _exported(tmp_path: Path) -> dict[str, set[str]]:
    """Scrape a real sidecar /metrics endpoint and a real gateway that has served one cold invocation."""
    sidecar = metrics_app(SidecarMetrics(), lambda: (True, "ok"), lambda: (True, "ok"))
    sidecar_runner, sidecar_url = await serve_on_loopback(sidecar)
    gateway = create_app(load_config({"port": 0, "functions_dir": FUNCTIONS,
                                      "secret_mount_path": tmp_path / "no-secrets"}, env={}))
    gateway_runner, gateway_url = await serve_on_loopback(gateway, shutdown_timeout=5.0)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(gateway_url + "/function/echo", data=b"x") as r:
                assert r.status == 200 and r.headers["X-Cold-Start"] == "1"
            return {"sidecar": stored_names(await _scrape(session, sidecar_url)),
                    "gateway": stored_names(await _scrape(session, gateway_url))}
    finally:
        await sidecar_runner.cleanup()
        await gateway_runner.cleanup()
        assert not [p for p in gateway[GATEWAY].pool.all_pids if alive(p)], "worker processes outlived the gateway"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    return asyncio.run(_exported(tmp_path_factory.mktemp("gateway")))


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside collapsed rows included."""
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def expand_variables(query: str) -> str:
    """Grafana's variables replaced as Grafana would, with stand-ins: durations for the interval variables, the
    source's name for the job variables, a regex for the others (they only ever stand inside matchers)."""
    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_DURATIONS:
            return GRAFANA_DURATIONS[name]
        if name in SOURCE_OF_JOB_VARIABLE:
            return "source:" + SOURCE_OF_JOB_VARIABLE[name]
        return ".*"
    return VARIABLE.sub(value, query)


def selectors(query: str) -> list[tuple[str | None, str | None]]:
    """(metric name, source) of every selector of `query`; the source is read off the `job` matcher (None: no
    such matcher). Raises ValueError when the query does not parse or a selector names no single metric."""
    try:
        expr = promql_parser.parse(expand_variables(query))
    except ValueError as e:
        raise ValueError(f"does not parse as PromQL: {e}") from None
    found: list[tuple[str | None, str | None]] = []

    def visit(node: promql_parser.Expr) -> None:
        if not isinstance(node, promql_parser.VectorSelector):
            return
        matchers = node.matchers.matchers
        name = node.name or next((m.value for m in matchers
                                  if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal), None)
        if name is None:
            raise ValueError("a selector names no single metric (a __name__ regex cannot be checked)")
        job = next((m.value for m in matchers if m.name == "job"), None)
        found.append((name, job.removeprefix("source:") if job and job.startswith("source:") else None))

    promql_parser.walk(expr, visit)
    return found


def queries(dashboard: dict) -> list[tuple[str, str, str | None]]:
    """(where, PromQL, source) of every panel target and every query variable (the selector of `label_values`).
    The source is None where the query's job matchers say it; a job variable's own query reads its source."""
    out = [(f"panel {p['title']!r} target {t.get('refId')}", t["expr"], None)
           for p in all_panels(dashboard) for t in p.get("targets", [])]
    for v in dashboard["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = LABEL_VALUES.match(q)
        out.append((f"variable {v['name']!r}", m.group(1) if m else q, SOURCE_OF_JOB_VARIABLE.get(v["name"])))
    return out


def problems(dashboard: dict, exported: dict[str, set[str]]) -> list[str]:
    """Every query that does not parse, reads no job, or names a metric its job's process does not export."""
    out = []
    for where, query, implied in queries(dashboard):
        try:
            found = [(name, source or implied) for name, source in selectors(query)]
        except ValueError as e:
            out.append(f"{where}: {e}: {query}")
            continue
        if not found:
            out.append(f"{where}: names no metric: {query}")
        for name, source in found:
            if source is None:
                out.append(f"{where}: {name} has no job=~\"$job\" or job=~\"$gateway_job\" matcher")
            elif name not in exported[source]:
                out.append(f"{where}: {name} is not exported by the {source}")
    return out


# --- the parser and the check themselves ---------------------------------------------------------------------


def test_selectors_ignore_functions_keywords_labels_and_durations():
    q = ('histogram_quantile(0.95, sum by (le, faas_invoked_name) (rate(x_bucket{job=~"$job", le!="+Inf"}'
         '[$__rate_interval] offset 5m))) / on (instance) group_left max_over_time(y{job=~"${gateway_job}"}[1h:1m])'
         ' and ignoring (job) count(z) unless absent({__name__="w", job=~"$job", rate="sum"})'
         ' > bool 0 or label_replace(topk(3, v{a=~"$function"}), "by", "$1", "without", "(.*)")')
    assert selectors(q) == [("x_bucket", "sidecar"), ("y", "gateway"), ("z", None), ("w", "sidecar"), ("v", None)]
    with pytest.raises(ValueError, match="does not parse"):
        selectors('sum(rat(x{job=~"$job"}[5m]))')  # a misspelt function is an error, not a metric
    with pytest.raises(ValueError, match="no single metric"):
        selectors('{__name__=~"prewarmer_.*", job=~"$job"}')


def test_the_check_fails_for_a_missing_metric_and_for_the_wrong_source(exported):
    dash = load_dashboard()
    assert problems(dash, exported) == []
    broken = copy.deepcopy(dash)
    target = next(t for p in all_panels(broken) for t in p.get("targets", []) if "faas_coldstarts_total" in t["expr"])
    target["expr"] = target["expr"].replace("faas_coldstarts_total", "faas_cold_starts_total")
    assert [p for p in problems(broken, exported) if "faas_cold_starts_total is not exported by the sidecar" in p]
    moved = copy.deepcopy(dash)
    target = next(t for p in all_panels(moved) for t in p.get("targets", [])
                  if "prewarmer_gateway_workers" in t["expr"])
    target["expr"] = target["expr"].replace("$gateway_job", "$job")
    assert [p for p in problems(moved, exported) if "prewarmer_gateway_workers is not exported by the sidecar" in p]
    unscoped = copy.deepcopy(dash)
    target = next(t for p in all_panels(unscoped) for t in p.get("targets", []))
    target["expr"] = "sum(prewarmer_consumer_lag)"
    assert [p for p in problems(unscoped, exported) if "has no job" in p]


# --- the dashboard -------------------------------------------------------------------------------------------


def test_every_query_names_a_metric_its_source_exports(exported):
    assert not (bad := problems(load_dashboard(), exported)), "\n".join(bad)
    # Both sources were really scraped: the OTel names beside the existing ones, in each.
    for source in ("sidecar", "gateway"):
        assert {"faas_coldstarts_total", "faas_invocations_total", "faas_init_duration_seconds_bucket"} <= \
            exported[source]
    assert "prewarmer_control_tick_seconds_bucket" in exported["sidecar"]
    assert "gateway_function_invocation_total" in exported["gateway"]


def test_the_dashboard_shows_the_figures_it_is_for():
    read = {(source, name) for _, q, _ in queries(load_dashboard()) for name, source in selectors(q)}
    assert not (missing := REQUIRED - read), f"no panel reads {sorted(missing)}"


def test_dashboard_is_grafana_10_json_with_a_prometheus_datasource_variable():
    dash = load_dashboard()
    assert dash["schemaVersion"] >= 38, "Grafana 10 writes schemaVersion 38 and later"
    assert dash["uid"] and dash["title"] and dash.get("id") is None  # importable anywhere: no instance's id
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ds = {"type": "prometheus", "uid": "${datasource}"}
    panels = all_panels(dash)
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    taken: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, f"panel {p['title']!r} leaves the 24 columns"
        cells = {(g["x"] + i, g["y"] + j) for i in range(g["w"]) for j in range(g["h"])}
        assert not cells & taken, f"panel {p['title']!r} overlaps another"
        taken |= cells
        if p["type"] == "row":
            continue
        assert p["type"] in {"timeseries", "stat", "bargauge"}, p["type"]
        assert p["datasource"] == ds and p["targets"] and p.get("description"), p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(set(refs)) == len(refs), f"panel {p['title']!r} repeats a refId"
        assert all(t["datasource"] == ds and t["expr"].strip() for t in p["targets"]), p["title"]
    for name in ("job", "gateway_job", "function"):
        assert variables[name]["datasource"] == ds, name
