//! The end-to-end benchmark: generates N events (default 10M: ~5% duplicates, 1% late, 0.5%
//! invalid), runs `meterflow run` with 1 and 2 workers and the naive baseline on them, checks
//! that all of them agree on the counts and the invoice total and that meterflow's signed tables
//! (invoice lines, rated usage, line usage, usage buckets, anomalies, entitlement signals) hold
//! exactly the baseline's rows once signs are summed, and prints events/s, epoch latency, peak
//! RSS and dedup bytes per key side by side.
//!
//! Two baselines run: the full one (the same tables as meterflow, which the ratios are measured
//! against) and the core one (`baseline --core`: no usage buckets, anomalies, line usage or
//! entitlement signals), the figure B1 ratios were measured against until session 21.
//!
//! usage: bench [--events N] [--dir DIR] [--out DIR] [--customers N] [--chunk-bytes N]
//!              [--checksum-rate F] [--runs N] [--no-cluster]
//!
//! Each round also runs meterflow as a cluster of two processes with one worker each, on
//! loopback (issue 22's scaling figure: against one process `-w 1` in the same run); the
//! cluster's peak RSS is process 0's. `--no-cluster` skips it.
//! `--dir` holds the generated input (cached between runs); `--out` receives the output tables,
//! by default on tmpfs (`/dev/shm`) so the numbers measure meterflow rather than the disk. Pass
//! `--out DIR` on a disk to measure with the disk in the loop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use meterflow_benchmarks::{generate_once, meterflow_binary, sibling};
use meterflow_tests::signed_tables::{same_tables, BASELINE_TABLES};
use serde_json::Value;

struct Args {
    events: u64,
    dir: PathBuf,
    out: PathBuf,
    customers: u32,
    chunk_bytes: u64,
    checksum_rate: f64,
    runs: usize,
    /// Also run a cluster of two processes with one worker each (issue 22's scaling figure).
    cluster: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let default_out = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm/meterflow-bench")
    } else {
        PathBuf::from("target/bench-out")
    };
    let mut a = Args {
        events: 10_000_000,
        dir: PathBuf::from("target/bench-data"),
        out: default_out,
        customers: 1000,
        chunk_bytes: 4 << 20,
        checksum_rate: 0.0,
        runs: 1,
        cluster: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => a.events = value()?.parse()?,
            "--dir" => a.dir = PathBuf::from(value()?),
            "--out" => a.out = PathBuf::from(value()?),
            "--customers" => a.customers = value()?.parse()?,
            "--chunk-bytes" => a.chunk_bytes = value()?.parse()?,
            "--checksum-rate" => a.checksum_rate = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--no-cluster" => a.cluster = false,
            other => bail!("unknown flag {other}; `bench --help` says what it takes"),
        }
    }
    Ok(a)
}

fn run(cmd: &mut Command) -> anyhow::Result<f64> {
    let start = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(start.elapsed().as_secs_f64())
}

fn counts(out: &Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        out.join("counts.json"),
    )?)?)
}

struct Measured {
    name: String,
    seconds: f64,
    counts: Value,
}

