//! `meterflow migrate`: creates or upgrades meterflow's database. Migrations are numbered, applied
//! once each in order, and recorded in `schema_migrations`, so running it again is harmless.

use clickhouse::Row;
use meterflow_schemas::ddl::{for_database, MIGRATIONS, MIGRATIONS_TABLE};
use serde::{Deserialize, Serialize};

use crate::sinks::clickhouse::client::ClickHouse;

#[derive(Row, Deserialize)]
struct Applied {
    id: u32,
}

#[derive(Row, Serialize)]
struct Record<'a> {
    id: u32,
    name: &'a str,
    applied_at: u32,
}

/// Applies the migrations the database lacks; returns their names.
pub fn migrate(ch: &ClickHouse) -> Result<Vec<&'static str>, String> {
    ch.execute("CREATE DATABASE IF NOT EXISTS {db}")?;
    ch.execute(MIGRATIONS_TABLE)?;
    let applied: Vec<Applied> = ch.fetch("SELECT id FROM {db}.schema_migrations")?;
    let mut done = Vec::new();
    for m in MIGRATIONS {
        if applied.iter().any(|a| a.id == m.id) {
            continue;
        }
        ch.execute(&m.sql.text())?;
        let now = meterflow_schemas::time::EventTime::now().0 / 1000;
        ch.insert::<Record<'static>>(
            "schema_migrations",
            &[Record {
                id: m.id,
                name: m.name,
                applied_at: now as u32,
            }],
        )?;
        done.push(m.name);
    }
    Ok(done)
}

/// Every statement `migrate` may run, for `database`, each followed by `;` and a blank line.
pub fn script(database: &str) -> String {
    ["CREATE DATABASE IF NOT EXISTS {db}", MIGRATIONS_TABLE]
        .into_iter()
        .map(std::borrow::Cow::Borrowed)
        .chain(MIGRATIONS.iter().map(|m| m.sql.text()))
        .map(|sql| format!("{};\n\n", for_database(&sql, database)))
        .collect()
}

/// Fails unless every migration is applied (a run must not write into a half-made schema).
pub fn check_migrated(ch: &ClickHouse) -> Result<(), String> {
    let applied: Vec<Applied> = ch
        .fetch("SELECT id FROM {db}.schema_migrations")
        .map_err(|e| format!("{e}; run `meterflow migrate` first"))?;
    let missing: Vec<&str> = MIGRATIONS
        .iter()
        .filter(|m| !applied.iter().any(|a| a.id == m.id))
        .map(|m| m.name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "database `{}` lacks migrations {}; run `meterflow migrate`",
            ch.database,
            missing.join(", ")
        ))
    }
}
