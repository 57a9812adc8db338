//! Restart: bring ClickHouse back to the last committed point and rebuild the pipeline's state
//! from it.
//!
//! 1. Wait for inserts still running on the server (a killed run's last batch).
//! 2. Read the last `sink_progress` row of the latest generation (epoch `R`, reader offsets,
//!    watermark, counts) and start a new generation, recorded at once with `R`. Every row the new
//!    generation writes carries its number.
//! 3. Delete rows written by epochs after `R`. They belong to a run that died before committing,
//!    and the input after `R` will be read again. The delete waits until the mutations finish. A
//!    killed run's insert can still land a moment later; its rows carry an older generation and
//!    an epoch after `R`, and the new generation sweeps them up at its first commits.
//! 4. Rebuild what the dataflow held at `R` from rows of epochs up to `R` only: idempotency keys
//!    inside the dedup horizon (from `usage_events`), the pricing input (from `line_usage`), and
//!    the rows each signed table holds, so the resumed run writes only real changes.
//! 5. Re-rate: lines whose usage the current catalog prices differently than `line_usage`
//!    records (a backdated version, a re-pinned contract) take their pricing input from their
//!    events in `usage_events` instead, priced under the current catalog; step 4's held rows
//!    turn the difference into signed corrections. Skipped when the last commit was priced
//!    under this very catalog (`sink_progress.catalog_digest`).
//!
//! The names in the tables are mapped back through the current catalog. A name the catalog no
//! longer knows stops the restart with an error that names it.
//!
//! In a cluster, process 0 alone is the [`Role::Writer`] (steps 1–3). The other processes are
//! [`Role::Reader`]s: they read progress and steps 4–5's state, which the writer's deletes (of
//! epochs after `R`) do not touch, and nothing can commit before every process has joined the
//! cluster. They take the writer's generation when the cluster forms, and all processes check
//! they resume from the same `R` (`meterflow_operators::dataflow::execute`).

use std::collections::{BTreeSet, HashMap};

use clickhouse::Row;
use meterflow_operators::aggregate::{UsageRecord, UsageSum};
use meterflow_operators::anomalies::AnomalySeed;
use meterflow_schemas::tables;

use crate::sinks::ByTable;
use meterflow_operators::dataflow::{Plan, Resume};
use meterflow_operators::dedup::DedupSeed;
use meterflow_operators::dedup::{usage_delta, BilledEvent};
use meterflow_operators::entitlements::{has_spend_plan, Reported};
use meterflow_operators::meters::{reloads_readings, Reading};
use meterflow_schemas::anomaly::{
    Anomaly, AnomalyKind, Baseline, Bucket, BucketRow, Detector, Severity,
};
use meterflow_schemas::catalog::{Catalog, ContractIdx, CustomerIdx, PriceIdx, RegionIdx, SkuIdx};
use meterflow_schemas::entitlement::{reported_through, SignalKind};
use meterflow_schemas::hashing::EventKey;
use meterflow_schemas::money::{Amount, Quantity};
use meterflow_schemas::rows::{
    EntitlementSignal, InvoiceLine, LineKey, LineKind, LineUsage, RatedRow, UsageDelta,
};
use meterflow_schemas::time::{EventTime, Period, PeriodUnit};
use serde::Deserialize;

use crate::sinks::clickhouse::client::{sql_list, ClickHouse};
use crate::sinks::clickhouse::progress::{
    delete_uncommitted, last_commit, settle_inserts, RecordedOffset,
};

/// What a restart loads.
#[derive(Default)]
pub struct Restored {
    /// The generation this start writes as.
    pub generation: u32,
    pub resume: Resume,
    /// What each signed table holds at the commit: `Vec<(row, multiplicity, version)>`.
    pub held: ByTable,
    /// Reader positions the commit holds for inputs this run does not read (carried on).
    pub elsewhere: Vec<RecordedOffset>,
    /// The commit recorded no reader position (see `LastCommit::by_epoch_only`).
    pub by_epoch_only: bool,
}

#[derive(Row, Deserialize)]
struct KeyRow {
    event_id: String,
    /// The original's id for a correction, else empty.
    correction_of: String,
    fingerprint: u64,
    event_time_ms: i64,
}

