//! Prometheus `/metrics` of a running pipeline (`--metrics-addr`, `[metrics] addr`; off by
//! default): the accounting of `counts.json` as counters, updated as epochs complete, so a
//! dashboard or an alert rule sees records received, accepted, billable, duplicated and rejected
//! (by reason), late and out-of-order events and corrections while the run goes on.
//!
//! The values come from the same totals `counts.json` is written from, so at the end of a run the
//! two agree. The sinks report what they do from their own threads into [`sink_telemetry`]:
//! ClickHouse insert latency, rows and retries per table, alerts sent, retried and failed. The
//! exposition format is the `prometheus` crate's; the HTTP side is one small listener thread
//! that answers `GET /metrics`. When a run ends, the final values are also written to
//! `OUT/metrics.prom` (for node_exporter's textfile collector and for batch runs nobody
//! scraped).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use meterflow_operators::accounting::{LagTotals, Latency};
use meterflow_schemas::rejection::Reason;
use meterflow_schemas::rows::Counts;
use meterflow_schemas::time::EventTime;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};
use serde::Deserialize;

use crate::sinks::clickhouse::progress::named_lag;

/// `[metrics]` in the config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` to serve `/metrics` on; empty: off.
    pub addr: String,
}

/// The pipeline's metrics.
pub struct Metrics {
    registry: Registry,
    received: IntCounter,
    bytes: IntCounter,
    accepted: IntCounter,
    billable: IntCounter,
    duplicates: IntCounter,
    rejected: IntCounterVec,
    late: IntCounter,
    out_of_order: IntCounter,
    corrections: IntCounter,
    dedup_keys: IntGauge,
    in_flight: IntGauge,
    capture: Gauge,
    latency: GaugeVec,
    metering_lag: GaugeVec,
    watermark_lag: Gauge,
    /// What the counters have been raised to.
    last: Mutex<Counts>,
    /// Why the pipeline is not reading yet (`None`: it is), for `/readyz`.
    not_ready: Mutex<Option<String>>,
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, String> {
    let c = IntCounter::new(name, help).map_err(|e| e.to_string())?;
    r.register(Box::new(c.clone())).map_err(|e| e.to_string())?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, String> {
    let g = IntGauge::new(name, help).map_err(|e| e.to_string())?;
    r.register(Box::new(g.clone())).map_err(|e| e.to_string())?;
    Ok(g)
}

/// How an alert delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertOutcome {
    /// Delivered (a webhook answered 2xx; a Kafka producer took it, acknowledged before the
    /// commit).
    Sent,
    /// One attempt failed and another follows.
    Retried,
    /// Given up on: written to the dead-letter file, or a Kafka error.
    Failed,
}

impl AlertOutcome {
    fn label(self) -> &'static str {
        match self {
            AlertOutcome::Sent => "sent",
            AlertOutcome::Retried => "retried",
            AlertOutcome::Failed => "failed",
        }
    }
}

/// What the sinks report from their own threads, process-wide (a few atomic adds per insert or
/// alert, whether or not `/metrics` is served).
pub struct SinkTelemetry {
    insert_seconds: HistogramVec,
    rows_inserted: IntCounterVec,
    insert_retries: IntCounterVec,
    alerts: IntCounterVec,
    /// ClickHouse operations waiting for the server to come back (`/readyz` says so).
    waiting_for_clickhouse: std::sync::atomic::AtomicUsize,
}

/// Held while a ClickHouse operation retries; dropped when it succeeds or gives up.
pub struct WaitingForClickHouse;

