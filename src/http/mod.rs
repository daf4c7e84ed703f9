//! The HTTP API: operations (`/livez`, `/readyz`, `/metrics`, `/status`) and feature reads
//! (`GET /features/{entity}/{id}`, Feast's `POST /get-online-features`) from Redis or the
//! embedded store, with read-time features (e.g. `ctr_decay`) computed at the request's time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};
use tidemark_dataflows::contract::table::{self, SinkKind, TableSpec};
use tidemark_dataflows::Family;

use crate::clock::now_ms;
use crate::config::Config;
use crate::engine::Shared;
use crate::sink::memory::Shared as MemoryShared;
use crate::telemetry;

mod body;
mod feast;

use crate::config::feast::Catalog;
use body::{ErrorBody, FeatureRead, Ready};
use feast::{feast_error, is_feast_path};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Where features are read from.
#[derive(Clone)]
pub enum Backend {
    Memory(MemoryShared),
    Redis(redis::Client),
}

pub(crate) enum Reader {
    Memory(MemoryShared),
    Redis(redis::aio::ConnectionManager),
    /// No feature store configured: reads answer 503.
    None,
}

pub(crate) struct Api {
    family: Box<dyn Family>,
    tables: Vec<TableSpec>,
    /// The views' features and the feature services, as Feast sees them.
    catalog: Catalog,
    reader: Reader,
    shared: Arc<Shared>,
    config: Config,
}

/// One entity's stored row: field name → value, with `_tick` (epoch ms of its last change).
type Row = Map<String, Value>;

/// `GET /features`' query.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Params {
    /// The features wanted, by name, comma-separated (default: all of the view's).
    features: Option<String>,
    /// Read-time features as of this epoch ms (default: now).
    at: Option<u64>,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: msg.into() })).into_response()
}

/// An error of the endpoint at `path`: Feast's shape on Feast's endpoints.
fn error_at(path: &str, status: StatusCode, msg: impl Into<String>) -> Response {
    if is_feast_path(path) {
        feast_error(status, "FeastError", msg)
    } else {
        error(status, msg)
    }
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
                                    // absent, as Redis holds it
                                    .filter(|(_, v)| !matches!(v, table::Value::Null))
                                    .map(|(f, v)| (f.name.to_string(), f.json(v)))
                                    .collect();
                                m.insert("_tick".into(), (*tick).into());
                                m.insert("_v".into(), spec.version.into());
                                m
                            })
                    })
                    .collect())
            }
            Reader::Redis(conn) if spec.sink == SinkKind::List => {
                // a list view is a Redis list: its one field, the items in order
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.lrange(crate::sink::entity_key(spec, key), 0, -1);
                }
                let mut conn = conn.clone();
                let lists: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
                let field = spec.fields[0].name;
                Ok(lists
                    .into_iter()
                    .map(|items| {
                        (!items.is_empty()).then(|| Row::from_iter([(field.into(), items.into())]))
                    })
                    .collect())
            }
            Reader::Redis(conn) => {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.hgetall(crate::sink::entity_key(spec, key));
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

    /// A view's max age; 0 is none, as Feast reads a TTL of 0.
    fn max_age_ms(&self, ns: &str) -> Option<u64> {
        let secs = self.config.serve.max_age_secs.get(ns).copied();
        secs.filter(|s| *s > 0).map(|s| s.saturating_mul(1000))
    }
}

/// One entity's features, read-time ones computed at `at`.
#[utoipa::path(get, path = "/features/{view}/{id}", tag = "features",
    params(
        ("view" = String, Path, description = "the feature view: doc, qd, ac, …"),
        ("id" = String, Path, description = "the entity's key; several key parts joined by ':' ({query_hash}:{doc_id})"),
        Params),
    responses(
        (status = 200, description = "the entity's features", body = FeatureRead),
        (status = 400, description = "a feature the view does not have, or a bad query", body = ErrorBody),
        (status = 404, description = "an unknown view, or no such entity", body = ErrorBody),
        (status = 503, description = "the store is unreachable", body = ErrorBody)))]
async fn features(
    State(api): State<Arc<Api>>,
    Path((ns, id)): Path<(String, String)>,
    query: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match query {
        Ok(q) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{} (expected ?features=name,name&at=EPOCH_MS)",
                    e.body_text()
                ),
            )
        }
    };
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
    let wanted: Option<Vec<&str>> = p.features.as_deref().map(|w| w.split(',').collect());
    let view = api.catalog.view(&ns).expect("a view per table");
    if let Some(f) = (wanted.iter().flatten()).find(|f| !view.has(f)) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "view '{ns}' has no feature '{f}' (features: {})",
                view.feature_names().join(", ")
            ),
        );
    }
    let key = Api::key_of(spec, &id);
    match api.read(t, &[key]).await {
        Ok(mut rows) => match rows.pop().flatten() {
            Some(mut fields) => {
                api.family
                    .at_read(&ns, &mut fields, p.at.unwrap_or_else(now_ms));
                if let Some(wanted) = wanted {
                    fields.retain(|k, _| wanted.contains(&k.as_str()) || k.starts_with('_'));
                }
                Json(FeatureRead {
                    entity: ns,
                    id,
                    features: fields,
                })
                .into_response()
            }
            None => error(StatusCode::NOT_FOUND, format!("no {ns} entity '{id}'")),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

/// Readiness: every source assigned, every sink answering, not draining.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "ready", body = Ready),
        (status = 503, description = "not ready, and why", body = Ready)))]
