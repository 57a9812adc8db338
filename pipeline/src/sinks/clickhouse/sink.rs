//! The ClickHouse sink: every output table of a run, written with the official client in
//! RowBinary, in batches bounded by rows and time (the sink's [`FlushPolicy`]).
//!
//! Rows are buffered until the sink flushes, then inserted as one batch per table. A batch that
//! fails to insert is retried as a whole (see [`ClickHouse::retry`]), so a ClickHouse outage
//! stalls the pipeline without dropping anything. Each row carries the epoch that wrote it. Signed
//! tables go through [`SignedState`], so a retraction carries the version of the row it cancels,
//! and a resumed run writes only real changes. Progress is committed to `sink_progress` after
//! every table is durable through the committed epoch.

use std::sync::{mpsc, Arc};

use clickhouse::Row;
use meterflow_operators::sink::TableWriter;
use meterflow_operators::Epoch;
use meterflow_schemas::catalog::{Catalog, CustomerIdx, SkuIdx};
use meterflow_schemas::event::{Environment, Metadata};
use meterflow_schemas::lineage::Lineage;
use meterflow_schemas::rejection::Rejection;
use meterflow_schemas::rows::{AcceptedEvent, DuplicateRow};
use meterflow_schemas::tables::Table;
use meterflow_schemas::time::{EventTime, Period, PeriodUnit};
use serde::Serialize;

use crate::sinks::clickhouse::client::{BatchId, ClickHouse};

/// What the writers need to turn indices back into names.
pub struct ChNames {
    pub catalog: Arc<Catalog>,
    /// Input names by source index: file paths or topic names.
    pub sources: Vec<String>,
    pub billable_environments: Vec<String>,
    pub period: PeriodUnit,
    /// This start of the pipeline (see `sinks::clickhouse::restore`).
    pub generation: u32,
    /// The timely worker writing (its batches are numbered apart from other workers').
    pub worker: u32,
    /// Customers and SKUs in the byte order of their ids (see [`in_key_order`]).
    pub ranks: IdRanks,
}

impl ChNames {
    fn source(&self, l: Lineage) -> &str {
        self.sources
            .get(l.source as usize)
            .map_or("?", |s| s.as_str())
    }
}

/// Labels of the periods a batch mentions, so rows can borrow them. A batch holds a few
/// distinct periods in long runs: repeats are skipped and each period is labelled once, in a
/// list kept sorted.
pub(crate) struct PeriodLabels(Vec<(Period, String)>);

impl PeriodLabels {
    pub(crate) fn of(unit: PeriodUnit, periods: impl Iterator<Item = Period>) -> PeriodLabels {
        let mut labels = PeriodLabels(Vec::new());
        let mut last = None;
        for p in periods.filter(|&p| last.replace(p) != Some(p)) {
            if let Err(i) = labels.find(p) {
                labels.0.insert(i, (p, unit.label(p)));
            }
        }
        labels
    }
    fn find(&self, p: Period) -> Result<usize, usize> {
        self.0.binary_search_by(|(q, _)| q.cmp(&p))
    }
    pub(crate) fn get(&self, p: Period) -> &str {
        self.find(p).map_or("", |i| self.0[i].1.as_str())
    }
}

/// Each customer's and SKU's place in the byte order of their ids, so a batch can be put in a
/// table's `ORDER BY` order by comparing integers rather than strings.
pub struct IdRanks {
    customers: Vec<u32>,
    /// Offset by one: rank 0 is [`SkuIdx::INVOICE`], whose id `""` sorts first.
    skus: Vec<u32>,
}

impl IdRanks {
    pub fn of(c: &Catalog) -> Self {
        fn ranks<'a>(ids: impl Iterator<Item = &'a str>, first: u32) -> Vec<u32> {
            let mut order: Vec<(&str, usize)> = ids.enumerate().map(|(i, id)| (id, i)).collect();
            order.sort_unstable();
            let mut rank = vec![0; order.len()];
            for (r, (_, i)) in order.into_iter().enumerate() {
                rank[i] = first + r as u32;
            }
            rank
        }
        IdRanks {
            customers: ranks(c.customers.iter().map(|x| x.id.as_str()), 0),
            skus: ranks(c.skus.iter().map(|x| x.id.as_str()), 1),
        }
    }
    pub(crate) fn customer(&self, c: CustomerIdx) -> u32 {
        self.customers[c.ix()]
    }
    pub(crate) fn sku(&self, s: SkuIdx) -> u32 {
        if s == SkuIdx::INVOICE {
            0
        } else {
            self.skus[s.ix()]
        }
    }
}

