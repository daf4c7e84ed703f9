//! The wire formats of seed 002: `ad-events` (IMPRESSION, CLICK, CONVERSION with an
//! ISO-8601 `timestamp`) and `quality-score-updates`.
//!
//! Seed 002's events carry no `event_id`: an event's identity is its `event_id` when it has
//! one, else the fields `identity_fields` names (as parsed values, so a retry serialized
//! differently is a duplicate too), else its bytes, so a record delivered twice is a
//! duplicate and two real events never are (they differ at least in time or device).

use std::borrow::Cow;

use ordered_float::OrderedFloat;
use serde::Deserialize;

use super::{
    AdEvent, AdvertiserId, CampaignId, DeviceAd, Placement, ProductId, QualityUpdate, Slot,
};
use crate::contract::event::{EventId, Timed};
use crate::contract::record::{
    diagnose, missing, required_owned as text, DecodeError, ErrorKind, Expect,
};

#[derive(Deserialize)]
struct RawAd<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    device_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ad_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    campaign_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    advertiser_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    placement: Option<Cow<'a, str>>,
    #[serde(borrow)]
    category: Option<Cow<'a, str>>,
    actual_price: Option<f64>,
    revenue_amount: Option<f64>,
}

#[derive(Deserialize)]
struct RawQuality<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    product_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    category: Option<Cow<'a, str>>,
    quality_score: Option<f64>,
    previous_score: Option<f64>,
    #[serde(borrow)]
    update_reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    effective_from: Option<Cow<'a, str>>,
}

/// An ISO-8601 / RFC 3339 instant as epoch ms.
fn instant(v: &Option<Cow<'_, str>>, field: &str) -> Result<u64, DecodeError> {
    let s = text(v, field)?;
    let t = chrono::DateTime::parse_from_rfc3339(&s).map_err(|e| {
        DecodeError::new(
            ErrorKind::WrongType,
            format!("field '{field}' must be an ISO-8601 time like 2024-01-15T10:30:00Z, got '{s}': {e}"),
        )
    })?;
    u64::try_from(t.timestamp_millis()).map_err(|_| {
        DecodeError::new(
            ErrorKind::Range,
            format!("field '{field}' ({s}) is before 1970"),
        )
    })
}

/// A non-negative whole amount of money.
fn amount(v: Option<f64>, field: &str) -> Result<i64, DecodeError> {
    let x = v.ok_or_else(|| missing(field))?;
    if !(x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x < 1e15) {
        return Err(DecodeError::new(
            ErrorKind::Range,
            format!("field '{field}' must be a non-negative whole amount, got {x}"),
        ));
    }
    Ok(x as i64)
}

/// `event_id` if there is one, else the record's bytes.
fn id_or_bytes(event_id: &Option<Cow<'_, str>>, payload: &[u8]) -> EventId {
    match event_id.as_deref() {
        Some(id) if !id.is_empty() => EventId::of(id),
        _ => EventId(xxhash_rust::xxh3::xxh3_128(payload)),
    }
}

/// A field an ad event's identity can be built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdField {
    EventType,
    Timestamp,
    DeviceId,
    AdId,
    CampaignId,
    AdvertiserId,
    Placement,
    Category,
    ActualPrice,
    RevenueAmount,
}

impl IdField {
    /// Each field with its name in the event.
    const ALL: [(&'static str, IdField); 10] = [
        ("event_type", IdField::EventType),
        ("timestamp", IdField::Timestamp),
        ("device_id", IdField::DeviceId),
        ("ad_id", IdField::AdId),
        ("campaign_id", IdField::CampaignId),
        ("advertiser_id", IdField::AdvertiserId),
        ("placement", IdField::Placement),
        ("category", IdField::Category),
        ("actual_price", IdField::ActualPrice),
        ("revenue_amount", IdField::RevenueAmount),
    ];
    pub fn parse(name: &str) -> Option<IdField> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }
    /// The names `identity_fields` accepts.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Self::ALL.iter().map(|(n, _)| *n)
    }
}

