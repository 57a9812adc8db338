//! The invoice preview: the current draft invoice per customer and invoice period — its lines,
//! then usage, subscription, discounts, commitment true-up, cap, subtotal, tax and total per
//! currency. Rendered at the end of a run, and by `meterflow invoice preview` from a run's
//! output directory or from ClickHouse.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::money::{minor_unit_digits, Amount, Rounding};
use meterflow_schemas::pricing::invoice::{fees_billed, replay_credit, CreditReplay};
use meterflow_schemas::rows::{InvoiceLine, LineKind};
use meterflow_schemas::time::{EventTime, PeriodUnit};

use crate::sinks::clickhouse::client::{sql_string, ClickHouse};

/// One current invoice line, by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PreviewLine {
    pub customer: String,
    pub invoice_period: String,
    pub contract: String,
    pub kind: LineKind,
    /// Empty for lines about the whole invoice.
    pub sku: String,
    pub service_period: String,
    pub region: String,
    pub events: i64,
    /// As written in the tables (exact decimal text).
    pub quantity: String,
    pub amount: Amount,
    pub currency: String,
}

/// Which invoices to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub customer: Option<String>,
    pub period: Option<String>,
}

impl Filter {
    pub fn keeps(&self, l: &PreviewLine) -> bool {
        self.customer.as_ref().is_none_or(|c| *c == l.customer)
            && self.period.as_ref().is_none_or(|p| *p == l.invoice_period)
    }
}

/// The preview of a run's current lines (rows with a positive net multiplicity).
pub fn render(
    lines: &BTreeMap<InvoiceLine, isize>,
    catalog: &Catalog,
    period: PeriodUnit,
) -> String {
    let rows = lines
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(l, _)| PreviewLine {
            customer: catalog.customers[l.key.customer.ix()].id.clone(),
            invoice_period: period.label(l.invoice_period),
            contract: catalog.contracts[l.key.contract.ix()].id.clone(),
            kind: l.kind,
            sku: catalog.sku_id(l.key.sku).to_string(),
            service_period: period.label(l.key.service_period),
            region: catalog.region_name(l.key.region).to_string(),
            events: l.events,
            quantity: l.quantity.to_string(),
            amount: l.amount,
            currency: l.currency.to_string(),
        })
        .collect();
    render_lines(rows, Some(catalog), period, &Filter::default())
}

/// The current lines of a run's output directory (its `invoice_lines` table).
pub fn from_output(out: &Path, filter: &Filter) -> Result<Vec<PreviewLine>, String> {
    table_from_output(out, "invoice_lines", filter)
}

/// The current lines of `table` (`invoice_lines` or `shadow_invoice_lines`) of a run's output.
pub fn table_from_output(
    out: &Path,
    table: &str,
    filter: &Filter,
) -> Result<Vec<PreviewLine>, String> {
    let rows = crate::reports::tables::read_table(out, table).map_err(|e| {
        format!(
            "cannot read {}: {e}; pass the output directory of a run (-o)",
            out.join(table).display()
        )
    })?;
    let get = |r: &crate::reports::tables::Row, k: &str| r.get(k).cloned().unwrap_or_default();
    let mut lines = Vec::new();
    for r in crate::reports::tables::current_rows(&rows) {
        let line = PreviewLine {
            customer: get(&r, "customer_id"),
            invoice_period: get(&r, "invoice_period"),
            contract: get(&r, "contract_id"),
            kind: parse_kind(&get(&r, "line_type"))?,
            sku: get(&r, "sku"),
            service_period: get(&r, "service_period"),
            region: get(&r, "region"),
            events: get(&r, "events").parse().unwrap_or(0),
            quantity: get(&r, "quantity"),
            amount: Amount::parse(&get(&r, "amount"))
                .map_err(|e| format!("invoice_lines: amount `{}`: {e}", get(&r, "amount")))?,
            currency: get(&r, "currency"),
        };
        if filter.keeps(&line) {
            lines.push(line);
        }
    }
    Ok(lines)
}

