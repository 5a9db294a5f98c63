//! The acceptance report: one row per scenario and mode, appended as a
//! Markdown table row to the file named by `TOLLGATE_ACCEPTANCE_REPORT`
//! (headed by [`COLUMNS`] when the file is new; `cargo xtask acceptance` and
//! `cargo xtask test` set it and print the table at the end), and always
//! printed to stderr.

use std::{io::Write as _, sync::Mutex, time::Duration};

/// The columns, in order.
pub const COLUMNS: [&str; 6] = [
    "scenario",
    "mode",
    "attempts before the block",
    "time to block (from the first attempt)",
    "legitimate requests lost",
    "what reached Kamailio",
];

/// Whether the full acceptance run was asked for (`cargo xtask
/// acceptance`): longer word lists, more phones and calls. The short
/// version runs inside `cargo xtask test`.
pub fn full() -> bool {
    std::env::var_os("TOLLGATE_ACCEPTANCE").is_some_and(|v| v == "full")
}

/// Chooses the short or the full figure.
pub fn scale<T>(short: T, full_size: T) -> T {
    if full() { full_size } else { short }
}

pub struct Row<'a> {
    pub scenario: &'a str,
    pub dry_run: bool,
    /// Attacker's attempts that reached the registrar before the block
    /// (`None`: nothing was to be blocked).
    pub attempts: Option<usize>,
    pub time_to_block: Option<Duration>,
    pub legit_lost: usize,
    pub reached: String,
}

pub fn record(row: &Row) {
    let cells = [
        row.scenario.to_owned(),
        if row.dry_run { "dry-run".to_owned() } else { "enforce".to_owned() },
        row.attempts.map_or("-".to_owned(), |n| n.to_string()),
        row.time_to_block.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
        row.legit_lost.to_string(),
        row.reached.replace('|', "/"),
    ];
    let line = format!("| {} |", cells.join(" | "));
    eprintln!("acceptance report: {line}");
    // The scenarios run on several threads of one process.
    static FILE: Mutex<()> = Mutex::new(());
    let _one_at_a_time = FILE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = std::env::var_os("TOLLGATE_ACCEPTANCE_REPORT")
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        if f.metadata().is_ok_and(|m| m.len() == 0) {
            let _ = writeln!(f, "| {} |\n|{}", COLUMNS.join(" | "), "---|".repeat(COLUMNS.len()));
        }
        let _ = writeln!(f, "{line}");
    }
}
