//! The `search-events` wire format: JSON objects with `event_id, event_type, ts (epoch ms),
//! user_id, session_id` and the fields of each event type.

use compact_str::CompactString;
use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{DocId, Prefix, SearchEvent, SessionId};
use crate::contract::event::{EventId, Timed};
use crate::contract::record::{
    diagnose, epoch_ms, missing, required as text, DecodeError, ErrorKind, Expect,
};

/// The first 16 hex digits of SHA-256 of the normalised query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueryHash(pub u64);

impl QueryHash {
    pub fn of(query: &str) -> Self {
        let digest = Sha256::digest(normalize_query(query).as_bytes());
        QueryHash(u64::from_be_bytes(
            digest[..8]
                .try_into()
                .expect("a SHA-256 digest has 32 bytes"),
        ))
    }
}

impl std::fmt::Display for QueryHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Lower-cased, trimmed, inner whitespace collapsed to one space (Unicode-aware).
pub fn normalize_query(q: &str) -> String {
    let lower = q.to_lowercase();
    let mut out = String::with_capacity(lower.len());
    for word in lower.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Dwell times above a day are not believable.
const MAX_DWELL_MS: u64 = 86_400_000;

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_type: Option<Cow<'a, str>>,
    ts: Option<i64>,
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    query: Option<Cow<'a, str>>,
    #[serde(borrow)]
    doc_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    doc_ids: Option<Vec<Cow<'a, str>>>,
    dwell_ms: Option<i64>,
    #[serde(borrow)]
    prefix: Option<Cow<'a, str>>,
    #[serde(borrow)]
    candidates: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    candidate: Option<Cow<'a, str>>,
}

fn list<'r, 'a>(
    v: &'r Option<Vec<Cow<'a, str>>>,
    field: &str,
) -> Result<&'r [Cow<'a, str>], DecodeError> {
    v.as_deref().ok_or_else(|| missing(field))
}

pub fn decode(payload: &[u8]) -> Result<Timed<SearchEvent>, DecodeError> {
    let raw: Raw = serde_json::from_slice(payload).map_err(|e| diagnose(payload, e, expect))?;
    let event_id = text(&raw.event_id, "event_id")?;
    let event_type = text(&raw.event_type, "event_type")?;
    let ts = epoch_ms(raw.ts, "ts")?;
    text(&raw.user_id, "user_id")?;
    let session = SessionId(text(&raw.session_id, "session_id")?.to_string());
    let doc = |raw: &Raw| text(&raw.doc_id, "doc_id").map(|d| DocId(d.into()));
    let query = |raw: &Raw| text(&raw.query, "query").map(QueryHash::of);
    let prefix =
        |raw: &Raw| text(&raw.prefix, "prefix").map(|p| Prefix(super::normalize_query(p).into()));
    let event = match event_type {
        "search_impression" => {
            let query = query(&raw)?;
            let docs = list(&raw.doc_ids, "doc_ids")?;
            if docs.iter().any(|d| d.is_empty()) {
                return Err(DecodeError::new(ErrorKind::Range, "doc_ids holds an empty id"));
            }
            SearchEvent::Impression { query, docs: docs.iter().map(|d| DocId(CompactString::from(d.as_ref()))).collect() }
        }
        "click" => SearchEvent::Click { session, query: query(&raw)?, doc: doc(&raw)? },
        "dwell" => {
            query(&raw)?;
            let dwell = raw.dwell_ms.ok_or_else(|| missing("dwell_ms"))?;
            let dwell_ms = u64::try_from(dwell).ok().filter(|d| *d <= MAX_DWELL_MS).ok_or_else(|| {
                DecodeError::new(ErrorKind::Range, format!("dwell_ms {dwell} is outside 0..={MAX_DWELL_MS}"))
            })?;
            SearchEvent::Dwell { doc: doc(&raw)?, dwell_ms }
        }
        "ac_impression" => {
            list(&raw.candidates, "candidates")?;
            SearchEvent::AcImpression { prefix: prefix(&raw)? }
        }
        "ac_select" => {
            text(&raw.candidate, "candidate")?;
            SearchEvent::AcSelect { session, prefix: prefix(&raw)? }
        }
        "add_to_cart" => SearchEvent::AddToCart { doc: doc(&raw)? },
        "purchase" => SearchEvent::Purchase { doc: doc(&raw)? },
        other => {
            return Err(DecodeError::new(
                ErrorKind::UnknownType,
                format!(
                    "event_type '{other}' is not one of search_impression, click, dwell, ac_impression, ac_select, add_to_cart, purchase"
                ),
            ))
        }
    };
    Ok(Timed {
        id: EventId::of(event_id),
        ts,
        event,
    })
}

/// What each field of a search event must hold.
fn expect(field: &str) -> Expect {
    match field {
        "ts" | "dwell_ms" => Expect::Integer,
        "doc_ids" | "candidates" => Expect::TextList,
        "event_id" | "event_type" | "user_id" | "session_id" | "query" | "doc_id" | "prefix"
        | "candidate" => Expect::Text,
        _ => Expect::Any,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_normalise_before_hashing() {
        assert_eq!(
            normalize_query("  New\u{3000}York   PIZZA "),
            "new york pizza"
        );
        assert_eq!(QueryHash::of("New York"), QueryHash::of(" new   york"));
        // the hash is the first 16 hex digits of sha256("new york")
        let expect: String = Sha256::digest(b"new york")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(QueryHash::of("new york").to_string(), expect[..16]);
    }

    #[test]
    fn every_kind_of_bad_input_is_named() {
        let kind = |s: &str| decode(s.as_bytes()).unwrap_err().kind;
        assert_eq!(kind("{not json"), ErrorKind::Json);
        assert_eq!(kind("[1,2]"), ErrorKind::Json);
        assert_eq!(
            kind(
                r#"{"event_id":"e","event_type":"click","ts":1,"user_id":"u","session_id":null,"query":"q","doc_id":"d"}"#
            ),
            ErrorKind::MissingField
        );
        assert_eq!(
            kind(
                r#"{"event_id":"e","event_type":"click","ts":"yesterday","user_id":"u","session_id":"s","query":"q","doc_id":"d"}"#
            ),
            ErrorKind::WrongType
        );
        assert_eq!(
            kind(r#"{"event_id":"e","event_type":"hover","ts":1,"user_id":"u","session_id":"s"}"#),
            ErrorKind::UnknownType
        );
        assert_eq!(
            kind(
                r#"{"event_id":"e","event_type":"dwell","ts":1,"user_id":"u","session_id":"s","query":"q","doc_id":"d","dwell_ms":-5}"#
            ),
            ErrorKind::Range
        );
        let wrong = decode(br#"{"event_id":"e","event_type":"click","ts":1.5,"user_id":"u","session_id":"s","query":"q","doc_id":"d"}"#)
            .unwrap_err();
        assert!(wrong.message.contains("'ts'"), "{}", wrong.message);
    }

    #[test]
    fn a_click_decodes() {
        let e = decode(br#"{"event_id":"e1","event_type":"click","ts":1700000000000,"user_id":"u","session_id":"s","query":"Pizza","doc_id":"d9"}"#)
            .unwrap();
        assert_eq!(e.ts, 1_700_000_000_000);
        assert_eq!(e.id, EventId::of("e1"));
        assert_eq!(
            e.event,
            SearchEvent::Click {
                session: SessionId("s".into()),
                query: QueryHash::of("pizza"),
                doc: DocId("d9".into())
            }
        );
    }
}
