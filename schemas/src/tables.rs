//! The table registry: one description per table meterflow writes, read by everything that
//! touches a table — the dataflow's sinks (who writes it, how rows are shaped), the file sink (the
//! CSV header), the ClickHouse sink (the table name, the order rows are sent in), restore (which
//! tables carry epochs), `migrate` (the DDL of new tables), and the tests that hold the
//! migrations, the sinks and `docs/clickhouse.md` to it.
//!
//! Adding a table is one description here, its row type, the operator that produces it, and a
//! migration (`Sql::Create` of the description).

use std::fmt::Write as _;

/// A column: its name and ClickHouse type (as `DESCRIBE TABLE` prints it on 18.16 and current).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
}

const fn col(name: &'static str, ty: &'static str) -> Column {
    Column { name, ty }
}

/// What a row of a dataflow output is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One row per fact (an event, a rejection, a duplicate), written once.
    Facts,
    /// Append-only signed rows: `+1` adds a row, `-1` retracts the row of the same `version`;
    /// `sum(x * sign)` is the current truth, and the history stays (plain `MergeTree`).
    Signed,
}

/// Which timely worker writes a dataflow output's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Every worker writes the rows it produced (`part-<worker>.csv`, its own inserts).
    PerWorker,
    /// Rows are exchanged to the worker that owns their customer (`rows::writer_of`), which
    /// writes them (`part-<worker>.csv`, its own inserts): no worker writes the whole table.
    ByCustomer,
}

/// How the dataflow writes a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output {
    pub shape: Shape,
    pub written: Written,
    /// Rows becoming active (and going away) are also sent as alerts (`[alerts]`).
    pub alerts: bool,
}

/// One table.
#[derive(Debug, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    /// The Rust type of a row, as the dataflow produces it (for signed tables, the row that is
    /// signed).
    pub row: &'static str,
    /// What a row is, in a sentence.
    pub about: &'static str,
    /// Every column, in the order the migrations leave them.
    pub columns: &'static [Column],
    pub partition_by: Option<&'static str>,
    pub order_by: &'static [&'static str],
    /// The header of the table's CSV files in the embedded output (a subset of the columns);
    /// `None`: ClickHouse only.
    pub csv: Option<&'static str>,
    /// `None`: written outside the dataflow (progress, the catalog log, `meterflow reconcile`).
    pub output: Option<Output>,
}

impl Table {
    /// The dataflow output's description (panics for tables the dataflow does not write).
    pub fn output(&self) -> Output {
        self.output
            .unwrap_or_else(|| panic!("{} is not a dataflow output", self.name))
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// `CREATE TABLE` for the table as described, with `{db}` for the database. Runs on ClickHouse
    /// 18.16 and current (plain `MergeTree`, only types both know).
    pub fn create_sql(&self) -> String {
        let mut sql = format!("CREATE TABLE IF NOT EXISTS {{db}}.{} (\n", self.name);
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("    {} {}", c.name, c.ty))
            .collect();
        sql.push_str(&columns.join(",\n"));
        sql.push_str("\n) ENGINE = MergeTree()");
        if let Some(p) = self.partition_by {
            let _ = write!(sql, "\nPARTITION BY {p}");
        }
        let _ = write!(sql, "\nORDER BY ({})", self.order_by.join(", "));
        sql
    }
}

/// Every table meterflow writes, dataflow outputs first in the order the dataflow builds them.
pub const ALL: &[&Table] = &[
    &USAGE_EVENTS,
    &REJECTIONS,
    &DUPLICATES,
    &INVOICE_LINES,
    &RATED_USAGE,
    &LINE_USAGE,
    &SHADOW_INVOICE_LINES,
    &ENTITLEMENT_SIGNALS,
    &USAGE_BUCKETS,
    &ANOMALIES,
    &SINK_PROGRESS,
    &CATALOG_CHANGES,
    &RECONCILIATION,
    &SCORECARD,
    &QUARANTINE_RESOLUTIONS,
    &METERING_LAG,
    &EXPORTS,
    &REVENUE_SCHEDULE,
    &FORECAST,
    &REMAINING_OBLIGATIONS,
];

/// The tables the dataflow writes. Their rows carry the `epoch` that wrote them: a restart
/// deletes the rows beyond the last commit.
pub fn outputs() -> impl Iterator<Item = &'static Table> {
    ALL.iter().copied().filter(|t| t.output.is_some())
}

