//! The embedded output: one directory per table under `--out`, one CSV file per worker
//! (`usage_events/part-0.csv`, ...), with a header row. Derived tables are written by worker 0
//! only, consolidated per flush, with a `sign` column (+1 add, -1 retract) and the flush `batch`.
//! Query them with anything that reads CSV, e.g. `clickhouse local`, DuckDB or pandas; see
//! `docs/outputs.md`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use meterflow_operators::signed::Signed;
use meterflow_operators::signed::{Horizon, SignedState};
use meterflow_operators::sink::TableWriter;
use meterflow_operators::Epoch;
use meterflow_schemas::anomaly::{Anomaly, BucketRow};
use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::event::{Environment, Metadata};
use meterflow_schemas::lineage::Lineage;
use meterflow_schemas::money::{Amount, Quantity};
use meterflow_schemas::rejection::Rejection;
use meterflow_schemas::rows::{
    AcceptedEvent, DuplicateRow, EntitlementSignal, InvoiceLine, LineKey, LineUsage, RatedRow,
};
use meterflow_schemas::time::{EventTime, Period, PeriodUnit};

pub const TABLES: [&str; 10] = [
    "usage_events",
    "rejections",
    "duplicates",
    "rated_usage",
    "invoice_lines",
    "line_usage",
    "entitlement_signals",
    "shadow_invoice_lines",
    "usage_buckets",
    "anomalies",
];

const USAGE_HEADER: &str = "event_id,customer_id,contract_id,sku,unit,quantity,event_time,environment,billable,region,plan,marketplace,attributes,correction_action,correction_of,rate_card,rate_card_version,price_region,service_period,invoice_period,arrival,source,offset,kafka_key,kafka_headers";
const REJECTION_HEADER: &str =
    "reason,field,message,remediation,event_id,source,offset,raw_payload,kafka_key,kafka_headers";
const DUPLICATE_HEADER: &str = "event_id,event_time,source,offset";
const RATED_HEADER: &str = "customer_id,contract_id,sku,region,service_period,invoice_period,rate_card,rate_card_version,model,tier,quantity,amount,currency,sign,version";
const LINE_USAGE_HEADER: &str = "customer_id,contract_id,sku,region,service_period,invoice_period,rate_card,rate_card_version,events,quantity,fee_adjustment,sign,version";
const SIGNAL_HEADER: &str =
    "customer_id,contract_id,sku,period,signal,percent,at_quantity,allowance,sign,version";
const BUCKET_HEADER: &str = "customer_id,sku,bucket_start,events,quantity,sign,version";
const ANOMALY_HEADER: &str = "customer_id,sku,kind,window_start,window_end,observed,expected,score,severity,baseline,explanation,sign,version";
const INVOICE_HEADER: &str = "customer_id,contract_id,sku,region,service_period,invoice_period,line_type,currency,events,quantity,amount,amount_exact,sign,version";

/// What every writer needs to turn indices back into names.
pub struct Names {
    pub catalog: Arc<Catalog>,
    pub billable_environments: Vec<String>,
    pub period: PeriodUnit,
}

/// `sources.csv`: the inputs of the run, by the index the tables' `source` column uses.
pub fn write_sources(out: &Path, sources: &[String]) -> std::io::Result<()> {
    let mut row = b"source,path\n".to_vec();
    for (i, s) in sources.iter().enumerate() {
        int(&mut row, i);
        field(&mut row, s);
        let last = row.len() - 1;
        row[last] = b'\n';
    }
    std::fs::write(out.join("sources.csv"), row)
}

/// Removes the table directories of an earlier run, so stale parts never mix with new ones.
pub fn prepare_out_dir(out: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    for t in TABLES {
        let dir = out.join(t);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
    }
    Ok(())
}

fn part_path(out: &Path, table: &str, worker: usize) -> PathBuf {
    out.join(table).join(format!("part-{worker}.csv"))
}

/// A CSV file being written.
struct CsvFile {
    out: BufWriter<File>,
    row: Vec<u8>,
    path: PathBuf,
}

impl CsvFile {
    fn create(path: PathBuf, header: &str) -> Result<CsvFile, String> {
        let file =
            File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(header.as_bytes())
            .and_then(|_| out.write_all(b"\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(CsvFile {
            out,
            row: Vec::with_capacity(512),
            path,
        })
    }

    fn end_row(&mut self) -> Result<(), String> {
        let last = self.row.len() - 1;
        self.row[last] = b'\n';
        let r = self
            .out
            .write_all(&self.row)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()));
        self.row.clear();
        r
    }

    fn flush(&mut self) -> Result<(), String> {
        self.out
            .flush()
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}

