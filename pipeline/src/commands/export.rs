//! `meterflow export aws|azure|gcp --period P`: the metered usage of contracts sold through a
//! cloud marketplace, as that marketplace's metering requests (docs/marketplaces.md).
//!
//! The requests are written as files (`BatchMeterUsage` input for AWS, the `batchUsageEvent`
//! body for Azure, the `services.report` body for GCP) and, with `--send`, sent to the
//! marketplace ([`crate::sinks::marketplace`]); every record is appended to the `exports` table
//! with its status, so the next export sends only what is new, settles what changed and sends
//! again what failed. A period is exported once it is closed; a SKU without a dimension, a
//! marketplace customer missing, or `[exports]` credentials missing stop the export before
//! anything is written or sent.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use meterflow_schemas::catalog::MarketplaceKind;
use meterflow_schemas::marketplace::{
    in_doubt, plan, records_member, requests, resend_request, sent_of, settled, Exported,
    HourUsage, Record, RecordKind, IN_DOUBT, SENDING,
};
use meterflow_schemas::money::Quantity;
use meterflow_schemas::time::{EventTime, PeriodUnit, Span};

use crate::commands::report::{Report, ReportArgs};
use crate::reports::net_usage;
use crate::sinks::exports;
use crate::sinks::marketplace::{self, Status};

const MS_PER_HOUR: i64 = 3_600_000;

/// The exit status when usage fell after it was exported: the rest is written and recorded, and
/// the decrease must be refunded or credited through the marketplace.
pub const NOT_SENDABLE: u8 = 3;

/// The exit status when a marketplace did not take some records (`failed` in `exports`): the
/// rest is sent and recorded, and the next export plans the failed ones again.
pub const NOT_SENT: u8 = 4;

#[derive(clap::Args)]
pub struct ExportCommand {
    /// The marketplace: aws, azure or gcp.
    #[arg(value_parser = ["aws", "azure", "gcp"])]
    marketplace: String,
    #[command(flatten)]
    report: ReportArgs,
    /// Where the request files go [default: OUT/marketplace, or ./marketplace-requests when
    /// reading ClickHouse].
    #[arg(long)]
    to: Option<PathBuf>,
    /// Date compensations (usage that grew after its hour was exported) at this time's hour
    /// instead of now (RFC 3339).
    #[arg(long)]
    at: Option<String>,
    /// Also send the requests to the marketplace, as `[exports.<marketplace>]` in the config
    /// says, and record each record's answer (docs/marketplaces.md). Without it nothing is sent.
    #[arg(long)]
    send: bool,
    /// Keep exporting: every `--every`, the hours the run's committed watermark has closed,
    /// until SIGTERM or SIGINT (instead of one closed `--period`).
    #[arg(long)]
    follow: bool,
    /// How often `--follow` looks for closed hours (e.g. 5m, 30s).
    #[arg(long, default_value = "5m", value_parser = parse_span)]
    every: Span,
}

fn parse_span(s: &str) -> Result<Span, String> {
    Span::parse(s).map_err(|e| format!("{e}; write it like 5m or 30s"))
}

/// The period's bounds, or why it cannot be exported.
fn closed_period(
    unit: PeriodUnit,
    label: &str,
    watermark: Option<EventTime>,
) -> anyhow::Result<(EventTime, EventTime)> {
    let p = unit
        .parse_label(label)
        .ok_or_else(|| anyhow!("--period {label} is not a billing period; write it as the invoices name it (e.g. 2026-11)"))?;
    let end = unit.end_of(p);
    match watermark {
        Some(w) if w >= end => Ok((p.0, end)),
        Some(w) => bail!(
            "period {label} is not closed: the run's watermark is at {w}, and the period closes when it passes {end}; \
             export it then (late usage would otherwise change what was sent). Nothing was written"
        ),
        None => bail!(
            "the run's output records no watermark, so whether period {label} is closed is unknown; \
             run `meterflow run` over it again (it resumes) and export then. Nothing was written"
        ),
    }
}

/// The hourly usage of `contracts` before `end`.
fn hours(buckets: net_usage::Buckets) -> Vec<HourUsage> {
    buckets
        .into_iter()
        .map(|((contract, sku, hour, tags), (quantity, _))| HourUsage {
            contract,
            sku,
            hour: EventTime(hour),
            quantity,
            tags,
        })
        .collect()
}

