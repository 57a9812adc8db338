//! meterflow as a timely cluster: two processes on loopback compute exactly what one process does.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use meterflow::tables::read_table;
use meterflow::trace::current_rows;
use meterflow_tests::{meterflow_bin, meterflow_ok, Scratch};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

#[test]
fn two_processes_agree_with_one() {
    let s = Scratch::new("cluster");
    let dir = s.path();
    meterflow_ok(&[
        "gen",
        "--out",
        dir.to_str().unwrap(),
        "--events",
        "20000",
        "--customers",
        "30",
        "--seed",
        "11",
        "--terms",
    ]);
    std::fs::write(dir.join("c.toml"), "[input]\nchunk_bytes = 16384\n").unwrap();
    std::fs::write(
        dir.join("hosts"),
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .unwrap();
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

    let spawn = |p: &str| {
        Command::new(meterflow_bin())
            .current_dir(dir)
            .args(args("cluster"))
            .args(["-n", "2", "-p", p, "--hostfile", "hosts"])
            .env("METERFLOW_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
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
}
