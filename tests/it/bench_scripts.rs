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
fn the_median_interval_is_the_sign_tests() {
    // n = 5: even min–max covers only 1 − 2/32 = 93.75 %, so there is no 95 % interval.
    assert_eq!(lib_sh("seq 5 | median_interval"), "nan nan 5 nan");
    // n = 6: min–max, 1 − 2/64; n = 10: the 2nd smallest to the 2nd largest (P(X ≤ 1) =
    // 11/1024); n = 20: the 6th to the 15th (P(X ≤ 5) = 2.07 %), as in the sign test's tables.
    assert_eq!(lib_sh("seq 6 | median_interval"), "1 6 6 96.9");
    assert_eq!(lib_sh("seq 10 | sort -R | median_interval"), "2 9 10 97.9");
    assert_eq!(lib_sh("seq 20 | median_interval"), "6 15 20 95.9");
    assert_eq!(lib_sh("seq 30 | median_interval"), "10 21 30 95.7");
    // "nan" (a zero reference) is not a value.
    assert_eq!(
        lib_sh("printf '%s\\n' 1 nan 2 3 4 5 6 | median_interval"),
        "1 6 6 96.9"
    );
}

#[test]
fn many_slice_ratios_are_judged_by_their_median_interval() {
    let verdict = |ratios: &str, op: &str, target: f64| {
        lib_sh(&format!(
            "printf '%s\\n' {ratios} | interval_verdict '{op}' {target}"
        ))
    };
    // 20 ratios, 0.80 … 1.75 by 0.05: the 6th and 15th are 1.05 and 1.50.
    let twenty = (0..20)
        .map(|i| format!("{:.2}", 0.80 + 0.05 * f64::from(i)))
        .collect::<Vec<_>>()
        .join(" ");
    let interval = "95 % interval of the median of 20 slice ratios 1.05–1.50×";
    for (op, target, expected) in [
        (">=", 1.0, format!("met ({interval})")),
        (">=", 1.6, format!("**not met** ({interval})")),
        (">=", 1.2, format!("**noisy** ({interval}, across 1.2×)")),
        ("<=", 1.5, format!("met ({interval})")),
        ("<=", 1.0, format!("**not met** ({interval})")),
    ] {
        assert_eq!(verdict(&twenty, op, target), expected, "{op} {target}");
    }
    assert_eq!(
        verdict("1.1 1.2 1.3", ">=", 1.0),
        "**noisy** (3 slice pairs: too few for a 95 % interval)"
    );
}

#[test]
fn noisy_reps_are_judged_again_on_every_slice_pair() {
    // Reps 0.85 … 1.25: they disagree, spread 38 %. The 20 slices, paired in order, give ratios
    // 1.03 … 1.60: all of the median's 95 % interval is ≥ 1.
    let out = lib_sh(
        r#"
        for x in 85 95 105 115 125; do echo "{\"x\":$x}"; done > "$tmp/ours.jsonl"
        for _ in 1 2 3 4 5; do echo '{"y":100}'; done > "$tmp/ref.jsonl"
        for i in $(seq 20); do echo "{\"x\":$((100 + i * 3))}"; done > "$tmp/ours-slices.jsonl"
        for i in $(seq 20); do echo '{"y":100}'; done > "$tmp/ref-slices.jsonl"
        pair "$tmp/ours.jsonl" .x "$tmp/ref.jsonl" .y '>=' 1.0 "$tmp/ours-slices.jsonl" "$tmp/ref-slices.jsonl"
        echo "$pair_ratio|$pair_spread|$pair_verdict"
        # Without the slices the reps stay noisy.
        pair "$tmp/ours.jsonl" .x "$tmp/ref.jsonl" .y '>=' 1.0
        echo "$pair_verdict"
        # Slices that straddle the target leave it noisy, with their interval.
        pair "$tmp/ours.jsonl" .x "$tmp/ref.jsonl" .y '>=' 1.2 "$tmp/ours-slices.jsonl" "$tmp/ref-slices.jsonl"
        echo "$pair_verdict"
        # Reps that agree are judged by the reps alone: the slices are not read.
        for _ in 1 2 3; do echo '{"x":130}'; done > "$tmp/agree.jsonl"
        pair "$tmp/agree.jsonl" .x "$tmp/ref.jsonl" .y '>=' 1.0 "$tmp/ours-slices.jsonl" "$tmp/ref-slices.jsonl"
        echo "$pair_verdict"
        "#,
    );
    assert_eq!(
        out,
        "1.05|38.1|met (95 % interval of the median of 20 slice ratios 1.18–1.45×); \
         by rep: reps disagree: 3 of 5 met; spread 38 % > 15 %\n\
         **noisy** (reps disagree: 3 of 5 met; spread 38 % > 15 %)\n\
         **noisy** (95 % interval of the median of 20 slice ratios 1.18–1.45×, across 1.2×); \
         by rep: reps disagree: 1 of 5 met; spread 38 % > 15 %\n\
         met"
    );
}

#[test]
fn a_pooled_percentile_comes_with_its_order_statistic_interval() {
    // 100 samples: 50 at 10, 40 at 20, 10 at 100. The median's ranks 50 ∓ 9.8 reach from the
    // 10s into the 20s; the p99's (99 ∓ 1.95) all fall in the top 10.
    let hist = r"printf '10\t50\n100\t10\n20\t40\n'";
    assert_eq!(
        lib_sh(&format!("{hist} | quantile_interval 0.5")),
        "10 10 20 100"
    );
    assert_eq!(
        lib_sh(&format!("{hist} | quantile_interval 0.99")),
        "100 100 100 100"
    );
    assert_eq!(lib_sh("quantile_interval 0.5 < /dev/null"), "nan nan nan 0");
}

#[test]
fn noisy_percentile_reps_are_judged_on_the_sittings_samples_pooled() {
    // Ours: 10 000 samples, p99 = 150 µs (all of the top 2 % at 150); the reference's at 100.
    let out = lib_sh(
        r#"
        printf '50	9800
150	200
' > "$tmp/ours.tsv"
        printf '40	9800
100	200
' > "$tmp/ref.tsv"
        pooled_verdict 0.99 '<=' 1.2 "$tmp/ours.tsv" "$tmp/ref.tsv"
        pooled_verdict 0.99 '<=' 2 "$tmp/ours.tsv" "$tmp/ref.tsv"
        # Ours' p99 at the edge of its tail: its interval reaches down into the body.
        printf '50	9900
150	100
' > "$tmp/edge.tsv"
        pooled_verdict 0.99 '<=' 1.2 "$tmp/edge.tsv" "$tmp/ref.tsv"
        pooled_verdict 0.99 '<=' 1.2 /dev/null "$tmp/ref.tsv"
        "#,
    );
    let pooled = "the sitting pooled: p99 150 ÷ 100 µs = 1.50×, 1.50–1.50× within their 95 % \
                  intervals; 10000 ÷ 10000 samples";
    assert_eq!(
        out,
        format!(
            "**not met** ({pooled})\nmet ({pooled})\n\
             **noisy** (the sitting pooled: p99 50 ÷ 100 µs = 0.50×, 0.50–1.50× within their \
             95 % intervals; 10000 ÷ 10000 samples, across 1.2×)\n\
             **not measured** (no pooled samples)"
        )
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