/// What one pass of an export is about.
struct Pass<'a> {
    kind: MarketplaceKind,
    label: String,
    /// The usage hours it exports.
    hours: (EventTime, EventTime),
    /// The export's time (compensations are dated at its hour) and run id.
    at: EventTime,
    run_id: String,
    contracts: &'a [&'a str],
    /// A pass of `--follow`: it says nothing when there is nothing new (it runs every few
    /// seconds, and its output is a service's log).
    following: bool,
}

/// What a pass did.
struct Done {
    failed: usize,
    not_sendable: bool,
}

impl Done {
    fn exit_code(&self) -> ExitCode {
        if self.failed > 0 {
            ExitCode::from(NOT_SENT)
        } else if self.not_sendable {
            // Usage that fell after it was sent needs a person, as `reconcile` on drift.
            ExitCode::from(NOT_SENDABLE)
        } else {
            ExitCode::SUCCESS
        }
    }
}

impl ExportCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let kind = MarketplaceKind::parse(&self.marketplace).expect("clap checked it");
        let a = &self.report;
        let label = match (a.period.as_deref(), self.follow) {
            (Some(_), true) => bail!(
                "--follow exports the hours as they close; give it no --period (export a closed period with --period P alone)"
            ),
            (None, false) => bail!(
                "export needs --period P: the closed invoice period to export (e.g. --period 2026-11), or --follow"
            ),
            (label, _) => label,
        };
        let r = a.open("export")?;
        let unit = r.cfg.billing.period;
        let catalog = &r.catalog;
        let contracts: Vec<&str> = catalog
            .contracts
            .iter()
            .filter(|c| {
                c.marketplace
                    .as_ref()
                    .is_some_and(|m| catalog.marketplaces[m.listing].kind == kind)
            })
            .filter(|c| {
                a.customer
                    .as_deref()
                    .is_none_or(|who| catalog.customers[c.customer.ix()].id == who)
            })
            .map(|c| c.id.as_str())
            .collect();
        // Credentials and endpoints are checked before anything is planned or written.
        let mut sender = if self.send {
            Some(
                marketplace::connect(kind, &r.cfg.exports)
                    .map_err(|e| anyhow!("{e}. Nothing was sent or written"))?,
            )
        } else {
            None
        };
        let Some(label) = label else {
            if r.ch.is_none() {
                bail!(
                    "--follow reads a running pipeline's ClickHouse (--clickhouse-url or [clickhouse] url): an embedded run \
                     rewrites its CSV tables while it runs. Export its closed periods with --period P once it has ended"
                );
            }
            return self.follow(&r, kind, &contracts, sender);
        };
        let at = match &self.at {
            Some(t) => EventTime::parse_rfc3339(t)
                .map_err(|e| anyhow!("--at {t}: {e}; write it like 2026-12-01T10:00:00Z"))?,
            None => r.at,
        };
        let watermark = r.watermark(&a.out)?;
        let hours = closed_period(unit, label, watermark)?;
        let pass = Pass {
            kind,
            label: label.to_string(),
            hours,
            at,
            run_id: r.run_id.clone(),
            contracts: &contracts,
            following: false,
        };
        let done = self.pass(&r, &pass, sender.as_deref_mut())?;
        Ok(done.exit_code())
    }

    /// `--follow`: every `--every`, the hours the committed watermark has closed in its current
    /// period, and the earlier periods late usage can still reach (`dedup.horizon` behind the
    /// watermark), until SIGTERM or SIGINT. Usage that arrives late for an hour already sent
    /// settles as a compensation.
    fn follow(
        &self,
        r: &Report,
        kind: MarketplaceKind,
        contracts: &[&str],
        mut sender: Option<Box<dyn marketplace::Marketplace>>,
    ) -> anyhow::Result<ExitCode> {
        let unit = r.cfg.billing.period;
        let every = std::time::Duration::from_millis(self.every.millis().max(1) as u64);
        let (stop, shutdown) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        crate::sources::shutdown::install();
        let _graceful = crate::sources::shutdown::graceful(stop.clone(), shutdown);
        let mut last_period = None;
        let mut failing = false;
        println!(
            "{} export following the run's watermark every {}; SIGTERM or SIGINT stops it",
            kind.as_str(),
            self.every
        );
        while !stop.load(Ordering::SeqCst) {
            let closed = match r.watermark(&self.report.out) {
                Ok(Some(w)) => Some(EventTime(w.0.div_euclid(MS_PER_HOUR) * MS_PER_HOUR)),
                Ok(None) => None,
                Err(e) => {
                    // The output or ClickHouse is not readable yet: tried again next time.
                    tracing::warn!(error = %e, "cannot read the run's watermark");
                    None
                }
            };
            if let Some(closed) = closed {
                let current = unit.period_of(EventTime(closed.0 - 1));
                // Every closed period late usage can still be billed in (events up to
                // `dedup.horizon` behind the watermark are), and the one this follow saw last:
                // late usage that lands after the pass that closed its period settles too.
                let mut earlier = BTreeSet::new();
                earlier.extend(last_period.filter(|p| *p != current));
                let mut p = unit.period_of(closed.minus(r.cfg.dedup.horizon));
                while p < current {
                    earlier.insert(p);
                    p = unit.period_of(unit.end_of(p));
                }
                let mut periods: Vec<_> =
                    earlier.into_iter().map(|p| (p, unit.end_of(p))).collect();
                periods.push((current, closed));
                failing = false;
                for (p, to) in periods {
                    let at = EventTime::now();
                    let pass = Pass {
                        kind,
                        label: unit.label(p),
                        hours: (p.0, to),
                        at,
                        run_id: format!("export-{}", at.0),
                        contracts,
                        following: true,
                    };
                    match self.pass(r, &pass, sender.as_deref_mut()) {
                        Ok(done) => failing |= done.failed > 0,
                        Err(e) => {
                            // Nothing of a failed pass was sent unrecorded: tried again next time.
                            tracing::error!(error = %e, period = %pass.label, "export pass failed");
                            failing = true;
                        }
                    }
                }
                last_period = Some(current);
            }
            let until = std::time::Instant::now() + every;
            while std::time::Instant::now() < until && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        println!("{} export stopped", kind.as_str());
        Ok(if failing {
            ExitCode::from(NOT_SENT)
        } else {
            ExitCode::SUCCESS
        })
    }

    /// Plans, writes, sends (with `sender`) and records one period's records.
    fn pass(
        &self,
        r: &Report,
        p: &Pass,
        mut sender: Option<&mut (dyn marketplace::Marketplace + 'static)>,
    ) -> anyhow::Result<Done> {
        let a = &self.report;
        let (kind, label, at) = (p.kind, p.label.as_str(), p.at);
        let (from, to) = p.hours;
        let catalog = &r.catalog;
        let oldest = sender
            .as_ref()
            .and_then(|_| marketplace::oldest_hour(kind, at));
        let select = net_usage::Select {
            bucket_ms: MS_PER_HOUR,
            before: Some(to),
            contracts: Some(p.contracts),
            allocation: Some(kind),
        };
        let (usage, earlier) = match &r.ch {
            Some(ch) => (
                net_usage::from_clickhouse(ch, catalog, &select)?,
                exports::from_clickhouse(ch, kind).map_err(anyhow::Error::msg)?,
            ),
            None => (
                net_usage::from_output(&a.out, catalog, &select)?,
                exports::from_files(&a.out).map_err(anyhow::Error::msg)?,
            ),
        };
        let usage = hours(usage);
        let sent = sent_of(kind, &earlier);
        let records = plan(catalog, kind, &usage, &sent, (from, to), (at, oldest)).map_err(|unmapped| {
            let mut s = String::from("nothing was written: usage has no marketplace dimension to be sent as:");
            for u in &unmapped {
                let additive = catalog.sku(&u.sku).is_some_and(|k| catalog.skus[k.ix()].aggregation.is_additive());
                let _ = if additive {
                    write!(
                        s,
                        "\n  contract {} used SKU {}, which listing {} has no dimension for: add a [[marketplace.dimension]] with sku = \"{}\" to marketplace \"{}\" in the catalog",
                        u.contract, u.sku, u.listing, u.sku, u.listing
                    )
                } else {
                    write!(
                        s,
                        "\n  contract {} used SKU {}, a peak or distinct-count meter, which marketplaces cannot be sent per hour: bill {} on a contract not sold through listing {}",
                        u.contract, u.sku, u.sku, u.listing
                    )
                };
            }
            anyhow!(s)
        })?;
        // A record dated at an hour a record of the same key was taken at (a second export's
        // compensation within one hour) would be refused as a duplicate: it waits.
        let taken: HashSet<&str> = settled(&earlier)
            .filter(|e| e.status != Status::Failed.as_str())
            .map(|e| e.record_key.as_str())
            .collect();
        let (records, held): (Vec<Record>, Vec<Record>) = records
            .into_iter()
            .partition(|rec| !taken.contains(rec.key.as_str()));
        let dir = match &self.to {
            Some(d) => d.clone(),
            None if r.ch.is_some() => PathBuf::from("marketplace-requests"),
            None => a.out.join("marketplace"),
        }
        .join(kind.as_str())
        .join(label);
        let mut rows: Vec<Exported> = records
            .iter()
            .map(|rec| Exported {
                exported_at: at,
                export_id: p.run_id.clone(),
                ..Exported::of(catalog, rec)
            })
            .collect();
        let bodies = requests(catalog, kind, &records);
        if !bodies.is_empty() {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // Rows follow the requests' order: by product, then as planned.
        let mut sendable: Vec<usize> = (0..records.len())
            .filter(|i| records[*i].kind != RecordKind::NotSendable)
            .collect();
        sendable.sort_by_key(|i| catalog.marketplaces[records[*i].listing].product.clone());
        let mut recorded = Recorded {
            earlier,
            r,
            out: &a.out,
        };
        // First, the records an earlier export died sending, exactly as they were sent.
        let doubtful = match sender.as_mut() {
            Some(sender) => resend_in_doubt(kind, &mut **sender, &mut recorded, at)?,
            None => in_doubt(&recorded.earlier)
                .iter()
                .filter(|e| e.marketplace == kind.as_str())
                .count(),
        };
        if doubtful > 0 {
            println!(
                "  in doubt: {doubtful} records an earlier export sent without recording the answer stay counted as sent; {}",
                if sender.is_some() {
                    "their resend was not taken either: check in the marketplace whether it billed them (exports.status = 'in_doubt'; docs/marketplaces.md)"
                } else {
                    "export with --send to resend them as they were sent"
                }
            );
        }
        let mut next = 0;
        for (n, body) in bodies.iter().enumerate() {
            let file = dir.join(format!("{}-{:04}.json", p.run_id, n + 1));
            std::fs::write(&file, serde_json::to_string_pretty(body)? + "\n")
                .with_context(|| format!("cannot write {}", file.display()))?;
            let count = body[records_member(kind)].as_array().map_or(0, Vec::len);
            let these = &sendable[next..next + count];
            next += count;
            for i in these {
                rows[*i].request = file.display().to_string();
            }
            let Some(sender) = sender.as_mut() else {
                continue;
            };
            let product = &catalog.marketplaces[records[these[0]].listing].product;
            // Recorded as being sent first: should the export die before the answer's rows
            // land, the next export resends these very records instead of planning them anew
            // (a compensation planned anew would be dated at a later hour, and billed again).
            recorded.add(
                these
                    .iter()
                    .map(|i| Exported {
                        status: SENDING.into(),
                        ..rows[*i].clone()
                    })
                    .collect(),
            )?;
            let outcomes = sender.send(product, body);
            for (i, o) in these.iter().zip(outcomes) {
                rows[*i].status = o.status.as_str().into();
                rows[*i].response_id = o.id;
                rows[*i].detail = o.detail;
            }
            // Recorded request by request: a record sent is never planned again, even if the
            // export stops before its end.
            recorded.add(these.iter().map(|i| rows[*i].clone()).collect())?;
        }
        let unsent: Vec<Exported> = if sender.is_some() {
            rows.iter()
                .filter(|e| e.record_kind == RecordKind::NotSendable.as_str())
                .cloned()
                .collect()
        } else {
            rows.clone()
        };
        recorded.add(unsent)?;
        let before = earlier_in(&sent, from, to);
        if !(p.following && rows.is_empty() && doubtful == 0) {
            print!(
                "{}",
                summary(kind, label, &rows, bodies.len(), &dir, before)
            );
        }
        for h in &held {
            println!(
                "  held: a {} record of contract {} is dated {}, which an earlier export's record of the same dimension took; export again after that hour",
                h.kind.as_str(),
                catalog.contracts[h.contract.ix()].id,
                h.timestamp
            );
        }
        let failed = rows
            .iter()
            .filter(|e| e.status == Status::Failed.as_str())
            .count();
        if failed > 0 {
            println!(
                "  failed: {failed} records were not taken (their detail in exports says why); the next export sends them again"
            );
        }
        Ok(Done {
            failed,
            not_sendable: doubtful > 0
                || rows
                    .iter()
                    .any(|e| e.record_kind == RecordKind::NotSendable.as_str()),
        })
    }
}

/// Resends each record of `kind` an earlier export died sending (see `in_doubt`), alone and
/// exactly as its request file holds it, and records the answer: `sent` or `duplicate` settle
/// it; if it is not taken (or its file is gone), it becomes `in_doubt` for a person to check,
/// still counted as sent. Returns how many stay in doubt.
fn resend_in_doubt(
    kind: MarketplaceKind,
    sender: &mut dyn marketplace::Marketplace,
    recorded: &mut Recorded,
    at: EventTime,
) -> anyhow::Result<usize> {
    let doubtful: Vec<Exported> = in_doubt(&recorded.earlier)
        .into_iter()
        .filter(|e| e.marketplace == kind.as_str())
        .cloned()
        .collect();
    let mut left = 0;
    for row in doubtful {
        let request = std::fs::read_to_string(&row.request)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .and_then(|body| resend_request(kind, &row, &body));
        let (status, response_id, detail) = match request {
            Some(one) => {
                let o = sender.send(&row.product, &one).remove(0);
                match o.status {
                    Status::Failed => (
                        IN_DOUBT.to_string(),
                        o.id,
                        format!(
                            "resent after an export died sending it, not taken: {}",
                            o.detail
                        ),
                    ),
                    s => (s.as_str().to_string(), o.id, o.detail),
                }
            }
            None => (
                IN_DOUBT.to_string(),
                String::new(),
                format!(
                    "an export died sending it, and its request file {} no longer holds it",
                    row.request
                ),
            ),
        };
        left += usize::from(status == IN_DOUBT);
        println!(
            "  resent {} {} of {} at {}: {status}",
            row.record_kind, row.dimension, row.contract_id, row.record_time
        );
        recorded.add(vec![Exported {
            exported_at: at.max(row.exported_at),
            status,
            response_id,
            detail,
            ..row
        }])?;
    }
    Ok(left)
}

/// The `exports` table, as the export appends to it.
struct Recorded<'a> {
    /// Every row of earlier exports (files: the table is rewritten with them).
    earlier: Vec<Exported>,
    r: &'a Report,
    out: &'a Path,
}

impl Recorded<'_> {
    fn add(&mut self, rows: Vec<Exported>) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        match &self.r.ch {
            Some(ch) => exports::to_clickhouse(ch, &rows).map_err(anyhow::Error::msg),
            None => {
                self.earlier.extend(rows);
                exports::to_files(
                    self.out,
                    self.r.catalog.clone(),
                    self.r.cfg.billing.period,
                    &self.earlier,
                )
                .map_err(anyhow::Error::msg)
            }
        }
    }
}