/// `rows` in the order of `key`, which must follow the table's `ORDER BY`. ClickHouse checks
/// whether an inserted block is already in order and then neither sorts it nor permutes its
/// columns (17% of its CPU per event in the benchmark, `benchmarks/RESULTS.md`). The sort
/// happens here instead, on the insert thread; a resend sends the same order. The big tables
/// (`usage_events`, `usage_buckets`) sort on integer ranks of the ids ([`IdRanks`]); the small
/// derived batches on their rows' own columns, built once for the key and again to be sent.
pub(crate) fn in_key_order<'r, S, K: Ord>(rows: &'r [S], key: impl Fn(&'r S) -> K) -> Vec<&'r S> {
    let mut refs: Vec<&S> = rows.iter().collect();
    refs.sort_by_cached_key(|r| key(r));
    refs
}

pub(crate) fn seconds(t: EventTime) -> u32 {
    t.0.div_euclid(1000).clamp(0, u32::MAX as i64) as u32
}

#[derive(Row, Serialize)]
struct UsageRow<'a> {
    event_id: &'a str,
    customer_id: &'a str,
    contract_id: &'a str,
    sku: &'a str,
    unit: &'a str,
    quantity: i128,
    event_time: u32,
    event_time_ms: i64,
    environment: &'a str,
    billable: u8,
    region: &'a str,
    plan: &'a str,
    marketplace: &'a str,
    attributes: &'a str,
    correction_action: &'a str,
    correction_of: &'a str,
    rate_card: &'a str,
    rate_card_version: u32,
    price_region: &'a str,
    service_period: &'a str,
    invoice_period: &'a str,
    arrival: &'a str,
    fingerprint: u64,
    source: &'a str,
    partition: i32,
    offset: u64,
    epoch: u64,
    generation: u32,
    batch: u64,
    kafka_key: &'a str,
    kafka_headers: &'a str,
}

#[derive(Row, Serialize)]
struct RejectionRow<'a> {
    reason: &'a str,
    field: &'a str,
    message: &'a str,
    remediation: &'a str,
    event_id: &'a str,
    source: &'a str,
    partition: i32,
    offset: u64,
    raw_payload: &'a str,
    rejected_at: u32,
    epoch: u64,
    generation: u32,
    kafka_key: &'a str,
    kafka_headers: &'a str,
    batch: u64,
}

#[derive(Row, Serialize)]
struct DuplicateRowCh<'a> {
    event_id: &'a str,
    event_time: u32,
    event_time_ms: i64,
    source: &'a str,
    partition: i32,
    offset: u64,
    epoch: u64,
    generation: u32,
    batch: u64,
}

pub(crate) const NO_METADATA: Metadata = Metadata {
    region: None,
    plan: None,
    marketplace: None,
    attributes: None,
};

/// Inserts a batch into the named table.
pub(crate) type InsertFn<T> = fn(&ClickHouse, &ChNames, BatchId, &[T], &str) -> Result<(), String>;

/// Inserts a table's batches on a thread of its own, one batch at a time, so that a flush does
/// not stall the timely worker and the tables insert side by side. The insert retries with
/// backoff while ClickHouse is down, so a batch is either in or still being tried.
pub(crate) struct Inserter<T> {
    batches: mpsc::Sender<Vec<T>>,
    results: mpsc::Receiver<Result<(), String>>,
    in_flight: bool,
}