/// `event_id`, else the named fields' values (the instant as epoch ms, amounts as numbers:
/// how they were written does not matter), else the record's bytes.
fn identity(raw: &RawAd<'_>, ts: u64, fields: &[IdField], payload: &[u8]) -> EventId {
    if fields.is_empty() || raw.event_id.as_deref().is_some_and(|id| !id.is_empty()) {
        return id_or_bytes(&raw.event_id, payload);
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(b"fields");
    // each part with its length: no two lists of parts hash the same bytes, whatever the
    // strings hold; an amount as its parsed value (1200 and 1200.0 are one amount)
    let mut put = |part: &[u8]| {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    };
    fn text<'a>(v: &'a Option<Cow<'_, str>>) -> &'a [u8] {
        v.as_deref().unwrap_or_default().as_bytes()
    }
    let amount = |v: Option<f64>| v.map(|x| x.to_bits().to_le_bytes());
    for f in fields {
        match f {
            IdField::EventType => put(text(&raw.event_type)),
            IdField::Timestamp => put(&ts.to_le_bytes()),
            IdField::DeviceId => put(text(&raw.device_id)),
            IdField::AdId => put(text(&raw.ad_id)),
            IdField::CampaignId => put(text(&raw.campaign_id)),
            IdField::AdvertiserId => put(text(&raw.advertiser_id)),
            IdField::Placement => put(text(&raw.placement)),
            IdField::Category => put(text(&raw.category)),
            IdField::ActualPrice => put(amount(raw.actual_price).as_ref().map_or(&[], |b| b)),
            IdField::RevenueAmount => put(amount(raw.revenue_amount).as_ref().map_or(&[], |b| b)),
        }
    }
    EventId(h.digest128())
}

pub fn decode(payload: &[u8], identity_fields: &[IdField]) -> Result<Timed<AdEvent>, DecodeError> {
    let raw: RawAd = serde_json::from_slice(payload).map_err(|e| diagnose(payload, e, expect))?;
    let event_type = text(&raw.event_type, "event_type")?;
    let ts = instant(&raw.timestamp, "timestamp")?;
    let placement = text(&raw.placement, "placement")?;
    let slot = Slot {
        campaign: CampaignId(text(&raw.campaign_id, "campaign_id")?),
        placement: Placement::parse(&placement).ok_or_else(|| {
            DecodeError::new(
                ErrorKind::Range,
                format!(
                    "placement '{placement}' is not one of HOME, CATEGORY, PRODUCT_DETAIL, SEARCH"
                ),
            )
        })?,
        category: text(&raw.category, "category")?,
    };
    let advertiser = AdvertiserId(text(&raw.advertiser_id, "advertiser_id")?);
    let pair = || -> Result<DeviceAd, DecodeError> {
        Ok(DeviceAd::of(
            &text(&raw.device_id, "device_id")?,
            &text(&raw.ad_id, "ad_id")?,
        ))
    };
    let event = match event_type.as_str() {
        "IMPRESSION" => AdEvent::Impression(slot),
        "CLICK" => AdEvent::Click {
            pair: pair()?,
            price: amount(raw.actual_price, "actual_price")?,
            slot,
            advertiser,
        },
        "CONVERSION" => AdEvent::Conversion {
            pair: pair()?,
            revenue: amount(raw.revenue_amount, "revenue_amount")?,
            slot,
        },
        other => {
            return Err(DecodeError::new(
                ErrorKind::UnknownType,
                format!("event_type '{other}' is not one of IMPRESSION, CLICK, CONVERSION"),
            ))
        }
    };
    Ok(Timed {
        id: identity(&raw, ts, identity_fields, payload),
        ts,
        event,
    })
}

pub fn decode_quality(payload: &[u8]) -> Result<Timed<AdEvent>, DecodeError> {
    let raw: RawQuality =
        serde_json::from_slice(payload).map_err(|e| diagnose(payload, e, expect))?;
    let ts = instant(&raw.timestamp, "timestamp")?;
    let score = |v: Option<f64>, field: &str| -> Result<Option<OrderedFloat<f64>>, DecodeError> {
        match v {
            None => Ok(None),
            Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(OrderedFloat(x))),
            Some(x) => Err(DecodeError::new(
                ErrorKind::Range,
                format!("field '{field}' must be a non-negative number, got {x}"),
            )),
        }
    };
    let effective_from = match raw.effective_from.as_deref() {
        None | Some("") => ts,
        Some(_) => instant(&raw.effective_from, "effective_from")?,
    };
    let update = QualityUpdate {
        product: ProductId(text(&raw.product_id, "product_id")?),
        effective_from,
        score: score(raw.quality_score, "quality_score")?
            .ok_or_else(|| missing("quality_score"))?,
        previous: score(raw.previous_score, "previous_score")?,
        category: raw.category.as_deref().unwrap_or_default().to_string(),
        reason: raw.update_reason.as_deref().unwrap_or_default().to_string(),
    };
    Ok(Timed {
        id: id_or_bytes(&raw.event_id, payload),
        ts,
        event: AdEvent::Quality(update),
    })
}

