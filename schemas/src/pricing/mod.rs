//! Pricing math: what one billing period of usage costs under a rate card's price models.
//!
//! Semantics (the contract with finance, see `docs/pricing.md`):
//! - Tier `up_to` bounds are inclusive: 5 falls in the tier up to 5, 5.001 in the next. The last
//!   tier has no bound.
//! - Graduated: each tier prices its own slice; a tier's flat fee is charged when usage enters the
//!   tier (exceeds the previous bound); the first tier's flat fee is charged even at zero usage.
//! - Volume: the whole quantity is priced at the tier it falls in, plus that tier's flat fee (at
//!   zero usage: the first tier).
//! - A period may be priced by several rate-card versions (a change mid-period). Its usage is then
//!   a sequence of [`Segment`]s in version order, and the tier position carries across them: usage
//!   after the change continues from the tier reached before it, at the new version's rates. For
//!   volume, the tier is chosen by the period total and each segment pays its own version's rate
//!   for that tier; the flat fee is charged once, from the last segment.
//! - Net negative usage (a correction larger than what it corrects) is priced at zero.

mod graduated;
pub mod invoice;
pub mod package;
mod per_unit;
pub mod percentage;
mod volume;

use serde::{Deserialize, Serialize};

use crate::money::{Amount, Quantity, UnitPrice};

/// One tier of a tiered price.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tier {
    /// Inclusive upper bound; `None` on the last tier.
    pub up_to: Option<Quantity>,
    pub unit_price: UnitPrice,
    pub flat_fee: Amount,
}

/// Usage sold in packages (see [`package`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Package {
    /// Units per package (positive).
    pub size: Quantity,
    /// Price of one package.
    pub price: UnitPrice,
    /// Units per period that are free before packages count.
    pub free_units: Quantity,
    /// Charge a started package whole (`true`, the default) or only complete ones.
    pub round_up: bool,
}

/// How a SKU is priced within one rate-card version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PriceModel {
    PerUnit { unit_price: UnitPrice },
    Graduated { tiers: Vec<Tier> },
    Volume { tiers: Vec<Tier> },
    Package(Package),
    Percentage(Percentage),
}

/// A share of transaction amounts plus a fee per transaction (see [`percentage`]). Events of a
/// percentage SKU report the transaction amount as their quantity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Percentage {
    /// A fraction: `0.029` is 2.9%.
    pub rate: UnitPrice,
    /// Charged per transaction.
    pub fixed_fee: Amount,
    /// Transaction amount per period that is free of the percentage.
    pub free_units: Quantity,
    /// Transactions per period that are free of the fixed fee.
    pub free_events: i64,
    /// The least and the most one transaction pays (percentage plus fixed fee); see
    /// [`percentage::limit_adjustment`]. Not combined with free units or events.
    pub min_fee: Option<Amount>,
    pub max_fee: Option<Amount>,
}

impl PriceModel {
    pub fn name(&self) -> &'static str {
        match self {
            PriceModel::PerUnit { .. } => "per_unit",
            PriceModel::Graduated { .. } => "graduated",
            PriceModel::Volume { .. } => "volume",
            PriceModel::Package(_) => "package",
            PriceModel::Percentage(_) => "percentage",
        }
    }
}

/// Usage of one period priced by one model, in version order within the period.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub model: &'a PriceModel,
    pub quantity: Quantity,
    /// Net events (the percentage model's per-event fee counts them).
    pub events: i64,
    /// What per-transaction minimum and maximum fees add to the percentage model's charge, summed
    /// over the segment's transactions (zero for other models).
    pub fee_adjustment: Amount,
}

/// What one tier of one segment contributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TierCharge {
    /// Index of the segment (in the slice given to [`price_period`]).
    pub segment: usize,
    /// Index of the tier within that segment's model (0 for per-unit).
    pub tier: usize,
    pub quantity: Quantity,
    /// Quantity × unit price plus any flat fee charged here.
    pub amount: Amount,
}

/// The exact charge of a period, tier by tier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeriodCharge {
    pub tiers: Vec<TierCharge>,
}

impl PeriodCharge {
    pub fn total(&self) -> Amount {
        self.tiers.iter().map(|t| t.amount).sum()
    }
}

/// Prices the consecutive segments of one period's usage.
pub fn price_period(segments: &[Segment<'_>]) -> PeriodCharge {
    let total: Quantity = segments
        .iter()
        .map(|s| s.quantity.max(Quantity::ZERO))
        .sum();
    let mut out = PeriodCharge::default();
    let mut position = Quantity::ZERO;
    let mut events_before = 0i64;
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        let q = seg.quantity.max(Quantity::ZERO);
        let ctx = SegmentContext {
            index: i,
            first: i == 0,
            last: i == last,
            start: position,
            quantity: q,
            period_total: total,
            events_before,
            events: seg.events.max(0),
            fee_adjustment: seg.fee_adjustment,
        };
        match seg.model {
            PriceModel::PerUnit { unit_price } => {
                per_unit::charge(*unit_price, &ctx, &mut out.tiers)
            }
            PriceModel::Graduated { tiers } => graduated::charge(tiers, &ctx, &mut out.tiers),
            PriceModel::Volume { tiers } => volume::charge(tiers, &ctx, &mut out.tiers),
            PriceModel::Package(p) => package::charge(p, &ctx, &mut out.tiers),
            PriceModel::Percentage(p) => percentage::charge(p, &ctx, &mut out.tiers),
        }
        position += q;
        events_before += seg.events.max(0);
    }
    out
}

/// Where a segment sits within its period.
pub(crate) struct SegmentContext {
    pub index: usize,
    pub first: bool,
    pub last: bool,
    /// Tier position at which this segment starts.
    pub start: Quantity,
    pub quantity: Quantity,
    pub period_total: Quantity,
    /// Events of the period before this segment, and in it.
    pub events_before: i64,
    pub events: i64,
    pub fee_adjustment: Amount,
}

/// Lower (exclusive) bound of tier `i`: the previous tier's `up_to`, or zero.
pub(crate) fn lower_bound(tiers: &[Tier], i: usize) -> Quantity {
    if i == 0 {
        Quantity::ZERO
    } else {
        tiers[i - 1].up_to.unwrap_or(Quantity::ZERO)
    }
}

/// The tier a quantity falls in (inclusive upper bounds; zero falls in the first tier).
pub fn tier_of(tiers: &[Tier], q: Quantity) -> usize {
    tiers
        .iter()
        .position(|t| t.up_to.is_none_or(|up| q <= up))
        .unwrap_or(tiers.len() - 1)
}

#[cfg(test)]
mod tests;
