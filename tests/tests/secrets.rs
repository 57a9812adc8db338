//! Secrets stay secret, and ClickHouse speaks TLS. A pipeline reads signed events from a Kafka
//! broker (librdkafka's mock cluster) into ClickHouse over HTTPS, with known secrets: the
//! ClickHouse password from a file and from the environment, a Kafka SASL password from a file,
//! a producer's HMAC key from the environment. Every log line (at debug level), every error,
//! every output file, `/metrics`, every row of every meterflow table in ClickHouse (rejections
//! and the catalog change log included) is searched for them: none may appear.

use std::path::Path;
use std::process::{Command, Output};

use meterflow_tests::kafka::{Batching, UsageProducer};
use meterflow_tests::servers::{free_port, ClickHouseServer};
use meterflow_tests::{meterflow_bin, signed_by_python_producer, Scratch};
use rdkafka::mocking::MockCluster;

const CLICKHOUSE_PASSWORD: &str = "ch-Pa55w0rd-7f3e9c1d";
const KAFKA_PASSWORD: &str = "kafka-Pa55-0b8d2e61";
const HMAC_KEY: &str = "hmac-K3y-a41b9e77c2";
const WRONG_PASSWORD: &str = "wrong-Pa55-55aa11ee";
const SECRETS: [&str; 4] = [
    CLICKHOUSE_PASSWORD,
    KAFKA_PASSWORD,
    HMAC_KEY,
    WRONG_PASSWORD,
];
const TOPIC: &str = "usage";

