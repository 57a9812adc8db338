//! Marketplace exports: the hourly usage of contracts sold through a cloud marketplace, planned
//! as metering records (what to send, what was sent already, what a correction changes) and
//! rendered as each marketplace's own metering request.
//!
//! Quantities are in marketplace units: SKU usage ÷ the dimension's `unit_size`. AWS and GCP take
//! whole numbers; so that rounding loses nothing over time, the whole units of an hour are those
//! the running total crosses in it (`⌊total to the hour's end ÷ unit⌋ − ⌊total to its start ÷
//! unit⌋`): a remainder carries into the next hour instead of being dropped. Azure takes
//! decimals and gets the exact quotient (9 decimals).
//!
//! A marketplace bills what it was sent, once per customer, dimension and hour, and refuses
//! records dated more than a few hours back. Usage that changes after its period was exported
//! (late events, amends, voids) is settled per export run: an increase becomes one compensating
//! record dated at the export's hour; a decrease cannot be sent (no marketplace takes negative
//! metering) and is reported as `not_sendable`, for a refund or credit through the marketplace.
//!
//! An AWS dimension with `allocation_tags` splits each record's quantity into `UsageAllocations`
//! by the values of those event attributes, in proportion to each tag set's usage behind the
//! record, by largest remainder (see [`allocate`]): the allocations always add up to the
//! record's quantity, as `BatchMeterUsage` requires.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::catalog::{Catalog, ContractIdx, MarketplaceKind, SkuIdx};
use crate::money::Quantity;
use crate::time::EventTime;

const MS_PER_HOUR: i64 = 3_600_000;

/// The most records one request carries: `BatchMeterUsage` and Azure's `batchUsageEvent` take
/// 25; GCP's `services.report` is sent in requests of 100 operations.
pub fn batch_size(kind: MarketplaceKind) -> usize {
    match kind {
        MarketplaceKind::Aws | MarketplaceKind::Azure => 25,
        MarketplaceKind::Gcp => 100,
    }
}

/// The member of a request that lists its records.
pub fn records_member(kind: MarketplaceKind) -> &'static str {
    match kind {
        MarketplaceKind::Aws => "UsageRecords",
        MarketplaceKind::Azure => "request",
        MarketplaceKind::Gcp => "operations",
    }
}

/// Whether the marketplace takes whole quantities only.
pub fn whole_units(kind: MarketplaceKind) -> bool {
    kind != MarketplaceKind::Azure
}

/// A contract's net usage of a SKU in one hour (count meters: events), corrections included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HourUsage {
    pub contract: ContractIdx,
    pub sku: SkuIdx,
    /// The start of the hour.
    pub hour: EventTime,
    pub quantity: Quantity,
    /// The allocation tags of this part of the hour's usage (see [`tags_of`]); empty when the
    /// dimension has none, or the events carried none of them.
    pub tags: Tags,
}

/// Allocation tags: (attribute key, value) in the order the dimension names the keys.
pub type Tags = Vec<(String, String)>;

/// Whether `s` is 1 to `max` characters of AWS's tag pattern `^[a-zA-Z0-9+ -=._:\/@]+$` (the
/// class ` -=` is every character from space to `=`).
pub fn aws_tag_text(s: &str, max: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max && s.chars().all(aws_tag_char)
}

fn aws_tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || (' '..='=').contains(&c) || "._:/@+".contains(c)
}

/// The allocation tags of an event from its canonical `metadata.attributes` JSON: each of `keys`
/// it carries (not null), its value as text (a string as is, anything else as JSON), with
/// characters AWS refuses in a tag value replaced by `_` and cut to 256 characters.
pub fn tags_of(attributes: &str, keys: &[String]) -> Tags {
    if keys.is_empty() || attributes.is_empty() {
        return Tags::new();
    }
    let Ok(map) = serde_json::from_str::<serde_json::Map<String, Value>>(attributes) else {
        return Tags::new();
    };
    keys.iter()
        .filter_map(|k| {
            let text = match map.get(k)? {
                Value::Null => return None,
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let value: String = text
                .chars()
                .map(|c| if aws_tag_char(c) { c } else { '_' })
                .take(256)
                .collect();
            (!value.is_empty()).then(|| (k.clone(), value))
        })
        .collect()
}

/// The allocation tag keys of `sku` for `contract` on its `kind` listing (none if not sold there).
pub fn allocation_tags(
    catalog: &Catalog,
    kind: MarketplaceKind,
    contract: ContractIdx,
    sku: SkuIdx,
) -> &[String] {
    catalog.contracts[contract.ix()]
        .marketplace
        .as_ref()
        .map(|a| &catalog.marketplaces[a.listing])
        .filter(|l| l.kind == kind)
        .and_then(|l| l.dimension(sku))
        .map_or(&[], |d| d.allocation_tags.as_slice())
}

/// Splits `quantity` whole units over tag sets in proportion to their `shares` of the usage
/// behind it, by largest remainder (ties: tag order); tag sets whose net usage is not positive
/// get nothing. Without a positive share, all of it is one untagged allocation. The parts add
/// up to `quantity` exactly and none is negative.
pub fn allocate(quantity: Quantity, shares: &BTreeMap<Tags, Quantity>) -> Vec<(Tags, Quantity)> {
    let units = quantity.0.div_euclid(Quantity::SCALE_ONE);
    let positive: Vec<(&Tags, i128)> = shares
        .iter()
        .filter(|(_, q)| q.0 > 0)
        .map(|(t, q)| (t, q.0))
        .collect();
    let total: i128 = positive.iter().map(|(_, q)| q).sum();
    if units <= 0 || total == 0 {
        return vec![(Tags::new(), Quantity(units.max(0) * Quantity::SCALE_ONE))];
    }
    let mut parts: Vec<(&Tags, i128, i128)> = positive
        .iter()
        .map(|&(t, q)| (t, units * q / total, units * q % total))
        .collect();
    let mut left = units - parts.iter().map(|p| p.1).sum::<i128>();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| parts[b].2.cmp(&parts[a].2).then(a.cmp(&b)));
    for i in order {
        if left == 0 {
            break;
        }
        parts[i].1 += 1;
        left -= 1;
    }
    parts
        .into_iter()
        .filter(|p| p.1 > 0)
        .map(|(t, n, _)| (t.clone(), Quantity(n * Quantity::SCALE_ONE)))
        .collect()
}

