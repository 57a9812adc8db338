//! `meterflow trace`: where did an event end up? Follows one event id through the output tables:
//! its source and offset, the rate-card version and tiers that priced it, and the invoice line
//! it is part of — or the rejection that stopped it, and any duplicate copies.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::reports::tables::{current_rows, read_table, Row};

fn get<'a>(r: &'a Row, k: &str) -> &'a str {
    r.get(k).map_or("", |s| s.as_str())
}

pub fn trace(out: &Path, event_id: &str) -> std::io::Result<String> {
    let mut s = String::new();
    let paths = crate::reports::tables::input_paths(out);
    let source = |r: &Row| {
        paths
            .get(get(r, "source"))
            .cloned()
            .unwrap_or_else(|| get(r, "source").to_string())
    };
    let usage: Vec<Row> = read_table(out, "usage_events")?
        .into_iter()
        .filter(|r| get(r, "event_id") == event_id)
        .collect();
    let duplicates: Vec<Row> = read_table(out, "duplicates")?
        .into_iter()
        .filter(|r| get(r, "event_id") == event_id)
        .collect();
    let rejections: Vec<Row> = read_table(out, "rejections")?
        .into_iter()
        .filter(|r| get(r, "event_id") == event_id)
        .collect();
    let _ = writeln!(s, "event {event_id}");
    if usage.is_empty() && duplicates.is_empty() && rejections.is_empty() {
        let _ = writeln!(
            s,
            "  not found in {} (usage_events, duplicates, rejections)",
            out.display()
        );
        return Ok(s);
    }
    for u in &usage {
        let _ = writeln!(
            s,
            "  accepted from {} at byte offset {}",
            source(u),
            get(u, "offset")
        );
        let _ = writeln!(
            s,
            "    {} / {} / {}: {} {} at {} ({}{})",
            get(u, "customer_id"),
            get(u, "contract_id"),
            get(u, "sku"),
            get(u, "quantity"),
            get(u, "unit"),
            get(u, "event_time"),
            get(u, "environment"),
            if get(u, "correction_action").is_empty() {
                String::new()
            } else {
                format!(
                    ", {} of {}",
                    get(u, "correction_action"),
                    get(u, "correction_of")
                )
            }
        );
        let _ = writeln!(
            s,
            "    priced by rate card {} version {}; service period {}, invoice period {}, arrival {}",
            get(u, "rate_card"),
            get(u, "rate_card_version"),
            get(u, "service_period"),
            get(u, "invoice_period"),
            get(u, "arrival")
        );
        if get(u, "billable") != "1" {
            let _ = writeln!(
                s,
                "    not billable (environment {}): counted, never priced",
                get(u, "environment")
            );
            continue;
        }
        let same_line = |r: &Row| {
            [
                "customer_id",
                "contract_id",
                "sku",
                "service_period",
                "invoice_period",
            ]
            .iter()
            .all(|k| get(r, k) == get(u, k))
                && get(r, "region") == get(u, "price_region")
        };
        for r in current_rows(&read_table(out, "rated_usage")?)
            .iter()
            .filter(|r| same_line(r) && get(r, "rate_card_version") == get(u, "rate_card_version"))
        {
            let _ = writeln!(
                s,
                "    rated: {} version {} {} tier {}: {} for {} {} (region {})",
                get(r, "rate_card"),
                get(r, "rate_card_version"),
                get(r, "model"),
                get(r, "tier"),
                get(r, "quantity"),
                get(r, "amount"),
                get(r, "currency"),
                get(r, "region")
            );
        }
        let lines: Vec<Row> = current_rows(&read_table(out, "invoice_lines")?)
            .into_iter()
            .filter(|r| same_line(r))
            .collect();
        if lines.is_empty() {
            let _ = writeln!(
                s,
                "    no current invoice line: every event behind it was voided"
            );
        }
        for l in &lines {
            let _ = writeln!(
                s,
                "    invoice line ({}): {} {} over {} events = {} {} (exact {}), region {}",
                get(l, "line_type"),
                get(l, "quantity"),
                get(u, "unit"),
                get(l, "events"),
                get(l, "amount"),
                get(l, "currency"),
                get(l, "amount_exact"),
                get(l, "region")
            );
        }
    }
    for d in &duplicates {
        let _ = writeln!(
            s,
            "  duplicate copy from {} at byte offset {} (counted, not billed)",
            source(d),
            get(d, "offset")
        );
    }
    for r in &rejections {
        let _ = writeln!(
            s,
            "  rejected from {} at byte offset {}: {} ({})",
            source(r),
            get(r, "offset"),
            get(r, "reason"),
            get(r, "message")
        );
        let _ = writeln!(s, "    remediation: {}", get(r, "remediation"));
    }
    Ok(s)
}

/// `meterflow trace`.
#[derive(clap::Args)]
pub struct TraceCommand {
    /// Output directory of a run.
    #[arg(long, short = 'o', default_value = "out")]
    out: PathBuf,
    event_id: String,
}

impl TraceCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        print!("{}", trace(&self.out, &self.event_id)?);
        Ok(ExitCode::SUCCESS)
    }
}
