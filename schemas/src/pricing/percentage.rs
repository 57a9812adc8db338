//! Percentage pricing: `rate × transaction amount + fixed fee per transaction`, for payment-like
//! SKUs whose events report the transaction amount as their quantity. The first `free_units`
//! of amount per period pay no percentage and the first `free_events` transactions no fixed
//! fee. Both positions carry across a mid-period rate change, like tiers.
//!
//! Per-transaction minimum and maximum fees are not supported: they need each transaction's
//! fee before aggregation, and meterflow prices aggregated usage.

use super::{Percentage, SegmentContext, TierCharge};
use crate::money::{Amount, Quantity};

pub(crate) fn charge(p: &Percentage, ctx: &SegmentContext, out: &mut Vec<TierCharge>) {
    let end = ctx.start + ctx.quantity;
    let free_before = ctx.start.min(p.free_units);
    let free_after = end.min(p.free_units);
    let billable = (ctx.quantity - (free_after - free_before)).max(Quantity::ZERO);
    let share = p.rate.times(billable);
    let fee_events =
        (ctx.events_before + ctx.events).max(p.free_events) - ctx.events_before.max(p.free_events);
    let fees = Amount(p.fixed_fee.0 * fee_events as i128);
    out.push(TierCharge {
        segment: ctx.index,
        tier: 0,
        quantity: ctx.quantity,
        amount: share + fees,
    });
}
