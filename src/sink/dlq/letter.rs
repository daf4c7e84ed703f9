//! One dead letter, as Kafka tools expect it: the original key, the original headers plus
//! Kafka Connect's error headers (`__connect.errors.*`), and as value either a JSON
//! envelope (the coordinates, the error, the payload as text, base64 or null) or, in the
//! `connect` format, the original bytes. Every letter fits the DLQ's record limit by
//! construction: a payload too large is cut in the envelope, which keeps its size and
//! SHA-256 (the whole bytes stay in the source topic). [`original`] reads a letter back
//! into the record it was, for `tidemark dlq replay`.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha2::{Digest, Sha256};
use tidemark_dataflows::contract::record::{Header, InvalidRecord};

use crate::clock::now_ms;
use crate::config::DlqFormat;

/// What a record costs besides its value and headers (batch and record framing).
pub(super) const FRAMING_BYTES: usize = 512;
/// Free text in an envelope or a header (error messages, source keys) is cut here.
pub(super) const TEXT_BYTES: usize = 1024;
/// The header naming a letter's value format (`envelope` or `connect`).
pub const FORMAT_HEADER: &str = "tidemark.dlq.format";
/// The header naming why the record was refused (`json`, `missing_field`, …).
pub const REASON_HEADER: &str = "tidemark.errors.reason";
/// Connect's headers carry a Java exception class; Tidemark's is this one name.
const EXCEPTION_CLASS: &str = "io.tidemark.InvalidRecordException";

/// A dead letter ready to send.
#[derive(Debug)]
pub struct Letter {
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone (the `connect` format of a record without a value).
    pub value: Option<Vec<u8>>,
    pub headers: Vec<Header>,
}

/// Who wrote a letter: Connect's `connector.name` and `class.name` headers.
pub struct Writer<'a> {
    pub job: &'a str,
    pub family: &'a str,
}

/// How many bytes `c` takes in a JSON string (as serde_json escapes it).
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The longest prefix of `s` (on a character boundary) whose JSON-escaped form takes at
/// most `budget` bytes, and whether it is all of `s`.
pub(super) fn cut(s: &str, budget: usize) -> (&str, bool) {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += escaped_len(c);
        if used > budget {
            return (&s[..i], false);
        }
    }
    (s, true)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn header_bytes(headers: &[Header]) -> usize {
    (headers.iter())
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 8)
        .sum()
}

/// Kafka Connect's error headers for `r`, with the reason and the format.
fn error_headers(r: &InvalidRecord, writer: &Writer, format: &str) -> Vec<Header> {
    let reason = r.error.kind.as_str();
    let message = format!("{reason}: {}", cut(&r.error.message, TEXT_BYTES).0);
    let trace = format!(
        "{EXCEPTION_CLASS}: {message}\n\tat {}-{}@{}",
        r.topic, r.partition, r.offset
    );
    let h = |k: &str, v: String| (k.to_string(), Some(v.into_bytes()));
    vec![
        h("__connect.errors.topic", r.topic.clone()),
        h("__connect.errors.partition", r.partition.to_string()),
        h("__connect.errors.offset", r.offset.to_string()),
        h("__connect.errors.connector.name", writer.job.to_string()),
        h("__connect.errors.stage", "VALUE_CONVERTER".into()),
        h(
            "__connect.errors.class.name",
            format!("io.tidemark.{}.Decoder", writer.family),
        ),
        h(
            "__connect.errors.exception.class.name",
            EXCEPTION_CLASS.into(),
        ),
        h("__connect.errors.exception.message", message),
        h("__connect.errors.exception.stacktrace", trace),
        h(REASON_HEADER, reason.into()),
        h(FORMAT_HEADER, format.into()),
    ]
}

/// The letter of an invalid record, in `format`, in at most `max` bytes. The original
/// headers go along unless they alone would take more than a quarter of the limit (then
/// the envelope says how many were left out).
pub fn letter(r: &InvalidRecord, writer: &Writer, format: DlqFormat, max: usize) -> Letter {
    let key = r.key.as_ref().filter(|k| k.len() <= max / 4).cloned();
    let key_bytes = key.as_ref().map_or(0, Vec::len);
    let originals = if header_bytes(&r.headers) <= max / 4 {
        r.headers.clone()
    } else {
        Vec::new()
    };
    if format == DlqFormat::Connect {
        let mut headers = originals.clone();
        headers.extend(error_headers(r, writer, "connect"));
        let size = FRAMING_BYTES + key_bytes + header_bytes(&headers) + r.payload.len();
        if size <= max && key.is_some() == r.key.is_some() && originals.len() == r.headers.len() {
            let value = (!r.tombstone).then(|| r.payload.clone());
            return Letter {
                key,
                value,
                headers,
            };
        }
    }
    let mut headers = originals;
    let dropped = Dropped {
        headers: r.headers.len() - headers.len(),
        key: r.key.is_some() && key.is_none(),
    };
    headers.extend(error_headers(r, writer, "envelope"));
    let budget = max.saturating_sub(FRAMING_BYTES + key_bytes + header_bytes(&headers));
    Letter {
        key,
        value: Some(envelope(r, dropped, budget)),
        headers,
    }
}

