//! The derived tables in ClickHouse: invoice lines, shadow lines, rated usage, line usage,
//! entitlement signals, usage buckets and anomalies. Each is a signed table ([`SignedTable`]):
//! rows arrive as differential updates and leave as `+1` / `-1` rows with versions, in batches
//! sent in the table's `ORDER BY`.
use std::sync::Arc;

use clickhouse::Row;
use meterflow_operators::signed::{Change, Signed, SignedState};
use meterflow_operators::sink::TableWriter;
use meterflow_operators::Epoch;
use meterflow_schemas::anomaly::{Anomaly, BucketRow};
use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::rows::{EntitlementSignal, InvoiceLine, LineKey, LineUsage, RatedRow};
use meterflow_schemas::tables::Table;
use meterflow_schemas::time::Period;
use serde::Serialize;

use crate::sinks::clickhouse::client::{BatchId, ClickHouse};
use crate::sinks::clickhouse::sink::{in_key_order, seconds, ChNames, Inserter, PeriodLabels};
use crate::sinks::Kept;

/// The identity columns every derived row starts with.
struct KeyText<'a> {
    customer_id: &'a str,
    contract_id: &'a str,
    sku: &'a str,
    region: &'a str,
}

fn key_text<'a>(c: &'a Catalog, k: &LineKey) -> KeyText<'a> {
    KeyText {
        customer_id: &c.customers[k.customer.ix()].id,
        contract_id: &c.contracts[k.contract.ix()].id,
        sku: c.sku_id(k.sku),
        region: c.region_name(k.region),
    }
}

#[derive(Row, Serialize)]
pub(super) struct InvoiceLineRow<'a> {
    customer_id: &'a str,
    contract_id: &'a str,
    sku: &'a str,
    region: &'a str,
    service_period: &'a str,
    invoice_period: &'a str,
    line_type: &'a str,
    currency: &'a str,
    events: i64,
    quantity: i128,
    amount: i128,
    amount_exact: i128,
    sign: i8,
    version: u64,
    epoch: u64,
    generation: u32,
    batch: u64,
}

#[derive(Row, Serialize)]
pub(super) struct RatedRowCh<'a> {
    customer_id: &'a str,
    contract_id: &'a str,
    sku: &'a str,
    region: &'a str,
    service_period: &'a str,
    invoice_period: &'a str,
    rate_card: &'a str,
    rate_card_version: u32,
    model: &'a str,
    tier: u32,
    quantity: i128,
    amount: i128,
    currency: &'a str,
    sign: i8,
    version: u64,
    epoch: u64,
    generation: u32,
    batch: u64,
}

#[derive(Row, Serialize)]
pub(super) struct LineUsageRow<'a> {
    customer_id: &'a str,
    contract_id: &'a str,
    sku: &'a str,
    region: &'a str,
    service_period: &'a str,
    invoice_period: &'a str,
    rate_card: &'a str,
    rate_card_version: u32,
    events: i64,
    quantity: i128,
    sign: i8,
    version: u64,
    epoch: u64,
    generation: u32,
    batch: u64,
    fee_adjustment: i128,
}

/// Amounts rounded to minor units, stored as `Decimal(38, 9)`.
const AMOUNT_TO_9: i128 = 1_000_000_000;

/// A signed table: the writer of every `Shape::Signed` output.
pub struct SignedTable<R: Ord + Clone> {
    state: SignedState<R>,
    inserter: Inserter<Change<R>>,
    /// Receives the rows held at the end of the run (see [`HeldRows`]).
    kept: Option<Kept<R>>,
}

impl<R: Ord + Clone + Send + 'static> TableWriter<Signed<R>> for SignedTable<R> {
    fn write(&mut self, _: Epoch, rows: &mut Vec<Signed<R>>) -> Result<(), String> {
        self.state.extend(rows.drain(..));
        Ok(())
    }
    fn flush(&mut self, frontier: Option<Epoch>) -> Result<(), String> {
        if self.start_flush(frontier)? {
            self.inserter.wait()?;
        }
        Ok(())
    }
    fn start_flush(&mut self, frontier: Option<Epoch>) -> Result<bool, String> {
        self.inserter.wait()?;
        if let (None, Some(k)) = (frontier, &self.kept) {
            k.set(self.state.held());
        }
        // Each change is stamped with the round it belongs to: a restart deletes exactly the
        // rounds after the last commit.
        let changes = self.state.changes(frontier);
        if changes.is_empty() {
            return Ok(false);
        }
        self.inserter.start(changes)?;
        Ok(true)
    }
    fn flush_done(&mut self) -> Result<bool, String> {
        self.inserter.done()
    }
}

