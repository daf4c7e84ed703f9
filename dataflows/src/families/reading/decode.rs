//! The `reading-events` wire format: JSON objects with `event_id, event_type (enter,
//! scroll, complete, exit), ts (epoch ms), user_id, session_id, episode_id, country,
//! device, platform`, optional `tz` (IANA), optional `experiment_name` with
//! `experiment_group`, and `scroll_pct` (0..=100) on a scroll.

use std::borrow::Cow;

use serde::Deserialize;

use super::{country_zone, Action, Arm, Depth, EpisodeId, Reader, ReadingEvent, SessionId, UserId};
use crate::contract::event::{EventId, Timed};
use crate::contract::record::{
    diagnose, epoch_ms, missing, required_owned as text, DecodeError, ErrorKind, Expect,
};

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
    episode_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    country: Option<Cow<'a, str>>,
    #[serde(borrow)]
    device: Option<Cow<'a, str>>,
    #[serde(borrow)]
    platform: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tz: Option<Cow<'a, str>>,
    #[serde(borrow)]
    experiment_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    experiment_group: Option<Cow<'a, str>>,
    scroll_pct: Option<f64>,
}

pub fn decode(payload: &[u8]) -> Result<Timed<ReadingEvent>, DecodeError> {
    let raw: Raw = serde_json::from_slice(payload).map_err(|e| diagnose(payload, e, expect))?;
    let event_id = text(&raw.event_id, "event_id")?;
    let event_type = text(&raw.event_type, "event_type")?;
    let ts = epoch_ms(raw.ts, "ts")?;
    let action = match event_type.as_str() {
        "enter" => Action::Enter,
        "complete" => Action::Complete,
        "exit" => Action::Exit,
        "scroll" => {
            let pct = raw.scroll_pct.ok_or_else(|| missing("scroll_pct"))?;
            if !(0.0..=100.0).contains(&pct) {
                return Err(DecodeError::new(
                    ErrorKind::Range,
                    format!("scroll_pct {pct} is outside 0..=100"),
                ));
            }
            Action::Scroll(Depth::from_pct(pct))
        }
        other => {
            return Err(DecodeError::new(
                ErrorKind::UnknownType,
                format!("event_type '{other}' is not one of enter, scroll, complete, exit"),
            ))
        }
    };
    let country = text(&raw.country, "country")?;
    let tz = match raw.tz.as_deref() {
        None | Some("") => country_zone(&country).map(str::to_string),
        Some(tz) => {
            if tz.parse::<chrono_tz::Tz>().is_err() {
                return Err(DecodeError::new(
                    ErrorKind::Range,
                    format!("tz '{tz}' is not an IANA time zone"),
                ));
            }
            Some(tz.to_string())
        }
    };
    let arm = match (&raw.experiment_name, &raw.experiment_group) {
        (None, None) => None,
        _ => Some(Arm {
            experiment: text(&raw.experiment_name, "experiment_name")?.into(),
            group: text(&raw.experiment_group, "experiment_group")?.into(),
        }),
    };
    let reader = Reader {
        user: UserId(text(&raw.user_id, "user_id")?.into()),
        episode: EpisodeId(text(&raw.episode_id, "episode_id")?.into()),
        country: country.into(),
        device: text(&raw.device, "device")?.into(),
        platform: text(&raw.platform, "platform")?.into(),
        tz: tz.map(Into::into),
        arm,
    };
    Ok(Timed {
        id: EventId::of(&event_id),
        ts,
        event: ReadingEvent {
            session: SessionId(text(&raw.session_id, "session_id")?.into()),
            action,
            reader,
        },
    })
}

/// What each field of a reading event must hold.
fn expect(field: &str) -> Expect {
    match field {
        "ts" => Expect::Integer,
        "scroll_pct" => Expect::Number,
        _ => Expect::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(json: &str) -> ErrorKind {
        decode(json.as_bytes()).unwrap_err().kind
    }

    #[test]
    fn decodes_and_rejects_with_the_right_kind() {
        let ok = r#"{"event_id":"e1","event_type":"scroll","ts":1767225600000,"user_id":"u","session_id":"s","episode_id":"ep","country":"KR","device":"phone","platform":"ios","scroll_pct":42.5,"experiment_name":"x","experiment_group":"b"}"#;
        let e = decode(ok.as_bytes()).unwrap();
        assert_eq!(e.event.action, Action::Scroll(Depth(42_500)));
        assert_eq!(e.event.reader.tz.as_deref(), Some("Asia/Seoul"));
        let fine = ok.replace("42.5", "52.2549");
        assert_eq!(
            decode(fine.as_bytes()).unwrap().event.action,
            Action::Scroll(Depth(52_255))
        );
        let nz = ok.replace("\"KR\"", "\"NZ\"");
        let zone = decode(nz.as_bytes()).unwrap().event.reader.tz;
        assert_eq!(zone.as_deref(), Some("Pacific/Auckland"));
        let nowhere = ok.replace("\"KR\"", "\"XX\"");
        assert_eq!(decode(nowhere.as_bytes()).unwrap().event.reader.tz, None);
        assert_eq!(e.event.reader.arm.as_ref().unwrap().group, "b");
        assert_eq!(kind(&ok.replace("42.5", "150")), ErrorKind::Range);
        assert_eq!(kind(&ok.replace("42.5", "\"x\"")), ErrorKind::WrongType);
        assert_eq!(kind(&ok.replace("\"KR\"", "null")), ErrorKind::MissingField);
        assert_eq!(
            kind(&ok.replace("\"scroll\"", "\"jump\"")),
            ErrorKind::UnknownType
        );
        assert_eq!(
            kind(&ok.replace(",\"experiment_group\":\"b\"", "")),
            ErrorKind::MissingField
        );
        assert_eq!(
            kind(&ok.replace("\"device\"", "\"tz\":\"Mars/Base\",\"device\"")),
            ErrorKind::Range
        );
        assert_eq!(kind("{"), ErrorKind::Json);
    }
}