/// What of the original a letter could not carry (too large for the DLQ's limit).
struct Dropped {
    headers: usize,
    key: bool,
}

/// The JSON envelope in at most `budget` bytes: the payload whole when it fits, else its
/// first bytes (text, or base64 of bytes that are not UTF-8), with its size and SHA-256.
fn envelope(r: &InvalidRecord, dropped: Dropped, budget: usize) -> Vec<u8> {
    let text = std::str::from_utf8(&r.payload).ok();
    let source_key = r.key.as_deref().map(String::from_utf8_lossy);
    let mut envelope = serde_json::json!({
        "source_topic": r.topic,
        "source_partition": r.partition,
        "source_offset": r.offset,
        "source_timestamp_ms": r.append_ms,
        "source_key": source_key.as_deref().map(|k| cut(k, TEXT_BYTES).0),
        "error_type": r.error.kind.as_str(),
        "error_message": cut(&r.error.message, TEXT_BYTES).0,
        "payload": serde_json::Value::Null,
        "payload_bytes": r.payload.len(),
        "payload_sha256": hex(&Sha256::digest(&r.payload)),
        "payload_truncated": false,
        "failed_at_ms": now_ms(),
    });
    if dropped.headers > 0 {
        envelope["headers_dropped"] = dropped.headers.into();
    }
    if dropped.key {
        envelope["key_dropped"] = true.into();
    }
    let fixed = serde_json::to_vec(&envelope).expect("JSON").len() + 24;
    let room = budget.saturating_sub(fixed);
    let whole = match (r.tombstone, text) {
        (true, _) => true,
        (false, Some(text)) => {
            let (kept, whole) = cut(text, room);
            envelope["payload"] = kept.into();
            whole
        }
        (false, None) => {
            // base64 takes 4 bytes per 3
            let n = r.payload.len().min(room / 4 * 3);
            envelope["payload_base64"] = BASE64.encode(&r.payload[..n]).into();
            n == r.payload.len()
        }
    };
    envelope["payload_truncated"] = (!whole).into();
    serde_json::to_vec(&envelope).expect("JSON")
}

/// Why a letter cannot be replayed as the record it was.
#[derive(Debug, PartialEq, Eq)]
pub enum NotReplayable {
    /// Not a source record (an entity update a store refused).
    NotARecord,
    /// Its payload (or key, or headers) was cut to fit the DLQ: the whole record is in the
    /// source topic.
    Truncated,
    /// A letter of an older format whose payload was not UTF-8 (kept lossily).
    Damaged,
}

/// A record as produced: key, value (`None`: a tombstone), headers.
pub type Replayable = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<Header>);

