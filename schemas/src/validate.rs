//! Validation: one raw record in, a [`UsageEvent`] or a [`Rejection`] out. Never panics, never
//! drops: every path ends in one of the two.
//!
//! Checks, in order: size, JSON shape (`wire.rs`), required fields, field formats, timestamp,
//! quantity, correction shape, integrity (checksum / signature), then the catalog (customer,
//! contract, contract ownership and dates, rate-card version, SKU, unit). The checks that need
//! stream state — too old for the dedup horizon, duplicates, corrections of unknown originals —
//! happen in the dedup operator.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::canonical::{canonical_attributes, Canonical, CanonicalFields};
use crate::catalog::{Catalog, RateMiss};
use crate::event::{Correction, CorrectionAction, Environment, Metadata, UsageEvent};
use crate::hashing::EventKey;
use crate::lineage::Lineage;
use crate::money::{DecimalError, Quantity};
use crate::rejection::{Reason, Rejection};
use crate::time::{EventTime, Span};
use crate::wire::{decode_into, EnvelopeRules, Text, WireEvent};

/// How strictly integrity fields are enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrityMode {
    /// Ignore checksum and signature.
    Off,
    /// Verify them when present.
    #[default]
    Verify,
    /// Every event needs a valid checksum or signature.
    Require,
    /// Every event needs a valid signature.
    RequireSignature,
}

/// Everything validation needs besides the record itself.
#[derive(Clone, Debug)]
pub struct ValidationRules {
    pub billable_environments: Vec<String>,
    pub max_quantity: Quantity,
    pub clock_skew: Span,
    pub max_event_bytes: usize,
    pub max_id_bytes: usize,
    pub integrity: IntegrityMode,
    /// HMAC keys by `signature.key_id`.
    pub keys: HashMap<String, Vec<u8>>,
    /// Key ids rotated out: an event signed under one is rejected, valid or not.
    pub retired_keys: Vec<String>,
    /// Customers whose events must carry a valid signature, whatever `integrity` says.
    pub signatures_required_for: Vec<String>,
    pub envelope: EnvelopeRules,
}

impl Default for ValidationRules {
    fn default() -> Self {
        ValidationRules {
            billable_environments: vec!["production".into()],
            max_quantity: Quantity::from_units(1_000_000_000_000),
            clock_skew: Span::minutes(5),
            max_event_bytes: 64 * 1024,
            max_id_bytes: 256,
            integrity: IntegrityMode::Verify,
            keys: HashMap::new(),
            retired_keys: Vec::new(),
            signatures_required_for: Vec::new(),
            envelope: EnvelopeRules::default(),
        }
    }
}

/// Validates records against the rules and the catalog. One per worker (it keeps scratch space).
pub struct Validator {
    rules: Arc<ValidationRules>,
    catalog: Arc<Catalog>,
    canonical: Canonical,
}

type Checked<T> = Result<T, Rejection>;

fn reject<T>(reason: Reason, field: Option<&str>, message: impl Into<String>) -> Checked<T> {
    Err(Rejection::new(reason, field, message))
}

fn required<'a, 'b>(v: &'b Option<Text<'a>>, name: &str) -> Checked<&'b str> {
    match v {
        Some(t) => Ok(t.as_ref()),
        None => reject(
            Reason::MissingField,
            Some(name),
            format!("missing required field `{name}`"),
        ),
    }
}

/// Identifiers and labels must be non-empty, bounded and free of control characters (which keeps
/// the canonical form unambiguous).
fn plain_text<'b>(v: &'b str, name: &str, max: usize) -> Checked<&'b str> {
    if v.is_empty() {
        return reject(
            Reason::InvalidField,
            Some(name),
            format!("`{name}` is empty"),
        );
    }
    if v.len() > max {
        return reject(
            Reason::InvalidField,
            Some(name),
            format!("`{name}` is {} bytes, more than the {max} allowed", v.len()),
        );
    }
    if v.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return reject(
            Reason::InvalidField,
            Some(name),
            format!("`{name}` contains control characters"),
        );
    }
    Ok(v)
}

fn optional_text<'b>(v: &'b Option<Text<'_>>, name: &str, max: usize) -> Checked<&'b str> {
    match v {
        Some(t) => plain_text(t, name, max),
        None => Ok(""),
    }
}