#[derive(Row, Deserialize)]
struct VoidRow {
    correction_of: String,
}

#[derive(Row, Deserialize)]
struct LineRow {
    customer_id: String,
    contract_id: String,
    sku: String,
    region: String,
    service_period: String,
    invoice_period: String,
    line_type: String,
    currency: String,
    events: i64,
    quantity: i128,
    amount: i128,
    amount_exact: i128,
    n: i64,
    v: u64,
}

#[derive(Row, Deserialize)]
struct RatedRowCh {
    customer_id: String,
    contract_id: String,
    sku: String,
    region: String,
    service_period: String,
    invoice_period: String,
    rate_card: String,
    rate_card_version: u32,
    tier: u32,
    quantity: i128,
    amount: i128,
    n: i64,
    v: u64,
}

#[derive(Row, Deserialize)]
struct LineUsageRow {
    customer_id: String,
    contract_id: String,
    sku: String,
    region: String,
    service_period: String,
    invoice_period: String,
    rate_card: String,
    rate_card_version: u32,
    events: i64,
    quantity: i128,
    fee_adjustment: i128,
    n: i64,
    v: u64,
}

#[derive(Row, Deserialize)]
struct ReportedRow {
    customer_id: String,
    contract_id: String,
    service_period: String,
    latest_ms: i64,
}

/// Maps table text back to catalog indices.
struct Lookup<'a> {
    catalog: &'a Catalog,
    period: PeriodUnit,
    prices: HashMap<(String, u32, SkuIdx, Option<RegionIdx>), PriceIdx>,
}

impl<'a> Lookup<'a> {
    fn new(catalog: &'a Catalog, period: PeriodUnit) -> Lookup<'a> {
        let prices = catalog
            .prices
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    (
                        catalog.rate_cards[p.rate_card.ix()].id.clone(),
                        p.version,
                        p.sku,
                        p.region,
                    ),
                    PriceIdx(i as u32),
                )
            })
            .collect();
        Lookup {
            catalog,
            period,
            prices,
        }
    }

    fn missing(what: &str, name: &str) -> String {
        format!("the tables name {what} `{name}`, which the catalog no longer has; restore it to the catalog (entries are never removed while their usage is billed)")
    }

    fn key(
        &self,
        customer: &str,
        contract: &str,
        sku: &str,
        region: &str,
        service: &str,
    ) -> Result<LineKey, String> {
        let c = self.catalog;
        Ok(LineKey {
            customer: c
                .customer(customer)
                .ok_or_else(|| Self::missing("customer", customer))?,
            contract: c
                .contract(contract)
                .ok_or_else(|| Self::missing("contract", contract))?,
            sku: c
                .sku_or_invoice(sku)
                .ok_or_else(|| Self::missing("sku", sku))?,
            region: self.region(region)?,
            service_period: self.period(service)?,
        })
    }

    fn meter(&self, customer: &str, sku: &str) -> Result<(CustomerIdx, SkuIdx), String> {
        let c = self.catalog;
        Ok((
            c.customer(customer)
                .ok_or_else(|| Self::missing("customer", customer))?,
            c.sku(sku).ok_or_else(|| Self::missing("sku", sku))?,
        ))
    }

    fn region(&self, name: &str) -> Result<Option<RegionIdx>, String> {
        if name == "*" {
            Ok(None)
        } else {
            self.catalog
                .region(name)
                .map(Some)
                .ok_or_else(|| Self::missing("region", name))
        }
    }

    fn period(&self, label: &str) -> Result<Period, String> {
        self.period.parse_label(label).ok_or_else(|| {
            format!(
                "period `{label}` does not match billing.period = {:?}",
                self.period
            )
        })
    }

    fn price(
        &self,
        card: &str,
        version: u32,
        sku: SkuIdx,
        region: Option<RegionIdx>,
    ) -> Result<PriceIdx, String> {
        self.prices
            .get(&(card.to_string(), version, sku, region))
            .copied()
            .ok_or_else(|| Self::missing("rate-card price", &format!("{card} v{version}")))
    }
}

