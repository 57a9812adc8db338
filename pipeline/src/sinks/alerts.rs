//! Alert delivery: entitlement signals sent to a webhook as generic JSON, a Slack message or a
//! PagerDuty Events v2 event.
//!
//! An alert fires when a signal becomes active (usage crossed a threshold or limit) and is
//! resolved when a correction takes it back. Alerts go out after the signal rows are durable
//! in their table, each with a dedup key stable across runs
//! (`meterflow:entitlement:<customer>:<contract>:<sku>:<period>:<signal>:<percent>`), so a
//! repeat never pages twice: the sender tracks which signals are active (a resumed run starts
//! from the signals ClickHouse holds) and sends only changes, and PagerDuty dedups on the key.
//! A failed delivery is retried with backoff (429, 5xx, network errors); once `max_attempts` are
//! spent, or on another 4xx, the alert goes to the dead-letter file with the reason, and the
//! pipeline goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meterflow_operators::signed::Signed;
use meterflow_operators::signed::SignedState;
use meterflow_operators::sink::TableWriter;
use meterflow_operators::Epoch;
use meterflow_schemas::anomaly::Anomaly;
use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::entitlement::SignalKind;
use meterflow_schemas::rows::EntitlementSignal;
use meterflow_schemas::time::{EventTime, PeriodUnit, Span};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::sinks::http::{with_retries, Failure, Http};
use crate::sinks::metrics::{sink_telemetry, AlertOutcome};
use crate::sources::kafka::{send_with_room, Refusals};

/// `[alerts]` in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Where alerts are POSTed (http or https). Empty: no webhook.
    pub webhook_url: String,
    /// Also publish every alert to this Kafka topic (on the `[kafka]` brokers), keyed by its
    /// dedup key, for the product to consume.
    pub kafka_topic: Option<String>,
    /// `json` (generic), `slack` (incoming webhook) or `pagerduty` (Events API v2).
    pub format: String,
    /// For `pagerduty`: the environment variable holding the integration's routing key.
    pub routing_key_env: Option<String>,
    /// Attempts per alert before it goes to the dead-letter file.
    pub max_attempts: u32,
    /// Per-request timeout.
    pub timeout: Span,
    /// Alerts that could not be delivered, one JSON object per line.
    pub dead_letter: PathBuf,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_url: String::new(),
            kafka_topic: None,
            format: "json".into(),
            routing_key_env: None,
            max_attempts: 6,
            timeout: Span(5000),
            dead_letter: PathBuf::from("alerts-dead-letter.jsonl"),
        }
    }
}

impl AlertsConfig {
    pub fn enabled(&self) -> bool {
        !self.webhook_url.is_empty() || self.kafka_topic.is_some()
    }

    /// Checks the settings; the error names the key and the fix. `None`: no webhook.
    pub fn check(&self, kafka_brokers: &str) -> Result<Option<Format>, (String, String)> {
        if let Some(topic) = &self.kafka_topic {
            if topic.trim().is_empty() {
                return Err((
                    "alerts.kafka_topic is empty".into(),
                    "name the topic, e.g. kafka_topic = \"meterflow.signals\"".into(),
                ));
            }
            if kafka_brokers.is_empty() {
                return Err((
                    format!("alerts.kafka_topic = \"{topic}\" but kafka.brokers is not set"),
                    "set [kafka] brokers (and any settings) for the cluster to publish to".into(),
                ));
            }
        }
        if self.webhook_url.is_empty() {
            return Ok(None);
        }
        self.check_webhook().map(Some)
    }

    fn check_webhook(&self) -> Result<Format, (String, String)> {
        let format = match self.format.as_str() {
            "json" => Format::Json,
            "slack" => Format::Slack,
            "pagerduty" => {
                let var = self.routing_key_env.as_ref().ok_or_else(|| {
                    (
                        "alerts.format = \"pagerduty\" needs alerts.routing_key_env".to_string(),
                        "name the environment variable holding the routing key, e.g. routing_key_env = \"PD_ROUTING_KEY\"".to_string(),
                    )
                })?;
                let key = std::env::var(var).map_err(|_| {
                    (
                        format!("alerts.routing_key_env names {var}, which is not set"),
                        format!("export {var}=<the PagerDuty integration's routing key>"),
                    )
                })?;
                Format::PagerDuty { routing_key: key }
            }
            other => {
                return Err((
                    format!("alerts.format `{other}` is not json, slack or pagerduty"),
                    "set alerts.format to \"json\", \"slack\" or \"pagerduty\"".into(),
                ))
            }
        };
        if !(self.webhook_url.starts_with("http://") || self.webhook_url.starts_with("https://"))
            || self.webhook_url.parse::<hyper::Uri>().is_err()
        {
            return Err((
                format!(
                    "alerts.webhook_url `{}` is not an http(s) URL",
                    self.webhook_url
                ),
                "write the full URL, e.g. \"https://hooks.slack.com/services/...\"".into(),
            ));
        }
        if self.max_attempts == 0 {
            return Err((
                "alerts.max_attempts is 0".into(),
                "allow at least one attempt".into(),
            ));
        }
        Ok(format)
    }
}

