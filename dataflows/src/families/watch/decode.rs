//! The `impressions` and `watches` wire formats (DESIGN §5.5, seed 004): `event_id`, `ts`
//! (epoch ms), `user_id`; an impression's `items` (`[{item_id, position}]`, optional
//! `request_id` and `surface`), a watch's `item_id`, `percent_watched` (0..100) and
//! `watch_time_sec` (≥ 0).

use std::borrow::Cow;

use ordered_float::OrderedFloat;
use serde::Deserialize;
use serde_json::Value;

use super::{Impression, ItemId, Shown, Source, UserId, Watch, WatchEvent};
use crate::contract::event::{EventId, Timed};
use crate::contract::record::{
    diagnose, epoch_ms, missing, required as text, DecodeError, ErrorKind, Expect, RecordRef,
};

/// The longest watch time taken (about 31 years): a typo of many digits is not a watch.
const MAX_WATCH_SEC: f64 = 1e9;

/// An impression's identity: its `event_id` in the impressions' own namespace, so an
/// impression and a watch that share an `event_id` are not duplicates of each other.
pub fn impression_id(event_id: &str) -> EventId {
    EventId(xxhash_rust::xxh3::xxh3_128_with_seed(
        event_id.as_bytes(),
        1,
    ))
}

/// A watch's identity (see [`impression_id`]).
pub fn watch_id(event_id: &str) -> EventId {
    EventId(xxhash_rust::xxh3::xxh3_128_with_seed(
        event_id.as_bytes(),
        2,
    ))
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    ts: Option<i64>,
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
    // impressions
    items: Option<Value>,
    #[serde(borrow)]
    request_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    surface: Option<Cow<'a, str>>,
    // watches
    #[serde(borrow)]
    item_id: Option<Cow<'a, str>>,
    percent_watched: Option<f64>,
    watch_time_sec: Option<f64>,
}

fn expect(field: &str) -> Expect {
    match field {
        "ts" => Expect::Integer,
        "event_id" | "user_id" | "item_id" | "request_id" | "surface" => Expect::Text,
        "percent_watched" | "watch_time_sec" => Expect::Number,
        _ => Expect::Any,
    }
}

fn source(r: &RecordRef<'_>) -> Source {
    Source {
        append_ms: r.append_ms,
        partition: r.partition,
        offset: r.offset,
    }
}

fn range(message: String) -> DecodeError {
    DecodeError::new(ErrorKind::Range, message)
}

fn wrong(field: &str, want: &str, got: &Value) -> DecodeError {
    DecodeError::new(
        ErrorKind::WrongType,
        format!("field '{field}' must be {want}, got {got}"),
    )
}

/// `items`: an array of `{item_id, position}`, each position an integer ≥ 0 and used once
/// (it is half of the raw row's key).
fn slate(items: Option<&Value>) -> Result<Vec<Shown>, DecodeError> {
    let items = match items {
        None | Some(Value::Null) => return Err(missing("items")),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(wrong("items", "an array of {item_id, position}", other)),
    };
    let mut out: Vec<Shown> = Vec::with_capacity(items.len());
    // a hash set, not a scan: a slate of thousands of items must not take quadratic time
    let mut used = rustc_hash::FxHashSet::default();
    for (i, entry) in items.iter().enumerate() {
        let Some(obj) = entry.as_object() else {
            return Err(wrong(&format!("items[{i}]"), "an object", entry));
        };
        let item = match obj.get("item_id") {
            Some(Value::String(s)) if !s.is_empty() => s.as_str(),
            None | Some(Value::Null) | Some(Value::String(_)) => {
                return Err(missing(&format!("items[{i}].item_id")))
            }
            Some(other) => return Err(wrong(&format!("items[{i}].item_id"), "a string", other)),
        };
        let position = match obj.get("position") {
            None | Some(Value::Null) => return Err(missing(&format!("items[{i}].position"))),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
                match n.as_u64().and_then(|p| u32::try_from(p).ok()) {
                    Some(p) => p,
                    None => {
                        return Err(range(format!(
                            "items[{i}].position {n} is outside 0..={}",
                            u32::MAX
                        )))
                    }
                }
            }
            Some(other) => return Err(wrong(&format!("items[{i}].position"), "an integer", other)),
        };
        if !used.insert(position) {
            return Err(range(format!(
                "items[{i}].position {position} appears twice: (event_id, position) keys one shown item"
            )));
        }
        out.push(Shown {
            item: ItemId(item.into()),
            position,
        });
    }
    Ok(out)
}

fn number(v: Option<f64>, field: &str, max: f64) -> Result<OrderedFloat<f64>, DecodeError> {
    let x = v.ok_or_else(|| missing(field))?;
    if !(0.0..=max).contains(&x) {
        return Err(range(format!("{field} {x} is outside 0..={max}")));
    }
    Ok(OrderedFloat(x))
}

