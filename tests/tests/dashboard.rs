//! `meterflow dashboard` end to end: the binary serving a run's output and ClickHouse, its JSON
//! answers, and real headless Chromium (Debian `chromium` + `chromium-driver`, driven by
//! selenium from `tests/browser/dashboard_check.py`) checking that every number the pages show
//! equals the same number computed from the CSV tables or with SQL.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use meterflow::reports::tables::{current_rows, read_table};
use meterflow_schemas::money::Amount;
use meterflow_tests::servers::{http_get, http_get_with};
use meterflow_tests::{
    generate, meterflow, meterflow_bin, meterflow_ok, run_ok, start_dashboard, DashboardProcess,
    Running, Scratch,
};

/// A running `meterflow dashboard` on a free loopback port.
struct Dashboard {
    _child: Running,
    addr: String,
}

impl Dashboard {
    fn start(args: &[&str]) -> Dashboard {
        Dashboard::start_with(args, &[])
    }

    fn start_with(args: &[&str], env: &[(&str, &str)]) -> Dashboard {
        let mut all = args.to_vec();
        all.extend(["--refresh", "500ms"]);
        let DashboardProcess { child, addr } = start_dashboard(&meterflow_bin(), &all, env);
        Dashboard {
            _child: child,
            addr,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (code, body) = http_get(&self.addr, path).unwrap();
        let json =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e} in {body:?}"));
        (code, json)
    }

