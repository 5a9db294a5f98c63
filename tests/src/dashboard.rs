//! The Grafana dashboard, `dashboards/tollgate.json`, as data: every panel's
//! queries, the template variables' queries as PromQL, the variables
//! substituted as Grafana does with "All" selected, and the metric names a
//! query reads. For tests that run the dashboard's queries against a real
//! Prometheus, and for the checks that its metric names are documented.
//!
//! Grafana itself cannot run here; `dashboards/validate` checks the file
//! against Grafana's schema (tests/tests/dashboard.rs runs it).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The repository's `dashboards/` directory.
pub fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// `dashboards/tollgate.json`.
pub fn path() -> PathBuf {
    dashboards_dir().join("tollgate.json")
}

/// The dashboard at `path`, parsed.
pub fn load_from(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// `dashboards/tollgate.json`, parsed (panics with the reason otherwise).
pub fn load() -> Value {
    load_from(&path()).unwrap_or_else(|e| panic!("{e:#}"))
}

/// One query of one panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The title of the row the panel is in ("" before the first row).
    pub row: String,
    /// The panel's id, title, type ("timeseries", "stat", ...) and unit.
    pub panel_id: u64,
    pub panel: String,
    pub kind: String,
    pub unit: String,
    pub ref_id: String,
    /// The PromQL as written, template variables and all (see [`substitute`]).
    pub expr: String,
    /// Grafana's legendFormat (`{{label}}` placeholders), or "".
    pub legend: String,
    /// An instant query (stat, bar gauge, table): Grafana asks
    /// `/api/v1/query`; otherwise a range query (`/api/v1/query_range`).
    pub instant: bool,
}

/// Every row's title and its panels (those inside collapsed rows too), in
/// the file's order; panels before the first row are in a row titled "".
pub fn rows(dashboard: &Value) -> Vec<(String, Vec<&Value>)> {
    let mut out: Vec<(String, Vec<&Value>)> = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        if panel["type"] == "row" {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            out.push((title, panel["panels"].as_array().into_iter().flatten().collect()));
        } else {
            if out.is_empty() {
                out.push((String::new(), Vec::new()));
            }
            out.last_mut().expect("a row").1.push(panel);
        }
    }
    out
}

/// Every panel but rows, those inside collapsed rows too, in the file's order.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    rows(dashboard).into_iter().flat_map(|(_, panels)| panels).collect()
}

/// Every query of every panel (a panel without queries contributes none:
/// [`panels`] tells them apart).
pub fn panel_queries(dashboard: &Value) -> Vec<Query> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut out = Vec::new();
    for (row, panels) in rows(dashboard) {
        for panel in panels {
            for t in panel["targets"].as_array().into_iter().flatten() {
                out.push(Query {
                    row: row.clone(),
                    panel_id: panel["id"].as_u64().unwrap_or_default(),
                    panel: text(&panel["title"]),
                    kind: text(&panel["type"]),
                    unit: text(&panel["fieldConfig"]["defaults"]["unit"]),
                    ref_id: text(&t["refId"]),
                    expr: text(&t["expr"]),
                    legend: text(&t["legendFormat"]),
                    instant: t["instant"] == true,
                });
            }
        }
    }
    out
}

/// Each query variable as (name, PromQL that returns one series per value
/// the variable offers): `label_values(SELECTOR, LABEL)` becomes
/// `count by (LABEL) (SELECTOR)`, empty exactly when the variable's
/// drop-down would be.
pub fn variable_queries(dashboard: &Value) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or_default().to_owned();
        let query = match &v["query"] {
            Value::String(q) => q.as_str(),
            // Grafana 10+ writes {"qryType": 1, "query": "label_values(...)"}.
            q => q["query"].as_str().unwrap_or_default(),
        };
        out.push((name.clone(), label_values_as_promql(query).with_context(|| format!("variable {name}"))?));
    }
    Ok(out)
}

