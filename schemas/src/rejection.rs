//! Rejections: bad records are data. Each carries a stable reason code, a human message and a
//! remediation step, plus the raw payload and where it came from, so nothing is silently lost.

use serde::{Deserialize, Serialize};

use crate::lineage::{KafkaMeta, Lineage};

/// Why a record was not accepted. The `code()` strings are stable: dashboards and alerts key on
/// them; add new variants, never rename.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    MalformedJson,
    PayloadTooLarge,
    UnknownField,
    MissingField,
    InvalidField,
    UnsupportedEnvelope,
    InvalidQuantity,
    NegativeQuantity,
    QuantityTooLarge,
    InvalidTimestamp,
    TimestampInFuture,
    TimestampTooOld,
    UnknownCustomer,
    UnknownContract,
    ContractCustomerMismatch,
    ContractInactive,
    NoRateCardVersion,
    SkuNotInRateCard,
    UnitMismatch,
    MissingIntegrity,
    BadChecksum,
    BadSignature,
    UnknownSigningKey,
    ConflictingDuplicate,
    CorrectionUnknownOriginal,
    CorrectionMismatch,
    CorrectionAfterVoid,
    AmendNotSupported,
    SignatureKeyRetired,
}

impl Reason {
    pub const ALL: [Reason; 29] = [
        Reason::MalformedJson,
        Reason::PayloadTooLarge,
        Reason::UnknownField,
        Reason::MissingField,
        Reason::InvalidField,
        Reason::UnsupportedEnvelope,
        Reason::InvalidQuantity,
        Reason::NegativeQuantity,
        Reason::QuantityTooLarge,
        Reason::InvalidTimestamp,
        Reason::TimestampInFuture,
        Reason::TimestampTooOld,
        Reason::UnknownCustomer,
        Reason::UnknownContract,
        Reason::ContractCustomerMismatch,
        Reason::ContractInactive,
        Reason::NoRateCardVersion,
        Reason::SkuNotInRateCard,
        Reason::UnitMismatch,
        Reason::MissingIntegrity,
        Reason::BadChecksum,
        Reason::BadSignature,
        Reason::UnknownSigningKey,
        Reason::ConflictingDuplicate,
        Reason::CorrectionUnknownOriginal,
        Reason::CorrectionMismatch,
        Reason::CorrectionAfterVoid,
        Reason::AmendNotSupported,
        Reason::SignatureKeyRetired,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::UnknownField => "unknown_field",
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::UnsupportedEnvelope => "unsupported_envelope",
            Reason::InvalidQuantity => "invalid_quantity",
            Reason::NegativeQuantity => "negative_quantity",
            Reason::QuantityTooLarge => "quantity_too_large",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::TimestampInFuture => "timestamp_in_future",
            Reason::TimestampTooOld => "timestamp_too_old",
            Reason::UnknownCustomer => "unknown_customer",
            Reason::UnknownContract => "unknown_contract",
            Reason::ContractCustomerMismatch => "contract_customer_mismatch",
            Reason::ContractInactive => "contract_inactive",
            Reason::NoRateCardVersion => "no_rate_card_version",
            Reason::SkuNotInRateCard => "sku_not_in_rate_card",
            Reason::UnitMismatch => "unit_mismatch",
            Reason::MissingIntegrity => "missing_integrity",
            Reason::BadChecksum => "bad_checksum",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownSigningKey => "unknown_signing_key",
            Reason::ConflictingDuplicate => "conflicting_duplicate",
            Reason::CorrectionUnknownOriginal => "correction_unknown_original",
            Reason::CorrectionMismatch => "correction_mismatch",
            Reason::CorrectionAfterVoid => "correction_after_void",
            Reason::AmendNotSupported => "amend_not_supported",
            Reason::SignatureKeyRetired => "signature_key_retired",
        }
    }

    /// What the producer (or the catalog owner) should do about it.
    pub fn remediation(self) -> &'static str {
        match self {
            Reason::MalformedJson => "send one JSON object per line (or per Kafka message); check the producer's serializer",
            Reason::PayloadTooLarge => "keep a usage event under the configured max_event_bytes; move bulky data out of metadata",
            Reason::UnknownField => "remove the field or move it under metadata.attributes; see schemas/usage_event.schema.json",
            Reason::MissingField => "add the named field; every usage event needs event_id, customer_id, contract_id, sku, unit, quantity and timestamp",
            Reason::InvalidField => "send the named field with the type the event contract specifies (schemas/usage_event.schema.json)",
            Reason::UnsupportedEnvelope => "send native meterflow JSON or a CloudEvents 1.0 JSON envelope with a configured type",
            Reason::InvalidQuantity => "send quantity as a finite decimal (JSON number or string) with at most 9 fractional digits",
            Reason::NegativeQuantity => "send negative quantities only as corrections (correction.action = amend or void)",
            Reason::QuantityTooLarge => "check the producer for a unit mix-up (bytes vs GB); raise validation.max_quantity if the value is real",
            Reason::InvalidTimestamp => "send timestamp as RFC 3339 with an offset, e.g. 2026-11-01T12:00:00Z",
            Reason::TimestampInFuture => "fix the producer's clock (NTP); events may be at most validation.clock_skew ahead of now",
            Reason::TimestampTooOld => "events older than the dedup horizon cannot be deduplicated safely; bill them through a manual adjustment",
            Reason::UnknownCustomer => "add the customer to the catalog, or fix the producer's customer_id",
            Reason::UnknownContract => "add the contract to the catalog, or fix the producer's contract_id",
            Reason::ContractCustomerMismatch => "send the contract_id that belongs to this customer_id (see the catalog)",
            Reason::ContractInactive => "check the contract's starts/ends in the catalog, or the event timestamp",
            Reason::NoRateCardVersion => "publish a rate-card version effective at the event time, or pin an existing version on the contract",
            Reason::SkuNotInRateCard => "price the SKU (for this region) in the contract's rate card, or fix the producer's sku",
            Reason::UnitMismatch => "send the unit defined for the SKU in the catalog (convert on the producer side)",
            Reason::MissingIntegrity => "sign events (signature) or add a checksum; see docs/event-contract.md#integrity",
            Reason::BadChecksum => "compute checksum as sha256 over the canonical form in docs/event-contract.md#integrity",
            Reason::BadSignature => "sign the canonical form with the producer's current HMAC key; check for a rotated key",
            Reason::UnknownSigningKey => "configure the producer's key under integrity.keys, or fix signature.key_id",
            Reason::ConflictingDuplicate => "an event_id was reused for different usage; give each distinct event its own id, and send corrections as amend/void events",
            Reason::CorrectionUnknownOriginal => "send the correction after its original event, within the dedup horizon, with the original's event_id",
            Reason::CorrectionMismatch => "a void must repeat the original's fields with the quantity negated",
            Reason::CorrectionAfterVoid => "the original was already voided; send a new event instead of correcting a voided one",
            Reason::AmendNotSupported => "this SKU is metered by max, unique count or latest, or priced per transaction with a min_fee / max_fee: void the original and send the corrected event as a new one",
            Reason::SignatureKeyRetired => "the key was rotated out: sign with a current key (integrity.keys) and send the event again under the same event_id",
        }
    }
}

/// A record that did not become usage.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rejection {
    pub reason: Reason,
    /// The field at fault, if one is.
    pub field: Option<Box<str>>,
    pub message: String,
    /// The event id, when it could be read.
    pub event_id: Option<Box<str>>,
    pub raw: Box<str>,
    pub lineage: Lineage,
    /// For a record read from Kafka: its message's key and headers.
    pub kafka: Option<Box<KafkaMeta>>,
}

impl Rejection {
    pub fn new(reason: Reason, field: Option<&str>, message: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            field: field.map(Into::into),
            message: message.into(),
            event_id: None,
            raw: Box::from(""),
            lineage: Lineage::default(),
            kafka: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_documented() {
        let doc = include_str!("../../docs/event-contract.md");
        let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "Reason::ALL is in declaration order");
            assert!(
                doc.contains(&format!("| `{}` |", r.code())),
                "docs/event-contract.md lacks a row for {}",
                r.code()
            );
            assert!(!r.remediation().is_empty());
        }
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
    }
}