impl<R: ChSigned> SignedTable<R> {
    /// A writer of `table`, holding `state` (what the table holds after a restore), inserting on a
    /// thread of its own.
    pub fn open(
        ch: ClickHouse,
        names: Arc<ChNames>,
        table: &'static Table,
        state: SignedState<R>,
        kept: Option<Kept<R>>,
    ) -> SignedTable<R> {
        SignedTable {
            state,
            inserter: Inserter::spawn(ch, names, R::insert, table.name),
            kept,
        }
    }
}

/// Rows of a signed table, as ClickHouse receives them.
pub trait ChSigned: Ord + Clone + Send + 'static {
    /// Inserts one batch of changes into `table`, in the table's `ORDER BY`.
    fn insert(
        ch: &ClickHouse,
        n: &ChNames,
        id: BatchId,
        changes: &[Change<Self>],
        table: &str,
    ) -> Result<(), String>;
}

macro_rules! ch_signed {
    ($($row:ty => $insert:ident),* $(,)?) => {$(
        impl ChSigned for $row {
            fn insert(
                ch: &ClickHouse,
                n: &ChNames,
                id: BatchId,
                changes: &[Change<Self>],
                table: &str,
            ) -> Result<(), String> {
                $insert(ch, n, id, changes, table)
            }
        }
    )*};
}

ch_signed! {
    InvoiceLine => insert_lines,
    RatedRow => insert_rated,
    LineUsage => insert_line_usage,
    EntitlementSignal => insert_signals,
    BucketRow => insert_buckets,
    Anomaly => insert_anomalies,
}

/// Rows of an invoice line's history: labelled by their service and invoice periods.
trait OfLine {
    fn periods(&self) -> [Period; 2];
}

impl OfLine for InvoiceLine {
    fn periods(&self) -> [Period; 2] {
        [self.key.service_period, self.invoice_period]
    }
}

impl OfLine for RatedRow {
    fn periods(&self) -> [Period; 2] {
        [self.key.service_period, self.invoice_period]
    }
}

impl OfLine for LineUsage {
    fn periods(&self) -> [Period; 2] {
        [self.key.service_period, self.invoice_period]
    }
}

fn line_labels<R: OfLine>(n: &ChNames, changes: &[Change<R>]) -> PeriodLabels {
    PeriodLabels::of(n.period, changes.iter().flat_map(|c| c.row.periods()))
}

fn insert_lines(
    ch: &ClickHouse,
    n: &ChNames,
    id: BatchId,
    changes: &[Change<InvoiceLine>],
    table: &str,
) -> Result<(), String> {
    let labels = line_labels(n, changes);
    let changes = line_order(n, &labels, id, changes);
    ch.insert_batch::<InvoiceLineRow<'static>, _>(table, id, &changes, |c| {
        line_row(n, &labels, id, c)
    })
}

/// A batch in the table's `ORDER BY`, read from the row's own columns.
pub(super) fn line_order<'r>(
    n: &'r ChNames,
    labels: &'r PeriodLabels,
    id: BatchId,
    changes: &'r [Change<InvoiceLine>],
) -> Vec<&'r Change<InvoiceLine>> {
    in_key_order(changes, |c| {
        let r = line_row(n, labels, id, c);
        (
            r.customer_id,
            r.invoice_period,
            r.contract_id,
            r.sku,
            r.region,
            r.service_period,
            r.line_type,
            r.version,
        )
    })
}

pub(super) fn line_row<'r>(
    n: &'r ChNames,
    labels: &'r PeriodLabels,
    id: BatchId,
    c: &'r Change<InvoiceLine>,
) -> InvoiceLineRow<'r> {
    let l = &c.row;
    let k = key_text(&n.catalog, &l.key);
    InvoiceLineRow {
        customer_id: k.customer_id,
        contract_id: k.contract_id,
        sku: k.sku,
        region: k.region,
        service_period: labels.get(l.key.service_period),
        invoice_period: labels.get(l.invoice_period),
        line_type: l.kind.as_str(),
        currency: &l.currency,
        events: l.events,
        quantity: l.quantity.0,
        amount: l.amount.0 / AMOUNT_TO_9,
        amount_exact: l.amount_exact.0,
        sign: c.sign,
        version: c.version,
        epoch: c.epoch,
        generation: n.generation,
        batch: id.batch,
    }
}

