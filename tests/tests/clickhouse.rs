//! The ClickHouse sink against a real ClickHouse server (18.16, started by the test): every table
//! written like the embedded run, restarts after SIGKILL at random points, and an outage of
//! ClickHouse in the middle of a run — with exactly the same totals every time.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meterflow::tables::read_table;
use meterflow::trace::current_rows;
use meterflow_schemas::money::{Amount, Quantity};
use meterflow_tests::servers::ClickHouseServer;
use meterflow_tests::{meterflow_bin, meterflow_ok, Scratch};

/// Money per invoice line identity: (amount_exact, quantity, events).
type Money = BTreeMap<Vec<String>, (Amount, Quantity, i64)>;

const IDENTITY: [&str; 7] = [
    "customer_id",
    "contract_id",
    "sku",
    "region",
    "service_period",
    "invoice_period",
    "line_type",
];

fn from_clickhouse(ch: &ClickHouseServer) -> Money {
    let cols = IDENTITY.join(", ");
    let tsv = ch
        .query(&format!("SELECT {cols}, toString(sum(amount_exact * sign)), toString(sum(quantity * sign)), sum(events * sign) FROM meterflow.invoice_lines GROUP BY {cols} HAVING sum(sign) != 0 FORMAT TabSeparated"))
        .unwrap();
    tsv.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[..7].iter().map(|s| s.to_string()).collect(),
                (
                    Amount::parse(f[7]).unwrap(),
                    Quantity::parse(f[8]).unwrap(),
                    f[9].parse().unwrap(),
                ),
            )
        })
        .collect()
}

fn from_csv(out: &Path) -> Money {
    current_rows(&read_table(out, "invoice_lines").unwrap())
        .into_iter()
        .map(|r| {
            (
                IDENTITY.iter().map(|k| r[*k].clone()).collect(),
                (
                    Amount::parse(&r["amount_exact"]).unwrap(),
                    Quantity::parse(&r["quantity"]).unwrap(),
                    r["events"].parse().unwrap(),
                ),
            )
        })
        .collect()
}

