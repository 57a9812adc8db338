//! Helpers for meterflow's integration tests: find the built binary, make scratch directories,
//! run commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod kafka;
pub mod oracle;
pub mod servers;

/// The `meterflow` binary built alongside these tests.
pub fn meterflow_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/meterflow
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let bin = dir.join("meterflow");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
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
