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
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::body::{FeastColumn, FeastMetadata, FeastResponse, Health, ViewVersion};
use super::Api;
use crate::clock::now_ms;
use crate::config::feast::FeastType;

/// Feast's feature-server request.
#[derive(Deserialize, ToSchema)]
pub(super) struct FeastRequest {
    /// `view:feature` references.
    #[serde(default)]
    features: Vec<String>,
    /// A feature service's name, instead of `features` (Feast's SDK sends this for
    /// `features=store.get_feature_service(…)`).
    #[serde(default)]
    feature_service: Option<String>,
    /// Entity key column → one value per entity row (column-major), in request order.
    #[serde(deserialize_with = "in_order")]
    #[schema(value_type = Object)]
    entities: Vec<(String, Value)>,
    #[serde(default)]
    full_feature_names: bool,
    /// Adds `metadata.feature_view_metadata` (each view's name and schema version).
    #[serde(default)]
    include_feature_view_version_metadata: bool,
    /// Read-time features and max age as of this epoch ms (default: now); not Feast's.
    #[serde(default)]
    at: Option<u64>,
}

/// A JSON object's members in the order the client wrote them: Feast answers the entity
/// columns in request order.
fn in_order<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, Value)>, D::Error> {
    struct Members;
    impl<'de> serde::de::Visitor<'de> for Members {
        type Value = Vec<(String, Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of entity key columns")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(String, Value)> = Vec::new();
            while let Some((k, v)) = m.next_entry::<String, Value>()? {
                if out.iter().any(|(x, _)| *x == k) {
                    return Err(serde::de::Error::custom(format!(
                        "entities.{k} given twice"
                    )));
                }
                out.push((k, v));
            }
            Ok(out)
        }
    }
    d.deserialize_map(Members)
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

/// The entity key columns in request order, all of one length (the number of entity rows).
type Columns<'a> = Vec<(&'a str, &'a Vec<Value>)>;

/// The features wanted of each view, each with its place in the answer.
type Views<'a> = BTreeMap<&'a str, Vec<(usize, &'a str)>>;

/// One feature's result column as it is filled: values, statuses, event timestamps.
type Column<'a> = (Vec<Value>, Vec<&'a str>, Vec<String>);

/// A column of one status and the epoch as timestamp on every row.
fn uniform(values: Vec<Value>, status: &str) -> FeastColumn {
    let rows = values.len();
    FeastColumn {
        values,
        statuses: vec![status.to_string(); rows],
        event_timestamps: vec![rfc3339(0); rows],
    }
}

/// The Feast endpoints: their errors are Feast-shaped (see [`feast_error`]).
pub(super) fn is_feast_path(path: &str) -> bool {
    matches!(
        path,
        "/get-online-features"
            | "/push"
            | "/write-to-online-store"
            | "/materialize"
            | "/materialize-incremental"
    )
}

/// An error as Feast's feature server writes it: a JSON string holding
/// `{"module", "class", "message"}`, which the SDK turns back into that exception
/// (`FeastError.from_error_detail`), e.g. `FeatureViewNotFoundException`.
pub(super) fn feast_error(status: StatusCode, class: &str, message: impl Into<String>) -> Response {
    let detail = json!({"module": "feast.errors", "class": class, "message": message.into()});
    (status, Json(Value::String(detail.to_string()))).into_response()
}

/// Feast's base class, for errors Feast has no class of its own for.
const FEAST_ERROR: &str = "FeastError";

/// `POST /get-online-features`: checks, then reads each view's rows in one round trip.
#[utoipa::path(post, path = "/get-online-features", tag = "feast",
    request_body = FeastRequest,
    responses(
        (status = 200, description = "a column per entity key and per feature", body = FeastResponse),
        (status = 400, description = "a bad request: Feast's error shape (a JSON string of module, class and message), e.g. FeatureNameCollisionError", body = String),
        (status = 404, description = "an unknown view or feature service (FeatureViewNotFoundException, FeatureServiceNotFoundException)", body = String),
        (status = 413, description = "over serve.max_entities or serve.max_feature_values", body = String),
        (status = 503, description = "the store is unreachable, or the request took too long", body = String)))]
