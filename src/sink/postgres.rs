//! Postgres: a table `feat_{ns}` per feature view (key columns first, one column per
//! feature, `_tick`), created and migrated at start; each write is one transaction that
//! also records the worker's progress. Upserts never move a row back to an older tick.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement};
use tidemark_dataflows::contract::table::{FieldType, SinkKind, TableSpec, TickChanges, Value};
use tidemark_dataflows::Tick;

use super::{Store, Writer};
use crate::telemetry::Unstorable;

pub struct PostgresStore {
    url: String,
    client: Option<Client>,
    /// Statements prepared on `client`, by their SQL.
    statements: HashMap<String, Statement>,
    writer: Writer,
}

fn sql_type(t: FieldType) -> &'static str {
    match t {
        FieldType::Int => "bigint",
        FieldType::Float => "double precision",
        FieldType::Text => "text",
        FieldType::List => "text[]",
    }
}

pub fn table_name(spec: &TableSpec) -> String {
    match spec.sink {
        SinkKind::PgTable => spec.ns.to_string(),
        _ => format!("feat_{}", spec.ns),
    }
}

/// Creates the feature tables and the progress table, adding columns that are missing.
/// The view `quality_report(family, hour, expectation, observed, failures, total, passed,
/// sample)` over every family's report table (`quality_{family}`) in the database: one
/// place to read every job's data quality. Made again by each job that starts.
pub fn quality_view(client: &mut Client) -> anyhow::Result<()> {
    let tables: Vec<String> = client
        .query(
            "SELECT c.table_name::text FROM information_schema.columns c \
             JOIN information_schema.tables t USING (table_schema, table_name) \
             WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' \
             AND c.table_name LIKE 'quality\\_%' AND c.column_name = 'expectation' ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if tables.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = tables
        .iter()
        .map(|t| {
            format!(
                "SELECT '{}'::text AS family, hour, expectation, observed, failures, total, \
                 passed, sample FROM {t}",
                t.trim_start_matches("quality_")
            )
        })
        .collect();
    let sql = format!(
        "CREATE OR REPLACE VIEW quality_report AS {}",
        parts.join(" UNION ALL ")
    );
    // two jobs starting at once: the second makes it again
    if client.batch_execute(&sql).is_err() {
        client.batch_execute(&sql)?;
    }
    Ok(())
}

pub fn migrate(client: &mut Client, tables: &[TableSpec]) -> anyhow::Result<()> {
    let mut ddl = String::from(
        "CREATE TABLE IF NOT EXISTS tidemark_progress (job text NOT NULL, worker int NOT NULL, \
         tick bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (job, worker));\n",
    );
    for spec in tables.iter().filter(|s| s.sink.in_postgres()) {
        let name = table_name(spec);
        ddl += &table_ddl(spec, &name, "_tick", false);
        for f in &spec.fields {
            if f.ty == FieldType::List {
                // a list column an earlier version made as text (its JSON): an array now
                ddl += &format!(
                    "DO $$ BEGIN IF (SELECT data_type FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = '{name}' \
                     AND column_name = '{col}') = 'text' THEN \
                     ALTER TABLE {name} RENAME COLUMN {col} TO {col}_json; \
                     ALTER TABLE {name} ADD COLUMN {col} text[]; \
                     UPDATE {name} SET {col} = ARRAY(SELECT e FROM \
                     jsonb_array_elements_text({col}_json::jsonb) WITH ORDINALITY AS a(e, n) ORDER BY n); \
                     ALTER TABLE {name} DROP COLUMN {col}_json; END IF; END $$;\n",
                    col = f.name
                );
            }
            if f.ty == FieldType::Float {
                // a whole number that became a fraction (reading's `max_scroll_pct`): the
                // column widens in place, every value kept
                ddl += &format!(
                    "DO $$ BEGIN IF (SELECT data_type FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = '{name}' \
                     AND column_name = '{col}') = 'bigint' THEN \
                     ALTER TABLE {name} ALTER COLUMN {col} TYPE double precision; END IF; END $$;\n",
                    col = f.name
                );
            }
        }
    }
    create(client, &ddl).context("creating the feature tables")
}

/// A view's table `name`: its key columns, the tick column `tick` and `_v`, the primary
/// key over the keys (and `tick`, with `tick_in_key`: `batch_{ns}`'s `as_of`), then a
/// column per feature, added when missing.
pub(crate) fn table_ddl(spec: &TableSpec, name: &str, tick: &str, tick_in_key: bool) -> String {
    let keys: Vec<String> = spec
        .keys
        .iter()
        .map(|k| format!("{k} text NOT NULL"))
        .collect();
    let mut pk = spec.keys.clone();
    if tick_in_key {
        pk.push(tick);
    }
    let mut ddl = format!(
        "CREATE TABLE IF NOT EXISTS {name} ({}, {tick} bigint NOT NULL, _v int NOT NULL, PRIMARY KEY ({}));\n",
        keys.join(", "),
        pk.join(", ")
    );
    for f in &spec.fields {
        ddl += &format!(
            "ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {} {};\n",
            f.name,
            sql_type(f.ty)
        );
    }
    ddl
}

/// Runs `CREATE … IF NOT EXISTS` statements one process at a time: workers and the
/// processes of a cluster start together, and concurrent creations of one table race (a
/// unique violation in `pg_type`).
pub fn create(client: &mut Client, ddl: &str) -> anyhow::Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock(7467001)", &[])?;
    tx.batch_execute(ddl)?;
    tx.commit()?;
    Ok(())
}