/// The current lines in ClickHouse.
pub fn from_clickhouse(ch: &ClickHouse, filter: &Filter) -> Result<Vec<PreviewLine>, String> {
    table_from_clickhouse(ch, "invoice_lines", filter)
}

/// The current lines of `table` in ClickHouse.
pub fn table_from_clickhouse(
    ch: &ClickHouse,
    table: &str,
    filter: &Filter,
) -> Result<Vec<PreviewLine>, String> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct R {
        customer_id: String,
        invoice_period: String,
        contract_id: String,
        line_type: String,
        sku: String,
        service_period: String,
        region: String,
        currency: String,
        events: i64,
        quantity: String,
        amount: String,
    }
    let mut conditions = vec!["1".to_string()];
    if let Some(c) = &filter.customer {
        conditions.push(format!("customer_id = '{}'", sql_string(c)));
    }
    if let Some(p) = &filter.period {
        conditions.push(format!("invoice_period = '{}'", sql_string(p)));
    }
    let rows: Vec<R> = ch.fetch(&format!(
        "SELECT customer_id, invoice_period, contract_id, line_type, sku, service_period, region, currency, \
         sum(events * sign) AS events, toString(sum(quantity * sign)) AS quantity, toString(sum(amount * sign)) AS amount \
         FROM {{db}}.{table} WHERE {} \
         GROUP BY customer_id, invoice_period, contract_id, line_type, sku, service_period, region, currency \
         HAVING sum(sign) > 0",
        conditions.join(" AND ")
    ))?;
    rows.into_iter()
        .map(|r| {
            Ok(PreviewLine {
                kind: parse_kind(&r.line_type)?,
                amount: Amount::parse(&r.amount)
                    .map_err(|e| format!("invoice_lines: amount `{}`: {e}", r.amount))?,
                customer: r.customer_id,
                invoice_period: r.invoice_period,
                contract: r.contract_id,
                sku: r.sku,
                service_period: r.service_period,
                region: r.region,
                events: r.events,
                quantity: trim_zeros(&r.quantity),
                currency: r.currency,
            })
        })
        .collect()
}

fn parse_kind(text: &str) -> Result<LineKind, String> {
    LineKind::parse(text).ok_or_else(|| format!("unknown line_type `{text}`"))
}

fn trim_zeros(decimal: &str) -> String {
    if decimal.contains('.') {
        decimal
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        decimal.to_string()
    }
}

