//! Reads a dimension table from Postgres on a thread of its own and hands the worker a
//! snapshot whenever the rows changed.

use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::time::Duration;

use anyhow::Context;
use postgres::{Client, NoTls};
use tidemark_dataflows::contract::dimension::{DimRow, DimensionSpec, TableSource};

pub struct PgTable {
    first: Option<Vec<DimRow>>,
    updates: Receiver<Vec<DimRow>>,
}

fn read(client: &mut Client, spec: &DimensionSpec) -> anyhow::Result<Vec<DimRow>> {
    let cols: Vec<String> = spec
        .columns
        .iter()
        .map(|c| format!("coalesce({c}::text, '')"))
        .collect();
    let sql = format!("SELECT {} FROM {}", cols.join(", "), spec.table);
    let rows = client
        .query(&sql, &[])
        .with_context(|| format!("reading dimension table {}", spec.table))?;
    Ok(rows
        .iter()
        .map(|r| {
            (0..spec.columns.len())
                .map(|i| r.get::<_, String>(i))
                .collect()
        })
        .collect())
}

impl PgTable {
    /// Reads the table once now (so the first tick sees it), then every `poll`.
    pub fn open(url: &str, spec: DimensionSpec, poll: Duration) -> anyhow::Result<Self> {
        let mut client = Client::connect(url, NoTls)
            .context("connecting to postgres for a dimension (postgres.url)")?;
        if let Some(ddl) = &spec.create {
            client
                .batch_execute(ddl)
                .with_context(|| format!("creating dimension table {}", spec.table))?;
        }
        let first = read(&mut client, &spec)?;
        let (tx, updates) = sync_channel(1);
        let url = url.to_string();
        let mut last = first.clone();
        last.sort();
        std::thread::Builder::new().name(format!("dim-{}", spec.table)).spawn(move || loop {
            std::thread::sleep(poll);
            match read(&mut client, &spec) {
                Ok(mut rows) => {
                    rows.sort();
                    if rows != last {
                        last = rows.clone();
                        if tx.send(rows).is_err() {
                            return; // the dataflow is gone
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(table = %spec.table, error = %format!("{e:#}"), "dimension read failed; retrying");
                    if let Ok(c) = Client::connect(&url, NoTls) {
                        client = c;
                    }
                }
            }
        })?;
        Ok(PgTable {
            first: Some(first),
            updates,
        })
    }
}

impl TableSource for PgTable {
    fn snapshot(&mut self) -> Option<Vec<DimRow>> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let mut latest = None;
        loop {
            match self.updates.try_recv() {
                Ok(rows) => latest = Some(rows),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return latest,
            }
        }
    }
}

/// Creates a dimension table if it is missing and upserts `rows` into it (by its first
/// column), for `generate`: the synthetic traffic's catalog.
pub fn fill(url: &str, spec: &DimensionSpec, rows: &[DimRow]) -> anyhow::Result<()> {
    let mut client = Client::connect(url, NoTls).context("connecting to postgres (TIDEMARK_PG)")?;
    if let Some(ddl) = &spec.create {
        client.batch_execute(ddl)?;
    }
    let cols = spec.columns.join(", ");
    let params: Vec<String> = (1..=spec.columns.len())
        .map(|i| format!("${i}::text"))
        .collect();
    let updates: Vec<String> = spec.columns[1..]
        .iter()
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    // casting from text lets one statement fill columns of any type
    let types: Vec<String> = {
        let q = format!(
            "SELECT {} FROM {} LIMIT 0",
            spec.columns.join(", "),
            spec.table
        );
        let stmt = client.prepare(&q)?;
        stmt.columns()
            .iter()
            .map(|c| c.type_().name().to_string())
            .collect()
    };
    let values: Vec<String> = params
        .iter()
        .zip(&types)
        .map(|(p, t)| format!("{p}::{t}"))
        .collect();
    let sql = format!(
        "INSERT INTO {} ({cols}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
        spec.table,
        values.join(", "),
        spec.columns[0],
        updates.join(", ")
    );
    let stmt = client.prepare(&sql)?;
    let mut tx = client.transaction()?;
    for row in rows {
        let args: Vec<&(dyn postgres::types::ToSql + Sync)> = row
            .iter()
            .map(|v| v as &(dyn postgres::types::ToSql + Sync))
            .collect();
        tx.execute(&stmt, &args)?;
    }
    tx.commit()?;
    Ok(())
}

/// A table that never changes: the synthetic traffic's rows when there is no Postgres
/// (`demo`).
pub struct FixedTable(pub Option<Vec<DimRow>>);

impl TableSource for FixedTable {
    fn snapshot(&mut self) -> Option<Vec<DimRow>> {
        self.0.take()
    }
}
