//! The metric names a PromQL expression reads, and the metric names
//! dashboards/README.md documents, so that the alert rules' and the
//! dashboard's tests can check that every query reads a metric the agent
//! exports (a renamed metric turns them red instead of silently matching
//! nothing).

use std::collections::BTreeSet;

/// Suffixes of a histogram's series: its name in the metric table is the
/// one without them.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// Words that end a parenthesised list of label names when they precede it.
const LABEL_LIST_KEYWORDS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names `expr` selects that are tollgate's (starting with
/// `tollgate_`) or Prometheus's own `up`, with a histogram's
/// `_bucket`/`_sum`/`_count` suffix taken off.
///
/// A light tokenizer, not a parser: it skips string literals, label
/// matchers (`{...}`), ranges and subqueries (`[...]`), label lists after
/// `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`, function
/// names (a word followed by `(`), and numbers and durations. What is left
/// of the words is metric names (and keywords such as `and` or `offset`,
/// which are neither `up` nor `tollgate_...`).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Set after a keyword whose next parenthesised list is label names.
    let mut label_list_next = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i = skip_string(&chars, i);
                label_list_next = false;
            }
            '#' => {
                // A comment, to the end of the line.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '{' => i = skip_until(&chars, i, '}'),
            '[' => i = skip_until(&chars, i, ']'),
            '(' if label_list_next => {
                i = skip_until(&chars, i, ')');
                label_list_next = false;
            }
            c if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                // A number or a duration (5m, 1e3, 0x1f, 1.5).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let is_call = chars.get(next) == Some(&'(');
                if LABEL_LIST_KEYWORDS.contains(&word.as_str()) {
                    // `group_left` may come without a list.
                    label_list_next = is_call;
                } else if !is_call && (word == "up" || word.starts_with("tollgate_")) {
                    names.insert(histogram_base(&word).to_owned());
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// `name` without a histogram series' suffix.
pub fn histogram_base(name: &str) -> &str {
    HISTOGRAM_SUFFIXES.iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

/// Index just past the string literal opening at `start` (PromQL's
/// double- and single-quoted strings take backslash escapes, backquoted
/// ones do not).
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Index just past the `close` that ends the bracket opening at `start`,
/// skipping string literals inside (a label value may hold `}`).
fn skip_until(chars: &[char], start: usize, close: char) -> usize {
    let open = chars[start];
    let mut depth = 0usize;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// The metric names in the metric table of a Markdown document (the table
/// whose header row starts with `| metric |`, as in dashboards/README.md):
/// every backquoted `tollgate_...` name in the first cell of its rows
/// (a cell may name several: `` `a` / `b` ``).
pub fn documented_metrics(markdown: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut lines = markdown.lines().skip_while(|l| !l.trim_start().starts_with("| metric |"));
    // The header and its |---| separator.
    lines.next();
    lines.next();
    for line in lines.take_while(|l| l.trim_start().starts_with('|')) {
        let first = line.trim_start().trim_start_matches('|').split('|').next().unwrap_or("");
        for (n, part) in first.split('`').enumerate() {
            if n % 2 == 1 && part.starts_with("tollgate_") {
                names.insert(part.to_owned());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn finds_the_metrics_and_only_them() {
        assert_eq!(
            names(
                r#"sum by (instance, kind) (increase(tollgate_restriction_decisions_total{event="impose", kind=~"auth-suspend|identity-suspend"}[10m])) > 0"#
            ),
            ["tollgate_restriction_decisions_total"]
        );
        assert_eq!(
            names("tollgate_map_entries / on (instance, map) tollgate_map_capacity_entries > 0.8"),
            ["tollgate_map_capacity_entries", "tollgate_map_entries"]
        );
        assert_eq!(
            names(r#"(up{job="tollgate"} == 1) unless on (instance) (tollgate_xdp_attached == 1)"#),
            ["tollgate_xdp_attached", "up"]
        );
    }

    #[test]
    fn takes_a_histograms_suffix_off() {
        assert_eq!(
            names(
                "histogram_quantile(0.99, sum by (instance, le) (rate(tollgate_decision_latency_seconds_bucket[5m]))) > 0.1"
            ),
            ["tollgate_decision_latency_seconds"]
        );
        assert_eq!(
            names("tollgate_decision_latency_seconds_sum / tollgate_decision_latency_seconds_count"),
            ["tollgate_decision_latency_seconds"]
        );
    }

    #[test]
    fn skips_strings_label_lists_functions_and_durations() {
        // A label value, a label named like a metric, a function call,
        // offsets, subqueries and numbers are not metric names.
        assert_eq!(
            names(
                r#"label_replace(tollgate_sip_invites_total{class="tollgate_x}"}, "up", "$1", "tollgate_y", "(.*)") offset 5m"#
            ),
            ["tollgate_sip_invites_total"]
        );
        assert_eq!(names("sum without (up, tollgate_z) (tollgate_a)"), ["tollgate_a"]);
        assert_eq!(
            names("tollgate_e * on (instance) group_left tollgate_f + rate(tollgate_g[5m])"),
            ["tollgate_e", "tollgate_f", "tollgate_g"]
        );
        assert_eq!(names("max_over_time(tollgate_b[1h:5m]) > 1e3 and up"), ["tollgate_b", "up"]);
        assert_eq!(names("uptime + upx + tollgate_c @ 1609746000"), ["tollgate_c"]);
        // Grafana's template variables are words too, but not metrics.
        assert_eq!(names(r#"rate(tollgate_d{instance=~"$instance"}[$__rate_interval])"#), ["tollgate_d"]);
    }

    #[test]
    fn reads_the_metric_table() {
        let md = "# T\n\ntext `tollgate_not_in_table`\n\n| metric | type | labels | meaning |\n|---|---|---|---|\n\
                  | `tollgate_a_total` | counter | `x` | counts `tollgate_mentioned` |\n\
                  | `tollgate_b` / `tollgate_c` | gauge | | b and c |\n\nafter\n| `tollgate_other_table` | |\n";
        assert_eq!(
            documented_metrics(md).into_iter().collect::<Vec<_>>(),
            ["tollgate_a_total", "tollgate_b", "tollgate_c"]
        );
    }
}
