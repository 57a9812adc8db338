//! The naive baseline: the same work as `meterflow run` — read, parse, validate, dedup with a
//! horizon, classify lateness, aggregate, price, sum usage buckets, judge anomalies, find
//! entitlement crossings, write the same tables — in one thread with std HashMaps, computing
//! every derived table once at the end. It shares meterflow's pure functions (validation,
//! pricing math, the anomaly detector, entitlement rules, CSV writers) so the comparison
//! measures the engine, not different code.
//!
//! `--core` skips what the first baseline skipped (usage buckets, anomalies, line usage,
//! entitlement signals): the figure every B1 ratio before session 21 was measured against.
//!
//! It covers the data `meterflow gen` writes without `--terms` (sum meters, per-unit and
//! graduated prices, corrections; no contract terms, taxes or unique-count meters): the bench
//! checks its tables equal meterflow's, so data it does not cover fails the bench instead of
//! measuring meterflow against less work.
//!
//! usage: baseline <events.jsonl> <catalog dir> <out dir> [chunk bytes] [--core]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use meterflow::sinks::files::{prepare_out_dir, Names, RowsWriter, SignedWriter};
use meterflow::sources::files::FileInput;
use meterflow_operators::aggregate::UsageSum;
use meterflow_operators::decode::records;
use meterflow_operators::price::{price_line, Priced};
use meterflow_operators::rate_join::SegmentPrice;
use meterflow_operators::signed::SignedState;
use meterflow_operators::sink::TableWriter;
use meterflow_operators::source::{ChunkReader, Read, StripedReader};
use meterflow_operators::watermark::{LatenessPolicy, Verdict};
use meterflow_schemas::anomaly::{
    cost_anomaly, AnomalyRules, Bucket, BucketRow, Detector, MeterKey,
};
use meterflow_schemas::catalog::{load_dir, Catalog, PriceIdx};
use meterflow_schemas::entitlement::signals;
use meterflow_schemas::event::CorrectionAction;
use meterflow_schemas::hashing::EventKey;
use meterflow_schemas::lineage::Lineage;
use meterflow_schemas::money::{Amount, Quantity, Rounding};
use meterflow_schemas::rejection::{Reason, Rejection};
use meterflow_schemas::rows::{
    AcceptedEvent, Counts, DuplicateRow, EntitlementSignal, InvoiceLine, LineKey, LineUsage,
    RatedRow,
};
use meterflow_schemas::tables;
use meterflow_schemas::time::{EventTime, Period, PeriodUnit, Span};
use meterflow_schemas::validate::{ValidationRules, Validator};

/// The derived tables the core baseline skips, computed once at the end from the final state.
struct Derived<'a> {
    catalog: &'a Arc<Catalog>,
    out: &'a std::path::Path,
    names: &'a Arc<Names>,
    period: PeriodUnit,
}