/// A record of the impressions topic (`watches = false`) or of the watches topic.
pub fn decode(r: &RecordRef<'_>, watches: bool) -> Result<Timed<WatchEvent>, DecodeError> {
    let payload = r.payload;
    let raw: Raw = serde_json::from_slice(payload).map_err(|e| diagnose(payload, e, expect))?;
    let event_id = text(&raw.event_id, "event_id")?;
    let ts = epoch_ms(raw.ts, "ts")?;
    let user = UserId(text(&raw.user_id, "user_id")?.into());
    let optional =
        |v: &Option<Cow<'_, str>>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
    if watches {
        let item = ItemId(text(&raw.item_id, "item_id")?.into());
        let watch = Watch {
            event_id: event_id.to_string(),
            user,
            item,
            percent_watched: number(raw.percent_watched, "percent_watched", 100.0)?,
            watch_time_sec: number(raw.watch_time_sec, "watch_time_sec", MAX_WATCH_SEC)?,
            source: source(r),
        };
        return Ok(Timed {
            id: watch_id(event_id),
            ts,
            event: WatchEvent::Watch(Box::new(watch)),
        });
    }
    let impression = Impression {
        event_id: event_id.to_string(),
        user,
        items: slate(raw.items.as_ref())?,
        request_id: optional(&raw.request_id),
        surface: optional(&raw.surface),
        source: source(r),
    };
    Ok(Timed {
        id: impression_id(event_id),
        ts,
        event: WatchEvent::Impression(Box::new(impression)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMPRESSION: &str = r#"{"event_id":"imp-1","ts":1767225600000,"user_id":"u1","items":[{"item_id":"v9","position":0},{"item_id":"v3","position":1}],"request_id":"req-7","surface":"home"}"#;
    const WATCH: &str = r#"{"event_id":"w-1","ts":1767225660000,"user_id":"u1","item_id":"v9","percent_watched":85.5,"watch_time_sec":300}"#;

    fn record(payload: &str) -> RecordRef<'_> {
        RecordRef {
            topic: "t",
            partition: 3,
            offset: 41,
            append_ms: 1_767_225_601_000,
            key: None,
            payload: payload.as_bytes(),
            read_ms: None,
            headers: None,
            tombstone: false,
        }
    }

    #[test]
    fn both_kinds_decode_with_their_source() {
        let e = decode(&record(IMPRESSION), false).unwrap();
        assert_eq!(e.id, impression_id("imp-1"));
        let WatchEvent::Impression(i) = e.event else {
            panic!("an impression")
        };
        assert_eq!(i.items.len(), 2);
        assert_eq!(i.items[1].position, 1);
        assert_eq!(i.request_id.as_deref(), Some("req-7"));
        assert_eq!(i.source.offset, 41);
        assert_eq!(i.source.append_ms, 1_767_225_601_000);
        let e = decode(&record(WATCH), true).unwrap();
        assert_eq!(e.id, watch_id("w-1"));
        assert_ne!(watch_id("x"), impression_id("x"));
        let WatchEvent::Watch(w) = e.event else {
            panic!("a watch")
        };
        assert_eq!(w.percent_watched.0, 85.5);
        assert_eq!(w.source.partition, 3);
    }

    #[test]
    fn every_kind_of_bad_input_is_named() {
        let bad = |json: &str, from: &str, to: &str, watches: bool| {
            let payload = json.replace(from, to);
            let e = decode(&record(&payload), watches).unwrap_err();
            (e.kind, e.message)
        };
        let (kind, msg) = bad(IMPRESSION, r#""position":1"#, r#""position":0"#, false);
        assert_eq!(kind, ErrorKind::Range);
        assert!(msg.contains("appears twice"), "{msg}");
        let (kind, msg) = bad(IMPRESSION, r#""position":1"#, r#""position":-1"#, false);
        assert_eq!(kind, ErrorKind::Range, "{msg}");
        let (kind, msg) = bad(IMPRESSION, r#""position":1"#, r#""position":"1""#, false);
        assert_eq!(kind, ErrorKind::WrongType);
        assert!(msg.contains("items[1].position"), "{msg}");
        let (kind, msg) = bad(IMPRESSION, r#""item_id":"v3","#, "", false);
        assert_eq!(kind, ErrorKind::MissingField);
        assert!(msg.contains("items[1].item_id"), "{msg}");
        assert_eq!(
            bad(IMPRESSION, r#""items":["#, r#""slate":["#, false).0,
            ErrorKind::MissingField
        );
        assert_eq!(
            bad(WATCH, "85.5", "100.5", true).0,
            ErrorKind::Range,
            "percent over 100"
        );
        assert_eq!(bad(WATCH, "300", "-1", true).0, ErrorKind::Range);
        assert_eq!(bad(WATCH, "300", r#""5m""#, true).0, ErrorKind::WrongType);
        assert_eq!(
            bad(WATCH, r#","item_id":"v9""#, "", true).0,
            ErrorKind::MissingField
        );
        assert_eq!(
            bad(WATCH, "1767225660000", r#""2026-01-01""#, true).0,
            ErrorKind::WrongType
        );
        assert_eq!(bad(WATCH, "{", "[", true).0, ErrorKind::Json);
    }
}
