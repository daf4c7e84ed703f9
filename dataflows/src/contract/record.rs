//! What a source hands the dataflow: borrowed records, and what becomes of the invalid ones.
//!
//! The runtime implements [`RecordSource`] over Kafka, files or a generator; the dataflow
//! only sees records, never connections.

use serde::{Deserialize, Serialize};

use crate::contract::time::Tick;

/// One source record, borrowed from the source's buffer for the duration of a decode.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The broker's append timestamp (epoch ms), used for freshness.
    pub append_ms: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// The clock (epoch ms) the record was first judged by, when it is a replay (`batch`
    /// reading the archive): the future-skew check measures from it, not from the clock
    /// of the replay, so a replay accepts and rejects exactly what the first read did.
    pub read_ms: Option<u64>,
    /// Its Kafka headers, when it has any: copied only if the record is dead-lettered.
    pub headers: Option<&'a dyn RecordHeaders>,
    /// A record without a value (a Kafka tombstone): `payload` is empty.
    pub tombstone: bool,
}

/// A record's headers as its source holds them (e.g. rdkafka's borrowed headers), read only
/// for the records that go to the DLQ, so a valid record costs nothing.
pub trait RecordHeaders: std::fmt::Debug {
    /// (name, value) in order; `None` for a header without a value.
    fn owned(&self) -> Vec<Header>;
}

/// A Kafka header: name and value (`None`: a header without one).
pub type Header = (String, Option<Vec<u8>>);

/// Headers a source holds already (a record it held back).
impl RecordHeaders for Vec<Header> {
    fn owned(&self) -> Vec<Header> {
        self.clone()
    }
}

/// How a poll ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Records may follow right away.
    Busy,
    /// Nothing arrived; `idle` when every assigned partition has been quiet for the idle timeout.
    Caught { idle: bool },
    /// Records are held back until a slower partition catches up: the tick stays open, so
    /// they go in at it rather than a tick later.
    Held,
    /// Every partition reached the end offsets fixed at start (`--exit-at-end`).
    Finished,
}

/// What the dataflow did with a record handed to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visit {
    /// Taken, with the event time it was read at (`None`: an invalid record). The runtime's
    /// archive files a record under this time, so it need not decode the record again.
    Taken(Option<Tick>),
    /// Its partition is too far ahead of the slowest one: hand this record out again later,
    /// and nothing after it from the same partition until then.
    Held,
}

/// A source of records for one worker.
pub trait RecordSource {
    /// Hands at most `max` records to `visit`, in order per partition. Records held back
    /// before are offered again first.
    fn poll(&mut self, max: usize, visit: &mut dyn FnMut(RecordRef<'_>) -> Visit) -> Poll;
    /// Names the partitions with records still to come (a backlog, or a record within the
    /// idle timeout): only these hold others back. A source that names none is never asked
    /// to hold a record.
    fn pending(&self, _mark: &mut dyn FnMut(&str, i32)) {}
    /// The records handed out so far went into the dataflow at `tick`.
    fn inserted(&mut self, _tick: Tick) {}
    /// The dataflow paused for a checkpoint at `tick`: everything handed out so far went in
    /// at or before it, and nothing more is read until the checkpoint is taken.
    fn paused(&mut self, _tick: Tick) {}
    /// Called on every activation, also after the source finished: time for housekeeping
    /// such as committing offsets.
    fn tend(&mut self) {}
    /// Wall-clock time in epoch ms (a fixed clock in tests).
    fn now_ms(&self) -> u64;
    /// With `exit_at_end`, the stream time the input ends at when it is past the last
    /// record's: `batch` ends at its `--to`, so the windows and timers due by then expire.
    fn end_at(&self) -> Option<Tick> {
        None
    }
}

/// Why a record was rejected.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Not JSON, or not an object.
    Json,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong type (including NaN/Infinity where a number is required).
    WrongType,
    /// A value out of its range, e.g. a timestamp beyond the allowed future skew.
    Range,
    /// An `event_type` this dataflow does not know.
    UnknownType,
    /// Larger than `max_message_bytes`.
    Oversized,
}

impl ErrorKind {
    /// Every kind, in the order of their names.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Json,
        ErrorKind::MissingField,
        ErrorKind::WrongType,
        ErrorKind::Range,
        ErrorKind::UnknownType,
        ErrorKind::Oversized,
    ];
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Json => "json",
            ErrorKind::MissingField => "missing_field",
            ErrorKind::WrongType => "wrong_type",
            ErrorKind::Range => "range",
            ErrorKind::UnknownType => "unknown_type",
            ErrorKind::Oversized => "oversized",
        }
    }
}

