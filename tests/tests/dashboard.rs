//! The Grafana dashboard (dashboards/tollgate.json) against Grafana's own
//! dashboard model (`@grafana/schema` types, checked by TypeScript in
//! dashboards/validate), against what no type says (check.mjs), and against
//! the metrics reference (dashboards/README.md). No Grafana runs here: these
//! check the file Grafana imports, not what Grafana renders.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};
use tollgate_tests::{dashboard, promql, tool_present};

fn validate_dir() -> PathBuf {
    dashboard::dashboards_dir().join("validate")
}

/// Whether node, npx and the npm packages pinned in dashboards/validate are
/// installed; says so (or, under TOLLGATE_REQUIRE_PRIVILEGED=1, fails) when
/// they are not.
fn validation_ready(test: &str) -> bool {
    let runs = |cmd: &str| Command::new(cmd).arg("--version").output().is_ok_and(|o| o.status.success());
    if !(tool_present(test, "node", runs("node")) && tool_present(test, "npx", runs("npx"))) {
        return false;
    }
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(validate_dir().join("package.json")).expect("package.json"),
    )
    .expect("package.json is JSON");
    let pinned = manifest["devDependencies"].as_object().expect("devDependencies");
    pinned.iter().all(|(package, version)| {
        let installed =
            std::fs::read_to_string(validate_dir().join("node_modules").join(package).join("package.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|m| m["version"].as_str().map(str::to_owned));
        tool_present(
            test,
            &format!(
                "npm package {package} {} in dashboards/validate/node_modules",
                version.as_str().unwrap_or("?")
            ),
            installed.as_deref() == version.as_str(),
        )
    })
}

/// Runs `cmd` in dashboards/validate: whether it succeeded, and its output.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.current_dir(validate_dir()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn check_mjs(files: &[&Path]) -> (bool, String) {
    run(Command::new("node").arg("check.mjs").args(files))
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_to_typescript() {
    if !validation_ready("the_dashboard_is_a_grafana_dashboard_to_typescript") {
        return;
    }
    // --no-install: never fetch a package called "tsc" from the registry.
    let (ok, out) = run(Command::new("npx").args(["--no-install", "tsc", "--noEmit", "-p", "."]));
    assert!(ok, "tsc --noEmit -p dashboards/validate failed:\n{out}");
}

#[test]
fn the_dashboard_passes_the_schema_literal_layout_and_query_checks() {
    if !validation_ready("the_dashboard_passes_the_schema_literal_layout_and_query_checks") {
        return;
    }
    let (ok, out) = check_mjs(&[&dashboard::path()]);
    assert!(ok, "node dashboards/validate/check.mjs failed:\n{out}");
    assert!(out.contains("tollgate.json: ok"), "{out}");
}

/// A broken copy of the dashboard and a fragment of what check.mjs must say.
struct Broken {
    name: &'static str,
    expect: &'static str,
    apply: fn(&mut Value),
}

/// The first panel that is not a row.
fn first_panel(d: &mut Value) -> &mut Value {
    d["panels"].as_array_mut().unwrap().iter_mut().find(|p| p["type"] != "row").unwrap()
}

const BROKEN: &[Broken] = &[
    Broken {
        name: "panels-is-a-string",
        expect: "imported as JSON (as by tsc -p): TS2322",
        apply: |d| d["panels"] = json!("x"),
    },
    Broken {
        name: "gridpos-without-w",
        expect: "The types of 'gridPos.w' are incompatible",
        apply: |d| {
            first_panel(d)["gridPos"].as_object_mut().unwrap().remove("w");
        },
    },
    Broken {
        name: "unknown-draw-style",
        expect: r#"Type '"lines"' is not assignable"#,
        apply: |d| first_panel(d)["fieldConfig"]["defaults"]["custom"]["drawStyle"] = json!("lines"),
    },
    Broken {
        name: "misspelt-key",
        expect: "'\"descripton\"' does not exist",
        apply: |d| {
            let p = first_panel(d).as_object_mut().unwrap();
            let v = p.remove("description").unwrap();
            p.insert("descripton".into(), v);
        },
    },
    Broken {
        name: "hard-coded-datasource",
        expect: r#"targets[0]: datasource must be {"type":"prometheus","uid":"${datasource}"}"#,
        apply: |d| first_panel(d)["targets"][0]["datasource"]["uid"] = json!("P1809F7CD0C75ACF3"),
    },
    Broken {
        name: "or-vector-0",
        expect: "vector(): a query must be empty when its metric is missing",
        apply: |d| {
            let t = &mut first_panel(d)["targets"][0]["expr"];
            *t = json!(format!("{} or vector(0)", t.as_str().unwrap()));
        },
    },
    Broken {
        name: "not-filtered-by-instance",
        expect: r#"tollgate_xdp_packets_total is not filtered by instance=~"$instance""#,
        apply: |d| {
            first_panel(d)["targets"][0]["expr"] =
                json!("sum by (action, reason) (rate(tollgate_xdp_packets_total[$__rate_interval]))")
        },
    },
    Broken {
        name: "duplicate-id",
        expect: "is also the id of",
        apply: |d| {
            let panels = d["panels"].as_array_mut().unwrap();
            panels[2]["id"] = panels[1]["id"].clone();
        },
    },
    Broken {
        name: "past-24-columns",
        expect: "is past the grid's 24 columns",
        apply: |d| first_panel(d)["gridPos"]["x"] = json!(20),
    },
    Broken { name: "no-query", expect: "has no query", apply: |d| first_panel(d)["targets"] = json!([]) },
];

#[test]
fn the_checks_fail_on_broken_copies_of_the_dashboard() {
    if !validation_ready("the_checks_fail_on_broken_copies_of_the_dashboard") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tollgate-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let good = dashboard::load();
    let files: Vec<PathBuf> = BROKEN
        .iter()
        .map(|b| {
            let mut d = good.clone();
            (b.apply)(&mut d);
            assert_ne!(d, good, "{} changed nothing", b.name);
            let path = dir.join(format!("{}.json", b.name));
            std::fs::write(&path, serde_json::to_string_pretty(&d).unwrap()).unwrap();
            path
        })
        .collect();
    let (ok, out) = check_mjs(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "check.mjs passed broken dashboards:\n{out}");
    let mut missed = Vec::new();
    for b in BROKEN {
        // Each file's lines start with its name (a type error's message may
        // go on over indented lines).
        let mut lines = Vec::new();
        let mut mine = false;
        for line in out.lines() {
            if !line.starts_with(' ') {
                mine = line.contains(&format!("{}.json", b.name));
            }
            if mine {
                lines.push(line);
            }
        }
        let said = lines.join("\n");
        if !said.contains(b.expect) || !said.contains("problem(s)") {
            missed.push(format!("{}: expected {:?} in:\n{said}", b.name, b.expect));
        }
    }
    assert!(missed.is_empty(), "{}\n\nwhole output:\n{out}", missed.join("\n\n"));
}

#[test]
fn every_metric_of_the_dashboard_is_in_the_metrics_reference() {
    let readme_path = dashboard::dashboards_dir().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("dashboards/README.md");
    let documented = promql::documented_metrics(&readme);
    assert!(
        documented.len() >= 20,
        "only {} metrics read from the table of {}",
        documented.len(),
        readme_path.display()
    );
    let d = dashboard::load();
    let variables = dashboard::variable_queries(&d).expect("variable queries");
    let all = dashboard::panel_queries(&d)
        .into_iter()
        .map(|q| (format!("panel {:?}", q.panel), q.expr))
        .chain(variables.into_iter().map(|(name, q)| (format!("variable {name}"), q)));
    // Each metric with where the dashboard reads it.
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (what, expr) in all {
        for name in promql::metric_names(&expr).into_iter().filter(|m| m != "up") {
            used.entry(name).or_default().insert(what.clone());
        }
    }
    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !documented.contains(*name))
        .map(|(name, wheres)| format!("{name} ({})", wheres.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics the dashboard reads that the table of dashboards/README.md does not list:\n  {}",
        missing.join("\n  ")
    );
    assert!(used.len() >= 30, "the dashboard reads only {} tollgate metrics", used.len());
}
