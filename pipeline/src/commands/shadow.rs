//! `meterflow shadow report`: what would change if contracts were billed by their shadow rate
//! cards. Per customer, contract and invoice period: the live total, the shadow total, and the
//! difference in money and percent — from a run's output directory or from ClickHouse.

use std::process::ExitCode;

use crate::commands::invoice::InvoiceSource;
use crate::commands::open_clickhouse;
use crate::reports::invoice_preview::{table_from_clickhouse, table_from_output, Filter};
use std::collections::BTreeMap;
use std::fmt::Write;

use meterflow_schemas::money::{minor_unit_digits, Amount};

use crate::reports::invoice_preview::PreviewLine;

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub customer: String,
    pub contract: String,
    pub invoice_period: String,
    pub currency: String,
    pub live: Amount,
    pub shadow: Amount,
}

impl Delta {
    pub fn difference(&self) -> Amount {
        self.shadow - self.live
    }

    /// The difference as a percentage of the live total, to 2 decimals (`None` when the live
    /// total is zero).
    pub fn percent(&self) -> Option<Amount> {
        if self.live == Amount::ZERO {
            return None;
        }
        // (shadow - live) / live × 100 to 6 decimals (truncated), then rounded half-even to 2.
        let micro_percent = self.difference().0 * 100_000_000 / self.live.0;
        Some(
            Amount(micro_percent * 10i128.pow(Amount::SCALE - 6))
                .round_to(2, meterflow_schemas::money::Rounding::HalfEven),
        )
    }
}

/// Pairs live and shadow totals for every (customer, contract, period) that has shadow lines.
pub fn deltas(live: &[PreviewLine], shadow: &[PreviewLine]) -> Vec<Delta> {
    type Key = (String, String, String, String);
    let key = |l: &PreviewLine| -> Key {
        (
            l.customer.clone(),
            l.contract.clone(),
            l.invoice_period.clone(),
            l.currency.clone(),
        )
    };
    let mut totals: BTreeMap<Key, (Amount, Amount)> = BTreeMap::new();
    for l in shadow {
        totals.entry(key(l)).or_default().1 += l.amount;
    }
    for l in live {
        if let Some(t) = totals.get_mut(&key(l)) {
            t.0 += l.amount;
        }
    }
    totals
        .into_iter()
        .map(
            |((customer, contract, invoice_period, currency), (live, shadow))| Delta {
                customer,
                contract,
                invoice_period,
                currency,
                live,
                shadow,
            },
        )
        .collect()
}

pub fn render(deltas: &[Delta]) -> String {
    let mut s = String::new();
    if deltas.is_empty() {
        s.push_str("(no shadow-priced usage: name a shadow_rate_card in the catalog)\n");
        return s;
    }
    let _ = writeln!(
        s,
        "{:<14} {:<14} {:<8} {:>14} {:>14} {:>14} {:>10}",
        "customer", "contract", "period", "live", "shadow", "difference", "percent"
    );
    let mut sums: BTreeMap<&str, (Amount, Amount)> = BTreeMap::new();
    for d in deltas {
        let digits = minor_unit_digits(&d.currency);
        let _ = writeln!(
            s,
            "{:<14} {:<14} {:<8} {:>10} {} {:>10} {} {:>10} {} {:>10}",
            d.customer,
            d.contract,
            d.invoice_period,
            d.live.format_fixed(digits),
            d.currency,
            d.shadow.format_fixed(digits),
            d.currency,
            d.difference().format_fixed(digits),
            d.currency,
            percent(d),
        );
        let e = sums.entry(&d.currency).or_default();
        e.0 += d.live;
        e.1 += d.shadow;
    }
    for (currency, (live, shadow)) in sums {
        let total = Delta {
            customer: String::new(),
            contract: String::new(),
            invoice_period: String::new(),
            currency: currency.to_string(),
            live,
            shadow,
        };
        let digits = minor_unit_digits(currency);
        let _ = writeln!(
            s,
            "{:<38} {:>10} {currency} {:>10} {currency} {:>10} {currency} {:>10}",
            "all",
            live.format_fixed(digits),
            shadow.format_fixed(digits),
            total.difference().format_fixed(digits),
            percent(&total),
        );
    }
    s
}

fn percent(d: &Delta) -> String {
    d.percent()
        .map_or("n/a".to_string(), |p| format!("{}%", p.format_fixed(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_exact_and_rounded_once() {
        let d = Delta {
            customer: "c".into(),
            contract: "k".into(),
            invoice_period: "2026-11".into(),
            currency: "USD".into(),
            live: Amount::parse("300").unwrap(),
            shadow: Amount::parse("301").unwrap(),
        };
        // 1 / 300 = 0.3333...% -> 0.33
        assert_eq!(d.percent(), Some(Amount::parse("0.33").unwrap()));
        assert_eq!(d.difference(), Amount::parse("1").unwrap());
        let zero = Delta {
            live: Amount::ZERO,
            ..d
        };
        assert_eq!(zero.percent(), None);
    }
}

#[derive(clap::Subcommand)]
pub enum ShadowCommand {
    /// Live against shadow totals per customer, contract and invoice period, with the
    /// difference in money and percent; from a run's output or from ClickHouse.
    Report {
        #[command(flatten)]
        source: InvoiceSource,
    },
}

impl ShadowCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let ShadowCommand::Report { source } = self;
        let (_, ch) = open_clickhouse(source.config.as_deref(), source.clickhouse_url.as_ref())?;
        let filter = Filter {
            customer: source.customer,
            period: source.period,
        };
        let read = |table: &str| match &ch {
            Some(ch) => table_from_clickhouse(ch, table, &filter),
            None => table_from_output(&source.out, table, &filter),
        };
        let live = read("invoice_lines").map_err(anyhow::Error::msg)?;
        let shadow = read("shadow_invoice_lines").map_err(anyhow::Error::msg)?;
        print!("{}", render(&deltas(&live, &shadow)));
        Ok(ExitCode::SUCCESS)
    }
}
