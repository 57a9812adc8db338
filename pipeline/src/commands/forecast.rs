//! `meterflow forecast`: the two-stream revenue forecast (contracted and usage) for the next
//! months, from a run's accepted usage (docs/forecast.md); with `--backtest N`, the forecast of
//! the last N closed months from the data before them, against what they billed (MAPE).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clickhouse::Row;
use meterflow_schemas::catalog::{Catalog, ContractIdx, SkuIdx};
use meterflow_schemas::forecast::{forecast, Carried, DayUsage, Forecast, ForecastKey, Forecasted};
use meterflow_schemas::money::{minor_unit_digits, Amount, Quantity, Rounding};
use meterflow_schemas::pricing::invoice::replay_credit;
use meterflow_schemas::rows::LineKind;
use meterflow_schemas::tables;
use meterflow_schemas::time::{EventTime, PeriodUnit};
use serde::Serialize;

use crate::commands::report::ReportArgs;
use crate::reports::invoice_preview::{self, Filter};
use crate::reports::net_usage;
use crate::sinks::clickhouse::sink::seconds;
use crate::sinks::files::replace_table;

const DAY: i64 = 86_400_000;

#[derive(clap::Args)]
pub struct ForecastCommand {
    #[command(flatten)]
    report: ReportArgs,
    /// How many billing periods to forecast, from the one holding --as-of (`3`, `3mo`).
    #[arg(long, default_value = "3mo")]
    horizon: String,
    /// Forecast from the usage before this time (RFC 3339) [default: the run's watermark].
    #[arg(long)]
    as_of: Option<String>,
    /// Instead: forecast the last N closed periods from the usage before them, and compare
    /// with the usage revenue they billed (MAPE). Writes nothing.
    #[arg(long)]
    backtest: Option<usize>,
}

/// Daily usage of every contract.
fn days(buckets: net_usage::Buckets) -> Vec<DayUsage> {
    buckets
        .into_iter()
        .map(|((contract, sku, day, _), (quantity, events))| DayUsage {
            contract,
            sku,
            day: EventTime(day),
            quantity,
            events,
        })
        .collect()
}

#[derive(Row, Serialize)]
struct ForecastRow<'a> {
    computed_at: u32,
    run_id: &'a str,
    as_of: u32,
    month: &'a str,
    stream: &'a str,
    sku: &'a str,
    segment: &'a str,
    currency: &'a str,
    quantity: i128,
    amount: i128,
    low: i128,
    high: i128,
}

/// What the forecast carries in from the invoices before the period holding `at`: what the
/// period before billed of each contract's peak and distinct-count meters, and what each
/// contract's credit grants held after it (its credit lines replayed in pricing's burn order).
fn carried(
    catalog: &Catalog,
    unit: PeriodUnit,
    lines: &[invoice_preview::PreviewLine],
    at: EventTime,
) -> Carried {
    let before = unit.label(unit.period_of(EventTime(unit.period_of(at).0 .0 - 1)));
    let mut meters: BTreeMap<(ContractIdx, SkuIdx), Quantity> = BTreeMap::new();
    for l in lines
        .iter()
        .filter(|l| l.kind == LineKind::Usage && l.service_period == before)
    {
        let (Some(c), Some(s)) = (catalog.contract(&l.contract), catalog.sku(&l.sku)) else {
            continue;
        };
        if !catalog.skus[s.ix()].aggregation.is_additive() {
            *meters.entry((c, s)).or_default() += Quantity::parse(&l.quantity).unwrap_or_default();
        }
    }
    let credit_left = invoice_preview::credit_used(lines)
        .into_iter()
        .filter_map(|(contract, used)| {
            let c = catalog.contract(contract)?;
            let grants = &catalog.contracts[c.ix()].terms.credits;
            (!grants.is_empty()).then(|| {
                (
                    c,
                    replay_credit(grants, &used, unit, Some(&before)).balances,
                )
            })
        })
        .collect();
    Carried {
        meters,
        credit_left,
    }
}

/// `bound` moved by as much as `priced` differs from `amount` (the part of usage above the
/// minimum spend and below the maximum), so the interval stays around the priced usage.
fn scaled(bound: Amount, priced: Amount, amount: Amount) -> Amount {
    bound + (priced - amount)
}

