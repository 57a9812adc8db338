//! Per-unit pricing: quantity × unit price.

use super::model::{SegmentContext, TierCharge};
use crate::money::UnitPrice;

pub(crate) fn charge(unit_price: UnitPrice, ctx: &SegmentContext, out: &mut Vec<TierCharge>) {
    out.push(TierCharge {
        segment: ctx.index,
        tier: 0,
        quantity: ctx.quantity,
        amount: unit_price.times(ctx.quantity),
    });
}