impl Derived<'_> {
    fn write<R: Ord + Clone + meterflow::sinks::files::CsvRow>(
        &self,
        table: &'static tables::Table,
        mut rows: Vec<(R, u64, isize)>,
    ) -> anyhow::Result<()> {
        let mut w = SignedWriter::create(
            self.out,
            table,
            0,
            self.names.clone(),
            SignedState::default(),
            None,
        )
        .map_err(anyhow::Error::msg)?;
        w.write(0, &mut rows).map_err(anyhow::Error::msg)?;
        w.flush(None).map_err(anyhow::Error::msg)
    }

    fn line_usage(&self, rows: Vec<(LineUsage, u64, isize)>) -> anyhow::Result<()> {
        self.write(&tables::LINE_USAGE, rows)
    }

    /// Per contract and entitled SKU: the thresholds and limits its usage lines cross.
    fn entitlements(&self, lines: &[(InvoiceLine, u64, isize)]) -> anyhow::Result<()> {
        type Usage = BTreeMap<EventTime, Quantity>;
        let mut by_key: BTreeMap<_, Usage> = BTreeMap::new();
        for (l, _, _) in lines {
            let entitled = self.catalog.contracts[l.key.contract.ix()]
                .entitlements
                .iter()
                .any(|e| e.sku == l.key.sku);
            if l.kind.is_usage() && entitled {
                *by_key
                    .entry((l.key.customer, l.key.contract, l.key.sku))
                    .or_default()
                    .entry(l.key.service_period.0)
                    .or_default() += l.quantity;
            }
        }
        let unit = self.period;
        let next = |t: EventTime| unit.end_of(unit.period_of(t));
        let mut rows = Vec::new();
        for ((customer, contract, sku), usage) in by_key {
            let contract_row = &self.catalog.contracts[contract.ix()];
            let Some(e) = contract_row.entitlements.iter().find(|e| e.sku == sku) else {
                continue;
            };
            for (start, s) in signals(e, &usage, next) {
                rows.push((
                    EntitlementSignal::of((customer, contract, sku), start, &s),
                    0,
                    1,
                ));
            }
        }
        self.write(&tables::ENTITLEMENT_SIGNALS, rows)
    }

    /// Every bucket's final usage, and the anomalies the detector finds in them once the
    /// watermark has passed the whole input; cost anomalies from the rated rows.
    fn buckets_and_anomalies(
        &self,
        buckets: HashMap<(MeterKey, i64), Bucket>,
        rules: AnomalyRules,
        horizon: Span,
        rated: &[(RatedRow, u64, isize)],
        watermark: EventTime,
    ) -> anyhow::Result<()> {
        let bucket_ms = rules.bucket.millis();
        let mut detector = Detector::new(rules.clone(), horizon, self.catalog);
        // Meter by meter, in time order: each meter's buckets are appended, not scattered.
        let mut buckets: Vec<_> = buckets.into_iter().collect();
        buckets.sort_unstable_by_key(|&(k, _)| k);
        let mut rows = Vec::with_capacity(buckets.len());
        for ((key, b), usage) in buckets {
            if usage == Bucket::default() {
                continue;
            }
            let start = EventTime(b * bucket_ms);
            detector.add(key, start, usage);
            let row = BucketRow {
                customer: key.0,
                sku: key.1,
                start,
                usage,
            };
            rows.push((row, 0, 1));
        }
        self.write(&tables::USAGE_BUCKETS, rows)?;
        let mut verdicts = Vec::new();
        detector.advance(watermark, &mut verdicts);
        let mut anomalies: Vec<_> = verdicts.into_iter().map(|(a, n)| (a, 0, n)).collect();
        let mut costs: BTreeMap<_, (Amount, Amount)> = BTreeMap::new();
        for (r, _, _) in rated {
            if let Some(unit_cost) = self.catalog.price(r.price).unit_cost {
                let c = costs
                    .entry((r.key.customer, r.key.sku, r.key.service_period))
                    .or_default();
                c.0 += r.amount;
                c.1 += unit_cost.times(r.quantity);
            }
        }
        for ((customer, sku, period), (revenue, cost)) in costs {
            let window = (period.0, self.period.end_of(period));
            if let Some(a) = cost_anomaly(&rules, (customer, sku), window, revenue, cost) {
                anomalies.push((a, 0, 1));
            }
        }
        self.write(&tables::ANOMALIES, anomalies)
    }
}

struct Seen {
    fingerprint: u64,
    time: EventTime,
    voided: bool,
}