/// A registered table by name.
pub fn named(name: &str) -> Option<&'static Table> {
    ALL.iter().copied().find(|t| t.name == name)
}

const FACTS: Option<Output> = Some(Output {
    shape: Shape::Facts,
    written: Written::PerWorker,
    alerts: false,
});

const fn signed(alerts: bool) -> Option<Output> {
    Some(Output {
        shape: Shape::Signed,
        written: Written::ByCustomer,
        alerts,
    })
}

/// Where a row came from and who wrote it.
const WRITTEN_BY: [Column; 3] = [
    col("epoch", "UInt64"),
    col("generation", "UInt32"),
    col("batch", "UInt64"),
];

pub const USAGE_EVENTS: Table = Table {
    name: "usage_events",
    row: "AcceptedEvent",
    about: "one accepted event, with its price inputs and lineage",
    columns: &[
        col("event_id", "String"),
        col("customer_id", "String"),
        col("contract_id", "String"),
        col("sku", "String"),
        col("unit", "String"),
        col("quantity", "Decimal(38, 9)"),
        col("event_time", "DateTime"),
        col("event_time_ms", "Int64"),
        col("environment", "String"),
        col("billable", "UInt8"),
        col("region", "String"),
        col("plan", "String"),
        col("marketplace", "String"),
        col("attributes", "String"),
        col("correction_action", "String"),
        col("correction_of", "String"),
        col("rate_card", "String"),
        col("rate_card_version", "UInt32"),
        col("price_region", "String"),
        col("service_period", "String"),
        col("invoice_period", "String"),
        col("arrival", "String"),
        col("fingerprint", "UInt64"),
        col("source", "String"),
        col("partition", "Int32"),
        col("offset", "UInt64"),
        WRITTEN_BY[0],
        WRITTEN_BY[1],
        WRITTEN_BY[2],
        col("kafka_key", "String"),
        col("kafka_headers", "String"),
    ],
    partition_by: Some("toYYYYMM(event_time)"),
    order_by: &["customer_id", "sku", "event_time", "event_id"],
    csv: Some("event_id,customer_id,contract_id,sku,unit,quantity,event_time,environment,billable,region,plan,marketplace,attributes,correction_action,correction_of,rate_card,rate_card_version,price_region,service_period,invoice_period,arrival,source,offset,kafka_key,kafka_headers"),
    output: FACTS,
};

pub const REJECTIONS: Table = Table {
    name: "rejections",
    row: "Rejection",
    about: "one rejected record: reason, remediation, raw payload and lineage",
    columns: &[
        col("reason", "String"),
        col("field", "String"),
        col("message", "String"),
        col("remediation", "String"),
        col("event_id", "String"),
        col("source", "String"),
        col("partition", "Int32"),
        col("offset", "UInt64"),
        col("raw_payload", "String"),
        col("rejected_at", "DateTime"),
        WRITTEN_BY[0],
        WRITTEN_BY[1],
        col("kafka_key", "String"),
        col("kafka_headers", "String"),
        WRITTEN_BY[2],
    ],
    partition_by: Some("toYYYYMM(rejected_at)"),
    order_by: &["reason", "rejected_at", "source", "partition", "offset"],
    csv: Some("reason,field,message,remediation,event_id,source,offset,raw_payload,kafka_key,kafka_headers"),
    output: FACTS,
};

pub const DUPLICATES: Table = Table {
    name: "duplicates",
    row: "DuplicateRow",
    about: "one retry of an accepted event and where it was",
    columns: &[
        col("event_id", "String"),
        col("event_time", "DateTime"),
        col("event_time_ms", "Int64"),
        col("source", "String"),
        col("partition", "Int32"),
        col("offset", "UInt64"),
        WRITTEN_BY[0],
        WRITTEN_BY[1],
        WRITTEN_BY[2],
    ],
    partition_by: Some("toYYYYMM(event_time)"),
    order_by: &["event_id", "source", "partition", "offset"],
    csv: Some("event_id,event_time,source,offset"),
    output: FACTS,
};

