//! Helpers for meterflow's integration tests: find the built binary, make scratch directories,
//! run commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod k8s;
pub mod kafka;
pub mod oracle;
pub mod servers;
pub mod signed_tables;

/// The `meterflow` binary built alongside these tests.
pub fn meterflow_bin() -> PathBuf {
    built_bin("meterflow")
}

/// A binary of the workspace (`meterflow`, the benchmarks' `baseline`) built alongside these
/// tests.
pub fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (cargo build --workspace --all-targets)",
        bin.display()
    );
    bin
}

/// A fresh scratch directory under the target directory, removed when the test passes.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let exe = std::env::current_exe().expect("test executable path");
        let base = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile directory")
            .join("scratch");
        let dir = base.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    /// Kept when the test failed, for its logs and outputs.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("scratch directory kept: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs meterflow with `args`; returns the output whatever the exit status.
pub fn meterflow(args: &[&str]) -> Output {
    Command::new(meterflow_bin())
        .args(args)
        .env("METERFLOW_LOG", "warn")
        .output()
        .expect("meterflow runs")
}

/// Runs `command` to its end and insists it succeeds (its stderr in the failure).
pub fn run_ok(command: &mut Command) -> Output {
    let out = command.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs meterflow and insists it succeeds.
pub fn meterflow_ok(args: &[&str]) -> Output {
    let out = meterflow(args);
    assert!(
        out.status.success(),
        "meterflow {args:?} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `meterflow gen` into `out`: `events` records of `customers` customers from `seed`, with the
/// other `gen` flags in `flags`.
pub fn generate(out: &Path, events: u64, customers: u32, seed: u64, flags: &[&str]) {
    let (events, customers, seed) = (events.to_string(), customers.to_string(), seed.to_string());
    let mut args = vec![
        "gen",
        "--out",
        out.to_str().expect("a UTF-8 path"),
        "--events",
        &events,
        "--customers",
        &customers,
        "--seed",
        &seed,
    ];
    args.extend_from_slice(flags);
    meterflow_ok(&args);
}

/// The generated catalog with a backdated change: version 3 of `standard`, effective in the
/// past (`effective`, where events are already billed), with other prices, and `ctr-000002`
/// pinned to version 1 (grandfathered back). Returns the new version's TOML.
pub fn backdate(catalog: &std::path::Path, effective: &str) -> String {
    let path = catalog.join("catalog.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let v2 = text
        .find("id = \"standard\"\nversion = 2")
        .expect("version 2 of standard");
    let start = text[..v2].rfind("[[rate_card]]").unwrap();
    let end = start + 1 + text[start + 1..].find("[[rate_card]]").unwrap();
    let v3 = text[start..end]
        .replace("version = 2", "version = 3")
        .replace("\"0.35\"", "\"0.45\"")
        .replace("\"0.000025\"", "\"0.00003\"")
        .replace("\"0.09\"", "\"0.11\"")
        .replace("\"0.06\"", "\"0.08\"")
        .replace("percent = \"2.5\"", "percent = \"2.7\"");
    let from = v3.find("effective_from = \"").unwrap() + "effective_from = \"".len();
    let until = from + v3[from..].find('"').unwrap();
    let v3 = format!("{}{effective}{}", &v3[..from], &v3[until..]);
    let pinned = "id = \"ctr-000002\"\ncustomer = \"cus-000002\"\nrate_card = \"standard\"\n";
    assert!(text.contains(pinned), "ctr-000002 follows standard");
    let changed = format!("{}{v3}{}", &text[..end], &text[end..])
        .replace(pinned, &format!("{pinned}version = 1\n"));
    std::fs::write(&path, changed).unwrap();
    v3
}

/// `events` events for acme's api_calls (and their voids) signed under key id `2026-11` with
/// `key` by the Python example producer (`deploy/examples/signing_producer.py`: decimal
/// quantities, time zones, metadata, voids), plus one more: a signed event whose quantity was
/// changed after signing (a `bad_signature` rejection). Writes the fixture catalog they bill
/// against to `dir/catalog`.
pub fn signed_by_python_producer(dir: &Path, key: &str, events: u32) -> Vec<String> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/signing_producer.py");
    let produced = run_ok(
        Command::new("python3")
            .arg(&script)
            .args([
                "--key-id",
                "2026-11",
                "--customer",
                "acme",
                "--contract",
                "acme-2026",
            ])
            .args(["--sku", "api_calls", "--unit", "requests"])
            .args(["--events", &events.to_string()])
            .env("METERFLOW_KEY", key),
    );
    let text = String::from_utf8(produced.stdout).expect("UTF-8 events");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    assert!(lines.len() > events as usize, "events and their voids");
    let tampered = lines[2].replace(r#""quantity":"0.125""#, r#""quantity":"0.126""#);
    assert_ne!(tampered, lines[2]);
    lines.push(tampered);
    std::fs::create_dir_all(dir.join("catalog")).expect("catalog dir");
    std::fs::write(
        dir.join("catalog/catalog.toml"),
        meterflow_schemas::fixtures::CATALOG,
    )
    .expect("catalog");
    lines
}

/// A spawned `meterflow run` that is killed if the test ends (or fails) while it still runs, so
/// a failed test leaves no process retrying against servers that are gone.
pub struct Running(pub std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Running {
    /// Sends SIGTERM, as Kubernetes and systemd do to stop a process.
    pub fn terminate(&self) {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
    }

    /// Waits for the process to exit, failing the test if it still runs after `limit`.
    pub fn wait_within(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process {} still runs {limit:?} later",
                self.0.id()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A running `meterflow dashboard` on a free loopback port (killed when dropped).
pub struct DashboardProcess {
    pub child: Running,
    /// `127.0.0.1:PORT`, as it printed when it started listening.
    pub addr: String,
}

/// Starts `binary dashboard ARGS --listen 127.0.0.1:0` with `env`, and waits for its address.
pub fn start_dashboard(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> DashboardProcess {
    use std::io::BufRead;
    let mut child = Running(
        Command::new(binary)
            .arg("dashboard")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .env("METERFLOW_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("meterflow dashboard starts"),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("the dashboard prints its address");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    DashboardProcess { child, addr }
}

/// `meterflow demo` under `work/demo`, then the demo's events run into a fresh ClickHouse
/// (migrated) under `work`: the demo directory and the server.
pub fn demo_in_clickhouse(work: &Path) -> (PathBuf, servers::ClickHouseServer) {
    let demo = work.join("demo");
    let text = |p: &Path| p.to_str().expect("a UTF-8 path").to_string();
    meterflow_ok(&["demo", "--dir", &text(&demo)]);
    let ch = servers::ClickHouseServer::start(work);
    let url = ch.url();
    meterflow_ok(&["migrate", "--clickhouse-url", &url]);
    meterflow_ok(&[
        "run",
        "-q",
        "-i",
        &text(&demo.join("events.jsonl")),
        "-c",
        &text(&demo.join("catalog")),
        "--config",
        &text(&demo.join("meterflow.toml")),
        "--clickhouse-url",
        &url,
        // The run's counts and preview, out of the source tree.
        "-o",
        &text(&work.join("ch-out")),
    ]);
    (demo, ch)
}