#[derive(Clone, Debug)]
pub enum Format {
    Json,
    Slack,
    PagerDuty { routing_key: String },
}

/// Sends alerts to one webhook, with retries and a dead-letter file.
pub struct Webhook {
    url: hyper::Uri,
    url_text: String,
    format: Format,
    max_attempts: u32,
    dead_letter: PathBuf,
    http: Http,
}

impl Webhook {
    pub fn new(cfg: &AlertsConfig, format: Format) -> Result<Webhook, String> {
        Ok(Webhook {
            url: cfg
                .webhook_url
                .parse()
                .map_err(|e| format!("alerts.webhook_url: {e}"))?,
            url_text: cfg.webhook_url.clone(),
            format,
            max_attempts: cfg.max_attempts,
            dead_letter: cfg.dead_letter.clone(),
            http: Http::new(
                "alert sender",
                Duration::from_millis(cfg.timeout.millis().max(1) as u64),
            )?,
        })
    }

    /// Delivers one alert: retried with backoff, dead-lettered when it cannot be.
    pub fn deliver(&self, alert: &Alert) -> Result<(), String> {
        let body = alert.payload(&self.format).to_string();
        let headers = [("content-type", "application/json".to_string())];
        let delivered = with_retries(
            self.max_attempts,
            || {
                let answer = self
                    .http
                    .post(&self.url, &headers, body.clone().into_bytes())
                    .inspect_err(|f| {
                        tracing::warn!(dedup_key = %alert.dedup_key, error = %f.error, "alert not delivered");
                    })?;
                if answer.is_success() {
                    return Ok(());
                }
                let f = Failure::of(&answer);
                tracing::warn!(dedup_key = %alert.dedup_key, error = %f.error, "alert not delivered");
                Err(f)
            },
            |_, _| sink_telemetry().alert("webhook", AlertOutcome::Retried),
        );
        let Err(last_error) = delivered else {
            sink_telemetry().alert("webhook", AlertOutcome::Sent);
            return Ok(());
        };
        let line = json!({
            "at": EventTime::now().to_string(),
            "url": self.url_text,
            "error": last_error,
            "dedup_key": alert.dedup_key,
            "payload": serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.dead_letter)
            .map_err(|e| format!("cannot open {}: {e}", self.dead_letter.display()))?;
        // One write per line: the workers of a run append to the same file.
        f.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("{}: {e}", self.dead_letter.display()))?;
        f.sync_all()
            .map_err(|e| format!("{}: {e}", self.dead_letter.display()))?;
        tracing::error!(dedup_key = %alert.dedup_key, dead_letter = %self.dead_letter.display(), "alert dead-lettered");
        sink_telemetry().alert("webhook", AlertOutcome::Failed);
        Ok(())
    }
}

/// Where alerts go.
pub trait AlertSink {
    /// Hands over one alert (a webhook delivers it now).
    fn deliver(&mut self, alert: &Alert) -> Result<(), String>;
    /// Waits until every alert handed over is delivered.
    fn finish(&mut self) -> Result<(), String> {
        Ok(())
    }
}

impl AlertSink for Webhook {
    fn deliver(&mut self, alert: &Alert) -> Result<(), String> {
        Webhook::deliver(self, alert)
    }
}

/// Publishes alerts to a Kafka topic, keyed by dedup key, as the generic JSON payload. A broker
/// that is down is waited for (never dropped): `finish` retries the flush with backoff.
pub struct KafkaAlerts {
    producer: rdkafka::producer::BaseProducer<Refusals>,
    topic: String,
}

