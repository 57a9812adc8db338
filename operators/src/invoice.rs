//! Invoice-level lines: per contract and invoice period, the subscription fees, discounts,
//! commitment true-up, spend cap and tax, derived from the period's usage and adjustment lines
//! (rules in `meterflow_schemas::pricing::invoice`).
//!
//! (data, time, diff): a differential `reduce` keyed by (customer, contract) over the rounded
//! amounts of its usage lines by invoice period (credits carry from period to period). When a
//! usage line changes, the contract's derived lines are recomputed and only their difference
//! leaves, as signed rows like every other invoice line. Contracts without terms and customers
//! without tax skip the stage.
//!
//! State: one arrangement entry per usage line of a contract with terms, and one per derived
//! line; compacted as the frontier advances. Recomputing a contract costs its periods × SKUs.

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use meterflow_schemas::catalog::{Catalog, ContractIdx, CustomerIdx, SkuIdx};
use meterflow_schemas::money::{minor_unit_digits, Amount, Quantity, Rounding};
use meterflow_schemas::pricing::invoice::{active_share, contract_lines_prorated};
use meterflow_schemas::rows::{InvoiceLine, LineKey};
use meterflow_schemas::time::{EventTime, Period, PeriodUnit};

use crate::Epoch;

type InvoiceKey = (CustomerIdx, ContractIdx);
/// A usage line as the invoice stage sees it: invoice period, SKU, rounded amount, currency.
type LineAmount = (Period, SkuIdx, Amount, Arc<str>);

pub fn invoice<'s>(
    lines: VecCollection<'s, Epoch, InvoiceLine, isize>,
    catalog: Arc<Catalog>,
    unit: PeriodUnit,
    rounding: Rounding,
) -> VecCollection<'s, Epoch, InvoiceLine, isize> {
    // Which contracts get invoice-level lines, decided once rather than per line.
    let with_terms: Vec<bool> = catalog
        .contracts
        .iter()
        .map(|c| c.terms != Default::default() || catalog.customers[c.customer.ix()].tax.is_some())
        .collect();
    let has_terms = move |l: &InvoiceLine| with_terms[l.key.contract.ix()];
    lines
        .flat_map(move |l| {
            let keep = l.kind.is_usage() && has_terms(&l);
            keep.then_some((
                (l.key.customer, l.key.contract),
                (l.invoice_period, l.key.sku, l.amount, l.currency),
            ))
        })
        .reduce_named(
            "Invoice",
            move |&(customer, contract): &InvoiceKey,
                  input: &[(&LineAmount, isize)],
                  output: &mut Vec<(InvoiceLine, isize)>| {
                let Some(currency) = input.first().map(|((_, _, _, c), _)| c.clone()) else {
                    return;
                };
                let mut periods: BTreeMap<EventTime, BTreeMap<SkuIdx, Amount>> = BTreeMap::new();
                for ((period, sku, amount, _), n) in input {
                    *periods
                        .entry(period.0)
                        .or_default()
                        .entry(*sku)
                        .or_default() += Amount(amount.0 * *n as i128);
                }
                let terms = &catalog.contracts[contract.ix()].terms;
                let tax = catalog.customers[customer.ix()]
                    .tax
                    .map(|t| &catalog.taxes[t.ix()]);
                let digits = minor_unit_digits(&currency);
                let c = &catalog.contracts[contract.ix()];
                let share = |start: EventTime| {
                    active_share(c.starts, c.ends, start, unit.end_of(Period(start)))
                };
                for (start, d) in
                    contract_lines_prorated(terms, tax, &periods, &share, digits, rounding)
                {
                    let period = Period(start);
                    let line = InvoiceLine {
                        key: LineKey {
                            customer,
                            contract,
                            sku: d.sku,
                            region: None,
                            service_period: period,
                        },
                        invoice_period: period,
                        kind: d.kind,
                        currency: currency.clone(),
                        events: 0,
                        quantity: Quantity::ZERO,
                        amount_exact: d.amount_exact,
                        amount: d.amount,
                    };
                    output.push((line, 1));
                }
            },
        )
        .map(|(_, line)| line)
}
