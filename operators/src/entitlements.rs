//! Entitlement signals: per contract and SKU with an entitlement, the thresholds and limits its
//! usage has crossed in each service period (rules in `meterflow_schemas::entitlement`).
//!
//! (data, time, diff): a differential `reduce` keyed by (customer, contract, SKU) over the net
//! quantity of its usage and adjustment lines by service period (rollover carries from period
//! to period). When usage changes, the key's signals are recomputed and only their difference
//! leaves: a `+1` row when a threshold is crossed, a `-1` when a correction takes usage back
//! below it.
//!
//! State: one arrangement entry per usage line of an entitled SKU, one per signal.

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use meterflow_schemas::catalog::{Catalog, ContractIdx, CustomerIdx, SkuIdx};
use meterflow_schemas::entitlement::signals;
use meterflow_schemas::money::Quantity;
use meterflow_schemas::rows::{EntitlementSignal, InvoiceLine};
use meterflow_schemas::time::{EventTime, Period, PeriodUnit};

use crate::Epoch;

type Key = (CustomerIdx, ContractIdx, SkuIdx);

pub fn entitlement_signals<'s>(
    lines: VecCollection<'s, Epoch, InvoiceLine, isize>,
    catalog: Arc<Catalog>,
    unit: PeriodUnit,
) -> VecCollection<'s, Epoch, EntitlementSignal, isize> {
    let entitled = {
        let c = catalog.clone();
        move |l: &InvoiceLine| {
            c.contracts[l.key.contract.ix()]
                .entitlements
                .iter()
                .any(|e| e.sku == l.key.sku)
        }
    };
    lines
        .flat_map(move |l| {
            let keep = l.kind.is_usage() && entitled(&l);
            keep.then_some((
                (l.key.customer, l.key.contract, l.key.sku),
                (l.key.service_period, l.quantity),
            ))
        })
        .reduce_named(
            "Entitlements",
            move |&(customer, contract, sku): &Key,
                  input: &[(&(Period, Quantity), isize)],
                  output: &mut Vec<(EntitlementSignal, isize)>| {
                let Some(e) = catalog.contracts[contract.ix()]
                    .entitlements
                    .iter()
                    .find(|e| e.sku == sku)
                else {
                    return;
                };
                let mut usage: BTreeMap<EventTime, Quantity> = BTreeMap::new();
                for ((period, quantity), n) in input {
                    *usage.entry(period.0).or_default() += Quantity(quantity.0 * *n as i128);
                }
                let next = |t: EventTime| unit.end_of(unit.period_of(t));
                for (start, s) in signals(e, &usage, next) {
                    let signal = EntitlementSignal {
                        customer,
                        contract,
                        sku,
                        period: Period(start),
                        kind: s.kind,
                        percent: s.percent,
                        at: s.at,
                        allowance: s.allowance,
                    };
                    output.push((signal, 1));
                }
            },
        )
        .map(|(_, signal)| signal)
}

/// Burn-rate signals (`credit_burn`): per contract with expiring credit grants, the periods
/// after which the credit left is projected to run out before the grants expire (rules in
/// `meterflow_schemas::pricing::invoice::credit_burn`). Keyed by (customer, contract) over the
/// contract's `credit` lines; recomputed, and only the difference emitted, when they change.
pub fn credit_burn_signals<'s>(
    lines: VecCollection<'s, Epoch, InvoiceLine, isize>,
    catalog: Arc<Catalog>,
    unit: PeriodUnit,
) -> VecCollection<'s, Epoch, EntitlementSignal, isize> {
    use meterflow_schemas::entitlement::SignalKind;
    use meterflow_schemas::money::Amount;
    use meterflow_schemas::pricing::invoice::credit_burn;
    lines
        .flat_map(|l| {
            (l.kind == meterflow_schemas::rows::LineKind::Credit).then_some((
                (l.key.customer, l.key.contract),
                (l.invoice_period, l.amount),
            ))
        })
        .reduce_named(
            "CreditBurn",
            move |&(customer, contract): &(CustomerIdx, ContractIdx),
                  input: &[(&(Period, Amount), isize)],
                  output: &mut Vec<(EntitlementSignal, isize)>| {
                let grants = &catalog.contracts[contract.ix()].terms.credits;
                let mut used: BTreeMap<EventTime, Amount> = BTreeMap::new();
                for ((period, amount), n) in input {
                    *used.entry(period.0).or_default() += Amount(-amount.0 * *n as i128);
                }
                let next = |t: EventTime| unit.end_of(unit.period_of(t));
                for b in credit_burn(grants, &used, next) {
                    let to_quantity = |a: Amount| Quantity(a.0 / 1_000_000_000);
                    output.push((
                        EntitlementSignal {
                            customer,
                            contract,
                            sku: SkuIdx::INVOICE,
                            period: Period(b.period),
                            kind: SignalKind::CreditBurn,
                            percent: 0,
                            at: to_quantity(b.remaining),
                            allowance: to_quantity(b.per_period),
                        },
                        1,
                    ));
                }
            },
        )
        .map(|(_, s)| s)
}