fn main() -> anyhow::Result<()> {
    meterflow_benchmarks::help_from_header(include_str!("bench.rs"));
    let args = parse_args()?;
    let meterflow = meterflow_binary()?;
    let baseline = sibling("baseline");

    std::fs::create_dir_all(&args.dir)?;
    let data = args.dir.join(format!(
        "{}-events-{}-customers-{}-checksums",
        args.events, args.customers, args.checksum_rate
    ));
    generate_once(
        &meterflow,
        &data,
        &[
            "--events".into(),
            args.events.to_string(),
            "--customers".into(),
            args.customers.to_string(),
            "--checksum-rate".into(),
            args.checksum_rate.to_string(),
        ],
    )?;
    let events = data.join("events.jsonl");
    let catalog = data.join("catalog");
    let config = data.join("bench.toml");
    std::fs::write(
        &config,
        format!("[input]\nchunk_bytes = {}\n", args.chunk_bytes),
    )?;
    let bytes = std::fs::metadata(&events)?.len();

    let mut results: Vec<Measured> = Vec::new();
    for round in 0..args.runs {
        // The full baseline runs last: meterflow's tables are compared with the ones it left.
        for (name, flags) in [
            (
                "core baseline (skips buckets, anomalies, entitlements)",
                &["--core"][..],
            ),
            ("baseline (1 thread, HashMaps)", &[][..]),
        ] {
            let out = args.out.join("baseline");
            let secs = run(Command::new(&baseline)
                .args([
                    events.to_str().unwrap(),
                    catalog.to_str().unwrap(),
                    out.to_str().unwrap(),
                    &args.chunk_bytes.to_string(),
                ])
                .args(flags))?;
            results.push(Measured {
                name: format!("{name} #{round}"),
                seconds: secs,
                counts: counts(&out)?,
            });
        }
        for workers in [1, 2] {
            let out = args.out.join(format!("w{workers}"));
            let secs = run(Command::new(&meterflow).env("METERFLOW_LOG", "warn").args([
                "run",
                "--input",
                events.to_str().unwrap(),
                "--catalog",
                catalog.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "-w",
                &workers.to_string(),
                "--quiet",
            ]))?;
            results.push(Measured {
                name: format!("meterflow -w {workers} #{round}"),
                seconds: secs,
                counts: counts(&out)?,
            });
        }
        if args.cluster {
            let out = args.out.join("cluster");
            let secs = run_cluster(&meterflow, &args.out, |process| {
                vec![
                    "run".into(),
                    "--input".into(),
                    events.display().to_string(),
                    "--catalog".into(),
                    catalog.display().to_string(),
                    "--out".into(),
                    out.display().to_string(),
                    "--config".into(),
                    config.display().to_string(),
                    "-w".into(),
                    "1".into(),
                    "-n".into(),
                    "2".into(),
                    "-p".into(),
                    process.to_string(),
                    "--hostfile".into(),
                    args.out.join("hosts").display().to_string(),
                    "--quiet".into(),
                ]
            })?;
            results.push(Measured {
                name: format!("{CLUSTER} #{round}"),
                seconds: secs,
                counts: counts(&out)?,
            });
        }
        // Checked after the round's timed runs: the comparison holds both tables in memory,
        // and the page reclaim after it would slow whatever runs next.
        let clustered = args.cluster.then_some(("cluster", CLUSTER));
        for (dir, name) in [("w1", "meterflow -w 1"), ("w2", "meterflow -w 2")]
            .into_iter()
            .chain(clustered)
        {
            same_tables(
                (&args.out.join("baseline"), "the baseline"),
                (&args.out.join(dir), name),
                BASELINE_TABLES,
            )
            .map_err(anyhow::Error::msg)?;
        }
    }

    // All runs must agree on what happened to every record and on the money.
    let reference = &results[0].counts;
    for r in &results[1..] {
        for k in [
            "received",
            "accepted",
            "duplicates",
            "rejected",
            "late",
            "billable",
            "invoice_total_exact",
        ] {
            anyhow::ensure!(
                r.counts[k] == reference[k],
                "{} disagrees with the baseline on {k}: {} vs {}",
                r.name,
                r.counts[k],
                reference[k]
            );
        }
    }

    let received = reference["received"].as_u64().unwrap_or(0) as f64;
    let best = |prefix: &str| {
        results
            .iter()
            .filter(|r| r.name.starts_with(prefix))
            .map(|r| r.seconds)
            .fold(f64::INFINITY, f64::min)
    };
    let baseline_secs = best("baseline");
    let core_secs = best("core baseline");
    println!(
        "\n{} records ({:.2} GB): {} accepted, {} duplicates, {} rejected, {} late; invoice total {} (all runs agree)",
        received,
        bytes as f64 / 1e9,
        reference["accepted"],
        reference["duplicates"],
        reference["rejected"],
        reference["late"],
        reference["invoice_total_exact"].as_str().unwrap_or("?")
    );
    println!("\n| run | seconds | events/s | vs baseline | vs core baseline | epoch latency p50 / p99 (ms) | peak RSS (MiB) | dedup bytes/key |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        let lat = &r.counts["epoch_latency_ms"];
        let latency = if lat.is_null() {
            "n/a (prices at end)".to_string()
        } else {
            format!(
                "{:.0} / {:.0}",
                lat["p50"].as_f64().unwrap_or(0.0),
                lat["p99"].as_f64().unwrap_or(0.0)
            )
        };
        println!(
            "| {} | {:.2} | {:.0} | {:.2}x | {:.2}x | {} | {:.0} | {:.1} |",
            r.name,
            r.seconds,
            received / r.seconds,
            baseline_secs / r.seconds,
            core_secs / r.seconds,
            latency,
            r.counts["peak_rss_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
            r.counts["dedup_bytes_per_key"].as_f64().unwrap_or(0.0)
        );
    }
    let (w1, w2) = (best("meterflow -w 1"), best("meterflow -w 2"));
    println!(
        "\nmeterflow -w 2: {:.0} events/s, {:.2}x the baseline, {:.2}x the core baseline; scaling -w 2 / -w 1: {:.2}x",
        received / w2,
        baseline_secs / w2,
        core_secs / w2,
        w1 / w2
    );
    if args.cluster {
        let c = best(CLUSTER);
        println!(
            "{CLUSTER}: {:.0} events/s, {:.2}x the baseline; scaling against one process -w 1: {:.2}x",
            received / c,
            baseline_secs / c,
            w1 / c
        );
    }
    Ok(())
}

const CLUSTER: &str = "meterflow 2 processes x 1 worker";

/// Runs a cluster of two processes on loopback (a hostfile of free ports in `dir`), each with
/// the arguments `args(process)`; the time from the first start to the last exit.
fn run_cluster(
    meterflow: &Path,
    dir: &Path,
    args: impl Fn(usize) -> Vec<String>,
) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    meterflow_tests::servers::write_hostfile(dir, 2);
    let start = Instant::now();
    let children = (0..2)
        .map(|p| {
            // Output to a file, not a pipe: nothing reads a pipe while both are watched below.
            let log = std::fs::File::create(dir.join(format!("process-{p}.log")))?;
            Command::new(meterflow)
                .env("METERFLOW_LOG", "warn")
                .args(args(p))
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start process {p} of the cluster"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Watch both: a process whose peer failed waits for it forever, as a cluster's processes
    // do, so the first failure stops the other and is reported with its own output.
    let mut running: Vec<Option<std::process::Child>> = children.into_iter().map(Some).collect();
    while running.iter().any(Option::is_some) {
        for p in 0..running.len() {
            let Some(child) = running[p].as_mut() else {
                continue;
            };
            let Some(status) = child.try_wait()? else {
                continue;
            };
            running[p] = None;
            if !status.success() {
                for mut other in running.iter_mut().filter_map(Option::take) {
                    let _ = other.kill();
                    let _ = other.wait();
                }
                let log = dir.join(format!("process-{p}.log"));
                bail!(
                    "process {p} of the cluster failed ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(start.elapsed().as_secs_f64())
}