/// Fails with the lines that differ (not the whole table).
fn assert_same(got: &Money, want: &Money, what: &str) {
    let mut diffs = Vec::new();
    for (k, v) in want {
        if got.get(k) != Some(v) {
            diffs.push(format!("{k:?}: got {:?}, want {v:?}", got.get(k)));
        }
    }
    for (k, v) in got {
        if !want.contains_key(k) {
            diffs.push(format!("{k:?}: got {v:?}, want nothing"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} invoice lines differ:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn count(ch: &ClickHouseServer, sql: &str) -> u64 {
    ch.query(sql).unwrap().trim().parse().unwrap()
}

fn reasons(ch: &ClickHouseServer) -> BTreeMap<String, u64> {
    ch.query("SELECT reason, count() FROM meterflow.rejections GROUP BY reason FORMAT TabSeparated")
        .unwrap()
        .lines()
        .map(|l| {
            let (r, n) = l.split_once('\t').unwrap();
            (r.to_string(), n.parse().unwrap())
        })
        .collect()
}

fn counts_json(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("counts.json")).unwrap()).unwrap()
}

struct Fixture {
    dir: Scratch,
    ch: ClickHouseServer,
}

impl Fixture {
    fn new(name: &str, events: u64) -> Fixture {
        let dir = Scratch::new(name);
        meterflow_ok(&[
            "gen",
            "--out",
            dir.path().to_str().unwrap(),
            "--events",
            &events.to_string(),
            "--customers",
            "50",
            "--checksum-rate",
            "0.1",
            "--seed",
            "5",
        ]);
        std::fs::write(dir.path().join("small.toml"), "[input]\nchunk_bytes = 131072\n\n[output]\nprice_every_epochs = 2\n\n[clickhouse]\nflush_interval = \"100ms\"\n").unwrap();
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

    fn spawn(&self, out: &str) -> Child {
        Command::new(meterflow_bin())
            .args(self.args(out, true))
            .env("METERFLOW_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// The embedded run of the same input: the oracle.
    fn oracle(&self) -> (Money, serde_json::Value) {
        let a = self.args("oracle", false);
        meterflow_ok(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        let out = self.dir.path().join("oracle");
        (from_csv(&out), counts_json(&out))
    }

    fn assert_matches_oracle(&self, what: &str) {
        let (money, counts) = self.oracle();
        let accepted = count(&self.ch, "SELECT count() FROM meterflow.usage_events");
        let rejected = count(&self.ch, "SELECT count() FROM meterflow.rejections");
        let duplicates = count(&self.ch, "SELECT count() FROM meterflow.duplicates");
        assert_eq!(
            accepted,
            counts["accepted"].as_u64().unwrap(),
            "{what}: accepted"
        );
        assert_eq!(
            rejected,
            counts["rejected"].as_u64().unwrap(),
            "{what}: rejected"
        );
        assert_eq!(
            duplicates,
            counts["duplicates"].as_u64().unwrap(),
            "{what}: duplicates"
        );
        assert_eq!(
            accepted + rejected + duplicates,
            counts["received"].as_u64().unwrap(),
            "{what}: received = accepted + rejected + duplicates"
        );
        let expected: BTreeMap<String, u64> = counts["rejected_by_reason"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect();
        assert_eq!(reasons(&self.ch), expected, "{what}: rejections by reason");
        let distinct = count(
            &self.ch,
            "SELECT uniqExact(event_id) FROM meterflow.usage_events",
        );
        assert_eq!(distinct, accepted, "{what}: no event accepted twice");
        // Where every accepted event was billed, and what the pricing input holds.
        let placed = |sql: &str| self.ch.query(sql).unwrap();
        let by_period = "SELECT service_period, invoice_period, count(), toString(sum(quantity)) FROM meterflow.usage_events WHERE billable = 1 GROUP BY service_period, invoice_period ORDER BY service_period, invoice_period";
        let in_pricing = "SELECT service_period, invoice_period, sum(events * sign), toString(sum(quantity * sign)) FROM meterflow.line_usage GROUP BY service_period, invoice_period HAVING sum(sign) != 0 ORDER BY service_period, invoice_period";
        assert_eq!(
            placed(in_pricing),
            placed(by_period),
            "{what}: the pricing input holds exactly the accepted usage"
        );
        assert_same(&from_clickhouse(&self.ch), &money, what);
        let committed: serde_json::Value = serde_json::from_str(
            self.ch
                .query("SELECT counts FROM meterflow.sink_progress ORDER BY epoch DESC LIMIT 1")
                .unwrap()
                .trim()
                .replace("\\\\", "\\")
                .as_str(),
        )
        .unwrap();
        assert_eq!(
            committed["received"], counts["received"],
            "{what}: the last commit counts every record"
        );
    }
}

#[test]
fn clickhouse_holds_what_the_embedded_run_writes_and_a_rerun_changes_nothing() {
    let f = Fixture::new("ch-basic", 20_000);
    meterflow_ok(
        &f.args("first", true)
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    );
    f.assert_matches_oracle("first run");
    let rows_before = count(&f.ch, "SELECT count() FROM meterflow.invoice_lines");
    meterflow_ok(
        &f.args("again", true)
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        count(&f.ch, "SELECT count() FROM meterflow.invoice_lines"),
        rows_before,
        "a completed run resumed writes nothing"
    );
    f.assert_matches_oracle("rerun");
    // The documented queries work on this server.
    let totals = f.ch.query("SELECT customer_id, invoice_period, currency, sum(amount * sign) FROM meterflow.invoice_lines GROUP BY customer_id, invoice_period, currency").unwrap();
    assert!(totals.lines().count() > 10);
}

#[test]
fn sigkill_at_random_points_then_restart_counts_every_unit_exactly_once() {
    let f = Fixture::new("ch-kill", 150_000);
    let mut rng = 0x9E37_79B9u64;
    let mut kills = 0;
    for attempt in 0..30 {
        let mut child = f.spawn("killed");
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
    f.assert_matches_oracle(&format!("after {kills} SIGKILLs"));
}

#[test]
fn a_clickhouse_outage_mid_stream_loses_nothing() {
    let mut f = Fixture::new("ch-outage", 100_000);
    let mut child = f.spawn("outage");
    std::thread::sleep(Duration::from_millis(800));
    f.ch.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "meterflow waits for ClickHouse instead of failing"
    );
    f.ch.resume();
    assert!(child.wait().unwrap().success());
    f.assert_matches_oracle("after a ClickHouse outage");
}