async fn readyz(State(api): State<Arc<Api>>) -> Response {
    let (status, not_ready) = readiness(&api);
    let ready = not_ready.is_empty();
    (status, Json(Ready { ready, not_ready })).into_response()
}

/// 200 and no reasons when ready, else 503 and why: `/readyz`'s and Feast's `/health`'s.
fn readiness(api: &Api) -> (StatusCode, Vec<String>) {
    let not_ready = crate::engine::health::not_ready(&api.shared);
    let status = if not_ready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, not_ready)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/livez", tag = "operations",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
async fn livez() -> &'static str {
    "ok"
}

/// Prometheus' text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "every metric (README \"Metrics\")", body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics(State(api): State<Arc<Api>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::engine::health::render(&api.shared),
    )
        .into_response()
}

/// The engine's state: sources, dataflows, workers, sinks, checkpoints, quality.
#[utoipa::path(get, path = "/status", tag = "operations",
    responses((status = 200, description = "the status document (README \"Endpoints\")", body = Object)))]
async fn status(State(api): State<Arc<Api>>) -> Response {
    Json(crate::engine::health::status(
        &api.shared,
        &api.config,
        &*api.family,
    ))
    .into_response()
}

/// Seed 004's worker status: the same document as `/status`.
#[utoipa::path(get, path = "/stream/worker", tag = "operations",
    responses((status = 200, description = "the status document, as `/status`", body = Object)))]
async fn stream_worker(state: State<Arc<Api>>) -> Response {
    status(state).await
}

/// This document, generated from the handlers and their types.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "the OpenAPI 3.1 description of every endpoint", body = Object)))]
async fn openapi() -> Response {
    let doc = OPENAPI.get().map_or("{}", String::as_str);
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

/// `/openapi.json`, rendered once when the router is built.
static OPENAPI: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The document's title and description; the paths come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(title = "Tidemark read API", description = "Feature reads (Tidemark's own and Feast's feature server's) and operations. Errors are `{\"error\": …}`, except on Feast's endpoints, which answer Feast's shape."),
    tags(
        (name = "features", description = "Tidemark's feature reads"),
        (name = "feast", description = "Feast's feature-server endpoints"),
        (name = "operations", description = "probes, metrics and status")))]
struct ApiDoc;

/// Refuses a body whose `Content-Length` is over the limit before reading any of it: the
/// client gets its 413 at once (and the connection is closed, as the body is not read)
/// instead of the server reading up to the limit first. A body without a length is cut
/// at the limit by `DefaultBodyLimit`.
async fn announced_within(
    limit: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n > limit as u64 => {
            let mut r = error_at(
                req.uri().path(),
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a request body of {n} bytes; at most {limit} (serve.max_request_bytes)"),
            );
            r.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            r
        }
        _ => next.run(req).await,
    }
}

/// Answers 503 for a request not done within `limit` (a slow body, a slow store).
async fn within(
    limit: Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().to_string();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error_at(
            &path,
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

/// Every endpoint with its limits: body size (announced and read), request time, and
/// JSON errors for unknown paths and methods.
fn router(api: Arc<Api>, limits: &crate::config::ServeConfig) -> Router {
    let request_timeout = Duration::from_millis(limits.request_timeout_ms);
    let max_request_bytes = limits.max_request_bytes;
    // every endpoint through `routes!`, so each is in /openapi.json by construction
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(features))
        .routes(routes!(feast::online_features))
        .routes(routes!(feast::health))
        .routes(routes!(feast::push))
        .routes(routes!(feast::write_to_online_store))
        .routes(routes!(feast::materialize))
        .routes(routes!(feast::materialize_incremental))
        .routes(routes!(livez))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(status))
        .routes(routes!(stream_worker))
        .routes(routes!(openapi))
        .split_for_parts();
    let _ = OPENAPI.set(doc.to_pretty_json().unwrap_or_default());
    router
        .fallback(|uri: axum::http::Uri| async move {
            error(
                StatusCode::NOT_FOUND,
                format!("no endpoint {} (see README \"Endpoints\")", uri.path()),
            )
        })
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                error_at(
                    uri.path(),
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} is not served at {}", uri.path()),
                )
            },
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            limits.max_request_bytes,
        ))
        .layer(axum::middleware::from_fn(move |req, next| {
            announced_within(max_request_bytes, req, next)
        }))
        .layer(axum::middleware::from_fn(move |req, next| {
            within(request_timeout, req, next)
        }))
        .with_state(api)
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
    let catalog = Catalog::new(&*family, &config.serve.feature_services)?;
    let api = Arc::new(Api {
        family,
        tables,
        catalog,
        reader,
        shared,
        config,
    });
    let limits = api.config.serve.clone();
    let app = router(api, &limits);
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
