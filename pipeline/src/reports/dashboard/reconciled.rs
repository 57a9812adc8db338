//! The exec view's reconciliation drift: what the latest `meterflow reconcile` checked, and the
//! money on the lines it found drifting (`v_exec_reconciliation`, `v_exec_drift`).

use std::collections::BTreeMap;

use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::money::{minor_unit_digits, Amount, Rounding};
use meterflow_schemas::reconcile::{EVENTS_TO_LINES, LINES_TO_TOTALS};
use serde::Serialize;

use super::facts::{money_of, Drifting, Facts, Money};

/// How many drifting lines the view lists (the largest money difference first); the counts and
/// the money cover all of them.
pub const DRIFT_LINES: usize = 50;

/// The latest reconciliation, in the period shown.
#[derive(Clone, Debug, Serialize)]
pub struct Reconciliation {
    pub run_id: String,
    pub checked_at: String,
    /// Per comparison (`events_to_lines`, `events_to_signals`, `lines_to_totals`).
    pub checks: Vec<Check>,
    pub lines: u64,
    pub drifting: u64,
    /// On drifting lines whose money is compared: what the events call for beyond what is billed
    /// (revenue leaking), and what is billed beyond it (owed back).
    pub underbilled: Vec<Money>,
    pub overbilled: Vec<Money>,
    /// At most [`DRIFT_LINES`] drifting lines, the largest money difference first.
    pub drifting_lines: Vec<DriftLine>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub comparison: String,
    pub lines: u64,
    pub drifting: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DriftLine {
    pub comparison: String,
    pub customer: String,
    pub contract: String,
    pub sku: String,
    pub region: String,
    pub service_period: String,
    pub invoice_period: String,
    /// The signal, or the invoice-level line type, a row of the other comparisons checks.
    pub what: String,
    pub expected_events: i64,
    pub billed_events: i64,
    pub expected_quantity: String,
    pub billed_quantity: String,
    /// Billed − expected, rounded to the currency's minor unit; none when money is not compared.
    pub difference: Option<String>,
    pub currency: String,
    pub event_ids: Vec<String>,
}

/// The period a reconciliation row counts in: its invoice period, or (signals, non-additive
/// lines) its own service period.
fn period_of<'a>(invoice_period: &'a str, service_period: &'a str) -> &'a str {
    if invoice_period.is_empty() {
        service_period
    } else {
        invoice_period
    }
}

/// Whether `reconcile` compared the line's money: usage lines of additive meters (`sum`,
/// `count`) and invoice-level lines; not signals, not the invoice totals (they would count the
/// lines' money twice).
fn money_compared(d: &Drifting, catalog: &Catalog) -> bool {
    match d.comparison.as_str() {
        EVENTS_TO_LINES => catalog
            .sku(&d.sku)
            .is_none_or(|s| catalog.skus[s.ix()].aggregation.is_additive()),
        LINES_TO_TOTALS => !matches!(d.line_type.as_str(), "subtotal" | "tax_total" | "total"),
        _ => false,
    }
}

/// The reconciliation in `period` (all: `None`); `None` when `reconcile` never ran.
pub fn reconciliation(
    f: &Facts,
    catalog: &Catalog,
    period: Option<&str>,
) -> Option<Reconciliation> {
    let latest = f.checked.first()?;
    let keeps = |p: &str| period.is_none_or(|want| want == p);
    let mut checks: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for c in f.checked.iter().filter(|c| keeps(&c.period)) {
        let e = checks.entry(&c.comparison).or_default();
        e.0 += c.lines;
        e.1 += c.drifting;
    }
    let (mut under, mut over): (BTreeMap<String, Amount>, BTreeMap<String, Amount>) =
        Default::default();
    let mut lines: Vec<(Amount, DriftLine)> = Vec::new();
    for d in f
        .drifting
        .iter()
        .filter(|d| keeps(period_of(&d.invoice_period, &d.service_period)))
    {
        let difference = money_compared(d, catalog).then(|| {
            let parse = |s: &str| Amount::parse(s).unwrap_or_default();
            parse(&d.billed_amount) - parse(&d.expected_amount)
        });
        if let Some(diff) = difference {
            if diff < Amount::ZERO {
                *under.entry(d.currency.clone()).or_default() += -diff;
            } else if diff > Amount::ZERO {
                *over.entry(d.currency.clone()).or_default() += diff;
            }
        }
        let digits = minor_unit_digits(&d.currency);
        lines.push((
            difference.map_or(Amount::ZERO, |a| Amount(a.0.abs())),
            DriftLine {
                comparison: d.comparison.clone(),
                customer: d.customer_id.clone(),
                contract: d.contract_id.clone(),
                sku: d.sku.clone(),
                region: d.region.clone(),
                service_period: d.service_period.clone(),
                invoice_period: d.invoice_period.clone(),
                what: if d.signal.is_empty() {
                    d.line_type.clone()
                } else {
                    d.signal.clone()
                },
                expected_events: d.expected_events,
                billed_events: d.billed_events,
                expected_quantity: super::facts::quantity(&d.expected_quantity).to_string(),
                billed_quantity: super::facts::quantity(&d.billed_quantity).to_string(),
                difference: difference
                    .map(|a| a.round_to(digits, Rounding::HalfEven).format_fixed(digits)),
                currency: d.currency.clone(),
                event_ids: d.event_ids.split_whitespace().map(String::from).collect(),
            },
        ));
    }
    lines.sort_by(|(a, x), (b, y)| {
        b.cmp(a).then_with(|| {
            (&x.customer, &x.contract, &x.sku, &x.service_period, &x.what).cmp(&(
                &y.customer,
                &y.contract,
                &y.sku,
                &y.service_period,
                &y.what,
            ))
        })
    });
    Some(Reconciliation {
        run_id: latest.run_id.clone(),
        checked_at: f.checked.iter().map(|c| c.checked_at.clone()).max()?,
        lines: checks.values().map(|c| c.0).sum(),
        drifting: checks.values().map(|c| c.1).sum(),
        checks: checks
            .into_iter()
            .map(|(comparison, (lines, drifting))| Check {
                comparison: comparison.to_string(),
                lines,
                drifting,
            })
            .collect(),
        underbilled: money_of(under),
        overbilled: money_of(over),
        drifting_lines: lines
            .into_iter()
            .take(DRIFT_LINES)
            .map(|(_, l)| l)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::dashboard::Checked;
    use meterflow_schemas::catalog::from_toml_str;
    use meterflow_schemas::reconcile::EVENTS_TO_SIGNALS;

    const CATALOG: &str = r#"
[[sku]]
id = "tokens"
unit = "tokens"

[[sku]]
id = "seats"
unit = "seats"
aggregation = "max"
"#;

    fn drifting(
        comparison: &str,
        sku: &str,
        line_type: &str,
        expected: &str,
        billed: &str,
    ) -> Drifting {
        Drifting {
            comparison: comparison.into(),
            customer_id: "acme".into(),
            contract_id: "acme-1".into(),
            sku: sku.into(),
            service_period: "2026-11".into(),
            invoice_period: if sku == "seats" { "" } else { "2026-11" }.into(),
            line_type: line_type.into(),
            expected_events: 3,
            billed_events: 2,
            expected_quantity: "3.000000000".into(),
            billed_quantity: "2".into(),
            currency: "USD".into(),
            expected_amount: expected.into(),
            billed_amount: billed.into(),
            event_ids: "e1 e2 e3".into(),
            ..Default::default()
        }
    }

    fn checked(comparison: &str, period: &str, lines: u64, drifting: u64) -> Checked {
        Checked {
            run_id: "r1".into(),
            checked_at: "2026-12-05T10:00:00.000Z".into(),
            comparison: comparison.into(),
            period: period.into(),
            lines,
            drifting,
        }
    }

    #[test]
    fn drift_money_counts_lines_whose_money_is_compared_once() {
        let catalog = from_toml_str(CATALOG).unwrap();
        let f = Facts {
            checked: vec![
                checked(EVENTS_TO_LINES, "2026-10", 5, 0),
                checked(EVENTS_TO_LINES, "2026-11", 7, 2),
                checked(LINES_TO_TOTALS, "2026-11", 4, 3),
                checked(EVENTS_TO_SIGNALS, "2026-11", 1, 1),
            ],
            drifting: vec![
                // A usage line billed 2 short, and one billed 0.5 over.
                drifting(EVENTS_TO_LINES, "tokens", "", "3.000000000000000000", "1"),
                drifting(EVENTS_TO_LINES, "tokens", "", "1", "1.5"),
                // Not compared: a max meter's money, the totals, a signal.
                drifting(EVENTS_TO_LINES, "seats", "", "0", "40"),
                drifting(LINES_TO_TOTALS, "", "total", "10", "8"),
                drifting(LINES_TO_TOTALS, "", "tax", "1", "0.25"),
                Drifting {
                    comparison: EVENTS_TO_SIGNALS.into(),
                    signal: "threshold 90%".into(),
                    service_period: "2026-11".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let r = reconciliation(&f, &catalog, None).unwrap();
        assert_eq!((r.lines, r.drifting), (17, 6));
        assert_eq!(r.underbilled[0].exact, "2.75");
        assert_eq!(r.overbilled[0].amount, "0.50");
        assert_eq!(r.drifting_lines.len(), 6);
        assert_eq!(r.drifting_lines[0].difference.as_deref(), Some("-2.00"));
        assert_eq!(r.drifting_lines[0].event_ids, ["e1", "e2", "e3"]);
        assert_eq!(r.drifting_lines[0].expected_quantity, "3");
        // The period filter keeps October's clean checks only.
        let october = reconciliation(&f, &catalog, Some("2026-10")).unwrap();
        assert_eq!((october.lines, october.drifting), (5, 0));
        assert!(october.underbilled.is_empty() && october.drifting_lines.is_empty());
        assert!(reconciliation(&Facts::default(), &catalog, None).is_none());
    }
}
