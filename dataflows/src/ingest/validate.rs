//! A record's checks before and after the family decodes it: size, NUL, the family's
//! decoder (with its key limits), the clock's allowance.

use serde::Deserialize;

use super::IngestOptions;
use crate::contract::event::Timed;
use crate::contract::record::{holds_nul, DecodeError, ErrorKind, InvalidRecord, RecordRef};

/// The event `decode` makes of `rec`, or why the record is invalid; `now` is the wall
/// clock (epoch ms) the future skew is measured from.
pub(super) fn validate<E>(
    rec: &RecordRef<'_>,
    decode: &impl Fn(&RecordRef<'_>) -> Result<Timed<E>, DecodeError>,
    opts: &IngestOptions,
    now: u64,
) -> Result<Timed<E>, DecodeError> {
    if rec.payload.len() > opts.max_message_bytes {
        return Err(DecodeError::new(
            ErrorKind::Oversized,
            format!(
                "{} bytes exceed max_message_bytes = {}",
                rec.payload.len(),
                opts.max_message_bytes
            ),
        ));
    }
    if holds_nul(rec.payload) {
        return Err(DecodeError::new(
            ErrorKind::Range,
            "the record holds a NUL character (\\u0000), which no store takes in text",
        ));
    }
    let ev = decode(rec)?;
    let now = rec.read_ms.unwrap_or(now);
    if ev.ts > now + opts.max_future_skew_ms {
        return Err(DecodeError::new(
            ErrorKind::Range,
            format!(
                "ts {} is more than max_future_skew_ms = {} ahead of the clock ({now})",
                ev.ts, opts.max_future_skew_ms
            ),
        ));
    }
    Ok(ev)
}

/// An invalid record, with the `ts` it claims when that is readable and within the
/// clock's allowance.
pub(super) fn invalid(
    rec: &RecordRef<'_>,
    e: DecodeError,
    opts: &IngestOptions,
    now: u64,
) -> InvalidRecord {
    let mut r = InvalidRecord::new(rec, e);
    let now = rec.read_ms.unwrap_or(now);
    r.claimed_ts =
        claimed_ts(rec.payload).filter(|ts| *ts <= now.saturating_add(opts.max_future_skew_ms));
    r
}

/// The `ts` an invalid record carries, when it has a readable one.
fn claimed_ts(payload: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Ts {
        ts: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Ts>(payload).ok()?.ts?.as_u64()
}
