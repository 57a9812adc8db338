//! The end-to-end benchmark on one machine: producer → Kafka-protocol broker → `meterflow run`
//! → ClickHouse, everything real and on loopback. The broker is librdkafka's mock cluster (it
//! speaks the Kafka protocol on a real port; it runs inside this process), ClickHouse is the
//! Debian server (18.16) started under a scratch directory, and meterflow is the release binary
//! in a process of its own, reading the topic and writing every table to ClickHouse.
//!
//! 1. Throughput, for one event per message and for batched messages (NDJSON, `--batch`
//!    events each): the topic is filled first, then meterflow drains it. Events/s is records
//!    durably committed in ClickHouse (`sink_progress`) divided by the time from meterflow's
//!    start to the commit that covers the last one; the sustained rate is the records committed
//!    between the commits that first cover 10% and 90% of them, over the time between the two
//!    (start-up and the last flush left out; not reported when fewer than five commits or less
//!    than half the run lie between them). The baseline, measured in the same run, is
//!    a bare rdkafka consumer reading the same topic from the same broker without doing anything
//!    with the messages: the ceiling the broker and client allow on this machine.
//! 2. Latency at a fixed offered load (`--rate` events/s for `--seconds`): the producer records
//!    when it sent each 10 ms slice of events; a poller reads the committed record count every
//!    10 ms. A slice's latency is from its send to the first commit whose count covers it. A
//!    commit comes after every row derived from those epochs (invoice lines included) is in
//!    ClickHouse, so this is event produced → invoice line durable and visible.
//!
//! usage: e2e [--events N] [--partitions P] [--batch N] [--rate R] [--seconds S]
//!            [--workers W] [--dir DIR] [--customers N] [--span D] [--extra 'TOML']
//!            [--latency-only] [--scaling]
//!
//! `--scaling` runs only issue 22's scaling figure: meterflow with one worker, then two, on the
//! same topics (one event per message, and batched), ClickHouse in the loop, and prints `-w 2`
//! against `-w 1` for each.
//!
//! `--span` is the event time the generated stream spans (`meterflow gen --span`; 60 days if
//! not given). The default is a backfill: 60 days of usage replayed in seconds, so most
//! customer-SKU-hours hold one event or two and every event touches an hour bucket of its own.
//! A stream sent live spans about as much event time as it takes to send: `--span 10s` for 1M
//! events at the targeted rates.
//!
//! The `-files` runs read the same topics into CSV files under the work directory instead of
//! ClickHouse (ClickHouse stays up, idle): what the rest of the box gives without it. They have
//! no commits to watch, so their time is the process's, less its idle wait (to ~0.1 s), and
//! without the `migrate` the ClickHouse runs' time includes.
//!
//! ClickHouse's data directory is under `$TMPDIR`. On a disk where many files were created and
//! deleted, creating ClickHouse's part files can itself become slow (ext4's inode allocator), so
//! `TMPDIR=/dev/shm` takes the disk out of the measurement.
//!
//! `--extra` adds dotted keys to meterflow's config, e.g.
//! `--extra 'output.price_every_epochs = 2\nclickhouse.flush_interval = "200ms"'`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use meterflow_benchmarks::{generate_once, meterflow_binary};
use meterflow_tests::kafka::{Batching, UsageProducer};
use meterflow_tests::servers::{http_post, ClickHouseServer};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

struct Args {
    events: u64,
    partitions: u32,
    batch: usize,
    rate: u64,
    seconds: u64,
    workers: usize,
    customers: u32,
    /// Event time the generated stream spans (`gen --span`); `None`: gen's 60 days.
    span: Option<String>,
    dir: PathBuf,
    /// Dotted TOML keys added to meterflow's config.
    extra: String,
    latency_only: bool,
    /// Only the scaling runs: one and two workers on the same topics, ClickHouse in the loop.
    scaling: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        events: 1_000_000,
        partitions: 64,
        batch: 100,
        rate: 50_000,
        seconds: 20,
        workers: 2,
        customers: 1000,
        span: None,
        dir: PathBuf::from("target/bench-data"),
        extra: String::new(),
        latency_only: false,
        scaling: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => a.events = value()?.parse()?,
            "--partitions" => a.partitions = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--rate" => a.rate = value()?.parse()?,
            "--seconds" => a.seconds = value()?.parse()?,
            "--workers" => a.workers = value()?.parse()?,
            "--customers" => a.customers = value()?.parse()?,
            "--span" => a.span = Some(value()?),
            "--dir" => a.dir = PathBuf::from(value()?),
            "--latency-only" => a.latency_only = true,
            "--scaling" => a.scaling = true,
            "--extra" => a.extra = value()?.replace("\\n", "\n"),
            other => bail!("unknown flag {other}; `e2e --help` says what it takes"),
        }
    }
    Ok(a)
}