/// A decode failure: the kind and a message naming the field.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DecodeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl DecodeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        DecodeError {
            kind,
            message: message.into(),
        }
    }
}

/// An invalid record with its source coordinates, bound for the DLQ.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InvalidRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub append_ms: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub error: DecodeError,
    /// The integer `ts` it carries, when it has one not ahead of the clock's allowance.
    pub claimed_ts: Option<u64>,
    /// Its Kafka headers, kept for the DLQ (a replay re-sends them).
    pub headers: Vec<Header>,
    /// It had no value (a tombstone).
    pub tombstone: bool,
}

impl InvalidRecord {
    pub fn new(r: &RecordRef<'_>, error: DecodeError) -> Self {
        InvalidRecord {
            topic: r.topic.to_string(),
            partition: r.partition,
            offset: r.offset,
            append_ms: r.append_ms,
            key: r.key.map(|k| k.to_vec()),
            payload: r.payload.to_vec(),
            error,
            claimed_ts: None,
            headers: r.headers.map(|h| h.owned()).unwrap_or_default(),
            tombstone: r.tombstone,
        }
    }
}

/// What every decoder reports for a required field that is absent, null or empty.
pub fn missing(field: &str) -> DecodeError {
    DecodeError::new(
        ErrorKind::MissingField,
        format!("required field '{field}' is missing, null or empty"),
    )
}

/// A required text field: present and not empty.
pub fn required<'r>(
    v: &'r Option<std::borrow::Cow<'_, str>>,
    field: &str,
) -> Result<&'r str, DecodeError> {
    match v.as_deref() {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(missing(field)),
    }
}

/// A required text field, owned.
pub fn required_owned(
    v: &Option<std::borrow::Cow<'_, str>>,
    field: &str,
) -> Result<String, DecodeError> {
    required(v, field).map(str::to_string)
}

/// A required event time in epoch milliseconds: present and not negative.
pub fn epoch_ms(v: Option<i64>, field: &str) -> Result<u64, DecodeError> {
    let ms = v.ok_or_else(|| missing(field))?;
    u64::try_from(ms)
        .map_err(|_| DecodeError::new(ErrorKind::Range, format!("{field} {ms} is negative")))
}

/// Limits on what one event may name, checked after it is decoded: entity keys short
/// enough for every store's index, and a bounded number of items per list (each becomes
/// entities that live for a whole window).
#[derive(Clone, Copy, Debug)]
pub struct KeyLimits {
    pub max_key_bytes: usize,
    pub max_items_per_event: usize,
}

