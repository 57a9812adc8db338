//! The ClickHouse sink against a real ClickHouse server (18.16, started by the test): every table
//! written like the embedded run, restarts after SIGKILL at random points, and an outage of
//! ClickHouse in the middle of a run — with exactly the same totals every time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use meterflow_schemas::money::Amount;
use meterflow_tests::oracle::{
    anomalies_from_csv, assert_billed_like_reference, assert_clickhouse_matches,
    assert_each_event_accepted_once, assert_invoice_has, assert_stream_has, billed_events,
    catalog_log, count, reference_config, unit_mismatch_fixes,
};
use meterflow_tests::servers::{AnswerLosingProxy, ClickHouseServer};
use meterflow_tests::{
    backdate, generate, meterflow, meterflow_bin, meterflow_ok, Running, Scratch,
};

/// A long stream has all of these (late: periods that closed before their events arrived).
const EVERY_KIND: &[&str] = &[
    "duplicates",
    "rejected",
    "corrections",
    "late",
    "out_of_order",
];

/// Every type of invoice line (the generated catalog has contract terms and taxes).
const EVERY_LINE: &[&str] = &[
    "usage",
    "adjustment",
    "subscription",
    "discount",
    "commitment",
    "cap",
    "tax",
    "credit",
];

struct Fixture {
    dir: Scratch,
    ch: ClickHouseServer,
}

impl Fixture {
    fn new(name: &str, events: u64) -> Fixture {
        let dir = Scratch::new(name);
        generate(
            dir.path(),
            events,
            50,
            5,
            &[
                "--checksum-rate",
                "0.1",
                "--correction-rate",
                "0.02",
                "--terms",
            ],
        );
        std::fs::write(dir.path().join("small.toml"), "[input]\nchunk_bytes = 131072\n\n[output]\nprice_every_epochs = 2\n\n# Sparse generated meters: low floors, so there are anomalies to compare across kills.\n[anomalies]\nmin_volume = \"1\"\nmin_events = 0\n\n[clickhouse]\nflush_interval = \"100ms\"\n").unwrap();
        let ch = ClickHouseServer::start(dir.path());
        meterflow_ok(&["migrate", "--clickhouse-url", &ch.url()]);
        Fixture { dir, ch }
    }

    fn args(&self, out: &str, clickhouse: bool) -> Vec<String> {
        let d = self.dir.path();
        let mut a: Vec<String> = vec![
            "run".into(),
            "-i".into(),
            d.join("events.jsonl").display().to_string(),
            "-c".into(),
            d.join("catalog").display().to_string(),
            "-o".into(),
            d.join(out).display().to_string(),
            "--config".into(),
            d.join("small.toml").display().to_string(),
            "-q".into(),
        ];
        if clickhouse {
            a.extend(["--clickhouse-url".into(), self.ch.url()]);
        }
        a
    }