impl PostgresStore {
    pub fn open(url: &str, writer: Writer) -> anyhow::Result<Self> {
        let mut store = PostgresStore {
            url: url.to_string(),
            client: None,
            statements: HashMap::new(),
            writer,
        };
        store.client()?;
        Ok(store)
    }

    /// Runs `work` in one transaction and commits it; a failure drops the connection, so
    /// the retry reconnects.
    fn in_transaction<T>(
        &mut self,
        work: impl FnOnce(&mut postgres::Transaction<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let result = (|| {
            let mut tx = self.client()?.transaction()?;
            let out = work(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })();
        if result.is_err() {
            self.client = None;
        }
        result
    }

    fn client(&mut self) -> anyhow::Result<&mut Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let mut c = Client::connect(&self.url, NoTls)
                .context("connecting to postgres (postgres.url)")?;
            // a table dropped meanwhile is made again, so a write never fails for good on it
            migrate(&mut c, &self.writer.tables)?;
            self.client = Some(c);
            // prepared statements belong to the connection that prepared them
            self.statements.clear();
        }
        Ok(self.client.as_mut().expect("just connected"))
    }
}

/// Column-major batch of one table's upserts, bound as arrays and expanded with `unnest`.
pub(crate) struct Columns {
    keys: Vec<Vec<String>>,
    fields: Vec<Column>,
    ticks: Vec<i64>,
    versions: Vec<i32>,
}

enum Column {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
}

impl Columns {
    pub(crate) fn new(spec: &TableSpec) -> Self {
        Columns {
            keys: vec![Vec::new(); spec.keys.len()],
            fields: spec
                .fields
                .iter()
                .map(|f| match f.ty {
                    FieldType::Int => Column::Int(Vec::new()),
                    FieldType::Float => Column::Float(Vec::new()),
                    FieldType::Text | FieldType::List => Column::Text(Vec::new()),
                })
                .collect(),
            ticks: Vec::new(),
            versions: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, spec: &TableSpec, key: &[String], values: &[Value], tick: Tick) {
        for (i, k) in key.iter().enumerate() {
            self.keys[i].push(k.clone());
        }
        for (col, v) in self.fields.iter_mut().zip(values) {
            col.push(v);
        }
        self.ticks.push(tick as i64);
        self.versions.push(spec.version as i32);
    }

    /// The arrays in the order of `upsert_sql`'s parameters.
    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> =
            self.keys.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
        params.extend(self.fields.iter().map(|c| c.param()));
        params.push(&self.ticks);
        params.push(&self.versions);
        params
    }
}

/// Upserts a table's `Columns` (bound as arrays, expanded with `unnest`), updating a row
/// that exists only `WHERE {guard}`. A list travels as its JSON text and becomes a `text[]`
/// in order.
fn upsert_sql(spec: &TableSpec, guard: &str) -> String {
    upsert_sql_into(spec, &table_name(spec), "_tick", false, guard)
}