/// What was exported before for one contract, dimension and usage hour (compensations are
/// counted against the hours they settle as a whole, see [`plan`]).
pub type Sent = BTreeMap<(String, String, EventTime), Quantity>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordKind {
    /// An hour's usage, sent for the first time.
    Usage,
    /// More usage for hours already sent, dated at the export's hour.
    Compensation,
    /// Less usage than was sent: no marketplace takes it back through metering.
    NotSendable,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Usage => "usage",
            Self::Compensation => "compensation",
            Self::NotSendable => "not_sendable",
        }
    }
}

/// One metering record of a contract's dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub contract: ContractIdx,
    pub sku: SkuIdx,
    /// Index into the catalog's marketplaces.
    pub listing: usize,
    /// The usage hour it accounts for (a compensation: the first hour it settles).
    pub usage_hour: EventTime,
    /// The hour the record is dated (the usage hour, or the export's hour).
    pub timestamp: EventTime,
    /// Marketplace units (negative only for `NotSendable`).
    pub quantity: Quantity,
    /// AWS `UsageAllocations` (whole units adding up to `quantity`); empty when the dimension
    /// has no allocation tags.
    pub allocations: Vec<(Tags, Quantity)>,
    /// Stable across runs: the same record is sent with the same key, so a marketplace (and
    /// meterflow's `exports` table) recognises a resend.
    pub key: String,
}

/// The whole or exact marketplace units in `total` SKU units.
fn units(total: Quantity, unit_size: Quantity, whole: bool) -> Quantity {
    if whole {
        Quantity(total.0.div_euclid(unit_size.0) * Quantity::SCALE_ONE)
    } else {
        Quantity((total.0 * Quantity::SCALE_ONE).div_euclid(unit_size.0))
    }
}