/// Appends a CSV field and a comma, quoting when needed.
fn field(row: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        row.push(b'"');
        for b in s.bytes() {
            if b == b'"' {
                row.push(b'"');
            }
            row.push(b);
        }
        row.push(b'"');
    } else {
        row.extend_from_slice(s.as_bytes());
    }
    row.push(b',');
}

/// Appends an integer and a comma.
fn int(row: &mut Vec<u8>, v: impl itoa::Integer) {
    row.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    row.push(b',');
}

/// Appends a fixed-point value (`v / 10^scale`) without trailing zeros, and a comma.
fn scaled(row: &mut Vec<u8>, v: i128, scale: u32) {
    meterflow_schemas::money::push_scaled(row, v, scale);
    row.push(b',');
}

/// Period labels, cached: a writer sees the same few periods over and over.
#[derive(Default)]
struct Labels(Vec<(Period, String)>);

impl Labels {
    fn write(&mut self, unit: PeriodUnit, row: &mut Vec<u8>, p: Period) {
        let label = match self.0.iter().position(|(q, _)| *q == p) {
            Some(i) => &self.0[i].1,
            None => {
                if self.0.len() >= 8 {
                    self.0.remove(0);
                }
                self.0.push((p, unit.label(p)));
                &self.0[self.0.len() - 1].1
            }
        };
        row.extend_from_slice(label.as_bytes());
        row.push(b',');
    }
}

/// RFC 3339 with milliseconds, without going through `fmt`.
fn time_field(row: &mut Vec<u8>, t: EventTime) {
    let c = t.civil();
    let mut b = *b"0000-00-00T00:00:00.000Z,";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (0..width).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, c.year.clamp(0, 9999) as u64);
    put(5, 2, c.month as u64);
    put(8, 2, c.day as u64);
    put(11, 2, c.hour as u64);
    put(14, 2, c.minute as u64);
    put(17, 2, c.second as u64);
    put(20, 3, c.millis as u64);
    row.extend_from_slice(&b);
}

impl Names {
    /// `source` is the input's index in `sources.csv`; `offset` the record's byte offset in it.
    fn lineage(&self, row: &mut Vec<u8>, l: Lineage) {
        int(row, l.source);
        int(row, l.offset);
    }

    fn line_key(&self, labels: &mut Labels, row: &mut Vec<u8>, k: &LineKey) {
        let c = &self.catalog;
        field(row, &c.customers[k.customer.ix()].id);
        field(row, &c.contracts[k.contract.ix()].id);
        field(row, c.sku_id(k.sku));
        field(row, c.region_name(k.region));
        labels.write(self.period, row, k.service_period);
    }
}

/// Formats one row of a table into the row buffer.
type Format<D> = fn(&Names, &mut Labels, &D, &mut Vec<u8>);

/// Writes each row as it arrives: the per-worker tables (`usage_events`, `rejections`,
/// `duplicates`). Flushed when the input is complete.
pub struct RowsWriter<D> {
    csv: CsvFile,
    names: Arc<Names>,
    labels: Labels,
    format: Format<D>,
}

impl<D> RowsWriter<D> {
    fn create(
        out: &Path,
        table: &str,
        header: &str,
        worker: usize,
        names: Arc<Names>,
        format: Format<D>,
    ) -> Result<Self, String> {
        Ok(RowsWriter {
            csv: CsvFile::create(part_path(out, table, worker), header)?,
            names,
            labels: Labels::default(),
            format,
        })
    }
}

impl<D: 'static> TableWriter<D> for RowsWriter<D> {
    fn write(&mut self, _: Epoch, rows: &mut Vec<D>) -> Result<(), String> {
        for r in rows.drain(..) {
            (self.format)(&self.names, &mut self.labels, &r, &mut self.csv.row);
            self.csv.end_row()?;
        }
        Ok(())
    }
    fn flush(&mut self, _: Option<Epoch>) -> Result<(), String> {
        self.csv.flush()
    }
}

/// `usage_events`: every accepted event, one row each.
pub fn usage_events_writer(
    out: &Path,
    worker: usize,
    names: Arc<Names>,
) -> Result<RowsWriter<AcceptedEvent>, String> {
    RowsWriter::create(
        out,
        "usage_events",
        USAGE_HEADER,
        worker,
        names,
        format_usage_event,
    )
}

