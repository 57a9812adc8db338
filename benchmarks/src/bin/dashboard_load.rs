//! How fast `meterflow dashboard` answers over a large ClickHouse database.
//!
//! Generates `--events` events (`meterflow gen`, cached under `--dir`), runs them into ClickHouse
//! (the Debian server, 18.16, started under `$TMPDIR`), records a scorecard, starts the
//! dashboard against it, and measures:
//!
//! - each view's load as a browser does it: the page, its script, style and charting library,
//!   the pickers' `/api/status` and the view's JSON, one after another (`--loads` times each);
//! - the baseline, in the same run: the same view computed by reading ClickHouse at request
//!   time, which is what one snapshot read costs (the dashboard does it in the background,
//!   every `--refresh`);
//! - the dashboard's peak memory.
//!
//! usage: dashboard_load [--events N] [--customers N] [--loads N] [--dir DIR]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use meterflow_benchmarks::{generate_once, meterflow_binary};
use meterflow_tests::servers::{http_get, ClickHouseServer};
use meterflow_tests::start_dashboard;

struct Args {
    events: u64,
    customers: u32,
    loads: usize,
    dir: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        events: 10_000_000,
        customers: 1000,
        loads: 50,
        dir: PathBuf::from("target/bench-data"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--events" => a.events = value.parse()?,
            "--customers" => a.customers = value.parse()?,
            "--loads" => a.loads = value.parse()?,
            "--dir" => a.dir = value.into(),
            other => {
                anyhow::bail!("unknown flag {other}; `dashboard_load --help` says what it takes")
            }
        }
    }
    Ok(a)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    meterflow_benchmarks::help_from_header(include_str!("dashboard_load.rs"));
    let a = args()?;
    let meterflow = meterflow_binary()?;
    let data = a.dir.join(format!("dash-{}-{}", a.events, a.customers));
    generate_once(
        &meterflow,
        &data,
        &[
            "--events".into(),
            a.events.to_string(),
            "--customers".into(),
            a.customers.to_string(),
            "--terms".into(),
        ],
    )?;
    let work = std::env::temp_dir().join(format!("meterflow-dash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let ch = ClickHouseServer::start(&work);
    let url = ch.url();
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new(&meterflow)
            .args(args)
            .env("METERFLOW_LOG", "warn")
            .output()?;
        ensure!(
            out.status.success(),
            "meterflow {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let catalog = data.join("catalog");
    let catalog = catalog.to_str().unwrap();
    run(&["migrate", "--clickhouse-url", &url])?;
    let started = Instant::now();
    run(&[
        "run",
        "-q",
        "-w",
        "2",
        "-i",
        data.join("events.jsonl").to_str().unwrap(),
        "-c",
        catalog,
        "--clickhouse-url",
        &url,
    ])?;
    eprintln!(
        "{} events into ClickHouse in {:.1}s",
        a.events,
        started.elapsed().as_secs_f64()
    );
    run(&["scorecard", "-c", catalog, "--clickhouse-url", &url])?;
    let rows = ch
        .query("SELECT count() FROM meterflow.usage_events")
        .map_err(anyhow::Error::msg)?;

    let started = Instant::now();
    let dashboard = start_dashboard(
        &meterflow,
        &["-c", catalog, "--clickhouse-url", &url, "--refresh", "1h"],
        &[],
    );
    let addr = dashboard.addr.clone();
    // The first snapshot: every view's numbers read from ClickHouse at once.
    while http_get(&addr, "/api/exec").map_err(anyhow::Error::msg)?.0 != 200 {
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "no snapshot in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let snapshot = started.elapsed();
    let customer = {
        let (_, body) = http_get(&addr, "/api/status").map_err(anyhow::Error::msg)?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        v["data"]["customers"][0]["id"]
            .as_str()
            .context("a customer")?
            .to_string()
    };
    let account = format!("/api/account?customer={customer}");
    let views: [(&str, &str, &str); 3] = [
        ("exec", "/exec", "/api/exec"),
        ("account", "/account", &account),
        ("ops", "/ops", "/api/ops"),
    ];
    println!(
        "\n{} events ({} rows in usage_events), {} customers; first snapshot read in {} ms\n",
        a.events,
        rows.trim(),
        a.customers,
        ms(snapshot)
    );
    println!("| view | loads | p50 (ms) | p99 (ms) | max (ms) | JSON bytes | baseline: read at request time (ms) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, page, api) in views {
        let mut times = Vec::with_capacity(a.loads);
        let mut bytes = 0;
        for _ in 0..a.loads {
            let t = Instant::now();
            for path in [
                page,
                "/assets/dashboard.js",
                "/assets/dashboard.css",
                "/assets/uPlot.iife.min.js",
                "/assets/uPlot.min.css",
                "/api/status",
                api,
            ] {
                let (code, body) = http_get(&addr, path).map_err(anyhow::Error::msg)?;
                ensure!(code == 200, "{path}: {code} {body}");
                if path == api {
                    bytes = body.len();
                }
            }
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "| {name} | {} | {} | {} | {} | {bytes} | {} |",
            a.loads,
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(*times.last().unwrap()),
            ms(snapshot),
        );
    }
    let rss = std::fs::read_to_string(format!("/proc/{}/status", dashboard.child.id()))?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        .unwrap_or_default();
    println!("\ndashboard peak RSS: {rss}");
    drop(dashboard);
    drop(ch);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