fn check(out: std::process::Output, what: &str) -> anyhow::Result<String> {
    ensure!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Records covered by the latest commit in `db` (ClickHouse's HTTP port `port`).
fn committed(port: u16, db: &str) -> u64 {
    http_post(
        port,
        &format!("SELECT max(visitParamExtractUInt(counts, 'received')) FROM {db}.sink_progress"),
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sink {
    ClickHouse,
    Files,
}

/// How long meterflow waits on an idle topic before it exits, in the throughput runs.
const IDLE_S: f64 = 2.0;

#[derive(Clone)]
struct Env<'a> {
    meterflow: &'a Path,
    work: &'a Path,
    catalog: &'a Path,
    brokers: String,
    ch: &'a ClickHouseServer,
    workers: usize,
    partitions: u32,
    extra: String,
}

impl Env<'_> {
    /// Migrates a fresh database and starts meterflow on `topic`, writing to ClickHouse or, with
    /// `Sink::Files`, only to CSV files under the work directory (ClickHouse left out).
    fn start(
        &self,
        name: &str,
        topic: &str,
        idle: &str,
        sink: Sink,
    ) -> anyhow::Result<(Child, String)> {
        let db = format!("bench_{name}");
        let config = self.work.join(format!("{name}.toml"));
        let clickhouse = match sink {
            Sink::ClickHouse => format!(
                "clickhouse.url = \"{}\"\nclickhouse.database = \"{db}\"\n",
                self.ch.url()
            ),
            Sink::Files => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "{clickhouse}kafka.brokers = \"{}\"\n\
                 kafka.topics = [\"{topic}\"]\nkafka.exit_when_idle = \"{idle}\"\n{}\n",
                self.brokers, self.extra
            ),
        )?;
        if sink == Sink::ClickHouse {
            check(
                Command::new(self.meterflow)
                    .args(["migrate", "--config", config.to_str().unwrap()])
                    .output()?,
                "meterflow migrate",
            )?;
        }
        let log = std::fs::File::create(self.work.join(format!("{name}.log")))?;
        let child = Command::new(self.meterflow)
            .args([
                "run",
                "--config",
                config.to_str().unwrap(),
                "--catalog",
                self.catalog.to_str().unwrap(),
                "--out",
                self.work.join(format!("{name}-out")).to_str().unwrap(),
                "-w",
                &self.workers.to_string(),
                "-q",
            ])
            .env(
                "METERFLOW_LOG",
                std::env::var("E2E_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok((child, db))
    }

    fn peak_rss_mib(&self, name: &str) -> anyhow::Result<f64> {
        let counts: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            self.work.join(format!("{name}-out/counts.json")),
        )?)?;
        ensure!(
            counts["balanced"] == true,
            "{name}: accounting does not balance"
        );
        Ok(counts["peak_rss_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64)
    }
}

/// A bare consumer reading every partition of `topic` to its end: messages and bytes per second.
/// Fails when the broker stops handing out messages before all `messages` were read (the mock
/// broker silently drops what a partition cannot hold).
fn bare_consume(
    brokers: &str,
    topic: &str,
    partitions: u32,
    messages: usize,
) -> anyhow::Result<(f64, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-baseline")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let start = Instant::now();
    let (mut n, mut bytes, mut last) = (0usize, 0u64, Instant::now());
    while n < messages {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            n += 1;
            bytes += m.payload().map_or(0, |p| p.len() as u64);
            last = Instant::now();
        }
        if last.elapsed() > Duration::from_secs(10) {
            bail!(
                "the broker handed out {n} of the {messages} messages produced to {topic}, then \
                 nothing for 10 s; the mock broker keeps ~5 MB per partition and messages are \
                 keyed by customer: raise --customers (spreads the keys) and --partitions"
            );
        }
    }
    Ok((start.elapsed().as_secs_f64(), bytes))
}

struct Throughput {
    mode: String,
    messages: usize,
    produce_s: f64,
    baseline_s: f64,
    meterflow_s: f64,
    /// Records per second between the commits that first cover 10% and 90% of the records:
    /// the sustained rate, without start-up and the last flush.
    steady: f64,
    rss_mib: f64,
    /// CPU seconds while meterflow ran: meterflow (incl. its exit-when-idle wait), ClickHouse,
    /// broker.
    cpu: [f64; 3],
    /// Rows meterflow wrote to each ClickHouse table of the run.
    rows: BTreeMap<String, u64>,
    /// Distinct buckets `usage_buckets` holds at the end: the fewest rows any writer of the
    /// table could have written.
    buckets: u64,
}

fn throughput(
    env: &Env,
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    lines: &[&str],
    mode: &str,
    batching: Batching,
    sink: Sink,
) -> anyhow::Result<Throughput> {
    let topic = format!("usage-{mode}");
    cluster.create_topic(&topic, env.partitions as i32, 1)?;
    let t = Instant::now();
    let mut producer = UsageProducer::new(&env.brokers, &topic, env.partitions, batching);
    producer.send_lines(lines);
    producer.flush();
    let produce_s = t.elapsed().as_secs_f64();
    let messages = producer.messages;
    drop(producer);
    let (baseline_s, _) = bare_consume(&env.brokers, &topic, env.partitions, messages)?;
    let cpu_before = cpu_split(env.ch);
    let start = Instant::now();
    let (mut child, db) = env.start(mode, &topic, &format!("{IDLE_S}s"), sink)?;
    let total = lines.len() as u64;
    let mut commits: Vec<(f64, u64)> = Vec::new();
    let meterflow_s = loop {
        if sink == Sink::Files {
            // No commit to watch: the run ends `IDLE_S` after the last message (to ~0.1 s).
            ensure!(child.wait()?.success(), "meterflow ({mode}) failed");
            let counts: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
                env.work.join(format!("{mode}-out/counts.json")),
            )?)?;
            ensure!(
                counts["received"].as_u64() == Some(total),
                "meterflow ({mode}) read {} of {total} records",
                counts["received"]
            );
            break start.elapsed().as_secs_f64() - IDLE_S;
        }
        let n = committed(env.ch.http_port, &db);
        let at = start.elapsed().as_secs_f64();
        if commits.last().is_none_or(|&(_, last)| n > last) {
            commits.push((at, n));
        }
        if n >= total {
            break at;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "meterflow ({mode}) exited with {status} before committing all {total} records \
                 (committed {}); the mock broker keeps ~5 MB per partition: raise --partitions",
                committed(env.ch.http_port, &db)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(
        sink == Sink::Files || child.wait()?.success(),
        "meterflow ({mode}) failed"
    );
    // Between the commits that first cover 10% and 90% of the records. Work done before the
    // first of them is committed with it, so with only a few commits in between (a short run,
    // a long flush interval) the figure says little: it is left out below five. It is also
    // left out when the two commits are less than half the run apart: then most records were
    // read and decoded before the 10% commit and the window measures how fast commits caught
    // up (a batched run with a 50 ms flush printed 904k events/s for a 201k events/s drain).
    let first_covering = |share: u64| commits.iter().position(|&(_, n)| n * 10 >= total * share);
    let steady = match (first_covering(1), first_covering(9)) {
        (Some(a), Some(b)) if b >= a + 5 && commits[b].0 - commits[a].0 >= meterflow_s / 2.0 => {
            let ((ta, na), (tb, nb)) = (commits[a], commits[b]);
            (nb - na) as f64 / (tb - ta)
        }
        _ => f64::NAN,
    };
    let cpu_after = cpu_split(env.ch);
    let cpu: Vec<f64> = (0..3).map(|i| cpu_after[i] - cpu_before[i]).collect();
    let (rows, buckets) = match sink {
        Sink::Files => (BTreeMap::new(), 0),
        Sink::ClickHouse => rows_written(env.ch, &db)?,
    };
    Ok(Throughput {
        rows,
        buckets,
        cpu: [cpu[0], cpu[1], cpu[2]],
        mode: mode.to_string(),
        messages,
        produce_s,
        baseline_s,
        meterflow_s,
        steady,
        rss_mib: env.peak_rss_mib(mode)?,
    })
}

/// Rows written to each table of `db`, and the distinct buckets `usage_buckets` holds.
fn rows_written(ch: &ClickHouseServer, db: &str) -> anyhow::Result<(BTreeMap<String, u64>, u64)> {
    let rows = ch
        .query(&format!(
            "SELECT table, sum(rows) FROM system.parts WHERE database = '{db}' AND active GROUP BY table FORMAT TSV"
        ))
        .map_err(anyhow::Error::msg)?
        .lines()
        .filter_map(|l| {
            let (t, n) = l.split_once('\t')?;
            Some((t.to_string(), n.parse().ok()?))
        })
        .collect();
    let buckets = ch
        .query(&format!(
            "SELECT count() FROM (SELECT customer_id, sku, bucket_start FROM {db}.usage_buckets \
             GROUP BY customer_id, sku, bucket_start HAVING sum(sign) > 0) FORMAT TSV"
        ))
        .map_err(anyhow::Error::msg)?
        .trim()
        .parse()?;
    Ok((rows, buckets))
}

/// CPU seconds (user + system) from a `/proc/<pid>/stat` line: its own (fields 14, 15) or its
/// waited-for children's (16, 17).
fn cpu_seconds(pid: &str, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let (a, b) = if children { (13, 14) } else { (11, 12) };
    let ticks: f64 = [a, b]
        .iter()
        .filter_map(|&i| rest.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// CPU seconds so far of: waited-for children (meterflow runs), ClickHouse, this process (the
/// in-process broker, producer and bare consumer).
fn cpu_split(ch: &ClickHouseServer) -> [f64; 3] {
    let ch_pid = ch.pid().map(|p| p.to_string()).unwrap_or_default();
    [
        cpu_seconds("self", true),
        cpu_seconds(&ch_pid, false),
        cpu_seconds("self", false),
    ]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    meterflow_benchmarks::help_from_header(include_str!("e2e.rs"));
    let args = parse_args()?;
    let meterflow = meterflow_binary()?;
    let mut name = format!("e2e-{}-events-{}-customers", args.events, args.customers);
    let mut flags = vec![
        "--events".to_string(),
        args.events.to_string(),
        "--customers".into(),
        args.customers.to_string(),
    ];
    if let Some(span) = &args.span {
        name.push_str(&format!("-span-{span}"));
        flags.extend(["--span".to_string(), span.clone()]);
    }
    let data = args.dir.join(name);
    generate_once(&meterflow, &data, &flags)?;
    let text = std::fs::read_to_string(data.join("events.jsonl"))?;
    let lines: Vec<&str> = text.lines().collect();

    let work = std::env::temp_dir().join(format!("meterflow-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let ch = ClickHouseServer::start(&work);
    let cluster = MockCluster::new(1)?;
    let env = Env {
        meterflow: &meterflow,
        work: &work,
        catalog: &data.join("catalog"),
        brokers: cluster.bootstrap_servers(),
        ch: &ch,
        workers: args.workers,
        partitions: args.partitions,
        extra: args.extra.clone(),
    };
    eprintln!(
        "broker {} ({} partitions), ClickHouse {}, meterflow -w {}",
        env.brokers,
        args.partitions,
        ch.url(),
        args.workers
    );

    if args.scaling {
        return scaling(&env, &cluster, &lines, args.batch);
    }

    let mut results = Vec::new();
    // The same topics read into CSV files instead of ClickHouse: what the box gives with
    // ClickHouse taken out of the run.
    for (mode, batching, sink) in [
        ("single", Batching { every: 0, size: 1 }, Sink::ClickHouse),
        (
            "batched",
            Batching {
                every: 1,
                size: args.batch,
            },
            Sink::ClickHouse,
        ),
        ("single-files", Batching { every: 0, size: 1 }, Sink::Files),
        (
            "batched-files",
            Batching {
                every: 1,
                size: args.batch,
            },
            Sink::Files,
        ),
    ] {
        if args.latency_only {
            break;
        }
        eprintln!("throughput: {mode}");
        results.push(throughput(&env, &cluster, &lines, mode, batching, sink)?);
    }

    // Latency at a fixed offered load.
    eprintln!("latency: {} events/s for {} s", args.rate, args.seconds);
    let topic = "usage-latency";
    cluster.create_topic(topic, args.partitions as i32, 1)?;
    let (mut child, db) = env.start("latency", topic, "3s", Sink::ClickHouse)?;
    std::thread::sleep(Duration::from_secs(2)); // meterflow connects and restores
    let polls: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (polls, stop, port, db) = (polls.clone(), stop.clone(), ch.http_port, db.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = committed(port, &db);
                polls.lock().unwrap().push((Instant::now(), n));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut producer = UsageProducer::new(
        &env.brokers,
        topic,
        args.partitions,
        Batching { every: 0, size: 1 },
    );
    let per_slice = (args.rate / 100).max(1) as usize;
    let slices = (args.seconds * 100) as usize;
    let mut sent: Vec<(Instant, u64)> = Vec::with_capacity(slices);
    let begin = Instant::now();
    let mut next = 0usize;
    for k in 0..slices {
        let due = begin + Duration::from_millis(10 * k as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let end = (next + per_slice).min(lines.len());
        producer.send_lines(&lines[next..end]);
        next = end;
        sent.push((Instant::now(), next as u64));
        if next == lines.len() {
            break;
        }
    }
    producer.flush();
    let offered = next as f64 / begin.elapsed().as_secs_f64();
    let total = next as u64;
    // Wait until the poller itself has seen the last record committed: stopping it as soon as
    // another query saw it could leave the last slices without a poll that covers them.
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = || polls.lock().unwrap().last().map_or(0, |&(_, n)| n);
    while seen() < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    ensure!(
        seen() >= total,
        "meterflow committed {} of {total} records within 120 s",
        seen()
    );
    ensure!(child.wait()?.success(), "meterflow (latency) failed");
    let polls = polls.lock().unwrap().clone();
    let mut latencies: Vec<f64> = sent
        .iter()
        .filter_map(|&(at, count)| {
            polls
                .iter()
                .find(|&&(t, n)| t >= at && n >= count)
                .map(|&(t, _)| (t - at).as_secs_f64() * 1000.0)
        })
        .collect();
    ensure!(
        latencies.len() == sent.len(),
        "{} of {} slices were never committed",
        sent.len() - latencies.len(),
        sent.len()
    );
    latencies.sort_by(f64::total_cmp);
    let latency_rss = env.peak_rss_mib("latency")?;
    if std::env::var_os("E2E_DEBUG").is_some() {
        let polls_changes: Vec<String> = polls
            .windows(2)
            .filter(|w| w[1].1 != w[0].1)
            .map(|w| {
                format!(
                    "{:.0}ms:{}",
                    (w[1].0 - begin).as_secs_f64() * 1000.0,
                    w[1].1
                )
            })
            .collect();
        eprintln!("commits seen: {}", polls_changes.join(" "));
        eprintln!(
            "{}",
            std::fs::read_to_string(work.join("latency-out/counts.json")).unwrap_or_default()
        );
        eprintln!("{}", ch.query(&format!("SELECT epoch, committed_at, visitParamExtractUInt(counts, 'received') FROM {db}.sink_progress ORDER BY generation, epoch FORMAT TSV")).unwrap_or_default());
        // Rows written per table: derived tables grow with lines changed per flush, not events.
        eprintln!("{}", ch.query(&format!("SELECT table, sum(rows) FROM system.parts WHERE database = '{db}' AND active GROUP BY table ORDER BY table FORMAT TSV")).unwrap_or_default());
    }

    println!(
        "\n{} records ({} customers), {} partitions, meterflow -w {}, ClickHouse 18.16, librdkafka mock broker; all on this machine\n",
        lines.len(),
        args.customers,
        args.partitions,
        args.workers
    );
    println!("| messages | Kafka messages | produce (s) | bare consumer: msgs/s | bare consumer: events/s | meterflow → ClickHouse (files for `-files`): s | events/s | sustained events/s (commits 10%→90%) | vs bare consumer | peak RSS (MiB) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        let events = lines.len() as f64;
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.0} | {:.2} | {:.0} | {} | {:.2}x | {:.0} |",
            r.mode,
            r.messages,
            r.produce_s,
            r.messages as f64 / r.baseline_s,
            events / r.baseline_s,
            r.meterflow_s,
            events / r.meterflow_s,
            if r.steady.is_nan() {
                "—".to_string()
            } else {
                format!("{:.0}", r.steady)
            },
            r.baseline_s / r.meterflow_s,
            r.rss_mib
        );
    }
    println!(
        "\nCPU seconds while meterflow drained the topic (2 cores = 2 CPU seconds per second):\n"
    );
    println!("| messages | wall (s) | meterflow | ClickHouse | broker (mock, in the harness) |");
    println!("|---|---:|---:|---:|---:|");
    for r in &results {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.mode, r.meterflow_s, r.cpu[0], r.cpu[1], r.cpu[2]
        );
    }
    // What the inserts cost ClickHouse grows with rows, so each table's rows per accepted event.
    let results: Vec<&Throughput> = results.iter().filter(|r| !r.rows.is_empty()).collect();
    println!("\nClickHouse rows written per accepted event (rows / `usage_events` rows):\n");
    println!(
        "| table | {} |",
        results
            .iter()
            .map(|r| r.mode.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---:|".repeat(results.len()));
    let tables: std::collections::BTreeSet<&String> =
        results.iter().flat_map(|r| r.rows.keys()).collect();
    let per_event = |r: &Throughput, table: &str| {
        let accepted = r.rows.get("usage_events").copied().unwrap_or(0).max(1) as f64;
        r.rows.get(table).copied().unwrap_or(0) as f64 / accepted
    };
    for table in tables.iter().filter(|t| !t.starts_with(".inner")) {
        println!(
            "| {table} | {} |",
            results
                .iter()
                .map(|r| format!("{:.3}", per_event(r, table)))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    println!(
        "| usage_buckets: distinct buckets held (the floor) | {} |",
        results
            .iter()
            .map(|r| {
                let accepted = r.rows.get("usage_events").copied().unwrap_or(0).max(1) as f64;
                format!("{:.3}", r.buckets as f64 / accepted)
            })
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!(
        "| all tables | {} |",
        results
            .iter()
            .map(|r| {
                let all: f64 = tables.iter().map(|t| per_event(r, t)).sum();
                format!("{all:.3}")
            })
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!(
        "\nlatency at {offered:.0} events/s offered for {} s ({} slices of 10 ms): event produced → committed in ClickHouse p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; peak RSS {latency_rss:.0} MiB",
        args.seconds,
        sent.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    drop(ch);
    if std::env::var_os("E2E_DEBUG").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

/// `-w 1` and `-w 2` draining the same topics into ClickHouse, one event per message and
/// batched: events/s of each, and their ratio.
fn scaling(
    env: &Env,
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    lines: &[&str],
    batch: usize,
) -> anyhow::Result<()> {
    let events = lines.len() as f64;
    println!(
        "\n{} records, {} partitions, ClickHouse 18.16, librdkafka mock broker; all on this machine\n",
        lines.len(),
        env.partitions
    );
    println!("| messages | `-w 1` events/s | `-w 2` events/s | `-w 2` / `-w 1` | `-w 1` / `-w 2` CPU-s (meterflow) |");
    println!("|---|---:|---:|---:|---:|");
    for (mode, batching) in [
        ("single", Batching { every: 0, size: 1 }),
        (
            "batched",
            Batching {
                every: 1,
                size: batch,
            },
        ),
    ] {
        let mut runs = Vec::new();
        for workers in [1, 2] {
            let env = Env {
                workers,
                ..env.clone()
            };
            let name = format!("{mode}_w{workers}");
            eprintln!("throughput: {name}");
            runs.push(throughput(
                &env,
                cluster,
                lines,
                &name,
                batching,
                Sink::ClickHouse,
            )?);
        }
        let (one, two) = (&runs[0], &runs[1]);
        println!(
            "| {mode} | {:.0} | {:.0} | {:.2}x | {:.2} / {:.2} |",
            events / one.meterflow_s,
            events / two.meterflow_s,
            one.meterflow_s / two.meterflow_s,
            one.cpu[0],
            two.cpu[0]
        );
    }
    Ok(())
}
