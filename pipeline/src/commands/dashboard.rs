//! `meterflow dashboard`: the exec, account and ops views as web pages, over a run's output
//! directory or ClickHouse, with a JSON endpoint behind every chart.
//!
//! A background thread re-reads the source every `--refresh` (files: only when they changed),
//! so pages load from the last snapshot however large the tables are, and keep loading while
//! `meterflow run` writes. When the source cannot be read (ClickHouse down), the last snapshot
//! is served with the error beside it, and the next read that succeeds clears it. Read-only;
//! binds to loopback unless told otherwise, and then takes a bearer token (`--token-env`).
//! The pages, their script and the charting library (uPlot, MIT) are compiled into the binary.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use meterflow_schemas::catalog::{load_dir, Catalog};
use meterflow_schemas::time::{EventTime, PeriodUnit, Span};
use serde::{Deserialize, Serialize};

use crate::commands::open_clickhouse;
use crate::reports::dashboard::{self, Facts, Telemetry};
use crate::reports::tables::{read_table, Row as CsvRow};
use crate::sinks::clickhouse::client::{sql_string, ClickHouse, ClickHouseConfig};

#[derive(clap::Args)]
pub struct DashboardCommand {
    /// Catalog directory (customers, SKUs, contracts and their entitlements).
    #[arg(long, short = 'c')]
    catalog: PathBuf,
    /// Output directory of an embedded run.
    #[arg(long, short = 'o', default_value = "out")]
    out: PathBuf,
    /// Read ClickHouse at this HTTP URL instead (overrides clickhouse.url).
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// Configuration file; its [clickhouse] section selects ClickHouse.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve on. Loopback by default: the pages show revenue.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Environment variable holding a token every request must carry (`Authorization: Bearer`,
    /// or `?token=` once in the page's address). Required to listen beyond loopback.
    #[arg(long)]
    token_env: Option<String>,
    /// How often to read the source again.
    #[arg(long, default_value = "5s", value_parser = Span::parse)]
    refresh: Span,
    /// A running pipeline's `/metrics` address, for alert and ClickHouse insert health (an
    /// embedded run's `OUT/metrics.prom` is read without it).
    #[arg(long)]
    metrics_url: Option<String>,
}

/// Where the views read from.
#[derive(Clone)]
enum Source {
    Files(PathBuf),
    ClickHouse(ClickHouseConfig),
}

/// The last snapshot, and why the latest read failed (if it did).
#[derive(Default)]
struct Snapshot {
    facts: Option<Arc<Facts>>,
    catalog: Option<Arc<Catalog>>,
    error: Option<String>,
    failing_since: Option<EventTime>,
}

struct App {
    source: Source,
    unit: PeriodUnit,
    token: Option<String>,
    snapshot: RwLock<Snapshot>,
}

