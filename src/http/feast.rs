//! Feast's `POST /get-online-features`: one result column per entity key and per feature,
//! each with a value, a status (`PRESENT`, `NOT_FOUND`, `OUTSIDE_MAX_AGE`) and an event
//! timestamp per entity row, so existing Feast clients read Tidemark's features.

// the stages answer a request's error as the response itself (an axum `Response`)
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{error, Api};
use crate::clock::now_ms;

/// Feast's feature-server request.
#[derive(Deserialize)]
struct FeastRequest {
    /// `view:feature` references.
    #[serde(default)]
    features: Vec<String>,
    /// Entity key column → one value per entity row (column-major).
    entities: Map<String, Value>,
    #[serde(default)]
    full_feature_names: bool,
    /// Read-time features and max age as of this epoch ms (default: now); not Feast's.
    #[serde(default)]
    at: Option<u64>,
}

/// An entity value as a key part: strings as they are, numbers in their JSON form.
fn key_part(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// RFC 3339 in UTC, as protobuf's JSON mapping writes a Timestamp.
fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    if ms.is_multiple_of(1000) {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_millis(t).to_string()
    }
}

/// The entity key columns by name, all of one length (the number of entity rows).
type Columns<'a> = BTreeMap<&'a str, &'a Vec<Value>>;

/// The features wanted of each view, each with its place in the answer.
type Views<'a> = BTreeMap<&'a str, Vec<(usize, &'a str)>>;

/// One feature's result column: values, statuses, event timestamps.
type Column<'a> = (Vec<Value>, Vec<&'a str>, Vec<String>);

pub(super) async fn online_features(
    State(api): State<Arc<Api>>,
    body: axum::body::Bytes,
) -> Response {
    let req: FeastRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("request body: {e} (expected {{\"features\": [\"view:feature\", …], \"entities\": {{\"key\": [values…]}}}})"),
            )
        }
    };
    let (rows, columns) = match entity_columns(&api, &req) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let views = match views_of(&api, &req.features) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = req.at.unwrap_or_else(now_ms);
    let mut feature_columns: Vec<Value> = vec![Value::Null; req.features.len()];
    for (view, wanted) in &views {
        match view_columns(&api, view, wanted, rows, &columns, now).await {
            Ok(found) => {
                for (i, column) in found {
                    feature_columns[i] = column;
                }
            }
            Err(r) => return r,
        }
    }
    answer(&req, rows, &columns, feature_columns)
}

/// The entity columns, checked: arrays of one length, within the request limits.
fn entity_columns<'a>(api: &Api, req: &'a FeastRequest) -> Result<(usize, Columns<'a>), Response> {
    let mut rows: Option<usize> = None;
    let mut columns: Columns<'a> = BTreeMap::new();
    for (name, values) in &req.entities {
        let Some(values) = values.as_array() else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("entities.{name} must be an array of values, one per entity row"),
            ));
        };
        if rows.is_some_and(|n| n != values.len()) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "every entities column must have the same number of values",
            ));
        }
        rows = Some(values.len());
        columns.insert(name, values);
    }
    let rows = rows.unwrap_or(0);
    let serve = &api.config.serve;
    if rows > serve.max_entities {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{rows} entity rows; at most {} per request (serve.max_entities)",
                serve.max_entities
            ),
        ));
    }
    let values = rows.saturating_mul(req.features.len());
    if values > serve.max_feature_values {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{rows} entity rows × {} features = {values} values; at most {} per request (serve.max_feature_values): split the request",
                req.features.len(),
                serve.max_feature_values
            ),
        ));
    }
    Ok((rows, columns))
}

/// The `view:feature` references grouped by view, each checked against the view's fields.
fn views_of<'a>(api: &Api, features: &'a [String]) -> Result<Views<'a>, Response> {
    let mut views: Views<'a> = BTreeMap::new();
    for (i, r) in features.iter().enumerate() {
        let Some((view, feature)) = r.split_once(':') else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("feature '{r}' is not a 'view:feature' reference"),
            ));
        };
        let Some((_, spec)) = api.table(view) else {
            let names: Vec<&str> = api.tables.iter().map(|s| s.ns).collect();
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown feature view '{view}' (views: {})",
                    names.join(", ")
                ),
            ));
        };
        let known = spec.fields.iter().any(|f| f.name == feature)
            || api.family.read_time_features(view).contains(&feature);
        if !known {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("feature view '{view}' has no feature '{feature}'"),
            ));
        }
        views.entry(view).or_default().push((i, feature));
    }
    Ok(views)
}

