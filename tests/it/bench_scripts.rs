//! The verdict logic of the benchmark scripts (bench/lib.sh), run by bash as the scripts run
//! it: BENCHMARKS.md's met / not met / noisy rows are only as right as these functions.

use std::path::Path;
use std::process::Command;

/// Source bench/lib.sh, run `script`, and return its stdout (trimmed); panics with stderr if
/// bash fails.
fn lib_sh(script: &str) -> String {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/lib.sh");
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!("source '{}'\n{script}", lib.display()))
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "bash failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8 output")
        .trim()
        .to_string()
}

fn judge(values: &[f64], op: &str, target: f64) -> String {
    let lines: Vec<String> = values.iter().map(f64::to_string).collect();
    lib_sh(&format!(
        "printf '%s\\n' {} | judge '{op}' {target}",
        lines.join(" ")
    ))
}

#[test]
fn a_target_met_or_missed_in_every_rep_has_a_verdict_whatever_the_spread() {
    assert_eq!(judge(&[1.00, 1.02, 1.05], "<=", 1.1), "met");
    assert_eq!(
        judge(&[0.5, 0.9, 1.05], "<=", 1.1),
        "met in every rep (3 of 3; spread 61 %)"
    );
    assert_eq!(judge(&[1.2, 1.25, 1.3], "<=", 1.1), "**not met**");
    assert_eq!(
        judge(&[0.3, 0.4, 0.46], ">=", 0.5),
        "**not met** in every rep (0 of 3; spread 40 %)"
    );
}

#[test]
fn reps_that_disagree_are_judged_by_the_median_only_when_the_spread_is_narrow() {
    // Spread (1.15 − 1.05) ÷ 1.08 = 9 % ≤ 15 %: the median (1.08) decides.
    assert_eq!(
        judge(&[1.05, 1.08, 1.15], "<=", 1.1),
        "met (median; 2 of 3 reps)"
    );
    assert_eq!(
        judge(&[1.05, 1.12, 1.15], "<=", 1.1),
        "**not met** (median; 1 of 3 reps met)"
    );
    // Spread (1.94 − 1.34) ÷ 1.55 = 39 %: no result.
    assert_eq!(
        judge(&[1.34, 1.94, 1.71, 1.55, 1.51], "<=", 1.5),
        "**noisy** (reps disagree: 1 of 5 met; spread 39 % > 15 %)"
    );
    assert_eq!(lib_sh("judge '<=' 1 < /dev/null"), "**not measured**");
}

#[test]
fn pairs_are_taken_rep_by_rep_and_their_median_and_spread_reported() {
    let out = lib_sh(
        r#"
        printf '%s\n' '{"x":110}' '{"x":95}' '{"x":120}' > "$tmp/ours.jsonl"
        printf '%s\n' '{"y":100}' '{"y":100}' '{"y":100}' > "$tmp/ref.jsonl"
        paired "$tmp/ours.jsonl" .x "$tmp/ref.jsonl" .y | paste -sd' '
        pair "$tmp/ours.jsonl" .x "$tmp/ref.jsonl" .y '<=' 1.1
        echo "$pair_ratio|$pair_spread|$pair_verdict"
        "#,
    );
    assert_eq!(
        out,
        "1.100000 0.950000 1.200000\n1.10|22.7|**noisy** (reps disagree: 2 of 3 met; spread 23 % > 15 %)"
    );
}

#[test]
fn a_reps_figure_is_the_median_of_its_slices() {
    let out = lib_sh(
        r#"
        printf '%s\n' \
          '{"readings_per_sec":10,"latency_us":{"p50":100,"p99":300},"errors":0,"stored":4}' \
          '{"readings_per_sec":30,"latency_us":{"p50":90,"p99":900},"errors":2,"stored":5}' \
          '{"readings_per_sec":20,"latency_us":{"p50":80,"p99":400},"errors":1,"stored":6}' \
          > "$tmp/slices.jsonl"
        slice_figures "$tmp/slices.jsonl"
        slice_figures "$tmp/slices.jsonl" '{stored: (map(.stored) | add)}'
        printf '%s\n' '{"readings_per_sec":1,"latency_us":{"p50":1,"p99":1},"errors":0}' \
          '{"readings_per_sec":4,"latency_us":{"p50":3,"p99":5},"errors":0}' > "$tmp/even.jsonl"
        slice_figures "$tmp/even.jsonl"
        "#,
    );
    assert_eq!(
        out,
        concat!(
            r#"{"readings_per_sec":20,"latency_us":{"p50":90,"p99":400},"errors":3,"slices":3}"#,
            "\n",
            r#"{"readings_per_sec":20,"latency_us":{"p50":90,"p99":400},"errors":3,"slices":3,"stored":15}"#,
            "\n",
            r#"{"readings_per_sec":2.5,"latency_us":{"p50":2,"p99":3},"errors":0,"slices":2}"#
        )
    );
}

#[test]
fn pooled_percentiles_are_over_every_sample_of_the_slices() {
    // Two slices' histograms: one quiet (99 samples at 100 µs, 1 at 150), one with a stall
    // (90 at 100, 10 at 1000). The median of their p99s would be 575; pooled, the p99 is the
    // 198th of 200 samples: 1000. Values in any order; `#` lines skipped.
    let out = lib_sh(
        r#"
        printf '# latency_us	count
100	99
150	1
' > "$tmp/hist.tsv"
        printf '# latency_us	count
1000	10
100	90
' >> "$tmp/hist.tsv"
        pooled_quantiles 0.5 0.99 0.999 < "$tmp/hist.tsv" | paste -sd' '
        pooled_quantiles 0.5 < /dev/null | paste -sd' '
        printf '%s
' \
          '{"readings_per_sec":10,"latency_us":{"p50":100,"p99":150},"errors":0}' \
          '{"readings_per_sec":30,"latency_us":{"p50":100,"p99":1000},"errors":1}' \
          > "$tmp/slices.jsonl"
        pooled_figures "$tmp/slices.jsonl" "$tmp/hist.tsv"
        pooled_figures "$tmp/slices.jsonl" /dev/null
        "#,
    );
    assert_eq!(
        out,
        concat!(
            "100 1000 1000 200\n",
            "nan 0\n",
            r#"{"readings_per_sec":20,"latency_us":{"p50":100,"p99":1000},"errors":1,"slices":2,"pooled_samples":200}"#,
            "\n",
            r#"{"readings_per_sec":20,"latency_us":{"p50":null,"p99":null},"errors":1,"slices":2,"pooled_samples":0}"#,
        )
    );
}

#[test]
fn spreads_are_max_minus_min_over_the_median() {
    assert_eq!(lib_sh("printf '%s\\n' 90 100 120 | spread_lines"), "30.0");
    assert_eq!(lib_sh("printf '%s\\n' 5 | spread_lines"), "nan");
    assert_eq!(lib_sh("printf '%s\\n' 3 1 2 4 | median"), "2.500000");
}
