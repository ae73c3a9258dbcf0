//! The measured-vs-injected table: each scenario adds its row, and the whole table (the
//! rows of every scenario this run has finished) is rewritten to [`PATH`] each time, for
//! BENCHMARKS.md.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Where the table goes (the target directory's scratch space; printed by each test).
pub const PATH: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/faults-table.md");

/// Rows by scenario key (keys sort in scenario order: `1 delay`, `2 jitter`, …).
static ROWS: Mutex<BTreeMap<String, Row>> = Mutex::new(BTreeMap::new());

/// One scenario's line.
pub struct Row {
    pub injected: String,
    pub measured: String,
    pub checked: String,
}

/// Prints `injected: … | measured: …`. Call it before the assertions, so that a failing
/// scenario shows its figures (libtest prints a failed test's captured output).
pub fn show(key: &str, row: &Row) {
    eprintln!(
        "{key}: injected: {} | measured: {} | checked: {}",
        row.injected, row.measured, row.checked
    );
}

/// Adds the row to the table; call it after the assertions so the table holds passing
/// scenarios only.
pub fn record(key: &str, row: Row) {
    let mut rows = ROWS.lock().unwrap_or_else(|p| p.into_inner());
    rows.insert(key.to_string(), row);
    let mut text = String::from(
        "| scenario | injected (each way) | measured | checked |\n|---|---|---|---|\n",
    );
    for (key, row) in rows.iter() {
        text.push_str(&format!(
            "| {key} | {} | {} | {} |\n",
            row.injected, row.measured, row.checked
        ));
    }
    match std::fs::write(PATH, text) {
        Ok(()) => eprintln!("table: {PATH}"),
        Err(err) => eprintln!("table: writing {PATH}: {err}"),
    }
}
