//! ClickHouse tables of meterflow, as numbered migrations. What the tables are after the
//! migrations is described in [`crate::tables`]; a new table's migration is `Sql::Create` of its
//! description. Every statement runs on ClickHouse
//! 18.16 (what Debian ships) and on current ClickHouse: no `DateTime64`, no TTL, no codecs, no
//! `Map`, no `LowCardinality`. Checked against both in the test suite.
//!
//! Design (see `docs/clickhouse.md`):
//! - Facts (`usage_events`, `rejections`, `duplicates`) are plain `MergeTree`, partitioned by
//!   month, ordered for the per-customer / per-SKU / per-period queries data teams run.
//! - Derived tables (`invoice_lines`, `rated_usage`, `line_usage`) are append-only signed rows in
//!   plain `MergeTree`: nothing is ever collapsed away, so the history of every line stays
//!   auditable, and `sum(x * sign)` is always the current truth. A retraction carries the
//!   `version` of the row it cancels. (A collapsing engine would merge the pairs away and lose
//!   exactly the history finance audits; add one as a materialized view if compaction matters.)
//! - Every row carries the `epoch` that wrote it and the `generation` (one per start of the
//!   pipeline) of the writer; `sink_progress` records the last epoch whose rows are all in
//!   ClickHouse, with the input offsets behind it. On restart, rows of later (incomplete) epochs are
//!   deleted, including any that a killed writer's in-flight insert lands late (recognised by their
//!   older generation), and the input resumes after the recorded offsets.
//! - Every row also carries the `batch` (insert) that wrote it, unique within a generation and
//!   table, so an insert whose answer was lost can be checked before it is sent again
//!   (migrations 10-15).

use std::borrow::Cow;

use crate::tables::Table;

/// One migration: applied once, in order, recorded in `schema_migrations`.
pub struct Migration {
    pub id: u32,
    pub name: &'static str,
    pub sql: Sql,
}