/// `rejections`: every bad record with reason, remediation and the raw payload.
pub fn rejections_writer(
    out: &Path,
    worker: usize,
    names: Arc<Names>,
) -> Result<RowsWriter<Rejection>, String> {
    RowsWriter::create(
        out,
        "rejections",
        REJECTION_HEADER,
        worker,
        names,
        format_rejection,
    )
}

/// `duplicates`: every record recognised as a retry of an accepted event.
pub fn duplicates_writer(
    out: &Path,
    worker: usize,
    names: Arc<Names>,
) -> Result<RowsWriter<DuplicateRow>, String> {
    RowsWriter::create(
        out,
        "duplicates",
        DUPLICATE_HEADER,
        worker,
        names,
        format_duplicate,
    )
}

const NO_METADATA: Metadata = Metadata {
    region: None,
    plan: None,
    marketplace: None,
    attributes: None,
};

fn format_usage_event(n: &Names, labels: &mut Labels, a: &AcceptedEvent, row: &mut Vec<u8>) {
    let c = &n.catalog;
    let e = &a.event;
    field(row, &e.event_id);
    field(row, &c.customers[e.customer.ix()].id);
    field(row, &c.contracts[e.contract.ix()].id);
    let sku = &c.skus[e.sku.ix()];
    field(row, &sku.id);
    field(row, &sku.unit);
    scaled(row, e.quantity.0, Quantity::SCALE);
    time_field(row, e.time);
    match &e.environment {
        Environment::Billable(i) => field(row, &n.billable_environments[*i as usize]),
        Environment::Other(name) => field(row, name),
    }
    row.extend_from_slice(if e.billable() { b"1," } else { b"0," });
    let m = e.metadata.as_deref().unwrap_or(&NO_METADATA);
    for v in [&m.region, &m.plan, &m.marketplace, &m.attributes] {
        field(row, v.as_deref().unwrap_or(""));
    }
    match &e.correction {
        Some(k) => {
            field(row, k.action.as_str());
            field(row, &k.original_event_id);
        }
        None => row.extend_from_slice(b",,"),
    }
    let price = c.price(e.price);
    field(row, &c.rate_cards[price.rate_card.ix()].id);
    int(row, price.version);
    field(row, c.region_name(price.region));
    labels.write(n.period, row, a.service_period);
    labels.write(n.period, row, a.invoice_period);
    field(row, a.arrival.as_str());
    n.lineage(row, e.lineage);
    let k = e.kafka.as_deref();
    field(row, k.map_or("", |k| k.key.as_str()));
    field(row, k.map_or("", |k| k.headers.as_str()));
}

fn format_rejection(n: &Names, _: &mut Labels, r: &Rejection, row: &mut Vec<u8>) {
    field(row, r.reason.code());
    field(row, r.field.as_deref().unwrap_or(""));
    field(row, &r.message);
    field(row, r.reason.remediation());
    field(row, r.event_id.as_deref().unwrap_or(""));
    n.lineage(row, r.lineage);
    field(row, &r.raw);
    let k = r.kafka.as_deref();
    field(row, k.map_or("", |k| k.key.as_str()));
    field(row, k.map_or("", |k| k.headers.as_str()));
}

fn format_duplicate(n: &Names, _: &mut Labels, d: &DuplicateRow, row: &mut Vec<u8>) {
    field(row, &d.event_id);
    time_field(row, d.time);
    n.lineage(row, d.lineage);
}

/// A signed table: consolidates the dataflow's updates per pricing round and writes the changes
/// at each flush (retractions first); `version` is the round that inserted a row (for a
/// retraction: the row it cancels). `invoice_lines` shares the rows it holds at the end, for
/// the preview.
pub struct SignedWriter<R: Ord + Clone> {
    csv: CsvFile,
    names: Arc<Names>,
    state: SignedState<R>,
    current: Option<Arc<HeldRows<R>>>,
    worker: usize,
    labels: Labels,
    format: Format<R>,
}

impl<R: Ord + Clone + 'static> TableWriter<Signed<R>> for SignedWriter<R> {
    fn write(&mut self, _: Epoch, rows: &mut Vec<Signed<R>>) -> Result<(), String> {
        for (r, epoch, diff) in rows.drain(..) {
            self.state.update(r, epoch, diff);
        }
        Ok(())
    }

    fn flush(&mut self, frontier: Option<Epoch>) -> Result<(), String> {
        let changes = self.state.changes(frontier);
        // The preview reads the rows once the run is over: copying them at every flush would
        // cost a copy of the whole table each time.
        if let (None, Some(current)) = (frontier, &self.current) {
            current.set(self.worker, self.state.held());
        }
        if changes.is_empty() {
            return Ok(());
        }
        for c in changes {
            (self.format)(&self.names, &mut self.labels, &c.row, &mut self.csv.row);
            self.csv
                .row
                .extend_from_slice(if c.sign > 0 { b"1," } else { b"-1," });
            int(&mut self.csv.row, c.version);
            self.csv.end_row()?;
        }
        self.csv.flush()
    }
}

