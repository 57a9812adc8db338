//! The B1 benchmark's correctness, run small: the naive baseline (`baseline`, which the bench
//! measures meterflow against) and `meterflow run` with one and two workers agree on every
//! count, on the money and on every signed table they both write. The speed is measured by the
//! bench itself (`benchmarks/RESULTS.md`), never here.

use std::path::Path;
use std::process::Command;

use meterflow_tests::signed_tables::{consolidated, same_tables, BASELINE_TABLES};
use meterflow_tests::{built_bin, generate, meterflow_ok, run_ok, Scratch};

fn counts(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("counts.json")).unwrap()).unwrap()
}

#[test]
fn the_bench_baseline_and_meterflow_write_the_same_tables() {
    let s = Scratch::new("bench-baseline");
    let dir = s.path();
    // Few customers over few days: buckets dense enough for anomalies to be found. Duplicates,
    // late and invalid records (gen's defaults), corrections, checksums and CloudEvents on.
    generate(
        dir,
        40_000,
        6,
        11,
        &[
            "--days",
            "20",
            "--correction-rate",
            "0.03",
            "--checksum-rate",
            "0.2",
            "--cloudevents-rate",
            "0.2",
        ],
    );
    let (events, catalog) = (dir.join("events.jsonl"), dir.join("catalog"));
    let chunk = (64 << 10).to_string();
    std::fs::write(
        dir.join("chunks.toml"),
        format!("[input]\nchunk_bytes = {chunk}\n"),
    )
    .unwrap();
    let baseline = dir.join("baseline");
    run_ok(Command::new(built_bin("baseline")).args([
        events.to_str().unwrap(),
        catalog.to_str().unwrap(),
        baseline.to_str().unwrap(),
        &chunk,
    ]));
    let expected = counts(&baseline);
    assert!(
        expected["corrections"].as_u64() > Some(0),
        "gen wrote no corrections"
    );
    for (table, at_least) in [
        ("usage_buckets", 1000),
        ("anomalies", 5),
        ("invoice_lines", 10),
    ] {
        let rows = consolidated(&baseline, table).unwrap().len();
        assert!(
            rows >= at_least,
            "the baseline wrote {rows} {table} rows: too few for the comparison to mean much"
        );
    }
    for workers in ["1", "2"] {
        let out = dir.join(format!("w{workers}"));
        meterflow_ok(&[
            "run",
            "--input",
            events.to_str().unwrap(),
            "--catalog",
            catalog.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--config",
            dir.join("chunks.toml").to_str().unwrap(),
            "-w",
            workers,
            "--quiet",
        ]);
        let got = counts(&out);
        for k in [
            "received",
            "accepted",
            "duplicates",
            "rejected",
            "late",
            "corrections",
            "billable",
            "invoice_total_exact",
        ] {
            assert_eq!(got[k], expected[k], "-w {workers} and the baseline on {k}");
        }
        let name = format!("meterflow -w {workers}");
        same_tables((&baseline, "the baseline"), (&out, &name), BASELINE_TABLES).unwrap();
    }
}

#[test]
fn every_benchmark_harness_says_how_it_is_called() {
    for harness in [
        "anomaly_eval",
        "baseline",
        "bench",
        "crash_trials",
        "dashboard_load",
        "e2e",
        "soak",
    ] {
        for flag in ["--help", "-h"] {
            let out = Command::new(built_bin(harness)).arg(flag).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{harness} {flag}: {out:?}");
            assert!(
                text.contains(&format!("usage: {harness}")),
                "{harness} {flag} printed no usage line:\n{text}"
            );
            assert!(
                !text.contains("//!") && !text.contains("fn main"),
                "{harness} {flag} printed source, not its header:\n{text}"
            );
        }
    }
}
