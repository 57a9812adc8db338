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
//! Every invoice period from a contract's first one with usage through the period the stream
//! has reached ([`billed_through`]) is invoiced while the contract is active, so a period
//! without usage still bills its subscription fees and its commitment.
//!
//! State: one arrangement entry per usage line of a contract with terms, and one per derived
//! line; compacted as the frontier advances. Recomputing a contract costs its periods × SKUs.

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use meterflow_schemas::catalog::{Catalog, ContractIdx, CustomerIdx, SkuIdx};
use meterflow_schemas::money::{Amount, Quantity, Rounding};
use meterflow_schemas::pricing::invoice::contract_invoice;
use meterflow_schemas::rows::{InvoiceLine, LineKey};
use meterflow_schemas::time::{EventTime, Period, PeriodUnit};
use serde::{Deserialize, Serialize};

use crate::Epoch;

type InvoiceKey = (CustomerIdx, ContractIdx);

/// What the invoice reduce reads per contract.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum InvoiceInput {
    /// A usage line: invoice period, SKU, rounded amount, currency.
    Usage(Period, SkuIdx, Amount, Arc<str>),
    /// The invoice period the stream has reached.
    Through(Period),
}

/// Whether a contract gets invoice-level lines (terms, or a customer with tax), by contract.
pub fn with_terms(catalog: &Catalog) -> Vec<bool> {
    catalog
        .contracts
        .iter()
        .map(|c| c.terms != Default::default() || catalog.customers[c.customer.ix()].tax.is_some())
        .collect()
}

pub fn invoice<'s>(
    lines: VecCollection<'s, Epoch, InvoiceLine, isize>,
    through: VecCollection<'s, Epoch, Through, isize>,
    catalog: Arc<Catalog>,
    unit: PeriodUnit,
    rounding: Rounding,
) -> VecCollection<'s, Epoch, InvoiceLine, isize> {
    // Which contracts get invoice-level lines, decided once rather than per line.
    let with_terms = with_terms(&catalog);
    let has_terms = move |l: &InvoiceLine| with_terms[l.key.contract.ix()];
    let through = through.map(|(k, p)| (k, InvoiceInput::Through(p)));
    lines
        .flat_map(move |l| {
            let keep = l.kind.is_usage() && has_terms(&l);
            keep.then_some((
                (l.key.customer, l.key.contract),
                InvoiceInput::Usage(l.invoice_period, l.key.sku, l.amount, l.currency),
            ))
        })
        .concat(through)
        .reduce_named(
            "Invoice",
            move |&(customer, contract): &InvoiceKey,
                  input: &[(&InvoiceInput, isize)],
                  output: &mut Vec<(InvoiceLine, isize)>| {
                let mut currency = None;
                let mut through = None;
                let mut periods: BTreeMap<EventTime, BTreeMap<SkuIdx, Amount>> = BTreeMap::new();
                for (i, n) in input {
                    match i {
                        InvoiceInput::Usage(period, sku, amount, c) => {
                            currency.get_or_insert_with(|| c.clone());
                            *periods
                                .entry(period.0)
                                .or_default()
                                .entry(*sku)
                                .or_default() += Amount(amount.0 * *n as i128);
                        }
                        InvoiceInput::Through(p) if *n > 0 => through = through.max(Some(*p)),
                        InvoiceInput::Through(_) => {}
                    }
                }
                let Some(currency) = currency else {
                    return;
                };
                let derived = contract_invoice(
                    &catalog, contract, periods, through, &currency, unit, rounding,
                );
                for (start, d) in derived {
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

/// The invoice period the stream has reached, per contract with invoice-level lines.
pub type Through = ((CustomerIdx, ContractIdx), Period);

/// Where the stream stands, for [`billed_through`].
#[derive(Clone)]
pub struct Clock {
    pub first_epoch: Epoch,
    /// The committed watermark of a resumed run.
    pub watermark: crate::watermark::WatermarkTracker,
}

/// The period of the watermark after each epoch, as one record per contract with invoice-level
/// lines (worker 0 emits them; `-1` old, `+1` new when the watermark enters a later period).
/// `stats`: every epoch's statistics, on every worker.
pub fn billed_through<'s>(
    stats: timely::dataflow::StreamVec<'s, Epoch, crate::decode::EpochStats>,
    catalog: Arc<Catalog>,
    unit: PeriodUnit,
    clock: Clock,
) -> VecCollection<'s, Epoch, Through, isize> {
    use differential_dataflow::AsCollection;
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::Operator;
    use timely::dataflow::operators::Capability;
    let emits = stats.scope().index() == 0;
    let contracts: Vec<(CustomerIdx, ContractIdx)> = with_terms(&catalog)
        .into_iter()
        .enumerate()
        .filter(|(_, t)| *t)
        .map(|(i, _)| {
            let c = ContractIdx(i as u32);
            (catalog.contracts[i].customer, c)
        })
        .collect();
    let mut current = clock.watermark.floor().map(|w| unit.period_of(w));
    let mut tracker = clock.watermark;
    let mut epochs: BTreeMap<Epoch, Capability<Epoch>> = BTreeMap::new();
    stats
        .unary_frontier(Pipeline, "BilledThrough", move |cap, _info| {
            let mut start = Some(cap);
            move |(input, frontier), output| {
                if let Some(cap) = start.take() {
                    if let (true, Some(p)) = (emits, current) {
                        let at = cap.delayed(&clock.first_epoch);
                        let mut session = output.session(&at);
                        for k in &contracts {
                            session.give(((*k, p), clock.first_epoch, 1));
                        }
                    }
                }
                input.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    for s in data.flat_map(|d| d.iter()) {
                        tracker.observe(s);
                    }
                    epochs
                        .entry(epoch)
                        .or_insert_with(|| cap.delayed(&epoch, 0));
                });
                while let Some(entry) = epochs.first_entry() {
                    if frontier.frontier().less_equal(entry.key()) {
                        break;
                    }
                    let epoch = *entry.key();
                    let cap = entry.remove();
                    // The watermark after the epoch: its own events count.
                    let w = tracker.watermark_for(epoch + 1);
                    if w == EventTime::MIN {
                        continue;
                    }
                    let p = unit.period_of(w);
                    if current.is_some_and(|c| c >= p) {
                        continue;
                    }
                    if emits {
                        let mut session = output.session(&cap);
                        for k in &contracts {
                            if let Some(old) = current {
                                session.give(((*k, old), epoch, -1));
                            }
                            session.give(((*k, p), epoch, 1));
                        }
                    }
                    current = Some(p);
                }
            }
        })
        .as_collection()
}
