//! The Prometheus alert rules (dashboards/alerts.yml): promtool accepts
//! them and their unit tests (dashboards/alerts.test.yml) pass; every
//! metric they read is one the agent exports (the metric table of
//! dashboards/README.md); and each alert has what an operator needs: a
//! severity, a summary, a description and a runbook, and tests that show
//! it firing and not firing.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use tollgate_tests::{
    promql::{documented_metrics, metric_names},
    tool_present,
};
use yaml_rust2::{Yaml, YamlLoader};

/// The alerts issues 14, 15 and 16 ask for.
const ALERTS: [&str; 12] = [
    "TollgateBruteForce",
    "TollgateIntlSurgeRestricted",
    "TollgateCountryRestricted",
    "TollgateDryRunWouldRestrict",
    "TollgateMapNearlyFull",
    "TollgateEventsLost",
    "TollgateAgentDown",
    "TollgateNotAttached",
    "TollgateDecisionLatencyHigh",
    // Issue 15, blocklist feeds.
    "TollgateFeedFailing",
    // Issue 16, the cluster.
    "TollgateClusterDisconnected",
    "TollgateClusterSyncStale",
];

/// Alerts that must fire at the first evaluation that sees their cause
/// (and that a live test watches fire within seconds): no `for:`.
const IMMEDIATE: [&str; 3] =
    ["TollgateBruteForce", "TollgateIntlSurgeRestricted", "TollgateCountryRestricted"];

fn dashboards() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn load(file: &str) -> Yaml {
    let path = dashboards().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(docs.len(), 1, "{}: one YAML document", path.display());
    docs.remove(0)
}

/// The rules of alerts.yml, checking that it has one group, `tollgate`.
fn rules() -> Vec<Yaml> {
    let doc = load("alerts.yml");
    let groups = doc["groups"].as_vec().expect("alerts.yml: groups is a list");
    assert_eq!(groups.len(), 1, "alerts.yml: one rule group");
    assert_eq!(groups[0]["name"].as_str(), Some("tollgate"), "alerts.yml: the group is named tollgate");
    groups[0]["rules"].as_vec().expect("alerts.yml: rules is a list").clone()
}

fn str_of<'a>(rule: &'a Yaml, key: &str) -> &'a str {
    rule[key].as_str().unwrap_or_else(|| panic!("{key} of {rule:?} is not a string"))
}

/// Runs `promtool ARGS` in dashboards/ when promtool is installed (and
/// fails without it under TOLLGATE_REQUIRE_PRIVILEGED=1), failing with
/// its output when it fails.
fn promtool(test: &str, args: &[&str]) {
    let found = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if !tool_present(test, "promtool (Debian package prometheus)", found) {
        return;
    }
    let out =
        Command::new("promtool").args(args).current_dir(dashboards()).output().expect("running promtool");
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_the_rules() {
    promtool("promtool_checks_the_rules", &["check", "rules", "alerts.yml"]);
}

#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    promtool("promtool_unit_tests_of_the_rules_pass", &["test", "rules", "alerts.test.yml"]);
}

#[test]
fn every_metric_the_rules_read_is_exported() {
    let readme = std::fs::read_to_string(dashboards().join("README.md")).expect("dashboards/README.md");
    let exported = documented_metrics(&readme);
    assert!(exported.len() > 30, "the metric table of dashboards/README.md was not found: {exported:?}");
    let mut unknown = Vec::new();
    for rule in rules() {
        let name = str_of(&rule, "alert");
        let expr = str_of(&rule, "expr");
        let used = metric_names(expr);
        assert!(!used.is_empty(), "{name} reads no tollgate metric: {expr}");
        // `up` is Prometheus's own, for every target.
        unknown.extend(
            used.into_iter().filter(|m| m != "up" && !exported.contains(m)).map(|m| format!("{name}: {m}")),
        );
    }
    assert!(
        unknown.is_empty(),
        "alerts.yml reads metrics that are not in the metric table of dashboards/README.md:\n  {}",
        unknown.join("\n  ")
    );
}

#[test]
fn every_alert_has_a_severity_summary_description_and_runbook() {
    let rules = rules();
    let names: BTreeSet<&str> = rules.iter().map(|r| str_of(r, "alert")).collect();
    assert_eq!(names, BTreeSet::from(ALERTS), "alerts.yml: the alerts");
    for rule in &rules {
        let name = str_of(rule, "alert");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("page" | "ticket")),
            "{name}: severity {severity:?}, not page or ticket"
        );
        let annotations = rule["annotations"].as_hash().unwrap_or_else(|| panic!("{name}: no annotations"));
        let annotation = |key: &str| {
            annotations
                .get(&Yaml::String(key.into()))
                .and_then(Yaml::as_str)
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| panic!("{name}: no {key} annotation"))
        };
        for key in ["summary", "description"] {
            assert!(
                annotation(key).contains("{{ $labels.instance }}"),
                "{name}: its {key} does not name the instance"
            );
        }
        let runbook = annotation("runbook");
        for part in ["Meaning:", "Check first:", "Do:", "`tollgate "] {
            assert!(runbook.contains(part), "{name}: its runbook has no {part:?}");
        }
        if IMMEDIATE.contains(&name) {
            assert!(rule["for"].is_badvalue(), "{name} must fire at once, without `for:`");
        }
    }
}

#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let doc = load("alerts.test.yml");
    assert_eq!(
        doc["rule_files"].as_vec().map(|v| v.iter().filter_map(Yaml::as_str).collect::<Vec<_>>()),
        Some(vec!["alerts.yml"]),
        "alerts.test.yml tests alerts.yml"
    );
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in doc["tests"].as_vec().expect("alerts.test.yml: tests is a list") {
        for case in test["alert_rule_test"].as_vec().into_iter().flatten() {
            let name = str_of(case, "alertname");
            let expected =
                case["exp_alerts"].as_vec().unwrap_or_else(|| panic!("{name}: exp_alerts is not a list"));
            if expected.is_empty() {
                quiet.insert(name);
            } else {
                for alert in expected {
                    assert!(
                        alert["exp_annotations"]["summary"].as_str().is_some(),
                        "{name}: a firing case that does not check the summary"
                    );
                }
                fires.insert(name);
            }
        }
    }
    for name in ALERTS {
        assert!(fires.contains(name), "alerts.test.yml: no case where {name} fires");
        assert!(quiet.contains(name), "alerts.test.yml: no case where {name} does not fire");
    }
}
