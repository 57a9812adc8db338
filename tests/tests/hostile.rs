//! Hostile input at volume through `meterflow run`: over 100 000 generated records (proptest
//! draws the seeds) mixing valid events with invalid UTF-8, 10 MB strings, 10 000-deep nesting,
//! NaN / Infinity / 1e400 quantities, duplicate JSON keys, numbers as strings, byte-order marks,
//! CRLF line ends, truncated lines, timestamps in year 0 and 9999, negative zero and more. The
//! run must end normally, account for every record (`received = accepted + rejected +
//! duplicates`), and give every rejection a reason code and a remediation. The committed corpus
//! under `tests/corpus/` pins the reason code of each kind of bad record.

use std::io::Write;
use std::path::Path;

use meterflow::reports::tables::read_table;
use meterflow_schemas::rejection::Reason;
use meterflow_tests::{meterflow_ok, Scratch};
use proptest::prelude::*;

/// The generated demo-like catalog: acme's contract, tokens and API calls, from 2026.
const CATALOG: &str = r#"
[[sku]]
id = "tokens"
unit = "tokens"

[[sku]]
id = "api_calls"
unit = "requests"

[[customer]]
id = "acme"

[[rate_card]]
id = "std"
version = 1
effective_from = "2026-01-01T00:00:00Z"
currency = "USD"

[[rate_card.price]]
sku = "tokens"
model = "per_unit"
unit_price = "0.00002"

[[rate_card.price]]
sku = "api_calls"
model = "per_unit"
unit_price = "0.001"

[[contract]]
id = "acme-1"
customer = "acme"
rate_card = "std"
starts = "2026-01-01T00:00:00Z"
"#;

fn valid(i: u64, quantity: &str, timestamp: &str) -> String {
    format!(
        r#"{{"event_id":"h-{i}","customer_id":"acme","contract_id":"acme-1","sku":"tokens","unit":"tokens","quantity":{quantity},"timestamp":"{timestamp}","environment":"production"}}"#
    )
}