fn insert_rated(
    ch: &ClickHouse,
    n: &ChNames,
    id: BatchId,
    changes: &[Change<RatedRow>],
    table: &str,
) -> Result<(), String> {
    let labels = line_labels(n, changes);
    let changes = rated_order(n, &labels, id, changes);
    ch.insert_batch::<RatedRowCh<'static>, _>(table, id, &changes, |c| rated_row(n, &labels, id, c))
}

/// A batch in the table's `ORDER BY`, read from the row's own columns.
pub(super) fn rated_order<'r>(
    n: &'r ChNames,
    labels: &'r PeriodLabels,
    id: BatchId,
    changes: &'r [Change<RatedRow>],
) -> Vec<&'r Change<RatedRow>> {
    in_key_order(changes, |c| {
        let r = rated_row(n, labels, id, c);
        (
            r.customer_id,
            r.invoice_period,
            r.contract_id,
            r.sku,
            r.region,
            r.service_period,
            r.rate_card,
            r.rate_card_version,
            r.tier,
            r.version,
        )
    })
}

pub(super) fn rated_row<'r>(
    n: &'r ChNames,
    labels: &'r PeriodLabels,
    id: BatchId,
    ch: &'r Change<RatedRow>,
) -> RatedRowCh<'r> {
    let (c, r) = (&n.catalog, &ch.row);
    let k = key_text(c, &r.key);
    let price = c.price(r.price);
    RatedRowCh {
        customer_id: k.customer_id,
        contract_id: k.contract_id,
        sku: k.sku,
        region: k.region,
        service_period: labels.get(r.key.service_period),
        invoice_period: labels.get(r.invoice_period),
        rate_card: &c.rate_cards[price.rate_card.ix()].id,
        rate_card_version: price.version,
        model: price.model.name(),
        tier: r.tier + 1,
        quantity: r.quantity.0,
        amount: r.amount.0,
        currency: &price.currency,
        sign: ch.sign,
        version: ch.version,
        epoch: ch.epoch,
        generation: n.generation,
        batch: id.batch,
    }
}

fn insert_line_usage(
    ch: &ClickHouse,
    n: &ChNames,
    id: BatchId,
    changes: &[Change<LineUsage>],
    table: &str,
) -> Result<(), String> {
    let labels = line_labels(n, changes);
    let changes = line_usage_order(n, &labels, id, changes);
    ch.insert_batch::<LineUsageRow<'static>, _>(table, id, &changes, |c| {
        line_usage_row(n, &labels, id, c)
    })
}

/// A batch in the table's `ORDER BY`, read from the row's own columns.
pub(super) fn line_usage_order<'r>(
    n: &'r ChNames,
    labels: &'r PeriodLabels,
    id: BatchId,
    changes: &'r [Change<LineUsage>],
) -> Vec<&'r Change<LineUsage>> {
    in_key_order(changes, |c| {
        let r = line_usage_row(n, labels, id, c);
        (
            r.customer_id,
            r.contract_id,
            r.sku,
            r.region,
            r.service_period,
            r.invoice_period,
            r.rate_card,
            r.rate_card_version,
            r.version,
        )
    })
}

pub(super) fn line_usage_row<'r>(
    n: &'r ChNames,
    labels: &'r PeriodLabels,
    id: BatchId,
    ch: &'r Change<LineUsage>,
) -> LineUsageRow<'r> {
    let (c, u) = (&n.catalog, &ch.row);
    let k = key_text(c, &u.key);
    let price = c.price(u.price);
    LineUsageRow {
        customer_id: k.customer_id,
        contract_id: k.contract_id,
        sku: k.sku,
        region: k.region,
        service_period: labels.get(u.key.service_period),
        invoice_period: labels.get(u.invoice_period),
        rate_card: &c.rate_cards[price.rate_card.ix()].id,
        rate_card_version: price.version,
        events: u.events,
        quantity: u.quantity.0,
        sign: ch.sign,
        version: ch.version,
        epoch: ch.epoch,
        generation: n.generation,
        batch: id.batch,
        fee_adjustment: u.fee_adjustment.0,
    }
}

