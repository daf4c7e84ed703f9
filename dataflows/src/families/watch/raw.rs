//! The raw tables: each impression's shown items and each watch, as received, with where
//! they were read. A raw row enters the collection at its event's tick and never leaves:
//! the `PgTable` sink upserts it by its key, so a replay writes the same row again rather
//! than a second one, and nothing downstream keeps it.

use crate::contract::event::Timed;
use crate::contract::table::{FeatureRow, Value};

use super::table::{IMPRESSIONS, WATCHES};
use super::*;

impl Watches {
    pub(super) fn raw_rows(&self, e: &Timed<WatchEvent>) -> Vec<FeatureRow> {
        let text = |s: &Option<String>| s.as_ref().map_or(Value::Null, |s| Value::Text(s.clone()));
        let source = |s: &Source| {
            [
                Value::Int(s.append_ms),
                Value::Int(s.partition as i64),
                Value::Int(s.offset),
            ]
        };
        match &e.event {
            WatchEvent::Impression(i) => i
                .items
                .iter()
                .map(|shown| {
                    let mut values = vec![
                        Value::Text(i.user.0.to_string()),
                        Value::Text(shown.item.0.to_string()),
                        Value::Int(e.ts as i64),
                        text(&i.request_id),
                        text(&i.surface),
                    ];
                    values.extend(source(&i.source));
                    FeatureRow {
                        table: IMPRESSIONS,
                        key: vec![i.event_id.clone(), shown.position.to_string()],
                        values,
                    }
                })
                .collect(),
            WatchEvent::Watch(w) => {
                let (signal, weight) = self.signal(w);
                let mut values = vec![
                    Value::Text(w.user.0.to_string()),
                    Value::Text(w.item.0.to_string()),
                    Value::Int(e.ts as i64),
                    Value::Float(w.percent_watched),
                    Value::Float(w.watch_time_sec),
                    Value::Text(signal.as_str().to_string()),
                    Value::Int(weight as i64),
                ];
                values.extend(source(&w.source));
                vec![FeatureRow {
                    table: WATCHES,
                    key: vec![w.event_id.clone()],
                    values,
                }]
            }
        }
    }
}
