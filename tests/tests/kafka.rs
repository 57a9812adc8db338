//! Kafka in, ClickHouse out, against real servers on loopback: tansu (a Kafka-protocol broker on
//! sqlite storage, exact offsets) and ClickHouse 18.16. Records are produced while meterflow runs;
//! meterflow is SIGKILLed at random points, or the broker dies under it, and the final tables must
//! equal the embedded run of the same records: nothing lost, nothing counted twice.
//!
//! The stream has duplicates, invalid records, late (out-of-order) events, voids and amends,
//! CloudEvents, checksums and NDJSON batch messages. Its event time stays inside one billing month
//! (including the late events), because which month a late event lands in depends on when it is
//! read, and Kafka interleaves partitions differently on every run; closing periods across
//! restarts is covered by the file-fed ClickHouse test.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use meterflow::reports::tables::read_table;
use meterflow_tests::k8s::{free_pod_port, StatefulSet};
use meterflow_tests::kafka::{
    group_offsets, partition_of_record, produce, Batching, UsageProducer,
};
use meterflow_tests::oracle::{
    assert_billed_like_reference, assert_clickhouse_matches, assert_invoice_has, assert_stream_has,
    catalog_log, count, reference_config,
};
use meterflow_tests::servers::{write_hostfile, ClickHouseServer, Tansu};
use meterflow_tests::{
    backdate, generate, meterflow_bin, meterflow_ok, run_ok, signed_by_python_producer, Running,
    Scratch,
};
use rdkafka::mocking::MockCluster;

const TOPIC: &str = "usage";
const BATCHING: Batching = Batching { every: 3, size: 20 };

struct Fixture {
    dir: Scratch,
    ch: ClickHouseServer,
    broker: Tansu,
    partitions: u32,
    lines: Vec<String>,
}

impl Fixture {
    /// `idle`: how long meterflow waits at the end of every partition before it exits.
    fn new(name: &str, events: u64, partitions: u32, idle: &str) -> Fixture {
        Fixture::starting(name, events, partitions, idle, "2026-09-04T00:00:00Z")
    }

