//! Package pricing: usage is sold in packages of a fixed size at a fixed price, after optional
//! free units. By default a started package is charged whole (`ceil`); with rounding `down`
//! only complete packages are (`floor`).
//!
//! Across segments (a rate change mid-period) each segment pays, at its own version's price,
//! for the packages its usage completes: `packages(end) - packages(start)` with the period's
//! position carried over, so one segment alone costs `packages(total) × price`.

use super::model::{Package, SegmentContext, TierCharge};
use crate::money::Quantity;

/// Packages billed for usage up to `position`.
pub fn packages(p: &Package, position: Quantity) -> i128 {
    let billable = (position - p.free_units).max(Quantity::ZERO).0;
    let size = p.size.0;
    if p.round_up {
        (billable + size - 1) / size
    } else {
        billable / size
    }
}

pub(crate) fn charge(p: &Package, ctx: &SegmentContext, out: &mut Vec<TierCharge>) {
    let n = packages(p, ctx.start + ctx.quantity) - packages(p, ctx.start);
    out.push(TierCharge {
        segment: ctx.index,
        tier: 0,
        quantity: ctx.quantity,
        amount: p.price.times(Quantity(n * Quantity::SCALE_ONE)),
    });
}
