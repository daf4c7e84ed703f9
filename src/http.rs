//! The HTTP read API: `GET /features/{entity}/{id}` from Redis or the embedded store, with
//! read-time features (e.g. `ctr_decay`) computed at the request's time; `/livez`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};
use tidemark_dataflows::features::TableSpec;
use tidemark_dataflows::Family;

use crate::kafka::now_ms;
use crate::store::memory::Shared as MemoryShared;

/// Where features are read from.
#[derive(Clone)]
pub enum Backend {
    Memory(MemoryShared),
    Redis(redis::Client),
}

struct Api {
    family: Box<dyn Family>,
    tables: Vec<TableSpec>,
    backend: Backend,
}

#[derive(Deserialize)]
struct Params {
    features: Option<String>,
    /// Read-time features as of this epoch ms (default: now).
    at: Option<u64>,
}

impl Api {
    fn read(&self, ns: &str, id: &str) -> anyhow::Result<Option<Map<String, Value>>> {
        let Some((t, spec)) = self.tables.iter().enumerate().find(|(_, s)| s.ns == ns) else {
            return Ok(None);
        };
        let key: Vec<String> = if spec.keys.len() == 1 {
            vec![id.to_string()]
        } else {
            id.splitn(spec.keys.len(), ':')
                .map(str::to_string)
                .collect()
        };
        match &self.backend {
            Backend::Memory(state) => {
                let state = state.read().expect("memory store lock");
                Ok(state.entities.get(&(t as u8, key)).map(|(values, tick)| {
                    let mut m: Map<String, Value> = spec
                        .fields
                        .iter()
                        .zip(values)
                        .map(|(f, v)| (f.name.to_string(), v.to_json()))
                        .collect();
                    m.insert("_tick".into(), (*tick).into());
                    m.insert("_v".into(), spec.version.into());
                    m
                }))
            }
            Backend::Redis(client) => {
                let mut conn = client.get_connection()?;
                let h: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(crate::store::entity_key(spec, &key))
                    .query(&mut conn)?;
                if h.is_empty() {
                    return Ok(None);
                }
                Ok(Some(
                    h.into_iter()
                        .map(|(k, v)| {
                            let n = v
                                .parse::<i64>()
                                .map(Value::from)
                                .or_else(|_| v.parse::<f64>().map(Value::from));
                            (k, n.unwrap_or(Value::String(v)))
                        })
                        .collect(),
                ))
            }
        }
    }
}

async fn features(
    State(api): State<Arc<Api>>,
    Path((ns, id)): Path<(String, String)>,
    Query(p): Query<Params>,
) -> impl IntoResponse {
    match api.read(&ns, &id) {
        Ok(Some(mut fields)) => {
            api.family
                .at_read(&ns, &mut fields, p.at.unwrap_or_else(now_ms));
            if let Some(wanted) = p.features {
                let wanted: Vec<&str> = wanted.split(',').collect();
                fields.retain(|k, _| wanted.contains(&k.as_str()) || k.starts_with('_'));
            }
            (
                StatusCode::OK,
                Json(serde_json::json!({"entity": ns, "id": id, "features": fields})),
            )
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no {ns} entity '{id}'")})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": format!("{e:#}")})),
        ),
    }
}

/// Serves the read API on `addr` from a thread of its own.
pub fn serve(
    addr: &str,
    family: Box<dyn Family>,
    backend: Backend,
) -> anyhow::Result<std::net::SocketAddr> {
    let tables = family.tables();
    let api = Arc::new(Api {
        family,
        tables,
        backend,
    });
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("binding the HTTP API to {addr} (--http): {e}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async move {
                let app = Router::new()
                    .route("/features/{entity}/{id}", get(features))
                    .route("/livez", get(|| async { "ok" }))
                    .with_state(api);
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
            });
        })?;
    Ok(local)
}