/// How many records earlier exports hold for usage hours in `[from, to)`.
fn earlier_in(
    sent: &meterflow_schemas::marketplace::Sent,
    from: EventTime,
    to: EventTime,
) -> usize {
    sent.keys()
        .filter(|(_, _, h)| *h >= from && *h < to)
        .count()
}

/// What an export did, per listing and dimension.
fn summary(
    kind: MarketplaceKind,
    label: &str,
    rows: &[Exported],
    files: usize,
    dir: &Path,
    before: usize,
) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        let _ = match before {
            0 => writeln!(s, "{} export of {label}: no usage of contracts sold through {} listings in {label}", kind.as_str(), kind.as_str()),
            n => writeln!(s, "{} export of {label}: nothing new to send ({n} hours were exported before, and none changed)", kind.as_str()),
        };
        return s;
    }
    let _ = writeln!(
        s,
        "{} export of {label}: {} records in {files} request files under {}",
        kind.as_str(),
        rows.len(),
        dir.display()
    );
    // Records and units per (contract, dimension, marketplace customer, kind, status).
    type Group<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str);
    let mut by: BTreeMap<Group, (usize, Quantity)> = BTreeMap::new();
    for e in rows {
        let x = by
            .entry((
                &e.contract_id,
                &e.dimension,
                &e.marketplace_customer,
                &e.record_kind,
                &e.status,
            ))
            .or_default();
        x.0 += 1;
        x.1 += e.quantity;
    }
    for ((contract, dimension, customer, kind, status), (n, q)) in by {
        let _ = writeln!(
            s,
            "  {contract:<20} {dimension:<20} {customer:<24} {kind:<13} {status:<12} {n:>5} records {q:>14}"
        );
    }
    if rows
        .iter()
        .any(|e| e.record_kind == RecordKind::NotSendable.as_str())
    {
        let _ = writeln!(
            s,
            "  not_sendable: usage fell after it was exported (voids, amends); no marketplace takes negative metering. \
             Refund or credit the difference through the marketplace; the exports table keeps the record"
        );
    }
    s
}