pub(super) async fn online_features(
    State(api): State<Arc<Api>>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return feast_error(e.status(), FEAST_ERROR, e.body_text()),
    };
    let req: FeastRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return feast_error(
                StatusCode::BAD_REQUEST,
                FEAST_ERROR,
                format!("request body: {e} (expected {{\"features\": [\"view:feature\", …], \"entities\": {{\"key\": [values…]}}}})"),
            )
        }
    };
    let refs = match wanted(&api, &req) {
        Ok(r) => r,
        Err(r) => return r,
    };
    // the size limits first: they guard the server, whatever else is wrong
    let (rows, columns) = match entity_columns(&api, &req, refs.len()) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = collisions(&refs, req.full_feature_names) {
        return r;
    }
    let mut views: Views = BTreeMap::new();
    for (i, (view, feature)) in refs.iter().enumerate() {
        views.entry(view).or_default().push((i, feature));
    }
    let now = req.at.unwrap_or_else(now_ms);
    let mut feature_columns: Vec<Option<FeastColumn>> = (0..refs.len()).map(|_| None).collect();
    for (view, wanted) in &views {
        match view_columns(&api, view, wanted, rows, &columns, now).await {
            Ok(found) => {
                for (i, column) in found {
                    feature_columns[i] = Some(column);
                }
            }
            Err(r) => return r,
        }
    }
    answer(&api, &req, &refs, rows, &columns, feature_columns)
}

/// The `(view, feature)` pairs asked for, in answer order: the feature service's or the
/// `view:feature` references, each checked (Feast's collision rule is [`collisions`]).
fn wanted<'a>(api: &'a Api, req: &'a FeastRequest) -> Result<Vec<(&'a str, &'a str)>, Response> {
    let refs: Vec<(&str, &str)> = if let Some(name) = &req.feature_service {
        let Some(service) = api.catalog.service(name) else {
            let names: Vec<&str> = api
                .catalog
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            return Err(feast_error(
                StatusCode::NOT_FOUND,
                "FeatureServiceNotFoundException",
                format!(
                    "Feature service {name} does not exist (services: {})",
                    names.join(", ")
                ),
            ));
        };
        service.refs.clone()
    } else {
        let mut refs = Vec::with_capacity(req.features.len());
        for r in &req.features {
            let Some((view, feature)) = r.split_once(':') else {
                return Err(feast_error(
                    StatusCode::BAD_REQUEST,
                    FEAST_ERROR,
                    format!("feature '{r}' is not a 'view:feature' reference"),
                ));
            };
            let Some(v) = api.catalog.view(view).filter(|v| v.readable) else {
                return Err(feast_error(
                    StatusCode::NOT_FOUND,
                    "FeatureViewNotFoundException",
                    format!(
                        "Feature view {view} does not exist (views: {})",
                        api.catalog.readable_names()
                    ),
                ));
            };
            if !v.has(feature) {
                return Err(feast_error(
                    StatusCode::BAD_REQUEST,
                    FEAST_ERROR,
                    format!(
                        "feature view '{view}' has no feature '{feature}' (features: {})",
                        v.feature_names().join(", ")
                    ),
                ));
            }
            refs.push((view, feature));
        }
        refs
    };
    if refs.is_empty() {
        return Err(feast_error(
            StatusCode::BAD_REQUEST,
            FEAST_ERROR,
            "No features specified for retrieval",
        ));
    }
    Ok(refs)
}