impl DashboardCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let (cfg, ch) = open_clickhouse(self.config.as_deref(), self.clickhouse_url.as_ref())?;
        let source = match ch {
            Some(_) => Source::ClickHouse(cfg.clickhouse.clone()),
            None => Source::Files(self.out.clone()),
        };
        let token = match &self.token_env {
            Some(var) => Some(std::env::var(var).ok().filter(|t| !t.is_empty()).ok_or_else(|| {
                anyhow::anyhow!("--token-env names {var}, which is not set or empty; export the token in it")
            })?),
            None => None,
        };
        let addr: std::net::SocketAddr = self.listen.parse().map_err(|_| {
            anyhow::anyhow!(
                "--listen `{}` is not an address like 127.0.0.1:8080",
                self.listen
            )
        })?;
        if !addr.ip().is_loopback() && token.is_none() {
            anyhow::bail!(
                "--listen {addr} is reachable from other hosts, and the pages show revenue: \
                 pass --token-env NAME with a token in $NAME, or listen on 127.0.0.1"
            );
        }
        if self.refresh.0 <= 0 {
            anyhow::bail!("--refresh must be positive (e.g. 5s)");
        }
        // The catalog must load before anything is served: a bad one stops start-up.
        let catalog = Arc::new(load_dir(&self.catalog)?);
        let app = Arc::new(App {
            source,
            unit: cfg.billing.period,
            token,
            snapshot: RwLock::new(Snapshot {
                catalog: Some(catalog),
                ..Default::default()
            }),
        });
        {
            let app = app.clone();
            let (catalog, metrics) = (self.catalog.clone(), self.metrics_url.clone());
            let every = Duration::from_millis(self.refresh.0 as u64);
            std::thread::Builder::new()
                .name("dashboard-refresh".into())
                .spawn(move || refresh_forever(&app, &catalog, metrics.as_deref(), every))?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
            let bound = listener.local_addr()?;
            println!(
                "meterflow dashboard on http://{bound}/ (exec, account, ops; JSON under /api/)"
            );
            axum::serve(listener, router(app)).await?;
            anyhow::Ok(())
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

/// A fingerprint of every file under `out` (sizes and times): unchanged files need no re-read.
fn fingerprint(out: &Path) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut visit = |dir: &Path| {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut subdirs = Vec::new();
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                subdirs.push(e.path());
                continue;
            }
            e.path().hash(&mut h);
            m.len().hash(&mut h);
            let t = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
            t.map_or(0, |d| d.as_nanos()).hash(&mut h);
        }
        subdirs
    };
    for d in visit(out) {
        visit(&d);
    }
    h.finish()
}

fn refresh_forever(app: &App, catalog_dir: &Path, metrics_url: Option<&str>, every: Duration) {
    let mut last = None;
    loop {
        let seen = match &app.source {
            Source::Files(out) => Some(fingerprint(out) ^ fingerprint(catalog_dir)),
            Source::ClickHouse(_) => None,
        };
        if seen.is_none() || seen != last {
            match read_snapshot(app, catalog_dir, metrics_url) {
                Ok((facts, catalog)) => {
                    let mut s = app.snapshot.write().unwrap();
                    s.facts = Some(Arc::new(facts));
                    s.catalog = Some(Arc::new(catalog));
                    if s.error.take().is_some() {
                        tracing::info!("dashboard source readable again");
                    }
                    s.failing_since = None;
                    last = seen;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard cannot read its source; serving the last snapshot");
                    let mut s = app.snapshot.write().unwrap();
                    s.failing_since.get_or_insert_with(EventTime::now);
                    s.error = Some(e);
                }
            }
        }
        std::thread::sleep(every);
    }
}

fn read_snapshot(
    app: &App,
    catalog_dir: &Path,
    metrics_url: Option<&str>,
) -> Result<(Facts, Catalog), String> {
    let catalog = load_dir(catalog_dir).map_err(|e| format!("catalog: {e}"))?;
    let mut facts = match &app.source {
        Source::Files(out) => Facts::from_output(out, &catalog, app.unit)?,
        Source::ClickHouse(cfg) => {
            let ch = connect(cfg)?;
            Facts::from_clickhouse(&ch, &catalog, app.unit)
                .map_err(|e| format!("ClickHouse at {} is not answering: {e}", cfg.url))?
        }
    };
    if let Some(url) = metrics_url {
        match scrape(url) {
            Ok(text) => facts.telemetry = Some(Telemetry::parse(&text, url)),
            Err(e) => tracing::warn!(url, error = %e, "cannot read the pipeline's metrics"),
        }
    }
    Ok((facts, catalog))
}

fn connect(cfg: &ClickHouseConfig) -> Result<ClickHouse, String> {
    Ok(ClickHouse::connect(cfg)?.fail_fast(Duration::from_secs(10)))
}

/// `GET url` (a pipeline's `/metrics`), through hyper.
fn scrape(url: &str) -> Result<String, String> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let answer = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
            .await
            .map_err(|_| "no answer within 5 s".to_string())?
            .map_err(|e| e.to_string())?;
        let body = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        String::from_utf8(body.to_bytes().to_vec()).map_err(|e| e.to_string())
    })
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/exec") }))
        .route("/exec", get(page))
        .route("/account", get(page))
        .route("/ops", get(page))
        .route("/assets/{name}", get(asset))
        .route("/api/status", get(status))
        .route("/api/exec", get(exec))
        .route("/api/account", get(account))
        .route("/api/ops", get(ops))
        .route("/api/lines", get(lines))
        .route("/api/events", get(events))
        .route("/api/rejections", get(rejections))
        .layer(axum::middleware::from_fn_with_state(app.clone(), authorize))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(app)
}

