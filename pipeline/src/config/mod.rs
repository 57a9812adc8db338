//! meterflow's configuration: one typed TOML file (`meterflow.example.toml` documents every key),
//! defaults in code, secrets from the environment or files. Unknown keys and bad values stop
//! start-up with the key's name and the fix.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meterflow_operators::dataflow::Plan;
use meterflow_operators::watermark::LatenessPolicy;
use meterflow_schemas::anomaly::AnomalyRules;
use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::money::{Quantity, Rounding};
use meterflow_schemas::time::{PeriodUnit, Span};
use meterflow_schemas::validate::{IntegrityMode, ValidationRules};
use meterflow_schemas::wire::EnvelopeRules;
use serde::Deserialize;

pub mod cluster;
pub mod secrets;

/// A configuration problem, naming the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("configuration error in {file}: {message}\n    fix: {fix}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
    pub fix: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How input is cut into epochs.
    pub input: InputConfig,
    /// What a valid usage event is.
    pub validation: ValidationConfig,
    /// Checksums and signatures.
    pub integrity: IntegrityConfig,
    /// Deduplication by idempotency key.
    pub dedup: DedupConfig,
    /// Event-time watermark and lateness.
    pub watermark: WatermarkConfig,
    /// Billing periods and rounding.
    pub billing: BillingConfig,
    /// Output files.
    pub output: OutputConfig,
    /// Parallelism.
    pub workers: WorkersConfig,
    /// The ClickHouse sink (production outputs); off unless `url` is set.
    pub clickhouse: crate::sinks::clickhouse::client::ClickHouseConfig,
    /// The Kafka source (production input); off unless `brokers` is set.
    pub kafka: crate::sources::kafka::KafkaConfig,
    /// Alert delivery to a webhook; off unless `webhook_url` is set.
    pub alerts: crate::sinks::alerts::AlertsConfig,
    /// Usage buckets and anomaly detection (spikes, drops, silent meters).
    pub anomalies: AnomalyRules,
    /// Where a running pipeline gets catalog changes from.
    pub catalog: CatalogConfig,
    /// Prometheus `/metrics`; off unless `addr` is set.
    pub metrics: crate::sinks::metrics::MetricsConfig,
    /// How `meterflow export --send` reaches each marketplace.
    pub exports: crate::sinks::marketplace::ExportsConfig,
}

/// `[catalog]` in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// The compacted Kafka topic `meterflow catalog publish` writes (on `kafka.brokers`). Empty:
    /// the catalog is the `--catalog` directory. Set: the topic's last publish, or the directory
    /// until the topic has one.
    pub topic: String,
    /// How often a pipeline with ClickHouse output looks for a changed catalog (the topic, or
    /// the directory) and switches to it; `0s` never looks.
    pub check_interval: Span,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            topic: String::new(),
            check_interval: Span(5_000),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Bytes per chunk; each chunk is one epoch (one step of event time progress). Larger chunks
    /// batch more work per step; smaller ones lower latency.
    pub chunk_bytes: u64,
    /// How many epochs a reader may run ahead of completed work (bounds memory).
    pub max_epochs_ahead: u64,
    /// Bytes of input a reader (one per worker) may have read whose outputs are not yet durable;
    /// beyond it reading pauses until the outputs catch up (bounds memory while an output is slow
    /// or down).
    pub max_unwritten_bytes: u64,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            chunk_bytes: 4 << 20,
            max_epochs_ahead: 8,
            max_unwritten_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Environments that are billed; events from others are counted, never priced.
    pub billable_environments: Vec<String>,
    /// Largest accepted |quantity|, as a decimal string.
    pub max_quantity: String,
    /// How far ahead of the wall clock an event time may be.
    pub clock_skew: Span,
    /// Largest accepted record, in bytes.
    pub max_event_bytes: usize,
    /// Accepted CloudEvents `type` values.
    pub cloudevent_types: Vec<String>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        let d = ValidationRules::default();
        ValidationConfig {
            billable_environments: d.billable_environments,
            max_quantity: d.max_quantity.to_string(),
            clock_skew: d.clock_skew,
            max_event_bytes: d.max_event_bytes,
            cloudevent_types: d.envelope.cloudevent_types,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IntegrityConfig {
    /// off | verify (check when present) | require (checksum or signature) | require_signature.
    pub mode: IntegrityMode,
    /// HMAC keys by `signature.key_id`; each from an environment variable or a file, or
    /// marked retired.
    pub keys: BTreeMap<String, SigningKey>,
    /// Customers whose events must be signed even when `mode` asks less of the others.
    pub require_signature_for: Vec<String>,
}

/// A producer's HMAC key: where its secret comes from (never the config file itself), or that
/// it was rotated out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    /// Name of an environment variable holding the key.
    pub env: Option<String>,
    /// Path of a file holding the key (trailing newline ignored).
    pub file: Option<PathBuf>,
    /// Rotated out: events signed under this key id are rejected as `signature_key_retired`
    /// (its secret is no longer needed).
    #[serde(default)]
    pub retired: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// How long an idempotency key is remembered (event time). Older events are rejected as
    /// `timestamp_too_old`, because their duplicates could no longer be recognised.
    pub horizon: Span,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            horizon: Span::days(7),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatermarkConfig {
    /// How long after its end a period stays open for out-of-order events.
    pub tolerance: Span,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            tolerance: Span::hours(1),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// Billing period: month (UTC calendar months), day or hour.
    pub period: PeriodUnit,
    /// Rounding to the currency's minor unit, once per invoice line: half_even, half_up, down, up.
    pub rounding: Rounding,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// How often derived tables (invoice lines, rated usage) are flushed, consolidated.
    pub flush_interval: Span,
    /// Invoice lines are re-priced once per this many epochs (chunks): fewer retractions and
    /// less work per event, at the cost of that much latency.
    pub price_every_epochs: u64,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            flush_interval: Span(1000),
            price_every_epochs: 4,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Worker threads per process (`-w` overrides).
    pub threads: usize,
    /// In a cluster: how long a process waits for every other process to connect before it
    /// stops, naming the ones that did not (a peer may have died while the cluster formed).
    pub join_timeout: Span,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            threads: 1,
            join_timeout: Span(60_000),
        }
    }
}

