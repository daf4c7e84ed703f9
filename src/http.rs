//! The HTTP API: operations (`/livez`, `/readyz`, `/metrics`, `/status`) and feature reads
//! (`GET /features/{entity}/{id}`, Feast's `POST /get-online-features`) from Redis or the
//! embedded store, with read-time features (e.g. `ctr_decay`) computed at the request's time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tidemark_dataflows::features::TableSpec;
use tidemark_dataflows::Family;

use crate::config::Config;
use crate::engine::Shared;
use crate::kafka::now_ms;
use crate::store::memory::Shared as MemoryShared;
use crate::telemetry;

/// Where features are read from.
#[derive(Clone)]
pub enum Backend {
    Memory(MemoryShared),
    Redis(redis::Client),
}

enum Reader {
    Memory(MemoryShared),
    Redis(redis::aio::ConnectionManager),
    /// No feature store configured: reads answer 503.
    None,
}

struct Api {
    family: Box<dyn Family>,
    tables: Vec<TableSpec>,
    reader: Reader,
    shared: Arc<Shared>,
    config: Config,
}

/// One entity's stored row: field name → value, with `_tick` (epoch ms of its last change).
type Row = Map<String, Value>;

#[derive(Deserialize)]
struct Params {
    features: Option<String>,
    /// Read-time features as of this epoch ms (default: now).
    at: Option<u64>,
}

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

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into()}))).into_response()
}

/// A stored string as the JSON value it encodes (integers and floats as numbers).
fn parse_stored(v: String) -> Value {
    v.parse::<i64>()
        .map(Value::from)
        .or_else(|_| v.parse::<f64>().map(Value::from))
        .unwrap_or(Value::String(v))
}

impl Api {
    fn table(&self, ns: &str) -> Option<(usize, &TableSpec)> {
        self.tables.iter().enumerate().find(|(_, s)| s.ns == ns)
    }

    /// Reads rows of one table; `None` for a key that is not stored.
    async fn read(&self, t: usize, keys: &[Vec<String>]) -> anyhow::Result<Vec<Option<Row>>> {
        let spec = &self.tables[t];
        match &self.reader {
            Reader::Memory(state) => {
                let state = state.read().expect("memory store lock");
                Ok(keys
                    .iter()
                    .map(|key| {
                        state
                            .entities
                            .get(&(t as u8, key.clone()))
                            .map(|(values, tick)| {
                                let mut m: Row = spec
                                    .fields
                                    .iter()
                                    .zip(values)
                                    .map(|(f, v)| (f.name.to_string(), v.to_json()))
                                    .collect();
                                m.insert("_tick".into(), (*tick).into());
                                m.insert("_v".into(), spec.version.into());
                                m
                            })
                    })
                    .collect())
            }
            Reader::Redis(conn) => {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.hgetall(crate::store::entity_key(spec, key));
                }
                let mut conn = conn.clone();
                let hashes: Vec<BTreeMap<String, String>> = pipe.query_async(&mut conn).await?;
                Ok(hashes
                    .into_iter()
                    .map(|h| {
                        (!h.is_empty())
                            .then(|| h.into_iter().map(|(k, v)| (k, parse_stored(v))).collect())
                    })
                    .collect())
            }
            Reader::None => {
                anyhow::bail!("no feature store to read: set redis.url (TIDEMARK_REDIS)")
            }
        }
    }

    /// Splits an id of the read API into key parts: `{query_hash}:{doc_id}` for two keys.
    fn key_of(spec: &TableSpec, id: &str) -> Vec<String> {
        if spec.keys.len() == 1 {
            vec![id.to_string()]
        } else {
            id.splitn(spec.keys.len(), ':')
                .map(str::to_string)
                .collect()
        }
    }

    fn max_age_ms(&self, ns: &str) -> Option<u64> {
        self.config
            .serve
            .max_age_secs
            .get(ns)
            .map(|s| s.saturating_mul(1000))
    }
}

