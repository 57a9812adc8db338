//! The soak: a steady stream with a burst far above it while ClickHouse stops answering, then
//! the same money as an uninterrupted embedded run. Everything real and on loopback: the
//! librdkafka mock broker (in this process, on a real port), ClickHouse 18.16 under a scratch
//! directory, and the release `meterflow run -w W` reading the topic and writing ClickHouse.
//!
//! The schedule (defaults: the hardening issue's): `--rate` events/s for `--seconds`, except
//! `--burst-seconds` from `--burst-at` on, when the producer sends `--burst-factor` times as
//! fast; `--pause-after` seconds into the burst ClickHouse is stopped with SIGSTOP for
//! `--pause-seconds` (an insert in flight hangs, none fails: the worst case for a sink), then
//! continued. Every second the harness samples meterflow's RSS, the records it has read
//! (`/metrics`), the records ClickHouse holds as committed (`sink_progress`), the epochs in
//! flight and the dedup keys, and the records produced. After the producer is done, meterflow
//! drains the topic and exits (`kafka.exit_when_idle`).
//!
//! Checks, each failing the run: meterflow exits cleanly; the tables
//! in ClickHouse equal those of `meterflow run` over the same file embedded (records accepted,
//! rejected by reason and duplicate, every invoice line's money, shadow lines, entitlement
//! signals, buckets, anomalies: `meterflow_tests::oracle::assert_clickhouse_equals`).
//!
//! Writes `samples.csv` and `soak.png` (RSS, and lag read and committed, over time; drawn by
//! `benchmarks/plot_soak.py` with matplotlib, installed with pip when missing) under `--report`,
//! and prints a summary for RESULTS.md.
//!
//! usage: soak [--rate R] [--seconds S] [--burst-at S] [--burst-seconds S] [--burst-factor F]
//!             [--pause-after S] [--pause-seconds S] [--partitions P] [--customers N]
//!             [--batch N] [--workers W] [--dir DIR] [--report DIR] [--extra 'TOML']
//!        soak --check-only <ClickHouse HTTP port> <oracle dir>
//!
//! Keep `TMPDIR` on disk: ClickHouse's data and the embedded run's tables take ~10 GB for the
//! default schedule, and the comparison itself holds the oracle's signed tables in memory.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use meterflow_benchmarks::{generate_once, meterflow_binary};
use meterflow_tests::kafka::{Batching, UsageProducer};
use meterflow_tests::oracle::assert_clickhouse_equals;
use meterflow_tests::servers::{free_port, http_get, http_post, ClickHouseServer};
use rdkafka::mocking::MockCluster;

const TOPIC: &str = "usage";

struct Args {
    rate: u64,
    seconds: u64,
    burst_at: u64,
    burst_seconds: u64,
    burst_factor: u64,
    pause_after: u64,
    pause_seconds: u64,
    partitions: u32,
    customers: u32,
    batch: usize,
    workers: usize,
    dir: PathBuf,
    report: PathBuf,
    extra: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        rate: 20_000,
        seconds: 600,
        burst_at: 240,
        burst_seconds: 60,
        burst_factor: 10,
        pause_after: 15,
        pause_seconds: 30,
        partitions: 512,
        customers: 1000,
        batch: 1,
        workers: 2,
        dir: PathBuf::from("target/bench-data"),
        report: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/soak")),
        extra: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rate" => a.rate = value()?.parse()?,
            "--seconds" => a.seconds = value()?.parse()?,
            "--burst-at" => a.burst_at = value()?.parse()?,
            "--burst-seconds" => a.burst_seconds = value()?.parse()?,
            "--burst-factor" => a.burst_factor = value()?.parse()?,
            "--pause-after" => a.pause_after = value()?.parse()?,
            "--pause-seconds" => a.pause_seconds = value()?.parse()?,
            "--partitions" => a.partitions = value()?.parse()?,
            "--customers" => a.customers = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--workers" => a.workers = value()?.parse()?,
            "--dir" => a.dir = PathBuf::from(value()?),
            "--report" => a.report = PathBuf::from(value()?),
            "--extra" => a.extra = value()?.replace("\\n", "\n"),
            other => bail!("unknown flag {other}; `soak --help` says what it takes"),
        }
    }
    ensure!(
        a.burst_at + a.burst_seconds <= a.seconds,
        "the burst (--burst-at + --burst-seconds) must end by --seconds"
    );
    ensure!(
        a.burst_at + a.pause_after + a.pause_seconds <= a.seconds,
        "the pause must end before the producer does"
    );
    Ok(a)
}