/// What each field of an ad event or a quality update must hold.
fn expect(field: &str) -> Expect {
    match field {
        "actual_price" | "bid_price" | "revenue_amount" | "quality_score" | "previous_score" => {
            Expect::Number
        }
        "event_id" | "event_type" | "timestamp" | "device_id" | "ad_id" | "campaign_id"
        | "advertiser_id" | "placement" | "category" | "product_id" | "update_reason"
        | "effective_from" => Expect::Text,
        _ => Expect::Any,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLICK: &str = r#"{"event_type":"CLICK","timestamp":"2024-01-15T10:30:00Z","device_id":"device_12345","session_id":"session_67890","ad_id":"ad_001","campaign_id":"campaign_100","advertiser_id":"advertiser_50","product_id":"product_200","placement":"HOME","bid_price":1500,"actual_price":1200,"experiment_key":"mobile_ui","experiment_var":"B","search_term":"노트북","category":"전자제품/컴퓨터","revenue_amount":null,"order_id":null}"#;

    fn kind(json: &str) -> ErrorKind {
        decode(json.as_bytes(), &[]).unwrap_err().kind
    }

    #[test]
    fn decodes_seed_002_and_rejects_with_the_right_kind() {
        let e = decode(CLICK.as_bytes(), &[]).unwrap();
        assert_eq!(e.ts, 1_705_314_600_000);
        let AdEvent::Click { price, slot, .. } = &e.event else {
            panic!("a click")
        };
        assert_eq!((*price, slot.placement), (1200, Placement::Home));
        // the same bytes are the same event; other bytes another
        assert_eq!(decode(CLICK.as_bytes(), &[]).unwrap().id, e.id);
        assert_ne!(
            decode(CLICK.replace("12345", "12346").as_bytes(), &[])
                .unwrap()
                .id,
            e.id
        );
        assert_eq!(
            kind(&CLICK.replace("\"HOME\"", "\"SIDEBAR\"")),
            ErrorKind::Range
        );
        assert_eq!(kind(&CLICK.replace("1200", "-5")), ErrorKind::Range);
        assert_eq!(kind(&CLICK.replace("1200", "\"x\"")), ErrorKind::WrongType);
        assert_eq!(
            kind(&CLICK.replace("2024-01-15T10:30:00Z", "yesterday")),
            ErrorKind::WrongType
        );
        assert_eq!(
            kind(&CLICK.replace("\"ad_001\"", "null")),
            ErrorKind::MissingField
        );
        assert_eq!(
            kind(&CLICK.replace("\"CLICK\"", "\"VIEW\"")),
            ErrorKind::UnknownType
        );
        assert_eq!(kind("[1]"), ErrorKind::Json);
        // a conversion needs its revenue
        assert_eq!(
            kind(&CLICK.replace("\"CLICK\"", "\"CONVERSION\"")),
            ErrorKind::MissingField
        );
        // an impression needs no device or price
        let imp = r#"{"event_type":"IMPRESSION","timestamp":"2024-01-15T10:30:00.250+09:00","campaign_id":"c","advertiser_id":"a","placement":"SEARCH","category":"x"}"#;
        assert_eq!(decode(imp.as_bytes(), &[]).unwrap().ts, 1_705_282_200_250);
    }

    #[test]
    fn decodes_quality_updates() {
        let q = r#"{"timestamp":"2024-01-15T10:45:00Z","product_id":"product_200","category":"전자제품","quality_score":8.5,"previous_score":7.2,"score_factors":{"click_rate":8.0},"update_reason":"MANUAL_ADJUSTMENT","effective_from":"2024-01-15T11:00:00Z"}"#;
        let e = decode_quality(q.as_bytes()).unwrap();
        let AdEvent::Quality(u) = &e.event else {
            panic!("a quality update")
        };
        assert_eq!(u.effective_from - e.ts, 15 * 60_000);
        assert_eq!(u.score.0, 8.5);
        let bad = q.replace("8.5", "-1");
        assert_eq!(
            decode_quality(bad.as_bytes()).unwrap_err().kind,
            ErrorKind::Range
        );
    }

    /// A click retried with another serialization (the fields reordered, the time written
    /// with milliseconds, the price as 1200.0) is another record but the same event when
    /// the identity is built from its fields; with bytes it is not.
    #[test]
    fn an_identity_from_fields_ignores_how_the_event_was_written() {
        let fields: Vec<IdField> = ["device_id", "ad_id", "event_type", "timestamp"]
            .iter()
            .map(|f| IdField::parse(f).unwrap())
            .collect();
        let retried = r#"{"actual_price":1200.0,"timestamp":"2024-01-15T10:30:00.000Z","event_type":"CLICK","ad_id":"ad_001","device_id":"device_12345","campaign_id":"campaign_100","advertiser_id":"advertiser_50","placement":"HOME","category":"전자제품/컴퓨터"}"#;
        let id = |json: &str, f: &[IdField]| decode(json.as_bytes(), f).unwrap().id;
        assert_eq!(id(CLICK, &fields), id(retried, &fields));
        assert_ne!(id(CLICK, &[]), id(retried, &[]));
        // another millisecond or device is another event
        let later = retried.replace("00.000Z", "00.001Z");
        assert_ne!(id(&later, &fields), id(CLICK, &fields));
        let other = retried.replace("device_12345", "device_9");
        assert_ne!(id(&other, &fields), id(CLICK, &fields));
        // an event_id still wins
        let with_id = retried.replace("{", r#"{"event_id":"x1","#);
        assert_eq!(id(&with_id, &fields), EventId::of("x1"));
        // parts are length-prefixed: moving a character across two fields is another event
        let split = |d: &str, a: &str| {
            let json = retried.replace("device_12345", d).replace("ad_001", a);
            id(&json, &fields)
        };
        assert_ne!(split("x\\u001fy", "z"), split("x", "y\\u001fz"));
        assert_eq!(IdField::parse("colour"), None);
    }
}
