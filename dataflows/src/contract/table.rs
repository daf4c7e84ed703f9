//! Feature rows, the tables they belong to, and the per-tick changes that leave the dataflow
//! (made by `operators::changes`).

use std::collections::BTreeMap;

use ordered_float::OrderedFloat;
use serde::{Deserialize, Serialize};

use crate::contract::time::Tick;

/// A feature value. Floats are ordered so rows can live in differential collections.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Value {
    Int(i64),
    Float(OrderedFloat<f64>),
    Text(String),
    /// No value: the field is absent from a Redis hash and from the read API, `NULL` in
    /// Postgres and `null` in a topic record (a campaign without a budget has no
    /// `daily_budget`, not a budget of 0).
    Null,
}

impl Value {
    pub fn float(x: f64) -> Self {
        Value::Float(OrderedFloat(x))
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(f.0),
            Value::Text(_) | Value::Null => None,
        }
    }
}

impl Value {
    /// As a JSON value (topic records, the read API).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Int(i) => (*i).into(),
            Value::Float(f) => f.0.into(),
            Value::Text(t) => t.clone().into(),
            Value::Null => serde_json::Value::Null,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{}", x.0),
            Value::Text(s) => f.write_str(s),
            Value::Null => Ok(()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FieldType {
    Int,
    Float,
    Text,
    /// Strings in order (commerce's `user_recent`): a JSON array of strings in the row's
    /// `Value::Text`; a Postgres `text[]`, a JSON array in topic records and the read API.
    List,
}

#[derive(Clone, Debug, Serialize)]
pub struct FieldSpec {
    pub name: &'static str,
    pub ty: FieldType,
}

pub const fn int(name: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Int,
    }
}
pub const fn float(name: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Float,
    }
}
pub const fn text(name: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Text,
    }
}
pub const fn list(name: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::List,
    }
}

impl FieldSpec {
    /// A value of this field as JSON: a list as its array.
    pub fn json(&self, v: &Value) -> serde_json::Value {
        match (self.ty, v) {
            (FieldType::List, Value::Text(t)) => {
                serde_json::from_str(t).unwrap_or_else(|_| t.clone().into())
            }
            _ => v.to_json(),
        }
    }
}

/// Where a table's rows go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum SinkKind {
    /// A feature view: Redis hashes `feat:{ns}:{key…}` and the Postgres table `feat_{ns}`.
    Store,
    /// A changelog on a Kafka topic: each changed row is produced as a JSON object keyed by
    /// its key parts joined with `|` (a tombstone when the row goes), so a compacted topic
    /// keeps the latest record per key and a replay produces the same keys.
    Topic(String),
    /// A Redis list `{ns}:{key…}` (e.g. `user_recent:{user_id}`): the row's first field is
    /// a JSON array of strings, newest first; the list is replaced whole when it changes.
    /// Postgres keeps the array in `feat_{ns}` like any feature.
    List,
    /// Records on a Kafka topic keyed by their key parts joined with `|`, like `Topic`,
    /// except that a row leaving the dataflow (its retention ended) produces nothing: the
    /// last record stays what consumers keep (closed windows' metrics).
    Records(String),
    /// A Redis hash `{ns}:{key…}` only (e.g. `budget:{campaign_id}:{yyyymmdd}`).
    RedisHash,
    /// A Postgres table named `{ns}` only, holding history: rows are upserted and never
    /// deleted when they leave the dataflow (e.g. `budget_spend`).
    PgTable,
}

impl SinkKind {
    /// The Kafka topic the rows go to, if any.
    pub fn topic(&self) -> Option<&str> {
        match self {
            SinkKind::Topic(t) | SinkKind::Records(t) => Some(t),
            _ => None,
        }
    }
    pub fn in_redis(&self) -> bool {
        matches!(self, SinkKind::Store | SinkKind::List | SinkKind::RedisHash)
    }
    pub fn in_postgres(&self) -> bool {
        matches!(self, SinkKind::Store | SinkKind::List | SinkKind::PgTable)
    }
}

/// A table of rows a family maintains, and where they are written.
#[derive(Clone, Debug, Serialize)]
pub struct TableSpec {
    pub ns: &'static str,
    /// Key column names, in key order (Postgres primary key; Redis key parts).
    pub keys: Vec<&'static str>,
    pub fields: Vec<FieldSpec>,
    /// Schema version, written as `_v`.
    pub version: u32,
    pub sink: SinkKind,
    /// The Redis key before the key parts when it is not `feat:{ns}` (`{ns}` for a list
    /// or a `RedisHash`): a configured key template, e.g. seed 003's `user_features`.
    pub redis_prefix: Option<String>,
}

/// The state of one entity: all features of one key of one table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FeatureRow {
    /// Index into the dataflow's `tables()`.
    pub table: u8,
    pub key: Vec<String>,
    /// One value per field of the table, in field order.
    pub values: Vec<Value>,
}

/// An entity's identity across tables: table index and key parts.
pub type EntityKey = (u8, Vec<String>);

/// What happened to one entity at one tick.
#[derive(Clone, Debug, PartialEq)]
pub struct EntityChange {
    pub table: u8,
    pub key: Vec<String>,
    /// The entity's features after the tick; `None` when it no longer exists.
    pub after: Option<Vec<Value>>,
    /// Indices of the fields whose value changed (all fields for a new entity).
    pub changed: Vec<usize>,
}

/// All changes of one completed tick on one worker.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TickChanges {
    pub tick: Tick,
    pub changes: Vec<EntityChange>,
}

/// What a sink learns from the dataflow, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkEvent {
    Changes(TickChanges),
    /// Every tick before this one is complete on this worker.
    Progress(Tick),
}

/// Applies changes to a map of entity states: what any sink ends up holding.
pub fn apply_changes(state: &mut BTreeMap<EntityKey, Vec<Value>>, tick: &TickChanges) {
    for c in &tick.changes {
        let k = (c.table, c.key.clone());
        match &c.after {
            Some(v) => {
                state.insert(k, v.clone());
            }
            None => {
                state.remove(&k);
            }
        }
    }
}
