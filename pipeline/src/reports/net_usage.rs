//! Net billable usage per contract, SKU and time bucket (an hour, a day), read back from a run's
//! accepted events: corrections included (amends add their quantity, voids take theirs back),
//! `count` meters as net events. What `meterflow export` sends per hour and `meterflow forecast`
//! models per day.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context};
use clickhouse::Row;
use meterflow_schemas::catalog::{Aggregation, Catalog, ContractIdx, MarketplaceKind, SkuIdx};
use meterflow_schemas::marketplace::{allocation_tags, tags_of, Tags};
use meterflow_schemas::money::Quantity;
use meterflow_schemas::time::EventTime;
use serde::Deserialize;

use crate::reports::tables::read_table;
use crate::sinks::clickhouse::client::{sql_list, ClickHouse};

/// `(contract, SKU, bucket start in ms, allocation tags) → (net quantity, net events)`.
pub type Buckets = BTreeMap<(ContractIdx, SkuIdx, i64, Tags), (Quantity, i64)>;

/// Which events count: those before `before`, of the contracts `contracts` names (all: `None`).
/// With `allocation`, usage is split by the allocation tags its dimension on that marketplace's
/// listing names (see `meterflow_schemas::marketplace::tags_of`); otherwise tags stay empty.
pub struct Select<'a> {
    pub bucket_ms: i64,
    pub before: Option<EventTime>,
    pub contracts: Option<&'a [&'a str]>,
    pub allocation: Option<MarketplaceKind>,
}

impl Select<'_> {
    fn keeps(&self, contract: &str) -> bool {
        self.contracts.is_none_or(|c| c.contains(&contract))
    }

    fn tags(&self, catalog: &Catalog, c: ContractIdx, s: SkuIdx, attributes: &str) -> Tags {
        match self.allocation {
            Some(kind) => tags_of(attributes, allocation_tags(catalog, kind, c, s)),
            None => Tags::new(),
        }
    }
}

fn net_events(correction_action: &str) -> i64 {
    match correction_action {
        "void" => -1,
        "amend" => 0,
        _ => 1,
    }
}

fn add(
    catalog: &Catalog,
    out: &mut Buckets,
    key: (ContractIdx, SkuIdx, i64, Tags),
    quantity: Quantity,
    events: i64,
) {
    let s = key.1;
    let q = match catalog.skus[s.ix()].aggregation {
        Aggregation::Count => Quantity::from_units(events),
        _ => quantity,
    };
    let e = out.entry(key).or_default();
    e.0 += q;
    e.1 += events;
}

/// From an embedded run's `usage_events`.
pub fn from_output(out: &Path, catalog: &Catalog, select: &Select) -> anyhow::Result<Buckets> {
    let mut buckets = Buckets::new();
    for r in read_table(out, "usage_events")
        .with_context(|| format!("cannot read {}/usage_events", out.display()))?
    {
        let get = |k: &str| r.get(k).map_or("", |s| s.as_str());
        if get("billable") != "1" || !select.keeps(get("contract_id")) {
            continue;
        }
        let (Some(c), Some(s)) = (
            catalog.contract(get("contract_id")),
            catalog.sku(get("sku")),
        ) else {
            continue;
        };
        let t = EventTime::parse_rfc3339(get("event_time"))
            .map_err(|e| anyhow!("usage_events {}: event_time: {e}", get("event_id")))?;
        if select.before.is_some_and(|b| t >= b) {
            continue;
        }
        let quantity = Quantity::parse(get("quantity"))
            .map_err(|e| anyhow!("usage_events {}: quantity: {e}", get("event_id")))?;
        let bucket = t.0.div_euclid(select.bucket_ms) * select.bucket_ms;
        let tags = select.tags(catalog, c, s, get("attributes"));
        add(
            catalog,
            &mut buckets,
            (c, s, bucket, tags),
            quantity,
            net_events(get("correction_action")),
        );
    }
    Ok(buckets)
}

/// From ClickHouse's `usage_events`, summed there.
pub fn from_clickhouse(
    ch: &ClickHouse,
    catalog: &Catalog,
    select: &Select,
) -> anyhow::Result<Buckets> {
    #[derive(Row, Deserialize)]
    struct Bucket {
        contract_id: String,
        sku: String,
        bucket: u32,
        attributes: String,
        quantity: String,
        events: i64,
    }
    let mut filter = String::new();
    if let Some(contracts) = select.contracts {
        if contracts.is_empty() {
            return Ok(Buckets::new());
        }
        filter += &format!(" AND contract_id IN ({})", sql_list(contracts.iter()));
    }
    if let Some(b) = select.before {
        filter += &format!(" AND event_time < toDateTime({})", b.0.div_euclid(1000));
    }
    let secs = select.bucket_ms / 1000;
    // Split by attributes only when allocations are asked for (tags are read from them here).
    let attributes = match select.allocation {
        Some(_) => "attributes",
        None => "''",
    };
    let rows: Vec<Bucket> = ch
        .fetch(&format!(
            "SELECT contract_id, sku, toUInt32(intDiv(toUInt32(event_time), {secs}) * {secs}) AS bucket, \
             {attributes} AS attributes, toString(sum(quantity)) AS quantity, \
             sum(multiIf(correction_action = 'void', -1, correction_action = 'amend', 0, 1)) AS events \
             FROM {{db}}.usage_events WHERE billable = 1{filter} GROUP BY contract_id, sku, bucket, attributes"
        ))
        .map_err(anyhow::Error::msg)?;
    let mut buckets = Buckets::new();
    for b in rows {
        let (Some(c), Some(s)) = (catalog.contract(&b.contract_id), catalog.sku(&b.sku)) else {
            continue;
        };
        let quantity = Quantity::parse(&b.quantity)
            .map_err(|e| anyhow!("usage_events quantity {}: {e}", b.quantity))?;
        let tags = select.tags(catalog, c, s, &b.attributes);
        add(
            catalog,
            &mut buckets,
            (c, s, i64::from(b.bucket) * 1000, tags),
            quantity,
            b.events,
        );
    }
    Ok(buckets)
}