#[derive(Row, Serialize)]
struct SignalRow<'a> {
    customer_id: &'a str,
    contract_id: &'a str,
    sku: &'a str,
    period: &'a str,
    signal: &'a str,
    percent: u32,
    at_quantity: i128,
    allowance: i128,
    sign: i8,
    version: u64,
    epoch: u64,
    generation: u32,
    batch: u64,
}

fn insert_signals(
    ch: &ClickHouse,
    n: &ChNames,
    id: BatchId,
    changes: &[Change<EntitlementSignal>],
    table: &str,
) -> Result<(), String> {
    let c = &n.catalog;
    let labels = PeriodLabels::of(n.period, changes.iter().map(|c| c.row.period));
    ch.insert_batch::<SignalRow<'static>, _>(table, id, changes, |ch| {
        let e = &ch.row;
        SignalRow {
            customer_id: &c.customers[e.customer.ix()].id,
            contract_id: &c.contracts[e.contract.ix()].id,
            sku: c.sku_id(e.sku),
            period: labels.get(e.period),
            signal: e.kind.as_str(),
            percent: e.percent,
            at_quantity: e.at.0,
            allowance: e.allowance.0,
            sign: ch.sign,
            version: ch.version,
            epoch: ch.epoch,
            generation: n.generation,
            batch: id.batch,
        }
    })
}

#[derive(Row, Serialize)]
pub(super) struct BucketRowCh<'a> {
    customer_id: &'a str,
    sku: &'a str,
    bucket_start: u32,
    events: i64,
    quantity: i128,
    sign: i8,
    version: u64,
    epoch: u64,
    generation: u32,
    batch: u64,
}

fn insert_buckets(
    ch: &ClickHouse,
    n: &ChNames,
    id: BatchId,
    changes: &[Change<BucketRow>],
    table: &str,
) -> Result<(), String> {
    let changes = bucket_order(n, changes);
    ch.insert_batch::<BucketRowCh<'static>, _>(table, id, &changes, |ch| bucket_row(n, id, ch))
}

/// A `usage_buckets` batch in the table's order: `(customer_id, sku, bucket_start, version)`.
pub(super) fn bucket_order<'r>(
    n: &ChNames,
    changes: &'r [Change<BucketRow>],
) -> Vec<&'r Change<BucketRow>> {
    in_key_order(changes, |ch| {
        let b = &ch.row;
        (
            n.ranks.customer(b.customer),
            n.ranks.sku(b.sku),
            seconds(b.start),
            ch.version,
        )
    })
}

pub(super) fn bucket_row<'r>(
    n: &'r ChNames,
    id: BatchId,
    ch: &'r Change<BucketRow>,
) -> BucketRowCh<'r> {
    let (c, b) = (&n.catalog, &ch.row);
    BucketRowCh {
        customer_id: &c.customers[b.customer.ix()].id,
        sku: c.sku_id(b.sku),
        bucket_start: seconds(b.start),
        events: b.usage.events,
        quantity: b.usage.quantity.0,
        sign: ch.sign,
        version: ch.version,
        epoch: ch.epoch,
        generation: n.generation,
        batch: id.batch,
    }
}

#[derive(Row, Serialize)]
struct AnomalyRow<'a> {
    customer_id: &'a str,
    sku: &'a str,
    kind: &'a str,
    window_start: u32,
    window_end: u32,
    observed: i128,
    expected: i128,
    score: i64,
    severity: &'a str,
    baseline: String,
    explanation: String,
    sign: i8,
    version: u64,
    epoch: u64,
    generation: u32,
    batch: u64,
}

fn insert_anomalies(
    ch: &ClickHouse,
    n: &ChNames,
    id: BatchId,
    changes: &[Change<Anomaly>],
    table: &str,
) -> Result<(), String> {
    let c = &n.catalog;
    ch.insert_batch::<AnomalyRow<'static>, _>(table, id, changes, |ch| {
        let a = &ch.row;
        AnomalyRow {
            customer_id: &c.customers[a.customer.ix()].id,
            sku: c.sku_id(a.sku),
            kind: a.kind.as_str(),
            window_start: seconds(a.start),
            window_end: seconds(a.end),
            observed: a.observed.0,
            expected: a.expected.0,
            score: a.score_centi,
            severity: a.severity.as_str(),
            baseline: a.baseline.label(),
            explanation: a.explain(c),
            sign: ch.sign,
            version: ch.version,
            epoch: ch.epoch,
            generation: n.generation,
            batch: id.batch,
        }
    })
}