    /// Polls `path` until `done` holds of its answer.
    fn wait_for(
        &self,
        path: &str,
        what: &str,
        done: impl Fn(u16, &serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let (code, json) = self.get(path);
            if done(code, &json) {
                return json;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "{what}: {path} still answers {code} {json}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn browser_check(args: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = run_ok(
        Command::new("python3")
            .arg(root.join("tests/browser/dashboard_check.py"))
            .args(args),
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_pages_show_in_chromium_what_the_demo_output_adds_up_to() {
    let work = Scratch::new("dashboard-files");
    let demo = work.path().join("demo");
    meterflow_ok(&["demo", "--dir", path_str(&demo)]);
    let (catalog, out) = (demo.join("catalog"), demo.join("out"));
    // The capture the page shows is the scorecard's: recorded here, compared there.
    meterflow_ok(&["scorecard", "-c", path_str(&catalog), "-o", path_str(&out)]);
    // So is the reconciliation drift.
    meterflow_ok(&["reconcile", "-c", path_str(&catalog), "-o", path_str(&out)]);
    // And the forecast.
    meterflow_ok(&["forecast", "-c", path_str(&catalog), "-o", path_str(&out)]);
    // And the revenue schedule.
    meterflow_ok(&["revenue", "-c", path_str(&catalog), "-o", path_str(&out)]);
    let d = Dashboard::start(&["-c", path_str(&catalog), "-o", path_str(&out)]);
    d.wait_for("/api/exec", "the first read", |code, _| code == 200);
    // Bad input is an answer that says why, never a server error.
    let (code, json) = d.get("/api/account?customer=nobody");
    assert_eq!(code, 404, "{json}");
    assert!(json["empty"]
        .as_str()
        .unwrap()
        .contains("no customer `nobody`"));
    let (code, json) = d.get("/api/ops?period=last-month");
    assert_eq!(code, 400, "{json}");
    let (code, json) = d.get("/api/account");
    assert_eq!(code, 400, "{json}");
    // The rows behind an invoice line are its events, as `meterflow trace` follows them.
    let (code, json) = d.get(
        "/api/events?customer=acme&contract=acme-2026&sku=tokens&service_period=2026-11&period=2026-11",
    );
    assert_eq!(code, 200, "{json}");
    // Non-billable events (a test environment) are there to trace, not on the line.
    let events: Vec<&serde_json::Value> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["billable"] == "1")
        .collect();
    let (_, account) = d.get("/api/account?customer=acme&period=2026-11");
    let line = account["data"]["invoice"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["sku"] == "tokens" && l["line_type"] == "usage" && l["service_period"] == "2026-11"
        })
        .expect("a tokens usage line")
        .clone();
    let voided = events
        .iter()
        .filter(|e| e["correction_action"] == "void")
        .count() as i64;
    assert_eq!(
        events.len() as i64 - 2 * voided,
        line["events"].as_i64().unwrap(),
        "the events behind {line}"
    );
    // Initech's prepaid credit: what is left is the grant less every credit line so far.
    let used: Amount = current_rows(&read_table(&out, "invoice_lines").unwrap())
        .iter()
        .filter(|r| r["customer_id"] == "initech" && r["line_type"] == "credit")
        .map(|r| -Amount::parse(&r["amount"]).unwrap())
        .sum();
    assert!(used > Amount::ZERO, "the demo burns initech's credit");
    let (_, initech) = d.get("/api/account?customer=initech");
    let credits = initech["data"]["credits"].as_array().unwrap();
    assert_eq!(credits.len(), 1, "{initech}");
    assert_eq!(credits[0]["grant"], "onboarding");
    assert_eq!(credits[0]["used"], used.format_fixed(2).as_str());
    assert_eq!(
        credits[0]["balance"],
        (Amount::parse("5000").unwrap() - used)
            .format_fixed(2)
            .as_str()
    );
    assert_eq!(credits[0]["status"], "active");
    assert_eq!(
        (&credits[0]["promotional"], &credits[0]["material_right"]),
        (&serde_json::json!(false), &serde_json::json!(false)),
        "prepaid"
    );
    // Nothing drifts in the demo; every check the reconciliation made is counted.
    let (_, exec) = d.get("/api/exec");
    let r = &exec["data"]["reconciliation"];
    assert_eq!(r["drifting"], 0, "{r}");
    assert_eq!(
        r["lines"].as_u64().unwrap() as usize,
        read_table(&out, "reconciliation").unwrap().len()
    );
    // The forecast card: per month, the two streams as the forecast table sums them.
    let months = exec["data"]["forecast"].as_array().unwrap();
    assert!(!months.is_empty(), "{exec}");
    let rows = read_table(&out, "forecast").unwrap();
    for m in months {
        let total: Amount = rows
            .iter()
            .filter(|r| r["month"] == m["month"].as_str().unwrap())
            .map(|r| Amount::parse(&r["amount"]).unwrap())
            .sum();
        let rounded = total.round_to(2, meterflow_schemas::money::Rounding::HalfEven);
        assert_eq!(m["total"], rounded.format_fixed(2).as_str(), "{m}");
    }
    // The revenue recognition card: per period, the schedule's signed rows netted; the contract
    // liability each period leaves is every `deferred` up to it, and after the last period it is
    // what the schedule defers in all (initech's prepaid credit not yet used).
    let periods = exec["data"]["recognition"].as_array().unwrap();
    assert!(periods.len() >= 2, "{exec}");
    let schedule = read_table(&out, "revenue_schedule").unwrap();
    let net = |period: Option<&str>, column: &str| -> Amount {
        schedule
            .iter()
            .filter(|r| period.is_none_or(|p| r["period"].as_str() <= p))
            .map(|r| {
                let x = Amount::parse(&r[column]).unwrap();
                if r["sign"] == "-1" {
                    -x
                } else {
                    x
                }
            })
            .sum()
    };
    let cents = |a: Amount| {
        a.round_to(2, meterflow_schemas::money::Rounding::HalfEven)
            .format_fixed(2)
    };
    for p in periods {
        let period = p["period"].as_str().unwrap();
        let only = |column| {
            net(Some(period), column) - {
                let before: Vec<&str> = periods
                    .iter()
                    .map(|q| q["period"].as_str().unwrap())
                    .filter(|q| *q < period)
                    .collect();
                before.last().map_or(Amount::ZERO, |b| net(Some(b), column))
            }
        };
        assert_eq!(p["currency"], "USD", "{p}");
        assert_eq!(p["recognised"], cents(only("recognised")).as_str(), "{p}");
        assert_eq!(p["billed"], cents(only("billed")).as_str(), "{p}");
        assert_eq!(
            p["liability"],
            cents(net(Some(period), "deferred")).as_str(),
            "{p}"
        );
        assert_eq!(
            p["asset"],
            cents(net(Some(period), "unbilled")).as_str(),
            "{p}"
        );
        assert_eq!(p["balances"], true, "{p}");
    }
    // The account's revenue schedule: initech's rows of October, netted, as the table holds them.
    let (_, october) = d.get("/api/account?customer=initech&period=2026-10");
    let shown = october["data"]["revenue"].as_array().unwrap();
    let mut expected: BTreeMap<(String, String, String), [Amount; 4]> = BTreeMap::new();
    for r in schedule
        .iter()
        .filter(|r| r["customer_id"] == "initech" && r["period"] == "2026-10")
    {
        let e = expected
            .entry((
                r["contract_id"].clone(),
                r["obligation"].clone(),
                r["service_period"].clone(),
            ))
            .or_default();
        for (i, column) in ["billed", "recognised", "deferred", "unbilled"]
            .iter()
            .enumerate()
        {
            let x = Amount::parse(&r[*column]).unwrap();
            e[i] += if r["sign"] == "-1" { -x } else { x };
        }
    }
    expected.retain(|_, a| a.iter().any(|x| *x != Amount::ZERO));
    assert!(
        shown.iter().any(|r| r["obligation"] == "prepaid credit"),
        "initech's credit pays October: {october}"
    );
    assert_eq!(shown.len(), expected.len(), "{october}");
    for r in shown {
        let key = (
            r["contract"].as_str().unwrap().to_string(),
            r["obligation"].as_str().unwrap().to_string(),
            r["service_period"].as_str().unwrap().to_string(),
        );
        assert_eq!(r["billed"], cents(expected[&key][0]).as_str(), "{r}");
        assert_eq!(r["recognised"], cents(expected[&key][1]).as_str(), "{r}");
        assert_eq!(r["deferred"], cents(expected[&key][2]).as_str(), "{r}");
        assert_eq!(r["balances"], true, "{r}");
    }
    let last = periods.last().unwrap();
    assert_eq!(last["liability"], cents(net(None, "deferred")).as_str());
    assert_ne!(
        last["liability"], "0.00",
        "initech's prepaid credit is a liability"
    );
    let shots = work.path().join("screenshots");
    browser_check(&[
        "--url",
        &d.url(),
        "--catalog",
        path_str(&catalog),
        "--out",
        path_str(&out),
        "--screenshots",
        path_str(&shots),
    ]);
    for view in ["exec", "account", "ops"] {
        let png = std::fs::read(shots.join(format!("{view}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{view}.png");
    }
}

#[test]
fn the_pages_follow_a_run_as_it_writes() {
    let work = Scratch::new("dashboard-live");
    generate(work.path(), 20_000, 20, 7, &["--terms"]);
    let (catalog, out) = (work.path().join("catalog"), work.path().join("out"));
    let d = Dashboard::start(&["-c", path_str(&catalog), "-o", path_str(&out)]);
    // Before the run there is nothing, and the answer says what to do.
    let json = d.wait_for("/api/exec", "the empty state", |code, json| {
        code == 503 && json["status"]["error"].is_string()
    });
    assert!(
        json["status"]["error"]
            .as_str()
            .unwrap()
            .contains("no run output yet"),
        "{json}"
    );
    run_ok(
        Command::new(meterflow_bin())
            .args(["run", "-q", "-i"])
            .arg(work.path().join("events.jsonl"))
            .arg("-c")
            .arg(&catalog)
            .arg("-o")
            .arg(&out),
    );
    // The finished run's invoice total, as the page sums it, equals the run's own.
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("counts.json")).unwrap()).unwrap();
    let accepted = counts["accepted"].as_u64().unwrap();
    let json = d.wait_for("/api/ops", "the run's output", |code, json| {
        code == 200 && json["data"]["accepted"].as_u64() == Some(accepted)
    });
    assert!(json["status"]["error"].is_null(), "{json}");
    assert_eq!(json["data"]["duplicates"], counts["duplicates"]);
    assert_eq!(json["data"]["rejected"], counts["rejected"]);
    assert_eq!(json["data"]["late"], counts["late"]);
}

#[test]
fn over_clickhouse_the_pages_match_the_views_and_say_when_clickhouse_is_down() {
    let work = Scratch::new("dashboard-clickhouse");
    let (demo, mut ch) = meterflow_tests::demo_in_clickhouse(work.path());
    let catalog = demo.join("catalog");
    let url = ch.url();
    meterflow_ok(&[
        "scorecard",
        "-c",
        path_str(&catalog),
        "--clickhouse-url",
        &url,
    ]);
    let d = Dashboard::start(&["-c", path_str(&catalog), "--clickhouse-url", &url]);
    let exec = d.wait_for("/api/exec", "the first read", |code, _| code == 200);
    browser_check(&[
        "--url",
        &d.url(),
        "--catalog",
        path_str(&catalog),
        "--clickhouse",
        &url,
    ]);
    // ClickHouse goes away: the last numbers stay, and the page says why they are old.
    ch.kill();
    d.wait_for("/api/status", "the outage to show", |_, json| {
        json["status"]["error"].is_string()
    });
    let (code, during) = d.get("/api/exec");
    assert_eq!(code, 200);
    assert_eq!(during["data"], exec["data"], "the last snapshot is served");
    browser_check(&["--url", &d.url(), "--expect-down"]);
    ch.resume();
    d.wait_for("/api/status", "the recovery", |_, json| {
        json["status"]["error"].is_null()
    });
    let (code, after) = d.get("/api/exec");
    assert_eq!(code, 200);
    assert_eq!(
        after["data"]["usage_revenue"],
        exec["data"]["usage_revenue"]
    );
}

#[test]
fn beyond_loopback_the_dashboard_needs_its_token() {
    let work = Scratch::new("dashboard-token");
    let demo = work.path().join("demo");
    meterflow_ok(&["demo", "--dir", path_str(&demo)]);
    let (catalog, out) = (demo.join("catalog"), demo.join("out"));
    let open = meterflow(&[
        "dashboard",
        "-c",
        path_str(&catalog),
        "-o",
        path_str(&out),
        "--listen",
        "0.0.0.0:0",
    ]);
    assert!(!open.status.success());
    assert!(
        String::from_utf8_lossy(&open.stderr).contains("--token-env"),
        "{}",
        String::from_utf8_lossy(&open.stderr)
    );
    let d = Dashboard::start_with(
        &[
            "-c",
            path_str(&catalog),
            "-o",
            path_str(&out),
            "--token-env",
            "DASHBOARD_TOKEN",
        ],
        &[("DASHBOARD_TOKEN", "s3cret-t0ken")],
    );
    let bearer = ["Authorization: Bearer s3cret-t0ken"];
    let start = Instant::now();
    while http_get_with(&d.addr, "/api/exec", &bearer).unwrap().0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(200));
    }
    for path in ["/exec", "/api/exec", "/api/events?customer=acme"] {
        let (code, body) = http_get(&d.addr, path).unwrap();
        assert_eq!(code, 401, "{path}: {body}");
        let (code, _) =
            http_get_with(&d.addr, path, &["Authorization: Bearer wrong-token!"]).unwrap();
        assert_eq!(code, 401, "{path} with a wrong token");
        let (code, _) = http_get_with(&d.addr, path, &bearer).unwrap();
        assert_eq!(code, 200, "{path} with the token");
    }
    // Once in the address, then by cookie.
    let (code, _) = http_get(&d.addr, "/exec?token=s3cret-t0ken").unwrap();
    assert_eq!(code, 200);
    let (code, _) = http_get_with(
        &d.addr,
        "/api/ops",
        &["Cookie: meterflow_token=s3cret-t0ken"],
    )
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(http_get(&d.addr, "/healthz").unwrap().0, 200);
}

#[test]
fn every_grafana_panel_queries_the_provisioned_clickhouse_with_sql() {
    // (The SQL itself runs on ClickHouse 18.16 and current ClickHouse in
    // `every_statement_meterflow_sends_and_every_documented_query_run_on_current_clickhouse`.)
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let grafana = root.join("deploy/grafana");
    let datasource =
        std::fs::read_to_string(grafana.join("provisioning/datasources/clickhouse.yaml")).unwrap();
    assert!(datasource.contains("type: grafana-clickhouse-datasource"));
    assert!(datasource.contains("uid: meterflow-clickhouse"));
    for view in ["exec", "account", "ops"] {
        let path = grafana.join(format!("dashboards/meterflow-{view}.json"));
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let panels = d["panels"].as_array().unwrap();
        assert!(panels.len() >= 5, "{view}: {} panels", panels.len());
        for p in panels {
            assert_eq!(
                p["datasource"]["uid"], "meterflow-clickhouse",
                "{view}: {p}"
            );
            let sql = p["targets"][0]["rawSql"].as_str().unwrap_or_default();
            assert!(
                sql.starts_with("SELECT") && sql.contains("meterflow."),
                "{view}: {p}"
            );
        }
    }
}