impl<T: Send + 'static> Inserter<T> {
    pub(crate) fn spawn(
        ch: ClickHouse,
        names: Arc<ChNames>,
        insert: InsertFn<T>,
        table: &str,
    ) -> Inserter<T> {
        let (batches, todo) = mpsc::channel::<Vec<T>>();
        let (done, results) = mpsc::channel();
        let name = table.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("insert {table}"))
            .spawn(move || {
                let mut id = BatchId {
                    generation: names.generation,
                    batch: u64::from(names.worker) << 40,
                };
                for batch in todo {
                    id.batch += 1;
                    if done.send(insert(&ch, &names, id, &batch, &name)).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(table, error = %e, "cannot start an insert thread");
        }
        Inserter {
            batches,
            results,
            in_flight: false,
        }
    }

    pub(crate) fn start(&mut self, batch: Vec<T>) -> Result<(), String> {
        self.batches
            .send(batch)
            .map_err(|_| "the insert thread is gone".to_string())?;
        self.in_flight = true;
        Ok(())
    }

    pub(crate) fn done(&mut self) -> Result<bool, String> {
        if !self.in_flight {
            return Ok(true);
        }
        match self.results.try_recv() {
            Ok(result) => {
                self.in_flight = false;
                result.map(|()| true)
            }
            Err(mpsc::TryRecvError::Empty) => Ok(false),
            Err(mpsc::TryRecvError::Disconnected) => Err("the insert thread is gone".into()),
        }
    }

    /// Waits for the batch in flight, if any.
    pub(crate) fn wait(&mut self) -> Result<(), String> {
        if !self.in_flight {
            return Ok(());
        }
        self.in_flight = false;
        self.results
            .recv()
            .map_err(|_| "the insert thread is gone".to_string())?
    }
}

/// One fact table (`usage_events`, `rejections` or `duplicates`): rows buffered with their epoch.
pub struct FactsWriter<D> {
    buffer: Vec<(Epoch, D)>,
    inserter: Inserter<(Epoch, D)>,
}

impl<D: Send + 'static> TableWriter<D> for FactsWriter<D> {
    fn write(&mut self, epoch: Epoch, rows: &mut Vec<D>) -> Result<(), String> {
        self.buffer.extend(rows.drain(..).map(|r| (epoch, r)));
        Ok(())
    }
    fn flush(&mut self, frontier: Option<Epoch>) -> Result<(), String> {
        if self.start_flush(frontier)? {
            self.inserter.wait()?;
        }
        Ok(())
    }
    fn start_flush(&mut self, _: Option<Epoch>) -> Result<bool, String> {
        self.inserter.wait()?;
        if self.buffer.is_empty() {
            return Ok(false);
        }
        self.inserter.start(std::mem::take(&mut self.buffer))?;
        Ok(true)
    }
    fn flush_done(&mut self) -> Result<bool, String> {
        self.inserter.done()
    }
}

impl<D: ChFact> FactsWriter<D> {
    /// A writer of `table`'s rows, inserting on a thread of its own.
    pub fn open(ch: ClickHouse, names: Arc<ChNames>, table: &'static Table) -> FactsWriter<D> {
        FactsWriter {
            buffer: Vec::new(),
            inserter: Inserter::spawn(ch, names, D::insert, table.name),
        }
    }
}

/// Rows of a fact table, as ClickHouse receives them.
pub trait ChFact: Send + Sized + 'static {
    /// Inserts one batch into `table`, in the table's `ORDER BY` where that is cheap to reach.
    fn insert(
        ch: &ClickHouse,
        n: &ChNames,
        id: BatchId,
        rows: &[(Epoch, Self)],
        table: &str,
    ) -> Result<(), String>;
}

macro_rules! ch_fact {
    ($($row:ty => $insert:ident),* $(,)?) => {$(
        impl ChFact for $row {
            fn insert(
                ch: &ClickHouse,
                n: &ChNames,
                id: BatchId,
                rows: &[(Epoch, Self)],
                table: &str,
            ) -> Result<(), String> {
                $insert(ch, n, id, rows, table)
            }
        }
    )*};
}

ch_fact! {
    AcceptedEvent => insert_usage,
    Rejection => insert_rejections,
    DuplicateRow => insert_duplicates,
}

fn insert_usage(
    ch: &ClickHouse,
    n: &ChNames,
    id: BatchId,
    rows: &[(Epoch, AcceptedEvent)],
    table: &str,
) -> Result<(), String> {
    let labels = PeriodLabels::of(
        n.period,
        rows.iter()
            .flat_map(|(_, a)| [a.service_period, a.invoice_period]),
    );
    let rows = usage_order(n, rows);
    ch.insert_batch::<UsageRow<'static>, _>(table, id, &rows, |r| {
        prefetch_usage(&rows, r);
        usage_row(n, &labels, id, r)
    })
}

