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
use meterflow_schemas::catalog::{Catalog, PriceIdx};

use meterflow_schemas::rows::LineKey;
use meterflow_schemas::time::{EventTime, Period};
use serde::{Deserialize, Serialize};

use crate::aggregate::{UsageRecord, UsageSum};
use crate::Epoch;

/// The price of one segment of a period's usage: which catalog price, ordered by effective
/// date, so a period's segments come in version order. Its model and currency are the catalog's
/// (`Catalog::price`), looked up when the line is priced: the dataflow's catalog never changes,
/// so the index names them, and the usage held per line does not copy tiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentPrice {
    pub effective_from: EventTime,
    pub version: u32,
    pub price: PriceIdx,
}

impl SegmentPrice {
    /// The segment price of `catalog`'s price `price_ix`.
    pub fn of(catalog: &Catalog, price_ix: PriceIdx) -> SegmentPrice {
        let price = catalog.price(price_ix);
        SegmentPrice {
            effective_from: price.effective_from,
            version: price.version,
            price: price_ix,
        }
    }
}

pub type RatedUsage<'s> = VecCollection<'s, Epoch, (LineKey, (Period, SegmentPrice)), UsageSum>;

pub fn rate_join<'s>(
    usage: VecCollection<'s, Epoch, UsageRecord, UsageSum>,
    catalog: Arc<Catalog>,
) -> RatedUsage<'s> {
    usage.map(move |(price_ix, (line, invoice_period))| {
        (line, (invoice_period, SegmentPrice::of(&catalog, price_ix)))
    })
}