impl Validator {
    pub fn new(rules: Arc<ValidationRules>, catalog: Arc<Catalog>) -> Validator {
        Validator {
            rules,
            catalog,
            canonical: Canonical::default(),
        }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Validates one record. `now` is the wall clock for the clock-skew check.
    pub fn validate(
        &mut self,
        bytes: &[u8],
        lineage: Lineage,
        now: EventTime,
    ) -> Result<UsageEvent, Rejection> {
        let result = if bytes.len() > self.rules.max_event_bytes {
            reject(
                Reason::PayloadTooLarge,
                None,
                format!(
                    "record is {} bytes, more than max_event_bytes = {}",
                    bytes.len(),
                    self.rules.max_event_bytes
                ),
            )
        } else {
            let mut wire = WireEvent::default();
            decode_into(bytes, &self.rules.envelope, &mut wire).and_then(|()| {
                self.check(&wire, lineage, now).map_err(|mut r| {
                    r.event_id = wire.event_id.as_deref().map(Box::from);
                    r
                })
            })
        };
        result.map_err(|mut r| {
            r.raw = String::from_utf8_lossy(bytes).into();
            r.lineage = lineage;
            r
        })
    }

    fn check(
        &mut self,
        w: &WireEvent<'_>,
        lineage: Lineage,
        now: EventTime,
    ) -> Checked<UsageEvent> {
        let rules = &*self.rules;
        let max_id = rules.max_id_bytes;
        let event_id = plain_text(required(&w.event_id, "event_id")?, "event_id", max_id)?;
        let customer_id = plain_text(
            required(&w.customer_id, "customer_id")?,
            "customer_id",
            max_id,
        )?;
        let contract_id = plain_text(
            required(&w.contract_id, "contract_id")?,
            "contract_id",
            max_id,
        )?;
        let sku_id = plain_text(required(&w.sku, "sku")?, "sku", max_id)?;
        let unit = plain_text(required(&w.unit, "unit")?, "unit", max_id)?;
        let quantity_text = required(&w.quantity, "quantity")?;
        let timestamp_text = required(&w.timestamp, "timestamp")?;
        let environment = plain_text(
            required(&w.environment, "environment")?,
            "environment",
            max_id,
        )?;
        let region = optional_text(&w.metadata.region, "metadata.region", max_id)?;
        let plan = optional_text(&w.metadata.plan, "metadata.plan", max_id)?;
        let marketplace = optional_text(&w.metadata.marketplace, "metadata.marketplace", max_id)?;

        let time = EventTime::parse_rfc3339(timestamp_text).or_else(|why| {
            reject(
                Reason::InvalidTimestamp,
                Some("timestamp"),
                format!("timestamp `{timestamp_text}`: {why}"),
            )
        })?;
        if time > now.plus(rules.clock_skew) {
            return reject(
                Reason::TimestampInFuture,
                Some("timestamp"),
                format!(
                    "timestamp {time} is more than {} ahead of the clock ({now})",
                    rules.clock_skew
                ),
            );
        }

        let quantity = parse_quantity(quantity_text, rules.max_quantity)?;
        let correction = match &w.correction {
            None => None,
            Some(c) => {
                let action = match c.action.as_ref() {
                    "amend" => CorrectionAction::Amend,
                    "void" => CorrectionAction::Void,
                    other => {
                        return reject(
                            Reason::InvalidField,
                            Some("correction.action"),
                            format!("correction.action `{other}` is not amend or void"),
                        )
                    }
                };
                let original =
                    plain_text(&c.original_event_id, "correction.original_event_id", max_id)?;
                if original == event_id {
                    return reject(
                        Reason::InvalidField,
                        Some("correction.original_event_id"),
                        "a correction needs its own event_id, different from the original's",
                    );
                }
                if action == CorrectionAction::Void && quantity > Quantity::ZERO {
                    return reject(
                        Reason::InvalidQuantity,
                        Some("quantity"),
                        "a void carries the original quantity negated",
                    );
                }
                Some((action, original))
            }
        };
        if quantity.is_negative() && correction.is_none() {
            return reject(
                Reason::NegativeQuantity,
                Some("quantity"),
                format!("quantity {quantity} is negative on an event that is not a correction"),
            );
        }

        let attributes = canonical_attributes(&w.metadata.attributes);
        let mut fields = CanonicalFields {
            event_id,
            customer_id,
            contract_id,
            sku: sku_id,
            unit,
            quantity,
            time,
            environment,
            region,
            plan,
            marketplace,
            attributes: &attributes,
            correction: correction.map(|(a, o)| (a.as_str(), o)),
        };
        self.canonical.render(&fields);
        self.check_integrity(w, customer_id)?;
        let payload_fingerprint = self.canonical.payload_fingerprint();

        let catalog = &*self.catalog;
        let Some(customer) = catalog.customer(customer_id) else {
            return reject(
                Reason::UnknownCustomer,
                Some("customer_id"),
                format!("customer `{customer_id}` is not in the catalog"),
            );
        };
        let Some(contract_ix) = catalog.contract(contract_id) else {
            return reject(
                Reason::UnknownContract,
                Some("contract_id"),
                format!("contract `{contract_id}` is not in the catalog"),
            );
        };
        let contract = &catalog.contracts[contract_ix.ix()];
        if contract.customer != customer {
            let owner = &catalog.customers[contract.customer.ix()].id;
            return reject(
                Reason::ContractCustomerMismatch,
                Some("contract_id"),
                format!(
                    "contract `{contract_id}` belongs to customer `{owner}`, not `{customer_id}`"
                ),
            );
        }
        if !contract.active_at(time) {
            let ends = contract
                .ends
                .map_or("open-ended".to_string(), |e| e.to_string());
            return reject(
                Reason::ContractInactive,
                Some("timestamp"),
                format!(
                    "contract `{contract_id}` runs {} .. {ends}; the event is at {time}",
                    contract.starts
                ),
            );
        }
        let Some(sku) = catalog.sku(sku_id) else {
            return reject(
                Reason::SkuNotInRateCard,
                Some("sku"),
                format!("sku `{sku_id}` is not in the catalog"),
            );
        };
        let expected_unit = &catalog.skus[sku.ix()].unit;
        if expected_unit != unit {
            return reject(
                Reason::UnitMismatch,
                Some("unit"),
                format!("sku `{sku_id}` is metered in `{expected_unit}`, not `{unit}`"),
            );
        }
        let region_ix = if region.is_empty() {
            None
        } else {
            catalog.region(region)
        };
        let price = catalog.price_for(contract, sku, region_ix, time).or_else(|miss| {
            let card = &catalog.rate_cards[contract.rate_card.ix()].id;
            match miss {
                RateMiss::NoVersion => reject(Reason::NoRateCardVersion, Some("timestamp"), format!("rate card `{card}` has no version in effect at {time} for contract `{contract_id}`")),
                RateMiss::SkuNotPriced => {
                    let where_ = if region.is_empty() { String::new() } else { format!(" in region `{region}`") };
                    reject(Reason::SkuNotInRateCard, Some("sku"), format!("rate card `{card}` does not price sku `{sku_id}`{where_} at {time}"))
                }
            }
        })?;

        check_meter(
            &catalog.skus[sku.ix()],
            &catalog.price(price).model,
            &correction,
            &attributes,
        )?;
        let environment = match rules
            .billable_environments
            .iter()
            .position(|e| e == environment)
        {
            Some(i) => Environment::Billable(i as u8),
            None => Environment::Other(environment.into()),
        };
        let correction = match correction {
            None => None,
            Some((action, original)) => {
                let original_fingerprint = if action == CorrectionAction::Void {
                    fields.event_id = original;
                    fields.quantity = -quantity;
                    fields.correction = None;
                    self.canonical.render(&fields);
                    self.canonical.payload_fingerprint()
                } else {
                    0
                };
                Some(Box::new(Correction {
                    action,
                    original_event_id: original.into(),
                    original_key: EventKey::of(original),
                    original_fingerprint,
                }))
            }
        };
        Ok(UsageEvent {
            key: EventKey::of(event_id),
            fingerprint: payload_fingerprint,
            event_id: event_id.into(),
            customer,
            contract: contract_ix,
            sku,
            price,
            quantity,
            time,
            stream_watermark: EventTime::MIN,
            environment,
            metadata: metadata(region, plan, marketplace, &attributes),
            correction,
            lineage,
            kafka: None,
        })
    }

    fn check_integrity(&self, w: &WireEvent<'_>, customer_id: &str) -> Checked<()> {
        let mode = self.rules.integrity;
        if mode == IntegrityMode::Off {
            return Ok(());
        }
        let mut verified_signature = false;
        if let Some(sig) = &w.signature {
            if self.rules.retired_keys.iter().any(|k| **k == *sig.key_id) {
                return reject(
                    Reason::SignatureKeyRetired,
                    Some("signature.key_id"),
                    format!("key `{}` is retired", sig.key_id),
                );
            }
            let Some(key) = self.rules.keys.get(sig.key_id.as_ref()) else {
                return reject(
                    Reason::UnknownSigningKey,
                    Some("signature.key_id"),
                    format!("no key is configured for key_id `{}`", sig.key_id),
                );
            };
            if !self.canonical.signature_matches(key, &sig.hmac_sha256) {
                return reject(
                    Reason::BadSignature,
                    Some("signature"),
                    format!(
                        "HMAC-SHA256 under key `{}` does not match the canonical form",
                        sig.key_id
                    ),
                );
            }
            verified_signature = true;
        }
        let mut verified_checksum = false;
        if let Some(sum) = &w.checksum {
            if !self.canonical.checksum_matches(sum) {
                return reject(Reason::BadChecksum, Some("checksum"), "checksum does not match sha256 of the canonical form (expected `sha256:<64 hex digits>`)");
            }
            verified_checksum = true;
        }
        match mode {
            IntegrityMode::Require if !verified_signature && !verified_checksum => reject(
                Reason::MissingIntegrity,
                Some("checksum"),
                "integrity is required: add a checksum or signature",
            ),
            IntegrityMode::RequireSignature if !verified_signature => reject(
                Reason::MissingIntegrity,
                Some("signature"),
                "a signature is required",
            ),
            _ if !verified_signature
                && self
                    .rules
                    .signatures_required_for
                    .iter()
                    .any(|c| c == customer_id) =>
            {
                reject(
                    Reason::MissingIntegrity,
                    Some("signature"),
                    format!("customer `{customer_id}` requires signed events"),
                )
            }
            _ => Ok(()),
        }
    }
}

fn metadata(
    region: &str,
    plan: &str,
    marketplace: &str,
    attributes: &str,
) -> Option<Box<Metadata>> {
    let boxed = |s: &str| {
        if s.is_empty() {
            None
        } else {
            Some(Box::from(s))
        }
    };
    if region.is_empty() && plan.is_empty() && marketplace.is_empty() && attributes.is_empty() {
        return None;
    }
    Some(Box::new(Metadata {
        region: boxed(region),
        plan: boxed(plan),
        marketplace: boxed(marketplace),
        attributes: boxed(attributes),
    }))
}

fn parse_quantity(text: &str, max: Quantity) -> Checked<Quantity> {
    let q = Quantity::parse(text).or_else(|e| match e {
        DecimalError::Overflow => reject(
            Reason::QuantityTooLarge,
            Some("quantity"),
            format!("quantity `{text}` is too large"),
        ),
        e => reject(
            Reason::InvalidQuantity,
            Some("quantity"),
            format!("quantity `{text}` is {e}"),
        ),
    })?;
    if q.0.abs() > max.0 {
        return reject(
            Reason::QuantityTooLarge,
            Some("quantity"),
            format!("quantity {q} exceeds max_quantity {max}"),
        );
    }
    Ok(q)
}

#[cfg(test)]
mod tests;

/// What a SKU's meter and price need of an event beyond the contract: a non-additive meter (max,
/// unique count, latest) cannot apply an amend (a delta to a reading it no longer has), nor can
/// a percentage price with per-transaction limits (the bound depends on the whole amount); and a
/// unique-count meter needs the attribute it counts.
fn check_meter(
    sku: &crate::catalog::Sku,
    model: &crate::pricing::PriceModel,
    correction: &Option<(CorrectionAction, &str)>,
    attributes: &str,
) -> Checked<()> {
    use crate::catalog::Aggregation;
    use crate::pricing::PriceModel;
    if matches!(correction, Some((CorrectionAction::Amend, _))) {
        let why = if !sku.aggregation.is_additive() {
            Some(format!(
                "metered by {}: an amend cannot change a reading",
                sku.aggregation.name()
            ))
        } else if matches!(model, PriceModel::Percentage(p) if p.has_limits()) {
            Some(
                "priced with a per-transaction min_fee / max_fee, which bounds whole transactions"
                    .to_string(),
            )
        } else {
            None
        };
        if let Some(why) = why {
            return reject(
                Reason::AmendNotSupported,
                Some("correction.action"),
                format!("sku `{}` is {why}", sku.id),
            );
        }
    }
    if sku.aggregation == Aggregation::UniqueCount {
        let key = sku.unique_by.as_deref().unwrap_or_default();
        let present = (!attributes.is_empty())
            .then_some(attributes)
            .and_then(|a| crate::catalog::distinct_value(Some(a), key))
            .is_some();
        if !present {
            return reject(
                Reason::MissingField,
                Some("metadata.attributes"),
                format!(
                    "sku `{}` counts distinct metadata.attributes.{key}; the event has none",
                    sku.id
                ),
            );
        }
    }
    Ok(())
}