/// Asks the CPU to start loading what encoding the rows a few places on will read. A batch's
/// rows were built by a worker on another core and are visited in the table's key order, not
/// in the order they lie in memory, and each carries its Kafka key and headers in a box of its
/// own: in B2, `usage_row` spent three quarters of its time waiting for a row, then for its
/// box, to arrive from memory (benchmarks/RESULTS.md, session 33). A hint only: nothing is
/// read, so nothing can fault.
fn prefetch_usage(sorted: &[&(Epoch, AcceptedEvent)], current: &&(Epoch, AcceptedEvent)) {
    let at = (current as *const _ as usize).wrapping_sub(sorted.as_ptr() as usize)
        / std::mem::size_of::<&(Epoch, AcceptedEvent)>();
    if let Some(row) = sorted.get(at + 8) {
        prefetch(*row);
    }
    if let Some((_, a)) = sorted.get(at + 4) {
        prefetch_bytes(a.event.event_id.as_bytes());
        if let Some(k) = a.event.kafka.as_deref() {
            prefetch(k);
        }
    }
    if let Some(k) = sorted
        .get(at + 2)
        .and_then(|(_, a)| a.event.kafka.as_deref())
    {
        prefetch_bytes(k.key.as_bytes());
        prefetch_bytes(k.headers.as_bytes());
    }
}

fn prefetch<T>(t: &T) {
    prefetch_range(t as *const T as *const u8, size_of::<T>());
}

fn prefetch_bytes(bytes: &[u8]) {
    prefetch_range(bytes.as_ptr(), bytes.len());
}

fn prefetch_range(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..len).step_by(64) {
        // SAFETY: a prefetch is a hint: it reads nothing and never faults, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                start.wrapping_add(line) as *const i8,
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}

/// A `usage_events` batch in the table's order: `(customer_id, sku, event_time, event_id)`.
fn usage_order<'r>(
    n: &ChNames,
    rows: &'r [(Epoch, AcceptedEvent)],
) -> Vec<&'r (Epoch, AcceptedEvent)> {
    in_key_order(rows, |(_, a)| {
        let e = &a.event;
        (
            n.ranks.customer(e.customer),
            n.ranks.sku(e.sku),
            seconds(e.time),
            &*e.event_id,
        )
    })
}

fn usage_row<'r>(
    n: &'r ChNames,
    labels: &'r PeriodLabels,
    id: BatchId,
    (epoch, a): &'r (Epoch, AcceptedEvent),
) -> UsageRow<'r> {
    let c = &n.catalog;
    let e = &a.event;
    let m = e.metadata.as_deref().unwrap_or(&NO_METADATA);
    let sku = &c.skus[e.sku.ix()];
    let price = c.price(e.price);
    UsageRow {
        event_id: &e.event_id,
        customer_id: &c.customers[e.customer.ix()].id,
        contract_id: &c.contracts[e.contract.ix()].id,
        sku: &sku.id,
        unit: &sku.unit,
        quantity: e.quantity.0,
        event_time: seconds(e.time),
        event_time_ms: e.time.0,
        environment: match &e.environment {
            Environment::Billable(i) => &n.billable_environments[*i as usize],
            Environment::Other(name) => name,
        },
        billable: e.billable() as u8,
        region: m.region.as_deref().unwrap_or(""),
        plan: m.plan.as_deref().unwrap_or(""),
        marketplace: m.marketplace.as_deref().unwrap_or(""),
        attributes: m.attributes.as_deref().unwrap_or(""),
        correction_action: e.correction.as_ref().map_or("", |k| k.action.as_str()),
        correction_of: e.correction.as_ref().map_or("", |k| &k.original_event_id),
        rate_card: &c.rate_cards[price.rate_card.ix()].id,
        rate_card_version: price.version,
        price_region: c.region_name(price.region),
        service_period: labels.get(a.service_period),
        invoice_period: labels.get(a.invoice_period),
        arrival: a.arrival.as_str(),
        fingerprint: e.fingerprint,
        source: n.source(e.lineage),
        partition: e.lineage.partition,
        offset: e.lineage.offset,
        epoch: *epoch,
        generation: n.generation,
        batch: id.batch,
        kafka_key: e.kafka.as_ref().map_or("", |k| k.key.as_str()),
        kafka_headers: e.kafka.as_ref().map_or("", |k| k.headers.as_str()),
    }
}