/// `label_values(SELECTOR, LABEL)` as `count by (LABEL) (SELECTOR)`.
pub fn label_values_as_promql(query: &str) -> Result<String> {
    let Some(args) = query.trim().strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')) else {
        bail!("{query:?} is not label_values(SELECTOR, LABEL)");
    };
    let Some((selector, label)) = args.rsplit_once(',') else {
        bail!("{query:?}: label_values without a selector (every series) is not supported");
    };
    Ok(format!("count by ({}) ({})", label.trim(), selector.trim()))
}

/// `expr` as Grafana sends it with "All" selected in every variable: the
/// dashboard's `$instance`/`${instance}` and `$interface` become `.*` (their
/// allValue), Grafana's `$__rate_interval` and `$__interval` become
/// `interval` (a Prometheus duration such as "30s"; give at least four
/// scrape intervals, as Grafana's $__rate_interval is) and `$__range`
/// becomes `range` (the dashboard's time range, e.g. "5m").
/// Anything else after a `$` is left as it is.
pub fn substitute(expr: &str, interval: &str, range: &str) -> String {
    let value = |name: &str| match name {
        "instance" | "interface" => Some(".*"),
        "__rate_interval" | "__interval" => Some(interval),
        "__range" => Some(range),
        _ => None,
    };
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], end)
        };
        match value(name) {
            Some(v) if len > 0 => {
                out.push_str(v);
                rest = &after[len..];
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_panel_of_the_dashboard_has_a_query_and_every_query_a_metric() {
        let d = load();
        let panels = panels(&d);
        assert!(panels.len() >= 20, "only {} panels", panels.len());
        let queries = panel_queries(&d);
        for p in &panels {
            let id = p["id"].as_u64().expect("panel id");
            assert!(queries.iter().any(|q| q.panel_id == id), "panel {} has no query", p["title"]);
        }
        for q in &queries {
            assert!(!q.ref_id.is_empty() && !q.expr.is_empty(), "{q:?}");
            assert!(
                !crate::promql::metric_names(&q.expr).is_empty() || q.expr.starts_with("up{"),
                "{q:?} reads no metric"
            );
        }
    }

    #[test]
    fn substituted_queries_of_the_dashboard_have_no_variables_left() {
        let d = load();
        for q in panel_queries(&d) {
            let e = substitute(&q.expr, "30s", "5m");
            assert!(!e.contains('$'), "{}/{}: {e}", q.panel, q.ref_id);
            if q.expr.contains("$instance") {
                assert!(e.contains(r#"instance=~".*""#), "{e}");
            }
        }
        let vars = variable_queries(&d).unwrap();
        assert_eq!(
            vars,
            [
                ("instance".to_owned(), "count by (instance) (tollgate_build_info)".to_owned()),
                (
                    "interface".to_owned(),
                    r#"count by (interface) (tollgate_interface_packets_total{instance=~"$instance"})"#
                        .to_owned()
                ),
            ]
        );
        for (_, v) in vars {
            assert!(!substitute(&v, "30s", "5m").contains('$'));
        }
    }

    #[test]
    fn substitute_replaces_the_dashboards_variables_and_grafanas_intervals() {
        assert_eq!(
            substitute(
                r#"rate(a{instance=~"$instance", interface=~"${interface}"}[$__rate_interval])"#,
                "1m",
                "1h"
            ),
            r#"rate(a{instance=~".*", interface=~".*"}[1m])"#
        );
        assert_eq!(
            substitute("x[$__interval] y[${__range}] z[$__range] ${instance}", "20s", "2m"),
            "x[20s] y[2m] z[2m] .*"
        );
        // Not ours: left alone, so that a test sees it.
        assert_eq!(
            substitute("a{b=\"$other\"} $instances $ ${x", "1m", "1h"),
            "a{b=\"$other\"} $instances $ ${x"
        );
    }

    #[test]
    fn label_values_become_a_count_by_the_label() {
        assert_eq!(
            label_values_as_promql(r#"label_values(m{a=~"$a", b="x,y"}, b)"#).unwrap(),
            r#"count by (b) (m{a=~"$a", b="x,y"})"#
        );
        assert!(label_values_as_promql("label_values(instance)").is_err());
        assert!(label_values_as_promql("query_result(up)").is_err());
    }
}
