//! The family's feature views, in `tables()` order.

use crate::contract::table::{float, int, text, SinkKind, TableSpec};

use super::*;

/// Table indices, in `tables()` order.
pub const SESSION: u8 = 0;

pub const USER: u8 = 1;

pub const EPISODE: u8 = 2;

pub const SEGMENT: u8 = 3;

pub const EXPERIMENT: u8 = 4;

pub const QUALITY: u8 = 5;

impl Reading {
    /// Long: a declaration, one entry per view and field.
    pub(super) fn table_specs(&self) -> Vec<TableSpec> {
        let store = |ns, keys, fields| TableSpec {
            ns,
            keys,
            fields,
            // 2: fractional depths, abandon rates, finished_sessions_30d, unzoned_events
            version: 2,
            sink: SinkKind::Store,
            redis_prefix: None,
        };
        let mut user = vec![
            int("sessions_7d"),
            float("completion_rate_7d"),
            float("early_exit_rate_7d"),
            float("abandon_rate_7d"),
            float("avg_scroll_depth_7d"),
            float("avg_dwell_ms_7d"),
            int("distinct_episodes_7d"),
            int("sessions_30d"),
            float("completion_rate_30d"),
            float("early_exit_rate_30d"),
            float("abandon_rate_30d"),
            float("avg_scroll_depth_30d"),
            float("avg_dwell_ms_30d"),
            int("distinct_episodes_30d"),
        ];
        user.push(text("top_genre_30d"));
        let mut episode = vec![
            text("genre"),
            text("title_id"),
            int("views_7d"),
            float("completion_rate_7d"),
            int("views_30d"),
            float("completion_rate_30d"),
            float("avg_exit_depth_30d"),
        ];
        episode.extend(
            [
                "exit_depth_0",
                "exit_depth_1",
                "exit_depth_2",
                "exit_depth_3",
                "exit_depth_4",
                "exit_depth_5",
                "exit_depth_6",
                "exit_depth_7",
                "exit_depth_8",
                "exit_depth_9",
            ]
            .map(int),
        );
        let segment = vec![
            int("sessions_7d"),
            float("completion_rate_7d"),
            int("sessions_30d"),
            float("completion_rate_30d"),
        ];
        vec![
            store(
                "session",
                vec!["session_id"],
                vec![
                    text("user_id"),
                    text("episode_id"),
                    text("state"),
                    int("started_at_ms"),
                    int("dwell_ms"),
                    float("max_scroll_pct"),
                    int("scroll_events"),
                ],
            ),
            store("user", vec!["user_id"], user),
            store("episode", vec!["episode_id"], episode),
            store("segment", vec!["country", "genre", "tod"], segment),
            store(
                "experiment",
                vec!["experiment_name", "experiment_group"],
                vec![
                    int("finished_sessions_30d"),
                    int("completions_30d"),
                    float("completion_rate_30d"),
                    text("control_group"),
                    float("diff_vs_control"),
                    float("ci95_low"),
                    float("ci95_high"),
                    int("significant"),
                ],
            ),
            store(
                "quality_hourly",
                vec!["hour"],
                vec![
                    int("null_events"),
                    int("duplicate_events"),
                    int("out_of_order_events"),
                    int("out_of_range_events"),
                    int("malformed_events"),
                    int("unzoned_events"),
                ],
            ),
        ]
    }
}