/// Who restores: the one process that writes (steps 1–3), or another process of a cluster, which
/// only reads the state it needs (steps 4–5, from rows up to the commit, which the writer does not
/// touch) and takes the writer's generation when the cluster forms.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Writer,
    Reader,
}

/// Runs the steps above for a run of `plan`, whose catalog has digest `catalog_digest` and whose
/// inputs are `sources` (by index). A [`Role::Reader`]'s `Restored::generation` is 0: the
/// cluster's is the writer's.
pub fn restore(
    ch: &ClickHouse,
    plan: &Plan,
    catalog_digest: &str,
    sources: &[String],
    role: Role,
) -> Result<Restored, String> {
    let (catalog, period) = (&plan.catalog, plan.policy.period);
    let (dedup_horizon, anomaly_rules) = (plan.policy.dedup_horizon, &plan.anomalies);
    let writer = role == Role::Writer;
    // A run killed in the middle of an insert may have left it running on the server; it must
    // land (or fail) before we read progress and delete what it wrote.
    if writer {
        settle_inserts(ch)?;
    }
    let last = last_commit(ch, sources)?;
    // What the committed rows are priced under ('' for commits older than the column: unknown).
    let committed_digest = last.as_ref().map(|l| l.catalog_digest.clone());
    let generation = match role {
        Role::Writer => last.as_ref().map_or(1, |l| l.generation + 1),
        Role::Reader => 0,
    };
    let (elsewhere, by_epoch_only) = last.as_ref().map_or((Vec::new(), false), |l| {
        (l.elsewhere.clone(), l.by_epoch_only)
    });
    let progress = last.map(|l| l.progress);
    if writer {
        if let Some(p) = &progress {
            // The new generation starts at `R`: later restarts resume from its rows, never from a
            // late commit of a killed predecessor. The rows up to `R` are still priced under the
            // committed catalog until this generation's first commit, so the row says that one.
            let digest = committed_digest.as_deref().unwrap_or_default();
            let named = (sources, elsewhere.as_slice());
            crate::sinks::clickhouse::progress::write_progress(ch, generation, p, named, digest)?;
        }
        delete_uncommitted(ch, progress.as_ref().map(|p| p.epoch))?;
    }
    let Some(progress) = progress else {
        return Ok(Restored {
            generation,
            ..Restored::default()
        });
    };
    tracing::info!(
        epoch = progress.epoch,
        generation,
        "resuming after the last committed epoch"
    );
    let upto = format!("epoch <= {}", progress.epoch);

    let lookup = Lookup::new(catalog, period);
    let forget_before = progress
        .watermark
        .map_or(i64::MIN, |w| w.minus(dedup_horizon).0);
    let keys: Vec<KeyRow> = ch.fetch(&format!("SELECT event_id, correction_of, fingerprint, event_time_ms FROM {{db}}.usage_events WHERE event_time_ms >= {forget_before} AND {upto}"))?;
    let voids: Vec<VoidRow> = ch.fetch(&format!("SELECT correction_of FROM {{db}}.usage_events WHERE correction_action = 'void' AND event_time_ms >= {forget_before} AND {upto}"))?;
    let voided: std::collections::HashSet<EventKey> = voids
        .iter()
        .map(|v| EventKey::of(&v.correction_of))
        .collect();
    let dedup = keys
        .into_iter()
        .map(|k| {
            let key = EventKey::of(&k.event_id);
            let owner = match k.correction_of.as_str() {
                "" => key,
                original => EventKey::of(original),
            };
            DedupSeed {
                key,
                route: owner.route(),
                fingerprint: k.fingerprint,
                time: EventTime(k.event_time_ms),
                voided: voided.contains(&key),
            }
        })
        .collect();

    let invoice_lines = held_lines(ch, tables::INVOICE_LINES.name, &lookup, &upto)?;
    let shadow_invoice_lines = held_lines(ch, tables::SHADOW_INVOICE_LINES.name, &lookup, &upto)?;
    let rated_usage = held_rated(ch, &lookup, &upto)?;
    let line_usage = held_usage(ch, &lookup, &upto)?;
    let entitlement_signals = held_signals(ch, &lookup, &upto)?;
    // The anomaly detectors hold buckets and verdicts from a point behind the watermark on.
    let (buckets_from, verdicts_from) =
        Detector::new(anomaly_rules.clone(), dedup_horizon, catalog)
            .held_from(progress.watermark.unwrap_or(EventTime::MIN));
    let (usage_buckets, anomalies_held) = if anomaly_rules.enabled {
        (
            held_buckets(ch, &lookup, &upto, buckets_from)?,
            held_anomalies(ch, &lookup, &upto, verdicts_from)?,
        )
    } else {
        Default::default()
    };
    // Usage priced under versions the catalog no longer assigns to it (a backdated version, a
    // contract moved to another card or version) is re-rated from its events; the signed tables
    // then write the difference as corrections. Under the catalog of the last commit nothing
    // is priced differently, and restarts skip reading those events.
    let unchanged = committed_digest.is_some_and(|d| !d.is_empty() && d == catalog_digest);
    let rerated = if unchanged {
        BTreeSet::new()
    } else {
        rerated_groups(catalog, period, &line_usage)
    };
    let rerated_deltas = rerated_events(ch, &lookup, &upto, &rerated)?;
    if !rerated.is_empty() {
        tracing::info!(
            lines = rerated.len(),
            events = rerated_deltas.len(),
            "re-rating usage under the changed catalog"
        );
    }
    // Lines of non-additive meters that can still change are rebuilt from their readings; the
    // rest from their pricing input.
    let forget = EventTime(forget_before);
    let from_readings = |key: &LineKey| {
        key.sku != SkuIdx::INVOICE
            && !catalog.skus[key.sku.ix()].aggregation.is_additive()
            && reloads_readings(period.end_of(key.service_period), forget)
            && !rerated.contains(&group_of(key))
    };
    let mut readings = held_readings(ch, &lookup, &upto, forget, &from_readings)?;
    let reported = held_reported(ch, &lookup, &upto)?;
    // Seeds of one key add up in the dataflow, so restored lines and re-rated events simply
    // concatenate.
    let anomalies = AnomalySeed {
        buckets: usage_buckets.iter().map(|(b, _, _)| *b).collect(),
        anomalies: anomalies_held.iter().map(|(a, _, _)| a.clone()).collect(),
    };
    let mut usage: Vec<(UsageRecord, UsageSum)> = line_usage
        .iter()
        .filter(|(u, _, _)| !from_readings(&u.key) && !rerated.contains(&group_of(&u.key)))
        .map(|(u, n, _)| {
            let sum = UsageSum {
                events: u.events * *n as i64,
                quantity: Quantity(u.quantity.0 * *n as i128),
                fee_adjustment: Amount(u.fee_adjustment.0 * *n as i128),
            };
            ((u.price, (u.key, u.invoice_period)), sum)
        })
        .collect();
    let mut held = ByTable::default();
    held.put(&tables::INVOICE_LINES, invoice_lines);
    held.put(&tables::SHADOW_INVOICE_LINES, shadow_invoice_lines);
    held.put(&tables::RATED_USAGE, rated_usage);
    held.put(&tables::LINE_USAGE, line_usage);
    held.put(&tables::ENTITLEMENT_SIGNALS, entitlement_signals);
    held.put(&tables::USAGE_BUCKETS, usage_buckets);
    held.put(&tables::ANOMALIES, anomalies_held);
    for d in &rerated_deltas {
        let aggregation = catalog.skus[d.line.sku.ix()].aggregation;
        if aggregation.is_additive() {
            usage.push(((d.price, (d.line, d.invoice_period)), UsageSum::of(d)));
        } else {
            readings.extend(Reading::of(d, aggregation));
        }
    }
    Ok(Restored {
        generation,
        elsewhere,
        by_epoch_only,
        resume: Resume {
            progress: Some(progress),
            dedup,
            usage,
            anomalies,
            readings,
            reported,
        },
        held,
    })
}