/// Renders lines as one draft invoice per customer and invoice period (those `filter` keeps).
/// With a catalog, customer names and SKU units are shown, and after each contract's latest
/// invoice its prepaid credit: what is left and how long it lasts at the current burn (this
/// needs every period's lines, so pass them all and select periods with `filter`).
pub fn render_lines(
    mut lines: Vec<PreviewLine>,
    catalog: Option<&Catalog>,
    unit: PeriodUnit,
    filter: &Filter,
) -> String {
    let mut s = String::new();
    lines.sort();
    let credit_notes = catalog
        .map(|c| credit_status(c, &lines, unit))
        .unwrap_or_default();
    // The first period each contract is invoiced for (it bills the term fees running then).
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    for l in &lines {
        first
            .entry(l.contract.clone())
            .or_insert_with(|| l.invoice_period.clone());
    }
    lines.retain(|l| filter.keeps(l));
    if lines.is_empty() {
        s.push_str("(no billable usage)\n");
        return s;
    }
    let mut invoices: BTreeMap<(String, String), Vec<PreviewLine>> = BTreeMap::new();
    for l in lines {
        invoices
            .entry((l.customer.clone(), l.invoice_period.clone()))
            .or_default()
            .push(l);
    }
    for ((customer, invoice_period), rows) in invoices {
        let name = catalog
            .and_then(|c| {
                c.customer(&customer)
                    .map(|i| c.customers[i.ix()].name.clone())
            })
            .unwrap_or_else(|| customer.clone());
        let _ = writeln!(
            s,
            "\n{name} ({customer}) — invoice {invoice_period} (draft)"
        );
        let _ = writeln!(
            s,
            "  {:<18} {:<12} {:<10} {:<10} {:<12} {:>7} {:>16} {:>14}",
            "contract", "sku", "region", "service", "type", "events", "quantity", "amount"
        );
        let mut totals: BTreeMap<&str, BTreeMap<LineKind, Amount>> = BTreeMap::new();
        for l in &rows {
            let digits = minor_unit_digits(&l.currency);
            let sku_unit = catalog
                .and_then(|c| c.sku(&l.sku).map(|i| c.skus[i.ix()].unit.as_str()))
                .unwrap_or("");
            let quantity = if l.kind.is_usage() {
                format!("{} {sku_unit}", l.quantity).trim_end().to_string()
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  {:<18} {:<12} {:<10} {:<10} {:<12} {:>7} {:>16} {:>10} {}",
                l.contract,
                if l.sku.is_empty() {
                    "(invoice)"
                } else {
                    &l.sku
                },
                if l.kind.is_usage() { &l.region } else { "" },
                l.service_period,
                l.kind.as_str(),
                if l.kind.is_usage() {
                    l.events.to_string()
                } else {
                    String::new()
                },
                quantity,
                l.amount.format_fixed(digits),
                l.currency
            );
            if let (LineKind::Subscription, Some(catalog)) = (l.kind, catalog) {
                let first = first.get(&l.contract) == Some(&l.invoice_period);
                for (fee, amount) in
                    fee_breakdown(catalog, &l.contract, &l.invoice_period, first, unit)
                {
                    let _ = writeln!(
                        s,
                        "  {:<18} {:<72} {:>10} {}",
                        "",
                        format!("· {fee}"),
                        amount
                            .round_to(digits, Rounding::HalfUp)
                            .format_fixed(digits),
                        l.currency
                    );
                }
            }
            *totals
                .entry(&l.currency)
                .or_default()
                .entry(l.kind)
                .or_default() += l.amount;
        }
        for (currency, by_kind) in totals {
            let digits = minor_unit_digits(currency);
            let sum = |kinds: &[LineKind]| -> Amount {
                kinds
                    .iter()
                    .map(|k| by_kind.get(k).copied().unwrap_or_default())
                    .sum()
            };
            let mut summary = vec![("usage", sum(&[LineKind::Usage, LineKind::Adjustment]))];
            for (label, kind) in [
                ("subscription", LineKind::Subscription),
                ("discounts", LineKind::Discount),
                ("commitment true-up", LineKind::Commitment),
                ("spend cap", LineKind::Cap),
                ("credits", LineKind::Credit),
            ] {
                if by_kind.contains_key(&kind) {
                    summary.push((label, sum(&[kind])));
                }
            }
            let net: Amount = by_kind
                .iter()
                .filter(|(k, _)| **k != LineKind::Tax)
                .map(|(_, a)| *a)
                .sum();
            summary.push(("subtotal", net));
            summary.push(("tax", sum(&[LineKind::Tax])));
            summary.push(("total", net + sum(&[LineKind::Tax])));
            for (label, amount) in summary {
                let _ = writeln!(
                    s,
                    "  {:>102} {:>10} {}",
                    label,
                    amount.format_fixed(digits),
                    currency
                );
            }
        }
        let contracts: std::collections::BTreeSet<&str> =
            rows.iter().map(|l| l.contract.as_str()).collect();
        for contract in contracts {
            if let Some((last, note)) = credit_notes.get(contract) {
                if *last == invoice_period {
                    let _ = writeln!(s, "  {note}");
                }
            }
        }
    }
    s
}

