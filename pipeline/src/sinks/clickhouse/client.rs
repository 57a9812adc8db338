//! The connection to ClickHouse: settings, a small blocking facade over the official async
//! client, retries with backoff, and server-version detection.
//!
//! Every operation retries while the server is unreachable or answers with a transient error
//! (overloaded, too many parts, timeouts): waits grow from 100 ms to 5 s and the operation
//! never gives up, so an outage stalls the pipeline rather than losing data. Errors that no
//! retry can fix (a bad query, a missing table) are returned at once.

use std::future::Future;
use std::time::Duration;

use clickhouse::{Client, Row, RowOwned, RowRead, RowWrite};
use serde::Deserialize;

use crate::sinks::metrics::sink_telemetry;

/// `[clickhouse]` in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`. Empty: write the embedded CSV tables instead.
    pub url: String,
    /// Database holding meterflow's tables (created by `meterflow migrate`).
    pub database: String,
    pub user: String,
    /// Name of the environment variable holding the password (never the password itself).
    pub password_env: Option<String>,
    /// Or the path of a file holding it (a mounted Kubernetes or Docker secret).
    pub password_file: Option<std::path::PathBuf>,
    /// Flush a table once this many rows are waiting.
    pub flush_rows: usize,
    /// Flush completed epochs at least this often.
    pub flush_interval: meterflow_schemas::time::Span,
    /// Flush as soon as a pricing round is complete, once this long after the last flush: the
    /// round sets the latency, and this bounds inserts per table and second under a backlog.
    pub min_flush_interval: meterflow_schemas::time::Span,
    /// How inserts travel: `lz4` (the default) trades CPU on both ends for a third of the bytes,
    /// right across a network; `none` saves that CPU when ClickHouse runs on the same host.
    pub compression: Compression,
}

/// `clickhouse.compression`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Lz4,
    None,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: String::new(),
            database: "meterflow".into(),
            user: "default".into(),
            password_env: None,
            password_file: None,
            flush_rows: 100_000,
            flush_interval: meterflow_schemas::time::Span(1000),
            min_flush_interval: meterflow_schemas::time::Span(250),
            compression: Compression::Lz4,
        }
    }
}

impl ClickHouseConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }
}

/// A ClickHouse connection with its own single-threaded runtime: meterflow's workers are plain
/// threads, and each sink blocks on its own inserts.
pub struct ClickHouse {
    client: Client,
    runtime: tokio::runtime::Runtime,
    pub database: String,
    /// `None`: retry forever (the pipeline and the reports). `Some(limit)`: try once, and give
    /// up after `limit` (the dashboard, which must say that ClickHouse is down, not hang).
    fail_fast: Option<Duration>,
}

/// Whether a failed operation may succeed if tried again.
fn retryable(e: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error;
    match e {
        // A certificate the client does not trust is a configuration error: waiting won't fix it.
        Error::Network(_) => !chain(e).to_lowercase().contains("certificate"),
        Error::TimedOut => true,
        // Server-side codes worth waiting out: timeouts, network, memory, too many parts or
        // queries, read-only table (e.g. during a restart).
        Error::BadResponse(msg) => [
            "Code: 159",
            "Code: 209",
            "Code: 210",
            "Code: 241",
            "Code: 242",
            "Code: 252",
            "Code: 202",
            "Code: 394",
        ]
        .iter()
        .any(|c| msg.contains(c)),
        _ => false,
    }
}

