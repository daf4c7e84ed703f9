//! The watch family's tables (DESIGN §5.5): the feature views and the two raw tables.

use crate::contract::table::{float, int, list, text, SinkKind, TableSpec};

use super::Watches;

/// Table indices, in the order of [`Watches::table_specs`].
pub mod table {
    pub const ITEM: u8 = 0;
    pub const USER_HISTORY: u8 = 1;
    pub const VIEWER: u8 = 2;
    pub const CO_VISIT: u8 = 3;
    pub const CO_VISITATION: u8 = 4;
    pub const IMPRESSIONS: u8 = 5;
    pub const WATCHES: u8 = 6;
}

impl Watches {
    pub(super) fn table_specs(&self) -> Vec<TableSpec> {
        let spec = |ns, keys, fields, sink| TableSpec {
            ns,
            keys,
            fields,
            version: 1,
            sink,
            redis_prefix: None,
        };
        vec![
            spec(
                "item",
                vec!["item_id"],
                vec![
                    int("item_popularity_7d"),
                    int("item_popularity_30d"),
                    int("watches_7d"),
                    int("watches_30d"),
                    int("impressions_7d"),
                    int("impressions_30d"),
                    int("strong_watches_7d"),
                    int("strong_watches_30d"),
                    float("watch_through_7d"),
                    float("watch_through_30d"),
                    float("strong_share_7d"),
                    float("strong_share_30d"),
                ],
                SinkKind::Store,
            ),
            spec(
                "user_history",
                vec!["user_id"],
                vec![list("item_ids")],
                SinkKind::List,
            ),
            spec(
                "viewer",
                vec!["user_id"],
                vec![int("history_size"), int("last_watch_ts")],
                SinkKind::Store,
            ),
            spec(
                "co_visit",
                vec!["item_id"],
                vec![list("neighbours")],
                SinkKind::List,
            ),
            spec(
                "co_visitation",
                vec!["item_a", "item_b"],
                vec![int("score")],
                SinkKind::Store,
            ),
            spec(
                "impressions",
                vec!["event_id", "position"],
                vec![
                    text("user_id"),
                    text("item_id"),
                    int("ts"),
                    text("request_id"),
                    text("surface"),
                    int("server_received_ts_ms"),
                    int("source_partition"),
                    int("source_offset"),
                ],
                SinkKind::PgTable,
            ),
            spec(
                "watches",
                vec!["event_id"],
                vec![
                    text("user_id"),
                    text("item_id"),
                    int("ts"),
                    float("percent_watched"),
                    float("watch_time_sec"),
                    text("signal"),
                    int("weight"),
                    int("server_received_ts_ms"),
                    int("source_partition"),
                    int("source_offset"),
                ],
                SinkKind::PgTable,
            ),
        ]
    }
}
