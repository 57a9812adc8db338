//! Graduated pricing: each tier prices its own slice of the period's usage.

use super::model::{lower_bound, SegmentContext, Tier, TierCharge};
use crate::money::{Amount, Quantity};

pub(crate) fn charge(tiers: &[Tier], ctx: &SegmentContext, out: &mut Vec<TierCharge>) {
    let start = ctx.start;
    let end = ctx.start + ctx.quantity;
    for (i, tier) in tiers.iter().enumerate() {
        let lo = lower_bound(tiers, i);
        let hi = tier.up_to;
        let clamp = |x: Quantity| match hi {
            Some(hi) => x.max(lo).min(hi),
            None => x.max(lo),
        };
        let slice = clamp(end) - clamp(start);
        // Usage enters tier i when it exceeds the previous bound; the first tier is always entered.
        let entered_here = if i == 0 {
            ctx.first
        } else {
            start <= lo && end > lo
        };
        if slice == Quantity::ZERO && !entered_here {
            continue;
        }
        let fee = if entered_here {
            tier.flat_fee
        } else {
            Amount::ZERO
        };
        out.push(TierCharge {
            segment: ctx.index,
            tier: i,
            quantity: slice,
            amount: tier.unit_price.times(slice) + fee,
        });
    }
}