    /// `meterflow run` into ClickHouse, with `extra` arguments.
    fn spawn(&self, out: &str, extra: &[&str]) -> Running {
        Command::new(meterflow_bin())
            .args(self.args(out, true))
            .args(extra)
            .env("METERFLOW_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Running)
            .unwrap()
    }

    /// `kinds`: what the stream must have had for the comparison to mean something.
    fn assert_matches_oracle(&self, what: &str, kinds: &[&str]) {
        let a = self.args("oracle", false);
        meterflow_ok(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        let counts = assert_clickhouse_matches(&self.ch, &self.dir.path().join("oracle"), what);
        assert_stream_has(&counts, kinds);
        let anomalies = anomalies_from_csv(&self.dir.path().join("oracle"));
        assert!(
            anomalies.len() >= 10,
            "{what}: the stream has anomalies to compare ({})",
            anomalies.len()
        );
        assert_invoice_has(&self.dir.path().join("oracle"), EVERY_LINE);
    }
}

#[test]
fn clickhouse_holds_what_the_embedded_run_writes_and_a_rerun_changes_nothing() {
    let f = Fixture::new("ch-basic", 20_000);
    let mut first = f.args("first", true);
    first.extend(["--metrics-addr".into(), "127.0.0.1:0".into()]);
    meterflow_ok(&first.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    f.assert_matches_oracle("first run", &["duplicates", "rejected", "corrections"]);
    // /metrics counts every row inserted, per table: on a new database, what each table holds.
    let metrics = std::fs::read_to_string(f.dir.path().join("first/metrics.prom")).unwrap();
    let inserted: Vec<(&str, u64)> = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("meterflow_clickhouse_rows_inserted_total{table=\"")?;
            let (table, n) = rest.split_once("\"} ")?;
            Some((table, n.parse().ok()?))
        })
        .collect();
    for table in [
        "usage_events",
        "rejections",
        "invoice_lines",
        "sink_progress",
    ] {
        assert!(
            inserted.iter().any(|(t, _)| *t == table),
            "{table}: {metrics}"
        );
    }
    for (table, n) in inserted {
        let held = count(&f.ch, &format!("SELECT count() FROM meterflow.{table}"));
        assert_eq!(n, held, "rows inserted into {table}");
    }
    assert!(
        metrics.contains("meterflow_epochs_in_flight 0\n"),
        "{metrics}"
    );
    // The invoice preview reads the same invoice from ClickHouse as from the embedded output.
    let preview = |source: &[&str]| {
        let mut a = vec!["invoice", "preview", "--customer", "cus-000000"];
        a.extend_from_slice(source);
        String::from_utf8(meterflow_ok(&a).stdout).unwrap()
    };
    let oracle = f.dir.path().join("oracle");
    let from_files = preview(&["-o", oracle.to_str().unwrap()]);
    assert!(from_files.contains("total"), "{from_files}");
    assert_eq!(preview(&["--clickhouse-url", &f.ch.url()]), from_files);
    // So does the shadow report, and it has shadow-priced usage to report.
    let report = |source: &[&str]| {
        let mut a = vec!["shadow", "report"];
        a.extend_from_slice(source);
        String::from_utf8(meterflow_ok(&a).stdout).unwrap()
    };
    let from_files = report(&["-o", oracle.to_str().unwrap()]);
    assert!(
        from_files.lines().any(|l| l.starts_with("all ")),
        "{from_files}"
    );
    assert_eq!(report(&["--clickhouse-url", &f.ch.url()]), from_files);
    // The run recorded the catalog it billed with; an unchanged catalog adds nothing later.
    let log = catalog_log(&f.ch);
    assert!(
        log.contains("meterflow run  added contract `ctr-000000`"),
        "{log}"
    );
    let changes_before = count(&f.ch, "SELECT count() FROM meterflow.catalog_changes");
    let rows_before = count(&f.ch, "SELECT count() FROM meterflow.invoice_lines");
    meterflow_ok(
        &f.args("again", true)
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        count(&f.ch, "SELECT count() FROM meterflow.catalog_changes"),
        changes_before,
        "an unchanged catalog records no changes"
    );
    assert_eq!(
        count(&f.ch, "SELECT count() FROM meterflow.invoice_lines"),
        rows_before,
        "a completed run resumed writes nothing"
    );
    f.assert_matches_oracle("rerun", &[]);
    // The documented queries work on this server.
    let totals = f.ch.query("SELECT customer_id, invoice_period, currency, sum(amount * sign) FROM meterflow.invoice_lines GROUP BY customer_id, invoice_period, currency").unwrap();
    assert!(totals.lines().count() > 10);
}

/// `text` padded with a blank line (which meterflow skips) to a whole number of `chunk` bytes.
fn padded(text: &str, chunk: usize) -> String {
    let pad = (chunk - (text.len() + 1) % chunk) % chunk;
    format!("{text}{}\n", " ".repeat(pad))
}

#[test]
fn files_appended_to_between_runs_are_billed_once_and_rewritten_ones_are_refused() {
    let f = Fixture::new("ch-append", 12_000);
    let d = f.dir.path();
    // One pricing round per epoch, so every commit ends exactly where a run stopped.
    let chunk = 65536;
    std::fs::write(d.join("append.toml"), format!("[input]\nchunk_bytes = {chunk}\n\n[output]\nprice_every_epochs = 1\n\n[clickhouse]\nflush_interval = \"100ms\"\n")).unwrap();
    let text = std::fs::read_to_string(d.join("events.jsonl")).unwrap();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let cut =
        |from: usize, to: usize| lines[from * lines.len() / 20..to * lines.len() / 20].concat();
    // Pieces on chunk boundaries, so the runs below cut epochs where one run over the pieces
    // as separate files does, and must bill exactly like it; the last piece is not aligned.
    let (a1, a2, b, s, c) = (
        padded(&cut(0, 8), chunk),
        padded(&cut(8, 14), chunk),
        padded(&cut(14, 17), chunk),
        padded(&cut(17, 19), chunk),
        cut(19, 20),
    );
    for (name, piece) in [("a1", &a1), ("a2", &a2), ("b", &b), ("s", &s), ("c", &c)] {
        std::fs::write(d.join(format!("{name}.jsonl")), piece).unwrap();
    }
    let path = |name: &str| d.join(name).display().to_string();
    let run = |inputs: &[&str], out: &str, clickhouse: bool| {
        let mut a: Vec<String> = vec!["run".into()];
        for i in inputs {
            a.extend(["-i".into(), path(i)]);
        }
        a.extend([
            "-c".into(),
            path("catalog"),
            "-o".into(),
            path(out),
            "--config".into(),
            path("append.toml"),
            "-q".into(),
        ]);
        if clickhouse {
            a.extend(["--clickhouse-url".into(), f.ch.url()]);
        }
        meterflow(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let append = |name: &str, piece: &str| {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join(name))
            .unwrap();
        file.write_all(piece.as_bytes()).unwrap();
    };
    // A producer writes live.jsonl; meterflow bills it, then what was appended to it, then a
    // new file given alone, then what standard input brings.
    std::fs::write(d.join("live.jsonl"), &a1).unwrap();
    ok(run(&["live.jsonl"], "run1", true));
    append("live.jsonl", &a2);
    ok(run(&["live.jsonl"], "run2", true));
    std::fs::copy(d.join("b.jsonl"), d.join("new.jsonl")).unwrap();
    ok(run(&["new.jsonl"], "run3", true));
    let mut piped = Command::new(meterflow_bin())
        .args([
            "run",
            "-i",
            "-",
            "-c",
            &path("catalog"),
            "-o",
            &path("run-stdin"),
        ])
        .args([
            "--config",
            &path("append.toml"),
            "-q",
            "--clickhouse-url",
            &f.ch.url(),
        ])
        .env("METERFLOW_LOG", "warn")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut piped.stdin.take().unwrap(), s.as_bytes()).unwrap();
    assert!(piped.wait().unwrap().success());
    ok(run(
        &["a1.jsonl", "a2.jsonl", "b.jsonl", "s.jsonl"],
        "oracle",
        false,
    ));
    let counts =
        assert_clickhouse_matches(&f.ch, &d.join("oracle"), "appended files, new files, stdin");
    assert_stream_has(&counts, &["duplicates", "rejected", "corrections"]);
    // An append off the chunk grid, read with the file it was appended to: every record of it
    // counted once more (which epoch it lands in may differ from a run over separate files).
    append("new.jsonl", &c);
    ok(run(&["live.jsonl", "new.jsonl"], "run4", true));
    ok(run(
        &["a1.jsonl", "a2.jsonl", "b.jsonl", "s.jsonl", "c.jsonl"],
        "oracle-all",
        false,
    ));
    let all = meterflow_tests::oracle::counts_json(&d.join("oracle-all"));
    let rows = count(&f.ch, "SELECT (SELECT count() FROM meterflow.usage_events) + (SELECT count() FROM meterflow.rejections) + (SELECT count() FROM meterflow.duplicates)");
    assert_eq!(
        rows,
        all["received"].as_u64().unwrap(),
        "every record of the append, once"
    );
    assert_each_event_accepted_once(&f.ch, "after the append");
    // A file changed where it was already billed is refused, naming it; nothing is written.
    let mut rewritten = std::fs::read(d.join("live.jsonl")).unwrap();
    let at = rewritten.len() - 10;
    rewritten[at] = if rewritten[at] == b'7' { b'8' } else { b'7' };
    std::fs::write(d.join("live.jsonl"), &rewritten).unwrap();
    std::fs::write(d.join("new.jsonl"), &b[..b.len() / 2]).unwrap();
    for (input, why) in [("live.jsonl", "rewritten"), ("new.jsonl", "truncated")] {
        let out = run(&[input], "refused", true);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(&path(input)) && stderr.contains(why),
            "{input}: {stderr}"
        );
        assert!(
            stderr.contains("appending is fine"),
            "the error says what to do: {stderr}"
        );
    }
    assert_eq!(rows, count(&f.ch, "SELECT (SELECT count() FROM meterflow.usage_events) + (SELECT count() FROM meterflow.rejections) + (SELECT count() FROM meterflow.duplicates)"));
}

