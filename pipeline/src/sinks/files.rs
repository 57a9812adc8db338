//! The embedded output: one directory per table under `--out`, one CSV file per worker
//! (`usage_events/part-0.csv`, ...), with a header row. Each worker writes the derived (signed)
//! rows of the customers it owns, consolidated per flush, with a `sign` column (+1 add, -1
//! retract) and a `version`: a customer's rows are all in one part.
//! Query them with anything that reads CSV, e.g. `clickhouse local`, DuckDB or pandas; see
//! `docs/outputs.md`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meterflow_operators::signed::Signed;
use meterflow_operators::signed::SignedState;
use meterflow_operators::sink::TableWriter;
use meterflow_operators::Epoch;
use meterflow_schemas::anomaly::{Anomaly, BucketRow};
use meterflow_schemas::catalog::{Catalog, CustomerIdx, SkuIdx};
use meterflow_schemas::event::{Environment, Metadata};
use meterflow_schemas::forecast::Forecasted;
use meterflow_schemas::ids::ContractIdx;
use meterflow_schemas::lag::Lagged;
use meterflow_schemas::lineage::Lineage;
use meterflow_schemas::marketplace::Exported;
use meterflow_schemas::money::{Amount, Quantity};
use meterflow_schemas::quarantine::Resolution;
use meterflow_schemas::reconcile::Reconciled;
use meterflow_schemas::rejection::Rejection;
use meterflow_schemas::revenue::{is_catch_up, Obligated, Scheduled};
use meterflow_schemas::rows::{
    AcceptedEvent, DuplicateRow, EntitlementSignal, InvoiceLine, LineKey, LineUsage, RatedRow,
};
use meterflow_schemas::scorecard::Scored;
use meterflow_schemas::tables::{self, Table};
use meterflow_schemas::time::{EventTime, Period, PeriodUnit};

use crate::sinks::Kept;

/// What every writer needs to turn indices back into names.
pub struct Names {
    pub catalog: Arc<Catalog>,
    pub billable_environments: Vec<String>,
    pub period: PeriodUnit,
    /// The catalog's ids as CSV fields, quoted where they must be and each followed by its
    /// comma: rows name them constantly, so each is escaped once instead of once per row.
    fields: CatalogFields,
}

/// A CSV field as a row holds it: escaped, and followed by its comma.
type Field = Box<[u8]>;

struct CatalogFields {
    customers: Vec<Field>,
    contracts: Vec<Field>,
    /// Per SKU: its id and its unit.
    skus: Vec<(Field, Field)>,
}

fn as_field(s: &str) -> Field {
    let mut f = Vec::with_capacity(s.len() + 1);
    field(&mut f, s);
    f.into_boxed_slice()
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
    for t in tables::outputs().map(|t| t.name) {
        let dir = out.join(t);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
    }
    Ok(())
}

fn csv_header(table: &Table) -> Result<&'static str, String> {
    table
        .csv
        .ok_or_else(|| format!("{} is not written to CSV files", table.name))
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
pub struct Labels(Vec<(Period, String)>);

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
    pub fn new(
        catalog: Arc<Catalog>,
        billable_environments: Vec<String>,
        period: PeriodUnit,
    ) -> Names {
        let fields = CatalogFields {
            customers: catalog.customers.iter().map(|c| as_field(&c.id)).collect(),
            contracts: catalog.contracts.iter().map(|c| as_field(&c.id)).collect(),
            skus: catalog
                .skus
                .iter()
                .map(|s| (as_field(&s.id), as_field(&s.unit)))
                .collect(),
        };
        Names {
            catalog,
            billable_environments,
            period,
            fields,
        }
    }

    fn customer(&self, row: &mut Vec<u8>, c: CustomerIdx) {
        row.extend_from_slice(&self.fields.customers[c.ix()]);
    }

    fn contract(&self, row: &mut Vec<u8>, c: ContractIdx) {
        row.extend_from_slice(&self.fields.contracts[c.ix()]);
    }

    /// An event's SKU: its id, then its unit.
    fn sku_and_unit(&self, row: &mut Vec<u8>, s: SkuIdx) {
        let (id, unit) = &self.fields.skus[s.ix()];
        row.extend_from_slice(id);
        row.extend_from_slice(unit);
    }

    /// A SKU's id (empty for [`SkuIdx::INVOICE`], as `Catalog::sku_id`).
    fn sku(&self, row: &mut Vec<u8>, s: SkuIdx) {
        if s == SkuIdx::INVOICE {
            row.push(b',');
        } else {
            row.extend_from_slice(&self.fields.skus[s.ix()].0);
        }
    }

    /// `source` is the input's index in `sources.csv`; `offset` the record's byte offset in it.
    fn lineage(&self, row: &mut Vec<u8>, l: Lineage) {
        int(row, l.source);
        int(row, l.offset);
    }

    fn line_key(&self, labels: &mut Labels, row: &mut Vec<u8>, k: &LineKey) {
        let c = &self.catalog;
        self.customer(row, k.customer);
        self.contract(row, k.contract);
        self.sku(row, k.sku);
        field(row, c.region_name(k.region));
        labels.write(self.period, row, k.service_period);
    }
}

