//! `meterflow demo`: a realistic month of usage with every kind of trouble a billing pipeline
//! meets — retries, a reused event id, out-of-order and late events, invalid records, sandbox
//! traffic, a void and an amendment, CloudEvents and checksummed events, a rate-card change mid
//! period and a grandfathered contract — run end to end, then shown: the invoice preview and
//! where every record ended up.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use meterflow_operators::dataflow::Cluster;
use meterflow_schemas::canonical::{checksum_of, Canonical, CanonicalFields};
use meterflow_schemas::money::Quantity;
use meterflow_schemas::rejection::Reason;
use meterflow_schemas::time::EventTime;

use crate::commands::gen::Rng;
use crate::commands::run::{run, summarize, RunArgs, RunReport};
use crate::commands::trace::trace;
use crate::reports::tables::read_table;

pub const CATALOG: &str = r#"# The demo catalog: three customers, four SKUs, one rate card with a change on Nov 15.

[[sku]]
id = "api_calls"
unit = "requests"
description = "API requests"

[[sku]]
id = "tokens"
unit = "tokens"
description = "LLM tokens, graduated"

[[sku]]
id = "storage"
unit = "GB"
description = "Stored GB, volume-priced"

[[sku]]
id = "seats"
unit = "seats"
description = "Seats, billed at the month's peak"
aggregation = "max"

[[tax]]
id = "us-sales"
name = "Sales tax 8.25%"
rate = "0.0825"

[[customer]]
id = "acme"
name = "Acme Corp"
tax = "us-sales"

[[customer]]
id = "globex"
name = "Globex"

[[customer]]
id = "initech"
name = "Initech"

[[rate_card]]
id = "standard"
version = 1
effective_from = "2026-01-01T00:00:00Z"
currency = "USD"

[[rate_card.price]]
sku = "api_calls"
model = "per_unit"
unit_price = "0.002"

[[rate_card.price]]
sku = "api_calls"
region = "eu-west-1"
model = "per_unit"
unit_price = "0.0025"

[[rate_card.price]]
sku = "tokens"
model = "graduated"
tiers = [
  { up_to = "100000", unit_price = "0.00002", flat_fee = "5" },
  { up_to = "1000000", unit_price = "0.00001", flat_fee = "20" },
  { unit_price = "0.000005" },
]

[[rate_card.price]]
sku = "storage"
model = "volume"
tiers = [
  { up_to = "500", unit_price = "0.10" },
  { unit_price = "0.08", flat_fee = "10" },
]

[[rate_card.price]]
sku = "seats"
model = "per_unit"
unit_price = "8"

# Version 2 takes effect mid-November: cheaper API calls, pricier tokens.
[[rate_card]]
id = "standard"
version = 2
effective_from = "2026-11-15T00:00:00Z"
currency = "USD"

[[rate_card.price]]
sku = "api_calls"
model = "per_unit"
unit_price = "0.0015"

[[rate_card.price]]
sku = "api_calls"
region = "eu-west-1"
model = "per_unit"
unit_price = "0.002"

[[rate_card.price]]
sku = "tokens"
model = "graduated"
tiers = [
  { up_to = "100000", unit_price = "0.000025", flat_fee = "5" },
  { up_to = "1000000", unit_price = "0.000012", flat_fee = "20" },
  { unit_price = "0.000006" },
]

[[rate_card.price]]
sku = "storage"
model = "volume"
tiers = [
  { up_to = "500", unit_price = "0.10" },
  { unit_price = "0.07", flat_fee = "10" },
]

[[rate_card.price]]
sku = "seats"
model = "per_unit"
unit_price = "8"

[[contract]]
id = "acme-2026"
customer = "acme"
rate_card = "standard"
starts = "2026-01-01T00:00:00Z"
minimum_spend = "2000"      # commitment: a true-up line tops each month up to 2000
budget = "2500"             # service budget: budget_burn when usage runs ahead of it

[[contract.fee]]            # subscription
name = "platform"
amount = "49"

