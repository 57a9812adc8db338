//! `meterflow export aws|azure|gcp` end to end over the demo (globex bought through AWS, initech
//! through Azure, hooli through Google Cloud): every request file validated against the
//! marketplace's published model (botocore's own validator for AWS, JSON Schemas written from the
//! REST references for Azure and GCP, in `tests/marketplace_check.py`), the quantities sent equal
//! to the usage summed here from `usage_events`, resends recognised, late usage compensated, a
//! void reported as not sendable, and ClickHouse exporting the same records as the files.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use meterflow::reports::tables::read_table;
use meterflow_schemas::money::Quantity;
use meterflow_tests::{meterflow, meterflow_ok, run_ok, Scratch};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `marketplace_check.py` over request directories: `(marketplace, customer, dimension) → total`.
fn checked(args: &[&str]) -> BTreeMap<(String, String, String), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run_ok(
        Command::new("python3")
            .arg(root.join("marketplace_check.py"))
            .args(args),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let (kind, _) = f[0].split_once(' ')?;
            (f.len() == 4).then(|| ((kind.into(), f[1].into(), f[2].into()), f[3].into()))
        })
        .collect()
}

/// `marketplace_check.py --aws dir`'s allocated quantities: `(dimension, "key=value" tags) →
/// units`, every record's allocations having added up to its quantity.
fn allocated(dir: &Path) -> BTreeMap<(String, String), i128> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run_ok(
        Command::new("python3")
            .arg(root.join("marketplace_check.py"))
            .args(["--aws", path(dir)]),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0] == "aws allocated").then(|| ((f[2].into(), f[3].into()), f[4].parse().unwrap()))
        })
        .collect()
}

/// Net billable usage of a contract's SKU before November per `project` attribute ("" for
/// events without one), summed from `usage_events`.
fn october_by_project(out: &Path, contract: &str, sku: &str) -> BTreeMap<String, Quantity> {
    let mut by = BTreeMap::new();
    for r in read_table(out, "usage_events").unwrap().iter().filter(|r| {
        r["contract_id"] == contract
            && r["sku"] == sku
            && r["billable"] == "1"
            && r["event_time"].as_str() < "2026-11-01"
    }) {
        let project = serde_json::from_str::<serde_json::Value>(&r["attributes"])
            .ok()
            .and_then(|a| a["project"].as_str().map(|p| format!("project={p}")))
            .unwrap_or_default();
        *by.entry(project).or_insert(Quantity::ZERO) += Quantity::parse(&r["quantity"]).unwrap();
    }
    by
}

/// Net billable usage of a contract's SKU before November, summed from `usage_events`.
fn october(out: &Path, contract: &str, sku: &str) -> Quantity {
    read_table(out, "usage_events")
        .unwrap()
        .iter()
        .filter(|r| {
            r["contract_id"] == contract
                && r["sku"] == sku
                && r["billable"] == "1"
                && r["event_time"].as_str() < "2026-11-01"
        })
        .map(|r| Quantity::parse(&r["quantity"]).unwrap())
        .sum()
}

fn thousands(q: Quantity) -> i128 {
    q.0.div_euclid(Quantity::parse("1000").unwrap().0)
}

fn exports(out: &Path) -> Vec<meterflow::reports::tables::Row> {
    read_table(out, "exports").unwrap()
}