fn insert_rejections(
    ch: &ClickHouse,
    n: &ChNames,
    id: BatchId,
    rows: &[(Epoch, Rejection)],
    table: &str,
) -> Result<(), String> {
    let now = seconds(EventTime::now());
    ch.insert_batch::<RejectionRow<'static>, _>(table, id, rows, |(epoch, r)| RejectionRow {
        reason: r.reason.code(),
        field: r.field.as_deref().unwrap_or(""),
        message: &r.message,
        remediation: r.reason.remediation(),
        event_id: r.event_id.as_deref().unwrap_or(""),
        source: n.source(r.lineage),
        partition: r.lineage.partition,
        offset: r.lineage.offset,
        raw_payload: &r.raw,
        rejected_at: now,
        epoch: *epoch,
        generation: n.generation,
        batch: id.batch,
        kafka_key: r.kafka.as_ref().map_or("", |k| k.key.as_str()),
        kafka_headers: r.kafka.as_ref().map_or("", |k| k.headers.as_str()),
    })
}

fn insert_duplicates(
    ch: &ClickHouse,
    n: &ChNames,
    id: BatchId,
    rows: &[(Epoch, DuplicateRow)],
    table: &str,
) -> Result<(), String> {
    ch.insert_batch::<DuplicateRowCh<'static>, _>(table, id, rows, |(epoch, d)| DuplicateRowCh {
        event_id: &d.event_id,
        event_time: seconds(d.time),
        event_time_ms: d.time.0,
        source: n.source(d.lineage),
        partition: d.lineage.partition,
        offset: d.lineage.offset,
        epoch: *epoch,
        generation: n.generation,
        batch: id.batch,
    })
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use meterflow_schemas::anomaly::Bucket;
    use meterflow_schemas::catalog::PriceIdx;
    use meterflow_schemas::fixtures::{self, event};
    use meterflow_schemas::money::{Amount, Quantity};
    use meterflow_schemas::rows::{Arrival, LineKind};
    use meterflow_schemas::validate::{ValidationRules, Validator};
    use serde_json::Value;

    use super::*;
    use crate::sinks::clickhouse::derived::*;
    use meterflow_operators::signed::Change;
    use meterflow_schemas::anomaly::BucketRow;
    use meterflow_schemas::rows::{InvoiceLine, LineKey, LineUsage, RatedRow};

    fn names() -> ChNames {
        let catalog = Arc::new(fixtures::catalog());
        ChNames {
            ranks: IdRanks::of(&catalog),
            catalog,
            sources: vec!["usage".into()],
            billable_environments: vec!["production".into()],
            period: PeriodUnit::Month,
            generation: 1,
            worker: 0,
        }
    }

    /// The `ORDER BY` columns of `table`, as registered (the migrated tables are checked against
    /// the registry in the suite).
    fn order_by(table: &str) -> Vec<&'static str> {
        meterflow_schemas::tables::named(table)
            .expect("a registered table")
            .order_by
            .to_vec()
    }

    /// How ClickHouse orders two values of a key column: strings bytewise, numbers by value.
    fn cmp(a: &Value, b: &Value) -> Ordering {
        match (a, b) {
            (Value::String(a), Value::String(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Number(a), Value::Number(b)) => {
                let n = |v: &serde_json::Number| {
                    v.as_i64().map_or(v.as_u64().unwrap() as i128, i128::from)
                };
                n(a).cmp(&n(b))
            }
            _ => panic!("key columns are strings or numbers: {a} vs {b}"),
        }
    }

    /// Whether `rows` (as sent) follow `table`'s `ORDER BY`.
    fn in_table_order<R: Serialize>(table: &str, rows: impl Iterator<Item = R>) -> bool {
        let key = order_by(table);
        let rows: Vec<Value> = rows.map(|r| serde_json::to_value(r).unwrap()).collect();
        rows.windows(2).all(|w| {
            key.iter()
                .map(|c| cmp(&w[0][c], &w[1][c]))
                .find(|o| o.is_ne())
                .is_none_or(|o| o.is_lt())
        })
    }

    fn accepted(n: &ChNames, lines: &[String]) -> Vec<(Epoch, AcceptedEvent)> {
        let mut v = Validator::new(Arc::new(ValidationRules::default()), n.catalog.clone());
        let now = EventTime::parse_rfc3339("2026-11-22T00:00:00Z").unwrap();
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let lineage = Lineage {
                    source: 0,
                    partition: 0,
                    offset: i as u64,
                    record: 0,
                };
                let event = v.validate(line.as_bytes(), lineage, now).unwrap();
                let period = n.period.period_of(event.time);
                let a = AcceptedEvent {
                    event,
                    service_period: period,
                    invoice_period: period,
                    arrival: Arrival::OnTime,
                };
                (i as Epoch, a)
            })
            .collect()
    }

    #[test]
    fn usage_events_are_sent_in_the_tables_order() {
        let n = names();
        let acme = |id: &str, sku: &str, unit: &str, time: &str| {
            event(id, "acme", "acme-2026", sku, unit, "1", time)
        };
        let globex = |id: &str, sku: &str, unit: &str, time: &str| {
            event(id, "globex", "globex-legacy", sku, unit, "1", time)
        };
        // Arrival order, unlike the table's: customers and SKUs out of order (`tokens` is
        // declared before `storage` in the catalog), and two events in one second whose ids
        // sort against their milliseconds (`event_time` is whole seconds in the table).
        let rows = accepted(
            &n,
            &[
                globex("g1", "api_calls", "requests", "2026-11-02T10:00:00Z"),
                acme("a-t", "tokens", "tokens", "2026-11-01T10:00:00Z"),
                acme("a-s", "storage", "GB", "2026-11-03T10:00:00Z"),
                acme("a-1", "api_calls", "requests", "2026-11-01T10:00:05.900Z"),
                acme("a-2", "api_calls", "requests", "2026-11-01T10:00:05.100Z"),
                acme("a-0", "api_calls", "requests", "2026-11-01T09:00:00Z"),
            ],
        );
        let labels = PeriodLabels::of(n.period, rows.iter().map(|(_, a)| a.service_period));
        let id = BatchId {
            generation: 1,
            batch: 1,
        };
        let as_sent = |rows: Vec<&(Epoch, AcceptedEvent)>| -> Vec<String> {
            assert!(in_table_order(
                "usage_events",
                rows.iter().map(|r| usage_row(&n, &labels, id, r))
            ));
            rows.iter()
                .map(|(_, a)| a.event.event_id.to_string())
                .collect()
        };
        assert!(!in_table_order(
            "usage_events",
            rows.iter().map(|r| usage_row(&n, &labels, id, r))
        ));
        assert_eq!(
            as_sent(usage_order(&n, &rows)),
            ["a-0", "a-1", "a-2", "a-s", "a-t", "g1"]
        );
    }

    #[test]
    fn usage_buckets_are_sent_in_the_tables_order() {
        let n = names();
        let c = &n.catalog;
        let change = |customer: &str, sku: &str, hour: i64, version: u64| Change {
            row: BucketRow {
                customer: c.customer(customer).unwrap(),
                sku: c.sku_or_invoice(sku).unwrap(),
                start: EventTime(hour * 3_600_000),
                usage: Bucket {
                    events: 1,
                    quantity: Quantity::parse("1").unwrap(),
                },
            },
            sign: 1,
            version,
            epoch: 0,
        };
        // SignedState hands them over in index order (catalog order), not by id.
        let changes = [
            change("acme", "tokens", 5, 1),
            change("acme", "storage", 5, 1),
            change("acme", "", 7, 1),
            change("globex", "api_calls", 3, 2),
            change("globex", "api_calls", 3, 1),
            change("acme", "tokens", 4, 1),
        ];
        let id = BatchId {
            generation: 1,
            batch: 1,
        };
        let sent = |rows: &[&Change<BucketRow>]| {
            in_table_order("usage_buckets", rows.iter().map(|r| bucket_row(&n, id, r)))
        };
        assert!(!sent(&changes.iter().collect::<Vec<_>>()));
        let ordered = bucket_order(&n, &changes);
        assert!(sent(&ordered));
        assert_eq!(ordered[0].row.sku, SkuIdx::INVOICE);
    }

    /// Derived-table rows out of every table's order: customers, SKUs, regions (`*` sorts
    /// before `eu-west-1`), service and invoice periods, rate-card versions, kinds, tiers and
    /// versions.
    fn line_keys(c: &Catalog, unit: PeriodUnit) -> Vec<(LineKey, Period, u64, u32)> {
        let period = |t: &str| unit.period_of(EventTime::parse_rfc3339(t).unwrap());
        let oct = period("2026-10-05T00:00:00Z");
        let nov = period("2026-11-05T00:00:00Z");
        let dec = period("2026-12-05T00:00:00Z");
        let key = |customer: &str, contract: &str, sku: &str, region: Option<&str>, p| LineKey {
            customer: c.customer(customer).unwrap(),
            contract: c.contract(contract).unwrap(),
            sku: c.sku_or_invoice(sku).unwrap(),
            region: region.map(|r| c.region(r).unwrap()),
            service_period: p,
        };
        let acme = |sku, region, service, invoice, version, choice| {
            let k = key("acme", "acme-2026", sku, region, service);
            (k, invoice, version, choice)
        };
        let globex = key("globex", "globex-legacy", "api_calls", None, nov);
        // (key, invoice period, version, which price); neighbours disagree on the columns that
        // follow the one deciding their order (the tier follows the version: see `tier`).
        vec![
            acme("api_calls", None, nov, nov, 3, 0),
            acme("api_calls", None, nov, nov, 4, 0),
            acme("api_calls", Some("eu-west-1"), oct, nov, 1, 0),
            acme("api_calls", None, oct, dec, 1, 0),
            (globex, nov, 1, 0),
            acme("tokens", None, nov, nov, 1, 1),
            acme("api_calls", Some("eu-west-1"), nov, nov, 1, 0),
            acme("api_calls", None, nov, nov, 2, 1),
            acme("api_calls", None, nov, nov, 1, 0),
            acme("api_calls", None, oct, nov, 1, 0),
            acme("api_calls", None, oct, oct, 1, 0),
            acme("", None, nov, nov, 1, 0),
        ]
    }

    /// A rated row's tier, against the grain of its version.
    fn tier(version: u64) -> u32 {
        (version % 2) as u32
    }

    fn change<R>(row: R, version: u64) -> Change<R> {
        Change {
            row,
            sign: 1,
            version,
            epoch: 0,
        }
    }

    /// Checks that rows are out of `table`'s order as built and in order as sent.
    macro_rules! sent_in_order {
        ($table:expr, $built:expr, $sent:expr, $row:expr) => {{
            assert!(!in_table_order($table, $built.iter().map($row)));
            assert!(in_table_order($table, $sent.into_iter().map($row)));
        }};
    }

    #[test]
    fn derived_rows_are_sent_in_their_tables_order() {
        let n = names();
        let c = &n.catalog;
        let v2 = PriceIdx(c.prices.iter().position(|p| p.version == 2).unwrap() as u32);
        let keys = line_keys(c, n.period);
        let labels = PeriodLabels::of(
            n.period,
            keys.iter().flat_map(|(k, p, ..)| [k.service_period, *p]),
        );
        let id = BatchId {
            generation: 1,
            batch: 1,
        };
        let price = |i: u32| if i == 1 { v2 } else { PriceIdx(0) };
        let (q, a) = (
            Quantity::parse("1").unwrap(),
            Amount::parse_price("1").unwrap(),
        );

        let lines: Vec<_> = keys
            .iter()
            .map(|&(key, invoice_period, version, i)| {
                let kind = [LineKind::Usage, LineKind::Adjustment][i as usize];
                let kind = if key.sku == SkuIdx::INVOICE {
                    LineKind::Tax
                } else {
                    kind
                };
                let line = InvoiceLine {
                    key,
                    invoice_period,
                    kind,
                    currency: "USD".into(),
                    events: 1,
                    quantity: q,
                    amount_exact: a,
                    amount: a,
                };
                change(line, version)
            })
            .collect();
        sent_in_order!(
            "invoice_lines",
            lines,
            line_order(&n, &labels, id, &lines),
            |l| line_row(&n, &labels, id, l)
        );

        let rated: Vec<_> = keys
            .iter()
            .map(|&(key, invoice_period, version, i)| {
                let row = RatedRow {
                    key,
                    invoice_period,
                    price: price(i),
                    tier: tier(version),
                    quantity: q,
                    amount: a,
                };
                change(row, version)
            })
            .collect();
        sent_in_order!(
            "rated_usage",
            rated,
            rated_order(&n, &labels, id, &rated),
            |r| rated_row(&n, &labels, id, r)
        );

        let usage: Vec<_> = keys
            .iter()
            .map(|&(key, invoice_period, version, i)| {
                let row = LineUsage {
                    key,
                    invoice_period,
                    price: price(i),
                    events: 1,
                    quantity: q,
                    fee_adjustment: Amount::ZERO,
                };
                change(row, version)
            })
            .collect();
        sent_in_order!(
            "line_usage",
            usage,
            line_usage_order(&n, &labels, id, &usage),
            |u| line_usage_row(&n, &labels, id, u)
        );
    }
}