    /// Events from `start` on, for 20 days.
    fn starting(name: &str, events: u64, partitions: u32, idle: &str, start: &str) -> Fixture {
        let dir = Scratch::new(name);
        let d = dir.path();
        generate(
            d,
            events,
            40,
            11,
            &[
                "--start",
                start,
                "--days",
                "20",
                "--late-rate",
                "0.02",
                "--correction-rate",
                "0.02",
                "--checksum-rate",
                "0.1",
                "--cloudevents-rate",
                "0.05",
                "--terms",
            ],
        );
        let lines = std::fs::read_to_string(d.join("events.jsonl"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        let broker = Tansu::start(d);
        broker.create_topic(TOPIC, partitions);
        let ch = ClickHouseServer::start(d);
        meterflow_ok(&["migrate", "--clickhouse-url", &ch.url()]);
        std::fs::write(
            d.join("oracle.toml"),
            "[input]\nchunk_bytes = 131072\n\n[output]\nprice_every_epochs = 2\n\n[anomalies]\nmin_volume = \"1\"\nmin_events = 0\n",
        )
        .unwrap();
        std::fs::write(
            d.join("kafka.toml"),
            format!(
                "[output]\nprice_every_epochs = 2\n\n[anomalies]\nmin_volume = \"1\"\nmin_events = 0\n\n[clickhouse]\nflush_interval = \"100ms\"\n\n\
                 [kafka]\nbrokers = \"{}\"\ntopics = [\"{TOPIC}\"]\nepoch_interval = \"100ms\"\n\
                 exit_when_idle = \"{idle}\"\n\n\
                 # A process whose peer died while the cluster formed stops well within the tests' deadlines.\n\
                 [workers]\njoin_timeout = \"15s\"\n",
                broker.brokers()
            ),
        )
        .unwrap();
        Fixture {
            dir,
            ch,
            broker,
            partitions,
            lines,
        }
    }

    /// The records that go to partition `p`, in order.
    fn records_of(&self, p: i32) -> Vec<&str> {
        self.lines
            .iter()
            .map(String::as_str)
            .filter(|l| partition_of_record(l, self.partitions) == Some(p))
            .collect()
    }

    /// Produces the first half of the records, the history a `latest` start skips; returns the
    /// other half, and `kafka.toml` as it is with `start_from = "latest"`.
    fn history_then_latest(&self) -> (Vec<&str>, String) {
        let lines: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        let (history, arrived) = lines.split_at(lines.len() / 2);
        produce(
            &self.broker.brokers(),
            TOPIC,
            self.partitions,
            history,
            BATCHING,
        );
        let config = std::fs::read_to_string(self.dir.path().join("kafka.toml")).unwrap();
        let latest = config.replace("exit_when_idle", "start_from = \"latest\"\nexit_when_idle");
        (arrived.to_vec(), latest)
    }

    fn produce(&self, range: std::ops::Range<usize>) {
        let lines: Vec<&str> = self.lines[range].iter().map(String::as_str).collect();
        produce(
            &self.broker.brokers(),
            TOPIC,
            self.partitions,
            &lines,
            BATCHING,
        );
    }

    /// Produces every line in `slices` pieces, `pause` apart, on a thread of its own.
    fn produce_slowly(&self, slices: usize, pause: Duration) -> std::thread::JoinHandle<()> {
        self.produce_range_slowly(0..self.lines.len(), slices, pause)
    }

    /// Produces the lines of `range` in `slices` pieces, `pause` apart, on a thread of its own.
    fn produce_range_slowly(
        &self,
        range: std::ops::Range<usize>,
        slices: usize,
        pause: Duration,
    ) -> std::thread::JoinHandle<()> {
        let brokers = self.broker.brokers();
        let lines = self.lines[range].to_vec();
        let partitions = self.partitions;
        std::thread::spawn(move || {
            let per = lines.len().div_ceil(slices).max(1);
            for slice in lines.chunks(per) {
                let slice: Vec<&str> = slice.iter().map(String::as_str).collect();
                produce(&brokers, TOPIC, partitions, &slice, BATCHING);
                std::thread::sleep(pause);
            }
        })
    }

    /// Produces each of `parts` slowly, one after the other. Slowly, as every kill's part was:
    /// a burst would let two partitions run days ahead of the third (see the session 21 note on
    /// issue 22).
    fn produce_parts_slowly(&self, parts: impl Iterator<Item = std::ops::Range<usize>>) {
        for part in parts {
            self.produce_range_slowly(part, 6, Duration::from_millis(300))
                .join()
                .unwrap();
        }
    }

    /// Worker threads per process in `kafka.toml`.
    fn set_threads(&self, threads: usize) {
        let path = self.dir.path().join("kafka.toml");
        let config = std::fs::read_to_string(&path).unwrap();
        let config = config.replace("[workers]\n", &format!("[workers]\nthreads = {threads}\n"));
        std::fs::write(path, config).unwrap();
    }

    /// The lines in `parts` consecutive ranges: each deliberate kill gets a fresh one to read
    /// while it waits for its moment, however slowly the machine starts a run.
    fn parts(&self, parts: usize) -> Vec<std::ops::Range<usize>> {
        let n = self.lines.len();
        let per = n.div_ceil(parts);
        (0..parts)
            .map(|i| (i * per).min(n)..((i + 1) * per).min(n))
            .collect()
    }

    fn run_args(&self) -> Vec<String> {
        self.run_args_with("kafka.toml")
    }

    /// The arguments of `meterflow run` with the config file `config` of the scratch directory.
    fn run_args_with(&self, config: &str) -> Vec<String> {
        let d = self.dir.path();
        vec![
            "run".into(),
            "-c".into(),
            d.join("catalog").display().to_string(),
            "-o".into(),
            d.join("kafka-out").display().to_string(),
            "--config".into(),
            d.join(config).display().to_string(),
            "--clickhouse-url".into(),
            self.ch.url(),
            "-q".into(),
        ]
    }

    fn spawn(&self) -> Running {
        self.spawn_logging_to("meterflow.log", "kafka.toml", &[])
    }

    /// Starts the processes of a cluster of `processes` (one plain `meterflow run` if 1) on the
    /// scratch directory's `hosts`, process `p` with the config file `config(p)` and its log
    /// appended to `meterflow-<p>.log`.
    fn spawn_processes(
        &self,
        processes: usize,
        config: impl Fn(usize) -> &'static str,
    ) -> Vec<Running> {
        let n = processes.to_string();
        (0..processes)
            .map(|p| {
                let (log, index) = (format!("meterflow-{p}.log"), p.to_string());
                let cluster = ["-n", &n, "-p", &index, "--hostfile", "hosts"];
                let extra: &[&str] = if processes > 1 { &cluster } else { &[] };
                self.spawn_logging_to(&log, config(p), extra)
            })
            .collect()
    }

    /// Starts `meterflow run` with the config file `config` and `extra` arguments, its log
    /// appended to `log` in the scratch directory.
    fn spawn_logging_to(&self, log: &str, config: &str, extra: &[&str]) -> Running {
        self.spawn_with_env(log, config, extra, &[])
    }

    /// Starts the processes of a cluster as the StatefulSet of `deploy/k8s/` starts its pods:
    /// the same environment (pod name, process count, peer template), loopback addresses for
    /// the pods' names. Process `p` logs to `meterflow-<p>.log`.
    fn spawn_pods(&self, sts: &StatefulSet, port: u16) -> Vec<Running> {
        (0..sts.replicas)
            .map(|p| {
                let env = sts.pod_env(p, port);
                self.spawn_with_env(&format!("meterflow-{p}.log"), "kafka.toml", &[], &env)
            })
            .collect()
    }

    fn spawn_with_env(
        &self,
        log: &str,
        config: &str,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Running {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log))
            .unwrap();
        Command::new(meterflow_bin())
            .current_dir(self.dir.path())
            .args(self.run_args_with(config))
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("METERFLOW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(Running)
            .unwrap()
    }

    /// Starts `meterflow run` and SIGKILLs it at a random moment within `life` (ms) after its
    /// start, again and again, until it was killed `kills` times (a run that went idle and
    /// exited by itself is started again). Returns the number of kills.
    fn kill_at_random_moments(&self, kills: u32, seed: u64, life: std::ops::Range<u64>) -> u32 {
        let mut rng = seed;
        let mut killed = 0;
        while killed < kills {
            let mut child = self.spawn();
            if killed == 0 {
                // The first kill comes after a commit, so a restart resumes from one however
                // slowly this machine commits (the later kills fall wherever the timing puts them).
                wait_for(
                    &self.ch,
                    "SELECT max(visitParamExtractUInt(counts, 'received')) FROM meterflow.sink_progress",
                    1,
                    "the first commit",
                );
            }
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            std::thread::sleep(Duration::from_millis(
                life.start + rng % (life.end - life.start),
            ));
            match child.try_wait().unwrap() {
                Some(status) => assert!(status.success(), "a run failed"),
                None => {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                    killed += 1;
                }
            }
        }
        killed
    }

    fn run_to_the_end(&self) {
        let args = self.run_args();
        meterflow_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// The same topic, read by one uninterrupted run into its own database, `reference`.
    fn run_reference(&self) {
        let d = self.dir.path();
        let config = reference_config(&self.ch, d, "kafka.toml");
        let out = d.join("reference-out").display().to_string();
        let catalog = d.join("catalog").display().to_string();
        meterflow_ok(&[
            "run",
            "-c",
            &catalog,
            "-o",
            &out,
            "--config",
            &config,
            "--clickhouse-url",
            &self.ch.url(),
            "-q",
        ]);
    }

    fn assert_matches_oracle(&self, what: &str) {
        let d = self.dir.path();
        meterflow_ok(&[
            "run",
            "-i",
            d.join("events.jsonl").to_str().unwrap(),
            "-c",
            d.join("catalog").to_str().unwrap(),
            "-o",
            d.join("oracle").to_str().unwrap(),
            "--config",
            d.join("oracle.toml").to_str().unwrap(),
            "-q",
        ]);
        let counts = assert_clickhouse_matches(&self.ch, &d.join("oracle"), what);
        assert_stream_has(
            &counts,
            &["duplicates", "rejected", "corrections", "out_of_order"],
        );
        assert_invoice_has(
            &d.join("oracle"),
            &[
                "usage",
                "subscription",
                "discount",
                "commitment",
                "tax",
                "credit",
            ],
        );
    }
}

#[test]
fn kafka_to_clickhouse_through_sigkills_counts_every_unit_exactly_once() {
    let f = Fixture::new("kafka-kill", 60_000, 3, "3s");
    let producer = f.produce_slowly(8, Duration::from_millis(400));
    let kills = f.kill_at_random_moments(4, 0x2545_F491, 500..2_500);
    producer.join().unwrap();
    f.run_to_the_end();
    f.assert_matches_oracle(&format!("after {kills} SIGKILLs while producing"));
    assert_no_re_rating(&std::fs::read_to_string(f.dir.path().join("meterflow.log")).unwrap());
    // Rejections keep their message's key.
    let keyed =
        f.ch.query("SELECT countIf(kafka_key != '') FROM meterflow.rejections FORMAT TSV")
            .unwrap();
    assert!(
        keyed.trim().parse::<u64>().unwrap() > 0,
        "rejections keep their key"
    );
    // The consumer group mirrors the committed positions, so lag monitors see the truth.
    for (partition, (committed, high)) in
        group_offsets(&f.broker.brokers(), "meterflow", TOPIC, f.partitions)
            .into_iter()
            .enumerate()
    {
        assert_eq!(
            committed, high,
            "partition {partition}: committed offset vs end"
        );
    }
}

/// The newest generation (one per start of the pipeline) that wrote `usage_events` rows.
fn newest_generation(ch: &ClickHouseServer) -> u64 {
    count(ch, "SELECT max(generation) FROM meterflow.usage_events")
}

/// Where each worker's `usage_events` rows of generations after `after` stand, as (worker,
/// latest epoch written), and the latest committed epoch.
fn epochs_by_worker(ch: &ClickHouseServer, after: u64) -> (Vec<(u64, u64)>, u64) {
    // A row's batch carries its writer in the top 24 bits (`BatchId`).
    let tsv = ch
        .query(&format!(
            "SELECT intDiv(batch, 1099511627776) AS w, max(epoch) FROM meterflow.usage_events \
             WHERE generation > {after} GROUP BY w ORDER BY w FORMAT TSV"
        ))
        .unwrap();
    let by_worker = tsv
        .lines()
        .map(|l| {
            let (w, e) = l.split_once('\t').unwrap();
            (w.parse().unwrap(), e.parse().unwrap())
        })
        .collect();
    (
        by_worker,
        count(ch, "SELECT max(epoch) FROM meterflow.sink_progress"),
    )
}

/// Polls ClickHouse until the rows of starts after generation `before` stand at different
/// epochs for the two workers, one of them past the last commit: returns (worker 0's latest
/// epoch, worker 1's, the committed one), or `None` once `ended` says a process exited or after
/// `limit`.
fn wait_until_apart(
    ch: &ClickHouseServer,
    before: u64,
    limit: Duration,
    mut ended: impl FnMut() -> bool,
) -> Option<(u64, u64, u64)> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline && !ended() {
        let (by_worker, committed) = epochs_by_worker(ch, before);
        if let [(_, a), (_, b)] = by_worker[..] {
            if a != b && a.max(b) > committed {
                return Some((a, b, committed));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Issue 22's exactly-once case made deliberate: every worker writes its own rows, so a kill can
/// land while one worker's rows are durable for a later epoch than the other's. Each kill here
/// waits until ClickHouse shows exactly that (both workers written, their latest epochs apart,
/// rows past the last commit), then SIGKILLs at once. The restarts must still bill every unit
/// once.
#[test]
fn sigkills_while_workers_stand_at_different_epochs_count_every_unit_exactly_once() {
    let f = Fixture::new("kafka-skew-kill", 60_000, 3, "3s");
    f.set_threads(2);
    let mut parts = f.parts(12).into_iter();
    let mut seen = Vec::new();
    let mut attempts = 0;
    while seen.len() < 3 {
        attempts += 1;
        assert!(
            attempts <= 12,
            "caught workers apart only {seen:?} in 12 runs"
        );
        let producer = parts
            .next()
            .map(|r| f.produce_range_slowly(r, 6, Duration::from_millis(300)));
        // Only this start's rows count: a killed run's rows past the commit stay until the
        // next start has deleted them.
        let before = newest_generation(&f.ch);
        let mut child = f.spawn();
        let apart = wait_until_apart(&f.ch, before, Duration::from_secs(15), || {
            child.try_wait().unwrap().is_some()
        });
        match child.try_wait().unwrap() {
            Some(status) => assert!(status.success(), "a run failed"),
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                if let Some(a) = apart {
                    seen.push(a);
                }
            }
        }
        if let Some(p) = producer {
            p.join().unwrap();
        }
    }
    eprintln!("killed with the workers' rows apart (worker 0, worker 1, committed): {seen:?}");
    f.produce_parts_slowly(parts);
    f.run_to_the_end();
    f.assert_matches_oracle(&format!(
        "after SIGKILLs with the workers' rows at different epochs (worker 0, worker 1, committed): {seen:?}"
    ));
}

/// The same for a cluster of two processes started as the StatefulSet starts its pods (one
/// worker each): one process is SIGKILLed while ClickHouse shows its rows and its peer's at
/// different epochs; the peer notices and stops; the cluster restarts from the commit.
#[test]
fn a_cluster_killed_while_its_processes_stand_at_different_epochs_counts_every_unit_exactly_once() {
    let f = Fixture::new("kafka-cluster-skew-kill", 30_000, 2, "3s");
    f.set_threads(1);
    let sts = StatefulSet::from_manifests();
    let port = free_pod_port(sts.replicas);
    let mut parts = f.parts(10).into_iter();
    let mut seen = Vec::new();
    let mut attempts = 0;
    while seen.len() < 2 {
        attempts += 1;
        assert!(
            attempts <= 10,
            "caught the processes apart only {seen:?} in 10 runs"
        );
        let producer = parts
            .next()
            .map(|r| f.produce_range_slowly(r, 6, Duration::from_millis(300)));
        let before = newest_generation(&f.ch);
        let mut processes = f.spawn_pods(&sts, port);
        let apart = wait_until_apart(&f.ch, before, Duration::from_secs(20), || {
            processes
                .iter_mut()
                .any(|p| p.try_wait().unwrap().is_some())
        });
        if apart.is_none() {
            // Went idle, or never apart: stop both and try again with the next part.
            for p in &mut processes {
                p.kill().unwrap();
                p.wait().unwrap();
            }
        } else {
            let victim = attempts % 2;
            processes[victim].kill().unwrap(); // SIGKILL
            processes[victim].wait().unwrap();
            seen.extend(apart);
            let other = &mut processes[1 - victim];
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while other.try_wait().unwrap().is_none() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "process {} goes on without its peer",
                    1 - victim
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if let Some(p) = producer {
            p.join().unwrap();
        }
    }
    eprintln!("killed with the processes' rows apart (worker 0, worker 1, committed): {seen:?}");
    f.produce_parts_slowly(parts);
    for mut p in f.spawn_pods(&sts, port) {
        assert!(p.wait().unwrap().success(), "the last run failed");
    }
    f.assert_matches_oracle(&format!(
        "after SIGKILLs of a cluster process with the processes' rows at different epochs (worker 0, worker 1, committed): {seen:?}"
    ));
}

/// Kubernetes' default `terminationGracePeriodSeconds`: a SIGTERMed pipeline must have committed
/// and exited well within it (docs/operations.md promises it).
const GRACE: Duration = Duration::from_secs(30);

/// Rows written beyond the latest commit: what a stop left for the next start to delete.
fn uncommitted_rows(ch: &ClickHouseServer) -> u64 {
    ["usage_events", "rejections", "invoice_lines"]
        .iter()
        .map(|t| {
            count(
                ch,
                &format!("SELECT count() FROM meterflow.{t} WHERE epoch > (SELECT max(epoch) FROM meterflow.sink_progress)"),
            )
        })
        .sum()
}

#[test]
fn sigterm_mid_stream_commits_what_was_read_exits_0_and_a_restart_bills_exactly_once() {
    let f = Fixture::new("kafka-sigterm", 40_000, 3, "3s");
    let producer = f.produce_slowly(6, Duration::from_millis(400));
    let (mut rng, mut terminated) = (0x5DEE_CE66u64, 0);
    let commits = || count(&f.ch, "SELECT count() FROM meterflow.sink_progress");
    while terminated < 3 {
        let before = commits();
        let mut run = f.spawn();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(1_000 + rng % 2_000));
        // Mid-stream: stopped once it has committed something of its own, so that the next
        // start resumes from a commit (on a loaded machine, start-up alone can outlast the
        // sleep, and a run stopped before reading anything leaves nothing to resume from).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while commits() == before && std::time::Instant::now() < deadline {
            if run.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(status) = run.try_wait().unwrap() {
            assert!(status.success(), "a run failed");
            continue;
        }
        run.terminate();
        let status = run.wait_within(GRACE);
        assert!(
            status.success(),
            "a SIGTERMed run commits and exits 0: {status:?}"
        );
        terminated += 1;
        assert_eq!(
            uncommitted_rows(&f.ch),
            0,
            "a SIGTERMed run leaves nothing uncommitted behind"
        );
    }
    producer.join().unwrap();
    f.run_to_the_end();
    f.assert_matches_oracle(&format!("after {terminated} SIGTERMs while producing"));
    let log = std::fs::read_to_string(f.dir.path().join("meterflow.log")).unwrap();
    assert_eq!(
        log.matches("shut down on request").count(),
        3,
        "each SIGTERMed run says it shut down"
    );
    assert_no_re_rating(&log);
}

#[test]
fn sigterm_to_one_process_stops_the_whole_cluster_at_one_commit() {
    let f = Fixture::new("kafka-cluster-sigterm", 20_000, 2, "3s");
    let d = f.dir.path();
    let config = std::fs::read_to_string(d.join("kafka.toml")).unwrap();
    std::fs::write(
        d.join("kafka.toml"),
        config.replace("[workers]\n", "[workers]\nthreads = 1\n"),
    )
    .unwrap();
    write_hostfile(d, 2);
    let producer = f.produce_slowly(4, Duration::from_millis(500));
    let mut processes = f.spawn_processes(2, |_| "kafka.toml");
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(
        processes
            .iter_mut()
            .all(|p| p.try_wait().unwrap().is_none()),
        "both processes run while records arrive"
    );
    processes[1].terminate();
    for (i, p) in processes.iter_mut().enumerate() {
        let status = p.wait_within(GRACE);
        assert!(status.success(), "process {i} exits 0: {status:?}");
    }
    assert_eq!(
        uncommitted_rows(&f.ch),
        0,
        "the cluster stopped at one commit"
    );
    producer.join().unwrap();
    for mut p in f.spawn_processes(2, |_| "kafka.toml") {
        assert!(p.wait().unwrap().success(), "the last run failed");
    }
    f.assert_matches_oracle("after a SIGTERM to one process of a cluster");
    assert_one_generation_per_start(&f.ch);
}

#[test]
fn a_sigterm_before_a_worker_read_anything_leaves_its_partition_holding_the_watermark() {
    // Two workers, one partition each. Partition 0 holds a backlog reaching into October;
    // partition 1 is still empty when SIGTERM comes, and epochs are cut by size only, so
    // worker 1 has emitted no chunk yet. Its partition must still be in the commit, not idle
    // and with nothing read, holding the watermark: were it left out, the watermark recorded
    // would be partition 0's, and partition 1's September events, produced after the stop,
    // would be billed as late October adjustments or refused as too old on the next start.
    let f = Fixture::starting(
        "kafka-sigterm-unread",
        20_000,
        2,
        "30s",
        "2026-09-22T00:00:00Z",
    );
    f.set_threads(2);
    let path = f.dir.path().join("kafka.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replace(
            "epoch_interval = \"100ms\"\n",
            "epoch_interval = \"600s\"\nmax_epoch_bytes = 262144\n",
        ),
    )
    .unwrap();
    let (first, second): (Vec<&str>, Vec<&str>) = f
        .lines
        .iter()
        .map(String::as_str)
        .partition(|l| partition_of_record(l, f.partitions) != Some(1));
    let brokers = f.broker.brokers();
    produce(&brokers, TOPIC, f.partitions, &first, BATCHING);
    let mut run = f.spawn();
    std::thread::sleep(Duration::from_secs(4));
    assert!(run.try_wait().unwrap().is_none(), "the run reads");
    run.terminate();
    assert!(run.wait_within(GRACE).success(), "the run exits 0");
    let partitions = f
        .ch
        .query("SELECT partitions FROM meterflow.sink_progress ORDER BY generation DESC, epoch DESC LIMIT 1 FORMAT TSV")
        .unwrap();
    assert!(
        partitions.contains(r#"{"source":"usage","partition":1,"max_time_ms":null,"idle":false}"#),
        "the commit names the partition nothing was read from: {partitions}"
    );
    assert!(
        partitions.contains(r#""partition":0,"max_time_ms":17"#),
        "the commit covers events of partition 0: {partitions}"
    );

    produce(&brokers, TOPIC, f.partitions, &second, BATCHING);
    std::fs::write(
        &path,
        config.replace("exit_when_idle = \"30s\"", "exit_when_idle = \"3s\""),
    )
    .unwrap();
    f.run_to_the_end();
    f.run_reference();
    let judged = |db: &str, sql: &str| count(&f.ch, &sql.replace("{db}", db));
    for sql in [
        "SELECT count() FROM {db}.rejections WHERE reason = 'timestamp_too_old'",
        "SELECT count() FROM {db}.usage_events WHERE arrival = 'late'",
    ] {
        assert_eq!(judged("meterflow", sql), judged("reference", sql), "{sql}");
    }
    let september =
        "SELECT count() FROM {db}.usage_events WHERE service_period = '2026-09' AND partition = 1";
    assert!(
        judged("meterflow", september) > 1_000,
        "partition 1 holds September's usage"
    );
    assert_billed_like_reference(&f.ch, "after a SIGTERM before one worker read anything");
}

#[test]
fn late_events_across_a_period_close_are_billed_the_same_through_short_lived_restarts() {
    // Twenty days across the September close, 3% of events 2 to 72 hours late: many land
    // around October 1st, late for a closed September or just inside its tolerance hour.
    // Partitions 1-3 wait in the topic in full (a backfill); partition 0 arrives in slices
    // while meterflow runs, so the partitions are read at very different speeds. Every life of
    // the killed pipeline is shorter than `kafka.idle_after` (10 s): no partition ever has
    // time to become idle again after a restart.
    let f = Fixture::starting("kafka-late-kill", 40_000, 4, "3s", "2026-09-20T00:00:00Z");
    let (slow, backfill): (Vec<&str>, Vec<&str>) = f
        .lines
        .iter()
        .map(String::as_str)
        .partition(|l| partition_of_record(l, f.partitions) == Some(0));
    produce(
        &f.broker.brokers(),
        TOPIC,
        f.partitions,
        &backfill,
        BATCHING,
    );
    let brokers = f.broker.brokers();
    let slow: Vec<String> = slow.into_iter().map(str::to_string).collect();
    let slices = slow.len().div_ceil(12);
    let producer = std::thread::spawn(move || {
        for slice in slow.chunks(slices) {
            let slice: Vec<&str> = slice.iter().map(String::as_str).collect();
            produce(&brokers, TOPIC, 4, &slice, BATCHING);
            std::thread::sleep(Duration::from_millis(700));
        }
    });
    let kills = f.kill_at_random_moments(8, 0x9E37_79B9, 400..3_000);
    producer.join().unwrap();
    f.run_to_the_end();

    f.run_reference();

    let adjusted = count(
        &f.ch,
        "SELECT count() FROM reference.usage_events WHERE service_period != invoice_period",
    );
    assert!(adjusted > 0, "late events billed as adjustments");
    let in_tolerance = count(
        &f.ch,
        "SELECT count() FROM reference.usage_events WHERE service_period = '2026-09' AND arrival = 'out_of_order' AND event_time >= toDateTime('2026-09-30 18:00:00')",
    );
    assert!(
        in_tolerance > 0,
        "late events still inside the open September"
    );
    assert_billed_like_reference(&f.ch, &format!("after {kills} SIGKILLs"));
}

#[test]
fn a_backlog_on_partitions_idle_at_the_commit_is_judged_as_an_uninterrupted_run_judges_it() {
    // The first run reads four days and exits when idle, so its last commit records every
    // partition idle. Sixteen more days then wait in the topic. Partitions idle at the commit
    // but holding a backlog must hold the watermark until read: counted idle, the first
    // partition read carried it days past the others, and their events were judged too old.
    let f = Fixture::new("kafka-idle-backlog", 30_000, 3, "3s");
    let split = f.lines.len() / 5;
    let lines: Vec<&str> = f.lines.iter().map(String::as_str).collect();
    let brokers = f.broker.brokers();
    produce(&brokers, TOPIC, f.partitions, &lines[..split], BATCHING);
    f.run_to_the_end();
    produce(&brokers, TOPIC, f.partitions, &lines[split..], BATCHING);
    f.run_to_the_end();

    f.run_reference();
    let too_old = |db: &str| {
        count(
            &f.ch,
            &format!("SELECT count() FROM {db}.rejections WHERE reason = 'timestamp_too_old'"),
        )
    };
    assert_eq!(
        too_old("meterflow"),
        too_old("reference"),
        "events judged too old"
    );
    assert_billed_like_reference(&f.ch, "after a run that exited idle and a backlog");
}

/// The processes start as the StatefulSet of `deploy/k8s/` starts its pods (see `spawn_pods`).
#[test]
fn a_cluster_whose_processes_are_sigkilled_counts_every_unit_exactly_once() {
    let f = Fixture::new("kafka-cluster-kill", 30_000, 2, "3s");
    f.set_threads(1);
    let d = f.dir.path();
    let sts = StatefulSet::from_manifests();
    assert_eq!(sts.replicas, 2, "the manifests' cluster is the one tested");
    let port = free_pod_port(sts.replicas);
    let start = || f.spawn_pods(&sts, port);
    let producer = f.produce_slowly(6, Duration::from_millis(400));
    let mut rng = 0x9E37_79B9u64;
    let mut kills = 0;
    while kills < 3 {
        let mut processes = start();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if kills == 0 {
            // The first kill comes after a commit, so a restart resumes from one however slowly
            // this machine commits (the later kills fall wherever the timing puts them).
            wait_for(
                &f.ch,
                "SELECT max(visitParamExtractUInt(counts, 'received')) FROM meterflow.sink_progress",
                1,
                "the cluster's first commit",
            );
        }
        std::thread::sleep(Duration::from_millis(1500 + rng % 2500));
        if processes
            .iter_mut()
            .any(|p| p.try_wait().unwrap().is_some())
        {
            // Went idle between slices: both finish.
            for p in &mut processes {
                assert!(p.wait().unwrap().success(), "a run failed");
            }
            continue;
        }
        let victim = (rng >> 20) as usize % 2;
        processes[victim].kill().unwrap(); // SIGKILL
        processes[victim].wait().unwrap();
        kills += 1;
        // The other process notices and stops by itself, rather than wait forever.
        let other = &mut processes[1 - victim];
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while other.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "process {} goes on without its peer",
                1 - victim
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    producer.join().unwrap();
    for mut p in start() {
        assert!(p.wait().unwrap().success(), "the last run failed");
    }
    f.assert_matches_oracle(&format!(
        "after {kills} SIGKILLs of one process of a cluster"
    ));
    assert_one_generation_per_start(&f.ch);
    let logs = ["meterflow-0.log", "meterflow-1.log"]
        .map(|l| std::fs::read_to_string(d.join(l)).unwrap())
        .concat();
    assert!(
        logs.contains("lost the connection to another process of the cluster"),
        "a process whose peer was killed says so"
    );
    assert_no_re_rating(&logs);
}

#[test]
fn a_partition_without_a_committed_position_is_read_from_its_beginning_after_a_restart() {
    // `start_from = "latest"` is where a pipeline with no committed progress starts. Partition 1
    // gets nothing before the first run commits; its records arrive while meterflow is down.
    // The restarted pipeline must read them from the beginning, not skip to the end (it did:
    // `latest` applied to every partition without a committed position).
    let f = Fixture::new("kafka-latest", 4_000, 2, "3s");
    let d = f.dir.path();
    let (first, second) = (f.records_of(0), f.records_of(1));
    assert_eq!(
        first.len() + second.len(),
        f.lines.len(),
        "every record has a key"
    );
    // Partition 1's share is read 20 days of event time behind partition 0's: keep it billable.
    for config in ["kafka.toml", "oracle.toml"] {
        let mut text = std::fs::read_to_string(d.join(config)).unwrap();
        text.push_str("\n[dedup]\nhorizon = \"40d\"\n");
        std::fs::write(d.join(config), text).unwrap();
    }
    produce(&f.broker.brokers(), TOPIC, 2, &first, BATCHING);
    f.run_to_the_end();
    let committed = f
        .ch
        .query("SELECT offsets FROM meterflow.sink_progress ORDER BY generation DESC, epoch DESC LIMIT 1 FORMAT TSV")
        .unwrap();
    assert!(
        committed.contains("\"partition\":0") && !committed.contains("\"partition\":1"),
        "the first run committed a position for partition 0 only: {committed}"
    );
    let config = std::fs::read_to_string(d.join("kafka.toml")).unwrap();
    std::fs::write(
        d.join("kafka.toml"),
        config.replace("exit_when_idle", "start_from = \"latest\"\nexit_when_idle"),
    )
    .unwrap();
    produce(&f.broker.brokers(), TOPIC, 2, &second, BATCHING);
    f.run_to_the_end();
    f.assert_matches_oracle("after records arrived on a partition while meterflow was down");
}

#[test]
fn start_from_latest_never_reads_the_history_of_a_partition_quiet_until_the_first_commit() {
    // Both partitions hold history when the pipeline first starts, with `start_from =
    // "latest"`: the owner bills from here on (the history was billed elsewhere). Partition 1
    // gets nothing new before the first run commits; then new records arrive on it. The
    // restarted pipeline must read those, and not partition 1's history: without a committed
    // position it read the partition from its beginning, billing the history.
    let f = Fixture::new("kafka-latest-quiet", 4_000, 2, "6s");
    let d = f.dir.path();
    let (zero, one) = (f.records_of(0), f.records_of(1));
    let (old0, new0) = zero.split_at(zero.len() / 2);
    let (old1, new1) = one.split_at(one.len() / 2);
    let brokers = f.broker.brokers();
    produce(&brokers, TOPIC, 2, &[old0, old1].concat(), BATCHING);
    let config = std::fs::read_to_string(d.join("kafka.toml")).unwrap();
    std::fs::write(
        d.join("kafka.toml"),
        config.replace("exit_when_idle", "start_from = \"latest\"\nexit_when_idle")
            + "\n[dedup]\nhorizon = \"40d\"\n",
    )
    .unwrap();
    // The first run starts at the end of both partitions, then reads what arrives on
    // partition 0 only.
    let mut run = f.spawn();
    wait_for(
        &f.ch,
        "SELECT count() FROM meterflow.sink_progress",
        1,
        "the first commit",
    );
    produce(&brokers, TOPIC, 2, new0, BATCHING);
    assert!(
        run.wait().unwrap().success(),
        "the first run exits when idle"
    );
    let read_from = |p: i32| {
        count(
            &f.ch,
            &format!(
                "SELECT count() FROM (SELECT offset FROM meterflow.usage_events WHERE partition = {p} UNION ALL SELECT offset FROM meterflow.rejections WHERE partition = {p} UNION ALL SELECT offset FROM meterflow.duplicates WHERE partition = {p})"
            ),
        )
    };
    assert_eq!(
        read_from(0),
        new0.len() as u64,
        "partition 0: what arrived after the start"
    );
    assert_eq!(read_from(1), 0, "partition 1: nothing arrived yet");
    let committed = f
        .ch
        .query("SELECT offsets FROM meterflow.sink_progress ORDER BY generation DESC, epoch DESC LIMIT 1 FORMAT TSV")
        .unwrap();
    assert!(
        committed.contains("\"partition\":1"),
        "the commit records where partition 1 was started: {committed}"
    );

    produce(&brokers, TOPIC, 2, new1, BATCHING);
    f.run_to_the_end();
    assert_eq!(
        read_from(0),
        new0.len() as u64,
        "partition 0 after the restart"
    );
    assert_eq!(
        read_from(1),
        new1.len() as u64,
        "partition 1: what arrived after the first start, and none of its history"
    );
}

#[test]
fn a_first_run_under_latest_killed_before_its_first_commit_resumes_where_it_started() {
    // `start_from = "latest"`: the pipeline bills what arrives from its first start on. The
    // first run (a cluster of two processes) reads what arrives after it started, then dies by
    // SIGKILL before it has committed any of it (epochs close by size only, and the records never fill one). The
    // restart must bill those records: it skipped them, starting from the end as it was then,
    // since nothing recorded where the first run had started.
    let f = Fixture::new("kafka-latest-killed", 4_000, 2, "30s");
    let d = f.dir.path();
    let brokers = f.broker.brokers();
    let (arrived, latest) = f.history_then_latest();
    std::fs::write(
        d.join("kafka.toml"),
        latest.replace(
            "epoch_interval = \"100ms\"\n",
            "epoch_interval = \"600s\"\nmax_epoch_bytes = 268435456\n",
        ),
    )
    .unwrap();
    // A cluster of two processes, process 1 started first: it waits for process 0 to record
    // where the pipeline starts, and starts there too.
    write_hostfile(d, 2);
    let mut one = f.spawn_logging_to(
        "meterflow-1.log",
        "kafka.toml",
        &["-n", "2", "-p", "1", "--hostfile", "hosts"],
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut zero = f.spawn_logging_to(
        "meterflow-0.log",
        "kafka.toml",
        &["-n", "2", "-p", "0", "--hostfile", "hosts"],
    );
    for log in ["meterflow-0.log", "meterflow-1.log"] {
        wait_for_log(&d.join(log), "run started");
    }
    produce(&brokers, TOPIC, 2, &arrived, BATCHING);
    // Time for the run to read them; what the test checks holds whether it has or not.
    std::thread::sleep(Duration::from_secs(2));
    for run in [&mut zero, &mut one] {
        assert!(
            run.try_wait().unwrap().is_none(),
            "the first run is reading"
        );
    }
    assert_eq!(
        count(&f.ch, "SELECT max(epoch) FROM meterflow.sink_progress"),
        0,
        "nothing past the start is committed"
    );
    for run in [&mut zero, &mut one] {
        run.kill().unwrap(); // SIGKILL
        run.wait().unwrap();
    }

    let restart = latest.replace("exit_when_idle = \"30s\"", "exit_when_idle = \"3s\"");
    std::fs::write(d.join("kafka.toml"), restart).unwrap();
    f.run_to_the_end();
    assert_eq!(
        count(
            &f.ch,
            "SELECT count() FROM (SELECT offset FROM meterflow.usage_events UNION ALL SELECT offset FROM meterflow.rejections UNION ALL SELECT offset FROM meterflow.duplicates)"
        ),
        arrived.len() as u64,
        "every record that arrived after the first start, once, and none of the history"
    );
}

#[test]
fn start_from_latest_into_files_bills_what_arrives_after_the_start_and_none_of_the_history() {
    // Without ClickHouse the start is not recorded (nothing to resume into), but the run
    // starts from it as from a commit: every partition at its end, the first epoch after it.
    let f = Fixture::new("kafka-latest-files", 2_000, 2, "6s");
    let d = f.dir.path();
    let (arrived, latest) = f.history_then_latest();
    std::fs::write(
        d.join("files.toml"),
        latest + "\n[dedup]\nhorizon = \"40d\"\n",
    )
    .unwrap();
    let out = d.join("files-out");
    let log = std::fs::File::create(d.join("files.log")).unwrap();
    let mut run = Running(
        Command::new(meterflow_bin())
            .args(["run", "-q", "-c"])
            .arg(d.join("catalog"))
            .arg("-o")
            .arg(&out)
            .arg("--config")
            .arg(d.join("files.toml"))
            .env("METERFLOW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for_log(&d.join("files.log"), "run started");
    produce(&f.broker.brokers(), TOPIC, 2, &arrived, BATCHING);
    assert!(run.wait().unwrap().success(), "the run exits when idle");
    let read: usize = ["usage_events", "rejections", "duplicates"]
        .iter()
        .map(|t| read_table(&out, t).unwrap().len())
        .sum();
    assert_eq!(
        read,
        arrived.len(),
        "every record that arrived after the start, once, and none of the history"
    );
    let invoiced = read_table(&out, "invoice_lines").unwrap();
    assert!(!invoiced.is_empty(), "what arrived is billed");
}

#[test]
fn a_broker_outage_mid_stream_loses_nothing() {
    let mut f = Fixture::new("kafka-outage", 30_000, 2, "6s");
    let half = f.lines.len() / 2;
    f.produce(0..half);
    let mut child = f.spawn();
    std::thread::sleep(Duration::from_millis(1500));
    f.broker.kill();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "meterflow waits for the broker instead of failing or finishing early"
    );
    f.broker.resume();
    f.produce(half..f.lines.len());
    assert!(child.wait().unwrap().success());
    f.assert_matches_oracle("after a broker outage");
}

#[test]
fn a_stopped_clickhouse_pauses_reading_at_max_unwritten_bytes_and_loses_nothing() {
    let f = Fixture::new("kafka-clickhouse-stopped", 20_000, 2, "4s");
    let d = f.dir.path();
    let port = meterflow_tests::servers::free_port();
    // Small bounds, so that the few megabytes of this stream are many times what may wait.
    let (max_unwritten, max_epoch) = (65_536u64, 65_536u64);
    let config = std::fs::read_to_string(d.join("kafka.toml"))
        .unwrap()
        .replace(
            "[kafka]\n",
            &format!("[kafka]\nmax_epoch_bytes = {max_epoch}\n"),
        );
    std::fs::write(
        d.join("paused.toml"),
        format!("[input]\nmax_unwritten_bytes = {max_unwritten}\nmax_epochs_ahead = 1000000\n\n[metrics]\naddr = \"127.0.0.1:{port}\"\n\n{config}"),
    )
    .unwrap();
    // Two workers, each of which must pause at the byte bound by itself: commit records are
    // written on a thread of their own, so worker 0 does not block on the stopped server
    // either. The dedup bound (`max_epochs_ahead`) is lifted so that only the byte bound holds.
    let mut child = f.spawn_logging_to("meterflow.log", "paused.toml", &["-w", "2"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while meterflow_tests::servers::http_get(&format!("127.0.0.1:{port}"), "/readyz")
        .map_or(true, |(status, _)| status != 200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "meterflow never got ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // ClickHouse stops answering (an insert in flight hangs), then the whole stream arrives.
    let pid = f.ch.pid().unwrap().to_string();
    run_ok(Command::new("kill").args(["-STOP", &pid]));
    f.produce(0..f.lines.len());
    // A reader says so 5 s into its pause; a loaded machine may take a while to reach it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let log = loop {
        let log = std::fs::read_to_string(d.join("meterflow.log")).unwrap();
        if log.matches("reading paused for 5 s").count() >= 2
            || std::time::Instant::now() > deadline
        {
            break log;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    run_ok(Command::new("kill").args(["-CONT", &pid]));
    let paused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reading paused for 5 s"))
        .collect();
    assert_eq!(
        paused.len(),
        2,
        "each of the two readers pauses once at input.max_unwritten_bytes while ClickHouse is stopped: {log}"
    );
    // What it held when it paused: the bound, plus the chunk that crossed it (at most
    // max_epoch_bytes and one message more, a batch of 20 records).
    let largest = 20 * f.lines.iter().map(String::len).max().unwrap() as u64;
    for line in &paused {
        let held: u64 = line
            .split(" unwritten_bytes=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
            .expect("the pause names the bytes held");
        assert!(
            held >= max_unwritten && held <= max_unwritten + max_epoch + largest,
            "{line}"
        );
    }
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(d.join("meterflow.log")).unwrap();
    assert!(log.contains("reading resumed"), "{log}");
    f.assert_matches_oracle("after ClickHouse was stopped with the stream waiting in the broker");
}

/// Waits until `sql` counts at least `n`.
/// Waits (up to a minute) until the log at `path` says `what`.
fn wait_for_log(path: &std::path::Path, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(what)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never said `{what}`",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for(ch: &ClickHouseServer, sql: &str, n: u64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count(ch, sql) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_catalog_published_to_its_topic_reaches_the_running_pipeline_and_re_rates_billed_usage() {
    catalog_published_mid_stream("kafka-catalog", 1);
}

#[test]
fn a_catalog_published_to_its_topic_reaches_every_process_of_a_running_cluster() {
    catalog_published_mid_stream("kafka-catalog-cluster", 2);
}

/// Publishes a backdated rate-card version while `processes` processes (two workers in all) read
/// Kafka into ClickHouse; the running pipeline must switch in place, re-rate what it billed, and
/// end with the tables of a run that had the new catalog from the start.
fn catalog_published_mid_stream(name: &str, processes: usize) {
    // October events; the change adds a version effective on the 19th while the pipeline runs.
    let f = Fixture::starting(name, 8_000, 2, "5s", "2026-10-04T00:00:00Z");
    let d = f.dir.path();
    let config = d.join("kafka.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    // Two workers: both readers must finish at the switch, and resume from the same commit.
    // The second half is produced while the resumed readers start: each partition holds the
    // watermark until it is idle, so neither worker's share carries it past the other's. (When
    // a partition stopped holding as soon as it was read to its end, a run of this test lost
    // 564 events as too old; the hold itself is tested on its own below.)
    text = text.replace(
        "[workers]\n",
        &format!("[workers]\nthreads = {}\n", 2 / processes),
    );
    text.push_str("\n[catalog]\ntopic = \"catalog\"\ncheck_interval = \"300ms\"\n");
    std::fs::write(&config, &text).unwrap();
    // Process 1 of the cluster does not look for changes itself within the test: it must stop
    // because process 0 saw one.
    std::fs::write(
        d.join("kafka-1.toml"),
        text.replace("check_interval = \"300ms\"", "check_interval = \"1h\""),
    )
    .unwrap();
    write_hostfile(d, processes);
    let start = || {
        f.spawn_processes(processes, |p| match p {
            0 => "kafka.toml",
            _ => "kafka-1.toml",
        })
    };
    let publish_with = |actor: &str, flags: &[&str]| {
        let out = run_ok(
            Command::new(meterflow_bin())
                .args(["catalog", "publish"])
                .args(flags)
                .arg(d.join("catalog"))
                .arg("--config")
                .arg(&config)
                .env("METERFLOW_ACTOR", actor),
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let publish = |actor: &str| publish_with(actor, &[]);
    let first = publish("alice");
    assert!(first.contains("published"), "{first}");
    // Publishing the same catalog again changes no entry.
    assert!(publish("alice").contains("published 0 changed entries"));

    let half = f.lines.len() / 2;
    f.produce(0..half);
    let mut children = start();
    wait_for(
        &f.ch,
        "SELECT count() FROM meterflow.line_usage",
        20,
        "usage billed under the first catalog",
    );
    backdate(&d.join("catalog"), "2026-10-19T00:00:00.000Z");
    // A dry run shows the change field by field and publishes nothing.
    let preview = publish_with("bob", &["--dry-run"]);
    assert!(
        preview.contains("added rate_card `standard` version 3")
            && preview.contains("changed contract `ctr-000002`")
            && preview.contains("would publish 2 changed entries"),
        "{preview}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count(
            &f.ch,
            "SELECT count() FROM meterflow.catalog_changes WHERE actor = 'bob'"
        ),
        0,
        "a dry run reaches no pipeline"
    );
    let second = publish("bob");
    assert!(second.contains("published 2 changed entries"), "{second}");
    wait_for(
        &f.ch,
        "SELECT count() FROM meterflow.catalog_changes WHERE actor = 'bob' AND entity = 'rate_card' AND version = 3",
        1,
        "the running pipeline to take the new catalog",
    );
    f.produce(half..f.lines.len());
    for child in &mut children {
        assert!(child.wait().unwrap().success());
    }
    let logs: Vec<String> = (0..processes)
        .map(|p| std::fs::read_to_string(d.join(format!("meterflow-{p}.log"))).unwrap())
        .collect();
    assert!(
        logs[0].contains("the catalog changed"),
        "the change reached the running process"
    );
    if processes > 1 {
        assert!(
            !logs[1].contains("the catalog changed"),
            "process 1 is not watching within the test"
        );
    }
    for (p, log) in logs.iter().enumerate() {
        assert!(
            log.contains("drained and committed; resuming with the new catalog"),
            "process {p} switched in place"
        );
    }
    // The switch, as the logs tell it (shown with --no-capture).
    for line in logs.iter().flat_map(|l| l.lines()).filter(|l| {
        [
            "the catalog changed",
            "drained and committed",
            "run started",
            "re-rating",
        ]
        .iter()
        .any(|m| l.contains(m))
    }) {
        println!("{line}");
    }
    assert!(
        count(
            &f.ch,
            "SELECT count() FROM meterflow.line_usage WHERE sign = -1 AND generation > 1"
        ) > 0,
        "billed usage was re-rated with signed corrections"
    );
    // The tables equal a run that had the new catalog from the start.
    f.assert_matches_oracle("after a catalog published mid-stream");
    assert_one_generation_per_start(&f.ch);
    let changes = catalog_log(&f.ch);
    assert!(
        changes.contains("alice  added rate_card `standard` version 2"),
        "{changes}"
    );
    assert!(
        changes.contains("bob  added rate_card `standard` version 3"),
        "{changes}"
    );
    assert!(
        changes.contains("bob  changed contract `ctr-000002`"),
        "{changes}"
    );
}

/// Restarts under the catalog of the last commit re-rate nothing. (The generated catalog changes a
/// rate card mid-period; its lines were once re-read from `usage_events` on every restart.)
fn assert_no_re_rating(log: &str) {
    assert!(
        log.contains("resuming after the last committed epoch"),
        "the runs restarted"
    );
    assert!(
        !log.contains("re-rating usage"),
        "a restart under an unchanged catalog re-rated usage"
    );
}

/// Every start of the pipeline (a process, a cluster, or a switch to a new catalog) writes with one
/// new generation, and the latest generation holds the latest commit, which the next start
/// resumes from. (Each process of a cluster once started a generation of its own: the later one
/// hid the commits of the one that billed, and a restart re-read everything since.)
fn assert_one_generation_per_start(ch: &ClickHouseServer) {
    let rows = ch
        .query("SELECT generation, max(epoch) FROM meterflow.sink_progress GROUP BY generation ORDER BY generation FORMAT TSV")
        .unwrap();
    let progress: Vec<(u32, u64)> = rows
        .lines()
        .map(|l| {
            let (g, e) = l.split_once('\t').unwrap();
            (g.parse().unwrap(), e.parse().unwrap())
        })
        .collect();
    let latest = progress.iter().map(|(_, e)| *e).max().unwrap();
    assert_eq!(
        progress.last().unwrap().1,
        latest,
        "the latest generation holds the latest commit: {progress:?}"
    );
    let strays = count(
        ch,
        "SELECT count() FROM meterflow.usage_events WHERE generation NOT IN (SELECT generation FROM meterflow.sink_progress)",
    );
    assert_eq!(
        strays, 0,
        "usage_events rows of a generation that never committed"
    );
}

/// 3000 generated records (5% invalid) produced to a two-partition topic of librdkafka's mock
/// cluster, each message with `header` if given.
fn on_mock_cluster(
    name: &str,
    header: Option<(&str, &str)>,
) -> (
    Scratch,
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    Vec<String>,
) {
    let dir = Scratch::new(name);
    generate(dir.path(), 3000, 20, 3, &["--invalid-rate", "0.05"]);
    let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let mut producer = UsageProducer::new(&cluster.bootstrap_servers(), TOPIC, 2, BATCHING);
    if let Some((k, v)) = header {
        producer = producer.with_header(k, v);
    }
    producer.send_lines(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    producer.flush();
    (dir, cluster, lines)
}

#[test]
fn rejections_keep_the_kafka_key_and_headers() {
    // librdkafka's mock cluster: tansu's sqlite storage slows to a crawl on record headers.
    let (dir, cluster, lines) = on_mock_cluster("kafka-headers", Some(("producer", "billing-api")));
    let d = dir.path();
    let ch = ClickHouseServer::start(d);
    meterflow_ok(&["migrate", "--clickhouse-url", &ch.url()]);
    let config = d.join("kafka.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopics = [\"{TOPIC}\"]\nexit_when_idle = \"2s\"\n",
            cluster.bootstrap_servers()
        ),
    )
    .unwrap();
    meterflow_ok(&[
        "run",
        "-c",
        d.join("catalog").to_str().unwrap(),
        "-o",
        d.join("out").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--clickhouse-url",
        &ch.url(),
        "-q",
    ]);
    let counts = ch
        .query("SELECT count(), countIf(kafka_key != ''), countIf(kafka_headers = '{\"producer\":\"billing-api\"}') FROM meterflow.rejections FORMAT TSV")
        .unwrap();
    let n: Vec<u64> = counts
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(n[0] > 50, "the stream has rejections: {counts}");
    assert!(n[1] > 0, "rejections keep their message's key: {counts}");
    assert_eq!(n[2], n[0], "every rejection keeps its message's headers");
    // Accepted events keep them too.
    let counts = ch
        .query("SELECT count(), countIf(kafka_key != ''), countIf(kafka_headers = '{\"producer\":\"billing-api\"}') FROM meterflow.usage_events FORMAT TSV")
        .unwrap();
    let n: Vec<u64> = counts
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(n[0] > 2000, "the stream has accepted events: {counts}");
    assert!(
        n[1] > 0,
        "accepted events keep their message's key: {counts}"
    );
    assert_eq!(
        n[2], n[0],
        "every accepted event keeps its message's headers"
    );
    let received = ch
        .query("SELECT visitParamExtractUInt(counts, 'received') FROM meterflow.sink_progress ORDER BY generation DESC, epoch DESC LIMIT 1 FORMAT TSV")
        .unwrap();
    assert_eq!(
        received.trim(),
        lines.len().to_string(),
        "every record was read"
    );
}

#[test]
fn entitlement_alerts_are_published_to_a_kafka_topic_keyed_by_dedup_key() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let dir = Scratch::new("kafka-alerts");
    let d = dir.path();
    generate(d, 20000, 40, 7, &["--correction-rate", "0.03", "--terms"]);
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("signals", 1, 1).unwrap();
    let config = d.join("alerts.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n\n[alerts]\nkafka_topic = \"signals\"\n",
            cluster.bootstrap_servers()
        ),
    )
    .unwrap();
    meterflow_ok(&[
        "run",
        "-i",
        d.join("events.jsonl").to_str().unwrap(),
        "-c",
        d.join("catalog").to_str().unwrap(),
        "-o",
        d.join("out").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "-q",
    ]);
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "alerts-test")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    consumer.subscribe(&["signals"]).unwrap();
    let mut open = std::collections::BTreeSet::new();
    let mut messages = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the topic was not read to its end"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                messages += 1;
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                assert_eq!(v["dedup_key"], key.as_str());
                match v["status"].as_str().unwrap() {
                    "firing" => assert!(open.insert(key), "{v}: published twice"),
                    "resolved" => assert!(open.remove(&key), "{v}: resolved before firing"),
                    other => panic!("status {other}"),
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    assert!(messages > 0, "the stream crosses entitlements");
    // Entitlement signals and anomalies (the generated catalog has costs) alike.
    let current = meterflow_tests::oracle::open_alert_keys(&d.join("out"));
    assert_eq!(open, current, "what stays open is what the table holds");
}

#[test]
fn a_partition_a_producer_is_still_writing_holds_the_watermark_until_it_is_idle() {
    // Twenty days of events, in order, none late. Partition 0's share is waiting when meterflow
    // starts; partition 1's arrives three seconds later, while partition 1 is read to its end.
    // Read to its end but not yet idle (`kafka.idle_after`), partition 1 holds the watermark, so
    // its events are judged as a file read in time order judges them. A partition that stopped
    // holding as soon as it was at its end (`idle_after = "0s"`) lets partition 0's burst carry
    // the watermark days ahead, and partition 1's first days become too old to bill.
    let dir = Scratch::new("kafka-idle");
    let d = dir.path();
    generate(
        d,
        3000,
        20,
        11,
        &[
            "--days",
            "20",
            "--dup-rate",
            "0",
            "--late-rate",
            "0",
            "--invalid-rate",
            "0",
        ],
    );
    let text = std::fs::read_to_string(d.join("events.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let share = |p: i32| -> Vec<&str> {
        lines
            .iter()
            .copied()
            .filter(|l| partition_of_record(l, 2) == Some(p))
            .collect()
    };
    let (first, second) = (share(0), share(1));
    assert!(!first.is_empty() && !second.is_empty());
    assert_eq!(
        first.len() + second.len(),
        lines.len(),
        "every record has a key"
    );
    let cluster = MockCluster::new(1).unwrap();
    let run = |name: &str, idle_after: &str| -> serde_json::Value {
        cluster.create_topic(name, 2, 1).unwrap();
        let config = d.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbrokers = \"{}\"\ntopics = [\"{name}\"]\nexit_when_idle = \"6s\"\nidle_after = \"{idle_after}\"\n",
                cluster.bootstrap_servers()
            ),
        )
        .unwrap();
        let mut producer = UsageProducer::new(&cluster.bootstrap_servers(), name, 2, BATCHING);
        producer.send_lines(&first);
        producer.flush();
        let out = d.join(name);
        let child = Command::new(meterflow_bin())
            .args(["run", "-q", "-c"])
            .arg(d.join("catalog"))
            .arg("-o")
            .arg(&out)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = Running(child);
        std::thread::sleep(Duration::from_secs(3));
        producer.send_lines(&second);
        producer.flush();
        assert!(child.wait().unwrap().success());
        meterflow_tests::oracle::counts_json(&out)
    };
    let held = run("held", "10s");
    assert_eq!(held["received"], lines.len() as u64);
    assert_eq!(
        (&held["accepted"], &held["rejected"]),
        (&serde_json::json!(lines.len()), &serde_json::json!(0)),
        "every event billed: {held}"
    );
    let unheld = run("unheld", "0s");
    let too_old = unheld["rejected_by_reason"]["timestamp_too_old"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        too_old > 0,
        "without the hold, partition 1's first days are too old: {unheld}"
    );
}

/// `/metrics` of a pipeline reading Kafka: scraped while it runs, the counters reach every record
/// of the topic, and equal what `counts.json` says when the run ends.
#[test]
fn metrics_are_served_while_kafka_is_read_and_agree_with_counts_json() {
    let (dir, cluster, lines) = on_mock_cluster("kafka-metrics", None);
    let d = dir.path();
    let port = meterflow_tests::servers::free_port();
    let config = d.join("kafka.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopics = [\"{TOPIC}\"]\nexit_when_idle = \"5s\"\n\n[metrics]\naddr = \"127.0.0.1:{port}\"\n",
            cluster.bootstrap_servers()
        ),
    )
    .unwrap();
    let out = d.join("out");
    let mut child = Command::new(meterflow_bin())
        .args([
            "run",
            "-c",
            d.join("catalog").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "-q",
        ])
        .env("METERFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map(Running)
        .unwrap();
    let get = |path: &str| -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: meterflow\r\n\r\n").ok()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).ok()?;
        Some(text)
    };
    let scrape = || get("/metrics");
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    // Every record read, and each accounted for (received = accepted + rejected + duplicates).
    let lag_series = |p: &str| {
        format!(
            "meterflow_metering_lag_seconds{{partition=\"{p}\",quantile=\"1\",source=\"{TOPIC}\",stage=\"event_to_committed\"}}"
        )
    };
    let settled = |text: &str| {
        let rejected: f64 = text
            .lines()
            .filter(|l| l.starts_with("meterflow_records_rejected_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let received = value(text, "meterflow_records_received_total");
        received == lines.len() as f64
            && received
                == value(text, "meterflow_events_accepted_total")
                    + value(text, "meterflow_records_duplicate_total")
                    + rejected
            && ["0", "1"].iter().all(|p| value(text, &lag_series(p)) > 0.0)
    };
    let mut last = String::new();
    for _ in 0..300 {
        std::thread::sleep(Duration::from_millis(100));
        last = scrape().unwrap_or_default();
        if settled(&last) {
            break;
        }
    }
    assert!(last.starts_with("HTTP/1.1 200 OK"), "{last}");
    assert_eq!(
        value(&last, "meterflow_records_received_total"),
        lines.len() as f64,
        "every record of the topic is counted while the pipeline runs"
    );
    // Probes for an orchestrator: alive, and ready while it reads and commits.
    for probe in ["/healthz", "/readyz"] {
        let answer = get(probe).unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{probe}: {answer}");
    }
    assert!(child.0.wait().unwrap().success());
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("counts.json")).unwrap()).unwrap();
    for (series, field) in [
        ("meterflow_records_received_total", "received"),
        ("meterflow_events_accepted_total", "accepted"),
        ("meterflow_events_billable_total", "billable"),
        ("meterflow_records_duplicate_total", "duplicates"),
        ("meterflow_events_late_total", "late"),
        ("meterflow_events_out_of_order_total", "out_of_order"),
        ("meterflow_corrections_total", "corrections"),
        ("meterflow_input_bytes_total", "bytes"),
    ] {
        assert_eq!(
            value(&last, series),
            counts[field].as_f64().unwrap(),
            "{series}"
        );
    }
    // The capture gauge is the share of sent usage that reached billing.
    let (billable, rejected) = (
        counts["billable"].as_f64().unwrap(),
        counts["rejected"].as_f64().unwrap(),
    );
    let capture = value(&last, "meterflow_event_capture_ratio");
    assert!(
        (capture - billable / (billable + rejected)).abs() < 1e-9,
        "{capture}"
    );
    let by_reason = counts["rejected_by_reason"].as_object().unwrap();
    assert!(!by_reason.is_empty(), "the stream has rejections");
    for (reason, n) in by_reason {
        let series = format!("meterflow_records_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&last, &series), n.as_f64().unwrap(), "{series}");
    }
    // The metering lag covers every valid event read, retries included (this stream has no
    // record that deduplication rejects), per partition read.
    let lag = &counts["metering_lag_ms"];
    let valid = counts["accepted"].as_u64().unwrap() + counts["duplicates"].as_u64().unwrap();
    for stage in [
        "event_to_received",
        "received_to_committed",
        "event_to_committed",
    ] {
        assert_eq!(lag["all"][stage]["events"].as_u64(), Some(valid), "{stage}");
    }
    let partitions = lag["partitions"].as_object().unwrap();
    assert_eq!(partitions.len(), 2, "{lag}");
    let through = |p: &str| {
        lag["partitions"][p]["event_to_committed"]["max_ms"]
            .as_f64()
            .unwrap()
    };
    for p in ["0", "1"] {
        let name = format!("{TOPIC}#{p}");
        // Served while the run went on: at most what the run ended with (a maximum only grows).
        let served = (value(&last, &lag_series(p)) * 1000.0).round();
        assert!(
            served > 0.0 && served <= through(&name),
            "{served} against {}",
            through(&name)
        );
        assert!(
            through(&name)
                >= lag["partitions"][&name]["event_to_received"]["max_ms"]
                    .as_f64()
                    .unwrap()
        );
    }
    assert!(value(&last, "meterflow_watermark_lag_seconds") > 0.0);
}

/// Fixes of rejected records replayed to the pipeline's topic under their original event ids:
/// `quarantine replay` produces them and waits, the pipeline bills them, their rejections are
/// marked resolved (once), and the same fixes sent again are duplicates, billed nothing more.
#[test]
fn fixes_sent_to_the_topic_are_billed_once_and_resolve_their_rejections() {
    let (dir, cluster, _) = on_mock_cluster("kafka-quarantine", None);
    let d = dir.path();
    let ch = ClickHouseServer::start(d);
    let url = ch.url();
    meterflow_ok(&["migrate", "--clickhouse-url", &url]);
    let config = d.join("kafka.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopics = [\"{TOPIC}\"]\nexit_when_idle = \"2s\"\n\n[dedup]\nhorizon = \"120d\"\n",
            cluster.bootstrap_servers()
        ),
    )
    .unwrap();
    let (catalog, out, cfg) = (d.join("catalog"), d.join("out"), config.to_str().unwrap());
    let run = || {
        meterflow_ok(&[
            "run",
            "-c",
            catalog.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--config",
            cfg,
            "--clickhouse-url",
            &url,
            "-q",
        ])
    };
    run();
    let billed = || meterflow_tests::oracle::billed_events(&ch);
    let before = billed();
    let fixed = meterflow_tests::oracle::unit_mismatch_fixes(&ch);
    let n = fixed.len() as u64;
    assert!(n >= 5, "{n} unit mismatches");
    let fixes = d.join("fixes.jsonl");
    std::fs::write(&fixes, fixed.join("\n") + "\n").unwrap();
    let replay = |wait: &str| {
        let mut a = vec![
            "quarantine",
            "replay",
            "-c",
            catalog.to_str().unwrap(),
            "--config",
            cfg,
        ];
        a.extend([
            "--clickhouse-url",
            &url,
            "--fixed",
            fixes.to_str().unwrap(),
            "--wait",
            wait,
        ]);
        Command::new(meterflow_bin())
            .args(&a)
            .env("METERFLOW_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The replay sends the fixes and waits; the pipeline, started once they are sent, bills
    // them; the replay sees them committed, resolves them and says so.
    let mut replaying = replay("2m");
    let mut said = std::io::BufReader::new(replaying.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut said, &mut line).unwrap();
    assert_eq!(line, format!("sent {n} fixes to {TOPIC}\n"));
    run();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut said, &mut rest).unwrap();
    assert!(replaying.wait().unwrap().success());
    assert!(
        rest.contains(&format!("{n} accepted and billed (their rejections resolved), 0 rejected again, 0 not committed yet")),
        "{rest}"
    );
    assert_eq!(billed(), before + n, "each fix billed");
    let resolve = || {
        String::from_utf8_lossy(
            &meterflow_ok(&["quarantine", "resolve", "--clickhouse-url", &url]).stdout,
        )
        .into_owned()
    };
    assert_eq!(
        count(&ch, &format!("SELECT count() FROM meterflow.quarantine_resolutions WHERE replay_source = '{TOPIC}' AND reason = 'unit_mismatch' AND sign = 1")),
        n
    );
    // Each resolution points at the rejected record and at the accepted fix.
    assert_eq!(
        count(&ch, "SELECT count() FROM meterflow.quarantine_resolutions AS q ANY INNER JOIN (SELECT event_id, source AS rejected_source, offset AS rejected_offset FROM meterflow.rejections) USING event_id, rejected_source, rejected_offset"),
        n
    );
    let said = resolve();
    assert!(said.contains("0 rejections resolved"), "{said}");
    // Replayed again: every fix's rejection is resolved already, so nothing is sent.
    let again = replay("1s").wait_with_output().unwrap();
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(again.contains("nothing to replay"), "{again}");
    // The same fixes sent again by a producer: duplicates.
    let send = || {
        let mut p = UsageProducer::new(&cluster.bootstrap_servers(), TOPIC, 2, BATCHING);
        p.send_lines(&fixed.iter().map(String::as_str).collect::<Vec<_>>());
        p.flush();
    };
    let duplicates = count(&ch, "SELECT count() FROM meterflow.duplicates");
    send();
    run();
    assert_eq!(billed(), before + n, "billed once");
    assert_eq!(
        count(&ch, "SELECT count() FROM meterflow.duplicates"),
        duplicates + n
    );
    let listed = meterflow_ok(&[
        "quarantine",
        "list",
        "--clickhouse-url",
        &url,
        "--reason",
        "unit_mismatch",
    ]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&format!("unit_mismatch: {n} rejected, {n} resolved")),
        "{listed}"
    );
}

/// Events signed by the Python example producer (`deploy/examples/signing_producer.py`: decimal
/// quantities, time zones, metadata, voids), sent through a broker: meterflow verifies every one
/// under `require_signature`; the same events with one quantity changed fail their signature.
#[test]
fn events_signed_by_the_python_producer_verify_through_the_broker() {
    let dir = Scratch::new("python-signing");
    let d = dir.path();
    let signed = signed_by_python_producer(d, "py-producer-s3cret", 200);
    let lines: Vec<&str> = signed.iter().map(String::as_str).collect();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let mut producer = UsageProducer::new(&cluster.bootstrap_servers(), TOPIC, 2, BATCHING);
    producer.send_lines(&lines);
    producer.flush();
    std::fs::write(
        d.join("signed.toml"),
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopics = [\"{TOPIC}\"]\nexit_when_idle = \"2s\"\n\n[integrity]\nmode = \"require_signature\"\n\n[integrity.keys]\n\"2026-11\" = {{ env = \"METERFLOW_TEST_PY_KEY\" }}\n",
            cluster.bootstrap_servers()
        ),
    )
    .unwrap();
    run_ok(
        Command::new(meterflow_bin())
            .args(["run", "-c", d.join("catalog").to_str().unwrap()])
            .args(["-o", d.join("out").to_str().unwrap()])
            .args(["--config", d.join("signed.toml").to_str().unwrap(), "-q"])
            .env("METERFLOW_TEST_PY_KEY", "py-producer-s3cret")
            .env("METERFLOW_LOG", "warn"),
    );
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/counts.json")).unwrap()).unwrap();
    assert_eq!(counts["received"], lines.len() as u64, "{counts}");
    assert_eq!(counts["accepted"], (lines.len() - 1) as u64, "{counts}");
    assert_eq!(counts["rejected_by_reason"]["bad_signature"], 1, "{counts}");
    assert!(counts["corrections"].as_u64().unwrap() > 0, "{counts}");
}