/// The rows a signed table holds: per identity (its sorting key) and version, the inserted row's
/// values where insertions outnumber retractions. Values are aggregated, not grouped on:
/// ClickHouse 18.16 crashes when grouping by `Decimal128` columns.
fn held_query(table: &str, identity: &str, values: &[&str], upto: &str) -> String {
    let picked: Vec<String> = values
        .iter()
        .map(|v| format!("anyIf({v}, sign > 0) AS {v}"))
        .collect();
    format!(
        "SELECT {identity}, {}, sum(sign) AS n, version AS v FROM {{db}}.{table} WHERE {upto} GROUP BY {identity}, version HAVING n != 0",
        picked.join(", ")
    )
}

fn held_lines(
    ch: &ClickHouse,
    table: &str,
    l: &Lookup,
    upto: &str,
) -> Result<Vec<(InvoiceLine, isize, u64)>, String> {
    let rows: Vec<LineRow> = ch.fetch(&held_query(
        table,
        "customer_id, contract_id, sku, region, service_period, invoice_period, line_type",
        &["currency", "events", "quantity", "amount", "amount_exact"],
        upto,
    ))?;
    rows.into_iter()
        .map(|r| {
            let line = InvoiceLine {
                key: l.key(
                    &r.customer_id,
                    &r.contract_id,
                    &r.sku,
                    &r.region,
                    &r.service_period,
                )?,
                invoice_period: l.period(&r.invoice_period)?,
                kind: LineKind::parse(&r.line_type).ok_or_else(|| {
                    format!(
                        "invoice_lines holds line_type `{}`, which this meterflow does not know; run the version that wrote it",
                        r.line_type
                    )
                })?,
                currency: r.currency.into(),
                events: r.events,
                quantity: Quantity(r.quantity),
                amount_exact: Amount(r.amount_exact),
                amount: Amount(r.amount * 1_000_000_000),
            };
            Ok((line, r.n as isize, r.v))
        })
        .collect()
}