fn horizon(text: &str) -> anyhow::Result<usize> {
    let n = text.trim_end_matches("mo").trim();
    match n.parse::<usize>() {
        Ok(n) if (1..=24).contains(&n) => Ok(n),
        _ => bail!(
            "--horizon {text} is not a number of billing periods from 1 to 24; write it like 3mo"
        ),
    }
}

fn money(a: Amount, currency: &str) -> String {
    let d = minor_unit_digits(currency);
    a.round_to(d, Rounding::HalfEven).format_fixed(d)
}

impl ForecastCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let a = &self.report;
        let r = a.open("forecast")?;
        let unit = r.cfg.billing.period;
        let months = horizon(&self.horizon)?;
        let watermark = match &self.as_of {
            Some(t) => EventTime::parse_rfc3339(t)
                .map_err(|e| anyhow!("--as-of {t}: {e}; write it like 2026-12-01T00:00:00Z"))?,
            None => r
                .watermark(&a.out)?
                .ok_or_else(|| anyhow!("the run's output records no watermark; pass --as-of"))?,
        };
        let select = net_usage::Select {
            bucket_ms: DAY,
            before: None,
            contracts: None,
            allocation: None,
        };
        let usage = days(match &r.ch {
            Some(ch) => net_usage::from_clickhouse(ch, &r.catalog, &select)?,
            None => net_usage::from_output(&a.out, &r.catalog, &select)?,
        });
        let lines = match &r.ch {
            Some(ch) => invoice_preview::from_clickhouse(ch, &Filter::default()),
            None => invoice_preview::from_output(&a.out, &Filter::default()),
        }
        .map_err(anyhow::Error::msg)?;
        if let Some(n) = self.backtest {
            return backtest(
                &r.catalog,
                unit,
                &usage,
                &lines,
                watermark,
                n,
                r.cfg.billing.rounding,
            );
        }
        let carried = carried(&r.catalog, unit, &lines, watermark);
        let rounding = r.cfg.billing.rounding;
        let f = forecast(
            &r.catalog, unit, &usage, &carried, watermark, months, rounding,
        );
        if f.is_empty() {
            bail!("no billable usage before {watermark} to forecast from");
        }
        print!("{}", render(&f, watermark));
        let rows: Vec<Forecasted> = f
            .into_iter()
            .map(|(key, forecast)| Forecasted {
                computed_at: r.at,
                run_id: r.run_id.clone(),
                as_of: watermark,
                key,
                forecast,
            })
            .collect();
        match &r.ch {
            Some(ch) => {
                let out: Vec<ForecastRow> = rows
                    .iter()
                    .map(|x| ForecastRow {
                        computed_at: seconds(x.computed_at),
                        run_id: &x.run_id,
                        as_of: seconds(x.as_of),
                        month: &x.key.month,
                        stream: x.key.stream,
                        sku: &x.key.sku,
                        segment: &x.key.segment,
                        currency: &x.key.currency,
                        quantity: x.forecast.quantity.0,
                        amount: x.forecast.amount.0,
                        low: x.forecast.low.0,
                        high: x.forecast.high.0,
                    })
                    .collect();
                ch.insert::<ForecastRow<'static>>(tables::FORECAST.name, &out)
                    .map_err(anyhow::Error::msg)?;
            }
            None => replace_table(&a.out, &tables::FORECAST, r.catalog.clone(), unit, rows)
                .map_err(anyhow::Error::msg)?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Amount, low and high per (stream, SKU), per (month, currency).
type Months<'a> =
    BTreeMap<(&'a str, &'a str), BTreeMap<(&'a str, &'a str), (Amount, Amount, Amount)>>;

/// The forecast per month: both streams by currency, and the usage stream per SKU.
fn render(f: &BTreeMap<ForecastKey, Forecast>, as_of: EventTime) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Revenue forecast from usage before {as_of} (80% interval)"
    );
    let mut months: Months = BTreeMap::new();
    for (k, v) in f {
        let e = months
            .entry((&k.month, &k.currency))
            .or_default()
            .entry((k.stream, &k.sku))
            .or_default();
        e.0 += v.amount;
        e.1 += v.low;
        e.2 += v.high;
    }
    for ((month, currency), streams) in months {
        let _ = writeln!(s, "\n{month} ({currency})");
        let (mut total, mut low, mut high) = (Amount::ZERO, Amount::ZERO, Amount::ZERO);
        for ((stream, sku), (amount, lo, hi)) in streams {
            let what = if sku.is_empty() {
                stream.to_string()
            } else {
                format!("{stream}: {sku}")
            };
            let _ = writeln!(
                s,
                "  {what:<24} {:>14}  [{} .. {}]",
                money(amount, currency),
                money(lo, currency),
                money(hi, currency)
            );
            total += amount;
            low += lo;
            high += hi;
        }
        let _ = writeln!(
            s,
            "  {:<24} {:>14}  [{} .. {}]",
            "total",
            money(total, currency),
            money(low, currency),
            money(high, currency)
        );
    }
    s
}

