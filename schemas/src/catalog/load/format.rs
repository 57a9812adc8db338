//! The catalog files' shape (`[[sku]]`, `[[customer]]`, `[[contract]]`, `[[rate_card]]`,
//! `[[tax]]`, as serde reads them) and the [`Loader`] that collects every problem while the
//! entries are checked and resolved.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::catalog::model::*;
use crate::money::DecimalError;
use crate::time::EventTime;

/// One problem in a catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogError {
    pub file: PathBuf,
    /// e.g. `rate_card "standard" version 2, price for sku "tokens"`.
    pub entry: String,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}\n    fix: {}",
            self.file.display(),
            self.entry,
            self.message,
            self.fix
        )
    }
}

/// All problems found in a catalog.
#[derive(Clone, Debug, thiserror::Error)]
pub struct CatalogErrors(pub Vec<CatalogError>);

impl fmt::Display for CatalogErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the catalog has {} problem(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CatalogFile {
    #[serde(default)]
    pub(super) sku: Vec<SkuDef>,
    #[serde(default)]
    pub(super) customer: Vec<CustomerDef>,
    #[serde(default)]
    pub(super) contract: Vec<ContractDef>,
    #[serde(default)]
    pub(super) rate_card: Vec<RateCardDef>,
    #[serde(default)]
    pub(super) tax: Vec<TaxDef>,
    #[serde(default)]
    pub(super) marketplace: Vec<MarketplaceDef>,
    /// Shadow rate card for every contract that names none of its own.
    pub(super) shadow_rate_card: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TaxDef {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: String,
    pub(super) rate: DecimalText,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeeDef {
    pub(super) name: String,
    pub(super) amount: DecimalText,
    /// Its standalone selling price (per period, or per term with `term_months`), if it is not
    /// `amount`: what the revenue schedule allocates the contract's fees by.
    pub(super) ssp: Option<DecimalText>,
    /// Billed in advance per term of this many months (12: an annual fee), not every period.
    pub(super) term_months: Option<u32>,
    /// With `term_months`: when the first term starts (an add-on bought mid-contract); the
    /// contract's start if absent.
    pub(super) starts: Option<String>,
    /// Later prices (`[[contract.fee.change]]`), in the order they apply.
    #[serde(default)]
    pub(super) change: Vec<FeeChangeDef>,
    /// Its changes are price steps agreed at signing (a ramp deal), not later modifications.
    #[serde(default)]
    pub(super) ramp: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeeChangeDef {
    pub(super) from: String,
    pub(super) amount: DecimalText,
    pub(super) ssp: Option<DecimalText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DiscountDef {
    #[serde(default)]
    pub(super) name: String,
    pub(super) sku: Option<String>,
    pub(super) percent: Option<DecimalText>,
    pub(super) amount: Option<DecimalText>,
    pub(super) from: Option<String>,
    pub(super) until: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SkuDef {
    pub(super) id: String,
    pub(super) unit: String,
    #[serde(default)]
    pub(super) description: String,
    /// `sum` (default), `count`, `max`, `unique_count` or `latest`.
    pub(super) aggregation: Option<String>,
    /// For `unique_count`: the `metadata.attributes` key whose distinct values are counted.
    pub(super) unique_by: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CustomerDef {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: String,
    /// The `[[tax]]` of the customer's jurisdiction.
    pub(super) tax: Option<String>,
    /// The customer's segment (cohort), e.g. `enterprise`: forecasts group usage by it.
    pub(super) segment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContractDef {
    pub(super) id: String,
    pub(super) customer: String,
    pub(super) rate_card: String,
    /// Pin to this rate-card version (grandfathering).
    pub(super) version: Option<u32>,
    pub(super) starts: String,
    pub(super) ends: Option<String>,
    #[serde(default)]
    pub(super) fee: Vec<FeeDef>,
    #[serde(default)]
    pub(super) discount: Vec<DiscountDef>,
    pub(super) minimum_spend: Option<DecimalText>,
    pub(super) maximum_spend: Option<DecimalText>,
    /// Planned usage spend per invoice period (burn-rate signals; bills nothing).
    pub(super) budget: Option<DecimalText>,
    #[serde(default)]
    pub(super) credit: Vec<CreditDef>,
    #[serde(default)]
    pub(super) entitlement: Vec<EntitlementDef>,
    /// Price this contract's usage under this rate card too, side by side (shadow billing).
    pub(super) shadow_rate_card: Option<String>,
    /// The marketplace listing the contract was bought through.
    pub(super) marketplace: Option<ContractMarketplaceDef>,
    /// How the forecast carries the contract past `ends`.
    pub(super) renewal: Option<RenewalDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RenewalDef {
    pub(super) term_months: u32,
    /// A fraction from 0 to 1 (default 1).
    pub(super) likelihood: Option<DecimalText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MarketplaceDef {
    pub(super) id: String,
    /// `aws`, `azure` or `gcp`.
    pub(super) kind: String,
    /// AWS: the product code.
    pub(super) product_code: Option<String>,
    /// GCP: the service name (`<product>.gcpmarketplace.example.com`).
    pub(super) service_name: Option<String>,
    #[serde(default)]
    pub(super) dimension: Vec<DimensionDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DimensionDef {
    pub(super) sku: String,
    pub(super) dimension: String,
    pub(super) unit_size: Option<DecimalText>,
    pub(super) allocation_tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContractMarketplaceDef {
    pub(super) listing: String,
    /// AWS `CustomerIdentifier`, Azure `resourceId`, GCP `consumerId`.
    pub(super) customer: Option<String>,
    pub(super) aws_account_id: Option<String>,
    pub(super) plan: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntitlementDef {
    pub(super) sku: String,
    pub(super) included: DecimalText,
    pub(super) thresholds: Option<Vec<u32>>,
    pub(super) soft_limit: Option<DecimalText>,
    pub(super) hard_limit: Option<DecimalText>,
    #[serde(default)]
    pub(super) rollover: bool,
    pub(super) rollover_cap: Option<DecimalText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreditDef {
    pub(super) name: String,
    pub(super) amount: DecimalText,
    #[serde(default)]
    pub(super) priority: u32,
    pub(super) granted: String,
    pub(super) expires: Option<String>,
    #[serde(default)]
    pub(super) promotional: bool,
    /// Free, and a material right the customer got for signing (implies `promotional`).
    #[serde(default)]
    pub(super) material_right: bool,
    /// With `material_right`: the share of it expected to be redeemed (default 1).
    pub(super) redemption: Option<DecimalText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateCardDef {
    pub(super) id: String,
    pub(super) version: u32,
    pub(super) effective_from: String,
    pub(super) currency: String,
    #[serde(default)]
    pub(super) price: Vec<PriceDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PriceDef {
    pub(super) sku: String,
    pub(super) region: Option<String>,
    pub(super) model: String,
    pub(super) unit_price: Option<DecimalText>,
    #[serde(default)]
    pub(super) tiers: Vec<TierDef>,
    /// Package model: units per package, price per package, free units, `up` or `down`.
    pub(super) package_size: Option<DecimalText>,
    pub(super) package_price: Option<DecimalText>,
    pub(super) free_units: Option<DecimalText>,
    pub(super) rounding: Option<String>,
    /// Percentage model: percent of the transaction amount, fee per transaction, free
    /// transactions (`free_units` is shared with the package model).
    pub(super) percent: Option<DecimalText>,
    pub(super) fixed_fee: Option<DecimalText>,
    pub(super) free_events: Option<u32>,
    /// Percentage model: the least and the most one transaction pays.
    pub(super) min_fee: Option<DecimalText>,
    pub(super) max_fee: Option<DecimalText>,
    /// What a unit costs the seller (cost of goods), for margin anomalies.
    pub(super) unit_cost: Option<DecimalText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TierDef {
    pub(super) up_to: Option<DecimalText>,
    pub(super) unit_price: DecimalText,
    pub(super) flat_fee: Option<DecimalText>,
}

/// A decimal written as a TOML string or integer. Floats are refused: they are binary
/// approximations and would put rounding into prices.
pub(super) struct DecimalText(pub(super) String);

impl<'de> Deserialize<'de> for DecimalText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DecimalText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal as a string, e.g. \"0.0001\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DecimalText, E> {
                Ok(DecimalText(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DecimalText, E> {
                Ok(DecimalText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<DecimalText, E> {
                Err(E::custom(format!(
                    "{v} is a TOML float, which is inexact; write it as a string: \"{v}\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) struct Loader {
    pub(super) errors: Vec<CatalogError>,
    pub(super) catalog: Catalog,
}

impl Loader {
    pub(super) fn err(
        &mut self,
        file: &Path,
        entry: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.errors.push(CatalogError {
            file: file.to_owned(),
            entry: entry.into(),
            message: message.into(),
            fix: fix.into(),
        });
    }

    pub(super) fn time(
        &mut self,
        file: &Path,
        entry: &str,
        key: &str,
        text: &str,
    ) -> Option<EventTime> {
        match EventTime::parse_rfc3339(text) {
            Ok(t) => Some(t),
            Err(why) => {
                self.err(
                    file,
                    entry,
                    format!("{key} `{text}` is not an RFC 3339 time: {why}"),
                    format!("write {key} like \"2026-01-01T00:00:00Z\""),
                );
                None
            }
        }
    }

    pub(super) fn decimal<T>(
        &mut self,
        file: &Path,
        entry: &str,
        key: &str,
        text: &DecimalText,
        parse: fn(&str) -> Result<T, DecimalError>,
    ) -> Option<T> {
        match parse(&text.0) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(file, entry, format!("{key} `{}` is {e}", text.0), format!("write {key} as a decimal string with at most 9 fractional digits, e.g. \"0.0001\""));
                None
            }
        }
    }
}