/// The record a letter was: key, value (`None` for a tombstone), its original headers.
pub fn original(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[Header],
) -> Result<Replayable, NotReplayable> {
    let is_error = |k: &str| k.starts_with("__connect.errors.") || k.starts_with("tidemark.");
    let originals: Vec<Header> = (headers.iter())
        .filter(|(k, _)| !is_error(k))
        .cloned()
        .collect();
    let format = headers.iter().find(|(k, _)| k == FORMAT_HEADER);
    let format = format.and_then(|(_, v)| v.as_deref());
    if format == Some(b"connect".as_slice()) {
        return Ok((
            key.map(<[u8]>::to_vec),
            value.map(<[u8]>::to_vec),
            originals,
        ));
    }
    let envelope: serde_json::Value =
        serde_json::from_slice(value.unwrap_or_default()).map_err(|_| NotReplayable::Damaged)?;
    if envelope.get("source_topic").is_none() {
        return Err(NotReplayable::NotARecord);
    }
    let cut_short = |f: &str| envelope.get(f).is_some_and(|v| v != false && v != 0);
    if ["payload_truncated", "headers_dropped", "key_dropped"]
        .into_iter()
        .any(cut_short)
    {
        return Err(NotReplayable::Truncated);
    }
    let payload = if let Some(b64) = envelope["payload_base64"].as_str() {
        Some(BASE64.decode(b64).map_err(|_| NotReplayable::Damaged)?)
    } else if envelope["payload_utf8"] == false {
        return Err(NotReplayable::Damaged);
    } else {
        envelope["payload"].as_str().map(|p| p.as_bytes().to_vec())
    };
    Ok((key.map(<[u8]>::to_vec), payload, originals))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_dataflows::contract::record::{DecodeError, ErrorKind};

    const WRITER: Writer = Writer {
        job: "j",
        family: "search",
    };

    fn record(payload: Vec<u8>) -> InvalidRecord {
        InvalidRecord {
            topic: "t".into(),
            partition: 3,
            offset: 42,
            append_ms: 1,
            key: Some(vec![b'k'; 5000]),
            payload,
            error: DecodeError::new(ErrorKind::Json, "x".repeat(5000)),
            claimed_ts: None,
            headers: vec![
                ("trace".into(), Some(b"abc".to_vec())),
                ("empty".into(), None),
            ],
            tombstone: false,
        }
    }

    fn size(l: &Letter) -> usize {
        FRAMING_BYTES
            + l.key.as_ref().map_or(0, Vec::len)
            + header_bytes(&l.headers)
            + l.value.as_ref().map_or(0, Vec::len)
    }

    /// Control characters grow six-fold in JSON, base64 by a third: the envelope is cut to
    /// fit anyway, and says how large the payload was and what its hash is.
    #[test]
    fn a_letter_always_fits_its_limit() {
        for format in [DlqFormat::Envelope, DlqFormat::Connect] {
            for (payload, max) in [
                (vec![1u8; 300_000], 1_000_000),
                (vec![b'a'; 2_000_000], 1_000_000),
                (vec![0xff; 100_000], 64 * 1024),
                (
                    "\"é\\".repeat(100_000).into_bytes(),
                    crate::sink::dlq::MIN_RECORD_BYTES,
                ),
            ] {
                let l = letter(&record(payload.clone()), &WRITER, format, max);
                assert!(size(&l) <= max, "{} bytes for a limit of {max}", size(&l));
                let connect = l.headers.iter().any(|(k, v)| {
                    k == FORMAT_HEADER && v.as_deref() == Some(b"connect".as_slice())
                });
                if connect {
                    // the original bytes fit: they go as they are
                    assert!(format == DlqFormat::Connect && payload.len() < max);
                    assert_eq!(l.value.as_ref(), Some(&payload));
                    continue;
                }
                let e: serde_json::Value =
                    serde_json::from_slice(l.value.as_ref().unwrap()).unwrap();
                assert_eq!(e["payload_bytes"], payload.len());
                assert_eq!(e["payload_truncated"], true);
                assert_eq!(e["payload_sha256"], hex(&Sha256::digest(&payload)));
                assert_eq!(e["source_offset"], 42);
                assert!(e["error_message"].as_str().unwrap().len() <= TEXT_BYTES);
                match std::str::from_utf8(&payload) {
                    Ok(text) => assert!(text.starts_with(e["payload"].as_str().unwrap())),
                    Err(_) => {
                        let kept = BASE64
                            .decode(e["payload_base64"].as_str().unwrap())
                            .unwrap();
                        assert!(!kept.is_empty() && payload.starts_with(&kept));
                    }
                }
                assert_eq!(
                    original(l.key.as_deref(), l.value.as_deref(), &l.headers),
                    Err(NotReplayable::Truncated)
                );
            }
        }
    }

    /// Text, bytes and a tombstone come back as they were, key and headers too, in both
    /// formats.
    #[test]
    fn a_letter_reads_back_as_the_record_it_was() {
        for format in [DlqFormat::Envelope, DlqFormat::Connect] {
            for (payload, tombstone) in [
                (b"{\"bad\": json".to_vec(), false),
                (vec![0xff, 0, 0xfe, b'x'], false),
                (Vec::new(), true),
                (Vec::new(), false),
            ] {
                let mut r = record(payload.clone());
                r.key = Some(b"user-7".to_vec());
                r.tombstone = tombstone;
                let l = letter(&r, &WRITER, format, 1_000_000);
                let got = original(l.key.as_deref(), l.value.as_deref(), &l.headers).unwrap();
                let want_value = (!tombstone).then(|| payload.clone());
                assert_eq!(
                    got,
                    (
                        Some(b"user-7".to_vec()),
                        want_value.clone(),
                        r.headers.clone()
                    ),
                    "{format:?} {payload:?}"
                );
                let named = |k: &str| l.headers.iter().any(|(h, _)| h == k);
                assert!(named("__connect.errors.exception.stacktrace") && named(REASON_HEADER));
                if format == DlqFormat::Envelope {
                    let e: serde_json::Value =
                        serde_json::from_slice(l.value.as_ref().unwrap()).unwrap();
                    match (tombstone, std::str::from_utf8(&payload)) {
                        (true, _) => assert_eq!(e["payload"], serde_json::Value::Null),
                        (false, Ok(t)) => assert_eq!(e["payload"], t),
                        (false, Err(_)) => assert_eq!(e["payload_base64"], BASE64.encode(&payload)),
                    }
                } else {
                    assert_eq!(l.value, want_value);
                }
            }
        }
    }
}