/// Feast's `FeatureNameCollisionError`: two answer columns of one name.
fn collisions(refs: &[(&str, &str)], full: bool) -> Result<(), Response> {
    let name = |(v, f): &(&str, &str)| {
        if full {
            format!("{v}__{f}")
        } else {
            f.to_string()
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    let twice: std::collections::BTreeSet<String> = refs
        .iter()
        .map(name)
        .filter(|n| !seen.insert(n.clone()))
        .collect();
    if twice.is_empty() {
        return Ok(());
    }
    let fix = if full {
        "To resolve this collision, please ensure that the feature views or their own features have different names. If you're intentionally joining the same feature view twice on different sets of entities, please rename one of the feature views with '.with_name'."
    } else {
        "To resolve this collision, either use the full feature name by setting 'full_feature_names=True', or ensure that the features in question have different names."
    };
    let names: Vec<String> = twice.into_iter().collect();
    Err(feast_error(
        StatusCode::BAD_REQUEST,
        "FeatureNameCollisionError",
        format!(
            "Duplicate features named {} found.\n{fix}",
            names.join(", ")
        ),
    ))
}

/// The entity columns, checked: arrays of one length, within the request limits.
fn entity_columns<'a>(
    api: &Api,
    req: &'a FeastRequest,
    features: usize,
) -> Result<(usize, Columns<'a>), Response> {
    let mut rows: Option<usize> = None;
    let mut columns: Columns<'a> = Vec::with_capacity(req.entities.len());
    for (name, values) in &req.entities {
        let Some(values) = values.as_array() else {
            return Err(feast_error(
                StatusCode::BAD_REQUEST,
                FEAST_ERROR,
                format!("entities.{name} must be an array of values, one per entity row"),
            ));
        };
        if rows.is_some_and(|n| n != values.len()) {
            return Err(feast_error(
                StatusCode::BAD_REQUEST,
                FEAST_ERROR,
                "every entities column must have the same number of values",
            ));
        }
        rows = Some(values.len());
        columns.push((name, values));
    }
    let rows = rows.unwrap_or(0);
    let serve = &api.config.serve;
    if rows > serve.max_entities {
        return Err(feast_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            FEAST_ERROR,
            format!(
                "{rows} entity rows; at most {} per request (serve.max_entities)",
                serve.max_entities
            ),
        ));
    }
    let values = rows.saturating_mul(features);
    if values > serve.max_feature_values {
        return Err(feast_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            FEAST_ERROR,
            format!(
                "{rows} entity rows × {features} features = {values} values; at most {} per request (serve.max_feature_values): split the request",
                serve.max_feature_values
            ),
        ));
    }
    Ok((rows, columns))
}

