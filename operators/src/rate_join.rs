//! The rate join: attaches to each usage aggregate the price (rate-card version, SKU, region)
//! that rates it.
//!
//! (data, time, diff): a differential join of usage `(price, (line, invoice_period))` with diff
//! [`UsageSum`] against the price collection `(price, Price)`; emits
//! `(line, (invoice_period, SegmentPrice))` with the usage as diff. A price that changes in the
//! catalog re-rates the usage it joins with, as retractions and insertions.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use meterflow_schemas::catalog::{Price, PriceIdx};
use meterflow_schemas::pricing::PriceModel;
use meterflow_schemas::rows::LineKey;
use meterflow_schemas::time::{EventTime, Period};
use serde::{Deserialize, Serialize};

use crate::aggregate::{UsageRecord, UsageSum};
use crate::Epoch;

/// The price of one segment of a period's usage. Orders by effective date, so a period's
/// segments come in version order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentPrice {
    pub effective_from: EventTime,
    pub version: u32,
    pub price: PriceIdx,
    pub currency: Arc<str>,
    pub model: PriceModel,
}

pub type RatedUsage<'s> = VecCollection<'s, Epoch, (LineKey, (Period, SegmentPrice)), UsageSum>;

pub fn rate_join<'s>(
    usage: VecCollection<'s, Epoch, UsageRecord, UsageSum>,
    prices: VecCollection<'s, Epoch, (PriceIdx, Price), isize>,
) -> RatedUsage<'s> {
    usage.join_map(prices, |price_ix, (line, invoice_period), price| {
        let segment = SegmentPrice {
            effective_from: price.effective_from,
            version: price.version,
            price: *price_ix,
            currency: price.currency.clone(),
            model: price.model.clone(),
        };
        (*line, (*invoice_period, segment))
    })
}
