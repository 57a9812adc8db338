//! The rate join: attaches to each usage aggregate the price (rate-card version, SKU, region)
//! that rates it.
//!
//! (data, time, diff): maps usage `(price, (line, invoice_period))` with diff [`UsageSum`] to
//! `(line, (invoice_period, SegmentPrice))` with the same diff, the price looked up in the
//! catalog the dataflow was built with. A dataflow's catalog never changes: a catalog change
//! drains and commits the run and builds a new dataflow, whose restored usage is then rated by the
//! new prices (and the sinks retract what the old ones billed). So a lookup is all the join ever
//! did, and it keeps no arrangement of the usage by price.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use meterflow_schemas::catalog::{Catalog, Price, PriceIdx};
use std::hash::{Hash, Hasher};

use meterflow_schemas::hashing::FxHasher;
use meterflow_schemas::pricing::PriceModel;
use meterflow_schemas::rows::LineKey;
use meterflow_schemas::time::{EventTime, Period};
use serde::{Deserialize, Serialize};

use crate::aggregate::{UsageRecord, UsageSum};
use crate::Epoch;

/// The price of one segment of a period's usage. Orders by effective date, so a period's
/// segments come in version order.
///
/// Compared by (effective date, version, price, digest of currency and model): differential
/// compares values constantly, and the digest stands in for the tiers without walking them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SegmentPrice {
    pub effective_from: EventTime,
    pub version: u32,
    pub price: PriceIdx,
    pub digest: u64,
    pub currency: Arc<str>,
    pub model: PriceModel,
}

impl SegmentPrice {
    pub fn of(price_ix: PriceIdx, price: &Price) -> SegmentPrice {
        let mut h = FxHasher::default();
        (&*price.currency, &price.model).hash(&mut h);
        SegmentPrice {
            effective_from: price.effective_from,
            version: price.version,
            price: price_ix,
            digest: h.finish(),
            currency: price.currency.clone(),
            model: price.model.clone(),
        }
    }

    fn identity(&self) -> (EventTime, u32, PriceIdx, u64) {
        (self.effective_from, self.version, self.price, self.digest)
    }
}

impl PartialEq for SegmentPrice {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}
impl Eq for SegmentPrice {}
impl PartialOrd for SegmentPrice {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SegmentPrice {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.identity().cmp(&other.identity())
    }
}

pub type RatedUsage<'s> = VecCollection<'s, Epoch, (LineKey, (Period, SegmentPrice)), UsageSum>;

pub fn rate_join<'s>(
    usage: VecCollection<'s, Epoch, UsageRecord, UsageSum>,
    catalog: Arc<Catalog>,
) -> RatedUsage<'s> {
    usage.map(move |(price_ix, (line, invoice_period))| {
        let price = SegmentPrice::of(price_ix, catalog.price(price_ix));
        (line, (invoice_period, price))
    })
}
