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
mod model;
pub mod package;
mod per_unit;
pub mod percentage;
mod volume;

pub use model::*;

use crate::money::Quantity;

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

#[cfg(test)]
mod tests;