/// A pipeline fed from files into ClickHouse: `quarantine replay` runs it over the fixes (a new
/// file, read whole after the commit), bills each once and resolves its rejection; replayed
/// again, nothing is sent.
#[test]
fn fixes_replayed_into_a_file_fed_pipeline_are_billed_once_and_resolve_their_rejections() {
    let f = Fixture::new("ch-replay", 20_000);
    let d = f.dir.path();
    // Fixes carry their original times: keep every key deduplicable for the replay.
    let config = std::fs::read_to_string(d.join("small.toml")).unwrap();
    std::fs::write(
        d.join("small.toml"),
        config + "\n[dedup]\nhorizon = \"120d\"\n",
    )
    .unwrap();
    let first = f.args("first", true);
    meterflow_ok(&first.iter().map(String::as_str).collect::<Vec<_>>());
    let billed = || billed_events(&f.ch);
    let before = billed();
    let fixed = unit_mismatch_fixes(&f.ch);
    let n = fixed.len() as u64;
    assert!(n >= 3, "{n} unit mismatches");
    std::fs::write(d.join("fixes.jsonl"), fixed.join("\n") + "\n").unwrap();
    let replay = || {
        let path = |p: &str| d.join(p).display().to_string();
        let a = [
            "quarantine",
            "replay",
            "-c",
            &path("catalog"),
            "-o",
            &path("replayed"),
            "--config",
            &path("small.toml"),
            "--clickhouse-url",
            &f.ch.url(),
            "--fixed",
            &path("fixes.jsonl"),
        ];
        String::from_utf8_lossy(&meterflow_ok(&a).stdout).into_owned()
    };
    let said = replay();
    assert!(said.contains(&format!("{n} accepted and billed (their rejections resolved), 0 rejected again, 0 not committed yet")), "{said}");
    assert_eq!(billed(), before + n, "each fix billed");
    assert_eq!(count(&f.ch, "SELECT count() FROM meterflow.quarantine_resolutions WHERE reason = 'unit_mismatch' AND sign = 1"), n);
    assert_each_event_accepted_once(&f.ch, "after the replay");
    let said = replay();
    assert!(said.contains("nothing to replay"), "{said}");
    assert_eq!(billed(), before + n, "billed once");
}