/// The columns of an invoice line (`invoice_lines`, `shadow_invoice_lines`).
const LINE_COLUMNS: &[Column] = &[
    col("customer_id", "String"),
    col("contract_id", "String"),
    col("sku", "String"),
    col("region", "String"),
    col("service_period", "String"),
    col("invoice_period", "String"),
    col("line_type", "String"),
    col("currency", "String"),
    col("events", "Int64"),
    col("quantity", "Decimal(38, 9)"),
    col("amount", "Decimal(38, 9)"),
    col("amount_exact", "Decimal(38, 18)"),
    col("sign", "Int8"),
    col("version", "UInt64"),
    WRITTEN_BY[0],
    WRITTEN_BY[1],
    WRITTEN_BY[2],
];

const LINE_ORDER: &[&str] = &[
    "customer_id",
    "invoice_period",
    "contract_id",
    "sku",
    "region",
    "service_period",
    "line_type",
    "version",
];

const LINE_CSV: &str = "customer_id,contract_id,sku,region,service_period,invoice_period,line_type,currency,events,quantity,amount,amount_exact,sign,version";

pub const INVOICE_LINES: Table = Table {
    name: "invoice_lines",
    row: "InvoiceLine",
    about: "one signed state of an invoice line",
    columns: LINE_COLUMNS,
    partition_by: None,
    order_by: LINE_ORDER,
    csv: Some(LINE_CSV),
    output: signed(false),
};

pub const SHADOW_INVOICE_LINES: Table = Table {
    name: "shadow_invoice_lines",
    row: "InvoiceLine",
    about: "one signed state of an invoice line under the contract's shadow rate card",
    columns: LINE_COLUMNS,
    partition_by: None,
    order_by: LINE_ORDER,
    csv: Some(LINE_CSV),
    output: signed(false),
};

pub const RATED_USAGE: Table = Table {
    name: "rated_usage",
    row: "RatedRow",
    about: "one signed (line, rate-card version, tier) amount",
    columns: &[
        col("customer_id", "String"),
        col("contract_id", "String"),
        col("sku", "String"),
        col("region", "String"),
        col("service_period", "String"),
        col("invoice_period", "String"),
        col("rate_card", "String"),
        col("rate_card_version", "UInt32"),
        col("model", "String"),
        col("tier", "UInt32"),
        col("quantity", "Decimal(38, 9)"),
        col("amount", "Decimal(38, 18)"),
        col("currency", "String"),
        col("sign", "Int8"),
        col("version", "UInt64"),
        WRITTEN_BY[0],
        WRITTEN_BY[1],
        WRITTEN_BY[2],
    ],
    partition_by: None,
    order_by: &[
        "customer_id",
        "invoice_period",
        "contract_id",
        "sku",
        "region",
        "service_period",
        "rate_card",
        "rate_card_version",
        "tier",
        "version",
    ],
    csv: Some("customer_id,contract_id,sku,region,service_period,invoice_period,rate_card,rate_card_version,model,tier,quantity,amount,currency,sign,version"),
    output: signed(false),
};

pub const LINE_USAGE: Table = Table {
    name: "line_usage",
    row: "LineUsage",
    about: "one signed pricing input: usage per line and rate-card version",
    columns: &[
        col("customer_id", "String"),
        col("contract_id", "String"),
        col("sku", "String"),
        col("region", "String"),
        col("service_period", "String"),
        col("invoice_period", "String"),
        col("rate_card", "String"),
        col("rate_card_version", "UInt32"),
        col("events", "Int64"),
        col("quantity", "Decimal(38, 9)"),
        col("sign", "Int8"),
        col("version", "UInt64"),
        WRITTEN_BY[0],
        WRITTEN_BY[1],
        WRITTEN_BY[2],
        col("fee_adjustment", "Decimal(38, 18)"),
    ],
    partition_by: None,
    order_by: &[
        "customer_id",
        "contract_id",
        "sku",
        "region",
        "service_period",
        "invoice_period",
        "rate_card",
        "rate_card_version",
        "version",
    ],
    csv: Some("customer_id,contract_id,sku,region,service_period,invoice_period,rate_card,rate_card_version,events,quantity,fee_adjustment,sign,version"),
    output: signed(false),
};

