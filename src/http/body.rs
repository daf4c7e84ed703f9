//! The read API's bodies as types: what the handlers answer, and what `/openapi.json`
//! describes (utoipa derives the schemas from these very types).

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// An error of the read API. (Feast's endpoints answer Feast's shape instead: a JSON
/// string holding `{"module", "class", "message"}`.)
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong and what is expected.
    pub error: String,
}

/// One entity's features.
#[derive(Serialize, ToSchema)]
pub struct FeatureRead {
    /// The feature view (`doc`, `qd`, …).
    pub entity: String,
    /// The entity's key, its parts joined by `:`.
    pub id: String,
    /// Feature name → value; `_tick` is the stream time (epoch ms) of the entity's last
    /// change, `_v` its schema version.
    #[schema(value_type = Object)]
    pub features: Map<String, Value>,
}

/// Readiness.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<String>,
}

/// Feast's health check: ready or not.
#[derive(Serialize, ToSchema)]
pub struct Health {
    pub healthy: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<String>,
}

/// Feast's feature-server response.
#[derive(Serialize, ToSchema)]
pub struct FeastResponse {
    pub metadata: FeastMetadata,
    /// The entity columns, then one column per feature, in `feature_names`' order.
    pub results: Vec<FeastColumn>,
}

/// The response's column names, and the views' versions when asked for.
#[derive(Serialize, ToSchema)]
pub struct FeastMetadata {
    pub feature_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature_view_metadata: Option<Vec<ViewVersion>>,
}

/// A feature view's schema version (`include_feature_view_version_metadata`).
#[derive(Serialize, ToSchema)]
pub struct ViewVersion {
    pub name: String,
    pub version: u32,
}

/// One column: a value, a status and an event timestamp per entity row.
#[derive(Serialize, ToSchema)]
pub struct FeastColumn {
    pub values: Vec<Value>,
    /// `PRESENT`, `NOT_FOUND` or `OUTSIDE_MAX_AGE`.
    pub statuses: Vec<String>,
    /// RFC 3339, UTC: the entity's last change (the epoch when there is none).
    pub event_timestamps: Vec<String>,
}