/// [`upsert_sql`] into table `name`, whose tick column is `tick`; with `tick_in_key`, a row
/// is one key's at one tick (`batch_{ns}`'s `as_of`).
pub(crate) fn upsert_sql_into(
    spec: &TableSpec,
    name: &str,
    tick: &str,
    tick_in_key: bool,
    guard: &str,
) -> String {
    let mut names: Vec<&str> = spec.keys.clone();
    names.extend(spec.fields.iter().map(|f| f.name));
    names.extend([tick, "_v"]);
    let mut conflict = spec.keys.clone();
    if tick_in_key {
        conflict.push(tick);
    }
    let mut types: Vec<&str> = spec.keys.iter().map(|_| "text[]").collect();
    types.extend(spec.fields.iter().map(|f| match f.ty {
        FieldType::Int => "bigint[]",
        FieldType::Float => "float8[]",
        FieldType::Text | FieldType::List => "text[]",
    }));
    types.extend(["bigint[]", "int[]"]);
    let unnest: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}", i + 1))
        .collect();
    let columns: Vec<String> = (0..names.len()).map(|i| format!("c{i}")).collect();
    let select: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let field = i
                .checked_sub(spec.keys.len())
                .and_then(|f| spec.fields.get(f));
            match field.map(|f| f.ty) {
                Some(FieldType::List) => format!(
                    "ARRAY(SELECT e FROM jsonb_array_elements_text({c}::jsonb) \
                     WITH ORDINALITY AS a(e, n) ORDER BY n)"
                ),
                _ => c.clone(),
            }
        })
        .collect();
    let updates: Vec<String> = names[spec.keys.len()..]
        .iter()
        .map(|n| format!("{n} = excluded.{n}"))
        .collect();
    format!(
        "INSERT INTO {name} ({}) SELECT {} FROM unnest({}) AS u({}) ON CONFLICT ({}) DO UPDATE SET {} WHERE {guard}",
        names.join(", "),
        select.join(", "),
        unnest.join(", "),
        columns.join(", "),
        conflict.join(", "),
        updates.join(", ")
    )
}

impl Column {
    fn push(&mut self, v: &Value) {
        match (self, v) {
            (Column::Int(c), Value::Int(i)) => c.push(Some(*i)),
            (Column::Float(c), v) => c.push(v.as_f64()),
            (Column::Text(c), Value::Null) => c.push(None),
            (Column::Text(c), v) => c.push(Some(v.to_string())),
            (Column::Int(c), _) => c.push(None),
        }
    }
    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Int(c) => c,
            Column::Float(c) => c,
            Column::Text(c) => c,
        }
    }
}

/// Whether a Postgres error is about the data of the statement (an encoding it cannot
/// hold, a value out of range, a row over a size limit, a constraint): retrying the same
/// rows can never succeed. SQLSTATE classes 22, 23 and 54.
fn refuses_the_data(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<postgres::Error>())
        .find_map(|pe| pe.code())
        .is_some_and(|c| matches!(&c.code()[..2], "22" | "23" | "54"))
}

/// An entity's key, its row and the tick it is of.
type Row<'a> = (&'a [String], &'a [Value], Tick);

/// One write's rows per table: the latest state of each entity across its ticks.
#[derive(Default)]
struct Plan<'a> {
    upserts: BTreeMap<u8, Vec<Row<'a>>>,
    deletes: BTreeMap<u8, Vec<(&'a [String], Tick)>>,
}

impl<'a> Plan<'a> {
    fn of(tables: &[TableSpec], ticks: &'a [Arc<TickChanges>]) -> Self {
        type Latest<'a> = (Option<&'a Vec<Value>>, Tick);
        let mut latest: BTreeMap<(u8, &[String]), Latest> = BTreeMap::new();
        for t in ticks {
            for c in t
                .changes
                .iter()
                .filter(|c| tables[c.table as usize].sink.in_postgres())
            {
                // a history table keeps a row that leaves the dataflow
                if c.after.is_none() && tables[c.table as usize].sink == SinkKind::PgTable {
                    continue;
                }
                latest.insert((c.table, &c.key[..]), (c.after.as_ref(), t.tick));
            }
        }
        let mut plan = Plan::default();
        for ((table, key), (after, tick)) in latest {
            match after {
                Some(values) => plan
                    .upserts
                    .entry(table)
                    .or_default()
                    .push((key, values, tick)),
                None => plan.deletes.entry(table).or_default().push((key, tick)),
            }
        }
        plan
    }
}

/// `DELETE … USING unnest(keys…, ticks)`: rows not newer than their delete's tick.
fn delete_sql(spec: &TableSpec) -> String {
    let name = table_name(spec);
    let mut using: Vec<String> = (0..spec.keys.len())
        .map(|i| format!("${}::text[]", i + 1))
        .collect();
    using.push(format!("${}::bigint[]", spec.keys.len() + 1));
    let mut cols: Vec<String> = spec.keys.iter().map(|k| k.to_string()).collect();
    cols.push("_tick".into());
    let on: Vec<String> = spec.keys.iter().map(|k| format!("t.{k} = d.{k}")).collect();
    format!(
        "DELETE FROM {name} t USING unnest({}) AS d({}) WHERE {} AND t._tick <= d._tick",
        using.join(", "),
        cols.join(", "),
        on.join(" AND ")
    )
}