pub const ENTITLEMENT_SIGNALS: Table = Table {
    name: "entitlement_signals",
    row: "EntitlementSignal",
    about: "one signed entitlement signal: a threshold or limit a contract's usage crossed",
    columns: &[
        col("customer_id", "String"),
        col("contract_id", "String"),
        col("sku", "String"),
        col("period", "String"),
        col("signal", "String"),
        col("percent", "UInt32"),
        col("at_quantity", "Decimal(38, 9)"),
        col("allowance", "Decimal(38, 9)"),
        col("sign", "Int8"),
        col("version", "UInt64"),
        WRITTEN_BY[0],
        WRITTEN_BY[1],
        WRITTEN_BY[2],
    ],
    partition_by: None,
    order_by: &[
        "customer_id",
        "contract_id",
        "sku",
        "period",
        "signal",
        "percent",
        "version",
    ],
    csv: Some(
        "customer_id,contract_id,sku,period,signal,percent,at_quantity,allowance,sign,version",
    ),
    output: signed(true),
};

pub const USAGE_BUCKETS: Table = Table {
    name: "usage_buckets",
    row: "BucketRow",
    about: "one signed state of a meter's usage in a bucket (an hour)",
    columns: &[
        col("customer_id", "String"),
        col("sku", "String"),
        col("bucket_start", "DateTime"),
        col("events", "Int64"),
        col("quantity", "Decimal(38, 9)"),
        col("sign", "Int8"),
        col("version", "UInt64"),
        WRITTEN_BY[0],
        WRITTEN_BY[1],
        WRITTEN_BY[2],
    ],
    partition_by: Some("toYYYYMM(bucket_start)"),
    order_by: &["customer_id", "sku", "bucket_start", "version"],
    csv: Some("customer_id,sku,bucket_start,events,quantity,sign,version"),
    output: signed(false),
};

pub const ANOMALIES: Table = Table {
    name: "anomalies",
    row: "Anomaly",
    about: "one signed anomaly: a spike, drop or silence of a customer's SKU",
    columns: &[
        col("customer_id", "String"),
        col("sku", "String"),
        col("kind", "String"),
        col("window_start", "DateTime"),
        col("window_end", "DateTime"),
        col("observed", "Decimal(38, 9)"),
        col("expected", "Decimal(38, 9)"),
        col("score", "Decimal(18, 2)"),
        col("severity", "String"),
        col("baseline", "String"),
        col("explanation", "String"),
        col("sign", "Int8"),
        col("version", "UInt64"),
        WRITTEN_BY[0],
        WRITTEN_BY[1],
        WRITTEN_BY[2],
    ],
    partition_by: Some("toYYYYMM(window_start)"),
    order_by: &["customer_id", "sku", "window_start", "kind", "version"],
    csv: Some("customer_id,sku,kind,window_start,window_end,observed,expected,score,severity,baseline,explanation,sign,version"),
    output: signed(true),
};

pub const SINK_PROGRESS: Table = Table {
    name: "sink_progress",
    row: "Progress",
    about: "one committed point: epoch, watermark, input offsets, partitions, counts, metering lag",
    columns: &[
        col("generation", "UInt32"),
        col("epoch", "UInt64"),
        col("committed_at", "DateTime"),
        col("watermark_ms", "Int64"),
        col("offsets", "String"),
        col("counts", "String"),
        col("catalog_digest", "String"),
        col("partitions", "String"),
        col("lag", "String"),
    ],
    partition_by: None,
    order_by: &["generation", "epoch"],
    csv: None,
    output: None,
};

pub const CATALOG_CHANGES: Table = Table {
    name: "catalog_changes",
    row: "CatalogChange",
    about: "one catalog change: who, when, which entry, and a JSON diff",
    columns: &[
        col("changed_at", "DateTime"),
        col("actor", "String"),
        col("entity", "String"),
        col("entity_id", "String"),
        col("version", "UInt32"),
        col("action", "String"),
        col("diff", "String"),
    ],
    partition_by: Some("toYYYYMM(changed_at)"),
    order_by: &["entity", "entity_id", "changed_at"],
    csv: None,
    output: None,
};

