//! meterflow as a timely cluster: two processes on loopback compute exactly what one process does.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use meterflow::reports::tables::current_rows;
use meterflow::reports::tables::read_table;
use meterflow_tests::servers::write_hostfile;
use meterflow_tests::{backdate, generate, meterflow_bin, Running, Scratch};

fn lines(out: &Path) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = current_rows(&read_table(out, "invoice_lines").unwrap())
        .into_iter()
        .map(|r| {
            r.into_iter()
                .filter(|(k, _)| k != "version")
                .map(|(_, v)| v)
                .collect()
        })
        .collect();
    v.sort();
    v
}

/// Starts process `p` of the two-process cluster in `dir/hosts` with `args`.
fn spawn_process<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S], p: &str) -> Child {
    Command::new(meterflow_bin())
        .current_dir(dir)
        .args(args)
        .args(["-n", "2", "-p", p, "--hostfile", "hosts"])
        .env("METERFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn two_processes_agree_with_one() {
    let s = Scratch::new("cluster");
    let dir = s.path();
    generate(
        dir,
        20000,
        30,
        11,
        &["--terms", "--correction-rate", "0.03"],
    );
    std::fs::write(dir.join("c.toml"), "[input]\nchunk_bytes = 16384\n").unwrap();
    write_hostfile(dir, 2);
    let args = |out: &str| -> Vec<String> {
        [
            "run",
            "-i",
            "events.jsonl",
            "-c",
            "catalog",
            "-o",
            out,
            "--config",
            "c.toml",
            "-q",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    let spawn = |p: &str| spawn_process(dir, &args("cluster"), p);
    let (p0, p1) = (spawn("0"), spawn("1"));
    for p in [p0, p1] {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let single = Command::new(meterflow_bin())
        .current_dir(dir)
        .args(args("single"))
        .env("METERFLOW_LOG", "warn")
        .output()
        .unwrap();
    assert!(single.status.success());

    let counts = |out: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(out).join("counts.json")).unwrap())
            .unwrap()
    };
    let (c, one) = (counts("cluster"), counts("single"));
    for k in [
        "received",
        "accepted",
        "duplicates",
        "rejected",
        "late",
        "invoice_total_exact",
    ] {
        assert_eq!(c[k], one[k], "{k}");
    }
    assert_eq!(c["received"], 20000);
    // Both processes wrote their share of the per-worker tables.
    assert!(
        dir.join("cluster/usage_events/part-0.csv").exists()
            && dir.join("cluster/usage_events/part-1.csv").exists()
    );
    assert_eq!(
        read_table(&dir.join("cluster"), "usage_events")
            .unwrap()
            .len() as u64,
        c["accepted"].as_u64().unwrap()
    );
    assert_eq!(lines(&dir.join("cluster")), lines(&dir.join("single")));

    // Each process writes the derived rows of its own customers, and every signed table holds
    // what one process holds, row for row after consolidation.
    let signed = meterflow_schemas::tables::outputs()
        .filter(|t| t.output().shape == meterflow_schemas::tables::Shape::Signed);
    for table in signed.map(|t| t.name) {
        let current = |out: &str| {
            let mut v = current_rows(&read_table(&dir.join(out), table).unwrap());
            v.iter_mut().for_each(|r| {
                r.remove("version");
            });
            v.sort();
            v
        };
        assert_eq!(current("cluster"), current("single"), "{table}");
    }
    for table in [
        "invoice_lines",
        "rated_usage",
        "line_usage",
        "usage_buckets",
    ] {
        for part in ["part-0.csv", "part-1.csv"] {
            let path = dir.join("cluster").join(table).join(part);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(text.lines().count() > 1, "{}: no rows", path.display());
        }
    }
    // The run report covers every customer, whichever process wrote their lines.
    let preview = |out: &str| std::fs::read_to_string(dir.join(out).join("invoice_preview.txt"));
    assert_eq!(preview("cluster").unwrap(), preview("single").unwrap());
}

#[test]
fn processes_with_different_catalogs_refuse_to_bill() {
    // Process 1 is given a catalog with a backdated price change that process 0 does not have:
    // together they would bill one customer's usage at two prices. Both stop before reading.
    let s = Scratch::new("cluster-catalogs");
    let dir = s.path();
    generate(dir, 2000, 10, 5, &["--terms"]);
    std::fs::create_dir(dir.join("changed")).unwrap();
    std::fs::copy(
        dir.join("catalog/catalog.toml"),
        dir.join("changed/catalog.toml"),
    )
    .unwrap();
    backdate(&dir.join("changed"), "2026-10-19T00:00:00.000Z");
    write_hostfile(dir, 2);
    let spawn = |p: &str, catalog: &str| {
        let args = [
            "run",
            "-i",
            "events.jsonl",
            "-c",
            catalog,
            "-o",
            "out",
            "-q",
        ];
        spawn_process(dir, &args, p)
    };
    let mut procs = [
        Running(spawn("0", "catalog")),
        Running(spawn("1", "changed")),
    ];
    assert_all_refuse(&mut procs, &["loaded different catalogs", "same catalog"]);
    assert!(!dir.join("out/counts.json").exists(), "nothing was billed");
}

#[test]
fn processes_given_different_inputs_refuse_to_bill() {
    // Process 1 is given half of the file: dealing chunks of different files by offset, the
    // two would read some records twice and others never. Both stop before reading.
    let s = Scratch::new("cluster-inputs");
    let dir = s.path();
    generate(dir, 2000, 10, 5, &[]);
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let half: Vec<&str> = text.lines().take(1000).collect();
    std::fs::write(dir.join("half.jsonl"), half.join("\n") + "\n").unwrap();
    write_hostfile(dir, 2);
    let spawn = |p: &str, input: &str| {
        let args = ["run", "-i", input, "-c", "catalog", "-o", "out", "-q"];
        Running(spawn_process(dir, &args, p))
    };
    let mut procs = [spawn("0", "events.jsonl"), spawn("1", "half.jsonl")];
    assert_all_refuse(&mut procs, &["see different inputs", "same input files"]);
    assert!(!dir.join("out/counts.json").exists(), "nothing was billed");
}

/// Waits for every process to exit, and checks each failed with all of `expect` in its error.
fn assert_all_refuse(procs: &mut [Running], expect: &[&str]) {
    // A process that cannot start waits for its peer forever: give them a deadline (a
    // `Running` child is killed when the test ends).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    for p in procs.iter_mut() {
        let status = loop {
            if let Some(status) = p.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the processes did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let mut err = String::new();
        p.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(!status.success(), "a process billed: {err}");
        assert!(expect.iter().all(|e| err.contains(e)), "{err}");
    }
}

/// Process 1 of a two-process cluster whose process 0 is never started (as when it dies while
/// the cluster forms), with a join timeout of 2 s.
fn lonely_process(name: &str) -> (Scratch, Running) {
    let s = Scratch::new(name);
    let dir = s.path();
    generate(dir, 1000, 5, 3, &[]);
    std::fs::write(dir.join("c.toml"), "[workers]\njoin_timeout = \"2s\"\n").unwrap();
    write_hostfile(dir, 2);
    let args = [
        "run",
        "-i",
        "events.jsonl",
        "-c",
        "catalog",
        "-o",
        "out",
        "--config",
        "c.toml",
        "-q",
    ];
    let lonely = Running(spawn_process(dir, &args, "1"));
    (s, lonely)
}

#[test]
fn a_process_whose_peer_never_connects_says_so_and_stops() {
    // Process 1 must not wait for its peer forever.
    let (_s, lonely) = lonely_process("cluster-lonely");
    // Names the process that did not connect.
    assert_all_refuse(
        &mut [lonely],
        &["the cluster did not form", "process 0 at 127.0.0.1:"],
    );
}

#[test]
fn a_process_whose_logs_nobody_reads_still_stops_when_the_cluster_does_not_form() {
    // As above, with stderr closed: whatever read the logs went away. Writing the error must not
    // be what fails, or the process waits for its peer for ever and ignores SIGTERM too.
    let (s, mut lonely) = lonely_process("cluster-lonely-unread");
    drop(lonely.stderr.take());
    let status = lonely.wait_within(std::time::Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(
        !s.path().join("out/counts.json").exists(),
        "nothing was billed"
    );
}