fn held_rated(
    ch: &ClickHouse,
    l: &Lookup,
    upto: &str,
) -> Result<Vec<(RatedRow, isize, u64)>, String> {
    let rows: Vec<RatedRowCh> = ch.fetch(&held_query(
        tables::RATED_USAGE.name,
        "customer_id, contract_id, sku, region, service_period, invoice_period, rate_card, rate_card_version, tier",
        &["quantity", "amount"],
        upto,
    ))?;
    rows.into_iter()
        .map(|r| {
            let key = l.key(
                &r.customer_id,
                &r.contract_id,
                &r.sku,
                &r.region,
                &r.service_period,
            )?;
            let price = l.price(&r.rate_card, r.rate_card_version, key.sku, key.region)?;
            let row = RatedRow {
                key,
                invoice_period: l.period(&r.invoice_period)?,
                price,
                tier: r.tier.saturating_sub(1),
                quantity: Quantity(r.quantity),
                amount: Amount(r.amount),
            };
            Ok((row, r.n as isize, r.v))
        })
        .collect()
}

fn held_signals(
    ch: &ClickHouse,
    l: &Lookup,
    upto: &str,
) -> Result<Vec<(EntitlementSignal, isize, u64)>, String> {
    #[derive(Row, Deserialize)]
    struct R {
        customer_id: String,
        contract_id: String,
        sku: String,
        period: String,
        signal: String,
        percent: u32,
        at_quantity: i128,
        allowance: i128,
        n: i64,
        v: u64,
    }
    let rows: Vec<R> = ch.fetch(&held_query(
        tables::ENTITLEMENT_SIGNALS.name,
        "customer_id, contract_id, sku, period, signal, percent",
        &["at_quantity", "allowance"],
        upto,
    ))?;
    rows.into_iter()
        .map(|r| {
            let key = l.key(&r.customer_id, &r.contract_id, &r.sku, "*", &r.period)?;
            let row = EntitlementSignal {
                customer: key.customer,
                contract: key.contract,
                sku: key.sku,
                period: key.service_period,
                kind: SignalKind::parse(&r.signal).ok_or_else(|| {
                    format!(
                        "entitlement_signals holds signal `{}`, which this meterflow does not know",
                        r.signal
                    )
                })?,
                percent: r.percent,
                at: Quantity(r.at_quantity),
                allowance: Quantity(r.allowance),
            };
            Ok((row, r.n as isize, r.v))
        })
        .collect()
}

