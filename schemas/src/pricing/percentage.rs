//! Percentage pricing: `rate × transaction amount + fixed fee per transaction`, for payment-like
//! SKUs whose events report the transaction amount as their quantity. The first `free_units`
//! of amount per period pay no percentage and the first `free_events` transactions no fixed
//! fee. Both positions carry across a mid-period rate change, like tiers.
//!
//! Per-transaction minimum and maximum fees (`min_fee`, `max_fee`) bound what one transaction
//! pays, percentage and fixed fee together. meterflow prices aggregated usage, so the bound is
//! applied where each transaction is still known: as it is accepted, its
//! [`limit_adjustment`] (what the bound adds to or takes off its fee) is computed under its own
//! rate-card version and summed with the usage; a void takes its original's adjustment back.
//! The period's charge is `rate × amount + fixed fee × transactions + Σ adjustments`, which is
//! exactly `Σ clamp(rate × amountᵢ + fixed fee, min, max)`. Free units and free events are
//! per-period allowances that would make a transaction's fee depend on the others, so the
//! catalog refuses them together with a minimum or maximum.

use super::model::{Percentage, SegmentContext, TierCharge};
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
        amount: share + fees + ctx.fee_adjustment,
    });
}

impl Percentage {
    pub fn has_limits(&self) -> bool {
        self.min_fee.is_some() || self.max_fee.is_some()
    }
}

/// What the per-transaction minimum and maximum change in the fee of one transaction of
/// `amount`: `clamp(fee) - fee` with `fee = rate × amount + fixed fee` (zero without limits).
pub fn limit_adjustment(p: &Percentage, amount: Quantity) -> Amount {
    let fee = p.rate.times(amount) + p.fixed_fee;
    let mut bounded = fee;
    if let Some(min) = p.min_fee {
        bounded = bounded.max(min);
    }
    if let Some(max) = p.max_fee {
        bounded = bounded.min(max);
    }
    bounded - fee
}
