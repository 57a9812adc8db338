//! The `meterflow` binary end to end on the embedded default: files in, tables out.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use meterflow::reports::tables::current_rows;
use meterflow::reports::tables::{read_table, Row};
use meterflow_schemas::money::Amount;
use meterflow_tests::{generate, meterflow, meterflow_bin, meterflow_ok, run_ok, Scratch};

fn counts(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("counts.json")).unwrap()).unwrap()
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("counts.json has no {k}"))
}

fn gen(dir: &Path, events: u64) {
    generate(
        dir,
        events,
        40,
        7,
        &[
            "--checksum-rate",
            "0.2",
            "--cloudevents-rate",
            "0.2",
            "--correction-rate",
            "0.03",
            "--terms",
        ],
    );
}

/// A scratch directory with `gen` events and a config cutting them into `chunk_bytes` chunks.
fn generated(name: &str, events: u64, chunk_bytes: u64) -> Scratch {
    let s = Scratch::new(name);
    gen(s.path(), events);
    std::fs::write(
        s.path().join("small-chunks.toml"),
        format!("[input]\nchunk_bytes = {chunk_bytes}\n"),
    )
    .unwrap();
    s
}

fn run(dir: &Path, out: &str, workers: &str) -> std::path::PathBuf {
    let out = dir.join(out);
    meterflow_ok(&[
        "run",
        "--input",
        dir.join("events.jsonl").to_str().unwrap(),
        "--catalog",
        dir.join("catalog").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--config",
        dir.join("small-chunks.toml").to_str().unwrap(),
        "-w",
        workers,
        "--quiet",
    ]);
    out
}

/// The CSV parts of `table` in a run's output, one per worker that wrote it, in worker order.
fn parts(out: &Path, table: &str) -> Vec<std::path::PathBuf> {
    let mut parts: Vec<_> = std::fs::read_dir(out.join(table))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    parts.sort();
    parts
}

fn key(r: &Row, cols: &[&str]) -> Vec<String> {
    cols.iter()
        .map(|c| r.get(*c).cloned().unwrap_or_default())
        .collect()
}

#[test]
fn the_invoice_preview_adds_up_to_the_invoice_lines() {
    let s = Scratch::new("preview");
    let dir = s.path();
    gen(dir, 20_000);
    std::fs::write(dir.join("small-chunks.toml"), "").unwrap();
    let out = run(dir, "out", "1");
    let lines = current_rows(&read_table(&out, "invoice_lines").unwrap());
    for customer in ["cus-000000", "cus-000003", "cus-000007"] {
        for period in ["2026-09", "2026-10"] {
            let mine: Vec<&Row> = lines
                .iter()
                .filter(|r| r["customer_id"] == customer && r["invoice_period"] == period)
                .collect();
            let money = |r: &&Row| Amount::parse(&r["amount"]).unwrap();
            let total: Amount = mine.iter().map(money).sum();
            let tax: Amount = mine
                .iter()
                .filter(|r| r["line_type"] == "tax")
                .map(money)
                .sum();
            let text = String::from_utf8(
                meterflow_ok(&[
                    "invoice",
                    "preview",
                    "-o",
                    out.to_str().unwrap(),
                    "--customer",
                    customer,
                    "--period",
                    period,
                    "-c",
                    dir.join("catalog").to_str().unwrap(),
                ])
                .stdout,
            )
            .unwrap();
            let shown = |label: &str| -> Amount {
                let line = text
                    .lines()
                    .find(|l| l.trim_start().starts_with(&format!("{label} ")))
                    .unwrap_or_else(|| panic!("no {label} in:\n{text}"));
                let amount = line.split_whitespace().rev().nth(1).unwrap();
                Amount::parse(amount).unwrap()
            };
            assert_eq!(shown("total"), total, "{customer} {period}:\n{text}");
            assert_eq!(shown("tax"), tax, "{customer} {period}:\n{text}");
            assert_eq!(
                shown("subtotal"),
                total - tax,
                "{customer} {period}:\n{text}"
            );
            assert!(
                text.contains(&format!("invoice {period} (draft)")),
                "{text}"
            );
            assert_eq!(text.matches("(draft)").count(), 1, "one invoice:\n{text}");
        }
    }
    let unknown = meterflow(&[
        "invoice",
        "preview",
        "-o",
        out.to_str().unwrap(),
        "--customer",
        "cus-nobody",
    ]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr)
        .contains("no invoice lines for customer `cus-nobody`"));
}