async fn features(
    State(api): State<Arc<Api>>,
    Path((ns, id)): Path<(String, String)>,
    Query(p): Query<Params>,
) -> Response {
    let Some((t, spec)) = api.table(&ns) else {
        let views: Vec<&str> = api.tables.iter().map(|s| s.ns).collect();
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no entity type '{ns}' (this dataflow has: {})",
                views.join(", ")
            ),
        );
    };
    let key = Api::key_of(spec, &id);
    match api.read(t, &[key]).await {
        Ok(mut rows) => match rows.pop().flatten() {
            Some(mut fields) => {
                api.family
                    .at_read(&ns, &mut fields, p.at.unwrap_or_else(now_ms));
                if let Some(wanted) = p.features {
                    let wanted: Vec<&str> = wanted.split(',').collect();
                    fields.retain(|k, _| wanted.contains(&k.as_str()) || k.starts_with('_'));
                }
                Json(json!({"entity": ns, "id": id, "features": fields})).into_response()
            }
            None => error(StatusCode::NOT_FOUND, format!("no {ns} entity '{id}'")),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
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

/// Feast's `POST /get-online-features`: one result column per entity key and per feature,
/// each with a value, a status and an event timestamp per entity row.
async fn online_features(State(api): State<Arc<Api>>, body: axum::body::Bytes) -> Response {
    let req: FeastRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("request body: {e} (expected {{\"features\": [\"view:feature\", …], \"entities\": {{\"key\": [values…]}}}})"),
            )
        }
    };
    // entity columns, all of one length
    let mut rows: Option<usize> = None;
    let mut columns: BTreeMap<&str, &Vec<Value>> = BTreeMap::new();
    for (name, values) in &req.entities {
        let Some(values) = values.as_array() else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("entities.{name} must be an array of values, one per entity row"),
            );
        };
        if rows.is_some_and(|n| n != values.len()) {
            return error(
                StatusCode::BAD_REQUEST,
                "every entities column must have the same number of values",
            );
        }
        rows = Some(values.len());
        columns.insert(name, values);
    }
    let rows = rows.unwrap_or(0);
    if rows > api.config.serve.max_entities {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{rows} entity rows; at most {} per request (serve.max_entities)",
                api.config.serve.max_entities
            ),
        );
    }
    let values = rows.saturating_mul(req.features.len());
    if values > api.config.serve.max_feature_values {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{rows} entity rows × {} features = {values} values; at most {} per request (serve.max_feature_values): split the request",
                req.features.len(),
                api.config.serve.max_feature_values
            ),
        );
    }
    // features grouped by view, each remembering its place in the answer
    let mut views: BTreeMap<&str, Vec<(usize, &str)>> = BTreeMap::new();
    for (i, r) in req.features.iter().enumerate() {
        let Some((view, feature)) = r.split_once(':') else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("feature '{r}' is not a 'view:feature' reference"),
            );
        };
        let Some((_, spec)) = api.table(view) else {
            let names: Vec<&str> = api.tables.iter().map(|s| s.ns).collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown feature view '{view}' (views: {})",
                    names.join(", ")
                ),
            );
        };
        let known = spec.fields.iter().any(|f| f.name == feature)
            || api.family.read_time_features(view).contains(&feature);
        if !known {
            return error(
                StatusCode::BAD_REQUEST,
                format!("feature view '{view}' has no feature '{feature}'"),
            );
        }
        views.entry(view).or_default().push((i, feature));
    }
    let now = req.at.unwrap_or_else(now_ms);
    let missing = || json!({"values": vec![Value::Null; rows], "statuses": vec!["NOT_FOUND"; rows], "event_timestamps": vec![rfc3339(0); rows]});
    let mut feature_columns: Vec<Value> = vec![Value::Null; req.features.len()];
    for (view, wanted) in &views {
        let (t, spec) = api.table(view).expect("checked above");
        let mut keys = Vec::with_capacity(rows);
        for row in 0..rows {
            let mut key = Vec::with_capacity(spec.keys.len());
            for k in &spec.keys {
                let Some(col) = columns.get(k) else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "feature view '{view}' is keyed by {}: add entities.{k}",
                            spec.keys.join(", ")
                        ),
                    );
                };
                let Some(part) = key_part(&col[row]) else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("entities.{k}[{row}] must be a string or a number"),
                    );
                };
                key.push(part);
            }
            keys.push(key);
        }
        let found = match api.read(t, &keys).await {
            Ok(f) => f,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
        };
        let max_age = api.max_age_ms(view);
        let mut out: Vec<(Vec<Value>, Vec<&str>, Vec<String>)> = wanted
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
        for ((i, _), (values, statuses, stamps)) in wanted.iter().zip(out) {
            feature_columns[*i] =
                json!({"values": values, "statuses": statuses, "event_timestamps": stamps});
        }
    }
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
    for (r, column) in req.features.iter().zip(feature_columns) {
        let (view, feature) = r.split_once(':').expect("checked above");
        names.push(if req.full_feature_names {
            format!("{view}__{feature}")
        } else {
            feature.to_string()
        });
        results.push(if column.is_null() { missing() } else { column });
    }
    Json(json!({"metadata": {"feature_names": names}, "results": results})).into_response()
}