/// The fees behind a contract's subscription line in the invoice period `period` (`first`: the
/// first period it is invoiced for), when the line alone does not say: each fee and what it
/// bills, a fee billed in advance with its term. Exact amounts: the line rounds their sum once,
/// the preview each one for display.
/// Empty for a contract with one fee billed every period.
fn fee_breakdown(
    catalog: &Catalog,
    contract: &str,
    period: &str,
    first: bool,
    unit: PeriodUnit,
) -> Vec<(String, Amount)> {
    let (Some(c), Some(p)) = (catalog.contract(contract), unit.parse_label(period)) else {
        return Vec::new();
    };
    let c = &catalog.contracts[c.ix()];
    let day = |t: EventTime| {
        let d = t.civil();
        format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)
    };
    let fees = (&c.terms.fees[..], &c.terms.term_fees[..]);
    let mut out = Vec::new();
    let mut in_advance = false;
    for fee in fees_billed(fees, (c.starts, c.ends), (p.0, unit.end_of(p)), first) {
        in_advance |= fee.in_advance && !fee.parts.is_empty();
        for t in &fee.parts {
            let what = match (t.upgrade, fee.in_advance) {
                (false, false) => None,
                (false, true) => Some("billed in advance"),
                // A ramp's step was agreed at signing: not an upgrade the customer bought.
                (true, _) if fee.ramp => Some("ramp step"),
                (true, _) => Some("upgrade"),
            };
            let name = match what {
                None => fee.name.to_string(),
                Some(what) => format!("{}, {} to {}, {what}", fee.name, day(t.start), day(t.end)),
            };
            out.push((name, t.amount));
        }
    }
    // A fee included at no charge (one with only a standalone selling price) bills nothing.
    out.retain(|(_, a)| *a != Amount::ZERO);
    if !in_advance && out.len() < 2 {
        return Vec::new();
    }
    out
}

/// Credit used per contract and invoice period (label): the negated `credit` lines. Every
/// contract with lines has an entry for each of its periods.
pub(crate) fn credit_used(lines: &[PreviewLine]) -> BTreeMap<&str, BTreeMap<&str, Amount>> {
    let mut used: BTreeMap<&str, BTreeMap<&str, Amount>> = BTreeMap::new();
    for l in lines {
        let per_period = used.entry(&l.contract).or_default();
        let e = per_period.entry(&l.invoice_period).or_default();
        if l.kind == LineKind::Credit {
            *e -= l.amount;
        }
    }
    used
}

/// Per contract with credit grants: its latest invoice period and a line on its credit.
/// Replays the burn of the `credit` lines over the grants in the pipeline's order.
fn credit_status(
    catalog: &Catalog,
    lines: &[PreviewLine],
    unit: PeriodUnit,
) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for (contract, periods) in credit_used(lines) {
        let Some(ci) = catalog.contract(contract) else {
            continue;
        };
        let grants = &catalog.contracts[ci.ix()].terms.credits;
        if grants.is_empty() {
            continue;
        }
        let CreditReplay {
            balances,
            last,
            burnt,
            burning,
            ..
        } = replay_credit(grants, &periods, unit, None);
        let Some((label, p)) = last else { continue };
        let end = unit.end_of(p);
        let remaining: Amount = grants
            .iter()
            .zip(&balances)
            .filter(|(g, _)| g.expires.is_none_or(|e| e > end))
            .map(|(_, b)| *b)
            .sum();
        let currency = catalog.currency_of(ci);
        let digits = minor_unit_digits(currency);
        let per_period = Amount(burnt.0 / burning.max(1));
        let lasts = if per_period <= Amount::ZERO || remaining <= Amount::ZERO {
            String::new()
        } else {
            let more = remaining.0.div_euclid(per_period.0);
            let mut q = p;
            for _ in 0..more.min(1200) {
                q = unit.period_of(unit.end_of(q));
            }
            format!(
                "; at {} {currency} per period it runs out in period {}",
                per_period
                    .round_to(digits, meterflow_schemas::money::Rounding::HalfEven)
                    .format_fixed(digits),
                unit.label(unit.period_of(unit.end_of(q)))
            )
        };
        out.insert(
            contract.to_string(),
            (
                label,
                format!(
                    "prepaid credit left after this invoice: {} {currency}{lasts}",
                    remaining.format_fixed(digits)
                ),
            ),
        );
    }
    out
}