impl KafkaAlerts {
    pub fn new(
        kafka: &crate::sources::kafka::KafkaConfig,
        topic: &str,
    ) -> Result<KafkaAlerts, String> {
        let c = kafka.producer_config()?;
        let producer = c
            .create_with_context(Refusals::default())
            .map_err(|e| format!("cannot create the alert producer: {e}"))?;
        Ok(KafkaAlerts {
            producer,
            topic: topic.to_string(),
        })
    }
}

impl AlertSink for KafkaAlerts {
    fn deliver(&mut self, alert: &Alert) -> Result<(), String> {
        let body = alert.payload(&Format::Json).to_string();
        let record = rdkafka::producer::BaseRecord::to(&self.topic)
            .key(alert.dedup_key.as_str())
            .payload(body.as_str());
        match send_with_room(&self.producer, record) {
            Ok(()) => {
                sink_telemetry().alert("kafka", AlertOutcome::Sent);
                Ok(())
            }
            Err(e) => {
                sink_telemetry().alert("kafka", AlertOutcome::Failed);
                Err(format!("publishing an alert to {}: {e}", self.topic))
            }
        }
    }

    fn finish(&mut self) -> Result<(), String> {
        use rdkafka::producer::Producer;
        let mut delay = Duration::from_millis(200);
        loop {
            match self.producer.flush(Duration::from_secs(10)) {
                Ok(()) => {
                    // What the brokers refused (or did not take within the delivery timeout).
                    for error in self.producer.context().take() {
                        tracing::error!(topic = %self.topic, %error, "alert not delivered to Kafka");
                        sink_telemetry().alert("kafka", AlertOutcome::Failed);
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "alerts not yet acknowledged by Kafka; waiting");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// One alert: a signal that became active (`firing`) or went away (`resolved`).
#[derive(Clone, Debug)]
pub struct Alert {
    pub dedup_key: String,
    pub firing: bool,
    pub summary: String,
    pub details: Value,
    /// `entitlement` or `anomaly`.
    pub class: &'static str,
    /// PagerDuty severity: `info`, `warning` or `critical`.
    pub severity: &'static str,
    pub customer: String,
    pub sku: String,
}

/// A row that alerts: an entitlement signal or an anomaly.
pub trait Alertable: Ord + Clone + 'static {
    /// The alert for this row becoming active (`firing`) or going away.
    fn alert(&self, firing: bool, catalog: &Catalog, unit: PeriodUnit) -> Alert;
}

impl Alertable for EntitlementSignal {
    fn alert(&self, firing: bool, catalog: &Catalog, unit: PeriodUnit) -> Alert {
        let s = self;
        let customer = catalog.customers[s.customer.ix()].id.clone();
        let contract = catalog.contracts[s.contract.ix()].id.clone();
        let sku = catalog.sku_id(s.sku).to_string();
        let period = unit.label(s.period);
        let what = match s.kind {
            SignalKind::Threshold => format!("{}% of the included {}", s.percent, s.allowance),
            SignalKind::SoftLimit => format!("the soft limit of {}", s.at),
            SignalKind::HardLimit => format!("the hard limit of {}", s.at),
            SignalKind::CreditBurn | SignalKind::CommitmentBurn | SignalKind::BudgetBurn => {
                String::new()
            }
        };
        let currency = catalog.currency_of(s.contract);
        let plan = match s.kind {
            SignalKind::CommitmentBurn => Some("commitment"),
            SignalKind::BudgetBurn => Some("budget"),
            _ => None,
        };
        let summary = if s.kind == SignalKind::CreditBurn {
            if firing {
                format!("{customer} ({contract}): prepaid credit is burning faster than planned: {} {currency} left after {period} at {} {currency} a period runs out before the grants expire", s.at, s.allowance)
            } else {
                format!("{customer} ({contract}): prepaid credit is back on plan after {period}")
            }
        } else if let Some(plan) = plan {
            if firing {
                format!("{customer} ({contract}): usage spend in {period} is burning its {plan} faster than planned: on course for {}% of the {} {currency} {plan} ({} {currency})", s.percent, s.allowance, s.at)
            } else {
                format!(
                    "{customer} ({contract}): usage spend in {period} is back on its {plan} plan"
                )
            }
        } else if firing {
            format!("{customer} ({contract}) used {what} {sku} in {period}")
        } else {
            format!(
                "{customer} ({contract}) is back below {what} {sku} in {period} after a correction"
            )
        };
        Alert {
            // A burn's projected percent moves with every round of usage: it is not part of
            // the key, so the alert pages once per period.
            dedup_key: format!(
                "meterflow:entitlement:{customer}:{contract}:{sku}:{period}:{}:{}",
                s.kind.as_str(),
                if plan.is_some() { 0 } else { s.percent }
            ),
            firing,
            summary,
            details: json!({
                "customer_id": customer,
                "contract_id": contract,
                "sku": sku,
                "period": period,
                "signal": s.kind.as_str(),
                "percent": s.percent,
                "at_quantity": s.at.to_string(),
                "allowance": s.allowance.to_string(),
            }),
            class: "entitlement",
            severity: match s.kind {
                SignalKind::HardLimit => "critical",
                SignalKind::SoftLimit
                | SignalKind::CreditBurn
                | SignalKind::CommitmentBurn
                | SignalKind::BudgetBurn => "warning",
                SignalKind::Threshold => "info",
            },
            customer,
            sku,
        }
    }
}

impl Alertable for Anomaly {
    fn alert(&self, firing: bool, catalog: &Catalog, _unit: PeriodUnit) -> Alert {
        let customer = catalog.customers[self.customer.ix()].id.to_string();
        let sku = catalog.sku_id(self.sku).to_string();
        let summary = if firing {
            self.explain(catalog)
        } else {
            format!(
                "resolved: the {} of {customer} {sku} from {} no longer holds after a correction",
                self.kind.as_str(),
                self.start
            )
        };
        Alert {
            dedup_key: format!(
                "meterflow:anomaly:{customer}:{sku}:{}:{}",
                self.kind.as_str(),
                self.start
            ),
            firing,
            summary,
            details: json!({
                "customer_id": customer,
                "sku": sku,
                "kind": self.kind.as_str(),
                "window_start": self.start.to_string(),
                "window_end": self.end.to_string(),
                "observed": self.observed.to_string(),
                "expected": self.expected.to_string(),
                "score": self.score(),
                "severity": self.severity.as_str(),
                "baseline": self.baseline.label(),
            }),
            class: "anomaly",
            severity: self.severity.as_str(),
            customer,
            sku,
        }
    }
}

impl Alert {
    pub fn payload(&self, format: &Format) -> Value {
        let status = if self.firing { "firing" } else { "resolved" };
        match format {
            Format::Json => json!({
                "source": "meterflow",
                "kind": self.class,
                "status": status,
                "dedup_key": self.dedup_key,
                "summary": self.summary,
                "details": self.details,
            }),
            Format::Slack => json!({
                "text": format!(
                    "{} meterflow: {} (`{}`)",
                    if self.firing { ":warning:" } else { ":white_check_mark:" },
                    self.summary,
                    self.dedup_key
                ),
            }),
            Format::PagerDuty { routing_key } => json!({
                "routing_key": routing_key,
                "event_action": if self.firing { "trigger" } else { "resolve" },
                "dedup_key": self.dedup_key,
                "payload": {
                    "summary": self.summary,
                    "source": "meterflow",
                    "severity": self.severity,
                    "component": self.sku,
                    "group": self.customer,
                    "class": self.class,
                    "custom_details": self.details,
                },
            }),
        }
    }
}

/// Wraps the writer of a table that alerts (`entitlement_signals`, `anomalies`): once a flush
/// has made rows durable, alerts go out for those that became active or went away.
pub struct AlertingWriter<R: Alertable> {
    inner: Box<dyn TableWriter<Signed<R>>>,
    sinks: Vec<Box<dyn AlertSink>>,
    catalog: Arc<Catalog>,
    unit: PeriodUnit,
    /// The signal rows, as the table holds them (absorbs a resumed run's re-emission).
    state: SignedState<R>,
    rows: BTreeMap<R, isize>,
    /// Dedup keys alerted as active.
    alerted: BTreeSet<String>,
    /// The frontier of the flush running in the background, whose alerts follow it.
    flushing: Option<Option<Epoch>>,
}

impl<R: Alertable> AlertingWriter<R> {
    /// `held`: the signal rows a resumed run's table holds (row, multiplicity, version), which
    /// the dataflow emits again at the round ending at `round_end`; they are not alerted again.
    pub fn new(
        inner: Box<dyn TableWriter<Signed<R>>>,
        sinks: Vec<Box<dyn AlertSink>>,
        catalog: Arc<Catalog>,
        unit: PeriodUnit,
        held: Vec<(R, isize, u64)>,
        round_end: Epoch,
    ) -> AlertingWriter<R> {
        let rows: BTreeMap<R, isize> = held
            .iter()
            .filter(|(_, n, _)| *n > 0)
            .map(|(r, n, _)| (r.clone(), *n))
            .collect();
        let alerted = rows
            .keys()
            .map(|r| r.alert(true, &catalog, unit).dedup_key)
            .collect();
        AlertingWriter {
            inner,
            sinks,
            state: SignedState::resumed(held, round_end),
            catalog,
            unit,
            rows,
            alerted,
            flushing: None,
        }
    }
}

impl<R: Alertable> TableWriter<Signed<R>> for AlertingWriter<R> {
    fn write(&mut self, epoch: Epoch, rows: &mut Vec<Signed<R>>) -> Result<(), String> {
        self.state.extend(rows.iter().cloned());
        self.inner.write(epoch, rows)
    }

    fn flush(&mut self, frontier: Option<Epoch>) -> Result<(), String> {
        self.inner.flush(frontier)?;
        self.alert_changes(frontier)
    }

    /// The table's rows flush in the background; the alerts follow once they are durable, so a
    /// slow or stopped ClickHouse does not block the worker (which must go on reading until
    /// `input.max_unwritten_bytes`, and stepping the rest of the dataflow).
    fn start_flush(&mut self, frontier: Option<Epoch>) -> Result<bool, String> {
        if !self.inner.start_flush(frontier)? {
            return Ok(false);
        }
        self.flushing = Some(frontier);
        Ok(true)
    }

    fn flush_done(&mut self) -> Result<bool, String> {
        if !self.inner.flush_done()? {
            return Ok(false);
        }
        if let Some(frontier) = self.flushing.take() {
            self.alert_changes(frontier)?;
        }
        Ok(true)
    }
}

impl<R: Alertable> AlertingWriter<R> {
    /// Sends the alerts the table's changes before `frontier` open or close (the rows are
    /// durable by now).
    fn alert_changes(&mut self, frontier: Option<Epoch>) -> Result<(), String> {
        let mut touched: BTreeMap<String, R> = BTreeMap::new();
        for c in self.state.changes(frontier) {
            let n = self.rows.entry(c.row.clone()).or_default();
            *n += c.sign as isize;
            if *n == 0 {
                self.rows.remove(&c.row);
            }
            let key = c.row.alert(true, &self.catalog, self.unit).dedup_key;
            touched.insert(key, c.row);
        }
        for (key, row) in touched {
            let active = self
                .rows
                .iter()
                .any(|(r, n)| *n > 0 && r.alert(true, &self.catalog, self.unit).dedup_key == key);
            if active != self.alerted.contains(&key) {
                let alert = row.alert(active, &self.catalog, self.unit);
                for sink in &mut self.sinks {
                    sink.deliver(&alert)?;
                }
                if active {
                    self.alerted.insert(key);
                } else {
                    self.alerted.remove(&key);
                }
            }
        }
        for sink in &mut self.sinks {
            sink.finish()?;
        }
        Ok(())
    }
}

/// What the tables that alert (registered with `alerts`) need to send alerts.
pub struct AlertTables<'a> {
    /// `None`: alerting is off; `Some(None)`: to Kafka only.
    pub format: &'a Option<Option<Format>>,
    pub config: &'a AlertsConfig,
    pub kafka: &'a crate::sources::kafka::KafkaConfig,
    pub catalog: &'a Arc<Catalog>,
    pub unit: PeriodUnit,
    pub round_end: Epoch,
}

pub type Writer<R> = Box<dyn TableWriter<Signed<R>>>;

impl AlertTables<'_> {
    /// Each worker receives the rows of the customers it owns, and sends their alerts: every
    /// change of one alert's key reaches the same worker, which knows which alerts are open.
    pub fn wrap<R: Alertable>(
        &self,
        inner: Writer<R>,
        held: Vec<(R, isize, u64)>,
    ) -> Result<Writer<R>, String> {
        let Some(format) = self.format else {
            return Ok(inner);
        };
        let mut sinks: Vec<Box<dyn AlertSink>> = Vec::new();
        if let Some(format) = format {
            sinks.push(Box::new(Webhook::new(self.config, format.clone())?));
        }
        if let Some(topic) = &self.config.kafka_topic {
            sinks.push(Box::new(KafkaAlerts::new(self.kafka, topic)?));
        }
        Ok(Box::new(AlertingWriter::new(
            inner,
            sinks,
            self.catalog.clone(),
            self.unit,
            held,
            self.round_end,
        )))
    }
}
