//! dashboards/plot.py, the dashboard's query plots (`cargo xtask
//! dashboards-png`), on made-up results for every query of the real
//! dashboard: one PNG per dashboard row, and a one-line error for input it
//! cannot plot. Needs no root, only Debian's python3-matplotlib.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::{Value, json};
use tollgate_tests::{dashboard, tool_present, unique};

/// Debian's interpreter, the one python3-matplotlib is installed for (as
/// in xtask: a `python3` earlier on PATH, such as pyenv's, does not see it).
const PYTHON: &str = "/usr/bin/python3";

const START: f64 = 1_764_700_000.0;
const END: f64 = 1_764_700_060.0;

fn plot(data: &Path, out: &Path) -> Output {
    Command::new(PYTHON)
        .arg(dashboard::dashboards_dir().join("plot.py"))
        .arg(data)
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("running {PYTHON} dashboards/plot.py: {e}"))
}

/// Labels for the `n`th made-up series of a query: one per `{{label}}` of
/// its legend (plus an instance).
fn labels(legend: &str, n: usize) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("instance".into(), json!("127.0.0.1:9465"));
    for part in legend.split("{{").skip(1) {
        if let Some((name, _)) = part.split_once("}}") {
            labels.insert(name.trim().to_owned(), json!(format!("{}-{n}", name.trim())));
        }
    }
    Value::Object(labels)
}

/// Made-up results for every query of the dashboard, in the shape the live
/// dashboard test records: two series each, a NaN and an +Inf among their
/// points; the first instant query's vector empty (a "no data" panel).
fn made_up_data(d: &Value) -> Value {
    let mut first_instant = true;
    let queries: Vec<Value> = dashboard::panel_queries(d)
        .into_iter()
        .map(|q| {
            let legend = q.legend.clone();
            let series: Vec<Value> = (0..2)
                .map(|n| {
                    let values: Vec<Value> = (0..=60u32)
                        .map(|s| {
                            let v = match s {
                                20 if n == 0 => "NaN".to_owned(),
                                21 if n == 0 => "+Inf".to_owned(),
                                _ => format!("{}", f64::from((s * (n as u32 + 3)) % 17) / 4.0),
                            };
                            json!([START + f64::from(s), v])
                        })
                        .collect();
                    json!({"metric": labels(&legend, n), "values": values})
                })
                .collect();
            let value = q.instant.then(|| {
                if std::mem::take(&mut first_instant) {
                    json!([])
                } else {
                    json!((0..2)
                        .map(|n| json!({"metric": labels(&legend, n), "value": [END, format!("{}", n + 1)]}))
                        .collect::<Vec<_>>())
                }
            });
            json!({
                "row": q.row,
                "panel_id": q.panel_id,
                "panel": q.panel,
                "type": q.kind,
                "unit": q.unit,
                "ref_id": q.ref_id,
                "legend": legend,
                "expr": dashboard::substitute(&q.expr, "5s", "60s"),
                "instant": q.instant,
                "range": series,
                "value": value,
            })
        })
        .collect();
    json!({"start": START, "end": END, "step": 1, "queries": queries})
}

/// The file name plot.py gives the `n`th row (from 1).
fn png_name(n: usize, row: &str) -> String {
    let mut slug = String::new();
    for c in row.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    format!("{n:02}-{}.png", slug.trim_matches('-'))
}

/// A directory under the temporary directory, removed on drop unless the
/// test failed (its PNGs are worth a look then).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("plot test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn the_plotter_draws_one_png_per_dashboard_row_and_rejects_bad_input_in_one_line() {
    let test = "the_plotter_draws_one_png_per_dashboard_row_and_rejects_bad_input_in_one_line";
    let matplotlib =
        Command::new(PYTHON).args(["-c", "import matplotlib"]).output().is_ok_and(|o| o.status.success());
    if !tool_present(test, "python3-matplotlib", matplotlib) {
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(unique("plot")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let d = dashboard::load();
    let rows: Vec<String> = dashboard::rows(&d).into_iter().map(|(title, _)| title).collect();
    assert!(rows.len() >= 8, "only {} rows found in the dashboard: {rows:?}", rows.len());

    let data = dir.0.join("queries.json");
    std::fs::write(&data, serde_json::to_vec(&made_up_data(&d)).unwrap()).unwrap();
    let out = dir.0.join("img");
    let run = plot(&data, &out);
    assert!(
        run.status.success(),
        "plot.py failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let expected: Vec<String> = rows.iter().enumerate().map(|(i, row)| png_name(i + 1, row)).collect();
    let mut written: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    written.sort();
    assert_eq!(written, expected, "one PNG per dashboard row, in its order");
    let printed = String::from_utf8_lossy(&run.stdout);
    assert_eq!(printed.lines().count(), rows.len(), "plot.py prints each PNG's path:\n{printed}");
    for name in &expected {
        let bytes = std::fs::read(out.join(name)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
    }

    let not_json = dir.0.join("not.json");
    std::fs::write(&not_json, "not JSON").unwrap();
    let no_queries = dir.0.join("empty.json");
    std::fs::write(&no_queries, json!({"start": START, "end": END, "step": 1, "queries": []}).to_string())
        .unwrap();
    for bad in [not_json, no_queries, dir.0.join("missing.json")] {
        let out = dir.0.join("bad-img");
        let run = plot(&bad, &out);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "plot.py accepted {}", bad.display());
        assert_eq!(stderr.trim().lines().count(), 1, "{}: not one line:\n{stderr}", bad.display());
        assert!(stderr.contains(bad.file_name().unwrap().to_str().unwrap()), "{stderr}");
        assert!(!out.join(&expected[0]).exists(), "a PNG from {}", bad.display());
    }
}