fn format_invoice_line(n: &Names, labels: &mut Labels, l: &InvoiceLine, row: &mut Vec<u8>) {
    n.line_key(labels, row, &l.key);
    labels.write(n.period, row, l.invoice_period);
    field(row, l.kind.as_str());
    field(row, &l.currency);
    int(row, l.events);
    scaled(row, l.quantity.0, Quantity::SCALE);
    let digits = meterflow_schemas::money::minor_unit_digits(&l.currency);
    field(row, &l.amount.format_fixed(digits));
    scaled(row, l.amount_exact.0, Amount::SCALE);
}

fn format_rated(n: &Names, labels: &mut Labels, r: &RatedRow, row: &mut Vec<u8>) {
    let c = &n.catalog;
    n.line_key(labels, row, &r.key);
    labels.write(n.period, row, r.invoice_period);
    let price = c.price(r.price);
    field(row, &c.rate_cards[price.rate_card.ix()].id);
    int(row, price.version);
    field(row, price.model.name());
    int(row, r.tier + 1);
    scaled(row, r.quantity.0, Quantity::SCALE);
    scaled(row, r.amount.0, Amount::SCALE);
    field(row, &price.currency);
}

/// The rows each worker's signed writer holds after its latest flush (for the preview). Workers
/// hold disjoint rows; [`HeldRows::all`] merges them.
pub struct HeldRows<R>(Mutex<BTreeMap<usize, BTreeMap<R, isize>>>);

impl<R> Default for HeldRows<R> {
    fn default() -> Self {
        HeldRows(Mutex::new(BTreeMap::new()))
    }
}

impl<R: Ord + Clone> HeldRows<R> {
    pub fn new() -> Arc<HeldRows<R>> {
        Arc::default()
    }

    /// Replaces what `worker` holds.
    pub fn set<'a>(&self, worker: usize, rows: impl Iterator<Item = (&'a R, isize)>)
    where
        R: 'a,
    {
        let rows = rows.map(|(r, n)| (r.clone(), n)).collect();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(worker, rows);
    }

    /// What every worker holds.
    pub fn all(&self) -> BTreeMap<R, isize> {
        let by_worker = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = BTreeMap::new();
        for rows in by_worker.values() {
            for (r, n) in rows {
                *all.entry(r.clone()).or_insert(0) += n;
            }
        }
        all.retain(|_, n| *n != 0);
        all
    }
}

fn signed_writer<R: Ord + Clone>(
    out: &Path,
    table: &str,
    header: &str,
    worker: usize,
    names: Arc<Names>,
    current: Option<Arc<HeldRows<R>>>,
    format: Format<R>,
) -> Result<SignedWriter<R>, String> {
    Ok(SignedWriter {
        csv: CsvFile::create(part_path(out, table, worker), header)?,
        names,
        state: SignedState::default(),
        current,
        worker,
        labels: Labels::default(),
        format,
    })
}

/// `invoice_lines`; `current` receives the lines it holds after each flush.
pub fn invoice_lines_writer(
    out: &Path,
    worker: usize,
    names: Arc<Names>,
    current: Arc<HeldRows<InvoiceLine>>,
) -> Result<SignedWriter<InvoiceLine>, String> {
    signed_writer(
        out,
        "invoice_lines",
        INVOICE_HEADER,
        worker,
        names,
        Some(current),
        format_invoice_line,
    )
}

/// `shadow_invoice_lines`: invoice lines under the contracts' shadow rate cards.
pub fn shadow_invoice_lines_writer(
    out: &Path,
    worker: usize,
    names: Arc<Names>,
) -> Result<SignedWriter<InvoiceLine>, String> {
    signed_writer(
        out,
        "shadow_invoice_lines",
        INVOICE_HEADER,
        worker,
        names,
        None,
        format_invoice_line,
    )
}

pub fn rated_usage_writer(
    out: &Path,
    worker: usize,
    names: Arc<Names>,
) -> Result<SignedWriter<RatedRow>, String> {
    signed_writer(
        out,
        "rated_usage",
        RATED_HEADER,
        worker,
        names,
        None,
        format_rated,
    )
}