/// `DateTime` seconds of a time, for a `WHERE` clause.
fn since(column: &str, t: EventTime) -> String {
    let s = t.0.div_euclid(1000).max(0);
    format!("{column} >= toDateTime({s})")
}

fn held_buckets(
    ch: &ClickHouse,
    l: &Lookup,
    upto: &str,
    from: EventTime,
) -> Result<Vec<(BucketRow, isize, u64)>, String> {
    #[derive(Row, Deserialize)]
    struct R {
        customer_id: String,
        sku: String,
        bucket_start: u32,
        events: i64,
        quantity: i128,
        n: i64,
        v: u64,
    }
    let rows: Vec<R> = ch.fetch(&held_query(
        tables::USAGE_BUCKETS.name,
        "customer_id, sku, bucket_start",
        &["events", "quantity"],
        &format!("{upto} AND {}", since("bucket_start", from)),
    ))?;
    rows.into_iter()
        .map(|r| {
            let (customer, sku) = l.meter(&r.customer_id, &r.sku)?;
            let row = BucketRow {
                customer,
                sku,
                start: EventTime(r.bucket_start as i64 * 1000),
                usage: Bucket {
                    events: r.events,
                    quantity: Quantity(r.quantity),
                },
            };
            Ok((row, r.n as isize, r.v))
        })
        .collect()
}

fn held_anomalies(
    ch: &ClickHouse,
    l: &Lookup,
    upto: &str,
    from: EventTime,
) -> Result<Vec<(Anomaly, isize, u64)>, String> {
    #[derive(Row, Deserialize)]
    struct R {
        customer_id: String,
        sku: String,
        kind: String,
        window_start: u32,
        window_end: u32,
        observed: i128,
        expected: i128,
        score: i64,
        severity: String,
        baseline: String,
        n: i64,
        v: u64,
    }
    let rows: Vec<R> = ch.fetch(&held_query(
        tables::ANOMALIES.name,
        // `window_end` is part of the identity (fixed for a window), so the filter below reads
        // the column, not an aggregate of it.
        "customer_id, sku, kind, window_start, window_end",
        &["observed", "expected", "score", "severity", "baseline"],
        // Cost anomalies are re-derived from the pricing state, all of them; the detector's
        // only from where it holds them.
        &format!(
            "{upto} AND (kind = 'cost' OR {})",
            since("window_end", from)
        ),
    ))?;
    let unknown = |what: &str, v: &str| {
        format!("anomalies holds {what} `{v}`, which this meterflow does not know; run the version that wrote it")
    };
    rows.into_iter()
        .map(|r| {
            let (customer, sku) = l.meter(&r.customer_id, &r.sku)?;
            let row = Anomaly {
                customer,
                sku,
                kind: AnomalyKind::parse(&r.kind).ok_or_else(|| unknown("kind", &r.kind))?,
                start: EventTime(r.window_start as i64 * 1000),
                end: EventTime(r.window_end as i64 * 1000),
                observed: Quantity(r.observed),
                expected: Quantity(r.expected),
                score_centi: r.score,
                severity: Severity::parse(&r.severity)
                    .ok_or_else(|| unknown("severity", &r.severity))?,
                baseline: Baseline::parse(&r.baseline)
                    .ok_or_else(|| unknown("baseline", &r.baseline))?,
            };
            Ok((row, r.n as isize, r.v))
        })
        .collect()
}

fn held_usage(
    ch: &ClickHouse,
    l: &Lookup,
    upto: &str,
) -> Result<Vec<(LineUsage, isize, u64)>, String> {
    let rows: Vec<LineUsageRow> = ch.fetch(&held_query(
        tables::LINE_USAGE.name,
        "customer_id, contract_id, sku, region, service_period, invoice_period, rate_card, rate_card_version",
        &["events", "quantity", "fee_adjustment"],
        upto,
    ))?;
    rows.into_iter()
        .map(|r| {
            let key = l.key(
                &r.customer_id,
                &r.contract_id,
                &r.sku,
                &r.region,
                &r.service_period,
            )?;
            let price = l.price(&r.rate_card, r.rate_card_version, key.sku, key.region)?;
            let row = LineUsage {
                key,
                invoice_period: l.period(&r.invoice_period)?,
                price,
                events: r.events,
                quantity: Quantity(r.quantity),
                fee_adjustment: Amount(r.fee_adjustment),
            };
            Ok((row, r.n as isize, r.v))
        })
        .collect()
}