[[contract.fee]]            # onboarding help comes with the platform: it bills nothing, but
name = "onboarding"         # sells for 15 on its own, so the revenue schedule allocates
amount = "0"                # the platform's 49 across both by 49 : 15
ssp = "15"

[[contract.discount]]       # 10% off tokens
sku = "tokens"
percent = "10"

[[contract.entitlement]]    # 100k tokens included a month: signals at 50/90/100%
sku = "tokens"
included = "100000"
soft_limit = "150000"

[[contract]]
id = "globex-legacy"
customer = "globex"
rate_card = "standard"
version = 1          # grandfathered on version 1
starts = "2025-06-01T00:00:00Z"
ends = "2027-06-01T00:00:00Z"

[[contract.fee]]            # an annual support plan added on 15 October: billed in advance,
name = "support"            # recognised by day over its term (`meterflow revenue`); the
amount = "1200"             # contract ends first, so the first term runs to 1 June and
term_months = 12            # bills its share, 229 of 365 days
starts = "2026-10-15T00:00:00Z"

[contract.marketplace]      # bought through AWS Marketplace: `meterflow export aws`
listing = "aws-marketplace"
customer = "cU5tMeRiD-globex"   # the CustomerIdentifier ResolveCustomer returned

[[contract]]
id = "initech-2026"
customer = "initech"
rate_card = "standard"
starts = "2026-03-01T00:00:00Z"

[[contract.credit]]         # prepaid: burnt down by initech's invoices until it expires
name = "onboarding"
amount = "5000"
granted = "2026-03-01T00:00:00Z"
expires = "2027-03-01T00:00:00Z"

[contract.marketplace]      # bought through Azure Marketplace: `meterflow export azure`
listing = "azure-marketplace"
customer = "5f1c2a9e-3b7d-4e2a-9c1f-7d2b8e6a4c10"   # the SaaS subscription's resourceId
plan = "standard"

[[customer]]
id = "hooli"
name = "Hooli"

[[contract]]
id = "hooli-2026"
customer = "hooli"
rate_card = "standard"
starts = "2026-01-01T00:00:00Z"

[contract.marketplace]      # bought through Google Cloud Marketplace: `meterflow export gcp`
listing = "gcp-marketplace"
customer = "project:hooli-prod"

# Marketplace listings: the dimension each SKU is metered as, and how many SKU units one
# marketplace unit is. Seats are a peak (max) meter: a listing cannot meter them per hour.
[[marketplace]]
id = "aws-marketplace"
kind = "aws"
product_code = "prod-mtrflw7demo"

[[marketplace.dimension]]
sku = "api_calls"
dimension = "api_calls_1k"
unit_size = "1000"
allocation_tags = ["project"]  # each record's UsageAllocations: its units split by project

[[marketplace.dimension]]
sku = "tokens"
dimension = "tokens_1k"
unit_size = "1000"
allocation_tags = ["project"]

[[marketplace.dimension]]
sku = "storage"
dimension = "storage_gb"

[[marketplace]]
id = "azure-marketplace"
kind = "azure"

[[marketplace.dimension]]
sku = "api_calls"
dimension = "api-calls-1k"
unit_size = "1000"

[[marketplace.dimension]]
sku = "tokens"
dimension = "tokens-1k"
unit_size = "1000"

[[marketplace.dimension]]
sku = "storage"
dimension = "storage-gb"

[[marketplace]]
id = "gcp-marketplace"
kind = "gcp"
service_name = "meterflow-demo.gcpmarketplace.example.com"

[[marketplace.dimension]]
sku = "tokens"
dimension = "tokens_1k"
unit_size = "1000"
"#;

const DEMO_CONFIG: &str = "# The demo's configuration: defaults, except small chunks (so event time advances every few\n# records, as on a live stream) and a flush after every pricing round (so invoice_lines shows\n# every retraction instead of consolidating them away).\n[input]\nchunk_bytes = 1024\n\n[output]\nflush_interval = \"0ms\"\n\n[watermark]\ntolerance = \"1h\"\n\n[dedup]\nhorizon = \"7d\"\n";

