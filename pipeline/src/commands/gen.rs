//! `meterflow gen`: synthetic usage at scale, for benchmarks and load tests. Deterministic for a
//! given seed. Writes `events.jsonl` and a matching `catalog/` into the output directory.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use meterflow_schemas::canonical::{checksum_of, Canonical, CanonicalFields};
use meterflow_schemas::money::Quantity;
use meterflow_schemas::time::{EventTime, PeriodUnit, Span};

/// Shape of the generated stream (the flags of `meterflow gen`).
#[derive(Clone, Debug, clap::Args)]
pub struct GenArgs {
    /// Output directory (events.jsonl and catalog/).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Records to write, duplicates and invalid ones included.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Customers (and contracts) in the generated catalog.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub customers: u32,
    /// Customer skew: customer `floor(n · u^skew)` for uniform `u`; 1 is uniform, larger values
    /// concentrate traffic on the first customers.
    #[arg(long, default_value_t = 1.5)]
    pub skew: f64,
    /// Share of records that repeat a recent event (producer retries).
    #[arg(long, default_value_t = 0.05)]
    pub dup_rate: f64,
    /// Share of events sent 2 to 72 hours after their event time.
    #[arg(long, default_value_t = 0.01)]
    pub late_rate: f64,
    /// Share of records that are invalid (several kinds).
    #[arg(long, default_value_t = 0.005)]
    pub invalid_rate: f64,
    /// Share of events carrying a `sha256:` checksum.
    #[arg(long, default_value_t = 0.0)]
    pub checksum_rate: f64,
    /// Share of records that correct a recent event of the same customer: a void (the original
    /// repeated with its quantity negated) or an amend taking back part of the quantity.
    #[arg(long, default_value_t = 0.0)]
    pub correction_rate: f64,
    /// Share of events sent as CloudEvents envelopes.
    #[arg(long, default_value_t = 0.0)]
    pub cloudevents_rate: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// First event time (RFC 3339).
    #[arg(long, default_value = "2026-09-01T00:00:00Z", value_parser = parse_time)]
    pub start: EventTime,
    /// Days of event time the stream spans.
    #[arg(long, default_value_t = 60)]
    pub days: i64,
    /// Event time the stream spans as a duration (`4s`, `1h`, `30d`); overrides --days. A
    /// stream sent live spans about as much event time as it takes to send; the 60-day default
    /// is a backfill.
    #[arg(long, value_parser = Span::parse)]
    pub span: Option<Span>,
    /// Give the catalog contract terms and taxes: subscription fees (monthly, and annual ones
    /// billed in advance), discounts (per SKU, and promotions with date ranges), minimum and
    /// maximum spend, and customer tax rates, spread over the customers; and price API calls
    /// in packages from rate-card version 2.
    #[arg(long)]
    pub terms: bool,
    /// Usage grows by this fraction every 30 days, compounding (0.1: 10% a month): a known trend
    /// for forecast backtests. Quantities scale; the number of events does not.
    #[arg(long, default_value_t = 0.0)]
    pub growth: f64,
    /// Usage on Saturdays and Sundays, as a fraction of weekdays' (weekly seasonality).
    #[arg(long, default_value_t = 1.0)]
    pub weekend: f64,
}

impl GenArgs {
    /// The event time the stream spans.
    pub fn span(&self) -> Span {
        self.span.unwrap_or(Span::days(self.days))
    }
}

fn parse_time(text: &str) -> Result<EventTime, String> {
    EventTime::parse_rfc3339(text).map_err(|why| format!("`{text}` is not RFC 3339: {why}"))
}

/// What was written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GenSummary {
    pub records: u64,
    pub duplicates: u64,
    pub late: u64,
    pub invalid: u64,
    pub corrections: u64,
    pub bytes: u64,
}

/// How many recent records a retry may repeat.
const RECENT: usize = 256;

