//! `training-set`: for each label row (entity keys, `ts`, label columns) the features as
//! of `ts` — the state after every record whose partition's stream time is at most `ts`
//! (see `batch`'s as-of rule) — computed from the archive by the family's dataflow. No
//! feature can see an event of a later stream time: leakage is ruled out by construction.
//!
//! A label row joins every view whose key columns it names (`doc_id` joins search's `doc`
//! view); a view's features become columns `{ns}__{feature}` (Feast's full names), empty
//! where the entity had no features at `ts`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use tidemark_dataflows::contract::table::Value;
use tidemark_dataflows::Tick;

use super::output::feature_column;
use super::store::OnBoundary;
use super::{complete, parse_instant, plan, replay, Report};
use crate::config::Config;

/// The label rows: their columns as read, and each row's `ts`.
pub struct Labels {
    pub schema: Arc<Schema>,
    pub columns: Vec<ArrayRef>,
    pub ts: Vec<Tick>,
}

impl Labels {
    /// A CSV file with a header (every column text) or a Parquet file, by its extension.
    pub fn read(path: &Path) -> anyhow::Result<Labels> {
        let parquet = path.extension().is_some_and(|e| e == "parquet");
        let (schema, columns) = match parquet {
            true => read_parquet(path)?,
            false => read_csv(path)?,
        };
        let at = schema.index_of("ts").map_err(|_| {
            anyhow::anyhow!(
                "{} has no `ts` column (the label's time: epoch ms or RFC 3339)",
                path.display()
            )
        })?;
        let ts = (0..columns[at].len())
            .map(|i| {
                let text = cell(&columns[at], i)
                    .with_context(|| format!("{} row {}: `ts` is empty", path.display(), i + 1))?;
                parse_instant(&text)
                    .with_context(|| format!("{} row {}: `ts`", path.display(), i + 1))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Labels {
            schema,
            columns,
            ts,
        })
    }
}

fn read_csv(path: &Path) -> anyhow::Result<(Arc<Schema>, Vec<ArrayRef>)> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let names: Vec<String> = r.headers()?.iter().map(str::to_string).collect();
    let mut cells: Vec<Vec<Option<String>>> = vec![Vec::new(); names.len()];
    for (i, row) in r.records().enumerate() {
        let row = row.with_context(|| format!("{} row {}", path.display(), i + 1))?;
        for (c, v) in cells.iter_mut().zip(row.iter()) {
            c.push((!v.is_empty()).then(|| v.to_string()));
        }
    }
    let schema = Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    );
    let columns = cells
        .into_iter()
        .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
        .collect();
    Ok((Arc::new(schema), columns))
}

fn read_parquet(path: &Path) -> anyhow::Result<(Arc<Schema>, Vec<ArrayRef>)> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a Parquet file", path.display()))?;
    let schema = builder.schema().clone();
    let batches = builder.build()?.collect::<Result<Vec<_>, _>>()?;
    if batches.is_empty() {
        bail!("{} has no label rows", path.display());
    }
    let columns = (0..schema.fields().len())
        .map(|i| {
            let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
            arrow_select::concat::concat(&parts).map_err(Into::into)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((schema, columns))
}

/// A cell as text (a key part, a time), `None` when null.
fn cell(a: &ArrayRef, i: usize) -> anyhow::Result<String> {
    if a.is_null(i) {
        bail!("null");
    }
    Ok(match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().value(i).to_string(),
        DataType::LargeUtf8 => a.as_string::<i64>().value(i).to_string(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).to_string(),
        DataType::Timestamp(unit, _) => {
            // a label time as pandas writes it: epoch ms
            match unit {
                TimeUnit::Second => a.as_primitive::<TimestampSecondType>().value(i) * 1_000,
                TimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().value(i),
                TimeUnit::Microsecond => {
                    a.as_primitive::<TimestampMicrosecondType>().value(i) / 1_000
                }
                TimeUnit::Nanosecond => {
                    a.as_primitive::<TimestampNanosecondType>().value(i) / 1_000_000
                }
            }
            .to_string()
        }
        other => bail!("a column of type {other} (use text or integers)"),
    })
}

/// Each (label row, join)'s features found at the row's `ts`.
type Found = HashMap<(usize, usize), Vec<Value>>;

/// A view the labels join: its index, and each row's key (`None`: a key part is null).
struct Join {
    table: u8,
    keys: Vec<Option<Vec<String>>>,
}