impl KeyLimits {
    /// Checks the keys an event names, as `keys` hands them out: `(field, value)`, one per
    /// item for a list field.
    pub fn check(
        &self,
        keys: impl FnOnce(&mut dyn FnMut(&'static str, &str)),
    ) -> Result<(), DecodeError> {
        let mut error: Option<DecodeError> = None;
        // items per list field: on the stack for the few fields an event names (no
        // allocation per event), spilling to the heap past sixteen
        let mut counts: [(&'static str, usize); 16] = [("", 0); 16];
        let mut fields = 0;
        let mut more: Vec<(&'static str, usize)> = Vec::new();
        keys(&mut |field, value| {
            if error.is_some() {
                return;
            }
            if value.len() > self.max_key_bytes {
                error = Some(DecodeError::new(
                    ErrorKind::Oversized,
                    format!(
                        "field '{field}' is {} bytes long; keys are at most max_key_bytes = {}",
                        value.len(),
                        self.max_key_bytes
                    ),
                ));
                return;
            }
            let n = match counts[..fields].iter().position(|(f, _)| *f == field) {
                Some(i) => &mut counts[i].1,
                None if fields < counts.len() => {
                    counts[fields] = (field, 0);
                    fields += 1;
                    &mut counts[fields - 1].1
                }
                None => match more.iter().position(|(f, _)| *f == field) {
                    Some(i) => &mut more[i].1,
                    None => {
                        more.push((field, 0));
                        &mut more.last_mut().expect("just pushed").1
                    }
                },
            };
            *n += 1;
            if *n > self.max_items_per_event {
                error = Some(DecodeError::new(
                    ErrorKind::Oversized,
                    format!(
                        "field '{field}' has more than max_items_per_event = {} items",
                        self.max_items_per_event
                    ),
                ));
            }
        });
        error.map_or(Ok(()), Err)
    }
}

/// Whether a JSON payload holds a NUL character (the escape `\u0000` — JSON has no raw
/// control characters in strings): no store takes it in text (Postgres refuses it), so
/// such a record is invalid wherever the NUL is.
pub fn holds_nul(payload: &[u8]) -> bool {
    let mut i = 0;
    while let Some(at) = payload[i..].windows(6).position(|w| w == b"\\u0000") {
        let at = i + at;
        // an escaped backslash before it makes it text: count the backslashes
        let run = payload[..=at]
            .iter()
            .rev()
            .take_while(|b| **b == b'\\')
            .count();
        if run % 2 == 1 {
            return true;
        }
        i = at + 1;
    }
    false
}

/// What a field of a wire format must hold: how a decoder names the field a typed parse
/// failed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Integer,
    Number,
    Text,
    TextList,
    /// A field the decoder does not read.
    Any,
}

impl Expect {
    fn holds(self, v: &serde_json::Value) -> bool {
        match self {
            Expect::Integer => v.is_i64() || v.is_u64(),
            Expect::Number => v.is_number(),
            Expect::Text => v.is_string(),
            Expect::TextList => v
                .as_array()
                .is_some_and(|a| a.iter().all(|x| x.is_string())),
            Expect::Any => true,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Expect::Integer => "an integer",
            Expect::Number => "a number",
            Expect::Text => "a string",
            Expect::TextList => "an array of strings",
            Expect::Any => "anything",
        }
    }
}

/// A typed parse of `payload` failed with `err`: names the first non-null field that does
/// not hold what `expect` says it must, or says the payload is not a JSON object.
pub fn diagnose(
    payload: &[u8],
    err: serde_json::Error,
    expect: impl Fn(&str) -> Expect,
) -> DecodeError {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return DecodeError::new(ErrorKind::Json, format!("not valid JSON: {err}"));
    };
    let Some(obj) = value.as_object() else {
        return DecodeError::new(ErrorKind::Json, "the payload is JSON but not an object");
    };
    for (field, v) in obj.iter().filter(|(_, v)| !v.is_null()) {
        let want = expect(field);
        if !want.holds(v) {
            return DecodeError::new(
                ErrorKind::WrongType,
                format!("field '{field}' must be {}, got {v}", want.name()),
            );
        }
    }
    // e.g. a number too large for its type
    DecodeError::new(ErrorKind::WrongType, err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_escape_is_found_unless_its_backslash_is_escaped() {
        assert!(holds_nul(br#"{"doc_id": "a\u0000b"}"#));
        assert!(holds_nul(br#"{"doc_id": "\u0000"}"#));
        assert!(holds_nul(br#"{"q": "\\\u0000"}"#));
        assert!(!holds_nul(br#"{"q": "\\u0000"}"#));
        assert!(!holds_nul(br#"{"q": "u0000 \u0001"}"#));
    }

    #[test]
    fn keys_over_their_limits_are_named() {
        let limits = KeyLimits {
            max_key_bytes: 4,
            max_items_per_event: 2,
        };
        assert!(limits.check(|v| v("doc_id", "abcd")).is_ok());
        let e = limits.check(|v| v("doc_id", "abcde")).unwrap_err();
        assert!(e.message.contains("doc_id") && e.message.contains("max_key_bytes"));
        let e = limits
            .check(|v| {
                for d in ["a", "b", "c"] {
                    v("doc_ids", d)
                }
            })
            .unwrap_err();
        assert!(e.message.contains("doc_ids") && e.message.contains("max_items_per_event"));
        assert!(limits
            .check(|v| {
                v("a", "x");
                v("a", "y");
                v("b", "z")
            })
            .is_ok());
        // past the sixteen fields counted on the stack, a field is still capped
        const FIELDS: [&str; 18] = [
            "f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9", "f10", "f11", "f12", "f13",
            "f14", "f15", "f16", "f17",
        ];
        let e = limits
            .check(|v| {
                for f in FIELDS {
                    v(f, "x")
                }
                for _ in 0..2 {
                    v("f17", "y")
                }
            })
            .unwrap_err();
        assert!(e.message.contains("f17"), "{}", e.message);
    }
}