/// The generated SKUs; with `--terms` also the last three: a peak meter, a distinct count and
/// payments priced per transaction with a minimum and maximum fee (none of them take amends).
const SKUS: [(&str, &str); 6] = [
    ("api_calls", "requests"),
    ("tokens", "tokens"),
    ("storage", "GB"),
    ("seats", "seats"),
    ("active_users", "users"),
    ("payments", "USD"),
];
const SEATS: usize = 3;
const USERS: usize = 4;
const PAYMENTS: usize = 5;

/// xorshift64*: fast, deterministic, good enough for load shapes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// The catalog for `customers` generated customers: one contract each on a rate card whose
/// second version takes effect halfway through the generated time span.
pub fn catalog_toml(customers: u32, start: EventTime, span: Span, terms: bool) -> String {
    let mid = start.plus(Span(span.millis() / 2));
    // Version 1 starts before the stream, so late events at its very beginning are priced too.
    let first = start.minus(Span::days(30));
    let mut s = String::new();
    if terms {
        // Shadow billing: every contract is also priced by a proposed rate card.
        s.push_str("shadow_rate_card = \"proposal-2027\"\n\n");
    }
    for (sku, unit) in &SKUS[..SEATS] {
        let _ = writeln!(s, "[[sku]]\nid = \"{sku}\"\nunit = \"{unit}\"\n");
    }
    if terms {
        s.push_str("[[sku]]\nid = \"seats\"\nunit = \"seats\"\naggregation = \"max\"\n\n");
        s.push_str("[[sku]]\nid = \"active_users\"\nunit = \"users\"\naggregation = \"unique_count\"\nunique_by = \"user_id\"\n\n");
        s.push_str("[[sku]]\nid = \"payments\"\nunit = \"USD\"\n\n");
    }
    for (version, from, api, tok1, tok2, st) in [
        (1, first, "0.0004", "0.00002", "0.00001", "0.1"),
        (2, mid, "0.0003", "0.000025", "0.000008", "0.09"),
    ] {
        // With terms, version 2 sells API calls in packages (the position carries over from
        // version 1's per-unit usage).
        let api = if terms && version == 2 {
            "model = \"package\"\npackage_size = \"1000\"\npackage_price = \"0.35\"\nfree_units = \"500\"".to_string()
        } else {
            format!("model = \"per_unit\"\nunit_price = \"{api}\"")
        };
        // With terms, tokens and storage carry what they cost to serve: heavy users in the
        // cheap tiers fall under the margin floor (cost anomalies).
        let (tok_cost, st_cost) = if terms {
            ("unit_cost = \"0.000009\"\n", "unit_cost = \"0.07\"\n")
        } else {
            ("", "")
        };
        // With terms, seats are billed at their monthly peak and users by distinct count, past
        // 20 free ones.
        let meters = if terms {
            format!(
                "[[rate_card.price]]\nsku = \"seats\"\nmodel = \"per_unit\"\nunit_price = \"{}\"\n\
                 [[rate_card.price]]\nsku = \"active_users\"\nmodel = \"graduated\"\ntiers = [{{ up_to = \"20\", unit_price = \"0\" }}, {{ unit_price = \"{}\" }}]\n\
                 [[rate_card.price]]\nsku = \"payments\"\nmodel = \"percentage\"\npercent = \"{}\"\nfixed_fee = \"0.30\"\nmin_fee = \"0.50\"\nmax_fee = \"{}\"\n",
                if version == 1 { "0.05" } else { "0.06" },
                if version == 1 { "0.1" } else { "0.12" },
                if version == 1 { "2.9" } else { "2.5" },
                if version == 1 { "5" } else { "4" },
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "[[rate_card]]\nid = \"standard\"\nversion = {version}\neffective_from = \"{from}\"\ncurrency = \"USD\"\n\
             [[rate_card.price]]\nsku = \"api_calls\"\n{api}\n\
             [[rate_card.price]]\nsku = \"tokens\"\nmodel = \"graduated\"\ntiers = [{{ up_to = \"1000000\", unit_price = \"{tok1}\", flat_fee = \"10\" }}, {{ unit_price = \"{tok2}\" }}]\n{tok_cost}\
             [[rate_card.price]]\nsku = \"storage\"\nmodel = \"volume\"\ntiers = [{{ up_to = \"1000\", unit_price = \"{st}\" }}, {{ unit_price = \"0.05\", flat_fee = \"5\" }}]\n{st_cost}{meters}"
        );
    }
    let contract_start = start.minus(Span::days(30));
    if terms {
        let proposal_from = start.plus(span);
        let _ = writeln!(
            s,
            "[[rate_card]]\nid = \"proposal-2027\"\nversion = 1\neffective_from = \"{proposal_from}\"\ncurrency = \"USD\"\n\
             [[rate_card.price]]\nsku = \"api_calls\"\nmodel = \"per_unit\"\nunit_price = \"0.00035\"\n\
             [[rate_card.price]]\nsku = \"tokens\"\nmodel = \"volume\"\ntiers = [{{ up_to = \"500000\", unit_price = \"0.00002\" }}, {{ unit_price = \"0.000012\", flat_fee = \"5\" }}]\n\
             [[rate_card.price]]\nsku = \"storage\"\nmodel = \"per_unit\"\nunit_price = \"0.08\"\n\
             [[rate_card.price]]\nsku = \"seats\"\nmodel = \"per_unit\"\nunit_price = \"0.055\"\n\
             [[rate_card.price]]\nsku = \"active_users\"\nmodel = \"per_unit\"\nunit_price = \"0.09\"\n\
             [[rate_card.price]]\nsku = \"payments\"\nmodel = \"percentage\"\npercent = \"2.4\"\nfixed_fee = \"0.25\"\nmin_fee = \"0.40\"\n"
        );
        s.push_str("[[tax]]\nid = \"vat-19\"\nname = \"VAT 19%\"\nrate = \"0.19\"\n\n[[tax]]\nid = \"gst-10\"\nname = \"GST 10%\"\nrate = \"0.1\"\n\n");
    }
    for c in 0..customers {
        let tax = match c % 3 {
            _ if !terms => "",
            0 => "tax = \"vat-19\"\n",
            1 => "tax = \"gst-10\"\n",
            _ => "",
        };
        // Segments: one customer in ten is an enterprise, three a growth account.
        let segment = match c % 10 {
            0 => "enterprise",
            1..=3 => "growth",
            _ => "self-serve",
        };
        let _ = writeln!(
            s,
            "[[customer]]\nid = \"cus-{c:06}\"\nname = \"Customer {c}\"\nsegment = \"{segment}\"\n{tax}"
        );
        let _ = writeln!(s, "[[contract]]\nid = \"ctr-{c:06}\"\ncustomer = \"cus-{c:06}\"\nrate_card = \"standard\"\nstarts = \"{contract_start}\"");
        if terms {
            contract_terms(&mut s, c, PeriodUnit::Month.period_of(start).0, mid);
        }
        s.push('\n');
    }
    s
}

/// Terms for contract `c`, spread so every kind of invoice line appears.
fn contract_terms(s: &mut String, c: u32, period_start: EventTime, promotion_from: EventTime) {
    if c % 10 == 5 {
        // A commitment busy customers use up early (commitment_burn signals).
        s.push_str("minimum_spend = \"40\"\n");
    } else if c.is_multiple_of(5) {
        s.push_str("minimum_spend = \"400\"\n");
    } else if c % 6 == 3 {
        s.push_str("maximum_spend = \"60\"\n");
    }
    if c % 8 == 1 {
        // A service budget: heavy users burn it faster than planned (budget_burn signals).
        s.push_str("budget = \"60\"\n");
    }
    if c.is_multiple_of(4) {
        s.push_str("[[contract.fee]]\nname = \"platform\"\namount = \"49\"\n");
    }
    if c % 10 == 8 {
        // An annual fee, billed in advance: the contract started before the stream, so the
        // first invoice bills the running term.
        s.push_str("[[contract.fee]]\nname = \"support\"\namount = \"600\"\nterm_months = 12\n");
    }
    if c.is_multiple_of(7) {
        s.push_str("[[contract.discount]]\nname = \"tokens 12.5% off\"\nsku = \"tokens\"\npercent = \"12.5\"\n");
    }
    if c % 9 == 2 {
        // A prepaid grant for four months (heavy users burn it faster: credit_burn signals),
        // and a smaller free one that expires mid-stream and burns first.
        let prepaid_expires = period_start.plus(Span::days(122));
        let _ = writeln!(s, "[[contract.credit]]\nname = \"prepaid\"\namount = \"300\"\ngranted = \"{period_start}\"\nexpires = \"{prepaid_expires}\"\n\
             [[contract.credit]]\nname = \"welcome\"\namount = \"40\"\ngranted = \"{period_start}\"\nexpires = \"{promotion_from}\"\npromotional = true");
    }
    if c.is_multiple_of(3) {
        s.push_str("[[contract.entitlement]]\nsku = \"tokens\"\nincluded = \"400000\"\nsoft_limit = \"800000\"\nhard_limit = \"1200000\"\nrollover = true\nrollover_cap = \"100000\"\n");
    }
    if c % 4 == 1 {
        s.push_str("[[contract.entitlement]]\nsku = \"api_calls\"\nincluded = \"2000\"\nthresholds = [80, 100]\n");
    }
    if c % 2 == 1 {
        let _ = writeln!(s, "[[contract.discount]]\nname = \"autumn promotion\"\namount = \"5\"\nfrom = \"{promotion_from}\"");
    }
}

pub fn generate(args: &GenArgs) -> anyhow::Result<GenSummary> {
    std::fs::create_dir_all(args.out.join("catalog"))
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    std::fs::write(
        args.out.join("catalog").join("catalog.toml"),
        catalog_toml(args.customers, args.start, args.span(), args.terms),
    )
    .context("cannot write the catalog")?;
    let path = args.out.join("events.jsonl");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 22, file);
    let summary = write_events(args, &mut w)?;
    w.flush()?;
    Ok(summary)
}

