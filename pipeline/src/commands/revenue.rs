//! `meterflow revenue`: the revenue schedule (ASC 606 / IFRS 15) of a run's invoice lines, per
//! contract, performance obligation and period (docs/revenue.md), printed and written to the
//! `revenue_schedule` table as signed rows: a change retracts the row it replaces.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::anyhow;
use meterflow_schemas::catalog::ContractIdx;
use meterflow_schemas::money::{minor_unit_digits, Amount, Rounding};
use meterflow_schemas::revenue::{
    changes, is_catch_up, journal, net, remaining, schedule, Amounts, BilledLine, JournalLine,
    Obligated, Remaining, Schedule, Scheduled, Terms,
};
use meterflow_schemas::time::EventTime;

use crate::commands::report::ReportArgs;
use crate::reports::invoice_preview::{self, Filter};
use crate::sinks::revenue;

#[derive(clap::Args)]
pub struct RevenueCommand {
    #[command(flatten)]
    report: ReportArgs,
    /// Recognise as of this time (RFC 3339) [default: the run's watermark]: periods that ended
    /// by then are closed and billed.
    #[arg(long)]
    as_of: Option<String>,
    /// Also print each period's journal entry for the general ledger: accounts receivable,
    /// contract asset, contract liability and revenue, debited and credited (all contracts).
    #[arg(long)]
    journal: bool,
    /// Also print each contract's remaining performance obligations: what its fees (and
    /// material rights) have yet to recognise up to its end, and how much of it within the
    /// next 12 months (usage left out: it is recognised as it is used).
    #[arg(long)]
    rpo: bool,
}