/// The background traffic comes from the first three; Hooli only sends the event it later voids.
const CUSTOMERS: [(&str, &str); 4] = [
    ("acme", "acme-2026"),
    ("globex", "globex-legacy"),
    ("initech", "initech-2026"),
    ("hooli", "hooli-2026"),
];
const HOOLI: usize = 3;
const SKUS: [(&str, &str); 4] = [
    ("api_calls", "requests"),
    ("tokens", "tokens"),
    ("storage", "GB"),
    ("seats", "seats"),
];

/// Showcase records: (event id, what should happen to it).
pub const SHOWCASE: [(&str, &str); 14] = [
    (
        "evt-retry-1",
        "sent twice by a retrying producer: billed once, one duplicate",
    ),
    (
        "evt-conflict",
        "same id reused for different usage: second copy rejected",
    ),
    (
        "evt-ooo-1",
        "Oct 31 22:00 arriving after November traffic, inside the 1h tolerance: billed in October",
    ),
    (
        "evt-late-1",
        "October usage arriving after October closed: adjustment billed in November",
    ),
    (
        "evt-void-target",
        "voided by evt-void-1: retracted from the invoice",
    ),
    (
        "evt-void-1",
        "the void (negative quantity, correction of evt-void-target)",
    ),
    ("evt-amend-1", "amends evt-amend-target by -200 tokens"),
    (
        "evt-sandbox-1",
        "sandbox environment: counted, never priced",
    ),
    ("evt-ce-1", "a CloudEvents 1.0 envelope"),
    ("evt-sum-1", "carries a valid sha256 checksum"),
    ("evt-bad-sum", "checksum does not match: rejected"),
    ("evt-neg", "negative quantity on a normal event: rejected"),
    (
        "evt-v2-1",
        "after the Nov 15 rate change: priced by version 2",
    ),
    (
        "evt-pinned-1",
        "same day, grandfathered contract pinned to version 1",
    ),
];

struct Writer {
    lines: Vec<String>,
    canonical: Canonical,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    fn native(
        &mut self,
        id: &str,
        c: usize,
        sku: usize,
        q: Quantity,
        t: EventTime,
        env: &str,
        extra: &str,
    ) {
        let (customer, contract) = CUSTOMERS[c];
        let (sku, unit) = SKUS[sku];
        self.lines.push(format!(
            r#"{{"event_id":"{id}","customer_id":"{customer}","contract_id":"{contract}","sku":"{sku}","unit":"{unit}","quantity":"{q}","timestamp":"{t}","environment":"{env}"{extra}}}"#
        ));
    }

    fn checksum(&mut self, id: &str, c: usize, sku: usize, q: Quantity, t: EventTime) -> String {
        let (customer, contract) = CUSTOMERS[c];
        let (sku, unit) = SKUS[sku];
        checksum_of(self.canonical.render(&CanonicalFields {
            event_id: id,
            customer_id: customer,
            contract_id: contract,
            sku,
            unit,
            quantity: q,
            time: t,
            environment: "production",
            ..Default::default()
        }))
    }
}

fn t(s: &str) -> EventTime {
    EventTime::parse_rfc3339(s).expect("demo times are valid")
}

