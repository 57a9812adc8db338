//! The price models of a rate-card version (per unit, graduated, volume, package, percentage),
//! their tiers, and what pricing one period's segments produces.

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

/// Usage sold in packages (see the `package` module).
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

/// A share of transaction amounts plus a fee per transaction (see the `percentage` module). Events of a
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
    /// `limit_adjustment` in the `percentage` module. Not combined with free units or events.
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
    /// Index of the segment (in the slice given to `price_period`).
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
