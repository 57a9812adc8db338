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
use meterflow_schemas::entitlement::{reported_through, signals};
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
                    output.push((
                        EntitlementSignal::of((customer, contract, sku), start, &s),
                        1,
                    ));
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
                    output.push((
                        EntitlementSignal {
                            customer,
                            contract,
                            sku: SkuIdx::INVOICE,
                            period: Period(b.period),
                            kind: SignalKind::CreditBurn,
                            percent: 0,
                            at: b.remaining.to_quantity(),
                            allowance: b.per_period.to_quantity(),
                        },
                        1,
                    ));
                }
            },
        )
        .map(|(_, s)| s)
}

/// How far a contract's usage has been reported in a service period: the end of the latest hour
/// any of its billable events in the period falls in (voided ones included, so it only grows).
pub type Reported = ((CustomerIdx, ContractIdx), (Period, EventTime));

/// Whether a contract has a spend plan that burn-rate signals watch.
pub fn has_spend_plan(catalog: &Catalog, contract: ContractIdx) -> bool {
    let t = &catalog.contracts[contract.ix()].terms;
    t.minimum_spend.is_some() || t.budget.is_some()
}

/// The `Reported` collection of contracts with a spend plan: one record per contract and
/// service period, replaced (`-1` old, `+1` new) when a later hour is reported. `seed`: what a
/// resumed run reloaded (every worker passes all of it; each keeps the contracts it owns),
/// entering at `first_epoch`.
///
/// Each worker first keeps the latest hour it has seen per contract and period and sends on
/// only increases, so the exchange carries a few records per contract-hour, not every event.
pub fn reported<'s>(
    usage: timely::dataflow::StreamVec<'s, Epoch, meterflow_schemas::rows::UsageDelta>,
    catalog: Arc<Catalog>,
    seed: Vec<Reported>,
    first_epoch: Epoch,
) -> VecCollection<'s, Epoch, Reported, isize> {
    use differential_dataflow::AsCollection;
    use std::collections::HashMap;
    use timely::dataflow::channels::pact::{Exchange, Pipeline};
    use timely::dataflow::operators::generic::Operator;
    use timely::dataflow::operators::ToStream;
    type Key = (CustomerIdx, ContractIdx, Period);
    let scope = usage.scope();
    let (index, peers) = (scope.index(), scope.peers());
    let planned: Vec<bool> = (0..catalog.contracts.len())
        .map(|c| has_spend_plan(&catalog, ContractIdx(c as u32)))
        .collect();
    if !planned.iter().any(|p| *p) {
        return Vec::<(Reported, Epoch, isize)>::new()
            .to_stream(scope)
            .as_collection();
    }
    let owner = |c: ContractIdx| c.0 as u64;
    let mut local: HashMap<Key, EventTime> = HashMap::new();
    let increases = usage.unary(Pipeline, "ReportedHere", move |_cap, _info| {
        move |input, output| {
            input.for_each_stamp(|cap, data| {
                let mut session = output.session(&cap);
                for d in data.flat_map(|d| d.iter()) {
                    if !planned[d.line.contract.ix()] {
                        continue;
                    }
                    let hour_end = reported_through(d.time);
                    let key = (d.line.customer, d.line.contract, d.line.service_period);
                    let seen = local.entry(key).or_insert(EventTime::MIN);
                    if *seen < hour_end {
                        *seen = hour_end;
                        session.give((key, hour_end));
                    }
                }
            });
        }
    });
    let mine: Vec<Reported> = seed
        .into_iter()
        .filter(|((_, c), _)| owner(*c) % peers as u64 == index as u64)
        .collect();
    let mut latest: HashMap<Key, EventTime> = mine
        .iter()
        .map(|&((cu, co), (p, t))| ((cu, co, p), t))
        .collect();
    increases
        .unary_frontier(
            Exchange::new(move |(k, _): &(Key, EventTime)| owner(k.1)),
            "Reported",
            move |cap, _info| {
                let mut seed = Some((cap, mine));
                move |(input, _frontier), output| {
                    if let Some((cap, rows)) = seed.take() {
                        let at = cap.delayed(&first_epoch);
                        let mut session = output.session(&at);
                        for r in rows {
                            session.give((r, first_epoch, 1));
                        }
                    }
                    input.for_each_stamp(|cap, data| {
                        let Some(&epoch) = cap.least() else { return };
                        let mut session = output.session(&cap);
                        for &(key, hour_end) in data.flat_map(|d| d.iter()) {
                            let before = latest.get(&key).copied();
                            if before.is_some_and(|b| b >= hour_end) {
                                continue;
                            }
                            latest.insert(key, hour_end);
                            let k = (key.0, key.1);
                            if let Some(b) = before {
                                session.give(((k, (key.2, b)), epoch, -1));
                            }
                            session.give(((k, (key.2, hour_end)), epoch, 1));
                        }
                    });
                }
            },
        )
        .as_collection()
}

