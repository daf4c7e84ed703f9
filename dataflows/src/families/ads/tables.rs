//! The family's feature views: Redis keys, Postgres tables, topics, in `tables()` order.

use crate::contract::table::{float, int, text, FieldSpec, SinkKind, TableSpec};

use super::*;

/// Table indices, in `tables()` order.
pub mod table {
    pub const CAMPAIGN: u8 = 0;
    pub const PERFORMANCE: u8 = 1;
    pub const PERFORMANCE_HISTORY: u8 = 2;
    pub const BUDGET: u8 = 3;
    pub const BUDGET_EVENTS: u8 = 4;
    pub const BUDGET_SPEND: u8 = 5;
    pub const PRODUCT: u8 = 6;
    /// Postgres `budget_events`: every `budget-management` record, kept (the audit trail).
    pub const BUDGET_HISTORY: u8 = 7;
}

fn performance_fields() -> Vec<FieldSpec> {
    vec![
        text("timestamp"),
        text("window_end"),
        int("impressions"),
        int("clicks"),
        int("conversions"),
        float("ctr"),
        float("cvr"),
        float("defense_ctr"),
        float("defense_cvr"),
        text("sample_size"),
    ]
}

impl Ads {
    /// Long: a declaration, one entry per view and field.
    pub(super) fn table_specs(&self) -> Vec<TableSpec> {
        let spec = |ns, keys, fields, sink| TableSpec {
            ns,
            keys,
            fields,
            version: 1,
            sink,
            redis_prefix: None,
        };
        let mut campaign = vec![
            text("window_start"),
            int("window_impressions"),
            int("window_clicks"),
            int("window_conversions"),
            float("window_ctr"),
            float("window_cvr"),
        ];
        for [i, c, v, ctr, cvr, s, r] in [
            [
                "impressions_1h",
                "clicks_1h",
                "conversions_1h",
                "ctr_1h",
                "cvr_1h",
                "spend_1h",
                "revenue_1h",
            ],
            [
                "impressions_24h",
                "clicks_24h",
                "conversions_24h",
                "ctr_24h",
                "cvr_24h",
                "spend_24h",
                "revenue_24h",
            ],
        ] {
            campaign.extend([
                int(i),
                int(c),
                int(v),
                float(ctr),
                float(cvr),
                int(s),
                int(r),
            ]);
        }
        campaign.push(int("unattributed_conversions_24h"));
        let window_keys = vec![
            "campaign_id",
            "placement",
            "category",
            "window_start",
            "metric_type",
        ];
        let budget_event_fields = vec![
            text("event_type"),
            text("timestamp"),
            text("advertiser_id"),
            int("daily_budget"),
            int("spent_amount"),
            int("remaining_budget"),
            text("alert_type"),
            text("sync_source"),
            text("action"),
            // an alert's version and the `timestamp` of the record it corrects (#18); null
            // on a sync
            int("version"),
            text("previous_timestamp"),
        ];
        vec![
            spec("campaign", vec!["campaign_id"], campaign, SinkKind::Store),
            spec(
                "performance",
                window_keys.clone(),
                performance_fields(),
                SinkKind::Records(self.config.metrics_topic.clone()),
            ),
            spec(
                "performance_metrics",
                window_keys,
                performance_fields(),
                SinkKind::PgTable,
            ),
            spec(
                "budget",
                vec!["campaign_id", "date"],
                vec![
                    text("advertiser_id"),
                    int("daily_budget"),
                    int("spent_amount"),
                    int("remaining_budget"),
                    float("spent_ratio"),
                    int("clicks"),
                    int("paused"),
                ],
                SinkKind::RedisHash,
            ),
            spec(
                "budget_events",
                vec!["campaign_id", "date", "kind"],
                budget_event_fields.clone(),
                SinkKind::Topic(self.config.budget_topic.clone()),
            ),
            spec(
                "budget_spend",
                vec!["campaign_id", "date"],
                vec![
                    text("advertiser_id"),
                    int("daily_budget"),
                    int("spent_amount"),
                    text("synced_at"),
                    int("synced_at_ms"),
                ],
                SinkKind::PgTable,
            ),
            spec(
                "product",
                vec!["product_id"],
                vec![
                    float("quality_score"),
                    float("previous_score"),
                    text("category"),
                    text("update_reason"),
                    text("effective_from"),
                    int("effective_from_ms"),
                    text("updated_at"),
                ],
                SinkKind::Store,
            ),
            spec(
                "budget_events",
                vec!["campaign_id", "date", "kind"],
                budget_event_fields,
                SinkKind::PgTable,
            ),
        ]
    }
}