impl Drop for WaitingForClickHouse {
    fn drop(&mut self) {
        sink_telemetry()
            .waiting_for_clickhouse
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The process's [`SinkTelemetry`].
pub fn sink_telemetry() -> &'static SinkTelemetry {
    static TELEMETRY: LazyLock<SinkTelemetry> = LazyLock::new(SinkTelemetry::new);
    &TELEMETRY
}

impl SinkTelemetry {
    fn new() -> SinkTelemetry {
        // The names and labels are constants: they are valid, or no test would pass.
        let counters = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        SinkTelemetry {
            insert_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "meterflow_clickhouse_insert_seconds",
                    "Time to insert one batch into a ClickHouse table, retries included.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ]),
                &["table"],
            )
            .expect("valid metric"),
            rows_inserted: counters(
                "meterflow_clickhouse_rows_inserted_total",
                "Rows inserted into each ClickHouse table.",
                &["table"],
            ),
            insert_retries: counters(
                "meterflow_clickhouse_insert_retries_total",
                "Failed insert attempts into each ClickHouse table that were retried.",
                &["table"],
            ),
            alerts: counters(
                "meterflow_alerts_total",
                "Alert deliveries, per sink (webhook, kafka) and outcome (sent, retried, failed).",
                &["sink", "outcome"],
            ),
            waiting_for_clickhouse: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A ClickHouse operation found the server unreachable and retries until the guard drops.
    pub fn waiting_for_clickhouse(&self) -> WaitingForClickHouse {
        self.waiting_for_clickhouse
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        WaitingForClickHouse
    }

    /// Whether some ClickHouse operation waits for the server now.
    pub fn clickhouse_unreachable(&self) -> bool {
        self.waiting_for_clickhouse
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    }

    /// `rows` rows are in `table`, after `took`.
    pub fn inserted(&self, table: &str, rows: usize, took: Duration) {
        self.insert_seconds
            .with_label_values(&[table])
            .observe(took.as_secs_f64());
        self.rows_inserted
            .with_label_values(&[table])
            .inc_by(rows as u64);
    }

    /// An insert into `table` failed and is retried.
    pub fn insert_retried(&self, table: &str) {
        self.insert_retries.with_label_values(&[table]).inc();
    }

    pub fn alert(&self, sink: &str, outcome: AlertOutcome) {
        self.alerts
            .with_label_values(&[sink, outcome.label()])
            .inc();
    }

    fn register(&self, r: &Registry) -> Result<(), String> {
        r.register(Box::new(self.insert_seconds.clone()))
            .and_then(|()| r.register(Box::new(self.rows_inserted.clone())))
            .and_then(|()| r.register(Box::new(self.insert_retries.clone())))
            .and_then(|()| r.register(Box::new(self.alerts.clone())))
            .map_err(|e| e.to_string())
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, String> {
        let r = Registry::new();
        let rejected = IntCounterVec::new(
            Opts::new(
                "meterflow_records_rejected_total",
                "Records rejected, by reason code.",
            ),
            &["reason"],
        )
        .map_err(|e| e.to_string())?;
        r.register(Box::new(rejected.clone()))
            .map_err(|e| e.to_string())?;
        let latency = GaugeVec::new(
            Opts::new(
                "meterflow_epoch_latency_seconds",
                "Read-to-durable latency of the epochs so far (quantile 0.5, 0.99 and 1 = max).",
            ),
            &["quantile"],
        )
        .map_err(|e| e.to_string())?;
        r.register(Box::new(latency.clone()))
            .map_err(|e| e.to_string())?;
        let metering_lag = GaugeVec::new(
            Opts::new(
                "meterflow_metering_lag_seconds",
                "Metering lag of the committed events so far, per partition read: event time to received, received to committed, event time to committed (quantile 0.5, 0.95, 0.99 and 1 = max).",
            ),
            &["source", "partition", "stage", "quantile"],
        )
        .map_err(|e| e.to_string())?;
        r.register(Box::new(metering_lag.clone()))
            .map_err(|e| e.to_string())?;
        let watermark_lag = Gauge::new(
            "meterflow_watermark_lag_seconds",
            "How far the committed watermark is behind the clock.",
        )
        .map_err(|e| e.to_string())?;
        r.register(Box::new(watermark_lag.clone()))
            .map_err(|e| e.to_string())?;
        let dedup_keys = IntGauge::new(
            "meterflow_dedup_keys",
            "Idempotency keys the dedup tables hold.",
        )
        .map_err(|e| e.to_string())?;
        r.register(Box::new(dedup_keys.clone()))
            .map_err(|e| e.to_string())?;
        let capture = Gauge::new(
            "meterflow_event_capture_ratio",
            "Billable accepted events ÷ (billable accepted events + rejected records) over the run's totals: the share of sent usage that reaches billing (see docs/scorecard.md).",
        )
        .map_err(|e| e.to_string())?;
        r.register(Box::new(capture.clone()))
            .map_err(|e| e.to_string())?;
        sink_telemetry().register(&r)?;
        Ok(Metrics {
            in_flight: gauge(
                &r,
                "meterflow_epochs_in_flight",
                "Epochs read and not yet durable in every output.",
            )?,
            capture,
            received: counter(
                &r,
                "meterflow_records_received_total",
                "Records read (events, bad records, retries).",
            )?,
            bytes: counter(&r, "meterflow_input_bytes_total", "Bytes of input read.")?,
            accepted: counter(
                &r,
                "meterflow_events_accepted_total",
                "Events accepted (valid, first of their idempotency key).",
            )?,
            billable: counter(
                &r,
                "meterflow_events_billable_total",
                "Accepted events from billable environments.",
            )?,
            duplicates: counter(
                &r,
                "meterflow_records_duplicate_total",
                "Retries of accepted events (counted, not billed).",
            )?,
            late: counter(
                &r,
                "meterflow_events_late_total",
                "Accepted events of a closed period (billed as adjustments).",
            )?,
            out_of_order: counter(
                &r,
                "meterflow_events_out_of_order_total",
                "Accepted events behind the watermark, inside the tolerance.",
            )?,
            corrections: counter(
                &r,
                "meterflow_corrections_total",
                "Accepted amend and void events.",
            )?,
            rejected,
            dedup_keys,
            latency,
            metering_lag,
            watermark_lag,
            registry: r,
            last: Mutex::new(Counts::default()),
            not_ready: Mutex::new(Some("starting".into())),
        })
    }

    /// Raises the counters to `c` (the run's totals so far); `in_flight`: epochs read and not
    /// yet durable.
    pub fn update(&self, c: &Counts, latency: &Latency, in_flight: usize) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let up = |counter: &IntCounter, now: u64, before: u64| {
            counter.inc_by(now.saturating_sub(before));
        };
        up(&self.received, c.received, last.received);
        up(&self.bytes, c.bytes, last.bytes);
        up(&self.accepted, c.accepted, last.accepted);
        up(&self.billable, c.billable, last.billable);
        up(&self.duplicates, c.duplicates, last.duplicates);
        up(&self.late, c.late, last.late);
        up(&self.out_of_order, c.out_of_order, last.out_of_order);
        up(&self.corrections, c.corrections, last.corrections);
        for r in Reason::ALL {
            let counter = self.rejected.with_label_values(&[r.code()]);
            up(&counter, c.rejected_for(r), last.rejected_for(r));
        }
        self.dedup_keys.set(c.dedup_keys);
        self.in_flight.set(in_flight as i64);
        let sent = c.billable + c.rejected;
        if sent > 0 {
            self.capture.set(c.billable as f64 / sent as f64);
        }
        for (q, ms) in [
            ("0.5", latency.p50_ms),
            ("0.99", latency.p99_ms),
            ("1", latency.max_ms),
        ] {
            self.latency.with_label_values(&[q]).set(ms / 1000.0);
        }
        *last = c.clone();
    }

    /// Sets the metering lag gauges from what the run has committed (`sources` names the
    /// inputs by index).
    pub fn update_lag(&self, lag: &LagTotals, sources: &[String]) {
        let (partitions, watermark) = lag.snapshot();
        for p in named_lag(&partitions, sources) {
            let partition = p.partition.to_string();
            for (stage, h) in p.stages() {
                let s = h.summary();
                for (q, ms) in [
                    ("0.5", s.p50_ms),
                    ("0.95", s.p95_ms),
                    ("0.99", s.p99_ms),
                    ("1", s.max_ms),
                ] {
                    self.metering_lag
                        .with_label_values(&[p.source.as_str(), &partition, stage, q])
                        .set(ms as f64 / 1000.0);
                }
            }
        }
        if let Some(w) = watermark {
            let behind = EventTime::now().0.saturating_sub(w.0).max(0);
            self.watermark_lag.set(behind as f64 / 1000.0);
        }
    }

    /// `/readyz` answers 200 from now on (the pipeline reads and commits).
    pub fn ready(&self) {
        *self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// `/readyz` answers 503 with `why` (restoring from ClickHouse, switching catalogs...).
    pub fn not_ready(&self, why: &str) {
        *self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Serves `/metrics` on `addr` from a thread of its own, for as long as the process runs.
    pub fn serve(self: &Arc<Self>, addr: &str) -> Result<SocketAddr, String> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| format!("metrics.addr `{addr}`: cannot listen: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        let metrics = self.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    if let Err(e) = metrics.answer(stream) {
                        tracing::debug!(error = %e, "metrics request");
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        tracing::info!(addr = %bound, "serving /metrics");
        Ok(bound)
    }

    fn answer(&self, stream: TcpStream) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request = String::new();
        reader.read_line(&mut request)?;
        // The headers are read and ignored.
        let mut header = String::new();
        while reader.read_line(&mut header)? > 2 {
            header.clear();
        }
        let path = request.split_whitespace().nth(1).unwrap_or("");
        let path = path.split('?').next().unwrap_or("");
        let text = |status: &'static str, body: String| {
            (status, body.into_bytes(), "text/plain".to_string())
        };
        let (status, body, kind) = match (request.starts_with("GET "), path) {
            (true, "/metrics") => (
                "200 OK",
                self.render(),
                TextEncoder::new().format_type().to_string(),
            ),
            // Liveness: the process answers.
            (true, "/healthz") => text("200 OK", "ok\n".into()),
            // Readiness: the pipeline reads and commits.
            (true, "/readyz") => match &*self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) {
                None if sink_telemetry().clickhouse_unreachable() => text(
                    "503 Service Unavailable",
                    "not ready: ClickHouse is unreachable; retrying with backoff (nothing is \
                     lost: reading pauses once too many epochs wait)\n"
                        .into(),
                ),
                None => text("200 OK", "ready\n".into()),
                Some(why) => text("503 Service Unavailable", format!("not ready: {why}\n")),
            },
            _ => text(
                "404 Not Found",
                "meterflow serves /metrics, /healthz and /readyz\n".into(),
            ),
        };
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        stream.write_all(&body)?;
        stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_follow_the_totals_and_are_served() {
        let m = Arc::new(Metrics::new().unwrap());
        let mut c = Counts {
            received: 10,
            accepted: 7,
            billable: 6,
            duplicates: 1,
            ..Counts::default()
        };
        c.reject(Reason::UnknownCustomer);
        c.reject(Reason::UnknownCustomer);
        m.update(&c, &Latency::default(), 3);
        c.received = 15;
        c.accepted = 12;
        m.update(&c, &Latency::default(), 1);
        sink_telemetry().inserted("usage_events", 40, Duration::from_millis(20));
        sink_telemetry().insert_retried("usage_events");
        sink_telemetry().alert("webhook", AlertOutcome::Sent);
        let addr = m.serve("127.0.0.1:0").unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert_eq!(value(&text, "meterflow_records_received_total"), Some(15.0));
        assert_eq!(value(&text, "meterflow_events_accepted_total"), Some(12.0));
        assert_eq!(value(&text, "meterflow_events_billable_total"), Some(6.0));
        assert_eq!(value(&text, "meterflow_epochs_in_flight"), Some(1.0));
        assert_eq!(value(&text, "meterflow_event_capture_ratio"), Some(0.75));
        let usage = "{table=\"usage_events\"}";
        for (series, at_least) in [
            (
                format!("meterflow_clickhouse_rows_inserted_total{usage}"),
                40.0,
            ),
            (
                format!("meterflow_clickhouse_insert_retries_total{usage}"),
                1.0,
            ),
            (
                format!("meterflow_clickhouse_insert_seconds_count{usage}"),
                1.0,
            ),
            (
                "meterflow_alerts_total{outcome=\"sent\",sink=\"webhook\"}".into(),
                1.0,
            ),
        ] {
            // Process-wide: other tests of this binary may have added to them.
            assert!(
                value(&text, &series).is_some_and(|v| v >= at_least),
                "{series}: {text}"
            );
        }
        let code = Reason::UnknownCustomer.code();
        assert_eq!(
            value(
                &text,
                &format!("meterflow_records_rejected_total{{reason=\"{code}\"}}")
            ),
            Some(2.0)
        );
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\n\r\n").unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut s, &mut text).unwrap();
            text
        };
        assert!(get("/").starts_with("HTTP/1.1 404"));
        assert!(get("/healthz").starts_with("HTTP/1.1 200"));
        let starting = get("/readyz");
        assert!(
            starting.starts_with("HTTP/1.1 503") && starting.ends_with("not ready: starting\n"),
            "{starting}"
        );
        m.ready();
        assert!(get("/readyz").starts_with("HTTP/1.1 200"));
        m.not_ready("switching to a new catalog");
        assert!(get("/readyz").contains("switching to a new catalog"));
    }
}