/// A row of an output table, as its CSV files hold it (the columns of the table's CSV header).
pub trait CsvRow: 'static {
    /// Appends the row's fields, each followed by a comma.
    fn csv(&self, n: &Names, labels: &mut Labels, row: &mut Vec<u8>);
}

/// Writes each row as it arrives: the fact tables (`Shape::Facts`). Flushed when the input is
/// complete.
pub struct RowsWriter<D> {
    csv: CsvFile,
    names: Arc<Names>,
    labels: Labels,
    _rows: std::marker::PhantomData<fn(D)>,
}

impl<D: CsvRow> RowsWriter<D> {
    /// `worker`'s part of `table` under `out`.
    pub fn create(
        out: &Path,
        table: &'static Table,
        worker: usize,
        names: Arc<Names>,
    ) -> Result<Self, String> {
        Ok(RowsWriter {
            csv: CsvFile::create(part_path(out, table.name, worker), csv_header(table)?)?,
            names,
            labels: Labels::default(),
            _rows: std::marker::PhantomData,
        })
    }
}

impl<D: CsvRow> TableWriter<D> for RowsWriter<D> {
    fn write(&mut self, _: Epoch, rows: &mut Vec<D>) -> Result<(), String> {
        for r in rows.drain(..) {
            r.csv(&self.names, &mut self.labels, &mut self.csv.row);
            self.csv.end_row()?;
        }
        Ok(())
    }
    fn flush(&mut self, _: Option<Epoch>) -> Result<(), String> {
        self.csv.flush()
    }
}

const NO_METADATA: Metadata = Metadata {
    region: None,
    plan: None,
    marketplace: None,
    attributes: None,
};

impl CsvRow for AcceptedEvent {
    fn csv(&self, n: &Names, labels: &mut Labels, row: &mut Vec<u8>) {
        let a = self;
        let c = &n.catalog;
        let e = &a.event;
        field(row, &e.event_id);
        n.customer(row, e.customer);
        n.contract(row, e.contract);
        n.sku_and_unit(row, e.sku);
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
}

impl CsvRow for Rejection {
    fn csv(&self, n: &Names, _: &mut Labels, row: &mut Vec<u8>) {
        let r = self;
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
}

impl CsvRow for DuplicateRow {
    fn csv(&self, n: &Names, _: &mut Labels, row: &mut Vec<u8>) {
        let d = self;
        field(row, &d.event_id);
        time_field(row, d.time);
        n.lineage(row, d.lineage);
    }
}

/// A signed table (`Shape::Signed`): consolidates the dataflow's updates per pricing round and
/// writes the changes at each flush (retractions first); `version` is the round that inserted a
/// row (for a retraction: the row it cancels).
pub struct SignedWriter<R: Ord + Clone> {
    csv: CsvFile,
    names: Arc<Names>,
    state: SignedState<R>,
    /// Receives the rows held at the end of the run (see [`HeldRows`]).
    kept: Option<Kept<R>>,
    labels: Labels,
}

impl<R: Ord + Clone + CsvRow> SignedWriter<R> {
    /// `worker`'s part of `table` under `out`, starting from `state`.
    pub fn create(
        out: &Path,
        table: &'static Table,
        worker: usize,
        names: Arc<Names>,
        state: SignedState<R>,
        kept: Option<Kept<R>>,
    ) -> Result<SignedWriter<R>, String> {
        Ok(SignedWriter {
            csv: CsvFile::create(part_path(out, table.name, worker), csv_header(table)?)?,
            names,
            state,
            kept,
            labels: Labels::default(),
        })
    }
}

impl<R: Ord + Clone + CsvRow> TableWriter<Signed<R>> for SignedWriter<R> {
    fn write(&mut self, _: Epoch, rows: &mut Vec<Signed<R>>) -> Result<(), String> {
        self.state.extend(rows.drain(..));
        Ok(())
    }