pub const RECONCILIATION: Table = Table {
    name: "reconciliation",
    row: "Reconciled",
    about: "one line, signal, invoice-level line or invoice total checked by `meterflow reconcile`: expected, billed, drift",
    columns: &[
        col("checked_at", "DateTime"),
        col("run_id", "String"),
        col("comparison", "String"),
        col("customer_id", "String"),
        col("contract_id", "String"),
        col("sku", "String"),
        col("region", "String"),
        col("service_period", "String"),
        col("invoice_period", "String"),
        col("signal", "String"),
        col("expected_events", "Int64"),
        col("billed_events", "Int64"),
        col("expected_quantity", "Decimal(38, 9)"),
        col("billed_quantity", "Decimal(38, 9)"),
        col("drift", "UInt8"),
        col("event_ids", "String"),
        col("currency", "String"),
        col("expected_amount", "Decimal(38, 9)"),
        col("billed_amount", "Decimal(38, 9)"),
        col("expected_amount_exact", "Decimal(38, 18)"),
        col("billed_amount_exact", "Decimal(38, 18)"),
        col("line_type", "String"),
    ],
    partition_by: Some("toYYYYMM(checked_at)"),
    order_by: &[
        "customer_id",
        "comparison",
        "contract_id",
        "sku",
        "region",
        "service_period",
        "invoice_period",
        "signal",
        "checked_at",
    ],
    csv: Some("checked_at,run_id,comparison,customer_id,contract_id,sku,region,service_period,invoice_period,signal,line_type,expected_events,billed_events,expected_quantity,billed_quantity,currency,expected_amount,billed_amount,expected_amount_exact,billed_amount_exact,drift,event_ids"),
    output: None,
};

pub const SCORECARD: Table = Table {
    name: "scorecard",
    row: "Scored",
    about: "one number of the leak scorecard: a cause of capture or invoice error per period, customer and SKU",
    columns: &[
        col("computed_at", "DateTime"),
        col("run_id", "String"),
        col("measure", "String"),
        col("cause", "String"),
        col("period", "String"),
        col("customer_id", "String"),
        col("sku", "String"),
        col("currency", "String"),
        col("events", "Int64"),
        col("quantity", "Decimal(38, 9)"),
        col("amount", "Decimal(38, 18)"),
    ],
    partition_by: Some("toYYYYMM(computed_at)"),
    order_by: &["measure", "period", "customer_id", "sku", "cause", "computed_at"],
    csv: Some("computed_at,run_id,measure,cause,period,customer_id,sku,currency,events,quantity,amount"),
    output: None,
};

pub const QUARANTINE_RESOLUTIONS: Table = Table {
    name: "quarantine_resolutions",
    row: "Resolution",
    about: "one rejection marked resolved: the rejected record and the replayed fix that was accepted",
    columns: &[
        col("resolved_at", "DateTime"),
        col("run_id", "String"),
        col("event_id", "String"),
        col("reason", "String"),
        col("rejected_source", "String"),
        col("rejected_offset", "UInt64"),
        col("replay_source", "String"),
        col("replay_offset", "UInt64"),
        col("sign", "Int8"),
    ],
    partition_by: Some("toYYYYMM(resolved_at)"),
    order_by: &["event_id", "resolved_at"],
    csv: Some("resolved_at,run_id,event_id,reason,rejected_source,rejected_offset,replay_source,replay_offset,sign"),
    output: None,
};

pub const METERING_LAG: Table = Table {
    name: "metering_lag",
    row: "Lagged",
    about: "one stage of the metering lag for a period and partition read, as `meterflow scorecard` measured it",
    columns: &[
        col("computed_at", "DateTime"),
        col("run_id", "String"),
        col("period", "String"),
        col("source", "String"),
        col("partition", "Int32"),
        col("stage", "String"),
        col("events", "UInt64"),
        col("p50_ms", "UInt64"),
        col("p95_ms", "UInt64"),
        col("p99_ms", "UInt64"),
        col("max_ms", "UInt64"),
    ],
    partition_by: Some("toYYYYMM(computed_at)"),
    order_by: &["period", "source", "partition", "stage", "computed_at"],
    csv: Some("computed_at,run_id,period,source,partition,stage,events,p50_ms,p95_ms,p99_ms,max_ms"),
    output: None,
};