/// The demo's events, in arrival order.
pub fn events() -> Vec<String> {
    let mut w = Writer {
        lines: Vec::new(),
        canonical: Canonical::default(),
    };
    let mut rng = Rng::new(7);
    let start = t("2026-10-20T00:00:00Z").millis();
    let end = t("2026-11-21T00:00:00Z").millis();
    let n = 3000i64;
    let nov_1 = t("2026-11-01T00:20:00Z");
    let nov_3 = t("2026-11-03T00:00:00Z");
    let mut placed_ooo = false;
    let mut placed_late = false;
    let mut void_target_time = None;
    for i in 0..n {
        let time = EventTime(start + (end - start) * i / n + rng.below(60_000) as i64);
        let c = rng.below(3) as usize;
        let sku = rng.below(3) as usize;
        let q = match sku {
            0 => Quantity::from_units(1 + rng.below(400) as i64),
            1 => Quantity::from_units(100 + rng.below(4000) as i64),
            _ => Quantity(rng.below(2000) as i128 * 1_000_000_000 / 10),
        };
        // Globex tags most of its API and token usage with the project it was for; its AWS
        // listing splits what it sends by that tag (`allocation_tags`).
        let project = ["search", "chat", "batch"][(i % 3) as usize];
        let tagged;
        let region = if c == 0 && sku == 0 && i % 3 == 0 {
            r#","metadata":{"region":"eu-west-1","plan":"pro","attributes":{"endpoint":"/v1/chat"}}"#
        } else if c == 1 && sku < 2 && i % 4 != 0 {
            tagged = format!(r#","metadata":{{"attributes":{{"project":"{project}"}}}}"#);
            &tagged
        } else {
            ""
        };
        w.native(
            &format!("evt-{i:05}"),
            c,
            sku,
            q,
            time,
            "production",
            region,
        );
        if i % 40 == 0 {
            // A producer retry: the exact same record again.
            let again = w.lines.last().expect("just pushed").clone();
            w.lines.push(again);
        }
        if !placed_ooo && time > nov_1 {
            w.native(
                "evt-ooo-1",
                0,
                0,
                Quantity::from_units(250),
                t("2026-10-31T22:00:00Z"),
                "production",
                "",
            );
            placed_ooo = true;
        }
        if !placed_late && time > nov_3 {
            w.native(
                "evt-late-1",
                1,
                1,
                Quantity::from_units(50_000),
                t("2026-10-30T12:00:00Z"),
                "production",
                "",
            );
            w.native(
                "evt-late-2",
                2,
                2,
                Quantity::from_units(40),
                t("2026-10-31T06:00:00Z"),
                "production",
                "",
            );
            placed_late = true;
        }
        if i == 2000 {
            void_target_time = Some(showcase(&mut w, time));
        }
        if let (2100, Some(target_time)) = (i, void_target_time) {
            // A hundred events later (a later pricing round), Hooli voids its only event.
            w.native(
                "evt-void-1",
                HOOLI,
                1,
                Quantity::from_units(-30_000),
                target_time,
                "production",
                r#","correction":{"action":"void","original_event_id":"evt-void-target"}"#,
            );
        }
        if i == 2600 {
            // After the Nov 15 rate change: acme moves to version 2, grandfathered globex stays on 1.
            w.native(
                "evt-v2-1",
                0,
                1,
                Quantity::from_units(2_000),
                time,
                "production",
                "",
            );
            w.native(
                "evt-pinned-1",
                1,
                1,
                Quantity::from_units(2_000),
                time,
                "production",
                "",
            );
        }
    }
    w.lines
}

/// Writes the showcase records; returns the time of the event voided later.
fn showcase(w: &mut Writer, now: EventTime) -> EventTime {
    let at = |m: i64| EventTime(now.millis() - m * 60_000);
    let q = Quantity::from_units;
    w.native("evt-retry-1", 0, 0, q(120), at(30), "production", "");
    w.native("evt-retry-1", 0, 0, q(120), at(30), "production", "");
    w.native("evt-conflict", 2, 0, q(10), at(29), "production", "");
    w.native("evt-conflict", 2, 0, q(99), at(29), "production", "");
    w.native(
        "evt-void-target",
        HOOLI,
        1,
        q(30_000),
        at(28),
        "production",
        "",
    );
    w.native("evt-amend-target", 2, 1, q(1_000), at(27), "production", "");
    // Seat counts through the month: billed at the peak, 18.
    for (i, seats) in [12, 18, 15].into_iter().enumerate() {
        let id = format!("evt-seats-{}", i + 1);
        w.native(&id, 0, 3, q(seats), at(26 - i as i64), "production", "");
    }
    w.native(
        "evt-amend-1",
        2,
        1,
        q(-200),
        at(27),
        "production",
        r#","correction":{"action":"amend","original_event_id":"evt-amend-target"}"#,
    );
    for i in 0..20 {
        w.native(
            &format!("evt-sandbox-{}", i + 1),
            0,
            1,
            q(5_000),
            at(26),
            "sandbox",
            "",
        );
    }
    w.lines.push(format!(
        r#"{{"specversion":"1.0","id":"evt-ce-1","source":"/billing/api-gateway","type":"com.meterflow.usage.v1","subject":"initech","time":"{}","datacontenttype":"application/json","data":{{"contract_id":"initech-2026","sku":"api_calls","unit":"requests","quantity":75,"environment":"production"}}}}"#,
        at(25)
    ));
    let sum = w.checksum("evt-sum-1", 0, 2, q(12), at(24));
    w.native(
        "evt-sum-1",
        0,
        2,
        q(12),
        at(24),
        "production",
        &format!(r#","checksum":"{sum}""#),
    );
    w.native(
        "evt-bad-sum",
        0,
        2,
        q(13),
        at(24),
        "production",
        &format!(r#","checksum":"{sum}""#),
    );
    w.native("evt-neg", 0, 0, q(-5), at(23), "production", "");
    // Invalid records of several kinds.
    w.lines
        .push(r#"{"event_id":"evt-broken","customer_id":"acme","#.to_string());
    w.lines.push(r#"{"event_id":"evt-noqty","customer_id":"acme","contract_id":"acme-2026","sku":"api_calls","unit":"requests","timestamp":"2026-11-10T00:00:00Z","environment":"production"}"#.to_string());
    w.native("evt-unknown-cust", 0, 0, q(1), at(22), "production", "");
    let last = w
        .lines
        .pop()
        .expect("pushed")
        .replace(r#""customer_id":"acme""#, r#""customer_id":"umbrella""#);
    w.lines.push(last);
    w.native("evt-wrong-unit", 0, 2, q(1), at(21), "production", "");
    let last = w
        .lines
        .pop()
        .expect("pushed")
        .replace(r#""unit":"GB""#, r#""unit":"TB""#);
    w.lines.push(last);
    w.native(
        "evt-future",
        0,
        0,
        q(1),
        t("2099-01-01T00:00:00Z"),
        "production",
        "",
    );
    w.native("evt-gpu", 0, 0, q(1), at(20), "production", "");
    let last = w.lines.pop().expect("pushed").replace(
        r#""sku":"api_calls","unit":"requests""#,
        r#""sku":"gpu_hours","unit":"hours""#,
    );
    w.lines.push(last);
    at(28)
}

/// Writes the demo inputs into `dir`, runs them, and returns the report and a narrative.
pub fn demo(dir: &Path, workers: usize) -> anyhow::Result<(RunReport, String)> {
    let catalog_dir = dir.join("catalog");
    std::fs::create_dir_all(&catalog_dir)
        .with_context(|| format!("cannot create {}", catalog_dir.display()))?;
    std::fs::write(catalog_dir.join("catalog.toml"), CATALOG)?;
    let events_path = dir.join("events.jsonl");
    let mut text = events().join("\n");
    text.push('\n');
    std::fs::write(&events_path, text)?;
    // Small chunks so event time (the watermark) advances every few records, as on a live stream.
    let config = dir.join("meterflow.toml");
    std::fs::write(&config, DEMO_CONFIG)?;
    let out = dir.join("out");
    let args = RunArgs {
        inputs: vec![events_path],
        catalog: catalog_dir,
        out: out.clone(),
        config: Some(config),
        clickhouse_url: None,
        cluster: Cluster::local(workers),
        quiet: true,
        metrics_addr: None,
    };
    let report = run(&args)?;
    let story = narrate(&report, &out)?;
    Ok((report, story))
}

fn narrate(report: &RunReport, out: &Path) -> anyhow::Result<String> {
    let c = &report.counts;
    let mut s = String::new();
    let _ = writeln!(s, "\nWhere every record went");
    let _ = writeln!(s, "  received           {:>6}", c.received);
    let _ = writeln!(
        s,
        "  accepted           {:>6}  ({} billable, {} sandbox: counted, never priced)",
        c.accepted,
        c.billable,
        c.accepted - c.billable
    );
    let _ = writeln!(s, "    out of order     {:>6}  (behind the watermark, period still open: billed in their own period)", c.out_of_order);
    let _ = writeln!(s, "    late             {:>6}  (period closed: billed as adjustment lines in the open period)", c.late);
    let _ = writeln!(
        s,
        "    corrections      {:>6}  (void / amend of earlier events, as signed retractions)",
        c.corrections
    );
    let _ = writeln!(
        s,
        "  duplicates         {:>6}  (producer retries: counted once, billed once)",
        c.duplicates
    );
    let _ = writeln!(s, "  rejected           {:>6}", c.rejected);
    for r in Reason::ALL {
        let n = c.rejected_for(r);
        if n > 0 {
            let _ = writeln!(s, "    {:<28} {:>3}  fix: {}", r.code(), n, r.remediation());
        }
    }
    let check = if c.balanced() { "holds" } else { "BROKEN" };
    let _ = writeln!(
        s,
        "  received = accepted + rejected + duplicates: {} = {} + {} + {}  ({check})",
        c.received, c.accepted, c.rejected, c.duplicates
    );
    let _ = writeln!(
        s,
        "\nFollowing single events (meterflow trace --out {} <event_id>):",
        out.display()
    );
    for (id, what) in SHOWCASE.iter().filter(|(id, _)| {
        [
            "evt-retry-1",
            "evt-conflict",
            "evt-late-1",
            "evt-void-1",
            "evt-v2-1",
            "evt-pinned-1",
        ]
        .contains(id)
    }) {
        let _ = writeln!(s, "\n# {id}: {what}");
        s.push_str(&trace(out, id)?);
    }
    let _ = writeln!(
        s,
        "\nThe void as signed rows: every invoice_lines row of Hooli, in order"
    );
    let _ = writeln!(
        s,
        "  {:>5} {:>4}  {:<10} {:<8} {:>14} {:>10}",
        "version", "sign", "sku", "period", "quantity", "amount"
    );
    let mut hooli: Vec<_> = read_table(out, "invoice_lines")?
        .into_iter()
        .filter(|r| r["customer_id"] == "hooli")
        .collect();
    hooli.sort_by_key(|r| {
        (
            r["version"].parse::<u64>().unwrap_or(0),
            r["sign"].parse::<i64>().unwrap_or(0),
        )
    });
    for r in &hooli {
        let _ = writeln!(
            s,
            "  {:>5} {:>4}  {:<10} {:<8} {:>14} {:>10} {}",
            r["version"],
            r["sign"],
            r["sku"],
            r["service_period"],
            r["quantity"],
            r["amount"],
            r["currency"]
        );
    }
    let _ = writeln!(s, "  sum(amount * sign) = 0: the voided usage is gone from the invoice, and its history stays.");
    let _ = writeln!(s, "\nTables written to {}:", out.display());
    for t in meterflow_schemas::tables::outputs().map(|t| t.name) {
        let _ = writeln!(s, "  {}/{t}/part-*.csv", out.display());
    }
    let _ = writeln!(
        s,
        "  {}/counts.json, {}/invoice_preview.txt",
        out.display(),
        out.display()
    );
    Ok(s)
}

/// `meterflow demo`.
#[derive(clap::Args)]
pub struct DemoCommand {
    /// Directory for the sample catalog, events and outputs.
    #[arg(long, default_value = "meterflow-demo")]
    dir: PathBuf,
    /// Worker threads.
    #[arg(long, short = 'w', default_value_t = 1)]
    workers: usize,
}

impl DemoCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let (report, story) = demo(&self.dir, self.workers)?;
        println!(
            "meterflow demo: {} records from {} through catalog {}",
            report.counts.received,
            self.dir.join("events.jsonl").display(),
            self.dir.join("catalog").display()
        );
        println!("{}", report.preview);
        println!("{story}");
        summarize(&report, &self.dir.join("out"));
        println!(
            "\nSee it as exec, account and ops dashboards (then open http://127.0.0.1:8080/):\n  \
             meterflow dashboard -c {} -o {}",
            self.dir.join("catalog").display(),
            self.dir.join("out").display()
        );
        Ok(ExitCode::SUCCESS)
    }
}