/// Writes the training set of `labels_path` to `out`.
pub fn training_set(
    cfg: &Config,
    labels_path: &Path,
    out: &Path,
    assume_complete: bool,
) -> anyhow::Result<Result<Report, String>> {
    let labels = Labels::read(labels_path)?;
    if labels.ts.is_empty() {
        bail!("{} has no label rows", labels_path.display());
    }
    let family = super::batch_family(cfg)?;
    let tables = family.tables();
    let mut joins = Vec::new();
    for (t, spec) in tables.iter().enumerate() {
        let Ok(at) = spec
            .keys
            .iter()
            .map(|k| labels.schema.index_of(k))
            .collect::<Result<Vec<_>, _>>()
        else {
            continue;
        };
        let mut keys = Vec::with_capacity(labels.ts.len());
        for i in 0..labels.ts.len() {
            let mut key = Some(Vec::with_capacity(at.len()));
            for (c, name) in at.iter().zip(&spec.keys) {
                let column = &labels.columns[*c];
                if column.is_null(i) {
                    key = None; // no entity: its features are null
                    continue;
                }
                let part = cell(column, i).with_context(|| {
                    format!(
                        "{} row {}: key column `{name}`",
                        labels_path.display(),
                        i + 1
                    )
                })?;
                if let Some(k) = key.as_mut() {
                    k.push(part);
                }
            }
            keys.push(key);
        }
        joins.push(Join {
            table: t as u8,
            keys,
        });
    }
    if joins.is_empty() {
        let views: Vec<String> = tables
            .iter()
            .map(|t| format!("{} ({})", t.ns, t.keys.join(", ")))
            .collect();
        bail!(
            "the labels' columns name the keys of no view of '{}': its views are {}",
            family.name(),
            views.join("; ")
        );
    }
    let mut by_ts: BTreeMap<Tick, Vec<usize>> = BTreeMap::new();
    for (i, t) in labels.ts.iter().enumerate() {
        by_ts.entry(*t).or_default().push(i);
    }
    let to = *by_ts.keys().next_back().expect("a label");
    if !assume_complete {
        if let Err(why) = complete::covers(cfg, to)? {
            return Ok(Err(why));
        }
    }
    let plan = plan(cfg, to, by_ts.keys().copied().collect())?;
    let found: Arc<Mutex<Found>> = Arc::default();
    let (joins, by_ts) = (Arc::new(joins), Arc::new(by_ts));
    let (f, j, rows) = (found.clone(), joins.clone(), by_ts.clone());
    let on_boundary = Arc::new(move |_worker: usize| -> anyhow::Result<OnBoundary> {
        let (found, joins, rows) = (f.clone(), j.clone(), rows.clone());
        Ok(Box::new(move |b: Tick, entities: &super::store::Entities| {
            let mut found = found.lock().expect("found");
            for &row in &rows[&b] {
                for (n, join) in joins.iter().enumerate() {
                    let Some(key) = &join.keys[row] else { continue };
                    if let Some(v) = entities.get(join.table, key) {
                        found.insert((row, n), v.clone());
                    }
                }
            }
            Ok(())
        }) as OnBoundary)
    });
    let mut report = replay(cfg, plan, on_boundary, None)?;
    let found = found.lock().expect("found");
    let mut fields: Vec<Field> = labels
        .schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns = labels.columns.clone();
    for (n, join) in joins.iter().enumerate() {
        let spec = &tables[join.table as usize];
        let empty = vec![Value::Null; spec.fields.len()];
        let rows: Vec<(&[String], &[Value])> = (0..labels.ts.len())
            .map(|row| (&[][..], found.get(&(row, n)).map_or(&empty[..], |v| &v[..])))
            .collect();
        let schema = super::output::feature_schema(spec);
        for (i, f) in spec.fields.iter().enumerate() {
            let ty = schema.field_with_name(f.name)?.data_type().clone();
            let view = super::output::view_name(&tables, join.table as usize);
            fields.push(Field::new(format!("{view}__{}", f.name), ty, true));
            columns.push(feature_column(f.ty, &rows, i));
        }
    }
    report.rows = labels.ts.len() as u64;
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = ArrowWriter::try_new(file, schema, None)?;
    w.write(&batch)?;
    w.close()?;
    Ok(Ok(report))
}