pub const EXPORTS: Table = Table {
    name: "exports",
    row: "Exported",
    about: "one marketplace metering record `meterflow export` wrote or sent: a contract's dimension in an hour, a compensation, or a decrease no marketplace takes; a sent record keeps the marketplace's answer",
    columns: &[
        col("exported_at", "DateTime"),
        col("export_id", "String"),
        col("marketplace", "String"),
        col("listing", "String"),
        col("product", "String"),
        col("contract_id", "String"),
        col("customer_id", "String"),
        col("marketplace_customer", "String"),
        col("sku", "String"),
        col("dimension", "String"),
        col("usage_hour", "DateTime"),
        col("record_time", "DateTime"),
        col("record_kind", "String"),
        col("quantity", "Decimal(38, 9)"),
        col("record_key", "String"),
        col("status", "String"),
        col("request", "String"),
        col("response_id", "String"),
        col("detail", "String"),
        col("allocations", "String"),
    ],
    partition_by: Some("toYYYYMM(exported_at)"),
    order_by: &["marketplace", "listing", "contract_id", "dimension", "usage_hour", "exported_at"],
    csv: Some("exported_at,export_id,marketplace,listing,product,contract_id,customer_id,marketplace_customer,sku,dimension,usage_hour,record_time,record_kind,quantity,record_key,status,request,response_id,detail,allocations"),
    output: None,
};

pub const REVENUE_SCHEDULE: Table = Table {
    name: "revenue_schedule",
    row: "Scheduled",
    about: "one signed row of the revenue schedule: a contract's performance obligation in a period, billed, recognised, deferred and unbilled",
    columns: &[
        col("computed_at", "DateTime"),
        col("run_id", "String"),
        col("customer_id", "String"),
        col("contract_id", "String"),
        col("obligation", "String"),
        col("service_period", "String"),
        col("period", "String"),
        col("currency", "String"),
        col("catch_up", "UInt8"),
        col("billed", "Decimal(38, 18)"),
        col("recognised", "Decimal(38, 18)"),
        col("deferred", "Decimal(38, 18)"),
        col("unbilled", "Decimal(38, 18)"),
        col("sign", "Int8"),
    ],
    partition_by: Some("toYYYYMM(computed_at)"),
    order_by: &["contract_id", "period", "obligation", "service_period", "computed_at"],
    csv: Some("computed_at,run_id,customer_id,contract_id,obligation,service_period,period,currency,catch_up,billed,recognised,deferred,unbilled,sign"),
    output: None,
};

pub const REMAINING_OBLIGATIONS: Table = Table {
    name: "remaining_obligations",
    row: "Obligated",
    about: "what a contract's fees and material rights had yet to recognise as of a time, and the part due within 12 months (`meterflow revenue --rpo`)",
    columns: &[
        col("computed_at", "DateTime"),
        col("run_id", "String"),
        col("as_of", "DateTime"),
        col("customer_id", "String"),
        col("contract_id", "String"),
        col("currency", "String"),
        col("within_12_months", "Decimal(38, 18)"),
        col("total", "Decimal(38, 18)"),
    ],
    partition_by: Some("toYYYYMM(computed_at)"),
    order_by: &["contract_id", "as_of", "computed_at"],
    csv: Some("computed_at,run_id,as_of,customer_id,contract_id,currency,within_12_months,total"),
    output: None,
};

pub const FORECAST: Table = Table {
    name: "forecast",
    row: "Forecast",
    about: "one month of one stream of the revenue forecast `meterflow forecast` made: contracted revenue of a segment, or usage revenue of a SKU and segment, with its 80% interval",
    columns: &[
        col("computed_at", "DateTime"),
        col("run_id", "String"),
        col("as_of", "DateTime"),
        col("month", "String"),
        col("stream", "String"),
        col("sku", "String"),
        col("segment", "String"),
        col("currency", "String"),
        col("quantity", "Decimal(38, 9)"),
        col("amount", "Decimal(38, 18)"),
        col("low", "Decimal(38, 18)"),
        col("high", "Decimal(38, 18)"),
    ],
    partition_by: Some("toYYYYMM(computed_at)"),
    order_by: &["month", "stream", "sku", "segment", "computed_at"],
    csv: Some("computed_at,run_id,as_of,month,stream,sku,segment,currency,quantity,amount,low,high"),
    output: None,
};

/// A view `meterflow migrate` creates over the tables: one of the dashboard's definitions, for
/// data teams to query (the migrations named after them hold the SQL).
pub struct View {
    pub name: &'static str,
    pub about: &'static str,
}