/// A stored value as its Feast type: the SDK infers a value's type from its JSON, so a
/// float stored as `1` must travel as `1.0`, and a text that looks like a number as text.
fn typed(v: &Value, ty: Option<FeastType>) -> Value {
    match (ty, v) {
        (Some(FeastType::Float64), Value::Number(n)) => n.as_f64().map_or(Value::Null, Value::from),
        (Some(FeastType::String), Value::Number(n)) => Value::String(n.to_string()),
        _ => v.clone(),
    }
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
            let Some((_, col)) = columns.iter().find(|(name, _)| name == k) else {
                return Err(feast_error(
                    StatusCode::BAD_REQUEST,
                    FEAST_ERROR,
                    format!(
                        "feature view '{view}' is keyed by {}: add entities.{k}",
                        keys.join(", ")
                    ),
                ));
            };
            let Some(part) = key_part(&col[row]) else {
                return Err(feast_error(
                    StatusCode::BAD_REQUEST,
                    FEAST_ERROR,
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
) -> Result<Vec<(usize, FeastColumn)>, Response> {
    let (t, spec) = api.table(view).expect("checked by wanted");
    let keys = keys_of(view, &spec.keys, rows, columns)?;
    let found = api.read(t, &keys).await.map_err(|e| {
        feast_error(
            StatusCode::SERVICE_UNAVAILABLE,
            FEAST_ERROR,
            format!("{e:#}"),
        )
    })?;
    let max_age = api.max_age_ms(view);
    let catalog_view = api.catalog.view(view).expect("checked by wanted");
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
            match fields
                .get(*feature)
                .map(|v| typed(v, catalog_view.feature_type(feature)))
            {
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
            let column = FeastColumn {
                values,
                statuses: statuses.into_iter().map(str::to_string).collect(),
                event_timestamps: stamps,
            };
            (*i, column)
        })
        .collect())
}

/// Feast's response: the requested views' entity columns in request order, then one
/// column per feature in the order asked; with the views' schema versions when asked.
fn answer(
    api: &Api,
    req: &FeastRequest,
    refs: &[(&str, &str)],
    rows: usize,
    columns: &Columns<'_>,
    features: Vec<Option<FeastColumn>>,
) -> Response {
    // as Feast: only the requested views' join keys come back (in request order)
    let keyed = |name: &str| {
        (refs.iter()).any(|(v, _)| api.catalog.view(v).is_some_and(|v| v.keys.contains(&name)))
    };
    let echoed: Vec<&(&str, &Vec<Value>)> = columns.iter().filter(|(k, _)| keyed(k)).collect();
    let mut names: Vec<String> = echoed.iter().map(|(k, _)| k.to_string()).collect();
    let mut results: Vec<FeastColumn> = (echoed.iter())
        .map(|(_, values)| uniform(values.to_vec(), "PRESENT"))
        .collect();
    for ((view, feature), column) in refs.iter().zip(features) {
        names.push(if req.full_feature_names {
            format!("{view}__{feature}")
        } else {
            feature.to_string()
        });
        results.push(column.unwrap_or_else(|| uniform(vec![Value::Null; rows], "NOT_FOUND")));
    }
    let feature_view_metadata = req.include_feature_view_version_metadata.then(|| {
        let mut views: Vec<&str> = Vec::new();
        for (view, _) in refs {
            if !views.contains(view) {
                views.push(view);
            }
        }
        (views.iter())
            .filter_map(|v| api.catalog.view(v))
            .map(|v| ViewVersion {
                name: v.ns.to_string(),
                version: v.version,
            })
            .collect()
    });
    let metadata = FeastMetadata {
        feature_names: names,
        feature_view_metadata,
    };
    Json(FeastResponse { metadata, results }).into_response()
}

/// Feast's `/health`: 200 while the API can answer reads (ready), else 503.
#[utoipa::path(get, path = "/health", tag = "feast",
    responses(
        (status = 200, description = "ready", body = Health),
        (status = 503, description = "not ready, and why", body = Health)))]
pub(super) async fn health(State(api): State<Arc<Api>>) -> Response {
    let (status, not_ready) = super::readiness(&api);
    let healthy = not_ready.is_empty();
    (status, Json(Health { healthy, not_ready })).into_response()
}

/// Feast's writing endpoints: Tidemark's features are computed from its event streams,
/// so a write from outside would be overwritten by the next tick (or overwrite a newer
/// one); a 501 in Feast's shape says where the data goes instead.
fn not_supported(api: &Api, path: &str) -> Response {
    let topics = api.family.topics().join(", ");
    let why = match path {
        "/materialize" | "/materialize-incremental" => {
            "Tidemark keeps the online store fresh from the stream itself: there is nothing to materialize (for features as of past times, see `tidemark batch` and `tidemark training-set`)".to_string()
        }
        p => format!(
            "{p} is not supported: Tidemark computes its features from its event streams, and a write from outside would be overwritten by the next tick; produce the events to Kafka ({topics}) instead"
        ),
    };
    feast_error(StatusCode::NOT_IMPLEMENTED, FEAST_ERROR, why)
}

/// Feast's writes and materializations, each documented as the 501 it answers.
macro_rules! not_supported {
    ($name:ident, $path:literal) => {
        #[doc = concat!("Feast's `", $path, "`: 501 (see [`not_supported`]).")]
        #[utoipa::path(post, path = $path, tag = "feast",
            responses((status = 501, description = "not supported: the body, Feast's error shape, says why and where the data goes instead", body = String)))]
        pub(super) async fn $name(State(api): State<Arc<Api>>) -> Response {
            not_supported(&api, $path)
        }
    };
}

not_supported!(push, "/push");
not_supported!(write_to_online_store, "/write-to-online-store");
not_supported!(materialize, "/materialize");
not_supported!(materialize_incremental, "/materialize-incremental");
