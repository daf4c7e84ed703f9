//! Where `batch` writes the features as of each boundary: Postgres `batch_{ns}` (the view's
//! keys, `as_of`, its features; primary key `(keys…, as_of)`) and Parquet files
//! `{archive root}/features/{ns}/as_of={epoch ms}/part-{worker}.parquet`.
//!
//! A run first deletes what an earlier run wrote at its boundaries, then every worker writes
//! its own entities: a rerun of a range gives the same rows, whatever the worker count.

use std::sync::Arc;

use anyhow::Context;
use arrow_array::builder::{Float64Builder, Int64Builder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use postgres::{Client, NoTls};
use tidemark_dataflows::contract::table::{FieldType, SinkKind, TableSpec, Value};
use tidemark_dataflows::Tick;

use super::store::Entities;
use crate::archive::Root;
use crate::sink::postgres::{create, table_ddl, upsert_sql_into, Columns};

/// The name of view `i` in the batch outputs: its `ns`, unless another view shares it
/// (ads' `budget_events` is both a Kafka changelog and a Postgres history): then the one
/// online in Postgres keeps it and the others get their store's name after it
/// (`budget_events_topic`).
pub fn view_name(tables: &[TableSpec], i: usize) -> String {
    let spec = &tables[i];
    let shared = tables.iter().filter(|t| t.ns == spec.ns).count() > 1;
    if !shared || spec.sink.in_postgres() {
        return spec.ns.to_string();
    }
    let store = match spec.sink {
        SinkKind::Topic(_) => "topic",
        SinkKind::Records(_) => "records",
        SinkKind::RedisHash => "redis",
        SinkKind::List => "list",
        SinkKind::Store | SinkKind::PgTable => "view",
    };
    format!("{}_{store}", spec.ns)
}

/// The Postgres table of view `i`.
pub fn batch_table(tables: &[TableSpec], i: usize) -> String {
    format!("batch_{}", view_name(tables, i))
}

/// Creates the batch tables, adding the feature columns that are missing.
pub fn migrate(client: &mut Client, tables: &[TableSpec]) -> anyhow::Result<()> {
    let mut ddl = String::new();
    for (i, spec) in tables.iter().enumerate() {
        ddl += &table_ddl(spec, &batch_table(tables, i), "as_of", true);
    }
    create(client, &ddl).context("creating the batch tables")
}

/// The folder of one view's rows as of `b`.
fn as_of_dir(root: &Root, view: &str, b: Tick) -> Path {
    root.prefix
        .clone()
        .join("features")
        .join(view)
        .join(format!("as_of={b}"))
}

/// Deletes the rows earlier runs wrote at `boundaries`, in Postgres and in Parquet.
pub fn clear(
    pg: Option<&str>,
    root: &Root,
    tables: &[TableSpec],
    boundaries: &[Tick],
) -> anyhow::Result<()> {
    let at: Vec<i64> = boundaries.iter().map(|b| *b as i64).collect();
    if let Some(url) = pg {
        let mut c = Client::connect(url, NoTls).context("connecting to postgres (postgres.url)")?;
        migrate(&mut c, tables)?;
        for i in 0..tables.len() {
            let name = batch_table(tables, i);
            let sql = format!("DELETE FROM {name} WHERE as_of = ANY($1)");
            c.execute(&sql, &[&at])
                .with_context(|| format!("clearing {name}"))?;
        }
    }
    let rt = runtime()?;
    rt.block_on(async {
        for i in 0..tables.len() {
            for b in boundaries {
                let dir = as_of_dir(root, &view_name(tables, i), *b);
                let old: Vec<_> = root.store.list(Some(&dir)).try_collect().await?;
                for f in old {
                    root.store.delete(&f.location).await?;
                }
            }
        }
        anyhow::Ok(())
    })
    .with_context(|| format!("clearing features/ in archive.root = {:?}", root.name))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// One worker's writer of its entities at each boundary.
pub struct WorkerOutput {
    pub pg: Option<String>,
    client: Option<Client>,
    root: Root,
    rt: tokio::runtime::Runtime,
    tables: Arc<Vec<TableSpec>>,
    worker: usize,
    pub rows: Arc<std::sync::atomic::AtomicU64>,
}

/// Rows bound in one statement, at most.
const ROWS_PER_STATEMENT: usize = 10_000;

impl WorkerOutput {
    pub fn new(
        pg: Option<String>,
        root: Root,
        tables: Arc<Vec<TableSpec>>,
        worker: usize,
        rows: Arc<std::sync::atomic::AtomicU64>,
    ) -> anyhow::Result<Self> {
        Ok(WorkerOutput {
            pg,
            client: None,
            root,
            rt: runtime()?,
            tables,
            worker,
            rows,
        })
    }

    /// Writes every entity as of `b`: one Postgres transaction, one file per view.
    pub fn write(&mut self, b: Tick, entities: &Entities) -> anyhow::Result<()> {
        let mut per_table: Vec<Vec<(&[String], &[Value])>> = vec![Vec::new(); self.tables.len()];
        for (t, k, v) in entities.iter() {
            per_table[t as usize].push((k, v));
        }
        // the same file for the same rows
        per_table
            .iter_mut()
            .for_each(|rows| rows.sort_unstable_by(|a, b| a.0.cmp(b.0)));
        if self.pg.is_some() {
            let written = self.write_pg(b, &per_table);
            if written.is_err() {
                self.client = None; // reconnects on the retry
            }
            written?;
        }
        for (i, (spec, rows)) in self.tables.iter().zip(&per_table).enumerate() {
            if rows.is_empty() {
                continue;
            }
            let bytes = parquet_of(spec, b, rows)?;
            let view = view_name(&self.tables, i);
            let path =
                as_of_dir(&self.root, &view, b).join(format!("part-{}.parquet", self.worker));
            self.rt
                .block_on(self.root.store.put(&path, bytes.into()))
                .with_context(|| format!("writing {path}"))?;
        }
        let n: usize = per_table.iter().map(Vec::len).sum();
        self.rows
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn write_pg(
        &mut self,
        b: Tick,
        per_table: &[Vec<(&[String], &[Value])>],
    ) -> anyhow::Result<()> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let url = self.pg.as_deref().expect("postgres url");
            self.client =
                Some(Client::connect(url, NoTls).context("connecting to postgres (postgres.url)")?);
        }
        let client = self.client.as_mut().expect("connected");
        let mut tx = client.transaction()?;
        for (i, (spec, rows)) in self.tables.iter().zip(per_table).enumerate() {
            let name = batch_table(&self.tables, i);
            let sql = upsert_sql_into(spec, &name, "as_of", true, "true");
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut cols = Columns::new(spec);
                for (k, v) in chunk {
                    cols.push(spec, k, v, b);
                }
                tx.execute(&sql, &cols.params())
                    .with_context(|| format!("writing {name} as of {b}"))?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// The Arrow type of a feature: a list is a list of strings.
fn arrow_type(t: FieldType) -> DataType {
    match t {
        FieldType::Int => DataType::Int64,
        FieldType::Float => DataType::Float64,
        FieldType::Text => DataType::Utf8,
        FieldType::List => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
    }
}

/// The schema of a view's feature files: its keys, `as_of`, its features.
pub fn feature_schema(spec: &TableSpec) -> Arc<Schema> {
    let mut fields: Vec<Field> = spec
        .keys
        .iter()
        .map(|k| Field::new(*k, DataType::Utf8, false))
        .collect();
    fields.push(Field::new("as_of", DataType::Int64, false));
    fields.extend(
        spec.fields
            .iter()
            .map(|f| Field::new(f.name, arrow_type(f.ty), true)),
    );
    Arc::new(Schema::new(fields))
}

/// A feature column of `rows`' values at field `i`.
pub fn feature_column(ty: FieldType, rows: &[(&[String], &[Value])], i: usize) -> ArrayRef {
    let values = rows.iter().map(|(_, v)| &v[i]);
    match ty {
        FieldType::Int => {
            let mut b = Int64Builder::new();
            values.for_each(|v| b.append_option(v.as_f64().map(|x| x as i64)));
            Arc::new(b.finish())
        }
        FieldType::Float => {
            let mut b = Float64Builder::new();
            values.for_each(|v| b.append_option(v.as_f64()));
            Arc::new(b.finish())
        }
        FieldType::Text => {
            let mut b = StringBuilder::new();
            values.for_each(|v| match v {
                Value::Null => b.append_null(),
                v => b.append_value(v.to_string()),
            });
            Arc::new(b.finish())
        }
        FieldType::List => {
            let mut b = ListBuilder::new(StringBuilder::new());
            for v in values {
                match serde_json::from_str::<Vec<String>>(&v.to_string()) {
                    Ok(items) if !matches!(v, Value::Null) => {
                        items.iter().for_each(|s| b.values().append_value(s));
                        b.append(true);
                    }
                    _ => b.append(false),
                }
            }
            Arc::new(b.finish())
        }
    }
}

fn parquet_of(
    spec: &TableSpec,
    b: Tick,
    rows: &[(&[String], &[Value])],
) -> anyhow::Result<Vec<u8>> {
    let mut columns: Vec<ArrayRef> = (0..spec.keys.len())
        .map(|i| {
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(k, _)| &k[i]),
            )) as ArrayRef
        })
        .collect();
    columns.push(Arc::new(Int64Array::from(vec![b as i64; rows.len()])));
    for (i, f) in spec.fields.iter().enumerate() {
        columns.push(feature_column(f.ty, rows, i));
    }
    let schema = feature_schema(spec);
    let batch =
        RecordBatch::try_new(schema.clone(), columns).context("building the features' batch")?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .build();
    let mut w = ArrowWriter::try_new(Vec::new(), schema, Some(props))?;
    w.write(&batch)?;
    Ok(w.into_inner()?)
}