/// Every view, in migration order.
pub const VIEWS: &[View] = &[
    View {
        name: "v_exec_revenue",
        about: "current invoice money per invoice period, customer, line type and currency",
    },
    View {
        name: "v_exec_daily",
        about: "accepted billable usage per day, customer and SKU",
    },
    View {
        name: "v_exec_capture",
        about: "the leak scorecard as `meterflow scorecard` last recorded it",
    },
    View {
        name: "v_account_usage",
        about: "net usage per customer, contract, SKU and service period (what entitlements count)",
    },
    View {
        name: "v_account_signals",
        about: "entitlement and burn signals that stand now",
    },
    View {
        name: "v_ops_rejections",
        about: "rejected records per reason and day, with the fix and how many are unresolved",
    },
    View {
        name: "v_ops_arrivals",
        about: "accepted events per invoice period by arrival, correction and billability",
    },
    View {
        name: "v_ops_duplicates",
        about: "duplicate deliveries per day",
    },
    View {
        name: "v_ops_anomalies",
        about: "anomalies that stand now",
    },
    View {
        name: "v_exec_reconciliation",
        about: "lines the latest `meterflow reconcile` checked and found drifting, per comparison and period",
    },
    View {
        name: "v_exec_drift",
        about: "the lines the latest `meterflow reconcile` found drifting",
    },
    View {
        name: "v_ops_lag",
        about: "the metering lag as `meterflow scorecard` last recorded it",
    },
    View {
        name: "v_exec_forecast",
        about: "the latest revenue forecast per month, stream and currency",
    },
    View {
        name: "v_exec_recognition",
        about: "the revenue schedule as it stands (signed rows netted) per period and currency",
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddl::{Sql, MIGRATIONS};

    #[test]
    fn names_are_unique_and_csv_headers_name_columns() {
        for (i, t) in ALL.iter().enumerate() {
            assert!(
                ALL[..i].iter().all(|u| u.name != t.name),
                "{} twice",
                t.name
            );
            for k in t.order_by {
                assert!(
                    t.column(k).is_some(),
                    "{}: ORDER BY {k} is no column",
                    t.name
                );
            }
            for c in t.csv.iter().flat_map(|h| h.split(',')) {
                assert!(
                    t.column(c).is_some(),
                    "{}: CSV column {c} is no column",
                    t.name
                );
            }
            if let Some(o) = t.output {
                let csv = t.csv.expect("every output is written to files too");
                for c in ["epoch", "generation", "batch"] {
                    assert!(t.column(c).is_some(), "{} lacks {c}", t.name);
                }
                if o.shape == Shape::Signed {
                    assert!(csv.ends_with(",sign,version"), "{}", t.name);
                }
            }
        }
    }

    #[test]
    fn every_view_is_created_by_the_migration_named_after_it() {
        let made: Vec<&str> = MIGRATIONS
            .iter()
            .filter(|m| m.sql.text().starts_with("CREATE VIEW"))
            .map(|m| m.name)
            .collect();
        let registered: Vec<&str> = VIEWS.iter().map(|v| v.name).collect();
        assert_eq!(made, registered);
        for m in MIGRATIONS.iter().filter(|m| made.contains(&m.name)) {
            assert!(
                m.sql
                    .text()
                    .starts_with(&format!("CREATE VIEW IF NOT EXISTS {{db}}.{} AS ", m.name)),
                "{}",
                m.name
            );
        }
    }

    /// Tables made by one `CREATE` and never altered: the description's DDL is the migration's,
    /// word for word (the other tables are checked against a migrated server in the suite).
    #[test]
    fn a_description_renders_the_ddl_its_migration_ran() {
        let mut checked = 0;
        for t in ALL {
            let touching: Vec<String> = MIGRATIONS
                .iter()
                .map(|m| m.sql.text().into_owned())
                .filter(|s| !s.starts_with("CREATE VIEW"))
                .filter(|s| s.contains(&format!("{{db}}.{} ", t.name)))
                .collect();
            if let [create] = &touching[..] {
                assert_eq!(*create, t.create_sql(), "{}", t.name);
                checked += 1;
            }
        }
        assert!(checked >= 5, "only {checked} tables checked");
        assert!(MIGRATIONS
            .iter()
            .all(|m| !matches!(m.sql, Sql::Create(t) if named(t.name).is_none())));
    }
}