/// The entity a row of `spec` is, as reports name it: `feat_doc:doc-1`.
fn entity(spec: &TableSpec, key: &[String]) -> String {
    format!("{}:{}", table_name(spec), key.join(":"))
}

/// Runs `statement` with `params` under a savepoint: a statement the data makes fail for
/// good is rolled back alone and reported, any other failure fails the transaction.
fn isolated(
    tx: &mut postgres::Transaction<'_>,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
) -> anyhow::Result<Option<String>> {
    tx.batch_execute("SAVEPOINT tidemark_row")?;
    match tx.execute(statement, params) {
        Ok(_) => {
            tx.batch_execute("RELEASE SAVEPOINT tidemark_row")?;
            Ok(None)
        }
        Err(e) => {
            let e = anyhow::Error::from(e);
            if !refuses_the_data(&e) {
                return Err(e);
            }
            tx.batch_execute("ROLLBACK TO SAVEPOINT tidemark_row")?;
            Ok(Some(format!("{e:#}")))
        }
    }
}

impl PostgresStore {
    /// Writes `plan` in one transaction with the worker's progress. With `one_by_one`, each
    /// entity goes alone under a savepoint, and those the data makes fail for good are
    /// left out and returned (the rest of the transaction stands).
    /// Long: one transaction, table by table: upserts, deletes, then the progress row; splitting it would split the transaction.
    fn write_plan(
        &mut self,
        plan: &Plan<'_>,
        progress: Option<Tick>,
        one_by_one: bool,
    ) -> anyhow::Result<Vec<Unstorable>> {
        let tables = self.writer.tables.clone();
        let (job, worker) = (self.writer.job.clone(), self.writer.worker as i32);
        self.client()?;
        let (client, statements) = (
            self.client.as_mut().expect("connected"),
            &mut self.statements,
        );
        let mut tx = client.transaction()?;
        // each statement is parsed and planned once per connection: a write is then one
        // round trip per table instead of two
        let mut prepared =
            |tx: &mut postgres::Transaction<'_>, sql: String| -> anyhow::Result<Statement> {
                if let Some(s) = statements.get(&sql) {
                    return Ok(s.clone());
                }
                let s = tx
                    .prepare(&sql)
                    .with_context(|| format!("preparing {sql}"))?;
                statements.insert(sql, s.clone());
                Ok(s)
            };
        let mut rejected = Vec::new();
        for (table, rows) in &plan.upserts {
            let spec = &tables[*table as usize];
            let name = table_name(spec);
            let sql = upsert_sql(spec, &format!("excluded._tick >= {name}._tick"));
            let statement = prepared(&mut tx, sql)?;
            let groups: Vec<&[_]> = if one_by_one {
                rows.chunks(1).collect()
            } else {
                vec![&rows[..]]
            };
            for group in groups {
                let mut cols = Columns::new(spec);
                for (key, values, tick) in group {
                    cols.push(spec, key, values, *tick);
                }
                if !one_by_one {
                    tx.execute(&statement, &cols.params())
                        .with_context(|| format!("upserting into {name}"))?;
                } else if let Some(error) = isolated(&mut tx, &statement, &cols.params())? {
                    let (key, _, tick) = group[0];
                    rejected.push(Unstorable {
                        entity: entity(spec, key),
                        tick,
                        error,
                    });
                }
            }
        }
        for (table, rows) in &plan.deletes {
            let spec = &tables[*table as usize];
            let statement = prepared(&mut tx, delete_sql(spec))?;
            let groups: Vec<&[_]> = if one_by_one {
                rows.chunks(1).collect()
            } else {
                vec![&rows[..]]
            };
            for group in groups {
                let mut keys: Vec<Vec<String>> = vec![Vec::new(); spec.keys.len()];
                let mut ticks: Vec<i64> = Vec::new();
                for (key, tick) in group {
                    for (i, k) in key.iter().enumerate() {
                        keys[i].push(k.clone());
                    }
                    ticks.push(*tick as i64);
                }
                let mut params: Vec<&(dyn ToSql + Sync)> =
                    keys.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
                params.push(&ticks);
                if !one_by_one {
                    tx.execute(&statement, &params)
                        .with_context(|| format!("deleting from {}", table_name(spec)))?;
                } else if let Some(error) = isolated(&mut tx, &statement, &params)? {
                    let (key, tick) = group[0];
                    rejected.push(Unstorable {
                        entity: entity(spec, key),
                        tick,
                        error,
                    });
                }
            }
        }
        // an empty frontier (input closed) is not a tick to record
        if let Some(p) = progress.filter(|p| *p != Tick::MAX) {
            tx.execute(
                "INSERT INTO tidemark_progress (job, worker, tick) VALUES ($1, $2, $3) \
                 ON CONFLICT (job, worker) DO UPDATE SET tick = GREATEST(tidemark_progress.tick, excluded.tick), updated_at = now()",
                &[&job, &worker, &(p.saturating_sub(1).min(i64::MAX as u64) as i64)],
            )?;
        }
        tx.commit().context("committing the tick's transaction")?;
        Ok(rejected)
    }
}