/// A migration's statement.
pub enum Sql {
    /// Written out (the history before the table registry, and every `ALTER`).
    Text(&'static str),
    /// A new table, created as its registry description says.
    Create(&'static Table),
}

impl Sql {
    /// The statement, with `{db}` standing for the database.
    pub fn text(&self) -> Cow<'static, str> {
        match self {
            Sql::Text(s) => Cow::Borrowed(s),
            Sql::Create(t) => Cow::Owned(t.create_sql()),
        }
    }
}

/// The statements that create meterflow's tables, with `{db}` standing for the database.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        id: 1,
        name: "usage_events",
        sql: Sql::Text("CREATE TABLE IF NOT EXISTS {db}.usage_events (
    event_id String,
    customer_id String,
    contract_id String,
    sku String,
    unit String,
    quantity Decimal(38, 9),
    event_time DateTime,
    event_time_ms Int64,
    environment String,
    billable UInt8,
    region String,
    plan String,
    marketplace String,
    attributes String,
    correction_action String,
    correction_of String,
    rate_card String,
    rate_card_version UInt32,
    price_region String,
    service_period String,
    invoice_period String,
    arrival String,
    fingerprint UInt64,
    source String,
    partition Int32,
    offset UInt64,
    epoch UInt64,
    generation UInt32
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY (customer_id, sku, event_time, event_id)"),
    },
    Migration {
        id: 2,
        name: "rejections",
        sql: Sql::Text("CREATE TABLE IF NOT EXISTS {db}.rejections (
    reason String,
    field String,
    message String,
    remediation String,
    event_id String,
    source String,
    partition Int32,
    offset UInt64,
    raw_payload String,
    rejected_at DateTime,
    epoch UInt64,
    generation UInt32
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(rejected_at)
ORDER BY (reason, rejected_at, source, partition, offset)"),
    },
    Migration {
        id: 3,
        name: "duplicates",
        sql: Sql::Text("CREATE TABLE IF NOT EXISTS {db}.duplicates (
    event_id String,
    event_time DateTime,
    event_time_ms Int64,
    source String,
    partition Int32,
    offset UInt64,
    epoch UInt64,
    generation UInt32
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY (event_id, source, partition, offset)"),
    },
    Migration {
        id: 4,
        name: "invoice_lines",
        sql: Sql::Text("CREATE TABLE IF NOT EXISTS {db}.invoice_lines (
    customer_id String,
    contract_id String,
    sku String,
    region String,
    service_period String,
    invoice_period String,
    line_type String,
    currency String,
    events Int64,
    quantity Decimal(38, 9),
    amount Decimal(38, 9),
    amount_exact Decimal(38, 18),
    sign Int8,
    version UInt64,
    epoch UInt64,
    generation UInt32
) ENGINE = MergeTree()
ORDER BY (customer_id, invoice_period, contract_id, sku, region, service_period, line_type, version)"),
    },
    Migration {
        id: 5,
        name: "rated_usage",
        sql: Sql::Text("CREATE TABLE IF NOT EXISTS {db}.rated_usage (
    customer_id String,
    contract_id String,
    sku String,
    region String,
    service_period String,
    invoice_period String,
    rate_card String,
    rate_card_version UInt32,
    model String,
    tier UInt32,
    quantity Decimal(38, 9),
    amount Decimal(38, 18),
    currency String,
    sign Int8,
    version UInt64,
    epoch UInt64,
    generation UInt32
) ENGINE = MergeTree()
ORDER BY (customer_id, invoice_period, contract_id, sku, region, service_period, rate_card, rate_card_version, tier, version)"),
    },
    Migration {
        id: 6,
        name: "line_usage",
        sql: Sql::Text("CREATE TABLE IF NOT EXISTS {db}.line_usage (
    customer_id String,
    contract_id String,
    sku String,
    region String,
    service_period String,
    invoice_period String,
    rate_card String,
    rate_card_version UInt32,
    events Int64,
    quantity Decimal(38, 9),
    sign Int8,
    version UInt64,
    epoch UInt64,
    generation UInt32
) ENGINE = MergeTree()
ORDER BY (customer_id, contract_id, sku, region, service_period, invoice_period, rate_card, rate_card_version, version)"),
    },
    Migration {
        id: 7,
        name: "sink_progress",
        sql: Sql::Text("CREATE TABLE IF NOT EXISTS {db}.sink_progress (
    generation UInt32,
    epoch UInt64,
    committed_at DateTime,
    watermark_ms Int64,
    offsets String,
    counts String
) ENGINE = MergeTree()
ORDER BY (generation, epoch)"),
    },
    Migration {
        id: 8,
        name: "catalog_changes",
        sql: Sql::Text("CREATE TABLE IF NOT EXISTS {db}.catalog_changes (
    changed_at DateTime,
    actor String,
    entity String,
    entity_id String,
    version UInt32,
    action String,
    diff String
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(changed_at)
ORDER BY (entity, entity_id, changed_at)"),
    },
    Migration {
        id: 9,
        name: "rejections_kafka_key_and_headers",
        sql: Sql::Text("ALTER TABLE {db}.rejections ADD COLUMN kafka_key String, ADD COLUMN kafka_headers String"),
    },
    Migration {
        id: 10,
        name: "usage_events_batch",
        sql: Sql::Text("ALTER TABLE {db}.usage_events ADD COLUMN batch UInt64"),
    },
    Migration {
        id: 11,
        name: "rejections_batch",
        sql: Sql::Text("ALTER TABLE {db}.rejections ADD COLUMN batch UInt64"),
    },
    Migration {
        id: 12,
        name: "duplicates_batch",
        sql: Sql::Text("ALTER TABLE {db}.duplicates ADD COLUMN batch UInt64"),
    },
    Migration {
        id: 13,
        name: "invoice_lines_batch",
        sql: Sql::Text("ALTER TABLE {db}.invoice_lines ADD COLUMN batch UInt64"),
    },
    Migration {
        id: 14,
        name: "rated_usage_batch",
        sql: Sql::Text("ALTER TABLE {db}.rated_usage ADD COLUMN batch UInt64"),
    },
    Migration {
        id: 15,
        name: "line_usage_batch",
        sql: Sql::Text("ALTER TABLE {db}.line_usage ADD COLUMN batch UInt64"),
    },
    Migration {
        id: 16,
        name: "entitlement_signals",
        sql: Sql::Text("CREATE TABLE IF NOT EXISTS {db}.entitlement_signals (
    customer_id String,
    contract_id String,
    sku String,
    period String,
    signal String,
    percent UInt32,
    at_quantity Decimal(38, 9),
    allowance Decimal(38, 9),
    sign Int8,
    version UInt64,
    epoch UInt64,
    generation UInt32,
    batch UInt64
) ENGINE = MergeTree()
ORDER BY (customer_id, contract_id, sku, period, signal, percent, version)"),
    },
    Migration {
        id: 17,
        name: "shadow_invoice_lines",
        sql: Sql::Text("CREATE TABLE IF NOT EXISTS {db}.shadow_invoice_lines (
    customer_id String,
    contract_id String,
    sku String,
    region String,
    service_period String,
    invoice_period String,
    line_type String,
    currency String,
    events Int64,
    quantity Decimal(38, 9),
    amount Decimal(38, 9),
    amount_exact Decimal(38, 18),
    sign Int8,
    version UInt64,
    epoch UInt64,
    generation UInt32,
    batch UInt64
) ENGINE = MergeTree()
ORDER BY (customer_id, invoice_period, contract_id, sku, region, service_period, line_type, version)"),
    },
    Migration {
        id: 18,
        name: "usage_buckets",
        sql: Sql::Text("CREATE TABLE IF NOT EXISTS {db}.usage_buckets (
    customer_id String,
    sku String,
    bucket_start DateTime,
    events Int64,
    quantity Decimal(38, 9),
    sign Int8,
    version UInt64,
    epoch UInt64,
    generation UInt32,
    batch UInt64
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(bucket_start)
ORDER BY (customer_id, sku, bucket_start, version)"),
    },
    Migration {
        id: 19,
        name: "anomalies",
        sql: Sql::Text("CREATE TABLE IF NOT EXISTS {db}.anomalies (
    customer_id String,
    sku String,
    kind String,
    window_start DateTime,
    window_end DateTime,
    observed Decimal(38, 9),
    expected Decimal(38, 9),
    score Decimal(18, 2),
    severity String,
    baseline String,
    explanation String,
    sign Int8,
    version UInt64,
    epoch UInt64,
    generation UInt32,
    batch UInt64
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (customer_id, sku, window_start, kind, version)"),
    },
    Migration {
        id: 20,
        name: "line_usage_fee_adjustment",
        // Percentage prices with per-transaction min_fee / max_fee: what the limits changed,
        // summed (0 for every other price, and for rows written before).
        sql: Sql::Text("ALTER TABLE {db}.line_usage ADD COLUMN fee_adjustment Decimal(38, 18)"),
    },
    Migration {
        id: 21,
        name: "usage_events_kafka_key_headers",
        // An event read from Kafka keeps its message's key and headers (JSON), as rejections do.
        sql: Sql::Text("ALTER TABLE {db}.usage_events ADD COLUMN kafka_key String, ADD COLUMN kafka_headers String"),
    },
    Migration {
        id: 22,
        name: "sink_progress_catalog_digest",
        // The digest of the catalog a commit's rows are priced under: a restart under the same
        // catalog has nothing to re-rate ('' for commits written before: re-rated as before).
        sql: Sql::Text("ALTER TABLE {db}.sink_progress ADD COLUMN catalog_digest String"),
    },
    Migration {
        id: 23,
        name: "sink_progress_partitions",
        // Per Kafka partition at the commit: the latest valid event time read and whether it was
        // idle (JSON). A restart judges lateness from exactly there ('' for commits written
        // before: the partitions start unknown, as they did).
        sql: Sql::Text("ALTER TABLE {db}.sink_progress ADD COLUMN partitions String"),
    },
    Migration {
        id: 24,
        name: "reconciliation",
        // What `meterflow reconcile` checked: one row per line and run.
        sql: Sql::Text(
            "CREATE TABLE IF NOT EXISTS {db}.reconciliation (
    checked_at DateTime,
    run_id String,
    comparison String,
    customer_id String,
    contract_id String,
    sku String,
    region String,
    service_period String,
    invoice_period String,
    signal String,
    expected_events Int64,
    billed_events Int64,
    expected_quantity Decimal(38, 9),
    billed_quantity Decimal(38, 9),
    drift UInt8,
    event_ids String
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(checked_at)
ORDER BY (customer_id, comparison, contract_id, sku, region, service_period, invoice_period, signal, checked_at)",
        ),
    },
    Migration {
        id: 25,
        name: "scorecard",
        // What `meterflow scorecard` measured: one row per cause, key and run.
        sql: Sql::Create(&crate::tables::SCORECARD),
    },
    Migration {
        id: 26,
        name: "reconciliation_money",
        // Reconciliation compares money too: what a line's usage costs and what it bills, as
        // billed (rounded per line) and exact.
        sql: Sql::Text(
            "ALTER TABLE {db}.reconciliation ADD COLUMN currency String, \
             ADD COLUMN expected_amount Decimal(38, 9), ADD COLUMN billed_amount Decimal(38, 9), \
             ADD COLUMN expected_amount_exact Decimal(38, 18), ADD COLUMN billed_amount_exact Decimal(38, 18)",
        ),
    },
    Migration {
        id: 27,
        name: "quarantine_resolutions",
        // Rejections resolved by `meterflow quarantine replay`.
        sql: Sql::Create(&crate::tables::QUARANTINE_RESOLUTIONS),
    },
    Migration {
        id: 28,
        name: "sink_progress_lag",
        // Per partition read: the metering lag of the events a commit covers, as histograms
        // (JSON; '' for commits written before).
        sql: Sql::Text("ALTER TABLE {db}.sink_progress ADD COLUMN lag String"),
    },
    Migration {
        id: 29,
        name: "metering_lag",
        // What `meterflow scorecard` measured of the metering lag, per period and partition.
        sql: Sql::Create(&crate::tables::METERING_LAG),
    },
    Migration {
        id: 30,
        name: "reconciliation_line_type",
        // Reconciliation checks invoice-level lines and invoice totals too: which one a row is.
        sql: Sql::Text("ALTER TABLE {db}.reconciliation ADD COLUMN line_type String"),
    },
    // The dashboard's numbers as views (migrations 31-42), so data teams query the same
    // definitions `meterflow dashboard` shows. Signed tables are netted with `sum(x * sign)`.
    Migration {
        id: 31,
        name: "v_exec_revenue",
        // Current invoice money per invoice period, customer, line type and currency.
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_exec_revenue AS \
             SELECT invoice_period, customer_id, line_type, currency, \
             sum(events * sign) AS events, sum(amount * sign) AS amount \
             FROM {db}.invoice_lines \
             GROUP BY invoice_period, customer_id, line_type, currency",
        ),
    },
    Migration {
        id: 32,
        name: "v_exec_daily",
        // Accepted billable usage per day (UTC), customer and SKU, from the hourly buckets.
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_exec_daily AS \
             SELECT toDate(bucket_start) AS day, customer_id, sku, \
             sum(events * sign) AS events, sum(quantity * sign) AS quantity \
             FROM {db}.usage_buckets \
             GROUP BY day, customer_id, sku",
        ),
    },
    Migration {
        id: 33,
        name: "v_exec_capture",
        // The leak scorecard as `meterflow scorecard` last recorded it.
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_exec_capture AS \
             SELECT computed_at, run_id, measure, cause, period, customer_id, sku, currency, \
             events, quantity, amount \
             FROM {db}.scorecard \
             WHERE run_id = (SELECT argMax(run_id, computed_at) FROM {db}.scorecard)",
        ),
    },
    Migration {
        id: 34,
        name: "v_account_usage",
        // Net usage per customer, contract, SKU and service period: what entitlements count.
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_account_usage AS \
             SELECT customer_id, contract_id, sku, service_period, \
             sum(events * sign) AS events, sum(quantity * sign) AS quantity \
             FROM {db}.line_usage \
             GROUP BY customer_id, contract_id, sku, service_period",
        ),
    },
    Migration {
        id: 35,
        name: "v_account_signals",
        // Entitlement and burn signals that stand now (crossed and not retracted), with the
        // latest version's quantities. (Grouping by a Decimal(38, _) key crashes 18.16.)
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_account_signals AS \
             SELECT customer_id, contract_id, sku, period, signal, percent, \
             argMax(at_quantity, version) AS at_quantity, argMax(allowance, version) AS allowance \
             FROM {db}.entitlement_signals \
             GROUP BY customer_id, contract_id, sku, period, signal, percent \
             HAVING sum(sign) > 0",
        ),
    },
    Migration {
        id: 36,
        name: "v_ops_rejections",
        // Rejected records per reason and day, with the fix, and how many are not resolved by a
        // replay yet.
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_ops_rejections AS \
             SELECT reason, toDate(rejected_at) AS day, any(remediation) AS remediation, \
             count() AS records, \
             countIf(event_id = '' OR event_id NOT IN \
               (SELECT event_id FROM {db}.quarantine_resolutions GROUP BY event_id HAVING sum(sign) > 0)) \
               AS unresolved \
             FROM {db}.rejections \
             GROUP BY reason, day",
        ),
    },
    Migration {
        id: 37,
        name: "v_ops_arrivals",
        // Accepted events per invoice period by arrival (on time, late, ...) and correction.
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_ops_arrivals AS \
             SELECT invoice_period, arrival, correction_action, billable, count() AS events \
             FROM {db}.usage_events \
             GROUP BY invoice_period, arrival, correction_action, billable",
        ),
    },
    Migration {
        id: 38,
        name: "v_ops_duplicates",
        // Duplicate deliveries (retries, not billed) per day of their event time.
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_ops_duplicates AS \
             SELECT toDate(event_time) AS day, count() AS duplicates \
             FROM {db}.duplicates \
             GROUP BY day",
        ),
    },
    Migration {
        id: 39,
        name: "v_ops_anomalies",
        // Anomalies that stand now, as their latest version describes them.
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_ops_anomalies AS \
             SELECT customer_id, sku, kind, window_start, \
             argMax(window_end, version) AS window_end, argMax(observed, version) AS observed, \
             argMax(expected, version) AS expected, argMax(score, version) AS score, \
             argMax(severity, version) AS severity, argMax(baseline, version) AS baseline, \
             argMax(explanation, version) AS explanation \
             FROM {db}.anomalies \
             GROUP BY customer_id, sku, kind, window_start \
             HAVING sum(sign) > 0",
        ),
    },
    Migration {
        id: 40,
        name: "v_exec_reconciliation",
        // What the latest `meterflow reconcile` checked, per comparison and period (the invoice
        // period; a signal's or a non-additive line's own period when it has none): lines checked
        // and lines drifting.
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_exec_reconciliation AS \
             SELECT run_id, max(checked_at) AS checked_at, comparison, \
             if(invoice_period = '', service_period, invoice_period) AS period, \
             count() AS lines, sum(drift) AS drifting \
             FROM {db}.reconciliation \
             WHERE run_id = (SELECT argMax(run_id, checked_at) FROM {db}.reconciliation) \
             GROUP BY run_id, comparison, period",
        ),
    },
    Migration {
        id: 41,
        name: "v_exec_drift",
        // The lines the latest `meterflow reconcile` found drifting, with the first events
        // behind each.
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_exec_drift AS \
             SELECT checked_at, run_id, comparison, customer_id, contract_id, sku, region, \
             service_period, invoice_period, signal, line_type, expected_events, billed_events, \
             expected_quantity, billed_quantity, currency, expected_amount_exact, \
             billed_amount_exact, event_ids \
             FROM {db}.reconciliation \
             WHERE drift = 1 \
             AND run_id = (SELECT argMax(run_id, checked_at) FROM {db}.reconciliation)",
        ),
    },
    Migration {
        id: 42,
        name: "v_ops_lag",
        // The metering lag as `meterflow scorecard` last recorded it.
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_ops_lag AS \
             SELECT computed_at, run_id, period, source, partition, stage, events, \
             p50_ms, p95_ms, p99_ms, max_ms \
             FROM {db}.metering_lag \
             WHERE run_id = (SELECT argMax(run_id, computed_at) FROM {db}.metering_lag)",
        ),
    },
    Migration {
        id: 43,
        name: "exports",
        // Marketplace metering records, as `meterflow export` wrote them.
        sql: Sql::Text(
            "CREATE TABLE IF NOT EXISTS {db}.exports (
    exported_at DateTime,
    export_id String,
    marketplace String,
    listing String,
    product String,
    contract_id String,
    customer_id String,
    marketplace_customer String,
    sku String,
    dimension String,
    usage_hour DateTime,
    record_time DateTime,
    record_kind String,
    quantity Decimal(38, 9),
    record_key String,
    status String,
    request String
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(exported_at)
ORDER BY (marketplace, listing, contract_id, dimension, usage_hour, exported_at)",
        ),
    },
    Migration {
        id: 44,
        name: "revenue_schedule",
        // The revenue schedule, as `meterflow revenue` states and retracts its rows.
        sql: Sql::Create(&crate::tables::REVENUE_SCHEDULE),
    },
    Migration {
        id: 45,
        name: "forecast",
        // Revenue forecasts, as `meterflow forecast` made them.
        sql: Sql::Create(&crate::tables::FORECAST),
    },
    Migration {
        id: 46,
        name: "v_exec_forecast",
        // The latest revenue forecast per month, stream and currency.
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_exec_forecast AS \
             SELECT month, stream, currency, sum(amount) AS amount, sum(low) AS low, \
             sum(high) AS high, any(as_of) AS as_of \
             FROM {db}.forecast \
             WHERE run_id = (SELECT argMax(run_id, computed_at) FROM {db}.forecast) \
             GROUP BY month, stream, currency",
        ),
    },
    Migration {
        id: 47,
        name: "exports_answers",
        // `export --send`: the marketplace's id of each record and why it was not sent
        // ('' for records written to files).
        sql: Sql::Text(
            "ALTER TABLE {db}.exports ADD COLUMN response_id String, ADD COLUMN detail String",
        ),
    },
    Migration {
        id: 48,
        name: "exports_allocations",
        // AWS `UsageAllocations` of each record as JSON ('' when it has none).
        sql: Sql::Text("ALTER TABLE {db}.exports ADD COLUMN allocations String"),
    },
    Migration {
        id: 49,
        name: "v_exec_recognition",
        // The revenue schedule as it stands (signed rows netted) per period and currency.
        sql: Sql::Text(
            "CREATE VIEW IF NOT EXISTS {db}.v_exec_recognition AS \
             SELECT period, currency, sum(billed * sign) AS billed, \
             sum(recognised * sign) AS recognised, sum(deferred * sign) AS deferred, \
             sum(unbilled * sign) AS unbilled \
             FROM {db}.revenue_schedule GROUP BY period, currency",
        ),
    },
    Migration {
        id: 50,
        name: "remaining_obligations",
        // Remaining performance obligations, as `meterflow revenue --rpo` found them.
        sql: Sql::Create(&crate::tables::REMAINING_OBLIGATIONS),
    },
];

/// The table that records applied migrations (created before any migration runs).
pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    id UInt32,
    name String,
    applied_at DateTime
) ENGINE = MergeTree()
ORDER BY id";

/// A statement with the database filled in.
pub fn for_database(sql: &str, db: &str) -> String {
    sql.replace("{db}", db)
}