pub fn line_usage_writer(
    out: &Path,
    worker: usize,
    names: Arc<Names>,
) -> Result<SignedWriter<LineUsage>, String> {
    signed_writer(
        out,
        "line_usage",
        LINE_USAGE_HEADER,
        worker,
        names,
        None,
        format_line_usage,
    )
}

fn format_signal(n: &Names, labels: &mut Labels, e: &EntitlementSignal, row: &mut Vec<u8>) {
    let c = &n.catalog;
    field(row, &c.customers[e.customer.ix()].id);
    field(row, &c.contracts[e.contract.ix()].id);
    field(row, c.sku_id(e.sku));
    labels.write(n.period, row, e.period);
    field(row, e.kind.as_str());
    int(row, e.percent);
    scaled(row, e.at.0, Quantity::SCALE);
    scaled(row, e.allowance.0, Quantity::SCALE);
}

pub fn entitlement_signals_writer(
    out: &Path,
    worker: usize,
    names: Arc<Names>,
) -> Result<SignedWriter<EntitlementSignal>, String> {
    signed_writer(
        out,
        "entitlement_signals",
        SIGNAL_HEADER,
        worker,
        names,
        None,
        format_signal,
    )
}

fn format_bucket(n: &Names, _: &mut Labels, b: &BucketRow, row: &mut Vec<u8>) {
    let c = &n.catalog;
    field(row, &c.customers[b.customer.ix()].id);
    field(row, c.sku_id(b.sku));
    time_field(row, b.start);
    int(row, b.usage.events);
    scaled(row, b.usage.quantity.0, Quantity::SCALE);
}

/// `horizon`: how long a bucket row can still change (see `SignedState::forgetting`).
pub fn usage_buckets_writer(
    out: &Path,
    worker: usize,
    names: Arc<Names>,
    horizon: Horizon<BucketRow>,
) -> Result<SignedWriter<BucketRow>, String> {
    let mut w = signed_writer(
        out,
        "usage_buckets",
        BUCKET_HEADER,
        worker,
        names,
        None,
        format_bucket,
    )?;
    w.state = std::mem::take(&mut w.state).forgetting(horizon);
    Ok(w)
}

fn format_anomaly(n: &Names, _: &mut Labels, a: &Anomaly, row: &mut Vec<u8>) {
    let c = &n.catalog;
    field(row, &c.customers[a.customer.ix()].id);
    field(row, c.sku_id(a.sku));
    field(row, a.kind.as_str());
    time_field(row, a.start);
    time_field(row, a.end);
    scaled(row, a.observed.0, Quantity::SCALE);
    scaled(row, a.expected.0, Quantity::SCALE);
    scaled(row, a.score_centi as i128, 2);
    field(row, a.severity.as_str());
    field(row, &a.baseline.label());
    field(row, &a.explain(c));
}

pub fn anomalies_writer(
    out: &Path,
    worker: usize,
    names: Arc<Names>,
) -> Result<SignedWriter<Anomaly>, String> {
    signed_writer(
        out,
        "anomalies",
        ANOMALY_HEADER,
        worker,
        names,
        None,
        format_anomaly,
    )
}

fn format_line_usage(n: &Names, labels: &mut Labels, u: &LineUsage, row: &mut Vec<u8>) {
    let c = &n.catalog;
    n.line_key(labels, row, &u.key);
    labels.write(n.period, row, u.invoice_period);
    let price = c.price(u.price);
    field(row, &c.rate_cards[price.rate_card.ix()].id);
    int(row, price.version);
    int(row, u.events);
    scaled(row, u.quantity.0, Quantity::SCALE);
    scaled(row, u.fee_adjustment.0, Amount::SCALE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let mut row = Vec::new();
        field(&mut row, "plain");
        field(&mut row, "a,b");
        field(&mut row, "say \"hi\"\nbye");
        assert_eq!(
            String::from_utf8(row).unwrap(),
            "plain,\"a,b\",\"say \"\"hi\"\"\nbye\","
        );
    }

    #[test]
    fn times_match_the_display_form() {
        for ms in [0i64, 1_794_268_800_123, 951_782_400_000, 4_102_444_799_999] {
            let mut row = Vec::new();
            time_field(&mut row, EventTime(ms));
            assert_eq!(
                String::from_utf8(row).unwrap(),
                format!("{},", EventTime(ms))
            );
        }
    }
}
