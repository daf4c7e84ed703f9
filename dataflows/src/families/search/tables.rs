//! The family's feature views, in `tables()` order.

use crate::contract::table::{float, int, SinkKind, TableSpec};

use super::*;

/// Table indices, in `tables()` order.
pub const DOC: u8 = 0;

pub const QD: u8 = 1;

pub const AC: u8 = 2;

/// `batch` only: the 90-day popularity per document.
pub const DOC_LONG: u8 = 3;

/// Field names of `feat_doc`, which the read API also uses to compute `ctr_decay`.
pub mod doc_fields {
    pub const DECAY_CLICKS: &str = "decay_clicks";
    pub const DECAY_IMPRESSIONS: &str = "decay_impressions";
    pub const DECAY_LANDMARK: &str = "decay_landmark_ms";
}

impl Search {
    pub(super) fn table_specs(&self) -> Vec<TableSpec> {
        let mut specs = vec![
            TableSpec {
                ns: "doc",
                keys: vec!["doc_id"],
                fields: vec![
                    int("impressions_7d"),
                    int("impressions_30d"),
                    int("clicks_7d"),
                    int("clicks_30d"),
                    float("ctr_doc"),
                    int("popularity_7d"),
                    int("popularity_30d"),
                    int("dwell_sum_7d"),
                    float(doc_fields::DECAY_CLICKS),
                    float(doc_fields::DECAY_IMPRESSIONS),
                    int(doc_fields::DECAY_LANDMARK),
                ],
                version: 1,
                sink: SinkKind::Store,
                redis_prefix: None,
            },
            TableSpec {
                ns: "qd",
                keys: vec!["query_hash", "doc_id"],
                fields: vec![int("impressions_7d"), int("clicks_7d"), float("ctr_qd")],
                version: 1,
                sink: SinkKind::Store,
                redis_prefix: None,
            },
            TableSpec {
                ns: "ac",
                keys: vec!["prefix"],
                fields: vec![
                    int("ac_impressions_7d"),
                    int("ac_selects_7d"),
                    float("assist_rate"),
                    float("assist_click_rate"),
                ],
                version: 1,
                sink: SinkKind::Store,
                redis_prefix: None,
            },
        ];
        if self.batch {
            specs.push(TableSpec {
                ns: "doc_long",
                keys: vec!["doc_id"],
                fields: vec![int("popularity_90d")],
                version: 1,
                sink: SinkKind::Store,
                redis_prefix: None,
            });
        }
        specs
    }
}