async fn readyz(State(api): State<Arc<Api>>) -> Response {
    let why = telemetry::not_ready(&api.shared);
    if why.is_empty() {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "not_ready": why})),
        )
            .into_response()
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry::render(&api.shared),
    )
        .into_response()
}

async fn status(State(api): State<Arc<Api>>) -> Response {
    Json(telemetry::status(
        &api.shared,
        &api.config,
        api.family.name(),
    ))
    .into_response()
}

/// Answers 503 for a request not done within `limit` (a slow body, a slow store).
async fn within(
    limit: Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took more than {} ms (serve.request_timeout_ms)",
                limit.as_millis()
            ),
        ),
    }
}

/// Serves connections, at most `serve.max_connections` at once: the next one is accepted
/// only when one closes, so clients that hold connections open queue in the listen backlog
/// instead of taking the process's file descriptors. A connection that sends no request
/// head within `serve.header_timeout_ms` (idle keep-alive ones too) is closed.
async fn accept(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &crate::config::ServeConfig,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let header_timeout = Duration::from_millis(limits.header_timeout_ms);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // e.g. out of file descriptors: wait rather than spin
                tracing::warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(io, service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            drop(slot);
        });
    }
}

/// Raises the soft limit of open files to the hard one: the engine's files and sockets and
/// the HTTP connections then have all the room the system allows.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                tracing::debug!("could not raise the open-file limit");
            }
        }
    }
}

/// Serves the API on `addr` from threads of its own; returns the bound address.
pub fn serve(
    addr: &str,
    family: Box<dyn Family>,
    backend: Option<Backend>,
    shared: Arc<Shared>,
    config: Config,
) -> anyhow::Result<std::net::SocketAddr> {
    telemetry::prometheus();
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("binding the HTTP API to {addr} (http, --http): {e}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("http")
        .enable_all()
        .build()?;
    let reader = match backend {
        None => Reader::None,
        Some(Backend::Memory(m)) => Reader::Memory(m),
        Some(Backend::Redis(client)) => {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(std::time::Duration::from_secs(1)))
                .set_response_timeout(Some(std::time::Duration::from_secs(2)));
            // connects on the first read: the API (and /readyz) is up while Redis is not
            let _runtime = rt.enter();
            Reader::Redis(
                redis::aio::ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|e| anyhow::anyhow!("the read API's redis client (redis.url): {e}"))?,
            )
        }
    };
    let tables = family.tables();
    let api = Arc::new(Api {
        family,
        tables,
        reader,
        shared,
        config,
    });
    let limits = api.config.serve.clone();
    let request_timeout = Duration::from_millis(limits.request_timeout_ms);
    let app = Router::new()
        .route("/features/{entity}/{id}", get(features))
        .route("/get-online-features", post(online_features))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .layer(axum::extract::DefaultBodyLimit::max(
            limits.max_request_bytes,
        ))
        .layer(axum::middleware::from_fn(move |req, next| {
            within(request_timeout, req, next)
        }))
        .with_state(api);
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                accept(listener, app, &limits).await;
            });
        })?;
    Ok(local)
}