#[test]
fn the_demo_shows_every_kind_of_record() {
    let s = Scratch::new("demo");
    let out = meterflow_ok(&["demo", "--dir", s.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "invoice 2026-11 (draft)",
        "adjustment",
        "duplicate copy",
        "conflicting_duplicate",
        "void of evt-void-target",
        "(holds)",
        "version 2",
        "fix:",
        "The void as signed rows",
        "subscription",
        "commitment true-up",
        "tax",
    ] {
        assert!(
            text.contains(expected),
            "demo output lacks `{expected}`:\n{text}"
        );
    }
    let c = counts(&s.path().join("out"));
    assert!(c["balanced"].as_bool().unwrap());
    assert_eq!(n(&c, "late"), 2);
    assert_eq!(n(&c, "corrections"), 2);
    assert!(n(&c, "duplicates") > 50);
    assert_eq!(n(&c, "non_billable"), 20);
    let signals = read_table(&s.path().join("out"), "entitlement_signals").unwrap();
    assert!(
        signals.iter().any(|r| r["signal"] == "soft_limit"),
        "the demo crosses acme's token entitlement"
    );
    let seats: Vec<_> = current_rows(&read_table(&s.path().join("out"), "invoice_lines").unwrap())
        .into_iter()
        .filter(|r| r["sku"] == "seats")
        .map(|r| (r["quantity"].clone(), r["amount"].clone()))
        .collect();
    assert_eq!(
        seats,
        vec![("18".to_string(), "144.00".to_string())],
        "seats are billed at the month's peak"
    );
}

#[test]
fn one_and_two_workers_write_the_same_money_and_lose_nothing() {
    let s = generated("workers", 30_000, 65536);
    let one = run(s.path(), "out1", "1");
    let two = run(s.path(), "out2", "2");
    let (c1, c2) = (counts(&one), counts(&two));
    for k in [
        "received",
        "accepted",
        "duplicates",
        "rejected",
        "late",
        "out_of_order",
        "billable",
        "corrections",
        "invoice_total_exact",
    ] {
        assert_eq!(c1[k], c2[k], "{k}");
    }
    assert_eq!(c1["rejected_by_reason"], c2["rejected_by_reason"]);
    assert_eq!(n(&c1, "received"), 30_000);
    assert!(
        n(&c1, "late") > 0
            && n(&c1, "duplicates") > 0
            && n(&c1, "rejected") > 0
            && n(&c1, "corrections") > 0
    );
    // The same copy of every event is the accepted one: the first in the input, whichever
    // worker read it (an original before its correction, likewise).
    let copies = |out: &Path, table: &str| {
        let mut v: Vec<(String, String)> = read_table(out, table)
            .unwrap()
            .iter()
            .map(|r| (r["event_id"].clone(), r["offset"].clone()))
            .collect();
        v.sort();
        v
    };
    for table in ["usage_events", "duplicates"] {
        assert_eq!(copies(&one, table), copies(&two, table), "{table}");
    }

    // Every record ends in exactly one table.
    for out in [&one, &two] {
        let c = counts(out);
        let rows = |t: &str| read_table(out, t).unwrap().len() as u64;
        assert_eq!(rows("usage_events"), n(&c, "accepted"));
        assert_eq!(rows("duplicates"), n(&c, "duplicates"));
        assert_eq!(rows("rejections"), n(&c, "rejected"));
        assert_eq!(
            rows("usage_events") + rows("duplicates") + rows("rejections"),
            n(&c, "received")
        );
    }

    // The current invoice lines are identical, row for row.
    let cols = [
        "customer_id",
        "contract_id",
        "sku",
        "region",
        "service_period",
        "invoice_period",
        "line_type",
        "events",
        "quantity",
        "amount",
        "amount_exact",
    ];
    let current = |out: &Path| {
        let mut v: Vec<Vec<String>> = current_rows(&read_table(out, "invoice_lines").unwrap())
            .iter()
            .map(|r| key(r, &cols))
            .collect();
        v.sort();
        v
    };
    assert_eq!(current(&one), current(&two));
    assert!(
        current(&one).iter().any(|l| l[6] == "adjustment"),
        "late events produced adjustments"
    );

    // Every signed table holds the same rows after consolidation, and none is written by one
    // worker alone: with two workers, each writes the rows of the customers it owns.
    let signed = meterflow_schemas::tables::outputs()
        .filter(|t| t.output().shape == meterflow_schemas::tables::Shape::Signed);
    let mut split = 0;
    for table in signed.map(|t| t.name) {
        let current = |out: &Path| {
            let mut v = current_rows(&read_table(out, table).unwrap());
            v.sort();
            v
        };
        let held = current(&one);
        assert_eq!(held, current(&two), "{table}");
        let customers: Vec<std::collections::BTreeSet<String>> = parts(&two, table)
            .iter()
            .map(|p| {
                let rows =
                    meterflow::reports::tables::parse_csv(&std::fs::read_to_string(p).unwrap());
                rows[1..].iter().map(|r| r[0].clone()).collect()
            })
            .collect();
        assert_eq!(customers.len(), 2, "{table}: one part per worker");
        assert!(
            customers[0].is_disjoint(&customers[1]),
            "{table}: a customer's rows are written by one worker"
        );
        if customers.iter().all(|c| !c.is_empty()) {
            split += 1;
        }
        if table != "anomalies" && table != "entitlement_signals" {
            assert!(held.len() > 40, "{table} has rows of many customers");
            assert!(
                customers.iter().all(|c| !c.is_empty()),
                "{table}: both workers write"
            );
        }
    }
    assert!(split >= 5, "{split} tables written by both workers");
}

/// The `usage_events` columns that name a line of one service period.
const SERVICE_LINE: [&str; 5] = [
    "customer_id",
    "contract_id",
    "sku",
    "price_region",
    "service_period",
];

/// The same in `invoice_lines`.
const INVOICE_SERVICE_LINE: [&str; 5] = [
    "customer_id",
    "contract_id",
    "sku",
    "region",
    "service_period",
];

/// Reconciliation: re-derive each line's quantity from the accepted events with a plain
/// aggregation, and compare with the streaming invoice lines.
#[test]
fn invoice_quantities_reconcile_with_accepted_usage() {
    let s = generated("reconcile", 20_000, 32768);
    let out = run(s.path(), "out", "2");
    let events = read_table(&out, "usage_events").unwrap();
    // Peak and distinct-count meters (`seats`, `active_users`) bill a service period at the
    // largest reading, or the number of distinct users, of the readings not voided.
    let voided: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|r| r["correction_action"] == "void")
        .map(|r| r["correction_of"].as_str())
        .collect();
    type Readings = (i64, f64, std::collections::BTreeSet<String>);
    let mut readings: BTreeMap<Vec<String>, Readings> = BTreeMap::new();
    let mut from_events: BTreeMap<Vec<String>, (i64, f64)> = BTreeMap::new();
    for r in events.iter().filter(|r| r["billable"] == "1") {
        if ["seats", "active_users"].contains(&r["sku"].as_str()) {
            let k = key(r, &SERVICE_LINE);
            let e = readings.entry(k).or_default();
            if r["correction_action"] == "void" {
                e.0 -= 1;
            } else {
                e.0 += 1;
                if !voided.contains(r["event_id"].as_str()) {
                    e.1 = e.1.max(r["quantity"].parse::<f64>().unwrap());
                    e.2.insert(r["attributes"].clone());
                }
            }
            continue;
        }
        let k = key(r, &[&SERVICE_LINE[..], &["invoice_period"]].concat());
        let e = from_events.entry(k).or_default();
        // An original counts one event behind its line, a void takes it away, an amend
        // changes only the quantity.
        e.0 += match r["correction_action"].as_str() {
            "void" => -1,
            "amend" => 0,
            _ => 1,
        };
        e.1 += r["quantity"].parse::<f64>().unwrap();
    }
    let mut from_lines: BTreeMap<Vec<String>, (i64, f64)> = BTreeMap::new();
    let mut per_service_period: BTreeMap<Vec<String>, (i64, f64)> = BTreeMap::new();
    for r in current_rows(&read_table(&out, "invoice_lines").unwrap())
        .into_iter()
        .filter(|r| ["usage", "adjustment"].contains(&r["line_type"].as_str()))
    {
        if ["seats", "active_users"].contains(&r["sku"].as_str()) {
            let k = key(&r, &INVOICE_SERVICE_LINE);
            let e = per_service_period.entry(k).or_default();
            e.0 += r["events"].parse::<i64>().unwrap();
            e.1 += r["quantity"].parse::<f64>().unwrap();
            continue;
        }
        let k = key(
            &r,
            &[&INVOICE_SERVICE_LINE[..], &["invoice_period"]].concat(),
        );
        from_lines.insert(
            k,
            (r["events"].parse().unwrap(), r["quantity"].parse().unwrap()),
        );
    }
    assert!(
        readings.len() > 10,
        "the stream has peak and distinct-count meters"
    );
    let expected: BTreeMap<Vec<String>, (i64, f64)> = readings
        .into_iter()
        .filter(|(_, (n, _, _))| *n != 0)
        .map(|(k, (n, peak, users))| {
            let q = if k[2] == "seats" {
                peak
            } else {
                users.len() as f64
            };
            (k, (n, q))
        })
        .collect();
    assert_eq!(
        per_service_period, expected,
        "peak and distinct-count lines"
    );
    assert_eq!(
        from_events.keys().collect::<Vec<_>>(),
        from_lines.keys().collect::<Vec<_>>()
    );
    for (k, (events, q)) in &from_events {
        let (le, lq) = from_lines[k];
        assert_eq!(*events, le, "{k:?}");
        assert!(
            (q - lq).abs() < 1e-6 * q.abs().max(1.0),
            "{k:?}: {q} vs {lq}"
        );
    }
}