impl Store for PostgresStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn written(&mut self) -> anyhow::Result<Option<Tick>> {
        let job = self.writer.job.clone();
        let row = self
            .client()?
            .query_one(
                "SELECT max(tick) FROM tidemark_progress WHERE job = $1",
                &[&job],
            )
            .context("reading the job's progress from postgres")?;
        Ok(row.get::<_, Option<i64>>(0).map(|t| t as u64))
    }

    fn roll_back(&mut self, since: Tick, before: Tick) -> anyhow::Result<u64> {
        let tables = self.writer.tables.clone();
        self.in_transaction(|tx| {
            let mut deleted = 0;
            for spec in tables.iter().filter(|s| s.sink.in_postgres()) {
                let name = table_name(spec);
                deleted += tx
                    .execute(
                        &format!("DELETE FROM {name} WHERE _tick > $1 AND _tick < $2"),
                        &[&(since as i64), &(before as i64)],
                    )
                    .with_context(|| {
                        format!("deleting from {name} what came after the checkpoint")
                    })?;
            }
            Ok(deleted)
        })
    }

    fn rewrite(
        &mut self,
        rows: &TickChanges,
        since: Tick,
        at: Tick,
    ) -> anyhow::Result<Vec<Unstorable>> {
        let tables = self.writer.tables.clone();
        let mut upserts: BTreeMap<u8, Vec<Row>> = BTreeMap::new();
        for c in &rows.changes {
            let spec = &tables[c.table as usize];
            if let (true, Some(values)) = (spec.sink.in_postgres(), &c.after) {
                upserts
                    .entry(c.table)
                    .or_default()
                    .push((&c.key, values, at));
            }
        }
        if upserts.is_empty() {
            return Ok(Vec::new());
        }
        let run = |store: &mut Self, one_by_one: bool| {
            store.in_transaction(|tx| {
                let mut rejected = Vec::new();
                for (table, rows) in &upserts {
                    let spec = &tables[*table as usize];
                    let name = table_name(spec);
                    let since_param = spec.keys.len() + spec.fields.len() + 3;
                    let sql = upsert_sql(
                        spec,
                        &format!(
                            "{name}._tick > ${since_param} AND excluded._tick >= {name}._tick"
                        ),
                    );
                    let statement = tx.prepare(&sql)?;
                    let groups: Vec<&[_]> = if one_by_one {
                        rows.chunks(1).collect()
                    } else {
                        vec![&rows[..]]
                    };
                    for group in groups {
                        let mut cols = Columns::new(spec);
                        for (key, values, at) in group {
                            cols.push(spec, key, values, *at);
                        }
                        let mut params = cols.params();
                        let since = since as i64;
                        params.push(&since);
                        if !one_by_one {
                            tx.execute(&statement, &params).with_context(|| {
                                format!("rewriting {name} as the checkpoint has it")
                            })?;
                        } else if let Some(error) = isolated(tx, &statement, &params)? {
                            rejected.push(Unstorable {
                                entity: entity(spec, group[0].0),
                                tick: at,
                                error,
                            });
                        }
                    }
                }
                Ok(rejected)
            })
        };
        match run(self, false) {
            Err(e) if refuses_the_data(&e) => run(self, true),
            other => other,
        }
    }

    fn write(
        &mut self,
        ticks: &[Arc<TickChanges>],
        progress: Option<Tick>,
    ) -> anyhow::Result<Vec<Unstorable>> {
        let tables = self.writer.tables.clone();
        let plan = Plan::of(&tables, ticks);
        let mut result = self.write_plan(&plan, progress, false);
        if result.as_ref().is_err_and(refuses_the_data) {
            // one entity's data fails the whole transaction: write them one by one
            self.client = None;
            result = self.write_plan(&plan, progress, true);
        }
        if result.is_err() {
            self.client = None;
        }
        result
    }
}