/// The entity rows' keys of a view, in its key columns' order.
fn keys_of(
    view: &str,
    keys: &[&'static str],
    rows: usize,
    columns: &Columns<'_>,
) -> Result<Vec<Vec<String>>, Response> {
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        let mut key = Vec::with_capacity(keys.len());
        for k in keys {
            let Some(col) = columns.get(k) else {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "feature view '{view}' is keyed by {}: add entities.{k}",
                        keys.join(", ")
                    ),
                ));
            };
            let Some(part) = key_part(&col[row]) else {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("entities.{k}[{row}] must be a string or a number"),
                ));
            };
            key.push(part);
        }
        out.push(key);
    }
    Ok(out)
}

/// One view's wanted features for every entity row, each with its place in the answer.
async fn view_columns(
    api: &Api,
    view: &str,
    wanted: &[(usize, &str)],
    rows: usize,
    columns: &Columns<'_>,
    now: u64,
) -> Result<Vec<(usize, Value)>, Response> {
    let (t, spec) = api.table(view).expect("checked by views_of");
    let keys = keys_of(view, &spec.keys, rows, columns)?;
    let found = api
        .read(t, &keys)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    let max_age = api.max_age_ms(view);
    let mut out: Vec<Column> = wanted
        .iter()
        .map(|_| {
            (
                Vec::with_capacity(rows),
                Vec::with_capacity(rows),
                Vec::with_capacity(rows),
            )
        })
        .collect();
    for row in found {
        let Some(mut fields) = row else {
            for o in &mut out {
                o.0.push(Value::Null);
                o.1.push("NOT_FOUND");
                o.2.push(rfc3339(0));
            }
            continue;
        };
        let tick = fields.get("_tick").and_then(Value::as_u64).unwrap_or(0);
        let expired = max_age.is_some_and(|age| tick.saturating_add(age) < now);
        api.family.at_read(view, &mut fields, now);
        for ((_, feature), o) in wanted.iter().zip(&mut out) {
            match fields.get(*feature).cloned() {
                _ if expired => {
                    o.0.push(Value::Null);
                    o.1.push("OUTSIDE_MAX_AGE");
                }
                Some(v) => {
                    o.0.push(v);
                    o.1.push("PRESENT");
                }
                None => {
                    o.0.push(Value::Null);
                    o.1.push("NOT_FOUND");
                }
            }
            o.2.push(rfc3339(tick));
        }
    }
    Ok(wanted
        .iter()
        .zip(out)
        .map(|((i, _), (values, statuses, stamps))| {
            let column =
                json!({"values": values, "statuses": statuses, "event_timestamps": stamps});
            (*i, column)
        })
        .collect())
}

/// Feast's response: the entity columns, then one column per feature in request order.
fn answer(
    req: &FeastRequest,
    rows: usize,
    columns: &Columns<'_>,
    features: Vec<Value>,
) -> Response {
    let missing = || json!({"values": vec![Value::Null; rows], "statuses": vec!["NOT_FOUND"; rows], "event_timestamps": vec![rfc3339(0); rows]});
    let mut names: Vec<String> = columns.keys().map(|k| k.to_string()).collect();
    let mut results: Vec<Value> = columns
        .values()
        .map(|values| {
            json!({
                "values": values,
                "statuses": vec!["PRESENT"; rows],
                "event_timestamps": vec![rfc3339(0); rows],
            })
        })
        .collect();
    for (r, column) in req.features.iter().zip(features) {
        let (view, feature) = r.split_once(':').expect("checked by views_of");
        names.push(if req.full_feature_names {
            format!("{view}__{feature}")
        } else {
            feature.to_string()
        });
        results.push(if column.is_null() { missing() } else { column });
    }
    Json(json!({"metadata": {"feature_names": names}, "results": results})).into_response()
}
