//! Random-kill trials: does a pipeline that is SIGKILLed again and again bill exactly what an
//! uninterrupted one bills? The scenario of the restart bug report, everything real on loopback:
//!
//! - `meterflow gen --events N` (60 days, late and duplicate events, invalid records) is produced
//!   to a `--partitions`-partition topic on tansu (sqlite storage, exact offsets), one event per
//!   message, keyed by customer;
//! - one uninterrupted `meterflow run` (`kafka.exit_when_idle = "5s"`) writes the `reference`
//!   database of a ClickHouse 18.16 server;
//! - each trial, in a database of its own, starts `meterflow run`, SIGKILLs it at a random moment
//!   1-8 s after its start, and starts it again, until a run exits by itself.
//!
//! Every trial's tables are compared with the reference, row for row after `sum(sign)`, and its
//! invoice total `sum(amount * sign)` to the cent. Prints one line per trial and exits non-zero
//! if any differs.
//!
//! usage: crash_trials [--events N] [--partitions P] [--trials T] [--seed S] [--dir DIR]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meterflow_benchmarks::{generate_once, meterflow_binary};
use meterflow_tests::kafka::{Batching, UsageProducer};
use meterflow_tests::oracle::billed_state;
use meterflow_tests::servers::{ClickHouseServer, Tansu};

const TOPIC: &str = "usage";

struct Args {
    events: u64,
    partitions: u32,
    trials: u32,
    seed: u64,
    dir: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        events: 200_000,
        partitions: 4,
        trials: 20,
        seed: 7,
        dir: std::env::temp_dir().join("meterflow-crash-trials"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--events" => a.events = value.parse()?,
            "--partitions" => a.partitions = value.parse()?,
            "--trials" => a.trials = value.parse()?,
            "--seed" => a.seed = value.parse()?,
            "--dir" => a.dir = value.into(),
            _ => bail!("unknown flag {flag}; `crash_trials --help` says what it takes"),
        }
    }
    Ok(a)
}

fn invoice_total(ch: &ClickHouseServer, db: &str) -> anyhow::Result<String> {
    let sql = format!("SELECT toString(sum(amount * sign)) FROM {db}.invoice_lines FORMAT TSV");
    Ok(ch
        .query(&sql)
        .map_err(anyhow::Error::msg)?
        .trim()
        .to_string())
}

struct Pipeline<'a> {
    meterflow: &'a Path,
    dir: &'a Path,
    ch: &'a ClickHouseServer,
    brokers: String,
}

impl Pipeline<'_> {
    /// A config for database `db` (its own consumer group too), migrated.
    fn config(&self, db: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{db}.toml"));
        std::fs::write(
            &path,
            format!(
                "[clickhouse]\ndatabase = \"{db}\"\n\n[kafka]\nbrokers = \"{}\"\ntopics = [\"{TOPIC}\"]\ngroup_id = \"{db}\"\nexit_when_idle = \"5s\"\n",
                self.brokers
            ),
        )?;
        let out = Command::new(self.meterflow)
            .args(["migrate", "--config"])
            .arg(&path)
            .args(["--clickhouse-url", &self.ch.url()])
            .output()?;
        if !out.status.success() {
            bail!("migrate failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(path)
    }

    fn spawn(&self, config: &Path, db: &str) -> anyhow::Result<std::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{db}.log")))?;
        Ok(Command::new(self.meterflow)
            .args(["run", "-q", "-c"])
            .arg(self.dir.join("data/catalog"))
            .arg("-o")
            .arg(self.dir.join(format!("{db}-out")))
            .arg("--config")
            .arg(config)
            .args(["--clickhouse-url", &self.ch.url()])
            .env("METERFLOW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?)
    }
}

fn main() -> anyhow::Result<()> {
    meterflow_benchmarks::help_from_header(include_str!("crash_trials.rs"));
    let a = args()?;
    let meterflow = meterflow_binary()?;
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir)?;
    let data = a.dir.join("data");
    let flags = [
        "--events".to_string(),
        a.events.to_string(),
        "--seed".into(),
        a.seed.to_string(),
    ];
    generate_once(&meterflow, &data, &flags)?;
    let text = std::fs::read_to_string(data.join("events.jsonl"))?;
    let lines: Vec<&str> = text.lines().collect();

    let broker = Tansu::start(&a.dir);
    broker.create_topic(TOPIC, a.partitions);
    let one_per_message = Batching { every: 0, size: 1 };
    let mut producer = UsageProducer::new(&broker.brokers(), TOPIC, a.partitions, one_per_message);
    producer.send_lines(&lines);
    producer.flush();
    eprintln!(
        "produced {} records to {} partitions",
        lines.len(),
        a.partitions
    );
    let ch = ClickHouseServer::start(&a.dir);
    let p = Pipeline {
        meterflow: &meterflow,
        dir: &a.dir,
        ch: &ch,
        brokers: broker.brokers(),
    };

    let started = Instant::now();
    let config = p.config("reference")?;
    if !p.spawn(&config, "reference")?.wait()?.success() {
        bail!("the uninterrupted run failed: see reference.log");
    }
    let want = billed_state(&ch, "reference");
    let want_total = invoice_total(&ch, "reference")?;
    println!(
        "uninterrupted: invoice total {want_total}, {} accepted events, {:.0} s",
        want["usage_events"].lines().count(),
        started.elapsed().as_secs_f64()
    );

    let mut rng = a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut failed = 0;
    println!("| trial | kills | invoice total | equal to the cent | tables row for row |");
    println!("|---|---|---|---|---|");
    for trial in 1..=a.trials {
        let db = format!("trial_{trial}");
        let config = p.config(&db)?;
        let mut kills = 0;
        loop {
            let mut child = p.spawn(&config, &db)?;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let life = Duration::from_millis(1_000 + rng % 7_000);
            let deadline = Instant::now() + life;
            let mut exited = None;
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait()? {
                    exited = Some(status);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            match exited {
                Some(status) if status.success() => break,
                Some(status) => bail!("trial {trial}: a run failed ({status}); see {db}.log"),
                None => {
                    child.kill()?; // SIGKILL
                    child.wait()?;
                    kills += 1;
                }
            }
        }
        let got = billed_state(&ch, &db);
        let total = invoice_total(&ch, &db)?;
        let differing: Vec<&str> = want
            .iter()
            .filter(|(table, rows)| got.get(*table) != Some(rows))
            .map(|(table, _)| table.as_str())
            .collect();
        let cents = total == want_total;
        if !cents || !differing.is_empty() {
            failed += 1;
        }
        println!(
            "| {trial} | {kills} | {total} | {} | {} |",
            if cents { "yes" } else { "NO" },
            if differing.is_empty() {
                "all equal".to_string()
            } else {
                format!("differ: {}", differing.join(", "))
            }
        );
    }
    println!(
        "{} of {} trials equal to the uninterrupted run ({:.0} s in all)",
        a.trials - failed,
        a.trials,
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        bail!("{failed} trials differ");
    }
    Ok(())
}