/// With a token configured, every request but `/healthz` carries it.
async fn authorize(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(token) = &app.token else {
        return next.run(request).await;
    };
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(String::from);
    let in_query = request.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(String::from)
    });
    let cookie = request
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| {
            c.split(';')
                .find_map(|kv| kv.trim().strip_prefix("meterflow_token="))
        })
        .map(String::from);
    let given = bearer.or(in_query.clone()).or(cookie);
    if given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
        let mut answer = next.run(request).await;
        if in_query.is_some() {
            // The page's own requests carry it from here on, without it in their addresses.
            if let Ok(v) =
                format!("meterflow_token={token}; HttpOnly; SameSite=Strict; Path=/").parse()
            {
                answer.headers_mut().insert(header::SET_COOKIE, v);
            }
        }
        return answer;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this dashboard needs its token: Authorization: Bearer <token>, or ?token=<token> once\n",
    )
        .into_response()
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");

async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind): (&str, &str) = match name.as_str() {
        "dashboard.js" => (
            include_str!("../../assets/dashboard/dashboard.js"),
            "text/javascript",
        ),
        "dashboard.css" => (
            include_str!("../../assets/dashboard/dashboard.css"),
            "text/css",
        ),
        "uPlot.iife.min.js" => (
            include_str!("../../assets/dashboard/vendor/uPlot.iife.min.js"),
            "text/javascript",
        ),
        "uPlot.min.css" => (
            include_str!("../../assets/dashboard/vendor/uPlot.min.css"),
            "text/css",
        ),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, format!("{kind}; charset=utf-8")),
            (header::CACHE_CONTROL, "max-age=300".to_string()),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct Params {
    customer: Option<String>,
    period: Option<String>,
    contract: Option<String>,
    sku: Option<String>,
    service_period: Option<String>,
    reason: Option<String>,
    event_id: Option<String>,
}

impl Params {
    fn period(&self) -> Option<&str> {
        self.period
            .as_deref()
            .filter(|p| !p.is_empty() && *p != "all")
    }
    fn customer(&self) -> Option<&str> {
        self.customer.as_deref().filter(|c| !c.is_empty())
    }
}

/// Where the data came from and how fresh it is, with every answer.
#[derive(Serialize)]
struct Status {
    source: String,
    read_at: Option<String>,
    /// Why the latest read failed (the data shown is older), if it did.
    error: Option<String>,
    failing_since: Option<String>,
}

#[derive(Serialize)]
struct Answer<T: Serialize> {
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
    /// Set when there is nothing to show, saying why (unknown customer, empty period, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    empty: Option<String>,
}

fn status_of(app: &App, s: &Snapshot) -> Status {
    Status {
        source: match &app.source {
            Source::Files(out) => format!("output directory {}", out.display()),
            Source::ClickHouse(cfg) => {
                format!("ClickHouse database {} at {}", cfg.database, cfg.url)
            }
        },
        read_at: s.facts.as_ref().map(|f| f.read_at.to_string()),
        error: s.error.clone(),
        failing_since: s.failing_since.map(|t| t.to_string()),
    }
}

/// Runs `view` over the current snapshot; without one yet, 503 with the reason.
fn answer<T: Serialize>(
    app: &App,
    view: impl FnOnce(&Facts, &Catalog) -> Result<T, (StatusCode, String)>,
) -> Response {
    let s = app.snapshot.read().unwrap();
    let status = status_of(app, &s);
    let (Some(facts), Some(catalog)) = (s.facts.clone(), s.catalog.clone()) else {
        let why = s
            .error
            .clone()
            .unwrap_or_else(|| "reading the source for the first time".into());
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Answer::<()> {
                status,
                data: None,
                empty: Some(why),
            }),
        )
            .into_response();
    };
    drop(s);
    match view(&facts, &catalog) {
        Ok(data) => Json(Answer {
            status,
            data: Some(data),
            empty: None,
        })
        .into_response(),
        Err((code, why)) => (
            code,
            Json(Answer::<()> {
                status,
                data: None,
                empty: Some(why),
            }),
        )
            .into_response(),
    }
}