#[test]
fn exports_validate_against_the_marketplaces_and_settle_what_changed() {
    let s = Scratch::new("marketplace");
    let demo = s.path().join("demo");
    meterflow_ok(&["demo", "--dir", path(&demo)]);
    // The demo's events up to 2 November: October is closed, and late October usage is still
    // within the dedup horizon (7 days) when it arrives.
    let early: Vec<serde_json::Value> = std::fs::read_to_string(demo.join("events.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["timestamp"].as_str().is_some_and(|t| t < "2026-11-02T12"))
        .collect();
    let input = demo.join("events-early.jsonl");
    let text: String = early.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let catalog = demo.join("catalog");
    let out = demo.join("out-early");
    let run = || {
        meterflow_ok(&[
            "run",
            "-q",
            "-i",
            path(&input),
            "-c",
            path(&catalog),
            "-o",
            path(&out),
            "--config",
            path(&demo.join("meterflow.toml")),
        ])
    };
    run();
    let export = |kind: &str, period: &str, at: &str| {
        meterflow(&[
            "export",
            kind,
            "-c",
            path(&catalog),
            "-o",
            path(&out),
            "--period",
            period,
            "--at",
            at,
        ])
    };
    for kind in ["aws", "azure"] {
        let o = export(kind, "2026-10", "2026-12-01T00:20:00Z");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let requests = out.join("marketplace");
    let totals = checked(&[
        "--aws",
        path(&requests.join("aws")),
        "--azure",
        path(&requests.join("azure")),
    ]);
    let globex = |sku| october(&out, "globex-legacy", sku);
    let initech = |sku| october(&out, "initech-2026", sku);
    let total = |kind: &str, who: &str, dimension: &str| {
        totals[&(kind.into(), who.into(), dimension.into())].clone()
    };
    // AWS: whole units, the remainder carried, so the month sends ⌊usage ÷ unit⌋.
    let aws = "cU5tMeRiD-globex";
    assert_eq!(
        total("aws", aws, "api_calls_1k"),
        thousands(globex("api_calls")).to_string()
    );
    assert_eq!(
        total("aws", aws, "tokens_1k"),
        thousands(globex("tokens")).to_string()
    );
    assert_eq!(
        total("aws", aws, "storage_gb"),
        globex("storage")
            .0
            .div_euclid(Quantity::SCALE_ONE)
            .to_string()
    );
    // AWS records of a dimension with allocation tags split their units by project, in
    // proportion to each project's usage behind the record: the month's allocations follow
    // each project's usage to within the rounding of its records.
    let allocations = allocated(&requests.join("aws"));
    for (dimension, sku) in [("api_calls_1k", "api_calls"), ("tokens_1k", "tokens")] {
        let usage = october_by_project(&out, "globex-legacy", sku);
        assert_eq!(
            usage.len(),
            4,
            "three projects and untagged usage: {usage:?}"
        );
        let sent: i128 = total("aws", aws, dimension).parse().unwrap();
        let parts: BTreeMap<&String, i128> = allocations
            .iter()
            .filter(|((d, _), _)| d == dimension)
            .map(|((_, tags), q)| (tags, *q))
            .collect();
        assert_eq!(parts.values().sum::<i128>(), sent, "{dimension}: {parts:?}");
        for (project, q) in &usage {
            let got = parts.get(project).copied().unwrap_or_default();
            let want = q.0 / Quantity::parse("1000").unwrap().0;
            assert!(
                (got - want).abs() <= 3 + sent / 20,
                "{dimension} {project:?}: allocated {got}, usage {q} ({parts:?})"
            );
        }
    }
    // The exports table keeps each AWS record's allocations as its request file sent them.
    let mut kept: BTreeMap<(String, String), i128> = BTreeMap::new();
    for r in exports(&out).iter().filter(|r| r["marketplace"] == "aws") {
        if r["allocations"].is_empty() {
            continue;
        }
        let parts: Vec<serde_json::Value> = serde_json::from_str(&r["allocations"]).unwrap();
        for p in parts {
            let tags: Vec<String> = p["tags"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                .collect();
            *kept
                .entry((r["dimension"].clone(), tags.join(",")))
                .or_default() += i128::from(p["quantity"].as_i64().unwrap());
        }
    }
    assert_eq!(
        kept, allocations,
        "exports.allocations against the request files"
    );
    // Azure: exact quantities.
    let azure = "5f1c2a9e-3b7d-4e2a-9c1f-7d2b8e6a4c10";
    let exact = |q: Quantity, unit: &str| {
        Quantity(q.0 * Quantity::SCALE_ONE / Quantity::parse(unit).unwrap().0)
    };
    for (dimension, sku, unit) in [
        ("api-calls-1k", "api_calls", "1000"),
        ("tokens-1k", "tokens", "1000"),
        ("storage-gb", "storage", "1"),
    ] {
        assert_eq!(
            Quantity::parse(&total("azure", azure, dimension)).unwrap(),
            exact(initech(sku), unit),
            "{dimension}"
        );
    }
    let first = exports(&out);
    assert!(first
        .iter()
        .all(|r| r["status"] == "written" && r["record_kind"] == "usage"));
    assert!(
        first.iter().all(|r| r["request"].contains("/marketplace/")),
        "every record names its file"
    );

    // An open period: a clear error, nothing written.
    let o = export("aws", "2026-11", "2026-12-01T00:20:00Z");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("period 2026-11 is not closed") && err.contains("Nothing was written"),
        "{err}"
    );
    assert!(!requests.join("aws/2026-11").exists());
    // A resend of a closed period sends nothing new.
    let o = export("aws", "2026-10", "2026-12-01T01:00:00Z");
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing new to send"));
    assert_eq!(exports(&out).len(), first.len());

    // Late usage for October, and a void of an October event, arrive; the run resumes.
    let before = (globex("api_calls"), globex("storage"));
    let voided = early
        .iter()
        .find(|e| {
            e["customer_id"] == "globex"
                && e["sku"] == "storage"
                && e["timestamp"].as_str().is_some_and(|t| t > "2026-10-30")
                && e["timestamp"].as_str().is_some_and(|t| t < "2026-11")
        })
        .expect("a late-October storage event of globex");
    let mut events = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    writeln!(events, r#"{{"event_id":"evt-mkt-late","customer_id":"globex","contract_id":"globex-legacy","sku":"api_calls","unit":"requests","quantity":"2500","timestamp":"2026-10-31T10:00:00Z","environment":"production"}}"#).unwrap();
    let mut void = voided.clone();
    void["event_id"] = "evt-mkt-void".into();
    void["quantity"] = format!("-{}", voided["quantity"].as_str().unwrap()).into();
    void["correction"] =
        serde_json::json!({"action": "void", "original_event_id": voided["event_id"]});
    writeln!(events, "{void}").unwrap();
    drop(events);
    run();
    let after = (globex("api_calls"), globex("storage"));
    assert_eq!(after.0 - before.0, Quantity::parse("2500").unwrap());
    let o = export("aws", "2026-10", "2026-12-02T05:30:00Z");
    // The decrease needs a person: exit 3, with the rest written.
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("not_sendable"), "{text}");
    let new: Vec<_> = exports(&out).into_iter().skip(first.len()).collect();
    let by_kind = |kind: &str| -> Vec<(String, String, String)> {
        new.iter()
            .filter(|r| r["record_kind"] == kind)
            .map(|r| {
                (
                    r["dimension"].clone(),
                    r["record_time"].clone(),
                    r["quantity"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        by_kind("compensation"),
        vec![(
            "api_calls_1k".into(),
            "2026-12-02T05:00:00.000Z".into(),
            (thousands(after.0) - thousands(before.0)).to_string()
        )]
    );
    let whole = |q: Quantity| q.0.div_euclid(Quantity::SCALE_ONE);
    assert_eq!(
        by_kind("not_sendable"),
        vec![(
            "storage_gb".into(),
            "2026-12-02T05:00:00.000Z".into(),
            (whole(after.1) - whole(before.1)).to_string()
        )]
    );
    assert_eq!(new.len(), 2, "only what changed: {new:?}");
    // The compensation is a valid request too, and no record repeats an earlier one.
    checked(&["--aws", path(&requests.join("aws"))]);

    // Usage of a SKU the listing has no dimension for: nothing is written, and the fix is named.
    let unmapped = std::fs::read_to_string(catalog.join("catalog.toml"))
        .unwrap()
        .replace(
            "sku = \"storage\"\ndimension = \"storage_gb\"",
            "sku = \"seats\"\ndimension = \"seats\"",
        );
    std::fs::write(catalog.join("catalog.toml"), unmapped).unwrap();
    let o = meterflow(&["catalog", "check", path(&catalog)]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(
        err.contains("sku `seats` is not a sum or count meter"),
        "{err}"
    );
    let unmapped = std::fs::read_to_string(catalog.join("catalog.toml"))
        .unwrap()
        .replace(
            "[[marketplace.dimension]]\nsku = \"seats\"\ndimension = \"seats\"\n",
            "",
        );
    std::fs::write(catalog.join("catalog.toml"), unmapped).unwrap();
    let o = export("aws", "2026-10", "2026-12-02T06:30:00Z");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("nothing was written")
            && err.contains("contract globex-legacy used SKU storage, which listing aws-marketplace has no dimension for"),
        "{err}"
    );
    assert_eq!(exports(&out).len(), first.len() + 2);
}

#[test]
fn clickhouse_exports_the_records_the_files_export() {
    let s = Scratch::new("marketplace-ch");
    let (demo, ch) = meterflow_tests::demo_in_clickhouse(s.path());
    let catalog = demo.join("catalog");
    let url = ch.url();
    // `kind`'s October records exported from the files and from ClickHouse, each sorted.
    let both = |kind: &str, member: &str| -> Vec<Vec<String>> {
        let mut bodies = Vec::new();
        for (source, to) in [
            (
                vec!["-o", path(&demo.join("out"))],
                s.path().join(format!("{kind}-files")),
            ),
            (
                vec!["--clickhouse-url", url.as_str()],
                s.path().join(format!("{kind}-clickhouse")),
            ),
        ] {
            let mut args = vec![
                "export",
                kind,
                "-c",
                path(&catalog),
                "--period",
                "2026-10",
                "--at",
                "2026-12-01T00:00:00Z",
                "--to",
                path(&to),
            ];
            args.extend(source);
            meterflow_ok(&args);
            let mut found: Vec<String> = std::fs::read_dir(to.join(kind).join("2026-10"))
                .unwrap()
                .flat_map(|f| {
                    let v: serde_json::Value =
                        serde_json::from_str(&std::fs::read_to_string(f.unwrap().path()).unwrap())
                            .unwrap();
                    v[member].as_array().unwrap().clone()
                })
                .map(|r| r.to_string())
                .collect();
            found.sort();
            bodies.push(found);
        }
        bodies
    };
    let azure = both("azure", "request");
    assert!(!azure[0].is_empty());
    assert_eq!(
        azure[0], azure[1],
        "ClickHouse and the files export the same records"
    );
    let recorded = ch
        .query("SELECT count(), countIf(status = 'written') FROM meterflow.exports WHERE marketplace = 'azure' FORMAT TabSeparated")
        .unwrap();
    assert_eq!(
        recorded.trim(),
        format!("{}\t{}", azure[1].len(), azure[1].len())
    );
    // The ClickHouse export is recorded there: a resend writes nothing new.
    let o = meterflow_ok(&[
        "export",
        "azure",
        "-c",
        path(&catalog),
        "--period",
        "2026-10",
        "--clickhouse-url",
        &url,
        "--to",
        path(&s.path().join("again")),
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing new to send"));
    assert!(!s.path().join("again").exists());

    // AWS, whose allocations ClickHouse reads from the events' attributes grouped there.
    let aws = both("aws", "UsageRecords");
    let allocated = aws[1].iter().filter(|r| r.contains("\"Tags\"")).count();
    assert!(allocated > 10, "tagged allocations: {allocated}");
    assert_eq!(
        aws[0], aws[1],
        "ClickHouse and the files export the same AWS records and allocations"
    );
}

/// `tests/marketplace_endpoint.py` on a free loopback port (killed when dropped).
struct Endpoint {
    child: meterflow_tests::Running,
    url: String,
}

const AWS_KEY_ID: &str = "AKIDMETERFLOWTEST";
const AWS_SECRET: &str = "aws-s3cr3t/for+the+test";
const AZURE_SECRET: &str = "azure-s3cr3t&=";
const GCP_TOKEN: &str = "ya29.gcp-test-token";

impl Endpoint {
    fn start(dir: &Path, now: &str) -> Endpoint {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let port_file = dir.join("endpoint.port");
        let child = meterflow_tests::Running(
            Command::new("python3")
                .arg(root.join("marketplace_endpoint.py"))
                .args(["--port-file", path(&port_file), "--now", now])
                .env("ENDPOINT_AWS_KEY_ID", AWS_KEY_ID)
                .env("ENDPOINT_AWS_SECRET", AWS_SECRET)
                .env("ENDPOINT_AZURE_TENANT", "tenant-1")
                .env("ENDPOINT_AZURE_CLIENT_ID", "meterflow-offer")
                .env("ENDPOINT_AZURE_SECRET", AZURE_SECRET)
                .env("ENDPOINT_GCP_TOKEN", GCP_TOKEN)
                .spawn()
                .expect("python3 runs the endpoint"),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the endpoint did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        Endpoint {
            child,
            url: format!("http://127.0.0.1:{}", port.trim()),
        }
    }

    fn call(&self, method: &str, what: &str, body: &str) -> serde_json::Value {
        let script = "import sys, urllib.request as u; \
                      r = u.Request(sys.argv[1], data=sys.argv[3].encode() if sys.argv[2] == 'POST' else None, method=sys.argv[2]); \
                      print(u.urlopen(r).read().decode())";
        let out = run_ok(Command::new("python3").args([
            "-c",
            script,
            &format!("{}/{what}", self.url),
            method,
            body,
        ]));
        serde_json::from_slice(&out.stdout).expect("the endpoint answers JSON")
    }

    fn control(&self, c: serde_json::Value) {
        self.call("POST", "control", &c.to_string());
    }

    fn received(&self) -> serde_json::Value {
        self.call("GET", "received", "")
    }
}

/// `meterflow export <kind> --send` of October from an embedded run's output, dating
/// compensations at `at`, with the test's AWS access key id (the secret is the caller's).
fn send_october(kind: &str, (catalog, out, config): (&Path, &Path, &Path), at: &str) -> Command {
    let mut c = Command::new(meterflow_tests::meterflow_bin());
    c.args([
        "export",
        kind,
        "-c",
        path(catalog),
        "-o",
        path(out),
        "--period",
        "2026-10",
        "--at",
        at,
        "--config",
        path(config),
        "--send",
    ])
    .env("METERFLOW_LOG", "warn")
    .env("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    .env_remove("AWS_SESSION_TOKEN");
    c
}

/// The demo's output in a scratch directory, and the marketplace stand-in with its clock at `at`.
fn demo_and_endpoint(name: &str, at: &str) -> (Scratch, std::path::PathBuf, Endpoint) {
    let s = Scratch::new(name);
    let demo = s.path().join("demo");
    meterflow_ok(&["demo", "--dir", path(&demo)]);
    let endpoint = Endpoint::start(s.path(), at);
    (s, demo, endpoint)
}

/// What Azure took for initech's SaaS subscription equals initech's October usage per dimension.
fn initech_reached_azure(received: &serde_json::Value, out: &Path) {
    for (dimension, sku, unit) in [
        ("api-calls-1k", "api_calls", 1000),
        ("tokens-1k", "tokens", 1000),
        ("storage-gb", "storage", 1),
    ] {
        let sent = received["totals"]
            [format!("azure|5f1c2a9e-3b7d-4e2a-9c1f-7d2b8e6a4c10|{dimension}")]
        .as_f64()
        .unwrap();
        let usage =
            october(out, "initech-2026", sku).0 as f64 / Quantity::SCALE_ONE as f64 / unit as f64;
        assert!(
            (sent - usage).abs() < 1e-6,
            "{dimension}: sent {sent}, used {usage}"
        );
    }
}

#[test]
fn exports_are_sent_to_the_marketplaces_and_every_answer_is_recorded() {
    let at = "2026-12-01T00:20:00Z";
    let (s, demo, endpoint) = demo_and_endpoint("marketplace-send", at);
    let (catalog, out) = (demo.join("catalog"), demo.join("out"));
    assert!(endpoint.child.id() > 0);
    let token_file = s.path().join("gcp-token");
    std::fs::write(&token_file, format!("{GCP_TOKEN}\n")).unwrap();
    let config = s.path().join("send.toml");
    let url = &endpoint.url;
    // `azure`, `gcp`: how each authenticates (the config is rewritten between phases).
    let write_config = |azure: &str, gcp: &str| {
        std::fs::write(
            &config,
            std::fs::read_to_string(demo.join("meterflow.toml")).unwrap()
                + &format!(
                    "\n[exports]\nmax_attempts = 3\ntimeout = \"10s\"\n\
                     \n[exports.aws]\nendpoint = \"{url}\"\n\
                     \n[exports.azure]\n{azure}\nendpoint = \"{url}\"\n\
                     \n[exports.gcp]\n{gcp}\nendpoint = \"{url}\"\n"
                ),
        )
        .unwrap();
    };
    let gcp_key = s.path().join("gcp-service-account.json");
    write_config(
        &format!(
            "tenant_id = \"tenant-1\"\nclient_id = \"meterflow-offer\"\n\
             client_secret_env = \"METERFLOW_TEST_AZURE_SECRET\"\nlogin_endpoint = \"{url}\""
        ),
        &format!("access_token_file = \"{}\"", path(&token_file)),
    );
    let export = |kind: &str, aws_secret: Option<&str>| {
        let mut c = send_october(kind, (&catalog, &out, &config), at);
        c.env_remove("AWS_SECRET_ACCESS_KEY")
            .env("METERFLOW_TEST_AZURE_SECRET", AZURE_SECRET);
        if let Some(secret) = aws_secret {
            c.env("AWS_SECRET_ACCESS_KEY", secret);
        }
        let o = c.output().expect("meterflow runs");
        let text =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        for secret in [AWS_SECRET, AZURE_SECRET, GCP_TOKEN] {
            assert!(!text.contains(secret), "a secret in the output: {text}");
        }
        (o.status.code(), text)
    };
    let rows = |kind: &str| -> Vec<meterflow::reports::tables::Row> {
        if !out.join("exports").exists() {
            return Vec::new();
        }
        exports(&out)
            .into_iter()
            .filter(|r| r["marketplace"] == kind)
            .collect()
    };
    // The answers of the last export (each sent record was first recorded as `sending`).
    let last_export = |kind: &str| -> Vec<meterflow::reports::tables::Row> {
        let all = rows(kind);
        let id = all
            .last()
            .map(|r| r["export_id"].clone())
            .unwrap_or_default();
        let (sending, answers): (Vec<_>, Vec<_>) = all
            .into_iter()
            .filter(|r| r["export_id"] == id)
            .partition(|r| r["status"] == "sending");
        assert!(
            sending.len() <= answers.len(),
            "an answer follows every record sent"
        );
        answers
    };

    // Credentials missing: the key is named, and nothing is sent or written.
    let (code, text) = export("aws", None);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("exports.aws.secret_access_key_env/secret_access_key_file names AWS_SECRET_ACCESS_KEY, which is not set")
            && text.contains("Nothing was sent or written"),
        "{text}"
    );
    assert!(rows("aws").is_empty());
    assert_eq!(endpoint.received()["requests"], 0);

    // A wrong secret: AWS refuses the signature; every record is failed, with the reason.
    let (code, text) = export("aws", Some("not-the-secret"));
    assert_eq!(code, Some(4), "{text}");
    let failed = last_export("aws");
    assert!(!failed.is_empty());
    assert!(
        failed
            .iter()
            .all(|r| r["status"] == "failed" && r["detail"].contains("InvalidSignatureException")),
        "{failed:?}"
    );

    // The customer unsubscribed, and AWS throttles once: retried, then refused per record.
    endpoint.control(serde_json::json!({"refuse": ["cU5tMeRiD-globex"], "throttle": 1}));
    let (code, text) = export("aws", Some(AWS_SECRET));
    assert_eq!(code, Some(4), "{text}");
    assert!(last_export("aws")
        .iter()
        .all(|r| r["status"] == "failed" && r["detail"].starts_with("CustomerNotSubscribed")));

    // Subscribed again: everything is sent, once, dated within AWS's 6 hours.
    endpoint.control(serde_json::json!({}));
    let (code, text) = export("aws", Some(AWS_SECRET));
    assert_eq!(code, Some(0), "{text}");
    let sent = last_export("aws");
    assert!(
        sent.iter().all(|r| r["status"] == "sent"
            && !r["response_id"].is_empty()
            && r["record_time"] == "2026-12-01T00:00:00.000Z"
            && r["record_kind"] == "compensation"),
        "October is older than AWS takes: settled at the export's hour: {sent:?}"
    );
    let received = endpoint.received();
    let totals = &received["totals"];
    let globex = |sku| october(&out, "globex-legacy", sku);
    let aws = |dimension: &str| totals[format!("aws|cU5tMeRiD-globex|{dimension}")].as_f64();
    assert_eq!(
        aws("api_calls_1k"),
        Some(thousands(globex("api_calls")) as f64)
    );
    assert_eq!(aws("tokens_1k"), Some(thousands(globex("tokens")) as f64));
    assert_eq!(
        aws("storage_gb"),
        Some(globex("storage").0.div_euclid(Quantity::SCALE_ONE) as f64)
    );
    // A resend finds nothing new and calls no one.
    let calls = received["requests"].clone();
    let (code, text) = export("aws", Some(AWS_SECRET));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("nothing new to send"), "{text}");
    assert_eq!(endpoint.received()["requests"], calls);

    // Azure down for longer than the attempts: failed, then sent once it is back.
    endpoint.control(serde_json::json!({"unavailable": 3}));
    let (code, text) = export("azure", None);
    assert_eq!(code, Some(4), "{text}");
    assert!(last_export("azure")
        .iter()
        .all(|r| r["status"] == "failed" && r["detail"].contains("(after 3 attempts)")));
    // Back, and meterflow now runs where Azure gives it a managed identity (and Google a
    // service account key); every token is good for one request, so each later request must
    // fetch a new one.
    write_config(
        &format!(
            "managed_identity = true\nmanaged_identity_client_id = \"mi-client-1\"\n\
             managed_identity_endpoint = \"{url}/metadata/identity/oauth2/token\""
        ),
        &format!("service_account_key_file = \"{}\"", path(&gcp_key)),
    );
    endpoint.control(serde_json::json!({"gcp_key_file": path(&gcp_key), "token_uses": 1}));
    let (code, text) = export("azure", None);
    assert_eq!(code, Some(0), "{text}");
    assert!(endpoint.received()["tokens_issued"]["azure-mi"].as_u64() >= Some(1));
    assert!(last_export("azure")
        .iter()
        .all(|r| r["status"] == "sent" && !r["response_id"].is_empty()));
    initech_reached_azure(&endpoint.received(), &out);

    // GCP takes October's hours as they are: one operation per hour, all sent. The demo's GCP
    // customer used nothing in October, so globex moves to Google Cloud for this export.
    let text = std::fs::read_to_string(catalog.join("catalog.toml")).unwrap();
    let moved = text
        .replace(
            "listing = \"aws-marketplace\"\ncustomer = \"cU5tMeRiD-globex\"",
            "listing = \"gcp-marketplace\"\ncustomer = \"project:globex-prod\"",
        )
        .replace(
            "service_name = \"meterflow-demo.gcpmarketplace.example.com\"\n",
            "service_name = \"meterflow-demo.gcpmarketplace.example.com\"\n\
             [[marketplace.dimension]]\nsku = \"api_calls\"\ndimension = \"api_calls_1k\"\nunit_size = \"1000\"\n\
             [[marketplace.dimension]]\nsku = \"storage\"\ndimension = \"storage_gb\"\n",
        );
    assert_ne!(moved, text);
    std::fs::write(catalog.join("catalog.toml"), moved).unwrap();
    let (code, text) = export("gcp", None);
    assert_eq!(code, Some(0), "{text}");
    let gcp = last_export("gcp");
    assert!(gcp.len() > 100, "{} hours", gcp.len());
    // More than one request, each with a token of its own, signed for by the key.
    let issued = endpoint.received()["tokens_issued"]["gcp-sa"]
        .as_u64()
        .unwrap_or(0);
    assert!(issued >= 2, "{issued} service account tokens");
    assert!(gcp.iter().all(|r| r["status"] == "sent"
        && r["response_id"] == r["record_key"]
        && r["record_kind"] == "usage"));
    let totals = endpoint.received()["totals"].clone();
    let gcp = |dimension: &str| {
        totals[format!(
            "gcp|project:globex-prod|meterflow-demo.gcpmarketplace.example.com/{dimension}"
        )]
        .as_f64()
    };
    assert_eq!(gcp("tokens_1k"), Some(thousands(globex("tokens")) as f64));
    assert_eq!(
        gcp("api_calls_1k"),
        Some(thousands(globex("api_calls")) as f64)
    );
    let problems = endpoint.received()["problems"].clone();
    assert_eq!(
        problems,
        serde_json::json!([]),
        "requests the marketplaces would refuse"
    );
}

/// The offer's Entra ID application proves itself with a certificate instead of a secret: a
/// certificate the application does not know is refused (each record failed, with Entra's
/// reason); the registered one gets a token, and October reaches Azure in full.
#[test]
fn an_azure_application_certificate_signs_for_its_tokens_and_an_unregistered_one_is_refused() {
    let at = "2026-12-01T00:20:00Z";
    let (s, demo, endpoint) = demo_and_endpoint("marketplace-cert", at);
    let (catalog, out) = (demo.join("catalog"), demo.join("out"));
    let registered = s.path().join("registered.pem");
    endpoint.control(serde_json::json!({"azure_certificate_file": path(&registered)}));
    let (stranger, stranger_key) = (s.path().join("stranger.pem"), s.path().join("stranger.key"));
    run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=stranger",
        "-keyout",
        path(&stranger_key),
        "-out",
        path(&stranger),
    ]));
    let config = s.path().join("send.toml");
    let export = |certificate: &str| {
        std::fs::write(
            &config,
            std::fs::read_to_string(demo.join("meterflow.toml")).unwrap()
                + &format!(
                    "\n[exports]\nmax_attempts = 2\ntimeout = \"10s\"\n\n[exports.azure]\n\
                     tenant_id = \"tenant-1\"\nclient_id = \"meterflow-offer\"\n{certificate}\n\
                     login_endpoint = \"{url}\"\nendpoint = \"{url}\"\n",
                    url = endpoint.url
                ),
        )
        .unwrap();
        let o = send_october("azure", (&catalog, &out, &config), at)
            .output()
            .expect("meterflow runs");
        let text =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(!text.contains("PRIVATE KEY"), "a key in the output: {text}");
        (o.status.code(), text)
    };
    let answers = || -> Vec<meterflow::reports::tables::Row> {
        let all: Vec<_> = exports(&out)
            .into_iter()
            .filter(|r| r["marketplace"] == "azure")
            .collect();
        let id = all.last().map(|r| r["export_id"].clone()).unwrap();
        all.into_iter()
            .filter(|r| r["export_id"] == id && r["status"] != "sending")
            .collect()
    };

    let (code, text) = export(&format!(
        "client_certificate_file = \"{}\"\nclient_certificate_key_file = \"{}\"",
        path(&stranger),
        path(&stranger_key)
    ));
    assert_eq!(code, Some(4), "{text}");
    let failed = answers();
    assert!(!failed.is_empty());
    assert!(
        failed
            .iter()
            .all(|r| r["status"] == "failed" && r["detail"].contains("AADSTS700027")),
        "{failed:?}"
    );
    assert_eq!(
        endpoint.received()["tokens_issued"]["azure-certificate"],
        serde_json::Value::Null
    );

    let (code, text) = export(&format!(
        "client_certificate_file = \"{}\"",
        path(&registered)
    ));
    assert_eq!(code, Some(0), "{text}");
    let sent = answers();
    assert!(sent.iter().all(|r| r["status"] == "sent"), "{sent:?}");
    let received = endpoint.received();
    // October is older than Azure takes: settled at the export's hour, one event per
    // dimension, in one request, with a token the certificate signed for.
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(
        received["tokens_issued"]["azure-certificate"], 1,
        "{received}"
    );
    initech_reached_azure(&received, &out);
    assert_eq!(received["problems"], serde_json::json!([]));
}

/// An export killed after AWS took its records but before their answer was recorded: the next
/// export, an hour later, resends those very records (dated as they were), which AWS recognises,
/// instead of planning them anew at its own hour, which AWS would bill a second time.
#[test]
fn an_export_killed_while_sending_resends_the_same_records_and_bills_once() {
    let (s, demo, endpoint) = demo_and_endpoint("marketplace-kill", "2026-12-01T02:30:00Z");
    let (catalog, out) = (demo.join("catalog"), demo.join("out"));
    let config = s.path().join("send.toml");
    std::fs::write(
        &config,
        std::fs::read_to_string(demo.join("meterflow.toml")).unwrap()
            + &format!(
                "\n[exports]\nmax_attempts = 3\ntimeout = \"10s\"\n\n[exports.aws]\nendpoint = \"{}\"\n",
                endpoint.url
            ),
    )
    .unwrap();
    let export = |at: &str| {
        let mut c = send_october("aws", (&catalog, &out, &config), at);
        c.env("AWS_SECRET_ACCESS_KEY", AWS_SECRET);
        c
    };
    // AWS takes and bills the first request, then answers only after a minute; the export is
    // killed before.
    endpoint.control(serde_json::json!({ "hang": 1 }));
    let mut first = meterflow_tests::Running(export("2026-12-01T00:20:00Z").spawn().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while endpoint.received()["totals"]
        .as_object()
        .is_none_or(|t| t.is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "AWS never got the request"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let billed = endpoint.received()["totals"].clone();
    let rows = exports(&out);
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r["status"] == "sending"),
        "recorded as being sent, no answer: {rows:?}"
    );

    // The next export, two hours later.
    let o = run_ok(&mut export("2026-12-01T02:20:00Z"));
    let text = String::from_utf8_lossy(&o.stdout);
    let received = endpoint.received();
    assert_eq!(
        received["totals"], billed,
        "AWS billed the records once: {text}"
    );
    assert!(text.contains("resent compensation"), "{text}");
    let globex = |sku| october(&out, "globex-legacy", sku);
    assert_eq!(
        billed["aws|cU5tMeRiD-globex|tokens_1k"].as_f64(),
        Some(thousands(globex("tokens")) as f64)
    );
    let rows = exports(&out);
    let answered: Vec<_> = rows.iter().filter(|r| r["status"] != "sending").collect();
    assert_eq!(
        answered.len(),
        rows.len() / 2,
        "one answer per record: {rows:?}"
    );
    assert!(
        answered.iter().all(|r| r["status"] == "sent"
            && r["record_time"] == "2026-12-01T00:00:00.000Z"
            && !r["response_id"].is_empty()),
        "resent as dated first, and taken: {answered:?}"
    );
    // Settled: a third export sends nothing.
    let calls = received["requests"].clone();
    let o = run_ok(&mut export("2026-12-01T02:25:00Z"));
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing new to send"));
    assert_eq!(endpoint.received()["requests"], calls);
}

#[test]
fn follow_exports_each_hour_as_the_watermark_closes_it_and_settles_late_usage() {
    let s = Scratch::new("marketplace-follow");
    let demo = s.path().join("demo");
    meterflow_ok(&["demo", "--dir", path(&demo)]);
    let ch = meterflow_tests::servers::ClickHouseServer::start(s.path());
    let url = ch.url();
    meterflow_ok(&["migrate", "--clickhouse-url", &url]);
    let catalog = demo.join("catalog");
    let events: Vec<String> = std::fs::read_to_string(demo.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    // The demo's events from `from` to `to`, in file order.
    let between = |from: &str, to: &str| -> String {
        events
            .iter()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|e| e["timestamp"].as_str().is_some_and(|t| t >= from && t < to))
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let input = s.path().join("events.jsonl");
    let run = || {
        meterflow_ok(&[
            "run",
            "-q",
            "-i",
            path(&input),
            "-c",
            path(&catalog),
            "--config",
            path(&demo.join("meterflow.toml")),
            "--clickhouse-url",
            &url,
            "-o",
            path(&s.path().join("run-out")),
        ]);
    };
    let first_days = between("", "2026-10-26");
    std::fs::write(&input, &first_days).unwrap();
    run();

    // Embedded output cannot be followed: its tables are rewritten while a run runs.
    let o = meterflow(&[
        "export",
        "aws",
        "--follow",
        "-c",
        path(&catalog),
        "-o",
        path(&demo.join("out")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("--follow reads a running pipeline's ClickHouse"));

    let requests = s.path().join("requests");
    let mut follow = meterflow_tests::Running(
        Command::new(meterflow_tests::meterflow_bin())
            .args([
                "export",
                "aws",
                "--follow",
                "--every",
                "1s",
                "-c",
                path(&catalog),
                "--clickhouse-url",
                &url,
                "--to",
                path(&requests),
            ])
            .env("METERFLOW_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("meterflow export --follow starts"),
    );
    // Its reports, read as they come: a full pipe would stop the follow.
    let reports = {
        let mut out = follow.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut out, &mut text).unwrap();
            text
        })
    };
    let sql = |q: &str| ch.query(&format!("{q} FORMAT TabSeparated")).unwrap();
    // What the exports hold per dimension must become ⌊usage before the closed hour ÷ unit⌋.
    let settled = || {
        let closed = sql("SELECT intDiv(watermark_ms, 3600000) * 3600 FROM meterflow.sink_progress ORDER BY generation DESC, epoch DESC LIMIT 1");
        let used = |sku: &str, unit: &str| {
            sql(&format!(
                "SELECT toString(toInt64(intDiv(sum(quantity), {unit}))) FROM meterflow.usage_events \
                 WHERE contract_id = 'globex-legacy' AND sku = '{sku}' AND billable = 1 \
                 AND toUInt32(event_time) < {}",
                closed.trim()
            ))
            .trim()
            .to_string()
        };
        let expected: BTreeMap<String, String> = [
            ("api_calls_1k", used("api_calls", "1000")),
            ("storage_gb", used("storage", "1")),
            ("tokens_1k", used("tokens", "1000")),
        ]
        .into_iter()
        .map(|(d, q)| (d.to_string(), q))
        .collect();
        let exported: BTreeMap<String, String> = sql(
            "SELECT dimension, toString(toInt64(sum(quantity))) FROM meterflow.exports \
             WHERE marketplace = 'aws' GROUP BY dimension",
        )
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(d, q)| (d.to_string(), q.to_string()))
        .collect();
        (expected, exported)
    };
    let wait_settled = || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let (expected, exported) = settled();
            if expected == exported {
                return expected;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the follow never caught up: expected {expected:?}, exported {exported:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    };
    let first = wait_settled();
    assert!(first.values().all(|q| q != "0"), "{first:?}");
    let hours = sql("SELECT count() FROM meterflow.exports WHERE record_kind = 'usage'");
    assert!(
        hours.trim().parse::<u32>().unwrap() > 24,
        "one record per hour: {hours}"
    );

    // The run goes on: first a late globex event for an hour already sent, then a week more.
    let mut more = first_days.clone();
    more.push_str(r#"{"event_id":"evt-follow-late","customer_id":"globex","contract_id":"globex-legacy","sku":"api_calls","unit":"requests","quantity":"2500","timestamp":"2026-10-24T02:00:00Z","environment":"production"}"#);
    more.push('\n');
    more.push_str(&between("2026-10-26", "2026-11-02"));
    std::fs::write(&input, more).unwrap();
    run();
    let second = wait_settled();
    assert_ne!(first, second);
    let late = sql(
        "SELECT count() FROM meterflow.exports WHERE record_kind = 'compensation' \
         AND dimension = 'api_calls_1k' AND usage_hour = toDateTime('2026-10-24 02:00:00')",
    );
    assert_eq!(
        late.trim(),
        "1",
        "the late usage settles once, as a compensation"
    );

    // Late usage for October once the follow has moved on to November (its watermark is in
    // November now): October is still within reach of late events, so it settles too. A
    // follow that passed over October only once, when November began, never sent it.
    let mut more = std::fs::read_to_string(&input).unwrap();
    more.push_str(r#"{"event_id":"evt-follow-late-october","customer_id":"globex","contract_id":"globex-legacy","sku":"tokens","unit":"tokens","quantity":"50000","timestamp":"2026-10-31T23:00:00Z","environment":"production"}"#);
    more.push('\n');
    std::fs::write(&input, more).unwrap();
    run();
    let third = wait_settled();
    assert_ne!(second["tokens_1k"], third["tokens_1k"]);
    let late = sql(
        "SELECT toString(toInt64(sum(quantity))) FROM meterflow.exports \
         WHERE dimension = 'tokens_1k' AND usage_hour = toDateTime('2026-10-31 23:00:00')",
    );
    assert_eq!(late.trim(), "50", "late October usage is sent for its hour");

    follow.terminate();
    let status = follow.wait_within(std::time::Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    // It reported what it exported, and kept quiet while nothing was new.
    let reports = reports.join().unwrap();
    assert!(
        reports.contains("aws export of 2026-10:") && reports.contains("aws export of 2026-11:"),
        "{reports}"
    );
    assert!(!reports.contains("nothing new to send"), "{reports}");
    // Every request written validates, and no customer, dimension and hour repeats.
    checked(&["--aws", path(&requests.join("aws"))]);
}