    fn flush(&mut self, frontier: Option<Epoch>) -> Result<(), String> {
        let (csv, names, labels) = (&mut self.csv, &self.names, &mut self.labels);
        let mut written = false;
        self.state.drain(frontier, |c| {
            written = true;
            c.row.csv(names, labels, &mut csv.row);
            csv.row
                .extend_from_slice(if c.sign > 0 { b"1," } else { b"-1," });
            int(&mut csv.row, c.version);
            csv.end_row()
        })?;
        // The preview reads the rows once the run is over: copying them at every flush would
        // cost a copy of the whole table each time.
        if let (None, Some(kept)) = (frontier, &self.kept) {
            kept.set(self.state.held());
        }
        if written {
            self.csv.flush()?;
        }
        Ok(())
    }
}

impl CsvRow for InvoiceLine {
    fn csv(&self, n: &Names, labels: &mut Labels, row: &mut Vec<u8>) {
        let l = self;
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
}

impl CsvRow for RatedRow {
    fn csv(&self, n: &Names, labels: &mut Labels, row: &mut Vec<u8>) {
        let r = self;
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
}

impl CsvRow for EntitlementSignal {
    fn csv(&self, n: &Names, labels: &mut Labels, row: &mut Vec<u8>) {
        let e = self;
        n.customer(row, e.customer);
        n.contract(row, e.contract);
        n.sku(row, e.sku);
        labels.write(n.period, row, e.period);
        field(row, e.kind.as_str());
        int(row, e.percent);
        scaled(row, e.at.0, Quantity::SCALE);
        scaled(row, e.allowance.0, Quantity::SCALE);
    }
}

impl CsvRow for BucketRow {
    fn csv(&self, n: &Names, _: &mut Labels, row: &mut Vec<u8>) {
        let b = self;
        n.customer(row, b.customer);
        n.sku(row, b.sku);
        time_field(row, b.start);
        int(row, b.usage.events);
        scaled(row, b.usage.quantity.0, Quantity::SCALE);
    }
}

impl CsvRow for Anomaly {
    fn csv(&self, n: &Names, _: &mut Labels, row: &mut Vec<u8>) {
        let a = self;
        let c = &n.catalog;
        n.customer(row, a.customer);
        n.sku(row, a.sku);
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
}

impl CsvRow for LineUsage {
    fn csv(&self, n: &Names, labels: &mut Labels, row: &mut Vec<u8>) {
        let u = self;
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
}

impl CsvRow for Reconciled {
    fn csv(&self, _: &Names, _: &mut Labels, row: &mut Vec<u8>) {
        let l = &self.line;
        time_field(row, self.checked_at);
        for v in [
            &self.run_id,
            self.check,
            &l.customer_id,
            &l.contract_id,
            &l.sku,
        ] {
            field(row, v);
        }
        for v in [
            &l.region,
            &l.service_period,
            &l.invoice_period,
            &self.signal,
            &self.line_type,
        ] {
            field(row, v);
        }
        int(row, self.expected.events);
        int(row, self.billed.events);
        scaled(row, self.expected.quantity.0, Quantity::SCALE);
        scaled(row, self.billed.quantity.0, Quantity::SCALE);
        field(row, &self.currency);
        let expected = self.expected_money.unwrap_or_default();
        scaled(row, expected.billed.0, Amount::SCALE);
        scaled(row, self.billed_money.billed.0, Amount::SCALE);
        scaled(row, expected.exact.0, Amount::SCALE);
        scaled(row, self.billed_money.exact.0, Amount::SCALE);
        int(row, u8::from(self.drifts()));
        field(
            row,
            &if self.drifts() {
                self.event_ids.join(" ")
            } else {
                String::new()
            },
        );
    }
}

impl CsvRow for Scored {
    fn csv(&self, _: &Names, _: &mut Labels, row: &mut Vec<u8>) {
        time_field(row, self.computed_at);
        let k = &self.key;
        for v in [
            &self.run_id,
            self.measure,
            &self.cause,
            &k.period,
            &k.customer_id,
            &k.sku,
            &self.currency,
        ] {
            field(row, v);
        }
        int(row, self.counted.events);
        scaled(row, self.counted.quantity.0, Quantity::SCALE);
        scaled(row, self.counted.amount.0, Amount::SCALE);
    }
}

impl CsvRow for Exported {
    fn csv(&self, _: &Names, _: &mut Labels, row: &mut Vec<u8>) {
        time_field(row, self.exported_at);
        for v in [
            &self.export_id,
            &self.marketplace,
            &self.listing,
            &self.product,
            &self.contract_id,
            &self.customer_id,
            &self.marketplace_customer,
            &self.sku,
            &self.dimension,
        ] {
            field(row, v);
        }
        time_field(row, self.usage_hour);
        time_field(row, self.record_time);
        field(row, &self.record_kind);
        scaled(row, self.quantity.0, Quantity::SCALE);
        for v in [
            &self.record_key,
            &self.status,
            &self.request,
            &self.response_id,
            &self.detail,
            &self.allocations,
        ] {
            field(row, v);
        }
    }
}

impl CsvRow for Scheduled {
    fn csv(&self, _: &Names, _: &mut Labels, row: &mut Vec<u8>) {
        time_field(row, self.computed_at);
        let k = &self.key;
        for v in [
            &self.run_id,
            &k.customer_id,
            &k.contract_id,
            &k.obligation,
            &k.service_period,
            &k.period,
            &k.currency,
        ] {
            field(row, v);
        }
        int(row, u8::from(is_catch_up(k)));
        let a = &self.amounts;
        for v in [a.billed, a.recognised, a.deferred, a.unbilled] {
            scaled(row, v.0, Amount::SCALE);
        }
        int(row, self.sign);
    }
}

impl CsvRow for Obligated {
    fn csv(&self, _: &Names, _: &mut Labels, row: &mut Vec<u8>) {
        time_field(row, self.computed_at);
        field(row, &self.run_id);
        time_field(row, self.as_of);
        let r = &self.remaining;
        for v in [&r.customer, &r.contract, &r.currency] {
            field(row, v);
        }
        for v in [r.within, r.total] {
            scaled(row, v.0, Amount::SCALE);
        }
    }
}

impl CsvRow for Forecasted {
    fn csv(&self, _: &Names, _: &mut Labels, row: &mut Vec<u8>) {
        time_field(row, self.computed_at);
        field(row, &self.run_id);
        time_field(row, self.as_of);
        let k = &self.key;
        for v in [&k.month, k.stream, &k.sku, &k.segment, &k.currency] {
            field(row, v);
        }
        let f = &self.forecast;
        scaled(row, f.quantity.0, Quantity::SCALE);
        for v in [f.amount, f.low, f.high] {
            scaled(row, v.0, Amount::SCALE);
        }
    }
}

impl CsvRow for Resolution {
    fn csv(&self, _: &Names, _: &mut Labels, row: &mut Vec<u8>) {
        time_field(row, self.resolved_at);
        for v in [
            &self.run_id,
            &self.event_id,
            &self.reason,
            &self.rejected_source,
        ] {
            field(row, v);
        }
        int(row, self.rejected_offset);
        field(row, &self.replay_source);
        int(row, self.replay_offset);
        int(row, self.sign);
    }
}

impl CsvRow for Lagged {
    fn csv(&self, _: &Names, _: &mut Labels, row: &mut Vec<u8>) {
        time_field(row, self.computed_at);
        for v in [&self.run_id, &self.period, &self.source] {
            field(row, v);
        }
        int(row, self.partition);
        field(row, self.stage);
        let s = &self.summary;
        for v in [s.events, s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms] {
            int(row, v);
        }
    }
}

/// Replaces `out/<table>/` with `rows`: the tables a report (reconcile, scorecard) writes.
pub fn replace_table<R: CsvRow>(
    out: &Path,
    table: &'static Table,
    catalog: Arc<Catalog>,
    period: PeriodUnit,
    mut rows: Vec<R>,
) -> Result<(), String> {
    let dir = out.join(table.name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let names = Arc::new(Names::new(catalog, Vec::new(), period));
    let mut w = RowsWriter::<R>::create(out, table, 0, names)?;
    w.write(0, &mut rows)?;
    w.flush(None)
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
