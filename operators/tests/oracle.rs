//! Property test: for in-window input, the streaming result equals a naive batch computation,
//! whatever the order, duplication, chunking or number of workers.

use std::collections::{BTreeMap, BTreeSet};

use meterflow_operators::testing::{plan, run};
use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::fixtures::{self, event};
use meterflow_schemas::money::{minor_unit_digits, Amount, Quantity, Rounding};
use meterflow_schemas::pricing::{price_period, Segment};
use meterflow_schemas::rows::{InvoiceLine, LineKey, LineKind};
use meterflow_schemas::time::{EventTime, PeriodUnit};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Ev {
    id: usize,
    contract: usize,
    sku: usize,
    milli_units: i64,
    minute: i64,
}

const CONTRACTS: [(&str, &str); 2] = [("acme", "acme-2026"), ("globex", "globex-legacy")];
const SKUS: [(&str, &str); 3] = [
    ("api_calls", "requests"),
    ("tokens", "tokens"),
    ("storage", "GB"),
];
/// 2026-11-10T00:00Z; the window spans six days across the Nov 15 rate change.
const START_MS: i64 = 1_794_268_800_000;

impl Ev {
    fn time(&self) -> EventTime {
        EventTime(START_MS + self.minute * 60_000)
    }
    fn quantity(&self) -> Quantity {
        Quantity(self.milli_units as i128 * 1_000_000)
    }
    fn line(&self) -> String {
        let (customer, contract) = CONTRACTS[self.contract];
        let (sku, unit) = SKUS[self.sku];
        event(
            &format!("ev-{}", self.id),
            customer,
            contract,
            sku,
            unit,
            &self.quantity().to_string(),
            &self.time().to_string(),
        )
    }
}

/// The naive oracle: group distinct events by line and price, price each group directly.
/// The plan without anomaly detection: these properties are about invoices, and the detector
/// (checked for order independence in `dataflow.rs` and `anomaly.rs`) would triple their time
/// with one epoch per record in a debug build.
fn invoice_plan(catalog: Catalog) -> meterflow_operators::dataflow::Plan {
    let mut p = plan(catalog);
    p.anomalies.enabled = false;
    p
}

fn oracle(catalog: &Catalog, events: &[Ev]) -> BTreeMap<InvoiceLine, isize> {
    type Segments = BTreeMap<(EventTime, u32, u32), (i64, Quantity)>;
    let mut groups: BTreeMap<LineKey, Segments> = BTreeMap::new();
    for e in events {
        let contract_ix = catalog.contract(CONTRACTS[e.contract].1).unwrap();
        let contract = &catalog.contracts[contract_ix.ix()];
        let sku = catalog.sku(SKUS[e.sku].0).unwrap();
        let price_ix = catalog.price_for(contract, sku, None, e.time()).unwrap();
        let price = catalog.price(price_ix);
        let key = LineKey {
            customer: contract.customer,
            contract: contract_ix,
            sku,
            region: price.region,
            service_period: PeriodUnit::Month.period_of(e.time()),
        };
        let g = groups
            .entry(key)
            .or_default()
            .entry((price.effective_from, price.version, price_ix.0))
            .or_default();
        g.0 += 1;
        g.1 += e.quantity();
    }
    let mut out = BTreeMap::new();
    for (key, segments) in groups {
        let models: Vec<_> = segments
            .keys()
            .map(|(_, _, p)| &catalog.prices[*p as usize])
            .collect();
        let priced = price_period(
            &models
                .iter()
                .zip(segments.values())
                .map(|(p, (_, q))| Segment {
                    model: &p.model,
                    quantity: *q,
                    events: 0,
                    fee_adjustment: Amount::ZERO,
                })
                .collect::<Vec<_>>(),
        );
        let currency = models[0].currency.clone();
        let exact: Amount = priced.total();
        let line = InvoiceLine {
            key,
            invoice_period: key.service_period,
            kind: LineKind::Usage,
            events: segments.values().map(|(n, _)| n).sum(),
            quantity: segments.values().map(|(_, q)| *q).sum(),
            amount: exact.round_to(minor_unit_digits(&currency), Rounding::HalfEven),
            amount_exact: exact,
            currency,
        };
        out.insert(line, 1);
    }
    out
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    proptest::collection::vec(
        (0usize..2, 0usize..3, 0i64..5_000_000, 0i64..(6 * 24 * 60)),
        1..50,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(id, (contract, sku, milli_units, minute))| Ev {
                id,
                contract,
                sku,
                milli_units,
                minute,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn streaming_equals_the_batch_oracle(events in events(), dup_seed in any::<u64>(), chunk in prop_oneof![Just(1u64), Just(97), Just(4096)]) {
        let catalog = fixtures::catalog();
        let expected = oracle(&catalog, &events);

        // Duplicate some events and shuffle everything (deterministically from the seed).
        let mut records: Vec<String> = events.iter().map(Ev::line).collect();
        let mut rng = dup_seed | 1;
        let mut next = || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; rng };
        for e in &events {
            if next() % 4 == 0 { records.push(e.line()); }
        }
        for i in (1..records.len()).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            records.swap(i, j);
        }
        let input: Vec<u8> = records.iter().flat_map(|r| r.bytes().chain(std::iter::once(b'\n'))).collect();

        let mut results = BTreeSet::new();
        for workers in [1, 2] {
            let out = run(&input, invoice_plan(fixtures::catalog()), workers, chunk).unwrap();
            prop_assert!(out.counts.balanced());
            prop_assert_eq!(out.counts.accepted as usize, events.len());
            prop_assert_eq!(out.counts.duplicates as usize, records.len() - events.len());
            prop_assert_eq!(out.counts.late, 0);
            let lines = out.current_lines();
            prop_assert_eq!(&lines, &expected, "workers={}", workers);
            results.insert(format!("{lines:?}"));
        }
        prop_assert_eq!(results.len(), 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    /// Shadow billing with the live card as its own shadow: for usage the live card prices by
    /// its latest version (acme follows the card; every event after the Nov 15 change), the
    /// shadow lines are the live lines, whatever the events and the worker count.
    #[test]
    fn live_equals_shadow_when_the_shadow_card_is_the_live_card(events in events(), workers in 1usize..3) {
        let catalog = meterflow_schemas::catalog::from_toml_str(&format!(
            "shadow_rate_card = \"standard\"\n{}",
            fixtures::CATALOG
        ))
        .unwrap();
        let events: Vec<Ev> = events
            .into_iter()
            .map(|e| Ev { contract: 0, minute: 5 * 24 * 60 + e.minute % (24 * 60), ..e })
            .collect();
        let input: Vec<u8> = events
            .iter()
            .flat_map(|e| e.line().into_bytes().into_iter().chain(std::iter::once(b'\n')))
            .collect();
        let out = run(&input, invoice_plan(catalog), workers, 97).unwrap();
        let current = |rows: &[(InvoiceLine, u64, isize)]| {
            let mut net: BTreeMap<InvoiceLine, isize> = BTreeMap::new();
            for (l, _, d) in rows {
                *net.entry(l.clone()).or_default() += d;
            }
            net.retain(|_, n| *n != 0);
            net
        };
        let live = current(&out.invoice_lines);
        prop_assert!(!live.is_empty());
        prop_assert_eq!(current(&out.shadow_invoice_lines), live);
    }
}
