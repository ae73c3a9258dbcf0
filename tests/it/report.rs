//! `client --report` and `bench --report`: the picture of a run is a valid SVG (parsed as
//! XML) holding the expected series and figures, or a PNG that decodes. The SVGs are also
//! copied under `target/report/` for the README (docs/img/ holds committed copies).

use std::path::Path;

use crate::harness::*;

/// Copy a picture a test made to `target/report/NAME`, for the README's images.
pub fn keep_for_readme(picture: &Path, name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/report");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(picture, dir.join(name)).unwrap();
}

/// Every text of the SVG, one string per `<text>` element.
fn texts(doc: &roxmltree::Document) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

/// The points of the polylines stroked in `colour`.
fn polyline_points(doc: &roxmltree::Document, colour: &str) -> Vec<usize> {
    doc.descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some(colour))
        .map(|n| {
            n.attribute("points")
                .unwrap_or("")
                .split_whitespace()
                .count()
        })
        .collect()
}

/// Filled rectangles of `colour` (histogram or rate bars).
fn bars(doc: &roxmltree::Document, colour: &str) -> usize {
    doc.descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some(colour))
        .count()
}

fn parse(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn client_report_svg_has_the_rtt_series_histogram_and_summary() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let picture = dir.path().join("client-report.svg");
    let out = run(bin().args([
        "client",
        &server.addr.to_string(),
        "--count",
        "25",
        "--interval",
        "10ms",
        "--sensor",
        "pic",
        "--report",
        picture.to_str().unwrap(),
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = parse(&picture);
    let doc = roxmltree::Document::parse(&svg).expect("the report is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts = texts(&doc);
    let all = texts.join("\n");
    assert!(all.contains("sensorlink client"), "{all}");
    assert!(all.contains("25 sent, 25 acked, 0 lost"), "{all}");
    assert!(all.contains("rtt min/avg/max/mdev"), "{all}");
    assert!(
        all.contains("RTT (25 samples)"),
        "the series' legend: {all}"
    );
    for p in ["p50", "p90", "p99"] {
        assert!(
            texts.iter().any(|t| t.starts_with(&format!("{p}: "))),
            "{p}: {all}"
        );
    }
    // The RTT series: one polyline (blue), plus its legend's 2-point stroke. Acks that land
    // in the same 1 ms bucket (a loaded machine delays a few and they arrive together) are
    // drawn as that bucket's min and max, so the line has at most 25 points, and fewer only
    // by such merges: most of the 10 ms-spaced samples stay points of their own.
    let rtt = polyline_points(&doc, "#0000FF");
    assert!(
        rtt.iter().any(|&n| (13..=25).contains(&n)),
        "an RTT line through the 25 samples: {rtt:?}"
    );
    // Histogram bars: blue, filled, and at least one.
    assert!(bars(&doc, "#0000FF") >= 1, "histogram bars");
    // No timeout, loss or reconnect happened: none is marked.
    for colour in ["#E68C00", "#FF0000", "#8200A0"] {
        assert!(polyline_points(&doc, colour).is_empty(), "{colour} marked");
    }
    keep_for_readme(&picture, "client-report.svg");
}

#[test]
fn client_report_png_decodes() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let picture = dir.path().join("run.png");
    let out = run(bin().args([
        "client",
        &server.addr.to_string(),
        "--count",
        "3",
        "--interval",
        "10ms",
        "--report",
        picture.to_str().unwrap(),
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&picture).unwrap(),
    ));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a bounded size")];
    let frame = reader.next_frame(&mut pixels).expect("the image decodes");
    assert_eq!((frame.width, frame.height), (1200, 860));
    // Not a blank canvas: some pixels are not white.
    assert!(pixels[..frame.buffer_size()].iter().any(|b| *b < 200));
}

#[test]
fn report_flags_refuse_other_extensions() {
    let out = run(bin().args(["client", "127.0.0.1:1", "--report", "run.jpg"]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(".svg or .png"), "{stderr}");
    let out = run(bin().args(["bench", "127.0.0.1:1", "--report", "run.pdf"]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(".svg or .png"), "{stderr}");
}

#[test]
fn bench_report_svg_has_rate_and_latency_per_second() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let picture = dir.path().join("bench-report.svg");
    let out = run(bin().args([
        "bench",
        &server.addr.to_string(),
        "--duration",
        "2s",
        "--rate",
        "500",
        "--no-progress",
        "--report",
        picture.to_str().unwrap(),
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = parse(&picture);
    let doc = roxmltree::Document::parse(&svg).expect("the report is well-formed XML");
    let all = texts(&doc).join("\n");
    assert!(all.contains("sensorlink bench"), "{all}");
    assert!(all.contains("readings acked in"), "{all}");
    assert!(all.contains("readings acked per second"), "{all}");
    assert!(all.contains("ack latency per second"), "{all}");
    // One rate bar per second of the run (2 s, perhaps a third cut short).
    let rate_bars = bars(&doc, "#0000FF");
    assert!((2..=3).contains(&rate_bars), "{rate_bars} rate bars");
    // p50 (green), p99 (dark red), max (grey): a line with a point per second, and a legend.
    for colour in ["#008C00", "#C80000", "#5A5A5A"] {
        let lines = polyline_points(&doc, colour);
        assert!(lines.iter().any(|n| *n >= 2), "{colour}: {lines:?}");
    }
    keep_for_readme(&picture, "bench-report.svg");
}

/// A missing font is a clear error before the run (no reading sent), not after it.
#[test]
fn a_missing_font_fails_before_the_run() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin()
        .args([
            "client",
            &server.addr.to_string(),
            "--count",
            "1",
            "--report",
            dir.path().join("run.svg").to_str().unwrap(),
        ])
        .env(
            "SENSORLINK_REPORT_FONT",
            dir.path().join("no-such-font.ttf"),
        ));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-font.ttf"), "{stderr}");
    assert!(stderr.contains("fonts-dejavu-core"), "{stderr}");
    assert!(out.stdout.is_empty(), "the run did not start");
    assert!(!dir.path().join("run.svg").exists());
}

/// A `--report` file that cannot be written (no such directory, or a directory in its
/// place) is a clear error before the run, for the client and for bench: no reading sent.
#[test]
fn an_unwritable_report_file_fails_before_the_run() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let in_the_way = dir.path().join("taken.svg");
    std::fs::create_dir(&in_the_way).unwrap();
    let missing = dir.path().join("no-such-dir").join("run.svg");
    for picture in [&missing, &in_the_way] {
        let picture = picture.to_str().unwrap();
        let client = run(bin().args([
            "client",
            &server.addr.to_string(),
            "--count",
            "1",
            "--report",
            picture,
        ]));
        let bench = run(bin().args([
            "bench",
            &server.addr.to_string(),
            "--duration",
            "1s",
            "--no-progress",
            "--report",
            picture,
        ]));
        for out in [client, bench] {
            assert_eq!(out.status.code(), Some(2), "{picture}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(&format!("cannot write the report {picture}")),
                "{stderr}"
            );
            assert!(out.stdout.is_empty(), "the run did not start: {picture}");
        }
    }
    assert!(!dir.path().join("no-such-dir").exists());
    assert!(in_the_way.is_dir(), "left as it was");
}