/// Writes the event stream to `w`.
pub fn write_events(args: &GenArgs, w: &mut impl Write) -> anyhow::Result<GenSummary> {
    let mut rng = Rng::new(args.seed);
    let mut summary = GenSummary::default();
    let span_ms = args.span().millis();
    let mut recent: std::collections::VecDeque<Vec<u8>> =
        std::collections::VecDeque::with_capacity(RECENT);
    // Recent events that may still be corrected (native ones; never voided yet).
    let mut originals: std::collections::VecDeque<Fields> =
        std::collections::VecDeque::with_capacity(RECENT);
    let mut line = String::with_capacity(512);
    let mut canonical = Canonical::default();
    let n = args.events.max(1);
    for i in 0..args.events {
        line.clear();
        if !recent.is_empty() && rng.chance(args.dup_rate) {
            let j = rng.below(recent.len() as u64) as usize;
            w.write_all(&recent[j])?;
            summary.duplicates += 1;
        } else if !originals.is_empty() && rng.chance(args.correction_rate) {
            let j = rng.below(originals.len() as u64) as usize;
            // Readings of peak and distinct-count meters cannot be amended: only voided.
            let original = if rng.chance(0.5) || originals[j].sku >= SEATS {
                // Voided once, then never corrected again.
                let Some(o) = originals.remove(j) else {
                    unreachable!("index below the length")
                };
                o.write_correction(i, "void", o.quantity, &mut line);
                o
            } else {
                let o = originals[j];
                let back = Quantity(o.quantity.0 / 2);
                o.write_correction(i, "amend", back, &mut line);
                o
            };
            debug_assert!(original.id < i);
            line.push('\n');
            w.write_all(line.as_bytes())?;
            remember(&mut recent, &line);
            summary.corrections += 1;
        } else if rng.chance(args.invalid_rate) {
            invalid_record(&mut rng, i, &mut line);
            line.push('\n');
            w.write_all(line.as_bytes())?;
            summary.invalid += 1;
        } else {
            let base = args.start.millis() + (span_ms as i128 * i as i128 / n as i128) as i64;
            let mut t = base + rng.below(60_000) as i64;
            if rng.chance(args.late_rate) {
                t -= 2 * 3_600_000 + rng.below(70 * 3_600_000) as i64;
                summary.late += 1;
            }
            let customer = ((args.customers as f64) * rng.unit().powf(args.skew)) as u32
                % args.customers.max(1);
            // With terms, one event in ten is a seat reading, an active user or a payment.
            let sku = if args.terms && rng.chance(0.1) {
                SEATS + rng.below(3) as usize
            } else {
                rng.below(3) as usize
            };
            // The trend and the week scale additive meters' quantities.
            let intensity = {
                let days = (t - args.start.millis()) as f64 / 86_400_000.0;
                let weekday = (t.div_euclid(86_400_000) + 3).rem_euclid(7); // 0 = Monday
                (1.0 + args.growth).powf(days / 30.0)
                    * if weekday >= 5 { args.weekend } else { 1.0 }
            };
            let scaled = |n: u64| {
                if intensity == 1.0 {
                    n as i64
                } else {
                    ((n as f64) * intensity).round().max(1.0) as i64
                }
            };
            let quantity = match sku {
                0 => Quantity::from_units(scaled(1 + rng.below(100))),
                1 => Quantity::from_units(scaled(1 + rng.below(5000))),
                SEATS => Quantity::from_units(1 + rng.below(200) as i64),
                USERS => Quantity::from_units(1),
                PAYMENTS => Quantity(rng.below(20_000) as i128 * 10_000_000 + 10_000_000),
                _ => Quantity(scaled(rng.below(10_000)) as i128 * 1_000_000 + 1_000_000),
            };
            let fields = Fields {
                id: i,
                customer,
                sku,
                quantity,
                time: EventTime(t),
                user: if sku == USERS {
                    rng.below(60) as u32
                } else {
                    0
                },
            };
            let checksum = rng
                .chance(args.checksum_rate)
                .then(|| fields.checksum(&mut canonical));
            if rng.chance(args.cloudevents_rate) && sku != USERS {
                fields.write_cloudevent(&mut line, checksum.as_deref());
            } else {
                fields.write_native(&mut line, checksum.as_deref());
            }
            line.push('\n');
            w.write_all(line.as_bytes())?;
            remember(&mut recent, &line);
            if args.correction_rate > 0.0 && quantity.0 > 0 {
                // Corrections follow their originals closely: only the latest RECENT events.
                if originals.len() == RECENT {
                    originals.pop_front();
                }
                originals.push_back(fields);
            }
        }
        summary.records += 1;
    }
    Ok(summary)
}

