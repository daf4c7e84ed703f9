//! Reads a dimension table from Postgres on a thread of its own and hands the worker a
//! snapshot whenever the rows changed.

use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::time::Duration;

use anyhow::Context;
use postgres::{Client, NoTls};
use tidemark_dataflows::dimension::{DimRow, DimensionSpec, TableSource};

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
