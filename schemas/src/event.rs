//! A validated usage event, as it travels through the dataflow.
//!
//! Catalog references are resolved to dense indices at validation; only what the output rows
//! need in text (event id, free-form metadata) is kept as text.

use serde::{Deserialize, Serialize};

use crate::catalog::{ContractIdx, CustomerIdx, PriceIdx, SkuIdx};
use crate::hashing::EventKey;
use crate::lineage::{KafkaMeta, Lineage};
use crate::money::Quantity;
use crate::time::EventTime;

mod compact;

/// An explicit correction of an earlier event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CorrectionAction {
    /// Adds the (signed) quantity to the original's usage.
    Amend,
    /// Cancels the original; the event repeats the original's fields with the quantity negated.
    Void,
}

impl CorrectionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CorrectionAction::Amend => "amend",
            CorrectionAction::Void => "void",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Correction {
    pub action: CorrectionAction,
    pub original_event_id: Box<str>,
    pub original_key: EventKey,
    /// For a void: the payload fingerprint the original must have had.
    pub original_fingerprint: u64,
}

/// The environment an event was produced in. Only billable environments are priced; the others
/// are validated, deduplicated, counted and written to `usage_events`, never priced.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Environment {
    /// Index into `validation.billable_environments`.
    Billable(u8),
    Other(Box<str>),
}

/// Free-form pricing metadata carried for lineage and queries.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Metadata {
    pub region: Option<Box<str>>,
    pub plan: Option<Box<str>>,
    pub marketplace: Option<Box<str>>,
    /// Canonical JSON object (keys sorted) of `metadata.attributes`, if any.
    pub attributes: Option<Box<str>>,
}

/// A usage event that passed validation.
///
/// Serialized in a compact form of its own (`event/compact.rs`): it is what crosses between the
/// processes of a cluster most.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageEvent {
    pub key: EventKey,
    /// Fingerprint of the payload (everything but the id and integrity fields): tells a retry
    /// from a conflicting reuse of the same `event_id`.
    pub fingerprint: u64,
    pub event_id: Box<str>,
    pub customer: CustomerIdx,
    pub contract: ContractIdx,
    pub sku: SkuIdx,
    /// The price (rate-card version, region) in effect for this event.
    pub price: PriceIdx,
    pub quantity: Quantity,
    pub time: EventTime,
    /// For an event read from Kafka: the latest valid event time before it in its partition
    /// (`EventTime::MIN` for the first, and for files). Lateness is judged against the later of
    /// this and the pipeline's watermark, so an event's class follows from its partition's log.
    pub stream_watermark: EventTime,
    pub environment: Environment,
    /// Boxed: most events carry none, and events are moved often.
    pub metadata: Option<Box<Metadata>>,
    pub correction: Option<Box<Correction>>,
    pub lineage: Lineage,
    /// For an event read from Kafka: its message's key and headers (lineage).
    pub kafka: Option<Box<KafkaMeta>>,
}

impl UsageEvent {
    pub fn billable(&self) -> bool {
        matches!(self.environment, Environment::Billable(_))
    }
    /// How this event changes the count of events behind its invoice line: an original adds
    /// one, a void takes its original's away, an amend changes only the quantity.
    pub fn line_events(&self) -> i64 {
        match self.correction.as_deref().map(|c| c.action) {
            None => 1,
            Some(CorrectionAction::Void) => -1,
            Some(CorrectionAction::Amend) => 0,
        }
    }

    /// Dedup routing: corrections go where their original lives, so the original's state is local.
    pub fn route(&self) -> u64 {
        match &self.correction {
            Some(c) => c.original_key.route(),
            None => self.key.route(),
        }
    }
}

impl UsageEvent {
    /// The event as native JSON, with catalog ids and normalized values. Used as the payload of
    /// rejections decided after decoding (the original bytes are not kept that long).
    pub fn to_native_json(
        &self,
        catalog: &crate::catalog::Catalog,
        billable_environments: &[String],
    ) -> String {
        let environment = match &self.environment {
            Environment::Billable(i) => billable_environments
                .get(*i as usize)
                .map_or("billable", |s| s.as_str()),
            Environment::Other(name) => name,
        };
        let mut metadata = serde_json::Map::new();
        let none = Metadata::default();
        let m = self.metadata.as_deref().unwrap_or(&none);
        for (k, v) in [
            ("region", &m.region),
            ("plan", &m.plan),
            ("marketplace", &m.marketplace),
        ] {
            if let Some(v) = v {
                metadata.insert(k.into(), serde_json::Value::String(v.to_string()));
            }
        }
        if let Some(attrs) = &m.attributes {
            if let Ok(v) = serde_json::from_str(attrs) {
                metadata.insert("attributes".into(), v);
            }
        }
        let mut obj = serde_json::json!({
            "event_id": &*self.event_id,
            "customer_id": catalog.customers[self.customer.ix()].id,
            "contract_id": catalog.contracts[self.contract.ix()].id,
            "sku": catalog.skus[self.sku.ix()].id,
            "unit": catalog.skus[self.sku.ix()].unit,
            "quantity": self.quantity.to_string(),
            "timestamp": self.time.to_string(),
            "environment": environment,
        });
        if !metadata.is_empty() {
            obj["metadata"] = serde_json::Value::Object(metadata);
        }
        if let Some(c) = &self.correction {
            obj["correction"] = serde_json::json!({ "action": c.action.as_str(), "original_event_id": &*c.original_event_id });
        }
        obj.to_string()
    }
}