/// A period the billing unit can name, or a 400 saying what one looks like.
fn check_period(app: &App, p: Option<&str>) -> Result<(), (StatusCode, String)> {
    match p {
        Some(p) if app.unit.parse_label(p).is_none() => Err((
            StatusCode::BAD_REQUEST,
            format!(
                "`{p}` is not a billing period here; periods look like {}",
                app.unit.label(app.unit.period_of(EventTime::now()))
            ),
        )),
        _ => Ok(()),
    }
}

async fn status(State(app): State<Arc<App>>) -> Response {
    answer(&app, |f, c| Ok(dashboard::choices(f, c)))
}

async fn exec(State(app): State<Arc<App>>, Query(q): Query<Params>) -> Response {
    answer(&app, |f, c| {
        check_period(&app, q.period())?;
        let exec = dashboard::exec(f, c, app.unit, q.period());
        match q.period() {
            Some(p) if exec.customers.is_empty() && exec.daily_events.is_empty() => Err((
                StatusCode::NOT_FOUND,
                format!(
                    "nothing in {p}: no invoice lines and no usage; pick a period from the list"
                ),
            )),
            _ => Ok(exec),
        }
    })
}

async fn account(State(app): State<Arc<App>>, Query(q): Query<Params>) -> Response {
    answer(&app, |f, c| {
        check_period(&app, q.period())?;
        let Some(customer) = q.customer() else {
            return Err((StatusCode::BAD_REQUEST, "pick a customer".into()));
        };
        dashboard::account(f, c, app.unit, customer, q.period()).ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("no customer `{customer}` in the catalog"),
            )
        })
    })
}

async fn ops(State(app): State<Arc<App>>, Query(q): Query<Params>) -> Response {
    answer(&app, |f, _| {
        check_period(&app, q.period())?;
        Ok(dashboard::ops(f, app.unit, q.period()))
    })
}

/// The current invoice lines of a customer and period: the rows behind an invoice total.
async fn lines(State(app): State<Arc<App>>, Query(q): Query<Params>) -> Response {
    answer(&app, |f, _| {
        check_period(&app, q.period())?;
        Ok(f.lines
            .iter()
            .filter(|l| {
                q.customer().is_none_or(|c| c == l.customer)
                    && q.period().is_none_or(|p| p == l.invoice_period)
                    && q.sku.as_deref().is_none_or(|s| s == l.sku)
            })
            .map(|l| {
                serde_json::json!({
                    "customer_id": l.customer, "contract_id": l.contract, "invoice_period": l.invoice_period,
                    "line_type": l.kind.as_str(), "sku": l.sku, "service_period": l.service_period,
                    "region": l.region, "events": l.events, "quantity": l.quantity,
                    "amount": l.amount.to_string(), "currency": l.currency,
                })
            })
            .collect::<Vec<_>>())
    })
}

/// At most this many rows from a drill-down.
const ROWS: usize = 1000;