fn main() -> anyhow::Result<()> {
    meterflow_benchmarks::help_from_header(include_str!("baseline.rs"));
    let mut args: Vec<String> = std::env::args().collect();
    let core_only = args.iter().any(|a| a == "--core");
    args.retain(|a| a != "--core");
    anyhow::ensure!(
        args.len() >= 4,
        "usage: baseline <events.jsonl> <catalog dir> <out dir> [chunk bytes] [--core]"
    );
    let (input, catalog_dir, out) = (
        PathBuf::from(&args[1]),
        PathBuf::from(&args[2]),
        PathBuf::from(&args[3]),
    );
    let chunk_bytes: u64 = args
        .get(4)
        .map_or(Ok(4 << 20), |s| s.parse())
        .context("chunk bytes")?;
    let started = Instant::now();

    let catalog = Arc::new(load_dir(&catalog_dir)?);
    let rules = Arc::new(ValidationRules::default());
    let policy = LatenessPolicy {
        period: PeriodUnit::Month,
        tolerance: Span::hours(1),
        dedup_horizon: Span::days(7),
    };
    prepare_out_dir(&out)?;
    let names = Arc::new(Names::new(
        catalog.clone(),
        rules.billable_environments.clone(),
        policy.period,
    ));
    let facts = |t| RowsWriter::create(&out, t, 0, names.clone());
    let mut usage_out = facts(&tables::USAGE_EVENTS).map_err(anyhow::Error::msg)?;
    let mut rejections_out = RowsWriter::create(&out, &tables::REJECTIONS, 0, names.clone())
        .map_err(anyhow::Error::msg)?;
    let mut duplicates_out = RowsWriter::create(&out, &tables::DUPLICATES, 0, names.clone())
        .map_err(anyhow::Error::msg)?;
    let signed = |t| SignedWriter::create(&out, t, 0, names.clone(), SignedState::default(), None);
    let mut lines_out = signed(&tables::INVOICE_LINES).map_err(anyhow::Error::msg)?;
    let mut rated_out = SignedWriter::create(
        &out,
        &tables::RATED_USAGE,
        0,
        names.clone(),
        SignedState::default(),
        None,
    )
    .map_err(anyhow::Error::msg)?;

    let mut validator = Validator::new(rules.clone(), catalog.clone());
    let mut seen: HashMap<EventKey, Seen> = HashMap::new();
    let mut usage: HashMap<(LineKey, Period, PriceIdx), (i64, Quantity)> = HashMap::new();
    let anomaly_rules = AnomalyRules::default();
    let bucket_ms = anomaly_rules.bucket.millis();
    let mut buckets: HashMap<(MeterKey, i64), Bucket> = HashMap::new();
    let mut counts = Counts::default();
    let mut watermark = EventTime::MIN;
    let mut evict_at = 1 << 20;
    let mut reader = StripedReader::new(vec![FileInput::open(&input)?], chunk_bytes, 0, 1);
    let (mut accepted, mut rejected, mut duplicates) = (Vec::new(), Vec::new(), Vec::new());
    let now = EventTime::now();

    let mut spare = Vec::new();
    loop {
        let chunk = match reader.next_chunk(std::mem::take(&mut spare)) {
            Read::Chunk(c) => c,
            Read::Failed(e) => return Err(e.into()),
            Read::Pending | Read::Done => break,
        };
        counts.bytes += chunk.bytes.len() as u64;
        let mut chunk_max = watermark;
        let mut lateness = policy.at(watermark);
        for (offset, line) in records(&chunk.bytes) {
            counts.received += 1;
            let lineage = Lineage {
                source: 0,
                partition: 0,
                offset: chunk.base_offset + offset as u64,
                record: 0,
            };
            let ev = match validator.validate(line, lineage, now) {
                Ok(ev) => ev,
                Err(r) => {
                    counts.reject(r.reason);
                    rejected.push(r);
                    continue;
                }
            };
            chunk_max = chunk_max.max(ev.time);
            let reject = |reason: Reason| {
                let mut r = Rejection::new(reason, None, reason.code());
                r.event_id = Some(ev.event_id.clone());
                r.lineage = ev.lineage;
                r
            };
            let (service, invoice, arrival) = match lateness.classify(ev.time) {
                Verdict::TooOld => {
                    counts.reject(Reason::TimestampTooOld);
                    rejected.push(reject(Reason::TimestampTooOld));
                    continue;
                }
                Verdict::Accept {
                    service,
                    invoice,
                    arrival,
                } => (service, invoice, arrival),
            };
            if let Some(prior) = seen.get(&ev.key) {
                if prior.fingerprint == ev.fingerprint {
                    counts.duplicates += 1;
                    duplicates.push(DuplicateRow {
                        event_id: ev.event_id,
                        key: ev.key,
                        time: ev.time,
                        lineage: ev.lineage,
                    });
                } else {
                    counts.reject(Reason::ConflictingDuplicate);
                    rejected.push(reject(Reason::ConflictingDuplicate));
                }
                continue;
            }
            if let Some(c) = &ev.correction {
                let problem = match seen.get(&c.original_key) {
                    None => Some(Reason::CorrectionUnknownOriginal),
                    Some(o) if o.voided => Some(Reason::CorrectionAfterVoid),
                    Some(o)
                        if c.action == CorrectionAction::Void
                            && o.fingerprint != c.original_fingerprint =>
                    {
                        Some(Reason::CorrectionMismatch)
                    }
                    Some(_) => None,
                };
                if let Some(reason) = problem {
                    counts.reject(reason);
                    rejected.push(reject(reason));
                    continue;
                }
                counts.corrections += 1;
                if c.action == CorrectionAction::Void {
                    seen.get_mut(&c.original_key).expect("checked").voided = true;
                }
            }
            seen.insert(
                ev.key,
                Seen {
                    fingerprint: ev.fingerprint,
                    time: ev.time,
                    voided: false,
                },
            );
            counts.accepted += 1;
            match arrival {
                meterflow_schemas::rows::Arrival::OutOfOrder => counts.out_of_order += 1,
                meterflow_schemas::rows::Arrival::Late => counts.late += 1,
                meterflow_schemas::rows::Arrival::OnTime => {}
            }
            if ev.billable() {
                counts.billable += 1;
                let line = LineKey {
                    customer: ev.customer,
                    contract: ev.contract,
                    sku: ev.sku,
                    region: catalog.price(ev.price).region,
                    service_period: service,
                };
                let e = usage.entry((line, invoice, ev.price)).or_default();
                e.0 += ev.line_events();
                e.1 += ev.quantity;
                if !core_only {
                    let bucket = ev.time.0.div_euclid(bucket_ms);
                    let b = buckets.entry(((ev.customer, ev.sku), bucket)).or_default();
                    b.events += ev.line_events();
                    b.quantity += ev.quantity;
                }
            }
            accepted.push(AcceptedEvent {
                event: ev,
                service_period: service,
                invoice_period: invoice,
                arrival,
            });
        }
        watermark = chunk_max;
        spare = chunk.bytes;
        usage_out
            .write(0, &mut accepted)
            .map_err(anyhow::Error::msg)?;
        rejections_out
            .write(0, &mut rejected)
            .map_err(anyhow::Error::msg)?;
        duplicates_out
            .write(0, &mut duplicates)
            .map_err(anyhow::Error::msg)?;
        if seen.len() > evict_at {
            let forget = policy.forget_before(watermark);
            seen.retain(|_, s| s.time >= forget);
            evict_at = (seen.len() * 2).max(1 << 20);
        }
    }

    // Price every line once, at the end.
    type Rated = Vec<((Period, SegmentPrice), UsageSum)>;
    let mut by_line: BTreeMap<LineKey, Rated> = BTreeMap::new();
    for ((line, invoice, price_ix), (events, quantity)) in usage {
        let segment = SegmentPrice::of(&catalog, price_ix);
        by_line.entry(line).or_default().push((
            (invoice, segment),
            UsageSum {
                events,
                quantity,
                ..UsageSum::default()
            },
        ));
    }
    let (mut lines, mut rated, mut line_usage) = (Vec::new(), Vec::new(), Vec::new());
    for (key, mut values) in by_line {
        values.sort();
        let input: Vec<(&(Period, SegmentPrice), _)> =
            values.iter().map(|(v, s)| (v, *s)).collect();
        for p in price_line(&catalog, &key, &input, Rounding::HalfEven) {
            match p {
                Priced::Line(l) => lines.push((l, 0, 1)),
                Priced::Rated(r) => rated.push((r, 0, 1)),
                Priced::Usage(u) if !core_only => line_usage.push((u, 0, 1)),
                Priced::Usage(_) => {}
            }
        }
    }
    if !core_only {
        let derived = Derived {
            catalog: &catalog,
            out: &out,
            names: &names,
            period: policy.period,
        };
        derived.line_usage(line_usage)?;
        derived.entitlements(&lines)?;
        derived.buckets_and_anomalies(
            buckets,
            anomaly_rules,
            policy.dedup_horizon,
            &rated,
            watermark,
        )?;
    }
    let invoice_total: meterflow_schemas::money::Amount = lines
        .iter()
        .map(|(l, _, _): &(InvoiceLine, u64, isize)| l.amount_exact)
        .sum();
    lines_out.write(0, &mut lines).map_err(anyhow::Error::msg)?;
    rated_out.write(0, &mut rated).map_err(anyhow::Error::msg)?;
    {
        let w = &mut usage_out as &mut dyn TableWriter<AcceptedEvent>;
        w.flush(None).map_err(anyhow::Error::msg)?;
    }
    rejections_out.flush(None).map_err(anyhow::Error::msg)?;
    duplicates_out.flush(None).map_err(anyhow::Error::msg)?;
    lines_out.flush(None).map_err(anyhow::Error::msg)?;
    rated_out.flush(None).map_err(anyhow::Error::msg)?;

    let secs = started.elapsed().as_secs_f64();
    let json = serde_json::json!({
        "received": counts.received,
        "accepted": counts.accepted,
        "billable": counts.billable,
        "duplicates": counts.duplicates,
        "corrections": counts.corrections,
        "rejected": counts.rejected,
        "late": counts.late,
        "out_of_order": counts.out_of_order,
        "balanced": counts.balanced(),
        "dedup_keys": seen.len(),
        "dedup_bytes": seen.capacity() * (std::mem::size_of::<(EventKey, Seen)>() + 1),
        "dedup_bytes_per_key": (seen.capacity() * (std::mem::size_of::<(EventKey, Seen)>() + 1)) as f64 / seen.len().max(1) as f64,
        "invoice_total_exact": invoice_total.to_string(),
        "elapsed_seconds": secs,
        "events_per_second": counts.received as f64 / secs,
        "peak_rss_bytes": meterflow::commands::run::peak_rss_bytes(),
    });
    std::fs::write(
        out.join("counts.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    println!("{json}");
    Ok(())
}
