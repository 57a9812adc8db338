//! The invoice preview: current draft invoice lines per customer and invoice period.

use std::collections::BTreeMap;
use std::fmt::Write;

use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::money::{minor_unit_digits, Amount};
use meterflow_schemas::rows::InvoiceLine;
use meterflow_schemas::time::PeriodUnit;

/// Renders the current lines (rows with a positive net multiplicity) as a text table.
pub fn render(
    lines: &BTreeMap<InvoiceLine, isize>,
    catalog: &Catalog,
    period: PeriodUnit,
) -> String {
    let mut by_invoice: BTreeMap<(String, String), Vec<&InvoiceLine>> = BTreeMap::new();
    for (line, n) in lines {
        if *n > 0 {
            let customer = catalog.customers[line.key.customer.ix()].id.clone();
            by_invoice
                .entry((customer, period.label(line.invoice_period)))
                .or_default()
                .push(line);
        }
    }
    let mut s = String::new();
    if by_invoice.is_empty() {
        s.push_str("(no billable usage)\n");
        return s;
    }
    for ((customer, invoice_period), mut rows) in by_invoice {
        let name = &catalog.customers[catalog.customer(&customer).expect("customer").ix()].name;
        rows.sort_by_key(|l| {
            (
                l.key.contract,
                l.key.sku,
                l.key.service_period,
                l.kind,
                l.key.region,
            )
        });
        let _ = writeln!(
            s,
            "\n{name} ({customer}) — invoice {invoice_period} (draft)"
        );
        let _ = writeln!(
            s,
            "  {:<18} {:<12} {:<10} {:<10} {:<11} {:>7} {:>16} {:>14}",
            "contract", "sku", "region", "service", "type", "events", "quantity", "amount"
        );
        let mut totals: BTreeMap<&str, Amount> = BTreeMap::new();
        for l in rows {
            let digits = minor_unit_digits(&l.currency);
            let sku = &catalog.skus[l.key.sku.ix()];
            let _ = writeln!(
                s,
                "  {:<18} {:<12} {:<10} {:<10} {:<11} {:>7} {:>16} {:>10} {}",
                catalog.contracts[l.key.contract.ix()].id,
                sku.id,
                catalog.region_name(l.key.region),
                period.label(l.key.service_period),
                l.kind.as_str(),
                l.events,
                format!("{} {}", l.quantity, sku.unit),
                l.amount.format_fixed(digits),
                l.currency
            );
            *totals.entry(&l.currency).or_default() += l.amount;
        }
        for (currency, total) in totals {
            let _ = writeln!(
                s,
                "  {:>101} {:>10} {}",
                "subtotal",
                total.format_fixed(minor_unit_digits(currency)),
                currency
            );
        }
    }
    s
}