impl RevenueCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let a = &self.report;
        let r = a.open("revenue")?;
        let unit = r.cfg.billing.period;
        if let Some(p) = &a.period {
            unit.parse_label(p)
                .ok_or_else(|| anyhow!("--period {p} is not a billing period; write it as the invoices name it (e.g. 2026-11)"))?;
        }
        let as_of = match &self.as_of {
            Some(t) => EventTime::parse_rfc3339(t).map_err(|e| anyhow!("--as-of {t}: {e}; write it like 2026-12-01T00:00:00Z"))?,
            None => r.watermark(&a.out)?.ok_or_else(|| {
                anyhow!("the run's output records no watermark, so which periods are closed is unknown; pass --as-of, or run `meterflow run` over it again (it resumes)")
            })?,
        };
        let lines = match &r.ch {
            Some(ch) => invoice_preview::from_clickhouse(ch, &Filter::default()),
            None => invoice_preview::from_output(&a.out, &Filter::default()),
        }
        .map_err(anyhow::Error::msg)?;
        let billed: Vec<BilledLine> = lines
            .into_iter()
            .filter(|l| a.customer.as_deref().is_none_or(|c| c == l.customer))
            .map(|l| BilledLine {
                customer: l.customer,
                contract: l.contract,
                invoice_period: l.invoice_period,
                service_period: l.service_period,
                kind: l.kind,
                sku: l.sku,
                amount: l.amount,
                currency: l.currency,
            })
            .collect();
        let catalog = &r.catalog;
        let terms: Vec<Terms> = catalog
            .contracts
            .iter()
            .enumerate()
            .map(|(i, c)| Terms {
                customer: catalog.customers[c.customer.ix()].id.clone(),
                contract: c.id.clone(),
                currency: catalog.currency_of(ContractIdx(i as u32)).to_string(),
                span: (c.starts, c.ends),
                grants: &c.terms.credits,
                fees: &c.terms.fees,
                term_fees: &c.terms.term_fees,
            })
            .filter(|p| a.customer.as_deref().is_none_or(|c| c == p.customer))
            .collect();
        let now = schedule(&billed, &terms, unit, as_of);
        let rows = match &r.ch {
            Some(ch) => revenue::from_clickhouse(ch),
            None => revenue::from_files(&a.out),
        }
        .map_err(anyhow::Error::msg)?;
        let mut recorded = net(&rows);
        if let Some(c) = &a.customer {
            recorded.retain(|k, _| &k.customer_id == c);
        }
        let new: Vec<Scheduled> = changes(&recorded, &now, a.period.as_deref())
            .into_iter()
            .map(|(key, amounts, sign)| Scheduled {
                computed_at: r.at,
                run_id: r.run_id.clone(),
                key,
                amounts,
                sign,
            })
            .collect();
        match &r.ch {
            Some(ch) => revenue::to_clickhouse(ch, &new).map_err(anyhow::Error::msg)?,
            None => {
                let mut all = rows;
                all.extend(new.iter().cloned());
                revenue::to_files(&a.out, r.catalog.clone(), unit, &all)
                    .map_err(anyhow::Error::msg)?;
            }
        }
        print!("{}", render(&now, a.period.as_deref(), as_of));
        if self.journal {
            print!("{}", render_journal(&now, a.period.as_deref()));
        }
        if self.rpo {
            let left = remaining(&billed, &terms, &now, unit, as_of, 12, minor_unit_digits);
            print!("{}", render_remaining(&left, as_of));
            let rows: Vec<Obligated> = left
                .into_iter()
                .map(|remaining| Obligated {
                    computed_at: r.at,
                    run_id: r.run_id.clone(),
                    as_of,
                    remaining,
                })
                .collect();
            let n = rows.len();
            let to = (a.out.as_path(), r.catalog.clone(), unit);
            revenue::remaining_to(r.ch.as_ref(), to, rows).map_err(anyhow::Error::msg)?;
            println!("remaining_obligations: {n} rows written");
        }
        let retracted = new.iter().filter(|s| s.sign < 0).count();
        println!(
            "\nrevenue_schedule: {} rows stated, {retracted} retracted ({})",
            new.len() - retracted,
            if new.is_empty() {
                "nothing changed since the last schedule"
            } else {
                "the schedule changed"
            }
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// The rows of one invoice: `(obligation, service period, catch-up, amounts)` by customer,
/// contract, period and currency.
type Invoices<'a> =
    BTreeMap<(&'a str, &'a str, &'a str, &'a str), Vec<(&'a str, &'a str, bool, Amounts)>>;

fn money(a: Amount, currency: &str) -> String {
    let d = minor_unit_digits(currency);
    a.round_to(d, Rounding::HalfEven).format_fixed(d)
}

/// The remaining performance obligations, per contract, with totals per currency.
fn render_remaining(left: &[Remaining], as_of: EventTime) -> String {
    let mut out = format!(
        "\nRemaining performance obligations as of {as_of}: contracted fees not yet recognised \
         (usage is recognised as it is used, and left out)\n"
    );
    let _ = writeln!(
        out,
        "  {:<40} {:>16} {:>14} {:>14}",
        "customer / contract", "next 12 months", "later", "total"
    );
    let mut totals: BTreeMap<&str, (Amount, Amount)> = BTreeMap::new();
    for r in left {
        let c = r.currency.as_str();
        let _ = writeln!(
            out,
            "  {:<40} {:>16} {:>14} {:>14}  {c}",
            format!("{} / {}", r.customer, r.contract),
            money(r.within, c),
            money(r.total - r.within, c),
            money(r.total, c),
        );
        let t = totals.entry(c).or_default();
        (t.0, t.1) = (t.0 + r.within, t.1 + r.total);
    }
    for (c, (within, total)) in totals {
        let _ = writeln!(
            out,
            "  {:<40} {:>16} {:>14} {:>14}  {c}",
            "total",
            money(within, c),
            money(total - within, c),
            money(total, c),
        );
    }
    out
}

/// Each period's journal entry, with its debit and credit totals.
fn render_journal(s: &Schedule, period: Option<&str>) -> String {
    let mut out = String::from("\nJournal entries (all contracts)\n");
    let lines = journal(s, period);
    let mut entries: BTreeMap<(&str, &str), Vec<&JournalLine>> = BTreeMap::new();
    for l in &lines {
        entries.entry((&l.period, &l.currency)).or_default().push(l);
    }
    for ((p, currency), lines) in entries {
        let _ = writeln!(out, "\n{p} ({currency})");
        let _ = writeln!(out, "  {:<40} {:>14} {:>14}", "account", "debit", "credit");
        let (mut debits, mut credits) = (Amount::ZERO, Amount::ZERO);
        for l in lines {
            debits += l.debit;
            credits += l.credit;
            let side = |x: Amount| {
                if x == Amount::ZERO {
                    String::new()
                } else {
                    money(x, currency)
                }
            };
            let _ = writeln!(
                out,
                "  {:<40} {:>14} {:>14}",
                l.account,
                side(l.debit),
                side(l.credit)
            );
        }
        let _ = writeln!(
            out,
            "  {:<40} {:>14} {:>14}",
            "total",
            money(debits, currency),
            money(credits, currency)
        );
    }
    out
}

/// The schedule per contract and period, with each period's totals and the check that
/// recognised + deferred = billed + unbilled.
fn render(s: &Schedule, period: Option<&str>, as_of: EventTime) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Revenue schedule as of {as_of} (periods ended by then are closed and billed)"
    );
    let mut by: Invoices = BTreeMap::new();
    for (k, a) in s
        .iter()
        .filter(|(k, _)| period.is_none_or(|p| p == k.period))
    {
        by.entry((&k.customer_id, &k.contract_id, &k.period, &k.currency))
            .or_default()
            .push((&k.obligation, &k.service_period, is_catch_up(k), *a));
    }
    if by.is_empty() {
        let _ = writeln!(
            out,
            "(no invoice lines{})",
            period.map_or(String::new(), |p| format!(" in {p}"))
        );
    }
    let mut holds = true;
    for ((customer, contract, p, currency), rows) in by {
        let _ = writeln!(out, "\n{customer} / {contract} — {p} ({currency})");
        let _ = writeln!(
            out,
            "  {:<28} {:<10} {:>14} {:>14} {:>14} {:>14}",
            "obligation", "service", "billed", "recognised", "deferred", "unbilled"
        );
        let mut total = Amounts::default();
        for (obligation, service, catch_up, a) in rows {
            holds &= a.balances();
            let _ = writeln!(
                out,
                "  {:<28} {:<10} {:>14} {:>14} {:>14} {:>14}{}",
                obligation,
                service,
                money(a.billed, currency),
                money(a.recognised, currency),
                money(a.deferred, currency),
                money(a.unbilled, currency),
                if catch_up { "  catch-up" } else { "" }
            );
            total.billed += a.billed;
            total.recognised += a.recognised;
            total.deferred += a.deferred;
            total.unbilled += a.unbilled;
        }
        let _ = writeln!(
            out,
            "  {:<28} {:<10} {:>14} {:>14} {:>14} {:>14}",
            "total",
            "",
            money(total.billed, currency),
            money(total.recognised, currency),
            money(total.deferred, currency),
            money(total.unbilled, currency)
        );
        // What this period and every one before it leave on the contract's balance sheet.
        let (liability, asset) = s
            .iter()
            .filter(|(k, _)| {
                k.contract_id == contract && k.currency == currency && k.period.as_str() <= p
            })
            .fold((Amount::ZERO, Amount::ZERO), |(l, a), (_, x)| {
                (l + x.deferred, a + x.unbilled)
            });
        let _ = writeln!(
            out,
            "  after {p}: contract liability (deferred revenue) {}, contract asset (unbilled) {}",
            money(liability, currency),
            money(asset, currency)
        );
    }
    let _ = writeln!(
        out,
        "\nrecognised + deferred = billed + unbilled in every row: {}",
        if holds { "holds" } else { "BROKEN" }
    );
    out
}