/// What the burn-rate reduce reads per contract.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
enum BurnInput {
    /// A usage or adjustment line's exact amount, by service period.
    Spent(Period, meterflow_schemas::money::Amount),
    Reported(Period, EventTime),
}

/// Burn-rate signals (`commitment_burn`, `budget_burn`): per contract with a commitment
/// (`minimum_spend`) or a budget, the service periods whose usage spend runs ahead of the plan
/// prorated to how far their usage has been reported (rule in
/// `meterflow_schemas::entitlement::spend_burn`). A differential `reduce` keyed by (customer,
/// contract) over its usage lines and `reported`; recomputed, and only the difference emitted,
/// when either changes.
pub fn spend_burn_signals<'s>(
    lines: VecCollection<'s, Epoch, InvoiceLine, isize>,
    reported: VecCollection<'s, Epoch, Reported, isize>,
    catalog: Arc<Catalog>,
    unit: PeriodUnit,
) -> VecCollection<'s, Epoch, EntitlementSignal, isize> {
    use meterflow_schemas::entitlement::{spend_burn, SignalKind};
    use meterflow_schemas::money::Amount;
    let planned = catalog.clone();
    let spent = lines.flat_map(move |l| {
        (l.kind.is_usage() && has_spend_plan(&planned, l.key.contract)).then_some((
            (l.key.customer, l.key.contract),
            BurnInput::Spent(l.key.service_period, l.amount_exact),
        ))
    });
    let reported = reported.map(|(k, (p, t))| (k, BurnInput::Reported(p, t)));
    spent
        .concat(reported)
        .reduce_named(
            "SpendBurn",
            move |&(customer, contract): &(CustomerIdx, ContractIdx),
                  input: &[(&BurnInput, isize)],
                  output: &mut Vec<(EntitlementSignal, isize)>| {
                let terms = &catalog.contracts[contract.ix()].terms;
                let plans: Vec<(SignalKind, Amount)> = [
                    (SignalKind::CommitmentBurn, terms.minimum_spend),
                    (SignalKind::BudgetBurn, terms.budget),
                ]
                .into_iter()
                .filter_map(|(k, p)| p.map(|p| (k, p)))
                .collect();
                let mut periods: BTreeMap<Period, (Amount, EventTime)> = BTreeMap::new();
                for (input, n) in input {
                    match input {
                        BurnInput::Spent(p, a) => {
                            periods
                                .entry(*p)
                                .or_insert((Amount::ZERO, EventTime::MIN))
                                .0 += Amount(a.0 * *n as i128);
                        }
                        BurnInput::Reported(p, t) if *n > 0 => {
                            let e = periods.entry(*p).or_insert((Amount::ZERO, EventTime::MIN));
                            e.1 = e.1.max(*t);
                        }
                        BurnInput::Reported(..) => {}
                    }
                }
                for (period, (spent, reported)) in periods {
                    let end = unit.end_of(period);
                    for b in spend_burn(&plans, period.0, end, spent, reported) {
                        let plan = plans
                            .iter()
                            .find(|(k, _)| *k == b.kind)
                            .map_or(Amount::ZERO, |p| p.1);
                        // A lower bound in coarse steps, so the row changes when the
                        // projection moves a step, not with every round of usage.
                        let percent = [1000, 500, 300, 200, 150, 100]
                            .into_iter()
                            .find(|s| b.projected_percent >= *s)
                            .unwrap_or(100);
                        let projected = Amount(plan.0 * percent as i128 / 100);
                        output.push((
                            EntitlementSignal {
                                customer,
                                contract,
                                sku: SkuIdx::INVOICE,
                                period,
                                kind: b.kind,
                                percent,
                                at: projected.to_quantity(),
                                allowance: plan.to_quantity(),
                            },
                            1,
                        ));
                    }
                }
            },
        )
        .map(|(_, s)| s)
}