/// An error with its causes (a TLS failure is a few levels below "network error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The body of a single-quoted SQL string literal holding `s` (backslashes and quotes escaped).
pub fn sql_string(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Quoted string literals separated by commas, for `IN (...)`.
pub fn sql_list<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    items
        .into_iter()
        .map(|s| format!("'{}'", sql_string(s.as_ref())))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ClickHouse {
    pub fn connect(cfg: &ClickHouseConfig) -> Result<ClickHouse, String> {
        // The crate's own default client, but on the process's shared TLS settings (see
        // `https_connector`), and an error rather than a panic where TLS cannot be set up.
        let connector = crate::sinks::http::https_connector(Some(Duration::from_secs(60)))?;
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(2))
                .build(connector);
        let mut client = Client::with_http_client(http)
            .with_url(&cfg.url)
            .with_user(&cfg.user)
            .with_validation(false)
            .with_compression(match cfg.compression {
                Compression::Lz4 => clickhouse::Compression::Lz4,
                Compression::None => clickhouse::Compression::None,
            });
        if let Some(password) = crate::config::secrets::read(
            "clickhouse.password_env/password_file",
            cfg.password_env.as_deref(),
            cfg.password_file.as_deref(),
        )? {
            client = client.with_password(password);
        }
        if cfg.database.is_empty()
            || !cfg
                .database
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!(
                "clickhouse.database `{}` must be letters, digits and underscores",
                cfg.database
            ));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the ClickHouse client runtime: {e}"))?;
        Ok(ClickHouse {
            client,
            runtime,
            database: cfg.database.clone(),
            fail_fast: None,
        })
    }

    /// This connection, trying each operation once and giving up after `limit`: for readers that
    /// must report an outage rather than wait it out.
    pub fn fail_fast(mut self, limit: Duration) -> ClickHouse {
        self.fail_fast = Some(limit);
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `op` until it succeeds or fails in a way no retry can fix.
    pub fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, String>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = clickhouse::error::Result<T>>,
    {
        self.retry_insert(what, None, op)
    }

    /// [`Self::retry`], counting the retries of an insert into `table` (see
    /// [`sink_telemetry`]).
    fn retry_insert<T, F, Fut>(
        &self,
        what: &str,
        table: Option<&str>,
        mut op: F,
    ) -> Result<T, String>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = clickhouse::error::Result<T>>,
    {
        if let Some(limit) = self.fail_fast {
            let attempt = op(self.client.clone());
            // The timer needs the runtime: it is made inside `block_on`.
            return match self
                .runtime
                .block_on(async move { tokio::time::timeout(limit, attempt).await })
            {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(format!("{what}: {e}")),
                Err(_) => Err(format!("{what}: no answer within {limit:?}")),
            };
        }
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1u32;
        let mut waiting = None;
        loop {
            match self.runtime.block_on(op(self.client.clone())) {
                Ok(v) => {
                    if attempt > 1 {
                        tracing::info!(what, attempt, "clickhouse is back");
                    }
                    return Ok(v);
                }
                Err(e) if retryable(&e) => {
                    tracing::warn!(what, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "clickhouse unavailable; retrying");
                    if let Some(table) = table {
                        sink_telemetry().insert_retried(table);
                    }
                    waiting.get_or_insert_with(|| sink_telemetry().waiting_for_clickhouse());
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                Err(e) => return Err(format!("{what}: {}", chain(&e))),
            }
        }
    }

    /// Runs a statement (with `{db}` replaced by the database).
    pub fn execute(&self, sql: &str) -> Result<(), String> {
        let sql = sql.replace("{db}", &self.database);
        log_statement(&sql);
        self.retry(&first_words(&sql), |c| {
            let sql = sql.clone();
            async move { c.query(&sql).execute().await }
        })
    }

    /// The answer to a query as text in `format` (e.g. `JSONEachRow`; `{db}` replaced).
    pub fn fetch_text(&self, sql: &str, format: &str) -> Result<String, String> {
        let sql = sql.replace("{db}", &self.database);
        log_statement(&sql);
        let bytes = self.retry(&first_words(&sql), |c| {
            let sql = sql.clone();
            let format = format.to_string();
            async move { c.query(&sql).fetch_bytes(format)?.collect().await }
        })?;
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("ClickHouse answered non-UTF-8: {e}"))
    }

    /// Fetches all rows of a query (with `{db}` replaced by the database).
    pub fn fetch<T: RowOwned + RowRead>(&self, sql: &str) -> Result<Vec<T>, String> {
        let sql = sql.replace("{db}", &self.database);
        log_statement(&sql);
        self.retry(&first_words(&sql), |c| {
            let sql = sql.clone();
            async move { c.query(&sql).fetch_all::<T>().await }
        })
    }

    /// Inserts `rows` into `table` in one request, retrying the whole batch until it is in.
    /// For tables where a repeated row is harmless (`sink_progress`); see [`Self::insert_batch`].
    pub fn insert<'r, T: Row + RowWrite>(
        &self,
        table: &str,
        rows: &[T::Value<'r>],
    ) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        let target = self.insert_target::<T>(table);
        let started = std::time::Instant::now();
        self.retry_insert(&format!("insert into {table}"), Some(table), |c| {
            Self::send::<T, _, _>(c, target.clone(), None, rows, &|r| r)
        })?;
        sink_telemetry().inserted(table, rows.len(), started.elapsed());
        Ok(())
    }

    /// Inserts one batch exactly once, even when the connection breaks mid-insert. Every row
    /// carries `batch` (see [`BatchId`]). After a failed attempt, meterflow waits until the
    /// attempt is no longer running on the server, then counts the batch's rows: all there, the
    /// batch is in (the server wrote it and the answer was lost); none, it is sent again; some
    /// (a batch spanning partitions writes one part per partition), they are deleted and the
    /// batch is sent again. Retrying blindly would bill those rows twice.
    ///
    /// Each row is built from its source item by `row` as it is written (and again if the batch
    /// is resent), so a batch never exists twice in memory.
    pub fn insert_batch<'r, T: Row + RowWrite, S>(
        &self,
        table: &str,
        id: BatchId,
        rows: &'r [S],
        row: impl Fn(&'r S) -> T::Value<'r>,
    ) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        let target = self.insert_target::<T>(table);
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        for attempt in 1u32.. {
            let query_id = format!(
                "meterflow-{}-{table}-g{}-b{}-a{attempt}",
                self.database, id.generation, id.batch
            );
            let sent = self.runtime.block_on(Self::send::<T, S, _>(
                self.client.clone(),
                target.clone(),
                Some(&query_id),
                rows,
                &row,
            ));
            match sent {
                Ok(()) => break,
                Err(e) if retryable(&e) => {
                    tracing::warn!(table, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "clickhouse unavailable; checking whether the batch landed before retrying");
                    sink_telemetry().insert_retried(table);
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                    let held = self.batch_rows(table, id, &query_id)?;
                    if held == rows.len() as u64 {
                        tracing::info!(
                            table,
                            batch = id.batch,
                            "the batch had landed before the connection broke"
                        );
                        break;
                    }
                    if held > 0 {
                        tracing::warn!(
                            table,
                            batch = id.batch,
                            held,
                            rows = rows.len(),
                            "removing the part of a batch that landed"
                        );
                        self.delete_where(table, &id.condition())?;
                    }
                }
                Err(e) => return Err(format!("insert into {table}: {e}")),
            }
        }
        tracing::debug!(
            table,
            rows = rows.len(),
            ms = started.elapsed().as_millis() as u64,
            "clickhouse insert"
        );
        sink_telemetry().inserted(table, rows.len(), started.elapsed());
        Ok(())
    }

    /// The rows of batch `id` in `table`, once the attempt `query_id` has stopped running.
    fn batch_rows(&self, table: &str, id: BatchId, query_id: &str) -> Result<u64, String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        loop {
            let running: Vec<Count> = self.fetch(&format!(
                "SELECT count() AS n FROM system.processes WHERE query_id = '{query_id}'"
            ))?;
            if running.first().is_none_or(|c| c.n == 0) {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "insert {query_id} is still running after 5 minutes"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let held: Vec<Count> = self.fetch(&format!(
            "SELECT count() AS n FROM {{db}}.{table} WHERE {}",
            id.condition()
        ))?;
        Ok(held.first().map_or(0, |c| c.n))
    }

    /// Deletes the rows of `table` matching `condition` and waits until they are gone
    /// (`ALTER TABLE ... DELETE` runs as a background mutation).
    pub fn delete_where(&self, table: &str, condition: &str) -> Result<(), String> {
        self.execute(&format!(
            "ALTER TABLE {{db}}.{table} DELETE WHERE {condition}"
        ))?;
        loop {
            let pending: Vec<Count> = self.fetch(&format!("SELECT count() AS n FROM system.mutations WHERE database = '{{db}}' AND table = '{table}' AND is_done = 0"))?;
            if pending.first().is_none_or(|c| c.n == 0) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn insert_target<T: Row>(&self, table: &str) -> String {
        let target = format!("{}.{table}", self.database);
        // What the insert relies on: these columns exist with these names.
        log_statement(&format!(
            "SELECT {} FROM {target} LIMIT 0",
            T::COLUMN_NAMES.join(", ")
        ));
        target
    }

    /// Writes `row(r)` for every `r` of `rows` in one insert.
    async fn send<'s, 'r, T: Row + RowWrite, S, V: std::borrow::Borrow<T::Value<'r>>>(
        c: Client,
        target: String,
        query_id: Option<&str>,
        rows: &'s [S],
        row: &impl Fn(&'s S) -> V,
    ) -> clickhouse::error::Result<()> {
        let mut insert = c.insert_unescaped::<T>(&target).await?;
        if let Some(id) = query_id {
            insert = insert.with_setting("query_id", id);
        }
        for r in rows {
            insert.write(row(r).borrow()).await?;
        }
        insert.end().await
    }

    /// The server version, e.g. `(18, 16)` or `(24, 8)`.
    pub fn version(&self) -> Result<(u32, u32), String> {
        #[derive(Row, Deserialize)]
        struct V {
            version: String,
        }
        let rows: Vec<V> = self.fetch("SELECT version() AS version")?;
        let text = rows.first().map(|v| v.version.clone()).unwrap_or_default();
        let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
    }
}

/// Which insert a row of an epoch table came from: `(generation, batch)` is unique, so an
/// insert whose outcome is unknown can be checked (see [`ClickHouse::insert_batch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchId {
    pub generation: u32,
    /// The writing worker in the top 24 bits, its batch counter (from 1) below.
    pub batch: u64,
}

impl BatchId {
    fn condition(self) -> String {
        format!(
            "generation = {} AND batch = {}",
            self.generation, self.batch
        )
    }
}

#[derive(Row, Deserialize)]
pub struct Count {
    pub n: u64,
}

/// With `METERFLOW_SQL_LOG=<file>`, every distinct statement meterflow sends to ClickHouse is
/// appended to the file (`;` and a blank line after each), so the test suite can replay exactly
/// those statements on current ClickHouse.
fn log_statement(sql: &str) {
    use std::collections::HashSet;
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};
    /// The log file and the statements already in it.
    type SqlLog = Mutex<(std::fs::File, HashSet<String>)>;
    static LOG: OnceLock<Option<SqlLog>> = OnceLock::new();
    let log = LOG.get_or_init(|| {
        let path = std::env::var_os("METERFLOW_SQL_LOG")?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()?;
        Some(Mutex::new((file, HashSet::new())))
    });
    if let Some(log) = log {
        let mut guard = log.lock().unwrap_or_else(|e| e.into_inner());
        let (file, seen) = &mut *guard;
        if seen.insert(sql.to_string()) {
            let _ = write!(file, "{};\n\n", sql.trim_end());
        }
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(4).collect::<Vec<_>>().join(" ")
}
