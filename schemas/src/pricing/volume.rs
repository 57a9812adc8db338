//! Volume pricing: the whole quantity at the rate of the tier the period total falls in.

use super::model::{tier_of, SegmentContext, Tier, TierCharge};
use crate::money::Amount;

pub(crate) fn charge(tiers: &[Tier], ctx: &SegmentContext, out: &mut Vec<TierCharge>) {
    let i = tier_of(tiers, ctx.period_total);
    let tier = &tiers[i];
    let fee = if ctx.last {
        tier.flat_fee
    } else {
        Amount::ZERO
    };
    out.push(TierCharge {
        segment: ctx.index,
        tier: i,
        quantity: ctx.quantity,
        amount: tier.unit_price.times(ctx.quantity) + fee,
    });
}