fn meterflow(d: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(meterflow_bin())
        .current_dir(d)
        .args(args)
        .env("METERFLOW_LOG", "debug")
        .envs(env.iter().copied())
        .output()
        .expect("meterflow runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn secrets_never_appear_in_logs_errors_outputs_metrics_or_clickhouse_and_clickhouse_speaks_tls() {
    let dir = Scratch::new("secrets");
    let d = dir.path();
    let (ch, https) = ClickHouseServer::start_secured(d, "meterflow", CLICKHOUSE_PASSWORD);
    let cert = d.join("clickhouse/cert.pem");
    std::fs::write(d.join("ch-password"), format!("{CLICKHOUSE_PASSWORD}\n")).unwrap();
    std::fs::write(d.join("wrong-password"), WRONG_PASSWORD).unwrap();
    std::fs::write(d.join("kafka-password"), KAFKA_PASSWORD).unwrap();
    let lines = signed_by_python_producer(d, HMAC_KEY, 300);
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let mut producer = UsageProducer::new(
        &cluster.bootstrap_servers(),
        TOPIC,
        2,
        Batching { every: 3, size: 20 },
    );
    producer.send_lines(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    producer.flush();
    let config = |password: &str| {
        format!(
            "[clickhouse]\nurl = \"https://localhost:{https}\"\nuser = \"meterflow\"\n{password}\nflush_interval = \"100ms\"\n\n\
             [kafka]\nbrokers = \"{}\"\ntopics = [\"{TOPIC}\"]\nexit_when_idle = \"2s\"\n\
             [kafka.settings]\n\"sasl.username\" = \"meterflow\"\n\
             [kafka.secret_files]\n\"sasl.password\" = \"{}\"\n\n\
             [integrity]\nmode = \"require_signature\"\n[integrity.keys]\n\"2026-11\" = {{ env = \"METERFLOW_TEST_HMAC\" }}\n",
            cluster.bootstrap_servers(),
            d.join("kafka-password").display()
        )
    };
    let file = format!("password_file = \"{}\"", d.join("ch-password").display());
    std::fs::write(d.join("secrets.toml"), config(&file)).unwrap();
    std::fs::write(
        d.join("from-env.toml"),
        config("password_env = \"METERFLOW_TEST_CH\""),
    )
    .unwrap();
    let wrong = format!("password_file = \"{}\"", d.join("wrong-password").display());
    std::fs::write(d.join("wrong.toml"), config(&wrong)).unwrap();
    let trusted = [
        ("SSL_CERT_FILE", cert.to_str().unwrap()),
        ("METERFLOW_TEST_HMAC", HMAC_KEY),
        ("METERFLOW_TEST_CH", CLICKHOUSE_PASSWORD),
    ];
    let catalog = d.join("catalog");
    let catalog = catalog.to_str().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut seen = String::new();

    // Migrate with the password from the environment, run with it from a file: both over TLS.
    let migrated = meterflow(d, &["migrate", "--config", "from-env.toml"], &trusted);
    assert!(migrated.status.success(), "{}", text(&migrated));
    seen += &text(&migrated);
    let run = meterflow(
        d,
        &[
            "run",
            "-c",
            catalog,
            "-o",
            "out",
            "--config",
            "secrets.toml",
            "--metrics-addr",
            &metrics,
        ],
        &trusted,
    );
    assert!(run.status.success(), "{}", text(&run));
    seen += &text(&run);
    let recorded = meterflow(
        d,
        &[
            "catalog",
            "record",
            catalog,
            "--config",
            "secrets.toml",
            "--actor",
            "ops",
        ],
        &trusted,
    );
    assert!(recorded.status.success(), "{}", text(&recorded));
    seen += &text(&recorded);

    // Errors: a wrong password, and a certificate nobody vouches for. Both fail, neither says
    // more than it should.
    let refused = meterflow(d, &["migrate", "--config", "wrong.toml"], &trusted);
    assert!(!refused.status.success(), "a wrong password is refused");
    let refused = text(&refused);
    assert!(
        refused.contains("meterflow"),
        "the error names the user: {refused}"
    );
    seen += &refused;
    let untrusted = meterflow(d, &["migrate", "--config", "secrets.toml"], &trusted[1..]);
    assert!(
        !untrusted.status.success(),
        "an unverified certificate is refused"
    );
    let untrusted = text(&untrusted);
    assert!(
        untrusted.to_lowercase().contains("certificate"),
        "the error says why: {untrusted}"
    );
    seen += &untrusted;

    // Outputs: counts.json, the report, the preview, metrics.prom (what /metrics served).
    for entry in std::fs::read_dir(d.join("out")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            seen += &String::from_utf8_lossy(&std::fs::read(&path).unwrap());
        }
    }
    assert!(
        seen.contains("meterflow_records_received_total"),
        "metrics.prom was searched"
    );

    // Every row of every meterflow table.
    let tables = ch
        .query("SELECT name FROM system.tables WHERE database = 'meterflow' AND engine NOT LIKE '%View' FORMAT TSV")
        .unwrap();
    for table in tables.lines() {
        seen += &ch
            .query(&format!("SELECT * FROM meterflow.{table} FORMAT TSV"))
            .unwrap();
    }
    assert!(
        seen.contains("bad_signature"),
        "the tampered event's rejection was searched"
    );
    assert!(seen.contains("acme-2026"), "the billed rows were searched");
    let changes = ch
        .query("SELECT count() FROM meterflow.catalog_changes FORMAT TSV")
        .unwrap();
    assert!(
        changes.trim().parse::<u64>().unwrap() > 0,
        "the catalog log was searched"
    );
    let accepted = ch
        .query("SELECT count() FROM meterflow.usage_events FORMAT TSV")
        .unwrap();
    assert!(
        accepted.trim().parse::<u64>().unwrap() >= 300,
        "signed events were billed"
    );

    for secret in SECRETS {
        let at = seen.find(secret);
        assert!(
            at.is_none(),
            "a secret appears: …{}…",
            &seen[at.unwrap().saturating_sub(200)..(at.unwrap() + 50).min(seen.len())]
        );
    }
}

/// Kafka over TLS: the tansu broker is reachable only through a TLS listener (a proxy holding a
/// self-signed certificate, advertised as the broker's address), and a pipeline configured with
/// `security.protocol = "ssl"` and the certificate as its CA reads every record through it.
#[test]
fn kafka_over_tls_reads_every_record() {
    use std::io::{BufRead, BufReader};
    let s = Scratch::new("kafka-tls");
    let d = s.path();
    meterflow_tests::generate(d, 2000, 10, 5, &[]);
    let events = std::fs::read_to_string(d.join("events.jsonl")).unwrap();
    let lines: Vec<&str> = events.lines().collect();
    let mut tansu = meterflow_tests::servers::Tansu::start(d);
    tansu.create_topic(TOPIC, 2);
    let single = Batching { every: 0, size: 0 };
    meterflow_tests::kafka::produce(&tansu.brokers(), TOPIC, 2, &lines, single);

    // From now on the broker tells clients to connect to the TLS port, and only TLS is there.
    let (cert, key) = meterflow_tests::servers::self_signed_certificate(d);
    let tls_port = free_port();
    let proxy_py = Path::new(env!("CARGO_MANIFEST_DIR")).join("tls_proxy.py");
    let mut proxy = Command::new("python3")
        .arg(&proxy_py)
        .args([cert.to_str().unwrap(), key.to_str().unwrap()])
        .args([tls_port.to_string(), tansu.port.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the TLS proxy");
    let mut proxy_out = BufReader::new(proxy.stdout.take().unwrap());
    let mut first = String::new();
    proxy_out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "listening");
    tansu.kill();
    tansu.advertised = Some(tls_port);
    tansu.resume();

    let config = d.join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:{tls_port}\"\ntopics = [\"{TOPIC}\"]\n\
             exit_when_idle = \"2s\"\n\n[kafka.settings]\n\"security.protocol\" = \"ssl\"\n\
             \"ssl.ca.location\" = \"{}\"\n",
            cert.display()
        ),
    )
    .unwrap();
    let o = meterflow(
        d,
        &[
            "run", "-c", "catalog", "-o", "out", "--config", "tls.toml", "-q",
        ],
        &[],
    );
    let _ = proxy.kill();
    let handshakes = {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut proxy_out, &mut rest);
        rest.lines().filter(|l| l.starts_with("tls ")).count()
    };
    let _ = proxy.wait();
    assert!(o.status.success(), "{}", text(&o));
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/counts.json")).unwrap()).unwrap();
    assert_eq!(
        counts["received"],
        lines.len() as u64,
        "every record read over TLS"
    );
    assert!(handshakes >= 1, "the pipeline spoke TLS to the broker");
}