impl Config {
    /// Reads a config file, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
            fix: "pass --config with the path of a TOML file (see meterflow.example.toml)".into(),
        })?;
        Config::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let error = |message: String, span: Option<std::ops::Range<usize>>, fix: &str| {
            let at = span
                .map(|s| {
                    format!(
                        " (line {})",
                        text[..s.start.min(text.len())].lines().count().max(1)
                    )
                })
                .unwrap_or_default();
            ConfigError {
                file: file.to_string(),
                message: format!("{message}{at}"),
                fix: fix.to_string(),
            }
        };
        let de = toml::Deserializer::parse(text).map_err(|e| {
            error(
                e.message().to_string(),
                e.span(),
                "fix the TOML syntax at the line shown",
            )
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().to_string();
            let fix = if message.contains("unknown field") {
                "remove or correct the key; every allowed key is listed in meterflow.example.toml"
            } else {
                "correct the value; meterflow.example.toml documents each key"
            };
            error(format!("{key}: {message}"), inner.span(), fix)
        })
    }

    /// Checks values and resolves secrets into the rules of a run.
    pub fn validation_rules(&self, file: &str) -> Result<ValidationRules, ConfigError> {
        let err = |message: String, fix: &str| ConfigError {
            file: file.to_string(),
            message,
            fix: fix.to_string(),
        };
        self.anomalies
            .check()
            .map_err(|(message, fix)| err(message, &fix))?;
        let max_quantity = Quantity::parse(&self.validation.max_quantity).map_err(|e| {
            err(
                format!(
                    "validation.max_quantity `{}` is {e}",
                    self.validation.max_quantity
                ),
                "write a positive decimal string, e.g. \"1000000000000\"",
            )
        })?;
        if max_quantity <= Quantity::ZERO {
            return Err(err(
                "validation.max_quantity must be positive".into(),
                "write a positive decimal string",
            ));
        }
        if self.validation.billable_environments.is_empty() {
            return Err(err(
                "validation.billable_environments is empty: nothing would be billed".into(),
                "list at least one environment, e.g. [\"production\"]",
            ));
        }
        if self.validation.billable_environments.len() > 255 {
            return Err(err(
                "validation.billable_environments lists more than 255 environments".into(),
                "list fewer billable environments",
            ));
        }
        let mut keys = HashMap::new();
        let mut retired_keys = Vec::new();
        for (id, source) in &self.integrity.keys {
            if source.retired {
                retired_keys.push(id.clone());
                continue;
            }
            let what = format!("integrity.keys.{id}");
            let key = secrets::read(&what, source.env.as_deref(), source.file.as_deref())
                .map_err(|message| err(message, "give the producer's HMAC key through that variable or file"))?
                .ok_or_else(|| err(
                    format!("{what} needs exactly one of env or file"),
                    "write { env = \"VAR\" } or { file = \"/path/to/key\" }, or { retired = true } for a key rotated out",
                ))?;
            keys.insert(id.clone(), key.into_bytes());
        }
        if !self.integrity.require_signature_for.is_empty() {
            if matches!(self.integrity.mode, IntegrityMode::Off) {
                return Err(err(
                    "integrity.require_signature_for is set but integrity.mode = off ignores signatures".into(),
                    "set integrity.mode = \"verify\" (or stricter)",
                ));
            }
            if keys.is_empty() {
                return Err(err(
                    "integrity.require_signature_for is set but no integrity.keys are configured"
                        .into(),
                    "configure those customers' keys under [integrity.keys]",
                ));
            }
        }
        if matches!(self.integrity.mode, IntegrityMode::RequireSignature) && keys.is_empty() {
            return Err(err(
                "integrity.mode = require_signature but no integrity.keys are configured".into(),
                "configure the producers' keys under [integrity.keys]",
            ));
        }
        if self.input.chunk_bytes < 1024 {
            return Err(err(
                format!(
                    "input.chunk_bytes = {} is too small",
                    self.input.chunk_bytes
                ),
                "use at least 1024 (default 4194304)",
            ));
        }
        Ok(ValidationRules {
            billable_environments: self.validation.billable_environments.clone(),
            max_quantity,
            clock_skew: self.validation.clock_skew,
            max_event_bytes: self.validation.max_event_bytes,
            max_id_bytes: 256,
            integrity: self.integrity.mode,
            keys,
            retired_keys,
            signatures_required_for: self.integrity.require_signature_for.clone(),
            envelope: EnvelopeRules {
                cloudevent_types: self.validation.cloudevent_types.clone(),
            },
        })
    }

    pub fn plan(&self, rules: ValidationRules, catalog: Catalog) -> Plan {
        Plan {
            catalog: Arc::new(catalog),
            rules: Arc::new(rules),
            policy: LatenessPolicy {
                period: self.billing.period,
                tolerance: self.watermark.tolerance,
                dedup_horizon: self.dedup.horizon,
            },
            rounding: self.billing.rounding,
            max_epochs_ahead: self.input.max_epochs_ahead.max(1),
            max_unwritten_bytes: self.input.max_unwritten_bytes.max(1),
            epochs_per_round: self.output.price_every_epochs.max(1),
            anomalies: self.anomalies.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../../../meterflow.example.toml");
        let c = Config::parse(text, "meterflow.example.toml").unwrap();
        let d = Config::default();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    #[test]
    fn unknown_keys_name_themselves() {
        let e = Config::parse("[dedup]\nhorizonn = \"7d\"\n", "x.toml").unwrap_err();
        assert!(
            e.message
                .contains("dedup.horizonn: unknown field `horizonn`"),
            "{e}"
        );
        assert!(e.fix.contains("meterflow.example.toml"));
    }

    #[test]
    fn bad_values_say_how_to_write_them() {
        let e = Config::parse("[watermark]\ntolerance = \"1 hour\"\n", "x.toml").unwrap_err();
        assert!(
            e.message
                .starts_with("watermark.tolerance: `1 hour` has unknown unit"),
            "{e}"
        );
        assert!(e.message.ends_with("(line 2)"), "{e}");
        let e = Config::parse("[billing]\nrounding = \"nearest\"\n", "x.toml").unwrap_err();
        assert!(e.message.contains("half_even"), "{e}");
        let e = Config::parse("[clickhouse]\ncompression = \"zstd\"\n", "x.toml").unwrap_err();
        assert!(
            e.message
                .starts_with("clickhouse.compression: unknown variant `zstd`")
                && e.message.contains("expected `lz4` or `none`"),
            "{e}"
        );
        let c = Config::parse("[clickhouse]\ncompression = \"none\"\n", "x.toml").unwrap();
        assert_eq!(
            c.clickhouse.compression,
            crate::sinks::clickhouse::client::Compression::None
        );
    }

    #[test]
    fn secrets_come_from_the_environment() {
        let c = Config::parse("[integrity]\nmode = \"require_signature\"\n[integrity.keys.p1]\nenv = \"METERFLOW_TEST_KEY_NOT_SET\"\n", "x.toml").unwrap();
        let e = c.validation_rules("x.toml").unwrap_err();
        assert!(
            e.message
                .contains("METERFLOW_TEST_KEY_NOT_SET, which is not set"),
            "{e}"
        );
        std::env::set_var("METERFLOW_TEST_KEY_SET", "s3cret");
        let c = Config::parse(
            "[integrity.keys.p1]\nenv = \"METERFLOW_TEST_KEY_SET\"\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.validation_rules("x.toml").unwrap().keys["p1"], b"s3cret");
        let c = Config::parse(
            "[integrity.keys.old]\nretired = true\n[integrity.keys.p1]\nenv = \"METERFLOW_TEST_KEY_SET\"\n",
            "x.toml",
        )
        .unwrap();
        let rules = c.validation_rules("x.toml").unwrap();
        assert_eq!(rules.retired_keys, ["old"]);
        assert!(
            !rules.keys.contains_key("old"),
            "a retired key needs no secret"
        );
        let off = Config::parse(
            "[integrity]\nmode = \"off\"\nrequire_signature_for = [\"acme\"]\n[integrity.keys.p1]\nenv = \"METERFLOW_TEST_KEY_SET\"\n",
            "x.toml",
        )
        .unwrap();
        let e = off.validation_rules("x.toml").unwrap_err().to_string();
        assert!(
            e.contains("require_signature_for") && e.contains("verify"),
            "{e}"
        );
        let some = Config::parse(
            "[integrity]\nrequire_signature_for = [\"acme\"]\n[integrity.keys.p1]\nenv = \"METERFLOW_TEST_KEY_SET\"\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(
            some.validation_rules("x.toml")
                .unwrap()
                .signatures_required_for,
            ["acme"]
        );
    }
}