/// Forecasts the last `n` closed periods from the usage before them, against the usage revenue
/// their invoices bill (usage and late-usage lines by service period).
fn backtest(
    catalog: &Catalog,
    unit: PeriodUnit,
    usage: &[DayUsage],
    lines: &[invoice_preview::PreviewLine],
    watermark: EventTime,
    n: usize,
    rounding: Rounding,
) -> anyhow::Result<ExitCode> {
    let mut first = unit.period_of(watermark);
    for _ in 0..n {
        first = unit.period_of(EventTime(first.0 .0 - 1));
    }
    let cutoff = first.0;
    let mut actual: BTreeMap<String, Amount> = BTreeMap::new();
    for l in lines
        .iter()
        .filter(|l| matches!(l.kind, LineKind::Usage | LineKind::Adjustment))
    {
        *actual.entry(l.service_period.clone()).or_default() += l.amount;
    }
    let f = forecast(
        catalog,
        unit,
        usage,
        &carried(catalog, unit, lines, cutoff),
        cutoff,
        n,
        rounding,
    );
    let mut predicted: BTreeMap<String, (Amount, Amount, Amount)> = BTreeMap::new();
    for (k, v) in f.iter().filter(|(k, _)| k.stream == "usage") {
        // Usage lines bill the usage before true-ups and caps: compare like with like, the
        // interval scaled to it.
        let e = predicted.entry(k.month.clone()).or_default();
        e.0 += v.priced;
        e.1 += scaled(v.low, v.priced, v.amount);
        e.2 += scaled(v.high, v.priced, v.amount);
    }
    println!(
        "Backtest: usage revenue of the {n} periods from {}, forecast from the usage before it",
        unit.label(first)
    );
    println!(
        "  {:<10} {:>14} {:>14} {:>9}  80% interval",
        "period", "forecast", "billed", "error"
    );
    let (mut errors, mut inside) = (Vec::new(), 0);
    for (month, (f, lo, hi)) in &predicted {
        let Some(billed) = actual.get(month).copied().filter(|b| *b > Amount::ZERO) else {
            continue;
        };
        let err = (f.0 - billed.0).abs() as f64 / billed.0 as f64;
        errors.push(err);
        let within = *lo <= billed && billed <= *hi;
        inside += usize::from(within);
        println!(
            "  {month:<10} {:>14} {:>14} {:>8.2}%  [{} .. {}]{}",
            f.format_fixed(2),
            billed.format_fixed(2),
            err * 100.0,
            lo.format_fixed(2),
            hi.format_fixed(2),
            if within { "" } else { "  outside" }
        );
    }
    if errors.is_empty() {
        bail!(
            "no billed usage in the {n} periods before {}: nothing to compare with",
            unit.label(unit.period_of(watermark))
        );
    }
    let mape = errors.iter().sum::<f64>() / errors.len() as f64 * 100.0;
    println!(
        "MAPE {mape:.2}% over {} periods; {inside} of {} inside the 80% interval",
        errors.len(),
        errors.len()
    );
    // The naive forecast to beat: the last period before the cutoff, repeated.
    let before = unit.label(unit.period_of(EventTime(cutoff.0 - 1)));
    if let Some(last) = actual.get(&before).copied().filter(|b| *b > Amount::ZERO) {
        let naive: Vec<f64> = predicted
            .keys()
            .filter_map(|m| actual.get(m).filter(|b| **b > Amount::ZERO))
            .map(|b| (last.0 - b.0).abs() as f64 / b.0 as f64)
            .collect();
        println!(
            "naive forecast ({before} repeated): MAPE {:.2}%",
            naive.iter().sum::<f64>() / naive.len().max(1) as f64 * 100.0
        );
    }
    Ok(ExitCode::SUCCESS)
}