/// Retries repeat recent records: keep the last RECENT distinct ones.
fn remember(recent: &mut std::collections::VecDeque<Vec<u8>>, line: &str) {
    let mut slot = if recent.len() == RECENT {
        recent.pop_front().unwrap_or_default()
    } else {
        Vec::new()
    };
    slot.clear();
    slot.extend_from_slice(line.as_bytes());
    recent.push_back(slot);
}

#[derive(Clone, Copy)]
struct Fields {
    id: u64,
    customer: u32,
    sku: usize,
    quantity: Quantity,
    time: EventTime,
    /// For `active_users`: the user the event counts.
    user: u32,
}

impl Fields {
    /// The canonical `metadata.attributes` of the event (`""`: none).
    fn attributes(&self) -> String {
        if self.sku == USERS {
            format!(r#"{{"user_id":"u-{}"}}"#, self.user)
        } else {
            String::new()
        }
    }

    /// `,"metadata":{...}` for an event with attributes.
    fn write_metadata(&self, s: &mut String) {
        let a = self.attributes();
        if !a.is_empty() {
            let _ = write!(s, r#","metadata":{{"attributes":{a}}}"#);
        }
    }

    fn checksum(&self, c: &mut Canonical) -> String {
        let (id, customer, contract) = (
            format!("evt-{:012}", self.id),
            format!("cus-{:06}", self.customer),
            format!("ctr-{:06}", self.customer),
        );
        let (sku, unit) = SKUS[self.sku];
        let bytes = c.render(&CanonicalFields {
            event_id: &id,
            customer_id: &customer,
            contract_id: &contract,
            sku,
            unit,
            quantity: self.quantity,
            time: self.time,
            environment: "production",
            attributes: &self.attributes(),
            ..Default::default()
        });
        checksum_of(bytes)
    }

    fn write_native(&self, s: &mut String, checksum: Option<&str>) {
        let (sku, unit) = SKUS[self.sku];
        let _ = write!(
            s,
            r#"{{"event_id":"evt-{:012}","customer_id":"cus-{:06}","contract_id":"ctr-{:06}","sku":"{sku}","unit":"{unit}","quantity":"{}","timestamp":"{}","environment":"production""#,
            self.id, self.customer, self.customer, self.quantity, self.time
        );
        self.write_metadata(s);
        if let Some(c) = checksum {
            let _ = write!(s, r#","checksum":"{c}""#);
        }
        s.push('}');
    }

    /// A correction (record `id`) of this event, taking back `quantity`: the original's fields
    /// with the quantity negated, as the contract asks of a void.
    fn write_correction(&self, id: u64, action: &str, quantity: Quantity, s: &mut String) {
        let (sku, unit) = SKUS[self.sku];
        let _ = write!(
            s,
            r#"{{"event_id":"evt-{id:012}","customer_id":"cus-{:06}","contract_id":"ctr-{:06}","sku":"{sku}","unit":"{unit}","quantity":"-{quantity}","timestamp":"{}","environment":"production","correction":{{"action":"{action}","original_event_id":"evt-{:012}"}}"#,
            self.customer, self.customer, self.time, self.id
        );
        self.write_metadata(s);
        s.push('}');
    }

    fn write_cloudevent(&self, s: &mut String, checksum: Option<&str>) {
        let (sku, unit) = SKUS[self.sku];
        let _ = write!(
            s,
            r#"{{"specversion":"1.0","id":"evt-{:012}","source":"/loadgen","type":"com.meterflow.usage.v1","subject":"cus-{:06}","time":"{}","data":{{"contract_id":"ctr-{:06}","sku":"{sku}","unit":"{unit}","quantity":{},"environment":"production""#,
            self.id, self.customer, self.time, self.customer, self.quantity
        );
        if let Some(c) = checksum {
            let _ = write!(s, r#","checksum":"{c}""#);
        }
        s.push_str("}}");
    }
}

fn invalid_record(rng: &mut Rng, i: u64, s: &mut String) {
    let _ = match rng.below(5) {
        0 => write!(s, r#"{{"event_id":"bad-{i}","customer_id":"cus-000001","#),
        1 => write!(
            s,
            r#"{{"event_id":"bad-{i}","customer_id":"cus-000001","contract_id":"ctr-000001","sku":"api_calls","unit":"requests","timestamp":"2026-10-01T00:00:00Z","environment":"production"}}"#
        ),
        2 => write!(
            s,
            r#"{{"event_id":"bad-{i}","customer_id":"nobody","contract_id":"ctr-000001","sku":"api_calls","unit":"requests","quantity":"1","timestamp":"2026-10-01T00:00:00Z","environment":"production"}}"#
        ),
        3 => write!(
            s,
            r#"{{"event_id":"bad-{i}","customer_id":"cus-000001","contract_id":"ctr-000001","sku":"api_calls","unit":"requests","quantity":"-5","timestamp":"2026-10-01T00:00:00Z","environment":"production"}}"#
        ),
        _ => write!(
            s,
            r#"{{"event_id":"bad-{i}","customer_id":"cus-000001","contract_id":"ctr-000001","sku":"api_calls","unit":"GB","quantity":"1","timestamp":"2026-10-01T00:00:00Z","environment":"production"}}"#
        ),
    };
}

/// `meterflow gen`: writes the events and the catalog, and says what it wrote.
pub fn execute(args: GenArgs) -> anyhow::Result<ExitCode> {
    let s = generate(&args)?;
    println!(
        "wrote {} records ({} duplicates, {} late, {} invalid, {} corrections) to {} and a catalog of {} customers to {}",
        s.records,
        s.duplicates,
        s.late,
        s.invalid,
        s.corrections,
        args.out.join("events.jsonl").display(),
        args.customers,
        args.out.join("catalog").display()
    );
    Ok(ExitCode::SUCCESS)
}