/// `meterflow reconcile` over a run's CSV tables: no drift on what the run wrote; one edited
/// invoice line is found, named with the events behind it, recorded, and exits 3.
#[test]
fn reconcile_finds_no_drift_then_an_edited_invoice_line() {
    let s = generated("reconcile-cmd", 20_000, 32768);
    let out = run(s.path(), "out", "2");
    let catalog = s.path().join("catalog");
    let reconcile = |extra: &[&str]| {
        let mut a = vec![
            "reconcile",
            "-c",
            catalog.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        a.extend(extra);
        let o = meterflow(&a);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, text) = reconcile(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("no drift"), "{text}");
    let checked = read_table(&out, "reconciliation").unwrap();
    assert!(checked.len() > 100, "{} lines checked", checked.len());
    assert!(checked.iter().all(|r| r["drift"] == "0"));
    // Every usage line is checked.
    let usage_lines: std::collections::BTreeSet<Vec<String>> =
        current_rows(&read_table(&out, "invoice_lines").unwrap())
            .iter()
            .filter(|r| r["line_type"] == "usage" && r["sku"] == "api_calls")
            .map(|r| {
                key(
                    r,
                    &[&INVOICE_SERVICE_LINE[..], &["invoice_period"]].concat(),
                )
            })
            .collect();
    let checked_lines: std::collections::BTreeSet<Vec<String>> = checked
        .iter()
        .map(|r| {
            key(
                r,
                &[&INVOICE_SERVICE_LINE[..], &["invoice_period"]].concat(),
            )
        })
        .collect();
    assert!(!usage_lines.is_empty() && usage_lines.is_subset(&checked_lines));

    // Bill one more unit on one api_calls line: edit the quantity of its inserted row.
    // Each worker writes the lines of its own customers: take the first part that has one.
    let whole_api_calls = |rows: &[Vec<String>]| {
        let col = |name: &str| rows[0].iter().position(|h| h == name).unwrap();
        (1..rows.len()).find(|&i| {
            rows[i][col("sku")] == "api_calls"
                && rows[i][col("line_type")] == "usage"
                && rows[i][col("sign")] == "1"
                && !rows[i][col("quantity")].contains('.')
        })
    };
    let (part, text, edited) = parts(&out, "invoice_lines")
        .into_iter()
        .find_map(|part| {
            let text = std::fs::read_to_string(&part).unwrap();
            let i = whole_api_calls(&meterflow::reports::tables::parse_csv(&text))?;
            Some((part, text, i))
        })
        .expect("a whole api_calls usage row");
    let original = text.clone();
    let mut rows = meterflow::reports::tables::parse_csv(&text);
    let header = rows[0].clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let was: i64 = rows[edited][col("quantity")].parse().unwrap();
    rows[edited][col("quantity")] = (was + 1).to_string();
    let target: Vec<String> = [
        "customer_id",
        "contract_id",
        "sku",
        "region",
        "service_period",
        "invoice_period",
    ]
    .iter()
    .map(|c| rows[edited][col(c)].clone())
    .collect();
    let csv: String = rows.iter().map(|r| r.join(",") + "\n").collect();
    std::fs::write(&part, csv).unwrap();

    let (code, text) = reconcile(&[]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("DRIFT in 1 of"), "{text}");
    assert!(
        text.contains(&format!("{} / {} / api_calls", target[0], target[1])),
        "{text}"
    );
    let drifting: Vec<Row> = read_table(&out, "reconciliation")
        .unwrap()
        .into_iter()
        .filter(|r| r["drift"] == "1")
        .collect();
    assert_eq!(drifting.len(), 1);
    let d = &drifting[0];
    assert_eq!(
        key(
            d,
            &[
                "customer_id",
                "contract_id",
                "sku",
                "region",
                "service_period",
                "invoice_period"
            ]
        ),
        target
    );
    let billed: f64 = d["billed_quantity"].parse().unwrap();
    let expected: f64 = d["expected_quantity"].parse().unwrap();
    assert!((billed - expected - 1.0).abs() < 1e-9, "{d:?}");
    // The events it names are accepted events of that line.
    let events = read_table(&out, "usage_events").unwrap();
    let ids: Vec<&str> = d["event_ids"].split(' ').collect();
    assert!(!ids.is_empty() && ids.len() <= 10);
    for id in ids {
        let e = events
            .iter()
            .find(|e| e["event_id"] == id)
            .expect("a named event exists");
        assert_eq!(
            key(
                e,
                &[
                    "customer_id",
                    "contract_id",
                    "sku",
                    "price_region",
                    "service_period",
                    "invoice_period"
                ]
            ),
            target
        );
    }
    // Scoped to another customer, the drift is out of sight.
    let other = checked
        .iter()
        .map(|r| r["customer_id"].clone())
        .find(|c| *c != target[0])
        .unwrap();
    let (code, text) = reconcile(&["--customer", &other]);
    assert_eq!(code, Some(0), "{text}");

    // Bill one cent more on one tokens line: edit the amount of its inserted row. Quantity and
    // events still agree; the money does not.
    let mut rows = meterflow::reports::tables::parse_csv(&original);
    let line_key = |r: &Vec<String>| {
        [
            "customer_id",
            "contract_id",
            "sku",
            "region",
            "service_period",
            "invoice_period",
            "line_type",
        ]
        .map(|c| r[col(c)].clone())
    };
    let first = (1..rows.len())
        .find(|&i| rows[i][col("sku")] == "tokens" && rows[i][col("line_type")] == "usage")
        .expect("a tokens usage row");
    // The line's current row: its inserted row of the latest version.
    let edited = (1..rows.len())
        .filter(|&i| line_key(&rows[i]) == line_key(&rows[first]) && rows[i][col("sign")] == "1")
        .max_by_key(|&i| rows[i][col("version")].parse::<u64>().unwrap())
        .unwrap();
    let was = Amount::parse(&rows[edited][col("amount")]).unwrap();
    let now = was + Amount::parse("0.01").unwrap();
    rows[edited][col("amount")] = now.format_fixed(2);
    let line: Vec<String> = [
        "customer_id",
        "contract_id",
        "sku",
        "service_period",
        "invoice_period",
    ]
    .iter()
    .map(|c| rows[edited][col(c)].clone())
    .collect();
    let csv: String = rows.iter().map(|r| r.join(",") + "\n").collect();
    std::fs::write(&part, csv).unwrap();
    let (code, text) = reconcile(&[]);
    assert_eq!(code, Some(3), "{text}");
    // The line, and its invoice's subtotal and total (its invoice-level lines follow the
    // events, so they do not drift).
    assert!(text.contains("DRIFT in 3 of"), "{text}");
    assert!(
        text.contains(&format!(
            "amount expected {} USD, billed {} USD, difference -0.01 USD",
            was.format_fixed(2),
            now.format_fixed(2)
        )),
        "{text}"
    );
    let drifting: Vec<Row> = read_table(&out, "reconciliation")
        .unwrap()
        .into_iter()
        .filter(|r| r["drift"] == "1")
        .collect();
    let (lines, totals): (Vec<Row>, Vec<Row>) = drifting
        .into_iter()
        .partition(|r| r["comparison"] == "events_to_lines");
    let invoice = |r: &Row| (r["customer_id"].clone(), r["invoice_period"].clone());
    assert_eq!(
        totals
            .iter()
            .map(|r| (
                invoice(r),
                r["line_type"].as_str(),
                r["comparison"].as_str()
            ))
            .collect::<Vec<_>>(),
        ["subtotal", "total"].map(|t| ((line[0].clone(), line[4].clone()), t, "lines_to_totals"))
    );
    for t in &totals {
        let (e, b) = (
            Amount::parse(&t["expected_amount"]).unwrap(),
            Amount::parse(&t["billed_amount"]).unwrap(),
        );
        assert_eq!(b - e, Amount::parse("0.01").unwrap(), "{t:?}");
    }
    assert_eq!(lines.len(), 1);
    let d = &lines[0];
    assert_eq!(
        key(
            d,
            &[
                "customer_id",
                "contract_id",
                "sku",
                "service_period",
                "invoice_period"
            ]
        ),
        line
    );
    assert_eq!(d["expected_quantity"], d["billed_quantity"]);
    assert_eq!(Amount::parse(&d["expected_amount"]).unwrap(), was);
    assert_eq!(Amount::parse(&d["billed_amount"]).unwrap(), now);
    assert!(!d["event_ids"].is_empty(), "{d:?}");
}

#[test]
fn stdin_gives_the_same_result_as_a_file() {
    let s = generated("stdin", 5_000, 16384);
    let from_file = run(s.path(), "file", "1");
    let out = s.path().join("stdin");
    let mut child = Command::new(meterflow_bin())
        .args([
            "run",
            "--input",
            "-",
            "--catalog",
            s.path().join("catalog").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--config",
            s.path().join("small-chunks.toml").to_str().unwrap(),
            "--quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .env("METERFLOW_LOG", "warn")
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(s.path().join("events.jsonl")).unwrap())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let money = |o: &Path| {
        let mut v: Vec<_> = current_rows(&read_table(o, "invoice_lines").unwrap())
            .into_iter()
            .map(|mut r| {
                r.remove("version");
                r
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(money(&from_file), money(&out));
    // Same epochs, so the same watermark and the same decision for every record.
    let (f, i) = (counts(&from_file), counts(&out));
    for k in [
        "received",
        "accepted",
        "duplicates",
        "late",
        "out_of_order",
        "corrections",
        "rejected_by_reason",
    ] {
        assert_eq!(f[k], i[k], "{k}");
    }
}

/// Whether `pid` has a handler installed for SIGTERM (bit 15 of `SigCgt` in its status).
fn catches_sigterm(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
}

#[test]
fn sigterm_stops_a_run_whose_logs_nobody_reads() {
    // Whatever read the run's stderr went away (a supervisor's pipe, a restarted collector).
    // The run must go on (at `info` it writes log lines as it reads), and a signal must still
    // stop it (at `warn` the first line it writes is the one saying it stops).
    let s = generated("sigterm-no-reader", 1_000, 16384);
    for level in ["info", "warn"] {
        let mut child = meterflow_tests::Running(
            Command::new(meterflow_bin())
                .args(["run", "--input", "-", "--catalog"])
                .arg(s.path().join("catalog"))
                .arg("--out")
                .arg(s.path().join(format!("out-{level}")))
                .arg("--quiet")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .env("METERFLOW_LOG", level)
                .spawn()
                .unwrap(),
        );
        drop(child.stdout.take());
        drop(child.stderr.take());
        // Some events, and stdin left open: the run waits for more, as a tailed stream does.
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(&std::fs::read(s.path().join("events.jsonl")).unwrap())
            .unwrap_or_else(|e| {
                panic!("{level}: the run must go on when nobody reads its logs: {e}")
            });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !catches_sigterm(child.id()) {
            assert!(
                std::time::Instant::now() < deadline,
                "{level}: SIGTERM never taken over"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{level}: the run stopped on its own"
        );
        child.terminate();
        let status = child.wait_within(std::time::Duration::from_secs(30));
        // A run reading files stops at once on a signal, with 128 + SIGTERM.
        assert_eq!(status.code(), Some(128 + 15), "{level}: {status:?}");
        drop(stdin);
    }
}

#[test]
fn a_bad_config_stops_start_up_naming_the_key() {
    let s = Scratch::new("badconfig");
    gen(s.path(), 10);
    std::fs::write(
        s.path().join("bad.toml"),
        "[dedup]\nhorizon = \"7d\"\nwindow = \"1h\"\n",
    )
    .unwrap();
    let out = meterflow(&[
        "run",
        "-i",
        s.path().join("events.jsonl").to_str().unwrap(),
        "-c",
        s.path().join("catalog").to_str().unwrap(),
        "-o",
        s.path().join("o").to_str().unwrap(),
        "--config",
        s.path().join("bad.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field `window`") && err.contains("fix:"),
        "{err}"
    );
}

/// A log read from a file or a collector (stderr is not a terminal) is plain text: no colour
/// escape codes around levels and fields.
#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let s = Scratch::new("plainlog");
    gen(s.path(), 200);
    let out = Command::new(meterflow_bin())
        .args([
            "run",
            "-i",
            s.path().join("events.jsonl").to_str().unwrap(),
            "-c",
            s.path().join("catalog").to_str().unwrap(),
            "-o",
            s.path().join("o").to_str().unwrap(),
        ])
        .env("METERFLOW_LOG", "info")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("INFO"), "the run logs at info: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
}

#[test]
fn catalog_check_lists_every_problem_with_its_fix() {
    let s = Scratch::new("badcatalog");
    std::fs::write(
        s.path().join("a.toml"),
        "[[sku]]\nid = \"x\"\nunit = \"u\"\n[[customer]]\nid = \"c\"\n[[rate_card]]\nid = \"r\"\nversion = 1\neffective_from = \"2026-01-01T00:00:00Z\"\ncurrency = \"usd\"\n[[rate_card.price]]\nsku = \"y\"\nmodel = \"per_unit\"\nunit_price = \"1\"\n[[contract]]\nid = \"k\"\ncustomer = \"nobody\"\nrate_card = \"r\"\nstarts = \"2026-01-01T00:00:00Z\"\n",
    )
    .unwrap();
    let out = meterflow(&["catalog", "check", s.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "3 problem(s)",
        "a.toml: rate_card \"r\" version 1: currency `usd`",
        "unknown sku",
        "contract \"k\": unknown customer `nobody`",
        "fix: ",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    let s2 = Scratch::new("goodcatalog");
    meterflow_ok(&["demo", "--dir", s2.path().to_str().unwrap()]);
    let ok = meterflow_ok(&[
        "catalog",
        "check",
        s2.path().join("catalog").to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("is valid: 4 customers, 4 contracts, 4 SKUs")
    );
}

#[test]
fn trace_follows_an_event_to_its_invoice_line() {
    let s = Scratch::new("trace");
    meterflow_ok(&["demo", "--dir", s.path().to_str().unwrap()]);
    let out = meterflow_ok(&[
        "trace",
        "--out",
        s.path().join("out").to_str().unwrap(),
        "evt-late-1",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("service period 2026-10, invoice period 2026-11, arrival late"),
        "{text}"
    );
    assert!(text.contains("invoice line (adjustment)"), "{text}");
    let out = meterflow_ok(&[
        "trace",
        "--out",
        s.path().join("out").to_str().unwrap(),
        "evt-neg",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rejected from"));
}

#[test]
fn the_compose_config_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = meterflow_ok(&[
        "migrate",
        "--print",
        "--config",
        root.join("deploy/meterflow.compose.toml").to_str().unwrap(),
    ]);
    let sql = String::from_utf8_lossy(&out.stdout);
    assert!(sql.contains("CREATE TABLE IF NOT EXISTS meterflow.invoice_lines"));
    // A misspelt key is refused, naming it.
    let dir = Scratch::new("compose-config");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[kafka]\nbroker = \"kafka:9092\"\n").unwrap();
    let out = meterflow(&["migrate", "--print", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka.broker"));
}

#[test]
fn catalog_changes_are_recorded_with_who_and_what_and_published_versions_stay_immutable() {
    let s = Scratch::new("catalog-log");
    let dir = s.path();
    gen(dir, 100);
    let cat = dir.join("catalog");
    let log = dir.join("changes.jsonl");
    let record = |actor: &str| {
        meterflow(&[
            "catalog",
            "record",
            cat.to_str().unwrap(),
            "--actor",
            actor,
            "--log",
            log.to_str().unwrap(),
        ])
    };
    let first = record("ana");
    assert!(first.status.success());
    let text = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(text.contains("ana  added contract `ctr-000000`"), "{text}");
    assert!(
        text.contains("added rate_card `standard` version 2"),
        "{text}"
    );
    // Nothing changed: nothing recorded.
    let again = String::from_utf8(record("ana").stdout).unwrap();
    assert!(again.contains("no changes"), "{again}");
    // A contract term changes and a rate-card version is added.
    let file = cat.join("catalog.toml");
    let toml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        toml.replacen("minimum_spend = \"400\"", "minimum_spend = \"450\"", 1)
            + "\n[[rate_card]]\nid = \"standard\"\nversion = 3\neffective_from = \"2027-06-01T00:00:00Z\"\ncurrency = \"USD\"\n\
               [[rate_card.price]]\nsku = \"api_calls\"\nmodel = \"per_unit\"\nunit_price = \"0.0002\"\n\
               [[rate_card.price]]\nsku = \"tokens\"\nmodel = \"per_unit\"\nunit_price = \"0.00001\"\n\
               [[rate_card.price]]\nsku = \"storage\"\nmodel = \"per_unit\"\nunit_price = \"0.07\"\n",
    )
    .unwrap();
    let second = String::from_utf8(record("bob").stdout).unwrap();
    assert!(
        second.contains("bob  changed contract `ctr-000000`"),
        "{second}"
    );
    assert!(
        second.contains(r#"minimum_spend: "400" -> "450""#),
        "{second}"
    );
    assert!(
        second.contains("bob  added rate_card `standard` version 3"),
        "{second}"
    );
    // Editing a published version is refused and leaves the log as it was.
    let before = std::fs::read_to_string(&log).unwrap();
    let toml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        toml.replace("unit_price = \"0.07\"", "unit_price = \"0.06\""),
    )
    .unwrap();
    let refused = record("eve");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("rate_card `standard` version 3 is already published and immutable")
            && err.contains("publish the change as version 4"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), before);
    let full =
        String::from_utf8(meterflow_ok(&["catalog", "log", "--log", log.to_str().unwrap()]).stdout)
            .unwrap();
    assert!(
        full.contains("ana  added") && full.contains("bob  changed"),
        "{full}"
    );
}

/// A webhook endpoint on loopback: records every request body; answers `fail_first` requests
/// (all when `None`) with `503`, the rest with `202`.
struct Receiver {
    port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    fn start(fail_first: Option<usize>) -> Receiver {
        use std::io::{BufRead, BufReader, Read};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, f) = (bodies.clone(), failed.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let fail = fail_first.is_none_or(|n| f.load(Ordering::SeqCst) < n);
                let status = if fail {
                    f.fetch_add(1, Ordering::SeqCst);
                    "503 Service Unavailable"
                } else {
                    b.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                    "202 Accepted"
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
            }
        });
        Receiver {
            port,
            bodies,
            failed,
        }
    }
}

#[test]
fn entitlement_alerts_reach_a_webhook_once_each_with_retries_and_a_dead_letter_file() {
    let s = Scratch::new("alerts");
    let dir = s.path();
    gen(dir, 20_000);
    std::env::set_var("METERFLOW_TEST_PD_KEY", "R0UT1NG");
    let run_with = |receiver: &Receiver, out: &str, attempts: u32| {
        let config = dir.join(format!("{out}.toml"));
        std::fs::write(
            &config,
            format!(
                "[alerts]\nwebhook_url = \"http://127.0.0.1:{}/hook\"\nformat = \"pagerduty\"\nrouting_key_env = \"METERFLOW_TEST_PD_KEY\"\nmax_attempts = {attempts}\ndead_letter = \"{}\"\n\n[metrics]\naddr = \"127.0.0.1:0\"\n",
                receiver.port,
                dir.join(format!("{out}-dead.jsonl")).display()
            ),
        )
        .unwrap();
        meterflow_ok(&[
            "run",
            "-i",
            dir.join("events.jsonl").to_str().unwrap(),
            "-c",
            dir.join("catalog").to_str().unwrap(),
            "-o",
            dir.join(out).to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "-q",
        ]);
        // The run's last /metrics, per outcome.
        let text = std::fs::read_to_string(dir.join(out).join("metrics.prom")).unwrap();
        move |outcome: &str| -> f64 {
            let series =
                format!("meterflow_alerts_total{{outcome=\"{outcome}\",sink=\"webhook\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&series)?.parse().ok())
                .unwrap_or(0.0)
        }
    };
    // The endpoint fails twice, then accepts: every alert arrives, none twice.
    let ok = Receiver::start(Some(2));
    let alerts = run_with(&ok, "out", 6);
    assert_eq!(ok.failed.load(std::sync::atomic::Ordering::SeqCst), 2);
    let events: Vec<serde_json::Value> = ok
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    assert!(!events.is_empty(), "the stream crosses entitlements");
    let mut open = std::collections::BTreeSet::new();
    for e in &events {
        assert_eq!(e["routing_key"], "R0UT1NG");
        assert_eq!(e["payload"]["source"], "meterflow");
        let key = e["dedup_key"].as_str().unwrap().to_string();
        match e["event_action"].as_str().unwrap() {
            "trigger" => assert!(open.insert(key), "{e}: paged twice"),
            "resolve" => assert!(open.remove(&key), "{e}: resolved without a trigger"),
            other => panic!("unexpected event_action {other}"),
        }
    }
    // What stays open is exactly the signals and anomalies the tables hold now (the generated
    // catalog has costs, so there are cost anomalies too).
    let current = meterflow_tests::oracle::open_alert_keys(&dir.join("out"));
    assert!(
        current.iter().any(|k| k.starts_with("meterflow:anomaly:")),
        "the stream has anomalies to alert"
    );
    assert_eq!(open, current);
    // /metrics counts what the endpoint saw.
    let sent = ok.bodies.lock().unwrap().len() as f64;
    assert_eq!(
        (alerts("sent"), alerts("retried"), alerts("failed")),
        (sent, 2.0, 0.0)
    );
    for e in events
        .iter()
        .filter(|e| e["payload"]["class"] == "entitlement")
    {
        let want = match e["payload"]["custom_details"]["signal"].as_str().unwrap() {
            "hard_limit" => "critical",
            "soft_limit" | "credit_burn" | "commitment_burn" | "budget_burn" => "warning",
            _ => "info",
        };
        assert_eq!(e["payload"]["severity"], want, "{e}");
    }
    // An endpoint that stays down: the run finishes and every alert is in the dead-letter file.
    let down = Receiver::start(None);
    let alerts = run_with(&down, "down", 2);
    let dead = std::fs::read_to_string(dir.join("down-dead.jsonl")).unwrap();
    let dead: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), events.len());
    assert!(dead
        .iter()
        .all(|d| d["error"].as_str().unwrap().contains("503")));
    assert_eq!(
        down.failed.load(std::sync::atomic::Ordering::SeqCst),
        2 * events.len(),
        "two attempts each"
    );
    let n = events.len() as f64;
    assert_eq!(
        (alerts("sent"), alerts("retried"), alerts("failed")),
        (0.0, n, n)
    );
}

#[test]
fn anomalies_land_in_their_table_and_page_on_call_once_each() {
    use meterflow_schemas::fixtures::{anomaly_stream, CATALOG};
    let s = Scratch::new("anomaly-alerts");
    let dir = s.path();
    std::fs::create_dir_all(dir.join("catalog")).unwrap();
    std::fs::write(dir.join("catalog/catalog.toml"), CATALOG).unwrap();
    // One spike and one silent meter in five weeks of acme's api_calls.
    let (records, spike, silence) = anomaly_stream();
    let events = records.join("\n") + "\n";
    std::fs::write(dir.join("events.jsonl"), events).unwrap();
    let receiver = Receiver::start(Some(1));
    let config = dir.join("alerts.toml");
    std::fs::write(
        &config,
        format!(
            "[alerts]\nwebhook_url = \"http://127.0.0.1:{}/hook\"\nformat = \"json\"\ndead_letter = \"{}\"\n",
            receiver.port,
            dir.join("dead.jsonl").display()
        ),
    )
    .unwrap();
    meterflow_ok(&[
        "run",
        "-i",
        dir.join("events.jsonl").to_str().unwrap(),
        "-c",
        dir.join("catalog").to_str().unwrap(),
        "-o",
        dir.join("out").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "-q",
    ]);
    let rows = current_rows(&read_table(&dir.join("out"), "anomalies").unwrap());
    let mut found: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r["kind"].clone(), r["window_start"].clone()))
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        found,
        vec![
            ("spike".to_string(), spike.to_string()),
            ("silent".to_string(), silence.to_string()),
        ],
        "{rows:?}"
    );
    let silent = rows.iter().find(|r| r["kind"] == "silent").unwrap();
    assert!(
        silent["explanation"].contains("reported no api_calls"),
        "{silent:?}"
    );
    // On-call hears of each once (the first delivery failed and was retried), as anomalies.
    let bodies = receiver.bodies.lock().unwrap().clone();
    let anomalies: Vec<serde_json::Value> = bodies
        .iter()
        .map(|b| serde_json::from_str::<serde_json::Value>(b).unwrap())
        .filter(|e| e["kind"] == "anomaly")
        .collect();
    let mut keys: Vec<&str> = anomalies
        .iter()
        .map(|e| e["dedup_key"].as_str().unwrap())
        .collect();
    keys.sort_by_key(|k| k[k.find(":2026-").unwrap()..].to_string());
    assert_eq!(
        keys,
        vec![
            format!("meterflow:anomaly:acme:api_calls:spike:{spike}"),
            format!("meterflow:anomaly:acme:api_calls:silent:{silence}"),
        ],
        "{bodies:?}"
    );
    assert!(anomalies.iter().all(|e| e["status"] == "firing"));
    assert!(anomalies
        .iter()
        .all(|e| e["details"]["severity"] == "critical"));
    assert_eq!(receiver.failed.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Reconciling the demo's entitlements: the threshold signals its usage crosses are active; one
/// dropped from `entitlement_signals` is found, named, and exits 3.
#[test]
fn reconcile_finds_a_dropped_entitlement_signal() {
    let s = Scratch::new("reconcile-signals");
    meterflow_ok(&["demo", "--dir", s.path().to_str().unwrap()]);
    let (catalog, out) = (s.path().join("catalog"), s.path().join("out"));
    let reconcile = || {
        let o = meterflow(&[
            "reconcile",
            "-c",
            catalog.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--config",
            s.path().join("meterflow.toml").to_str().unwrap(),
        ]);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, text) = reconcile();
    assert_eq!(code, Some(0), "{text}");
    let checked = read_table(&out, "reconciliation").unwrap();
    let signals = checked
        .iter()
        .filter(|r| r["comparison"] == "events_to_signals")
        .count();
    assert!(signals >= 3, "{text}");

    // Drop the rows of the 90% threshold of one period.
    let (part, text) = parts(&out, "entitlement_signals")
        .into_iter()
        .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap()))
        .find(|(_, text)| text.contains(",threshold,90,"))
        .expect("a part with a 90% threshold signal");
    let (header, rows) = text.split_once('\n').unwrap();
    let dropped = rows
        .lines()
        .find(|l| l.contains(",threshold,90,"))
        .expect("a 90% threshold signal")
        .to_string();
    let f: Vec<&str> = dropped.split(',').collect();
    let (customer, contract, sku, period) = (f[0], f[1], f[2], f[3]);
    let prefix = format!("{customer},{contract},{sku},{period},threshold,90,");
    let kept: String = rows
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&part, format!("{header}\n{kept}")).unwrap();

    let (code, text) = reconcile();
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains(&format!(
            "signal {customer} / {contract} / {sku} / {period} threshold 90%: called for by the usage"
        )),
        "{text}"
    );
    let drifting: Vec<Row> = read_table(&out, "reconciliation")
        .unwrap()
        .into_iter()
        .filter(|r| r["drift"] == "1")
        .collect();
    assert_eq!(drifting.len(), 1, "{drifting:?}");
    assert_eq!(drifting[0]["signal"], "threshold 90%");
    assert_eq!(drifting[0]["expected_events"], "1");
    assert_eq!(drifting[0]["billed_events"], "0");
}

/// The scorecard's capture on `gen` output, against what `gen` says it injected: of the records
/// sent, retries are not usage; invalid ones are metered but rejected; a void takes its
/// original's event back and an amend adds none, so
/// capture = (records − duplicates − invalid − corrections − voids)
///         ÷ (records − duplicates − corrections − voids).
#[test]
fn scorecard_capture_follows_the_rates_gen_injected() {
    let s = Scratch::new("scorecard");
    let o = meterflow_ok(&[
        "gen",
        "--out",
        s.path().to_str().unwrap(),
        "--events",
        "30000",
        "--customers",
        "30",
        "--invalid-rate",
        "0.02",
        "--dup-rate",
        "0.06",
        "--late-rate",
        "0.05",
        "--correction-rate",
        "0.03",
    ]);
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    // "wrote R records (D duplicates, L late, I invalid, C corrections) to …"
    let numbers: Vec<i64> = said
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .take(5)
        .map(|w| w.parse().unwrap())
        .collect();
    let [records, duplicates, _late, invalid, corrections] = numbers[..] else {
        panic!("{said}")
    };
    assert!(
        invalid > 100 && corrections > 100 && duplicates > 100,
        "{said}"
    );
    let events = std::fs::read_to_string(s.path().join("events.jsonl")).unwrap();
    let voids: std::collections::BTreeSet<&str> = events
        .lines()
        .filter(|l| l.contains(r#""action":"void""#))
        .filter_map(|l| l.split(r#""event_id":""#).nth(1)?.split('"').next())
        .collect();
    let voids = voids.len() as i64;
    assert!(voids > 10, "{voids} voids");

    std::fs::write(
        s.path().join("small-chunks.toml"),
        "[input]\nchunk_bytes = 65536\n",
    )
    .unwrap();
    let out = run(s.path(), "out", "2");
    let catalog = s.path().join("catalog");
    let o = meterflow_ok(&[
        "scorecard",
        "-c",
        catalog.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let printed = String::from_utf8_lossy(&o.stdout).into_owned();
    let rows = read_table(&out, "scorecard").unwrap();
    let total = |measure: &str, cause: &str, column: &str| -> i64 {
        rows.iter()
            .filter(|r| {
                r["measure"] == measure
                    && r["cause"] == cause
                    && r["period"] == "*"
                    && r["customer_id"] == "*"
                    && r["sku"] == "*"
            })
            .map(|r| {
                r[column]
                    .parse::<i64>()
                    .unwrap_or_else(|_| r[column].len() as i64)
            })
            .sum()
    };
    let metered = records - duplicates - corrections - voids;
    let billed = metered - invalid;
    assert_eq!(total("capture", "metered", "events"), metered, "{printed}");
    assert_eq!(total("capture", "billed", "events"), billed, "{printed}");
    assert_eq!(total("capture", "duplicate", "events"), duplicates);
    let rejected: i64 = rows
        .iter()
        .filter(|r| {
            r["cause"].starts_with("rejected:") && r["period"] == "*" && r["customer_id"] == "*"
        })
        .map(|r| r["events"].parse::<i64>().unwrap())
        .sum();
    assert_eq!(rejected, invalid);
    assert!(
        !rows.iter().any(|r| r["cause"] == "unexplained"),
        "nothing accepted goes unbilled"
    );
    let rate = meterflow_schemas::scorecard::percent(billed.into(), metered.into()).unwrap();
    assert!(
        printed.contains(&format!("capture rate: events {rate},")),
        "{rate} in\n{printed}"
    );

    // Invoice error: a usage line changed after its invoice is one a later invoice adjusts.
    let lines = current_rows(&read_table(&out, "invoice_lines").unwrap());
    let line_key = |r: &Row| {
        [
            "customer_id",
            "contract_id",
            "sku",
            "region",
            "service_period",
        ]
        .map(|c| r[c].clone())
    };
    let issued: std::collections::BTreeSet<_> = lines
        .iter()
        .filter(|r| matches!(r["line_type"].as_str(), "usage" | "adjustment"))
        .map(line_key)
        .collect();
    let adjusted: std::collections::BTreeSet<_> = lines
        .iter()
        .filter(|r| r["line_type"] == "adjustment" && r["invoice_period"] != r["service_period"])
        .map(line_key)
        .collect();
    assert!(!adjusted.is_empty(), "late usage lands in later invoices");
    assert_eq!(
        total("invoice_error", "issued", "events"),
        issued.len() as i64
    );
    assert_eq!(
        total("invoice_error", "changed", "events"),
        adjusted.len() as i64
    );
    assert!(
        total("invoice_error", "late_usage", "events") > 0,
        "{printed}"
    );
}

/// Fixed records replayed under their original event ids: billed once (a second replay bills
/// nothing more), their rejections marked resolved with the lineage to the fix, the accounting
/// still balanced, and the scorecard's capture up by exactly the replayed usage.
#[test]
fn a_replayed_fix_is_billed_once_and_resolves_its_rejection() {
    let s = Scratch::new("quarantine");
    generate(s.path(), 20_000, 30, 11, &["--invalid-rate", "0.03"]);
    // Fixes arrive weeks later: the dedup horizon must still hold their ids.
    let config = s.path().join("replay.toml");
    std::fs::write(
        &config,
        "[input]\nchunk_bytes = 65536\n\n[dedup]\nhorizon = \"120d\"\n",
    )
    .unwrap();
    let (catalog, out) = (s.path().join("catalog"), s.path().join("out"));
    let (c, o, cfg) = (
        catalog.to_str().unwrap(),
        out.to_str().unwrap(),
        config.to_str().unwrap(),
    );
    meterflow_ok(&[
        "run",
        "-i",
        s.path().join("events.jsonl").to_str().unwrap(),
        "-c",
        c,
        "-o",
        o,
        "--config",
        cfg,
        "-q",
    ]);
    let scorecard = || {
        meterflow_ok(&["scorecard", "-c", c, "-o", o, "--config", cfg]);
        let rows = read_table(&out, "scorecard").unwrap();
        let total = |cause: &str, column: &str| -> i128 {
            rows.iter()
                .filter(|r| {
                    r["measure"] == "capture"
                        && r["cause"] == cause
                        && r["period"] == "*"
                        && r["customer_id"] == "*"
                })
                .map(|r| {
                    meterflow_schemas::money::Quantity::parse(&r[column])
                        .unwrap()
                        .0
                })
                .sum()
        };
        (
            total("metered", "events"),
            total("billed", "events"),
            total("billed", "quantity"),
        )
    };
    let before = scorecard();
    let accepted_before = n(&counts(&out), "accepted");

    // Fix the records sent in the wrong unit; add one the quarantine does not know.
    let rejections = read_table(&out, "rejections").unwrap();
    let wrong_unit: Vec<&Row> = rejections
        .iter()
        .filter(|r| r["reason"] == "unit_mismatch")
        .collect();
    assert!(
        wrong_unit.len() > 20,
        "{} unit mismatches",
        wrong_unit.len()
    );
    let mut fixed: String = wrong_unit
        .iter()
        .map(|r| r["raw_payload"].replace(r#""unit":"GB""#, r#""unit":"requests""#) + "\n")
        .collect();
    fixed.push_str("{\"event_id\":\"never-rejected\",\"customer_id\":\"cus-000001\"}\n");
    let fixed_path = s.path().join("fixed.jsonl");
    std::fs::write(&fixed_path, &fixed).unwrap();
    let replay = || {
        let o = meterflow_ok(&[
            "quarantine",
            "replay",
            "-c",
            c,
            "-o",
            o,
            "--config",
            cfg,
            "--fixed",
            fixed_path.to_str().unwrap(),
        ]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let said = replay();
    let n_fixed = wrong_unit.len() as i128;
    assert!(
        said.contains(&format!("{n_fixed} accepted and billed")),
        "{said}"
    );
    assert!(
        said.contains("never-rejected: no rejection has this event_id"),
        "{said}"
    );

    // Billed once more each (one unit each), metered unchanged: capture up by exactly them.
    let after = scorecard();
    assert_eq!(after.0, before.0, "metered usage is the same usage");
    assert_eq!(after.1, before.1 + n_fixed * 1_000_000_000, "billed events");
    assert_eq!(after.2, before.2 + n_fixed * 1_000_000_000, "billed units");
    let counted = counts(&out);
    assert_eq!(n(&counted, "accepted"), accepted_before + n_fixed as u64);
    assert_eq!(
        n(&counted, "received"),
        n(&counted, "accepted") + n(&counted, "rejected") + n(&counted, "duplicates")
    );

    // Each resolution names the rejected record and the replayed one.
    let resolutions = read_table(&out, "quarantine_resolutions").unwrap();
    assert_eq!(resolutions.len(), wrong_unit.len());
    let sources = meterflow::reports::tables::input_paths(&out);
    let accepted = read_table(&out, "usage_events").unwrap();
    for res in &resolutions {
        let rejected = wrong_unit
            .iter()
            .find(|r| r["event_id"] == res["event_id"])
            .expect("a fixed rejection");
        assert_eq!(res["rejected_offset"], rejected["offset"]);
        assert_eq!(res["reason"], "unit_mismatch");
        assert_eq!(res["sign"], "1");
        let replayed = accepted
            .iter()
            .find(|e| e["event_id"] == res["event_id"])
            .expect("the fix is accepted");
        assert_eq!(sources[&replayed["source"]], res["replay_source"]);
        assert_eq!(replayed["offset"], res["replay_offset"]);
    }
    let listed = String::from_utf8_lossy(&meterflow_ok(&["quarantine", "list", "-o", o]).stdout)
        .into_owned();
    assert!(
        listed.contains(&format!(
            "unit_mismatch: {} rejected, {} resolved",
            wrong_unit.len(),
            wrong_unit.len()
        )),
        "{listed}"
    );

    // Replaying the same fixes again bills nothing more.
    let said = replay();
    assert!(said.contains("nothing to replay"), "{said}");
    assert_eq!(scorecard(), after);
    let o2 = meterflow(&["reconcile", "-c", c, "-o", o, "--config", cfg]);
    assert_eq!(
        o2.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o2.stdout)
    );
}

/// Signed events through `meterflow run` with a key rotation under way: both active keys
/// verify, a retired key is refused with its own reason even when its signature is valid, a
/// tampered quantity fails its signature, and no secret appears in any output.
#[test]
fn a_rotated_signing_key_is_refused_and_tampering_is_caught() {
    use meterflow_schemas::fixtures::{signed_api, CATALOG};
    let s = Scratch::new("signing-keys");
    let dir = s.path();
    std::fs::create_dir_all(dir.join("catalog")).unwrap();
    std::fs::write(dir.join("catalog/catalog.toml"), CATALOG).unwrap();
    let t = "2026-11-01T10:00:00Z";
    let signed = |id: &str, key_id: &str, secret: &[u8]| signed_api(id, t, key_id, secret);
    let (old, new, retired) = ("0ld-k3y-s3cret", "n3w-k3y-s3cret", "r3tired-s3cret");
    let lines = [
        signed("e-old", "2026-10", old.as_bytes()),
        signed("e-new", "2026-11", new.as_bytes()),
        signed("e-retired", "2026-09", retired.as_bytes()),
        signed("e-tampered", "2026-11", new.as_bytes())
            .replace(r#""quantity":"3""#, r#""quantity":"3000""#),
    ];
    std::fs::write(dir.join("events.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(
        dir.join("signed.toml"),
        "[integrity]\nmode = \"require_signature\"\n\n[integrity.keys]\n\"2026-09\" = { retired = true }\n\"2026-10\" = { env = \"METERFLOW_TEST_KEY_OLD\" }\n\"2026-11\" = { env = \"METERFLOW_TEST_KEY_NEW\" }\n",
    )
    .unwrap();
    let out = run_ok(
        Command::new(meterflow_bin())
            .args(["run", "-i", dir.join("events.jsonl").to_str().unwrap()])
            .args([
                "-c",
                dir.join("catalog").to_str().unwrap(),
                "-o",
                dir.join("out").to_str().unwrap(),
            ])
            .args(["--config", dir.join("signed.toml").to_str().unwrap()])
            .env("METERFLOW_TEST_KEY_OLD", old)
            .env("METERFLOW_TEST_KEY_NEW", new)
            .env("METERFLOW_LOG", "debug"),
    );
    let rejections: BTreeMap<String, String> = read_table(&dir.join("out"), "rejections")
        .unwrap()
        .iter()
        .map(|r| (r["event_id"].clone(), r["reason"].clone()))
        .collect();
    let want: BTreeMap<String, String> = [
        ("e-retired", "signature_key_retired"),
        ("e-tampered", "bad_signature"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    assert_eq!(rejections, want);
    let mut accepted: Vec<String> = read_table(&dir.join("out"), "usage_events")
        .unwrap()
        .iter()
        .map(|r| r["event_id"].clone())
        .collect();
    accepted.sort();
    assert_eq!(accepted, ["e-new", "e-old"], "both active keys verify");
    // The keys are in no log line, table or report.
    let mut seen =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    for entry in std::fs::read_dir(dir.join("out")).unwrap() {
        let path = entry.unwrap().path();
        let files = if path.is_dir() {
            std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect()
        } else {
            vec![path]
        };
        for f in files {
            seen += &String::from_utf8_lossy(&std::fs::read(f).unwrap());
        }
    }
    assert!(
        seen.contains("signature_key_retired"),
        "the outputs were read"
    );
    for secret in [old, new] {
        assert!(!seen.contains(secret), "a key leaked into the outputs");
    }
}