#[test]
fn a_backdated_rate_change_re_rates_billed_usage_with_signed_corrections() {
    let f = Fixture::new("ch-backdated", 20_000);
    let run = |out: &str| {
        let a = f.args(out, true);
        meterflow_ok(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    };
    run("before");
    let total = |ch: &ClickHouseServer| {
        ch.query("SELECT sum(amount * sign) FROM meterflow.invoice_lines")
            .unwrap()
            .trim()
            .to_string()
    };
    let billed_before = total(&f.ch);
    let v3 = backdate(&f.dir.path().join("catalog"), "2026-10-15T12:00:00.000Z");
    assert!(v3.contains("2026-10-15T12"), "{v3}");
    // The same input again: everything is committed, so only the catalog change is new.
    run("after");
    let billed_after = total(&f.ch);
    assert_ne!(
        billed_before, billed_after,
        "the change re-priced billed usage"
    );
    // The re-rated rows are committed: the last commit covers them.
    assert_eq!(
        count(&f.ch, "SELECT count() FROM meterflow.invoice_lines WHERE epoch > (SELECT max(epoch) FROM meterflow.sink_progress)"),
        0,
        "rows beyond the last commit"
    );
    // Billed usage now equals a run that had the new catalog from the start ...
    f.assert_matches_oracle("after a backdated rate change", &[]);
    // ... and the change was written as corrections: retractions of the billed lines and new
    // lines, by the run that saw the change, with the earlier rows left as they were.
    let generation = count(&f.ch, "SELECT max(generation) FROM meterflow.invoice_lines");
    for table in ["invoice_lines", "line_usage", "rated_usage"] {
        let retracted = count(
            &f.ch,
            &format!("SELECT count() FROM meterflow.{table} WHERE sign = -1 AND generation = {generation}"),
        );
        assert!(
            retracted > 0,
            "{table}: the re-rating retracted billed rows"
        );
    }
    assert_eq!(
        count(
            &f.ch,
            "SELECT count() FROM meterflow.line_usage WHERE sign = 1 AND generation = 1 AND rate_card_version = 3"
        ),
        0,
        "nothing was billed at version 3 before the change"
    );
    assert!(
        count(
            &f.ch,
            "SELECT sum(sign) FROM meterflow.line_usage WHERE rate_card_version = 3"
        ) > 0,
        "usage after the effective date moved to version 3"
    );
    // The pinned contract went back to version 1 for all its usage.
    assert_eq!(
        count(
            &f.ch,
            "SELECT count() FROM (SELECT rate_card_version, sum(sign) AS n FROM meterflow.line_usage WHERE contract_id = 'ctr-000002' GROUP BY rate_card_version HAVING n != 0 AND rate_card_version != 1)"
        ),
        0,
        "ctr-000002 is billed at version 1 only"
    );
    let log = catalog_log(&f.ch);
    assert!(
        log.contains("added rate_card `standard` version 3"),
        "{log}"
    );
    assert!(log.contains("changed contract `ctr-000002`"), "{log}");
    // Re-rating again finds nothing to change.
    let rows = count(&f.ch, "SELECT count() FROM meterflow.invoice_lines");
    run("again");
    assert_eq!(
        count(&f.ch, "SELECT count() FROM meterflow.invoice_lines"),
        rows
    );
    assert_eq!(total(&f.ch), billed_after);
}

#[test]
fn sigkill_at_random_points_then_restart_counts_every_unit_exactly_once() {
    let f = Fixture::new("ch-kill", 150_000);
    let mut rng = 0x9E37_79B9u64;
    let mut kills = 0;
    for attempt in 0..30 {
        let mut child = f.spawn("killed", &[]);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait = Duration::from_millis(300 + rng % 2500);
        std::thread::sleep(wait);
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "run {attempt} failed");
                break;
            }
            None if kills < 4 => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
            None => {
                assert!(child.wait().unwrap().success(), "final run failed");
                break;
            }
        }
    }
    assert!(kills >= 3, "the run was killed {kills} times");
    f.assert_matches_oracle(&format!("after {kills} SIGKILLs"), EVERY_KIND);
    // And row for row against an uninterrupted run of the same file into ClickHouse: every
    // signed table, and the period and arrival of every event (late ones across period closes).
    let config = reference_config(&f.ch, f.dir.path(), "small.toml");
    let mut args = f.args("reference", true);
    let at = args.iter().position(|a| a == "--config").unwrap() + 1;
    args[at] = config;
    meterflow_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_billed_like_reference(&f.ch, &format!("after {kills} SIGKILLs"));
}

#[test]
fn a_clickhouse_outage_mid_stream_loses_nothing() {
    let mut f = Fixture::new("ch-outage", 100_000);
    let metrics = format!("127.0.0.1:{}", meterflow_tests::servers::free_port());
    let mut child = f.spawn("outage", &["--metrics-addr", &metrics]);
    std::thread::sleep(Duration::from_millis(800));
    f.ch.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "meterflow waits for ClickHouse instead of failing"
    );
    // Alive, but not ready while it cannot write.
    let http_get = meterflow_tests::servers::http_get;
    assert_eq!(http_get(&metrics, "/healthz").unwrap().0, 200);
    let (code, why) = http_get(&metrics, "/readyz").unwrap();
    assert!(
        code == 503 && why.contains("ClickHouse is unreachable"),
        "/readyz during the outage: {code} {why}"
    );
    f.ch.resume();
    assert!(child.wait().unwrap().success());
    f.assert_matches_oracle("after a ClickHouse outage", EVERY_KIND);
    // /metrics shows the inserts that waited for ClickHouse.
    let metrics = std::fs::read_to_string(f.dir.path().join("outage/metrics.prom")).unwrap();
    let total = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        total("meterflow_clickhouse_insert_retries_total{") > 0.0,
        "{metrics}"
    );
    assert!(
        total("meterflow_clickhouse_insert_seconds_sum{") > 2.0,
        "inserts waited out the 3 s outage: {metrics}"
    );
}

