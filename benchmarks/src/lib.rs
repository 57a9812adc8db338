//! What meterflow's benchmark harnesses share: the release binary they measure and the cached
//! generated input.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context};

/// When the command line asks for help (`-h` or `--help` anywhere), prints the harness's own
/// header comment (`source`: its file, through `include_str!`), which says what it measures and
/// how it is called, and exits 0.
pub fn help_from_header(source: &str) {
    if !std::env::args().skip(1).any(|a| a == "-h" || a == "--help") {
        return;
    }
    let mut text = String::new();
    for line in source.lines().take_while(|l| l.starts_with("//!")) {
        let line = line.trim_start_matches("//!");
        text.push_str(line.strip_prefix(' ').unwrap_or(line));
        text.push('\n');
    }
    // A closed pipe (`bench --help | head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    std::process::exit(0);
}

/// A binary next to the running one (target/release).
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .expect("own path")
        .with_file_name(name)
}

/// Builds the `meterflow` release binary (a no-op when fresh: it lives in another package) and
/// returns its path.
pub fn meterflow_binary() -> anyhow::Result<PathBuf> {
    let mut cargo = Command::new(env!("CARGO"));
    // This toolchain's own rustc: run outside rustup's proxy, cargo would otherwise call the
    // `rustc` proxy, which picks the toolchain a dependency's rust-toolchain.toml names (and
    // fails where that one is not installed).
    let rustc = Path::new(env!("CARGO")).with_file_name("rustc");
    if rustc.exists() && std::env::var_os("RUSTC").is_none() {
        cargo.env("RUSTC", rustc);
    }
    let status = cargo
        .args([
            "build",
            "--release",
            "-p",
            "meterflow",
            "--bin",
            "meterflow",
        ])
        .status()?;
    ensure!(status.success(), "building meterflow failed");
    Ok(sibling("meterflow"))
}

/// `meterflow gen --out data <flags>` unless `data/events.jsonl` already exists.
pub fn generate_once(meterflow: &Path, data: &Path, flags: &[String]) -> anyhow::Result<()> {
    if data.join("events.jsonl").exists() {
        return Ok(());
    }
    eprintln!("generating into {} ({})", data.display(), flags.join(" "));
    let out = Command::new(meterflow)
        .arg("gen")
        .arg("--out")
        .arg(data)
        .args(flags)
        .output()
        .with_context(|| format!("cannot start {}", meterflow.display()))?;
    ensure!(
        out.status.success(),
        "meterflow gen failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