/// One record of kind `k` (0..KINDS): its bytes, without the line end.
fn record(k: u64, i: u64, rng: &mut u64) -> Vec<u8> {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let t = format!(
        "2026-11-{:02}T{:02}:{:02}:00Z",
        1 + next() % 20,
        next() % 24,
        next() % 60
    );
    match k {
        0..=3 => valid(i, &format!("\"{}\"", 1 + next() % 1000), &t).into_bytes(),
        // Invalid UTF-8 inside a string.
        4 => {
            let mut b = valid(i, "\"5\"", &t).into_bytes();
            let at = b.iter().position(|c| *c == b'a').unwrap_or(0);
            b.splice(at..at, [0xff, 0xfe, 0xc3]);
            b
        }
        // Quantities JSON cannot hold exactly, or should not be.
        5 => valid(i, ["NaN", "Infinity", "-Infinity", "1e400", "\"1e400\"", "-0", "\"-0\"", "\"NaN\""][(next() % 8) as usize], &t).into_bytes(),
        // Numbers as strings and strings as numbers.
        6 => valid(i, ["12", "12.5", "\"0x10\"", "\"1_000\"", "true", "null", "[1]", "{\"v\":1}"][(next() % 8) as usize], &t).into_bytes(),
        // Duplicate keys: the same event id twice with other values.
        7 => format!(
            r#"{{"event_id":"h-{i}","event_id":"other-{i}","customer_id":"acme","contract_id":"acme-1","sku":"tokens","unit":"tokens","quantity":"1","quantity":"99","timestamp":"{t}","environment":"production"}}"#
        )
        .into_bytes(),
        // A byte-order mark before the record.
        8 => [b"\xef\xbb\xbf".as_slice(), valid(i, "\"3\"", &t).as_bytes()].concat(),
        // Timestamps at the edges of what RFC 3339 allows.
        9 => valid(i, "\"1\"", ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-13-01T00:00:00Z", "2026-11-31T00:00:00Z", "2026-11-01T24:00:00Z", "2026-11-01"][(next() % 6) as usize]).into_bytes(),
        // A truncated line.
        10 => {
            let b = valid(i, "\"7\"", &t).into_bytes();
            let cut = 1 + (next() as usize) % (b.len() - 1);
            b[..cut].to_vec()
        }
        // Deep nesting.
        11 => {
            let depth = 10_000;
            let mut s = String::with_capacity(depth * 8);
            s.push_str(r#"{"event_id":"deep","metadata":"#);
            for _ in 0..depth {
                s.push_str("{\"a\":");
            }
            s.push('1');
            for _ in 0..depth {
                s.push('}');
            }
            s.push('}');
            s.into_bytes()
        }
        // Not JSON, or not an object.
        12 => ["", "   ", "[]", "null", "42", "\"event\"", "{", "}", "{\"\":\"\"}", "\u{0}"][(next() % 10) as usize].as_bytes().to_vec(),
        // Control characters and escapes in identifiers.
        13 => valid(i, "\"2\"", &t).replace("\"acme\"", "\"ac\\u0000me\"").into_bytes(),
        _ => unreachable!(),
    }
}
const KINDS: u64 = 14;

/// Writes `n` hostile lines (plus three of 10 MB) and returns how many are records (not blank).
fn write_hostile(path: &Path, seed: u64, n: u64) -> u64 {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut rng = seed | 1;
    let mut records = 0;
    for i in 0..n {
        let k = {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % KINDS
        };
        let kind_11_rarely = k == 11 && i % 50 != 0;
        let b = record(if kind_11_rarely { 0 } else { k }, i, &mut rng);
        // Some lines end in CRLF.
        f.write_all(&b).unwrap();
        f.write_all(if i % 7 == 0 { b"\r\n" } else { b"\n" })
            .unwrap();
        // Blank lines separate records; they are none.
        if !b.iter().all(u8::is_ascii_whitespace) {
            records += 1;
        }
    }
    // Three records of ten megabytes: a giant string, a giant id, giant padding.
    let big = "x".repeat(10 << 20);
    for line in [
        valid(n, &format!("\"{big}\""), "2026-11-02T00:00:00Z"),
        valid(n + 1, "\"1\"", "2026-11-02T00:00:00Z").replace("h-", &format!("h-{big}")),
        format!("{{\"pad\":\"{big}\"}}"),
    ] {
        f.write_all(line.as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
        records += 1;
    }
    records
}

fn run_hostile(seed: u64, n: u64) {
    let s = Scratch::new("hostile");
    let dir = s.path();
    std::fs::create_dir_all(dir.join("catalog")).unwrap();
    std::fs::write(dir.join("catalog/catalog.toml"), CATALOG).unwrap();
    let input = dir.join("hostile.jsonl");
    let written = write_hostile(&input, seed, n);
    let out = dir.join("out");
    meterflow_ok(&[
        "run",
        "-q",
        "-i",
        input.to_str().unwrap(),
        "-c",
        dir.join("catalog").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("counts.json")).unwrap()).unwrap();
    let n = |k: &str| counts[k].as_u64().unwrap();
    assert_eq!(n("received"), written, "every record is counted: {counts}");
    assert_eq!(
        n("received"),
        n("accepted") + n("rejected") + n("duplicates"),
        "{counts}"
    );
    assert!(n("accepted") > 0 && n("rejected") > 0, "{counts}");
    let rejections = read_table(&out, "rejections").unwrap();
    assert_eq!(
        rejections.len() as u64,
        n("rejected"),
        "a row per rejected record"
    );
    let codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
    for r in &rejections {
        assert!(
            codes.contains(&r["reason"].as_str()),
            "unknown reason {:?}",
            r["reason"]
        );
        assert!(!r["remediation"].is_empty(), "{r:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2, failure_persistence: None, ..ProptestConfig::default() })]
    /// 2 × 52 000 generated records and 6 of 10 MB.
    #[test]
    fn hostile_records_are_each_accepted_or_rejected_with_a_reason(seed in any::<u64>()) {
        run_hostile(seed, 52_000);
    }
}

/// Each file of `tests/corpus/` is one bad record, named `<reason code>--<what>.jsonl`: the run
/// rejects it with that code.
#[test]
fn the_corpus_is_rejected_with_the_reason_each_file_names() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let s = Scratch::new("corpus");
    std::fs::create_dir_all(s.path().join("catalog")).unwrap();
    std::fs::write(s.path().join("catalog/catalog.toml"), CATALOG).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{} corpus files", files.len());
    for (i, file) in files.iter().enumerate() {
        let name = file.file_name().unwrap().to_str().unwrap();
        let expected = name.split("--").next().unwrap();
        let out = s.path().join(format!("out-{i}"));
        meterflow_ok(&[
            "run",
            "-q",
            "-i",
            file.to_str().unwrap(),
            "-c",
            s.path().join("catalog").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        let rejected: Vec<String> = read_table(&out, "rejections")
            .unwrap()
            .iter()
            .map(|r| r["reason"].clone())
            .collect();
        assert_eq!(rejected, vec![expected.to_string()], "{name}");
    }
}