/// Usage lines as a catalog change can re-rate them: (customer, contract, SKU, service period),
/// across price regions and invoice periods.
type Group = (CustomerIdx, ContractIdx, SkuIdx, Period);

fn group_of(k: &LineKey) -> Group {
    (k.customer, k.contract, k.sku, k.service_period)
}

/// The lines whose pricing input the catalog no longer agrees with. A line is kept as it is when
/// one version of its contract's rate card prices its whole service period and all its usage is
/// priced by that version: published versions never change, so its events would be priced the
/// same again. Any other line (usage under a version the contract no longer uses, or a period
/// that several versions share) is re-rated from its events, which is exact and, for a shared
/// period, costs one read of that period's events.
fn rerated_groups(
    catalog: &Catalog,
    unit: PeriodUnit,
    line_usage: &[(LineUsage, isize, u64)],
) -> BTreeSet<Group> {
    let mut verdicts: HashMap<Group, bool> = HashMap::new();
    for (u, _, _) in line_usage {
        let keeps = verdicts.entry(group_of(&u.key)).or_insert(true);
        if !*keeps {
            continue;
        }
        let contract = &catalog.contracts[u.key.contract.ix()];
        let p = catalog.price(u.price);
        let versions = catalog.versions_over(
            contract,
            u.key.service_period.0,
            unit.end_of(u.key.service_period),
        );
        *keeps = versions == [p.version] && p.rate_card == contract.rate_card;
    }
    verdicts
        .into_iter()
        .filter(|(_, keeps)| !keeps)
        .map(|(g, _)| g)
        .collect()
}

#[derive(Row, Deserialize)]
struct BilledRow {
    event_id: String,
    customer_id: String,
    contract_id: String,
    sku: String,
    region: String,
    quantity: i128,
    event_time_ms: i64,
    service_period: String,
    invoice_period: String,
    attributes: String,
    correction_action: String,
}

/// The columns of a billable event that price it.
const BILLED_COLUMNS: &str = "event_id, customer_id, contract_id, sku, region, quantity, \
     event_time_ms, service_period, invoice_period, attributes, correction_action";

/// The pricing input of the billable events of `groups` (epochs up to `upto`), each priced as
/// the current catalog prices it.
fn rerated_events(
    ch: &ClickHouse,
    l: &Lookup,
    upto: &str,
    groups: &BTreeSet<Group>,
) -> Result<Vec<UsageDelta>, String> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let c = l.catalog;
    let contracts: BTreeSet<&str> = groups
        .iter()
        .map(|g| c.contracts[g.1.ix()].id.as_str())
        .collect();
    let periods: BTreeSet<String> = groups.iter().map(|g| l.period.label(g.3)).collect();
    let (contracts, periods) = (sql_list(contracts), sql_list(periods));
    let rows: Vec<BilledRow> = ch.fetch(&format!(
        "SELECT {BILLED_COLUMNS} FROM {{db}}.usage_events WHERE billable = 1 \
         AND contract_id IN ({contracts}) AND service_period IN ({periods}) AND {upto}"
    ))?;
    let mut out = Vec::new();
    for r in rows {
        let delta = priced_now(l, &r)?;
        if groups.contains(&group_of(&delta.line)) {
            out.push(delta);
        }
    }
    Ok(out)
}