/// The accepted events behind an invoice line (customer, contract, SKU, service and invoice
/// period), or one event by id: the same lineage `meterflow trace` follows.
async fn events(State(app): State<Arc<App>>, Query(q): Query<Params>) -> Response {
    let source = app.source.clone();
    drill(&app, move || {
        let keep = |r: &CsvRow| {
            let is = |col: &str, want: Option<&String>| {
                want.is_none_or(|w| w.is_empty() || r.get(col).is_some_and(|v| v == w))
            };
            is("event_id", q.event_id.as_ref())
                && is("customer_id", q.customer.as_ref())
                && is("contract_id", q.contract.as_ref())
                && is("sku", q.sku.as_ref())
                && is("service_period", q.service_period.as_ref())
                && is("invoice_period", q.period.as_ref().filter(|p| *p != "all"))
        };
        match source {
            Source::Files(out) => file_rows(&out, "usage_events", keep),
            Source::ClickHouse(cfg) => {
                let mut conditions = vec!["1".to_string()];
                for (col, v) in [
                    ("event_id", &q.event_id),
                    ("customer_id", &q.customer),
                    ("contract_id", &q.contract),
                    ("sku", &q.sku),
                    ("service_period", &q.service_period),
                    ("invoice_period", &q.period),
                ] {
                    if let Some(v) = v.as_ref().filter(|v| !v.is_empty() && *v != "all") {
                        conditions.push(format!("{col} = '{}'", sql_string(v)));
                    }
                }
                clickhouse_rows(
                    &cfg,
                    &format!(
                        "SELECT event_id, customer_id, contract_id, sku, unit, toString(quantity) AS quantity, \
                         toString(event_time) AS event_time, environment, billable, region, correction_action, \
                         correction_of, rate_card, rate_card_version, service_period, invoice_period, arrival, \
                         source, partition, offset FROM {{db}}.usage_events WHERE {} \
                         ORDER BY event_time, event_id LIMIT {ROWS}",
                        conditions.join(" AND ")
                    ),
                )
            }
        }
    })
    .await
}

/// The rejected records of one reason, with the payload as received.
async fn rejections(State(app): State<Arc<App>>, Query(q): Query<Params>) -> Response {
    let source = app.source.clone();
    drill(&app, move || {
        let reason = q.reason.clone().unwrap_or_default();
        match source {
            Source::Files(out) => file_rows(&out, "rejections", |r| {
                reason.is_empty() || r.get("reason").is_some_and(|v| *v == reason)
            }),
            Source::ClickHouse(cfg) => clickhouse_rows(
                &cfg,
                &format!(
                    "SELECT reason, field, message, remediation, event_id, source, partition, offset, \
                     toString(rejected_at) AS rejected_at, raw_payload FROM {{db}}.rejections \
                     WHERE {} ORDER BY rejected_at, source, partition, offset LIMIT {ROWS}",
                    if reason.is_empty() {
                        "1".to_string()
                    } else {
                        format!("reason = '{}'", sql_string(&reason))
                    }
                ),
            ),
        }
    })
    .await
}

fn file_rows(
    out: &Path,
    table: &str,
    keep: impl Fn(&CsvRow) -> bool,
) -> Result<Vec<serde_json::Value>, String> {
    if !out.join(table).exists() {
        return Ok(Vec::new());
    }
    let rows = read_table(out, table).map_err(|e| format!("cannot read {table}: {e}"))?;
    Ok(rows
        .into_iter()
        .filter(|r| keep(r))
        .take(ROWS)
        .map(|r| serde_json::to_value(r).unwrap_or_default())
        .collect())
}

/// Rows of a query as JSON objects (`FORMAT JSONEachRow`, which every ClickHouse speaks).
fn clickhouse_rows(cfg: &ClickHouseConfig, sql: &str) -> Result<Vec<serde_json::Value>, String> {
    let ch = connect(cfg)?;
    let text = ch
        .fetch_text(sql, "JSONEachRow")
        .map_err(|e| format!("ClickHouse: {e}"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("ClickHouse answered `{l}`: {e}")))
        .collect()
}

/// Runs a drill-down read off the async threads; its failure is a 503 that says why.
async fn drill(
    app: &App,
    read: impl FnOnce() -> Result<Vec<serde_json::Value>, String> + Send + 'static,
) -> Response {
    let result = tokio::task::spawn_blocking(read)
        .await
        .unwrap_or_else(|e| Err(format!("the read failed: {e}")));
    let status = status_of(app, &app.snapshot.read().unwrap());
    match result {
        Ok(rows) => {
            let empty = rows.is_empty().then(|| "no rows match".to_string());
            Json(Answer {
                status,
                data: Some(rows),
                empty,
            })
            .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Answer::<()> {
                status,
                data: None,
                empty: Some(e),
            }),
        )
            .into_response(),
    }
}