impl Args {
    /// Events per second the producer offers `t` seconds into the run.
    fn rate_at(&self, t: f64) -> u64 {
        let burst = self.burst_at as f64..(self.burst_at + self.burst_seconds) as f64;
        if burst.contains(&t) {
            self.rate * self.burst_factor
        } else {
            self.rate
        }
    }

    fn events(&self) -> u64 {
        self.rate * (self.seconds - self.burst_seconds)
            + self.rate * self.burst_factor * self.burst_seconds
    }
}

/// One sample of the run, a second apart.
#[derive(Clone, Default)]
struct Sample {
    t: f64,
    produced: u64,
    read: u64,
    committed: u64,
    rss_mib: f64,
    clickhouse_rss_mib: f64,
    in_flight: f64,
    dedup_keys: f64,
    paused: bool,
}

/// Resident memory of process `pid` in MiB (0 once it is gone).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The value of an unlabelled series in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// What the harness's threads share while the run goes on.
#[derive(Default)]
struct Shared {
    produced: AtomicU64,
    committed: AtomicU64,
    paused: AtomicBool,
    stop: AtomicBool,
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill {sig} {pid} failed");
    Ok(())
}

/// `soak --check-only <ClickHouse HTTP port> <oracle dir>`: compares what a soak left in a
/// ClickHouse still running with its embedded run's output, for a harness that stopped before
/// its own comparison (e.g. killed for memory; the comparison reads the oracle's tables).
fn check_only(port: &str, oracle: &str) -> anyhow::Result<()> {
    let ch = ClickHouseServer::attach(std::path::Path::new("."), port.parse()?);
    let counts = assert_clickhouse_equals(&ch, std::path::Path::new(oracle), "soak");
    let total = ch
        .query("SELECT toString(sum(amount * sign)) FROM meterflow.invoice_lines")
        .map_err(anyhow::Error::msg)?;
    println!(
        "ClickHouse = embedded run: {} received, {} accepted, {} duplicates, {} rejected; invoice total {}",
        counts["received"], counts["accepted"], counts["duplicates"], counts["rejected"], total.trim()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    meterflow_benchmarks::help_from_header(include_str!("soak.rs"));
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--check-only") && argv.len() == 4 {
        return check_only(&argv[2], &argv[3]);
    }
    let args = parse_args()?;
    let meterflow = meterflow_binary()?;
    let events = args.events();
    let span = format!("{}s", args.seconds);
    let data = args.dir.join(format!(
        "soak-{events}-events-{}-customers-span-{span}-uniform",
        args.customers
    ));
    let flags: Vec<String> = [
        "--events",
        &events.to_string(),
        "--customers",
        &args.customers.to_string(),
        "--span",
        &span,
        // Customers uniform: the mock broker keeps ~5 MB per partition, and a customer's
        // records share one partition, so no partition may hold much of the backlog.
        "--skew",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    generate_once(&meterflow, &data, &flags)?;
    let events_file = data.join("events.jsonl");
    let catalog = data.join("catalog");

    let work = std::env::temp_dir().join(format!("meterflow-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&args.report)?;
    let ch = ClickHouseServer::start(&work);
    let ch_pid = ch.pid().context("ClickHouse runs")?;
    let cluster = MockCluster::new(1)?;
    cluster.create_topic(TOPIC, args.partitions as i32, 1)?;
    let brokers = cluster.bootstrap_servers();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let config = work.join("meterflow.toml");
    std::fs::write(
        &config,
        format!(
            "clickhouse.url = \"{}\"\nkafka.brokers = \"{brokers}\"\nkafka.topics = [\"{TOPIC}\"]\n\
             kafka.exit_when_idle = \"10s\"\n{}\n",
            ch.url(),
            args.extra
        ),
    )?;
    let migrate = Command::new(&meterflow)
        .args(["migrate", "--config", config.to_str().unwrap()])
        .output()?;
    ensure!(
        migrate.status.success(),
        "meterflow migrate failed: {}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    eprintln!(
        "{events} events: {}/s for {} s, ×{} for {} s from {} s; ClickHouse stopped {} s into \
         the burst for {} s; broker {brokers} ({} partitions), meterflow -w {}",
        args.rate,
        args.seconds,
        args.burst_factor,
        args.burst_seconds,
        args.burst_at,
        args.pause_after,
        args.pause_seconds,
        args.partitions,
        args.workers
    );
    let mut child = Command::new(&meterflow)
        .args(["run", "--config", config.to_str().unwrap(), "--catalog"])
        .arg(&catalog)
        .arg("--out")
        .arg(work.join("out"))
        .args([
            "-w",
            &args.workers.to_string(),
            "-q",
            "--metrics-addr",
            &metrics_addr,
        ])
        .env("METERFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("meterflow.log"))?)
        .spawn()?;
    let pid = child.id();

    let shared = Arc::new(Shared::default());
    let begin = Instant::now();
    let committed_poller = {
        let (shared, port) = (shared.clone(), ch.http_port);
        std::thread::spawn(move || {
            let sql = "SELECT max(visitParamExtractUInt(counts, 'received')) FROM meterflow.sink_progress";
            while !shared.stop.load(Ordering::Relaxed) {
                // While ClickHouse is stopped the query waits; the last answer stands.
                if let Some(n) = http_post(port, sql)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    shared.committed.store(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler = {
        let (shared, samples, addr) = (shared.clone(), samples.clone(), metrics_addr.clone());
        std::thread::spawn(move || {
            let mut last = Sample::default();
            let mut k = 0u64;
            while !shared.stop.load(Ordering::Relaxed) {
                k += 1;
                if let Some(wait) =
                    (begin + Duration::from_secs(k)).checked_duration_since(Instant::now())
                {
                    std::thread::sleep(wait);
                }
                let page = http_get(&addr, "/metrics")
                    .map(|(_, body)| body)
                    .unwrap_or_default();
                let s = Sample {
                    t: begin.elapsed().as_secs_f64(),
                    produced: shared.produced.load(Ordering::Relaxed),
                    read: metric(&page, "meterflow_records_received_total")
                        .map_or(last.read, |v| v as u64),
                    committed: shared.committed.load(Ordering::Relaxed),
                    rss_mib: rss_mib(pid),
                    clickhouse_rss_mib: rss_mib(ch_pid),
                    in_flight: metric(&page, "meterflow_epochs_in_flight")
                        .unwrap_or(last.in_flight),
                    dedup_keys: metric(&page, "meterflow_dedup_keys").unwrap_or(last.dedup_keys),
                    paused: shared.paused.load(Ordering::Relaxed),
                };
                samples.lock().unwrap().push(s.clone());
                last = s;
            }
        })
    };
    let pauser = {
        let shared = shared.clone();
        let (at, long) = (args.burst_at + args.pause_after, args.pause_seconds);
        std::thread::spawn(move || -> anyhow::Result<()> {
            std::thread::sleep(
                (begin + Duration::from_secs(at)).saturating_duration_since(Instant::now()),
            );
            signal(ch_pid, "-STOP")?;
            shared.paused.store(true, Ordering::Relaxed);
            std::thread::sleep(Duration::from_secs(long));
            signal(ch_pid, "-CONT")?;
            shared.paused.store(false, Ordering::Relaxed);
            Ok(())
        })
    };

    // The producer: 10 ms slices at the scheduled rate, read from the file as they go.
    let batching = match args.batch {
        0 | 1 => Batching { every: 0, size: 1 },
        n => Batching { every: 1, size: n },
    };
    let mut producer = UsageProducer::with_settings(
        &brokers,
        TOPIC,
        args.partitions,
        batching,
        &[("compression.type", "lz4")],
    );
    let mut reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&events_file)?);
    let mut lines: Vec<String> = Vec::new();
    let mut slice = 0u64;
    let mut burst_sent: (Option<Instant>, u64, Option<Instant>) = (None, 0, None);
    'produce: loop {
        let t = slice as f64 / 100.0;
        if t >= args.seconds as f64 {
            break;
        }
        let due = begin + Duration::from_millis(10 * slice);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let n = (args.rate_at(t) / 100).max(1) as usize;
        lines.resize_with(n, String::new);
        let mut got = 0;
        for line in lines.iter_mut() {
            line.clear();
            if reader.read_line(line)? == 0 {
                break;
            }
            line.truncate(line.trim_end().len());
            got += 1;
        }
        let refs: Vec<&str> = lines[..got].iter().map(String::as_str).collect();
        producer.send_lines(&refs);
        shared.produced.fetch_add(got as u64, Ordering::Relaxed);
        if args.rate_at(t) > args.rate {
            burst_sent.0.get_or_insert_with(Instant::now);
            burst_sent.1 += got as u64;
            burst_sent.2 = Some(Instant::now());
        }
        if got < n {
            break 'produce;
        }
        slice += 1;
    }
    producer.flush();
    let produced = shared.produced.load(Ordering::Relaxed);
    let produce_s = begin.elapsed().as_secs_f64();
    drop(producer);
    eprintln!("produced {produced} records in {produce_s:.0} s; meterflow drains the topic");

    let deadline = Instant::now() + Duration::from_secs(3600);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("meterflow did not finish within an hour of the last record produced");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let drained_s = begin.elapsed().as_secs_f64();
    pauser.join().expect("pauser")?;
    // One more committed count, then stop the threads.
    std::thread::sleep(Duration::from_millis(500));
    shared.stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    committed_poller.join().expect("poller");
    ensure!(
        status.success(),
        "meterflow failed ({status}): see {}",
        work.join("meterflow.log").display()
    );

    let samples = samples.lock().unwrap().clone();
    let csv = args.report.join("samples.csv");
    let mut text = String::from("t,produced,read,committed,rss_mib,clickhouse_rss_mib,epochs_in_flight,dedup_keys,clickhouse_stopped\n");
    for s in &samples {
        text.push_str(&format!(
            "{:.1},{},{},{},{:.1},{:.1},{},{},{}\n",
            s.t,
            s.produced,
            s.read,
            s.committed,
            s.rss_mib,
            s.clickhouse_rss_mib,
            s.in_flight,
            s.dedup_keys,
            s.paused as u8
        ));
    }
    std::fs::write(&csv, text)?;
    let png = args.report.join("soak.png");
    let plot = concat!(env!("CARGO_MANIFEST_DIR"), "/plot_soak.py");
    let title = format!(
        "{}/s for {} s, ×{} for {} s from {} s, ClickHouse SIGSTOPped for {} s; meterflow -w {}",
        args.rate,
        args.seconds,
        args.burst_factor,
        args.burst_seconds,
        args.burst_at,
        args.pause_seconds,
        args.workers
    );
    let plotted = Command::new("python3")
        .args([plot, csv.to_str().unwrap(), png.to_str().unwrap(), &title])
        .status()?;
    ensure!(plotted.success(), "plotting {} failed", csv.display());
    eprintln!("the oracle: meterflow run over the same file, embedded");
    let oracle = work.join("oracle");
    let out = Command::new(&meterflow)
        .args(["run", "-i"])
        .arg(&events_file)
        .arg("-c")
        .arg(&catalog)
        .arg("-o")
        .arg(&oracle)
        .args(["-w", &args.workers.to_string(), "-q"])
        .output()?;
    ensure!(
        out.status.success(),
        "the embedded run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = assert_clickhouse_equals(&ch, &oracle, "soak");
    let total = ch
        .query("SELECT toString(sum(amount * sign)) FROM meterflow.invoice_lines")
        .map_err(anyhow::Error::msg)?;
    let run_counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("out/counts.json"))?)?;

    summarize(
        &args,
        &samples,
        &counts,
        &run_counts,
        &total,
        produced,
        produce_s,
        drained_s,
        burst_sent,
    );
    println!("\nsamples: {}\ngraph: {}", csv.display(), png.display());
    drop(ch);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &Args,
    samples: &[Sample],
    counts: &serde_json::Value,
    run_counts: &serde_json::Value,
    total: &str,
    produced: u64,
    produce_s: f64,
    drained_s: f64,
    burst: (Option<Instant>, u64, Option<Instant>),
) {
    let burst_start = args.burst_at as f64;
    let burst_end = (args.burst_at + args.burst_seconds) as f64;
    let before: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t < burst_start && s.t > 10.0)
        .collect();
    let max = |it: &mut dyn Iterator<Item = f64>| it.fold(0.0f64, f64::max);
    let steady_rss = max(&mut before.iter().map(|s| s.rss_mib));
    let peak_rss = max(&mut samples.iter().map(|s| s.rss_mib));
    let peak_read_lag = samples
        .iter()
        .map(|s| s.produced.saturating_sub(s.read))
        .max()
        .unwrap_or(0);
    let peak_commit_lag = samples
        .iter()
        .map(|s| s.produced.saturating_sub(s.committed))
        .max()
        .unwrap_or(0);
    let steady_commit_lag = before
        .iter()
        .map(|s| s.produced.saturating_sub(s.committed))
        .max()
        .unwrap_or(0);
    // While ClickHouse was stopped: what meterflow read, and how its memory moved.
    let paused: Vec<&Sample> = samples.iter().filter(|s| s.paused).collect();
    let (read_while_paused, rss_growth, lag_growth) = match (paused.first(), paused.last()) {
        (Some(a), Some(b)) => (
            b.read.saturating_sub(a.read),
            b.rss_mib - a.rss_mib,
            b.produced.saturating_sub(b.read) as i64 - a.produced.saturating_sub(a.read) as i64,
        ),
        _ => (0, 0.0, 0),
    };
    // Caught up: the first sample after the burst with less than a second of steady traffic
    // not yet committed.
    let caught_up = samples
        .iter()
        .find(|s| s.t > burst_end && s.produced.saturating_sub(s.committed) <= args.rate)
        .map(|s| s.t - burst_end);
    let burst_rate = match burst {
        (Some(a), n, Some(b)) if b > a => n as f64 / (b - a).as_secs_f64().max(0.01),
        _ => f64::NAN,
    };
    let last = samples
        .iter()
        .rev()
        .find(|s| s.rss_mib > 0.0)
        .cloned()
        .unwrap_or_default();
    println!(
        "\n## soak: {produced} records, meterflow -w {}, {} partitions\n",
        args.workers, args.partitions
    );
    println!("| | |\n|---|---:|");
    println!("| produced | {produced} records in {produce_s:.0} s (burst offered {burst_rate:.0} records/s) |");
    println!("| meterflow done (drained, exited) | {drained_s:.0} s after the start |");
    println!(
        "| caught up after the burst (uncommitted ≤ 1 s of steady traffic) | {} |",
        caught_up.map_or("never".into(), |s| format!(
            "{s:.0} s after the burst ended"
        ))
    );
    println!("| peak RSS before the burst | {steady_rss:.0} MiB |");
    println!("| peak RSS over the run | {peak_rss:.0} MiB |");
    println!("| RSS while ClickHouse was stopped | {rss_growth:+.0} MiB, while the unread backlog grew by {lag_growth} records and meterflow read {read_while_paused} |");
    println!("| peak records produced, not yet read | {peak_read_lag} |");
    println!("| peak records produced, not yet committed | {peak_commit_lag} (before the burst: {steady_commit_lag}) |");
    println!(
        "| dedup keys at the end | {:.0} ({:.0} B of RSS per key at the end) |",
        last.dedup_keys,
        if last.dedup_keys > 0.0 {
            last.rss_mib * 1048576.0 / last.dedup_keys
        } else {
            f64::NAN
        }
    );
    println!(
        "| meterflow's own peak RSS (counts.json) | {:.0} MiB |",
        run_counts["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
    );
    println!(
        "| ClickHouse = embedded run | yes: {} received, {} accepted, {} duplicates, {} rejected; invoice total {} |",
        counts["received"], counts["accepted"], counts["duplicates"], counts["rejected"], total.trim()
    );
}