/// An accepted event's pricing input, priced as the current catalog prices it (the rate-card
/// version in `usage_events` is the one of the catalog that accepted it, which a backdated
/// change may since have replaced). An event the catalog can no longer price stops the
/// restart: accepted usage is never dropped from an invoice by a catalog change.
fn priced_now(l: &Lookup, r: &BilledRow) -> Result<UsageDelta, String> {
    let c = l.catalog;
    let line = l.key(
        &r.customer_id,
        &r.contract_id,
        &r.sku,
        "*",
        &r.service_period,
    )?;
    let contract = &c.contracts[line.contract.ix()];
    let time = EventTime(r.event_time_ms);
    let region = if r.region.is_empty() {
        None
    } else {
        c.region(&r.region)
    };
    let price = c.price_for(contract, line.sku, region, time).map_err(|miss| {
        format!(
            "the catalog no longer prices accepted event `{}` (contract `{}`, sku `{}`, {time}): {miss:?}; billed usage cannot be dropped by a catalog change: publish a rate-card version that prices it",
            r.event_id, contract.id, r.sku
        )
    })?;
    let line_events = match r.correction_action.as_str() {
        "void" => -1,
        "amend" => 0,
        _ => 1,
    };
    Ok(usage_delta(
        c,
        BilledEvent {
            customer: line.customer,
            contract: line.contract,
            sku: line.sku,
            price,
            service_period: line.service_period,
            invoice_period: l.period(&r.invoice_period)?,
            line_events,
            quantity: Quantity(r.quantity),
            time,
            attributes: Some(&r.attributes),
        },
    ))
}

/// The readings of non-additive meters on lines `wanted` picks, from the accepted billable events
/// of epochs up to `upto`: what the meter reduce held (see `meterflow_operators::meters`), each
/// priced as the current catalog prices it, like a re-rating (a restart after a re-rating
/// commit must price them as the re-rating did).
fn held_readings(
    ch: &ClickHouse,
    l: &Lookup,
    upto: &str,
    forget_before: EventTime,
    wanted: &dyn Fn(&LineKey) -> bool,
) -> Result<Vec<(LineKey, Reading, isize)>, String> {
    let skus: Vec<&str> = l
        .catalog
        .skus
        .iter()
        .filter(|s| !s.aggregation.is_additive())
        .map(|s| s.id.as_str())
        .collect();
    if skus.is_empty() {
        return Ok(Vec::new());
    }
    // Events of a service period that ended before `forget_before` are not wanted; the period
    // holding `forget_before` starts no later than any wanted one.
    // (Before the first watermark nothing is forgotten.)
    let from = if forget_before == EventTime::MIN {
        i64::MIN
    } else {
        l.period.period_of(forget_before).0 .0
    };
    let rows: Vec<BilledRow> = ch.fetch(&format!(
        "SELECT {BILLED_COLUMNS} FROM {{db}}.usage_events WHERE billable = 1 AND sku IN ({}) \
         AND event_time_ms >= {from} AND {upto}",
        sql_list(skus)
    ))?;
    let mut out = Vec::new();
    for r in rows {
        let delta = priced_now(l, &r)?;
        if wanted(&delta.line) {
            let aggregation = l.catalog.skus[delta.line.sku.ix()].aggregation;
            out.extend(Reading::of(&delta, aggregation));
        }
    }
    Ok(out)
}

/// How far each contract with a spend plan had reported usage in each service period, from the
/// billable events of epochs up to `upto` (see `meterflow_operators::entitlements::reported`).
fn held_reported(ch: &ClickHouse, l: &Lookup, upto: &str) -> Result<Vec<Reported>, String> {
    if !(0..l.catalog.contracts.len()).any(|c| has_spend_plan(l.catalog, ContractIdx(c as u32))) {
        return Ok(Vec::new());
    }
    let rows: Vec<ReportedRow> = ch.fetch(&format!(
        "SELECT customer_id, contract_id, service_period, max(event_time_ms) AS latest_ms \
         FROM {{db}}.usage_events WHERE billable = 1 AND {upto} \
         GROUP BY customer_id, contract_id, service_period"
    ))?;
    let mut out = Vec::new();
    for r in rows {
        let key = l.key(&r.customer_id, &r.contract_id, "", "*", &r.service_period)?;
        if has_spend_plan(l.catalog, key.contract) {
            let through = reported_through(EventTime(r.latest_ms));
            out.push(((key.customer, key.contract), (key.service_period, through)));
        }
    }
    Ok(out)
}