/// A stable key of a record: 128 bits of its identity, as a UUID (GCP's `operationId` must be one).
pub fn record_key(
    listing: &str,
    customer: &str,
    dimension: &str,
    t: EventTime,
    kind: RecordKind,
) -> String {
    let text = format!(
        "{listing}\u{1f}{customer}\u{1f}{dimension}\u{1f}{}\u{1f}{}",
        t.0,
        kind.as_str()
    );
    let h = xxhash_rust::xxh3::xxh3_128(text.as_bytes());
    // Version 8 (vendor-specific) and the RFC 4122 variant.
    let h = (h & !(0xf << 76) | (0x8 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let x = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// The marketplace customer of a contract, as the records name it.
pub fn customer_of(catalog: &Catalog, contract: ContractIdx) -> String {
    catalog.contracts[contract.ix()]
        .marketplace
        .as_ref()
        .map(|m| {
            m.aws_account_id
                .clone()
                .unwrap_or_else(|| m.customer.clone())
        })
        .unwrap_or_default()
}

/// Why nothing can be exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmapped {
    pub contract: String,
    pub sku: String,
    pub listing: String,
}

/// Plans the records of marketplace `kind` for usage hours in `[from, to)`. `usage`: every hour
/// of every contract up to `to` (earlier hours carry their remainders); `sent`: what earlier
/// exports sent per (contract, dimension, usage hour); `at`: the export's time (compensations
/// are dated at its hour); `oldest`: for a live send, the oldest hour the marketplace takes a
/// record dated at (earlier hours are settled together at the export's hour, as a
/// compensation). Contracts not sold through a `kind` listing are left out; usage of a SKU their
/// listing has no dimension for is an error (nothing would be half-exported).
pub fn plan(
    catalog: &Catalog,
    kind: MarketplaceKind,
    usage: &[HourUsage],
    sent: &Sent,
    (from, to): (EventTime, EventTime),
    (at, oldest): (EventTime, Option<EventTime>),
) -> Result<Vec<Record>, Vec<Unmapped>> {
    // Per hour: the net usage, and its parts per allocation tag set.
    type Hours = BTreeMap<EventTime, (Quantity, BTreeMap<Tags, Quantity>)>;
    let mut by_line: BTreeMap<(ContractIdx, SkuIdx), Hours> = BTreeMap::new();
    let mut unmapped = Vec::new();
    for u in usage.iter().filter(|u| u.hour < to) {
        let contract = &catalog.contracts[u.contract.ix()];
        let Some(account) = &contract.marketplace else {
            continue;
        };
        let listing = &catalog.marketplaces[account.listing];
        if listing.kind != kind {
            continue;
        }
        if listing.dimension(u.sku).is_none() {
            if u.hour >= from && u.quantity != Quantity::ZERO {
                let e = Unmapped {
                    contract: contract.id.clone(),
                    sku: catalog.skus[u.sku.ix()].id.clone(),
                    listing: listing.id.clone(),
                };
                if !unmapped.contains(&e) {
                    unmapped.push(e);
                }
            }
            continue;
        }
        let hour = by_line
            .entry((u.contract, u.sku))
            .or_default()
            .entry(u.hour)
            .or_default();
        hour.0 += u.quantity;
        *hour.1.entry(u.tags.clone()).or_default() += u.quantity;
    }
    if !unmapped.is_empty() {
        return Err(unmapped);
    }
    let at_hour = EventTime(at.0.div_euclid(MS_PER_HOUR) * MS_PER_HOUR);
    let mut out = Vec::new();
    for ((contract, sku), hours) in by_line {
        let account = catalog.contracts[contract.ix()]
            .marketplace
            .as_ref()
            .expect("mapped");
        let listing = &catalog.marketplaces[account.listing];
        let dimension = listing.dimension(sku).expect("mapped");
        let customer = customer_of(catalog, contract);
        let contract_id = &catalog.contracts[contract.ix()].id;
        let whole = whole_units(kind);
        // What changes in hours up to the last one sent is settled at the export's hour (a
        // marketplace bills an hour once); hours after it are new usage, dated at their hour.
        let last_sent = sent
            .range(
                (contract_id.clone(), dimension.name.clone(), from)
                    ..(contract_id.clone(), dimension.name.clone(), to),
            )
            .next_back()
            .map(|((_, _, hour), _)| *hour);
        let (mut total, mut before) = (Quantity::ZERO, Quantity::ZERO);
        let (mut owed, mut settles) = (Quantity::ZERO, None);
        let tagged = !dimension.allocation_tags.is_empty();
        let allocations = |q: Quantity, shares: &BTreeMap<Tags, Quantity>| {
            if tagged {
                allocate(q, shares)
            } else {
                Vec::new()
            }
        };
        // A compensation's allocations follow the usage of the hours it settles.
        let mut settled: BTreeMap<Tags, Quantity> = BTreeMap::new();
        for (hour, (q, shares)) in hours {
            total += q;
            let now = units(total, dimension.unit_size, whole);
            let due = now - before;
            before = now;
            if hour < from {
                continue;
            }
            match sent.get(&(contract_id.clone(), dimension.name.clone(), hour)) {
                None if due == Quantity::ZERO => {}
                None if due > Quantity::ZERO
                    && hour != at_hour
                    && last_sent.is_none_or(|last| hour > last)
                    && oldest.is_none_or(|o| hour >= o) =>
                {
                    out.push(Record {
                        kind: RecordKind::Usage,
                        contract,
                        sku,
                        listing: account.listing,
                        usage_hour: hour,
                        timestamp: hour,
                        quantity: due,
                        allocations: allocations(due, &shares),
                        key: record_key(
                            &listing.id,
                            &customer,
                            &dimension.name,
                            hour,
                            RecordKind::Usage,
                        ),
                    })
                }
                // A negative hour (a void after its usage, sent nothing yet), an hour as late
                // as the export itself or older than a live send may date, and new usage of an
                // hour before the last one sent settle with the rest.
                None => {
                    owed += due;
                    settles.get_or_insert(hour);
                    add_shares(&mut settled, &shares);
                }
                Some(was) => {
                    if due != *was {
                        owed += due - *was;
                        settles.get_or_insert(hour);
                        add_shares(&mut settled, &shares);
                    }
                }
            }
        }
        if let Some(first) = settles.filter(|_| owed != Quantity::ZERO) {
            let kind = if owed > Quantity::ZERO {
                RecordKind::Compensation
            } else {
                RecordKind::NotSendable
            };
            out.push(Record {
                kind,
                contract,
                sku,
                listing: account.listing,
                usage_hour: first,
                timestamp: at_hour,
                quantity: owed,
                allocations: if kind == RecordKind::Compensation {
                    allocations(owed, &settled)
                } else {
                    Vec::new()
                },
                key: record_key(&listing.id, &customer, &dimension.name, at_hour, kind),
            });
        }
    }
    Ok(out)
}

fn add_shares(into: &mut BTreeMap<Tags, Quantity>, shares: &BTreeMap<Tags, Quantity>) {
    for (t, q) in shares {
        *into.entry(t.clone()).or_default() += *q;
    }
}

/// A row of the `exports` table: a record as it was written or sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exported {
    pub exported_at: EventTime,
    pub export_id: String,
    pub marketplace: String,
    pub listing: String,
    pub product: String,
    pub contract_id: String,
    pub customer_id: String,
    pub marketplace_customer: String,
    pub sku: String,
    pub dimension: String,
    pub usage_hour: EventTime,
    pub record_time: EventTime,
    pub record_kind: String,
    pub quantity: Quantity,
    pub record_key: String,
    /// `written` (to a request file), `sent`, `duplicate` (the marketplace had it), `failed`,
    /// or `not_sendable`.
    pub status: String,
    /// The request file it is in.
    pub request: String,
    /// The marketplace's id of the record when it was sent (AWS `MeteringRecordId`, Azure
    /// `usageEventId`, GCP `operationId`).
    pub response_id: String,
    /// Why a record was not sent (the marketplace's answer or the request's error).
    pub detail: String,
    /// AWS `UsageAllocations` as JSON (see [`allocations_json`]); empty when the record has
    /// none.
    pub allocations: String,
}

impl Exported {
    pub fn of(catalog: &Catalog, r: &Record) -> Exported {
        let contract = &catalog.contracts[r.contract.ix()];
        let listing = &catalog.marketplaces[r.listing];
        Exported {
            marketplace: listing.kind.as_str().into(),
            listing: listing.id.clone(),
            product: listing.product.clone(),
            contract_id: contract.id.clone(),
            customer_id: catalog.customers[contract.customer.ix()].id.clone(),
            marketplace_customer: customer_of(catalog, r.contract),
            sku: catalog.skus[r.sku.ix()].id.clone(),
            dimension: listing
                .dimension(r.sku)
                .map(|d| d.name.clone())
                .unwrap_or_default(),
            usage_hour: r.usage_hour,
            record_time: r.timestamp,
            record_kind: r.kind.as_str().into(),
            quantity: r.quantity,
            record_key: r.key.clone(),
            allocations: allocations_json(&r.allocations),
            status: if r.kind == RecordKind::NotSendable {
                "not_sendable"
            } else {
                "written"
            }
            .into(),
            ..Default::default()
        }
    }
}

/// A record's allocations as the `exports` table keeps them: a JSON array of
/// `{"quantity": <whole units>, "tags": {"<key>": "<value>", ...}}` in the order they are sent
/// (untagged usage has `"tags": {}`), or `""` when there are none.
pub fn allocations_json(allocations: &[(Tags, Quantity)]) -> String {
    if allocations.is_empty() {
        return String::new();
    }
    let parts: Vec<Value> = allocations
        .iter()
        .map(|(tags, q)| {
            let tags: serde_json::Map<String, Value> = tags
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({ "quantity": q.0 / Quantity::SCALE_ONE, "tags": tags })
        })
        .collect();
    Value::Array(parts).to_string()
}

/// The status of a record's row written just before its request is sent: until the answer's
/// row follows, whether the marketplace took it is unknown (the export may have died meanwhile).
pub const SENDING: &str = "sending";

/// The rows that stand: every row but the [`SENDING`] rows their answer followed (a row of the
/// same record key, not itself `sending`, written at the same export time or later).
pub fn settled(rows: &[Exported]) -> impl Iterator<Item = &Exported> {
    let mut answered: std::collections::HashMap<&str, EventTime> = Default::default();
    for e in rows.iter().filter(|e| e.status != SENDING) {
        let t = answered
            .entry(e.record_key.as_str())
            .or_insert(e.exported_at);
        *t = (*t).max(e.exported_at);
    }
    rows.iter().filter(move |e| {
        e.status != SENDING
            || answered
                .get(e.record_key.as_str())
                .is_none_or(|t| *t < e.exported_at)
    })
}

/// Records sent by an export that died before their answer was recorded: the marketplace may
/// or may not bill them. They count as sent (never planned again as new records, which could
/// bill twice) until the next export with `--send` resends them exactly as they were sent.
pub fn in_doubt(rows: &[Exported]) -> Vec<&Exported> {
    settled(rows).filter(|e| e.status == SENDING).collect()
}

/// The status of a record in doubt whose resend was not taken either: a person checks whether
/// the marketplace billed it (docs/marketplaces.md). It counts as sent.
pub const IN_DOUBT: &str = "in_doubt";

/// `row`'s record as a request of its own, taken from the request `body` it was sent in: the
/// same entry, so the marketplace recognises a resend (AWS and Azure by customer, dimension and
/// hour; GCP by operation id). `None` if the body does not hold it.
pub fn resend_request(kind: MarketplaceKind, row: &Exported, body: &Value) -> Option<Value> {
    let member = records_member(kind);
    let when = utc(row.record_time);
    let entry = body[member].as_array()?.iter().find(|e| match kind {
        MarketplaceKind::Aws => {
            let who = e
                .get("CustomerIdentifier")
                .or_else(|| e.get("CustomerAWSAccountId"));
            who.and_then(Value::as_str) == Some(&row.marketplace_customer)
                && e["Dimension"] == row.dimension.as_str()
                && e["Timestamp"] == when.as_str()
        }
        MarketplaceKind::Azure => {
            e["resourceId"] == row.marketplace_customer.as_str()
                && e["dimension"] == row.dimension.as_str()
                && e["effectiveStartTime"] == when.as_str()
        }
        MarketplaceKind::Gcp => e["operationId"] == row.record_key.as_str(),
    })?;
    let mut one = json!({ member: [entry] });
    if kind == MarketplaceKind::Aws {
        one["ProductCode"] = body["ProductCode"].clone();
    }
    Some(one)
}

/// What `exports` rows of `kind` account for: every record but failed sends, per contract,
/// dimension and usage hour (a record in doubt counts as sent).
pub fn sent_of(kind: MarketplaceKind, rows: &[Exported]) -> Sent {
    let mut sent = Sent::new();
    for e in settled(rows).filter(|e| e.marketplace == kind.as_str() && e.status != "failed") {
        *sent
            .entry((e.contract_id.clone(), e.dimension.clone(), e.usage_hour))
            .or_default() += e.quantity;
    }
    sent
}

fn utc(t: EventTime) -> String {
    // Whole seconds: what every marketplace's timestamp fields take.
    let s = t.to_string();
    format!("{}Z", &s[..19])
}

/// The requests for `records` (sendable ones), [`batch_size`] records each, in the
/// marketplace's own format: `BatchMeterUsage` input, Azure's `batchUsageEvent` body, or GCP's
/// `services.report` body.
pub fn requests(catalog: &Catalog, kind: MarketplaceKind, records: &[Record]) -> Vec<Value> {
    let mut by_product: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.kind != RecordKind::NotSendable) {
        by_product
            .entry(&catalog.marketplaces[r.listing].product)
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for (product, records) in by_product {
        for chunk in records.chunks(batch_size(kind)) {
            let entries: Vec<Value> = chunk.iter().map(|r| entry(catalog, kind, r)).collect();
            let mut body = json!({ records_member(kind): entries });
            if kind == MarketplaceKind::Aws {
                body["ProductCode"] = json!(product);
            }
            out.push(body);
        }
    }
    out
}

fn entry(catalog: &Catalog, kind: MarketplaceKind, r: &Record) -> Value {
    let account = catalog.contracts[r.contract.ix()]
        .marketplace
        .as_ref()
        .expect("mapped");
    let listing = &catalog.marketplaces[r.listing];
    let dimension = listing.dimension(r.sku).expect("mapped");
    let whole = r.quantity.0 / Quantity::SCALE_ONE;
    match kind {
        MarketplaceKind::Aws => {
            let mut e = json!({
                "Timestamp": utc(r.timestamp),
                "Dimension": dimension.name,
                "Quantity": i64::try_from(whole).unwrap_or(i64::MAX),
            });
            match &account.aws_account_id {
                Some(a) => e["CustomerAWSAccountId"] = json!(a),
                None => e["CustomerIdentifier"] = json!(account.customer),
            }
            if !r.allocations.is_empty() {
                e["UsageAllocations"] = r
                    .allocations
                    .iter()
                    .map(|(tags, q)| {
                        let mut a = json!({ "AllocatedUsageQuantity": q.0 / Quantity::SCALE_ONE });
                        if !tags.is_empty() {
                            a["Tags"] = tags
                                .iter()
                                .map(|(k, v)| json!({ "Key": k, "Value": v }))
                                .collect();
                        }
                        a
                    })
                    .collect();
            }
            e
        }
        MarketplaceKind::Azure => json!({
            "resourceId": account.customer,
            "quantity": r.quantity.to_string().parse::<f64>().unwrap_or(0.0),
            "dimension": dimension.name,
            "effectiveStartTime": utc(r.timestamp),
            "planId": account.plan.clone().unwrap_or_default(),
        }),
        MarketplaceKind::Gcp => json!({
            "operationId": r.key,
            "operationName": "meterflow-usage-report",
            "consumerId": account.customer,
            "startTime": utc(r.timestamp),
            "endTime": utc(EventTime(r.timestamp.0 + MS_PER_HOUR)),
            "metricValueSets": [{
                "metricName": format!("{}/{}", listing.product, dimension.name),
                "metricValues": [{ "int64Value": whole.to_string() }],
            }],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::from_toml_str;

    fn catalog() -> String {
        crate::fixtures::ONE_CONTRACT.to_string() + MAPPED
    }

    const MAPPED: &str = r#"
[contract.marketplace]
listing = "aws-main"
customer = "cust-1"

[[sku]]
id = "seats"
unit = "seats"

[[marketplace]]
id = "aws-main"
kind = "aws"
product_code = "prod-abc123"

[[marketplace.dimension]]
sku = "tokens"
dimension = "tokens_1k"
unit_size = "1000"
"#;

    fn h(hour: i64) -> EventTime {
        EventTime(EventTime::parse_rfc3339("2026-11-01T00:00:00Z").unwrap().0 + hour * MS_PER_HOUR)
    }

    fn usage(hours: &[(i64, &str)]) -> Vec<HourUsage> {
        hours
            .iter()
            .map(|(hour, q)| HourUsage {
                contract: ContractIdx(0),
                sku: SkuIdx(0),
                hour: h(*hour),
                quantity: Quantity::parse(q).unwrap(),
                tags: Tags::new(),
            })
            .collect()
    }

    /// The AWS records of usage hours `[from, to)` for an export at hour `at` (not a live send).
    fn aws_plan(
        c: &Catalog,
        u: &[HourUsage],
        sent: &Sent,
        (from, to): (i64, i64),
        at: i64,
    ) -> Vec<Record> {
        plan(
            c,
            MarketplaceKind::Aws,
            u,
            sent,
            (h(from), h(to)),
            (h(at), None),
        )
        .unwrap()
    }

    /// What an export of `records` (of the test contract's tokens) recorded as sent.
    fn sent_by(records: &[Record]) -> Sent {
        records
            .iter()
            .map(|r| {
                (
                    ("acme-1".to_string(), "tokens_1k".to_string(), r.usage_hour),
                    r.quantity,
                )
            })
            .collect()
    }

    fn quantities(records: &[Record]) -> Vec<(RecordKind, i64, String)> {
        records
            .iter()
            .map(|r| {
                (
                    r.kind,
                    (r.timestamp.0 - h(0).0) / MS_PER_HOUR,
                    r.quantity.to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn whole_units_carry_their_remainder_into_the_next_hour() {
        let c = from_toml_str(&catalog()).unwrap();
        let u = usage(&[(0, "1500"), (1, "700"), (2, "800"), (3, "0")]);
        let r = aws_plan(&c, &u, &Sent::new(), (0, 24), 100);
        // 1.5k → 1 (0.5 carried), 2.2k → 2 (1 more), 3.0k → 3 (1 more).
        assert_eq!(
            quantities(&r),
            vec![
                (RecordKind::Usage, 0, "1".into()),
                (RecordKind::Usage, 1, "1".into()),
                (RecordKind::Usage, 2, "1".into()),
            ]
        );
        // Exporting only the second half of the day still counts the carry from before it.
        let later = aws_plan(&c, &u, &Sent::new(), (1, 24), 100);
        assert_eq!(quantities(&later), quantities(&r)[1..].to_vec());
        // Other marketplaces' exports leave the AWS contract out.
        assert!(plan(
            &c,
            MarketplaceKind::Azure,
            &u,
            &Sent::new(),
            (h(0), h(24)),
            (h(100), None)
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn what_was_sent_is_not_sent_again_and_changes_settle_once() {
        let c = from_toml_str(&catalog()).unwrap();
        let u = usage(&[(0, "2000"), (1, "3000")]);
        let first = aws_plan(&c, &u, &Sent::new(), (0, 24), 30);
        let sent = sent_by(&first);
        assert!(aws_plan(&c, &u, &sent, (0, 24), 40).is_empty());
        // Late usage in hour 0 settles in one compensation at the export's hour, accounted for
        // from hour 0; hour 2, after the last hour sent, is new usage dated at its hour.
        let more = usage(&[(0, "4000"), (1, "3000"), (2, "1000")]);
        let r = aws_plan(&c, &more, &sent, (0, 24), 40);
        assert_eq!(
            quantities(&r),
            vec![
                (RecordKind::Usage, 2, "1".into()),
                (RecordKind::Compensation, 40, "2".into())
            ]
        );
        assert_eq!(r[1].usage_hour, h(0));
        // The next day is another period, exported for the first time: its hours as they are.
        let next = aws_plan(&c, &more, &sent, (2, 48), 40);
        assert_eq!(quantities(&next), vec![(RecordKind::Usage, 2, "1".into())]);
        // A void that takes usage back cannot be sent: it is reported.
        let less = usage(&[(0, "1000"), (1, "3000")]);
        let r = aws_plan(&c, &less, &sent, (0, 24), 40);
        assert_eq!(
            quantities(&r),
            vec![(RecordKind::NotSendable, 40, "-1".into())]
        );
        assert!(requests(&c, MarketplaceKind::Aws, &r).is_empty());
    }

    #[test]
    fn usage_of_a_sku_without_a_dimension_stops_the_export() {
        let c = from_toml_str(&catalog()).unwrap();
        let mut u = usage(&[(0, "2000")]);
        u.push(HourUsage {
            sku: SkuIdx(1),
            ..u[0].clone()
        });
        let err = plan(
            &c,
            MarketplaceKind::Aws,
            &u,
            &Sent::new(),
            (h(0), h(24)),
            (h(30), None),
        )
        .unwrap_err();
        assert_eq!(
            err,
            vec![Unmapped {
                contract: "acme-1".into(),
                sku: "seats".into(),
                listing: "aws-main".into()
            }]
        );
    }

    #[test]
    fn a_live_send_settles_hours_older_than_the_marketplace_takes_at_the_export_hour() {
        let c = from_toml_str(&catalog()).unwrap();
        let u = usage(&(0..10).map(|i| (i, "1000")).collect::<Vec<_>>());
        let r = plan(
            &c,
            MarketplaceKind::Aws,
            &u,
            &Sent::new(),
            (h(0), h(24)),
            (EventTime(h(30).0 + 60_000), Some(h(6))),
        )
        .unwrap();
        let mut expected: Vec<(RecordKind, i64, String)> = (6..10)
            .map(|i| (RecordKind::Usage, i, "1".into()))
            .collect();
        // Hours 0-5: six units in one record at the export's hour, settling from hour 0.
        expected.push((RecordKind::Compensation, 30, "6".into()));
        assert_eq!(quantities(&r), expected);
        assert_eq!(r.last().unwrap().usage_hour, h(0));
        // What a live send sent counts as sent: nothing is planned twice.
        let mut sent = Sent::new();
        for x in &r {
            *sent
                .entry(("acme-1".into(), "tokens_1k".into(), x.usage_hour))
                .or_default() += x.quantity;
        }
        let again = plan(
            &c,
            MarketplaceKind::Aws,
            &u,
            &sent,
            (h(0), h(24)),
            (h(31), Some(h(26))),
        )
        .unwrap();
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn requests_carry_at_most_25_records_in_the_marketplace_format() {
        let c = from_toml_str(&catalog()).unwrap();
        let u = usage(&(0..30).map(|i| (i, "1000")).collect::<Vec<_>>());
        let r = aws_plan(&c, &u, &Sent::new(), (0, 48), 100);
        let req = requests(&c, MarketplaceKind::Aws, &r);
        assert_eq!(req.len(), 2);
        assert_eq!(req[0]["UsageRecords"].as_array().unwrap().len(), 25);
        assert_eq!(
            req[0]["UsageRecords"][0],
            json!({"Timestamp": "2026-11-01T00:00:00Z", "CustomerIdentifier": "cust-1", "Dimension": "tokens_1k", "Quantity": 1})
        );
        assert_eq!(req[1]["ProductCode"], "prod-abc123");
        // Keys are stable UUIDs, different per hour.
        assert_eq!(
            r[0].key,
            aws_plan(&c, &u, &Sent::new(), (0, 48), 100)[0].key
        );
        assert_ne!(r[0].key, r[1].key);
        assert_eq!(r[0].key.len(), 36);
        assert_eq!(&r[0].key[14..15], "8");
    }

    #[test]
    fn the_catalog_names_what_a_marketplace_mapping_lacks() {
        let bad = catalog()
            .replace(
                "product_code = \"prod-abc123\"",
                "product_code = \"prod abc\"",
            )
            .replace(
                "customer = \"cust-1\"",
                "customer = \"cust-1\"\naws_account_id = \"12345\"",
            )
            .replace("unit_size = \"1000\"", "unit_size = \"0\"");
        let errors = from_toml_str(&bad).unwrap_err().to_string();
        assert!(
            errors.contains("not an AWS Marketplace product code"),
            "{errors}"
        );
        let bad = catalog().replace("unit_size = \"1000\"", "unit_size = \"0\"");
        assert!(from_toml_str(&bad)
            .unwrap_err()
            .to_string()
            .contains("unit_size 0 is not positive"));
        let bad = catalog().replace(
            "customer = \"cust-1\"",
            "customer = \"cust-1\"\naws_account_id = \"123456789012\"",
        );
        assert!(from_toml_str(&bad)
            .unwrap_err()
            .to_string()
            .contains("exactly one of customer"));
        let bad = catalog().replace("listing = \"aws-main\"", "listing = \"nope\"");
        assert!(from_toml_str(&bad)
            .unwrap_err()
            .to_string()
            .contains("listing `nope` is not in the catalog"));
        let azure = catalog().replace(
            "kind = \"aws\"\nproduct_code = \"prod-abc123\"",
            "kind = \"azure\"",
        );
        assert!(from_toml_str(&azure)
            .unwrap_err()
            .to_string()
            .contains("resourceId"));
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn allocations_add_up_to_the_quantity_by_largest_remainder() {
        let q = |s: &str| Quantity::parse(s).unwrap();
        let shares: BTreeMap<Tags, Quantity> = [
            (tags(&[("project", "a")]), q("1")),
            (tags(&[("project", "b")]), q("1")),
            (tags(&[("project", "c")]), q("1")),
            (tags(&[("project", "d")]), q("-2")),
        ]
        .into_iter()
        .collect();
        // 10 over three equal shares: 3, 3, 3 and the remainder to the first in tag order.
        let a = allocate(q("10"), &shares);
        let parts: Vec<(String, String)> = a
            .iter()
            .map(|(t, n)| (t[0].1.clone(), n.to_string()))
            .collect();
        assert_eq!(
            parts,
            vec![
                ("a".into(), "4".into()),
                ("b".into(), "3".into()),
                ("c".into(), "3".into())
            ]
        );
        // Proportional: 7 units over 2 000 and 500 → 5.6 and 1.4 → 6 and 1.
        let shares: BTreeMap<Tags, Quantity> = [
            (tags(&[("project", "x")]), q("2000")),
            (Tags::new(), q("500")),
        ]
        .into_iter()
        .collect();
        let a = allocate(q("7"), &shares);
        assert_eq!(
            a,
            vec![(Tags::new(), q("1")), (tags(&[("project", "x")]), q("6"))]
        );
        // Nothing positive to go by: one untagged allocation of everything.
        assert_eq!(
            allocate(q("3"), &BTreeMap::new()),
            vec![(Tags::new(), q("3"))]
        );
        for total in 0..40 {
            let a = allocate(Quantity::from_units(total), &shares);
            let sum: i128 = a.iter().map(|(_, n)| n.0).sum();
            assert_eq!(sum, Quantity::from_units(total).0, "{total}");
            assert!(a.iter().all(|(_, n)| n.0 >= 0));
        }
    }

    #[test]
    fn tags_come_from_the_attributes_in_the_dimension_order_and_are_made_sendable() {
        let keys = ["project".to_string(), "team".to_string()];
        assert_eq!(
            tags_of(r#"{"team":"ml","project":"alpha"}"#, &keys),
            tags(&[("project", "alpha"), ("team", "ml")])
        );
        assert_eq!(
            tags_of(r#"{"project":42,"team":null}"#, &keys),
            tags(&[("project", "42")])
        );
        assert_eq!(
            tags_of(r#"{"project":"a?b{c}é"}"#, &keys),
            tags(&[("project", "a_b_c__")])
        );
        assert!(aws_tag_text("a_b_c__", 256));
        assert_eq!(tags_of("", &keys), Tags::new());
        assert_eq!(tags_of("not json", &keys), Tags::new());
        assert!(aws_tag_text("cost-center:eu/1@x", 100));
        assert!(!aws_tag_text("a?b", 100) && !aws_tag_text("", 100));
    }

    #[test]
    fn records_of_a_tagged_dimension_carry_usage_allocations() {
        let c = from_toml_str(&catalog().replace(
            "unit_size = \"1000\"",
            "unit_size = \"1000\"\nallocation_tags = [\"project\"]",
        ))
        .unwrap();
        let at = |hour: i64, q: &str, project: Option<&str>| HourUsage {
            contract: ContractIdx(0),
            sku: SkuIdx(0),
            hour: h(hour),
            quantity: Quantity::parse(q).unwrap(),
            tags: project.map_or_else(Tags::new, |p| tags(&[("project", p)])),
        };
        let u = vec![
            at(0, "1500", Some("alpha")),
            at(0, "1500", Some("beta")),
            at(0, "1000", None),
            at(1, "2000", Some("beta")),
        ];
        let r = aws_plan(&c, &u, &Sent::new(), (0, 24), 30);
        assert_eq!(
            quantities(&r),
            vec![
                (RecordKind::Usage, 0, "4".into()),
                (RecordKind::Usage, 1, "2".into())
            ]
        );
        let body = &requests(&c, MarketplaceKind::Aws, &r)[0];
        assert_eq!(
            body["UsageRecords"][0]["UsageAllocations"],
            json!([
                { "AllocatedUsageQuantity": 1 },
                { "AllocatedUsageQuantity": 2, "Tags": [{ "Key": "project", "Value": "alpha" }] },
                { "AllocatedUsageQuantity": 1, "Tags": [{ "Key": "project", "Value": "beta" }] },
            ])
        );
        // Late usage of hour 0 settles as a compensation, allocated by the hours it settles.
        let sent = sent_by(&r);
        let mut more = u.clone();
        more.push(at(0, "3000", Some("gamma")));
        let r = aws_plan(&c, &more, &sent, (0, 24), 40);
        assert_eq!(
            quantities(&r),
            vec![(RecordKind::Compensation, 40, "3".into())]
        );
        let sum: i128 = r[0].allocations.iter().map(|(_, q)| q.0).sum();
        assert_eq!(sum, r[0].quantity.0);
        let untagged = from_toml_str(&catalog()).unwrap();
        let plain = aws_plan(&untagged, &u, &Sent::new(), (0, 24), 30);
        assert!(plain.iter().all(|r| r.allocations.is_empty()));
        assert!(
            requests(&untagged, MarketplaceKind::Aws, &plain)[0]["UsageRecords"][0]
                .get("UsageAllocations")
                .is_none()
        );
    }

    #[test]
    fn the_catalog_refuses_allocation_tags_aws_would_refuse() {
        let with = |tags: &str| {
            from_toml_str(&catalog().replace(
                "unit_size = \"1000\"",
                &format!("unit_size = \"1000\"\nallocation_tags = {tags}"),
            ))
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        assert!(with(r#"["project", "team"]"#).is_ok());
        assert!(with(r#"["a", "b", "c", "d", "e", "f"]"#)
            .unwrap_err()
            .contains("at most 5"));
        assert!(with(r#"["pro{ject}"]"#)
            .unwrap_err()
            .contains("not an AWS tag key"));
        assert!(with(r#"["team", "team"]"#)
            .unwrap_err()
            .contains("named twice"));
        let azure = catalog()
            .replace(
                "kind = \"aws\"\nproduct_code = \"prod-abc123\"",
                "kind = \"azure\"",
            )
            .replace(
                "unit_size = \"1000\"",
                "unit_size = \"1000\"\nallocation_tags = [\"project\"]",
            );
        assert!(from_toml_str(&azure)
            .unwrap_err()
            .to_string()
            .contains("allocation_tags are for AWS listings"));
    }

    #[test]
    fn a_record_being_sent_counts_as_sent_until_its_answer_settles_it() {
        let c = from_toml_str(&catalog()).unwrap();
        let r = aws_plan(&c, &usage(&[(0, "2000")]), &Sent::new(), (0, 24), 30);
        let row = |status: &str, at: i64| Exported {
            exported_at: h(at),
            status: status.into(),
            ..Exported::of(&c, &r[0])
        };
        let hour0 = ("acme-1".to_string(), "tokens_1k".to_string(), h(0));
        // Died while sending: in doubt, and counted as sent (never planned anew).
        let died = vec![row(SENDING, 30)];
        assert_eq!(in_doubt(&died).len(), 1);
        assert_eq!(
            sent_of(MarketplaceKind::Aws, &died)[&hour0].to_string(),
            "2"
        );
        // Its answer (now, or from a later export's resend) settles it, counted once.
        for answered in [
            vec![row(SENDING, 30), row("sent", 30)],
            vec![row(SENDING, 30), row("duplicate", 32)],
        ] {
            assert!(in_doubt(&answered).is_empty());
            assert_eq!(settled(&answered).count(), 1);
            assert_eq!(
                sent_of(MarketplaceKind::Aws, &answered)[&hour0].to_string(),
                "2"
            );
        }
        // A failed answer: not sent, planned again; a sending row after an older answer of the
        // same key (a replanned record being sent again) is in doubt again.
        let failed = vec![row(SENDING, 30), row("failed", 30)];
        assert!(sent_of(MarketplaceKind::Aws, &failed).is_empty());
        let again = vec![row("failed", 30), row(SENDING, 31)];
        assert_eq!(in_doubt(&again).len(), 1);
        // A resend that was not taken either stays counted as sent, for a person to check.
        let doubtful = vec![row(SENDING, 30), row(IN_DOUBT, 32)];
        assert!(in_doubt(&doubtful).is_empty());
        assert_eq!(
            sent_of(MarketplaceKind::Aws, &doubtful)[&hour0].to_string(),
            "2"
        );
    }
}