#[test]
fn an_insert_whose_answer_is_lost_is_written_once() {
    // ClickHouse writes every third insert but its answer never arrives: meterflow must find
    // the batch already there rather than insert it again (which would bill it twice).
    let f = Fixture::new("ch-lost-answer", 30_000);
    let proxy = AnswerLosingProxy::start(f.ch.http_port, 3);
    let mut args = f.args("lost", false);
    args.extend(["--clickhouse-url".into(), proxy.url()]);
    meterflow_ok(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let lost = proxy.lost.load(std::sync::atomic::Ordering::SeqCst);
    assert!(lost >= 3, "only {lost} answers were lost");
    f.assert_matches_oracle(
        &format!("after {lost} lost insert answers"),
        &["duplicates", "rejected", "corrections"],
    );
}

#[test]
fn every_statement_meterflow_sends_and_every_documented_query_run_on_current_clickhouse() {
    // Record what meterflow sends to the 18.16 server: migrations, a run killed part-way (so
    // the restart deletes and restores), the run that finishes, and a run that re-rates under a
    // backdated catalog change.
    let work = Scratch::new("ch-current-sql");
    let log = work.path().join("sql.log");
    std::env::set_var("METERFLOW_SQL_LOG", &log);
    let f = Fixture::new("ch-current", 80_000);
    let mut child = f.spawn("sql", &[]);
    std::thread::sleep(Duration::from_millis(1500));
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    let run = || {
        let a = f.args("sql", true);
        meterflow_ok(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    };
    run();
    backdate(&f.dir.path().join("catalog"), "2026-10-15T12:00:00.000Z");
    run();
    // Reconciliation after a re-rate under a backdated change: nothing drifts.
    let catalog = f.dir.path().join("catalog");
    let out = meterflow(&[
        "reconcile",
        "-c",
        catalog.to_str().unwrap(),
        "--clickhouse-url",
        &f.ch.url(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("no drift"), "{text}");
    // The scorecard counts the backdated change's re-rating as invoice errors.
    let out = meterflow(&[
        "scorecard",
        "-c",
        catalog.to_str().unwrap(),
        "--clickhouse-url",
        &f.ch.url(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let re_rated = count(
        &f.ch,
        "SELECT sum(events) FROM meterflow.scorecard WHERE measure = 'invoice_error' AND cause = 're_rating' AND customer_id = '*' AND period = '*'",
    );
    assert!(re_rated > 0, "{text}");
    // The quarantine's statements too (nothing to resolve: no fix was sent).
    meterflow_ok(&["quarantine", "list", "--clickhouse-url", &f.ch.url()]);
    let resolved = meterflow_ok(&["quarantine", "resolve", "--clickhouse-url", &f.ch.url()]);
    assert!(String::from_utf8_lossy(&resolved.stdout).contains("0 rejections resolved"));
    // A marketplace export's reads (the watermark, hourly usage, earlier exports), with the
    // first contract sold through an Azure listing; the month before the watermark's.
    let file = catalog.join("catalog.toml");
    let text = std::fs::read_to_string(&file).unwrap().replacen(
        "[[contract]]\nid = \"ctr-000001\"",
        "[contract.marketplace]\nlisting = \"azure\"\ncustomer = \"5f1c2a9e-0000-4e2a-9c1f-7d2b8e6a4c10\"\nplan = \"standard\"\n\n[[contract]]\nid = \"ctr-000001\"",
        1,
    ) + "\n[[marketplace]]\nid = \"azure\"\nkind = \"azure\"\n"
        + &["api_calls", "tokens", "storage"]
            .map(|s| format!("\n[[marketplace.dimension]]\nsku = \"{s}\"\ndimension = \"{s}\"\n"))
            .concat();
    std::fs::write(&file, text).unwrap();
    let watermark = count(
        &f.ch,
        "SELECT toUInt64(watermark_ms / 1000) FROM meterflow.sink_progress ORDER BY generation DESC, epoch DESC LIMIT 1",
    );
    let unit = meterflow_schemas::time::PeriodUnit::Month;
    let this = unit.period_of(meterflow_schemas::time::EventTime(watermark as i64 * 1000));
    let before = unit.label(unit.period_of(meterflow_schemas::time::EventTime(this.0 .0 - 1)));
    let requests = work.path().join("requests");
    let exported = meterflow(&[
        "export",
        "azure",
        "-c",
        catalog.to_str().unwrap(),
        "--clickhouse-url",
        &f.ch.url(),
        "--period",
        &before,
        "--to",
        requests.to_str().unwrap(),
    ]);
    // Its peak meters (seats, active users) cannot go to a marketplace: named, nothing written.
    let text = String::from_utf8_lossy(&exported.stderr);
    assert!(
        text.contains("nothing was written") && text.contains("used SKU seats, a peak"),
        "{text}"
    );
    assert!(!requests.exists());
    // The revenue schedule's reads and its signed rows, twice: the second changes nothing,
    // and writes the remaining performance obligations.
    for (changed, rpo) in [
        ("rows stated", None),
        ("0 rows stated, 0 retracted", Some("--rpo")),
    ] {
        let url = f.ch.url();
        let mut args = vec![
            "revenue",
            "-c",
            catalog.to_str().unwrap(),
            "--clickhouse-url",
            &url,
        ];
        args.extend(rpo);
        let o = meterflow_ok(&args);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains(changed) && text.contains("in every row: holds"),
            "{text}"
        );
        if rpo.is_some() {
            let written = text
                .lines()
                .find_map(|l| l.strip_prefix("remaining_obligations: "))
                .and_then(|l| l.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{text}"));
            assert_eq!(
                count(&f.ch, "SELECT count() FROM meterflow.remaining_obligations"),
                written
            );
        }
    }
    // The forecast's reads and its rows, and a backtest.
    let url = f.ch.url();
    for args in [&["--horizon", "2"][..], &["--backtest", "1"][..]] {
        let mut all = vec![
            "forecast",
            "-c",
            catalog.to_str().unwrap(),
            "--clickhouse-url",
            &url,
        ];
        all.extend(args);
        let o = meterflow_ok(&all);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("usage"),
            "{:?}",
            o
        );
    }
    assert!(
        count(
            &f.ch,
            "SELECT count() FROM meterflow.forecast WHERE stream = 'usage'"
        ) > 0
    );
    // The dashboard's reads (the v_* views) too: one snapshot, then stop.
    {
        let dashboard = meterflow_tests::start_dashboard(
            &meterflow_tests::meterflow_bin(),
            &[
                "-c",
                catalog.to_str().unwrap(),
                "--clickhouse-url",
                &f.ch.url(),
            ],
            &[],
        );
        let addr = dashboard.addr.as_str();
        let start = std::time::Instant::now();
        while meterflow_tests::servers::http_get(addr, "/api/exec")
            .unwrap()
            .0
            != 200
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the dashboard never read ClickHouse"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let dump = work.path().join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    let tables = f
        .ch
        .query("SELECT name FROM system.tables WHERE database = 'meterflow' AND engine != 'View' FORMAT TabSeparated")
        .unwrap();
    for table in tables.lines() {
        let rows =
            f.ch.query(&format!(
                "SELECT * FROM meterflow.{table} FORMAT TabSeparatedWithNamesAndTypes"
            ))
            .unwrap();
        std::fs::write(dump.join(format!("{table}.tsv")), rows).unwrap();
    }
    // The CSV queries of docs/outputs.md read the demo's output.
    let demo = work.path().join("demo");
    meterflow_ok(&["demo", "--dir", demo.to_str().unwrap()]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("python3")
        .arg(root.join("tests/chdb_check.py"))
        .arg("--log")
        .arg(&log)
        .arg("--dump")
        .arg(&dump)
        .arg("--docs")
        .arg(root.join("docs/clickhouse.md"))
        .arg(root.join("docs/reconcile.md"))
        .arg(root.join("docs/scorecard.md"))
        .arg(root.join("docs/quarantine.md"))
        .arg(root.join("docs/marketplaces.md"))
        .arg(root.join("docs/revenue.md"))
        .arg(root.join("docs/forecast.md"))
        .arg("--grafana")
        .arg(root.join("deploy/grafana/dashboards/meterflow-exec.json"))
        .arg(root.join("deploy/grafana/dashboards/meterflow-account.json"))
        .arg(root.join("deploy/grafana/dashboards/meterflow-ops.json"))
        .arg("--csv-docs")
        .arg(root.join("docs/outputs.md"))
        .arg("--csv-out")
        .arg(demo.join("out"))
        .arg("--http")
        .arg(f.ch.url())
        .arg("--describe")
        .arg(work.path().join("current.tsv"))
        .output()
        .expect("python3 runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "current ClickHouse refused statements:\n{report}"
    );
    // The migrated tables are the registered ones, column for column, on both servers.
    let current = std::fs::read_to_string(work.path().join("current.tsv")).unwrap();
    assert_eq!(
        registry_differences(&current),
        Vec::<String>::new(),
        "current ClickHouse"
    );
    let old = f
        .ch
        .query("SELECT table, 'column', name, type FROM system.columns WHERE database = 'meterflow' FORMAT TabSeparated")
        .unwrap()
        + &f.ch
            .query("SELECT name, 'table', engine, partition_key, sorting_key FROM system.tables WHERE database = 'meterflow' FORMAT TabSeparated")
            .unwrap();
    assert_eq!(
        registry_differences(&old),
        Vec::<String>::new(),
        "ClickHouse 18.16"
    );
    let sent = std::fs::read_to_string(&log).unwrap();
    for kind in [
        "CREATE TABLE",
        "ALTER TABLE",
        "sink_progress",
        "usage_events WHERE",
        "contract_id IN (",
        "billable = 1 AND sku IN",
        "reconciliation LIMIT 0",
        "ANY INNER JOIN",
        "HAVING countIf(sign < 0) > 0",
        "AS rejected_epoch",
        "FROM meterflow.v_account_signals",
        "FROM meterflow.v_ops_anomalies",
        "FROM meterflow.v_exec_reconciliation",
        "FROM meterflow.v_exec_drift",
        "FROM meterflow.exports WHERE marketplace",
        "* 3600) AS bucket, attributes AS attributes, toString(sum(quantity))",
        "FROM meterflow.revenue_schedule",
        "* 86400) AS bucket, '' AS attributes, toString(sum(quantity))",
        "FROM meterflow.v_exec_forecast",
        "AS recognised, toString(sum(deferred * sign))",
    ] {
        assert!(sent.contains(kind), "no `{kind}` statement was recorded");
    }
}

/// `meterflow reconcile` against ClickHouse: no drift on what a run wrote; a usage line deleted
/// behind meterflow's back is found with the events behind it, recorded, and exits 3.
#[test]
fn reconcile_finds_an_invoice_line_deleted_in_clickhouse() {
    let f = Fixture::new("ch-reconcile", 20_000);
    let a = f.args("out", true);
    meterflow_ok(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let catalog = f.dir.path().join("catalog");
    let reconcile = || {
        let o = meterflow(&[
            "reconcile",
            "-c",
            catalog.to_str().unwrap(),
            "--clickhouse-url",
            &f.ch.url(),
        ]);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, text) = reconcile();
    assert_eq!(code, Some(0), "{text}");
    let checked = count(&f.ch, "SELECT count() FROM meterflow.reconciliation");
    assert!(checked > 50, "{checked} lines checked");
    assert_eq!(
        count(&f.ch, "SELECT sum(drift) FROM meterflow.reconciliation"),
        0
    );

    // The api_calls usage line with the most events loses its rows.
    let target = f
        .ch
        .query("SELECT customer_id, contract_id, service_period, invoice_period, region FROM meterflow.invoice_lines WHERE sku = 'api_calls' AND line_type = 'usage' AND sign = 1 ORDER BY events DESC, customer_id LIMIT 1 FORMAT TabSeparated")
        .unwrap();
    let t: Vec<&str> = target.trim().split('\t').collect();
    let line = format!(
        "customer_id = '{}' AND contract_id = '{}' AND sku = 'api_calls' AND service_period = '{}' AND invoice_period = '{}'",
        t[0], t[1], t[2], t[3]
    );
    let (region, t) = (t[4], &t[..4]);
    let (of_lines, of_events) = (
        format!("{line} AND region = '{region}' AND line_type = 'usage'"),
        format!("{line} AND price_region = '{region}'"),
    );
    let amount = f
        .ch
        .query(&format!("SELECT toString(sum(amount * sign)) FROM meterflow.invoice_lines WHERE {of_lines} FORMAT TabSeparated"))
        .unwrap();
    let amount = Amount::parse(amount.trim()).unwrap();
    assert!(amount > Amount::ZERO, "the line bills {amount}");
    f.ch.query(&format!(
        "ALTER TABLE meterflow.invoice_lines DELETE WHERE {of_lines}"
    ))
    .unwrap();
    // Mutations run in the background on 18.16.
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        count(
            &f.ch,
            &format!("SELECT count() FROM meterflow.invoice_lines WHERE {of_lines}"),
        ) == 0
    });
    assert!(gone, "the line's rows are deleted");
    let (code, text) = reconcile();
    assert_eq!(code, Some(3), "{text}");
    // The line, and its invoice's subtotal and total.
    assert!(text.contains("DRIFT in 3 of"), "{text}");
    assert!(
        text.contains(&format!("{} / {} / api_calls", t[0], t[1])),
        "{text}"
    );
    let totals = f
        .ch
        .query("SELECT customer_id, invoice_period, line_type, toString(expected_amount - billed_amount) FROM meterflow.reconciliation WHERE drift = 1 AND comparison = 'lines_to_totals' ORDER BY line_type FORMAT TabSeparated")
        .unwrap();
    let totals: Vec<(String, String, String, Amount)> = totals
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let short = Amount::parse(f[3]).unwrap();
            (f[0].into(), f[1].into(), f[2].into(), short)
        })
        .collect();
    assert_eq!(
        totals,
        ["subtotal", "total"].map(|k| (t[0].to_string(), t[3].to_string(), k.to_string(), amount)),
        "the invoice lacks the line's amount"
    );
    let drift = f
        .ch
        .query("SELECT customer_id, contract_id, service_period, invoice_period, toString(billed_quantity), event_ids FROM meterflow.reconciliation WHERE drift = 1 AND comparison = 'events_to_lines' FORMAT TabSeparated")
        .unwrap();
    let d: Vec<&str> = drift.trim().split('\t').collect();
    assert_eq!(&d[..4], t, "{drift}");
    assert_eq!(d[4].parse::<f64>(), Ok(0.0), "nothing billed");
    let ids: Vec<&str> = d[5].split(' ').collect();
    assert_eq!(ids.len(), 10);
    // The exec dashboard shows the drift: three checks of all, the line first with its events,
    // and the line's money underbilled (once: the invoice totals are not counted again).
    let dashboard = meterflow_tests::start_dashboard(
        &meterflow_tests::meterflow_bin(),
        &[
            "-c",
            catalog.to_str().unwrap(),
            "--clickhouse-url",
            &f.ch.url(),
        ],
        &[],
    );
    let start = std::time::Instant::now();
    let exec = loop {
        let (code, body) =
            meterflow_tests::servers::http_get(&dashboard.addr, "/api/exec").unwrap();
        if code == 200 {
            break serde_json::from_str::<serde_json::Value>(&body).unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the dashboard never read ClickHouse: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let r = &exec["data"]["reconciliation"];
    assert_eq!(r["drifting"], 3, "{r}");
    assert_eq!(r["lines"].as_u64(), Some(checked), "{r}");
    assert_eq!(
        r["underbilled"][0]["amount"],
        amount.format_fixed(2).as_str(),
        "{r}"
    );
    assert_eq!(r["overbilled"], serde_json::json!([]), "{r}");
    let first = &r["drifting_lines"][0];
    let key: Vec<&str> = ["customer", "contract", "service_period", "invoice_period"]
        .iter()
        .map(|k| first[*k].as_str().unwrap_or(""))
        .collect();
    assert_eq!(key, t, "{r}");
    assert_eq!(
        first["difference"],
        format!("-{}", amount.format_fixed(2)).as_str()
    );
    assert_eq!(first["event_ids"].as_array().unwrap().len(), 10);
    drop(dashboard);
    for id in ids {
        assert_eq!(
            count(
                &f.ch,
                &format!(
                    "SELECT count() FROM meterflow.usage_events WHERE event_id = '{id}' AND {of_events}"
                )
            ),
            1,
            "{id} is an event of the line"
        );
    }
}

/// `meterflow scorecard` against ClickHouse counts what it counts over the CSV tables of the
/// same input run without ClickHouse: every capture and invoice error total, cause by cause.
#[test]
fn scorecard_counts_the_same_in_clickhouse_as_in_files() {
    let f = Fixture::new("ch-scorecard", 20_000);
    for clickhouse in [true, false] {
        let a = f.args(if clickhouse { "ch" } else { "files" }, clickhouse);
        meterflow_ok(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    }
    let catalog = f.dir.path().join("catalog");
    let files = f.dir.path().join("files");
    for source in [
        &["--clickhouse-url", &f.ch.url()][..],
        &["-o", files.to_str().unwrap()],
    ] {
        let mut a = vec!["scorecard", "-c", catalog.to_str().unwrap()];
        a.extend(source);
        meterflow_ok(&a);
    }
    let totals_sql = "SELECT measure, cause, period, toString(events), toString(quantity), toString(amount) FROM meterflow.scorecard WHERE customer_id = '*' AND sku = '*' ORDER BY measure, cause, period FORMAT TabSeparated";
    let in_clickhouse: Vec<String> =
        f.ch.query(totals_sql)
            .unwrap()
            .lines()
            .map(|l| {
                let c: Vec<&str> = l.split('\t').collect();
                format!(
                    "{} {} {} {} {} {}",
                    c[0],
                    c[1],
                    c[2],
                    c[3],
                    decimal(c[4]),
                    decimal(c[5])
                )
            })
            .collect();
    let mut in_files: Vec<String> = meterflow::reports::tables::read_table(&files, "scorecard")
        .unwrap()
        .iter()
        .filter(|r| r["customer_id"] == "*" && r["sku"] == "*")
        .map(|r| {
            format!(
                "{} {} {} {} {} {}",
                r["measure"],
                r["cause"],
                r["period"],
                r["events"],
                decimal(&r["quantity"]),
                decimal(&r["amount"])
            )
        })
        .collect();
    in_files.sort();
    for cause in [
        "capture metered",
        "capture billed",
        "capture rejected:",
        "capture duplicate",
        "invoice_error issued",
        "invoice_error changed",
    ] {
        assert!(
            in_files.iter().any(|l| l.starts_with(cause)),
            "no `{cause}` in {in_files:#?}"
        );
    }
    assert_eq!(in_clickhouse, in_files);
    // The metering lag covers every valid event read, retries included (no record of this
    // stream is rejected by deduplication), in both.
    let accepted = count(&f.ch, "SELECT count() FROM meterflow.usage_events")
        + count(&f.ch, "SELECT count() FROM meterflow.duplicates");
    assert_eq!(
        count(&f.ch, "SELECT events FROM meterflow.metering_lag WHERE period = '*' AND source = '*' AND stage = 'event_to_committed'"),
        accepted
    );
    let lag = meterflow::reports::tables::read_table(&files, "metering_lag").unwrap();
    let all = lag
        .iter()
        .find(|r| r["period"] == "*" && r["source"] == "*" && r["stage"] == "event_to_committed")
        .expect("the lag over all partitions");
    assert_eq!(all["events"], accepted.to_string());
}

/// A decimal without trailing zeros.
fn decimal(text: &str) -> String {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text.to_string()
    }
}

/// How the tables a server describes (lines of `table, 'column', name, type` and `table,
/// 'table', engine, partition key, sorting key`) differ from the table registry.
fn registry_differences(described: &str) -> Vec<String> {
    use meterflow_schemas::tables::ALL;
    let mut columns: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    let mut keys: BTreeMap<&str, (&str, &str, &str)> = BTreeMap::new();
    for line in described.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        match f[..] {
            [t, "column", name, ty] => columns.entry(t).or_default().push((name, ty)),
            [t, "table", engine, partition, sorting] => {
                keys.insert(t, (engine, partition, sorting));
            }
            _ => panic!("unexpected line {line:?}"),
        }
    }
    let mut diffs = Vec::new();
    let views: BTreeSet<&str> = keys
        .iter()
        .filter(|(_, (engine, _, _))| *engine == "View")
        .map(|(t, _)| *t)
        .collect();
    let registered_views: BTreeSet<&str> = meterflow_schemas::tables::VIEWS
        .iter()
        .map(|v| v.name)
        .collect();
    if views != registered_views {
        diffs.push(format!(
            "migrated views {views:?}, registered {registered_views:?}"
        ));
    }
    let made: BTreeSet<&str> = keys
        .keys()
        .copied()
        .filter(|t| *t != "schema_migrations" && !views.contains(t))
        .collect();
    let registered: BTreeSet<&str> = ALL.iter().map(|t| t.name).collect();
    if made != registered {
        diffs.push(format!(
            "migrated tables {made:?}, registered {registered:?}"
        ));
    }
    for t in ALL {
        let want: Vec<(&str, &str)> = t.columns.iter().map(|c| (c.name, c.ty)).collect();
        let got = columns.get(t.name).cloned().unwrap_or_default();
        if got != want {
            diffs.push(format!("{}: columns {got:?}, registered {want:?}", t.name));
        }
        let want = (
            "MergeTree",
            t.partition_by.unwrap_or(""),
            t.order_by.join(", "),
        );
        match keys.get(t.name) {
            Some(&(e, p, o)) if (e, p, o) == (want.0, want.1, want.2.as_str()) => {}
            got => diffs.push(format!(
                "{}: engine and keys {got:?}, registered {want:?}",
                t.name
            )),
        }
    }
    diffs
}

/// The names in the first column of the table under `## {section}` of docs/clickhouse.md.
fn listed_in_docs(section: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let doc = std::fs::read_to_string(root.join("docs/clickhouse.md")).unwrap();
    let part = doc
        .split(&format!("\n## {section}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("a {section} section"));
    part.split("\n## ")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(String::from)
        .collect()
}

#[test]
fn docs_list_exactly_the_registered_views() {
    let listed = listed_in_docs("Views");
    let registered: Vec<&str> = meterflow_schemas::tables::VIEWS
        .iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(listed, registered, "docs/clickhouse.md lists {listed:?}");
}

#[test]
fn docs_list_exactly_the_registered_tables() {
    let listed = listed_in_docs("Tables");
    let listed: Vec<&str> = listed.iter().map(String::as_str).collect();
    let registered: Vec<&str> = meterflow_schemas::tables::ALL
        .iter()
        .map(|t| t.name)
        .collect();
    let (mut a, mut b) = (listed.clone(), registered.clone());
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "docs/clickhouse.md lists {listed:?}");
}
