//! The `commerce-events` wire format, seed 003's exactly: `event_id`, `user_id`,
//! `session_id`, `event_type`, `timestamp` (epoch ms), `context` (page, device, weather,
//! temporal, user, campaign; each field optional and typed when present) and `properties`
//! (`product_id` and `price` ≥ 0, required for the product events).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::{Action, Cents, CommerceEvent, Context, Item, ProductId, UserId};
use crate::contract::event::{EventId, Timed};
use crate::contract::record::{
    diagnose, epoch_ms, missing, required as text, DecodeError, ErrorKind, Expect,
};

/// The largest price taken (a typo of many digits is not a price); a shopper's prices
/// summed in hundredths stay far from overflowing.
const MAX_PRICE: f64 = 1e10;

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_type: Option<Cow<'a, str>>,
    timestamp: Option<i64>,
    context: Option<Value>,
    properties: Option<Value>,
}

/// What a field of `context` must hold.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Number,
    Bool,
}

/// Seed 003's context fields: `(group, field, kind)`.
const CONTEXT: [(&str, &str, Kind); 11] = [
    ("page", "url", Kind::Text),
    ("page", "referrer", Kind::Text),
    ("device", "type", Kind::Text),
    ("weather", "status", Kind::Text),
    ("weather", "temperature", Kind::Number),
    ("temporal", "time_of_day", Kind::Text),
    ("temporal", "day_of_week", Kind::Text),
    ("user", "login_status", Kind::Bool),
    ("user", "segment", Kind::Text),
    ("campaign", "utm_source", Kind::Text),
    ("campaign", "utm_campaign", Kind::Text),
];

fn wrong(field: &str, want: &str, got: &Value) -> DecodeError {
    DecodeError::new(
        ErrorKind::WrongType,
        format!("field '{field}' must be {want}, got {got}"),
    )
}

/// Every context field that is present holds its kind; groups and the context are objects.
fn check_context(context: &Value) -> Result<(), DecodeError> {
    let Some(groups) = context.as_object() else {
        return Err(wrong("context", "an object", context));
    };
    for (group, value) in groups.iter().filter(|(_, v)| !v.is_null()) {
        let known = CONTEXT.iter().any(|(g, _, _)| g == group);
        if known && !value.is_object() {
            return Err(wrong(&format!("context.{group}"), "an object", value));
        }
    }
    for (group, field, kind) in CONTEXT {
        let Some(v) = context.get(group).and_then(|g| g.get(field)) else {
            continue;
        };
        let (ok, want) = match kind {
            Kind::Text => (v.is_string(), "a string"),
            Kind::Number => (v.is_number(), "a number"),
            Kind::Bool => (v.is_boolean(), "true or false"),
        };
        if !v.is_null() && !ok {
            return Err(wrong(&format!("context.{group}.{field}"), want, v));
        }
    }
    Ok(())
}

/// `properties.product_id` and `properties.price`, when given; typed.
fn item_of(properties: Option<&Value>) -> Result<(Option<String>, Option<Cents>), DecodeError> {
    let Some(p) = properties.filter(|p| !p.is_null()) else {
        return Ok((None, None));
    };
    if !p.is_object() {
        return Err(wrong("properties", "an object", p));
    }
    let product = match p.get("product_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(wrong("properties.product_id", "a string", other)),
    };
    let price = match p.get("price") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if !(0.0..=MAX_PRICE).contains(&x) {
                return Err(DecodeError::new(
                    ErrorKind::Range,
                    format!("properties.price {n} is outside 0..={MAX_PRICE}"),
                ));
            }
            Some(cents(&n.to_string(), x))
        }
        Some(other) => return Err(wrong("properties.price", "a number", other)),
    };
    Ok((product, price))
}

/// A price in hundredths, rounded half up from its decimal text (`19.995` → 2000, which
/// binary floating point would round down); in exponent notation, from the float.
fn cents(text: &str, x: f64) -> Cents {
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !digits(whole) || !digits(fraction) || whole.len() > 15 {
        return Cents((x * 100.0).round() as i64);
    }
    let digit = |i: usize| {
        fraction
            .as_bytes()
            .get(i)
            .map_or(0, |b| i64::from(b - b'0'))
    };
    let up = i64::from(digit(2) >= 5);
    Cents(whole.parse::<i64>().unwrap_or(0) * 100 + digit(0) * 10 + digit(1) + up)
}

pub fn decode(payload: &[u8]) -> Result<Timed<CommerceEvent>, DecodeError> {
    let raw: Raw = serde_json::from_slice(payload).map_err(|e| diagnose(payload, e, expect))?;
    let event_id = text(&raw.event_id, "event_id")?;
    let user = UserId(no_bar(text(&raw.user_id, "user_id")?, "user_id")?.into());
    text(&raw.session_id, "session_id")?;
    let event_type = text(&raw.event_type, "event_type")?;
    let ts = epoch_ms(raw.timestamp, "timestamp")?;
    let action = Action::parse(event_type).ok_or_else(|| {
        let known: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        DecodeError::new(
            ErrorKind::UnknownType,
            format!(
                "event_type '{event_type}' is not one of {}",
                known.join(", ")
            ),
        )
    })?;
    let context = match raw.context.as_ref().filter(|c| !c.is_null()) {
        Some(context) => {
            check_context(context)?;
            // checked: each is a string when present
            let text = |group: &str, field: &str| {
                let v = context.get(group).and_then(|g| g.get(field));
                v.and_then(Value::as_str).map(str::to_string)
            };
            Context {
                device: text("device", "type"),
                referrer: text("page", "referrer"),
                utm_source: text("campaign", "utm_source"),
            }
        }
        None => Context::default(),
    };
    let (product, price) = item_of(raw.properties.as_ref())?;
    if let Some(p) = &product {
        no_bar(p, "properties.product_id")?;
    }
    let item = match (product, price) {
        (Some(product), Some(price)) => Some(Item {
            product: ProductId(product.into()),
            price,
        }),
        (None, _) if action.names_a_product() => return Err(missing("properties.product_id")),
        (_, None) if action.names_a_product() => return Err(missing("properties.price")),
        // a click or search naming a product is an interaction with it; its price, if
        // any, is not read
        (Some(product), None) => Some(Item {
            product: ProductId(product.into()),
            price: Cents(0),
        }),
        (None, _) => None,
    };
    Ok(Timed {
        id: EventId::of(event_id),
        ts,
        event: CommerceEvent {
            user,
            action,
            item,
            context,
        },
    })
}

/// An id the pattern topic's keys (`user|pattern|product|mark`) hold: without `|`, so two
/// patterns never share a key.
fn no_bar<'a>(id: &'a str, field: &str) -> Result<&'a str, DecodeError> {
    if id.contains('|') {
        return Err(DecodeError::new(
            ErrorKind::Range,
            format!("{field} {id:?} contains '|', which separates the parts of a pattern's key"),
        ));
    }
    Ok(id)
}

/// What each top-level field of a commerce event must hold.
fn expect(field: &str) -> Expect {
    match field {
        "timestamp" => Expect::Integer,
        "event_id" | "user_id" | "session_id" | "event_type" => Expect::Text,
        _ => Expect::Any,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed 003's example event.
    const SEED: &str = r#"{"event_id":"evt_1752320520123_abcdefg","user_id":"00000dbacae5abe5","session_id":"session_xyz_789","event_type":"add_to_cart","timestamp":1752320520123,"context":{"page":{"url":"/products/prod_123","referrer":"instagram.com"},"device":{"type":"mobile"},"weather":{"status":"sunny","temperature":26.5},"temporal":{"time_of_day":"afternoon","day_of_week":"saturday"},"user":{"login_status":true,"segment":"returning_visitor"},"campaign":{"utm_source":"instagram","utm_campaign":"summer_sale"}},"properties":{"product_id":"prod_123","price":89000}}"#;

    #[test]
    fn the_seed_example_decodes() {
        let e = decode(SEED.as_bytes()).unwrap();
        assert_eq!(e.ts, 1_752_320_520_123);
        assert_eq!(e.id, EventId::of("evt_1752320520123_abcdefg"));
        assert_eq!(e.event.action, Action::AddToCart);
        assert_eq!(
            e.event.item,
            Some(Item {
                product: ProductId("prod_123".into()),
                price: Cents(8_900_000)
            })
        );
        let context = &e.event.context;
        assert_eq!(context.device.as_deref(), Some("mobile"));
        assert_eq!(context.referrer.as_deref(), Some("instagram.com"));
        assert_eq!(context.utm_source.as_deref(), Some("instagram"));
    }

    #[test]
    fn every_kind_of_bad_input_is_named() {
        let bad = |from: &str, to: &str| {
            let e = decode(SEED.replace(from, to).as_bytes()).unwrap_err();
            (e.kind, e.message)
        };
        let (kind, msg) = bad(r#""login_status":true"#, r#""login_status":"yes""#);
        assert_eq!(kind, ErrorKind::WrongType);
        assert!(msg.contains("context.user.login_status"), "{msg}");
        let (kind, msg) = bad(r#""temperature":26.5"#, r#""temperature":"warm""#);
        assert_eq!(kind, ErrorKind::WrongType);
        assert!(msg.contains("context.weather.temperature"), "{msg}");
        assert_eq!(bad(r#""price":89000"#, r#""price":-1"#).0, ErrorKind::Range);
        assert_eq!(
            bad(r#""price":89000"#, r#""price":"89000""#).0,
            ErrorKind::WrongType
        );
        let (kind, msg) = bad(r#""product_id":"prod_123","#, "");
        assert_eq!(kind, ErrorKind::MissingField);
        assert!(msg.contains("properties.product_id"), "{msg}");
        assert_eq!(bad("add_to_cart", "wishlist").0, ErrorKind::UnknownType);
        assert_eq!(
            bad("1752320520123,", r#""yesterday","#).0,
            ErrorKind::WrongType
        );
        assert_eq!(
            bad(r#""device":{"type":"mobile"}"#, r#""device":"mobile""#).0,
            ErrorKind::WrongType
        );
        assert_eq!(decode(b"{not json").unwrap_err().kind, ErrorKind::Json);
        let (kind, msg) = bad("00000dbacae5abe5", "a|b");
        assert_eq!(kind, ErrorKind::Range);
        assert!(msg.contains("user_id"), "{msg}");
        let (kind, msg) = bad(r#""product_id":"prod_123""#, r#""product_id":"p|q""#);
        assert_eq!(kind, ErrorKind::Range);
        assert!(msg.contains("properties.product_id"), "{msg}");
    }

    #[test]
    fn a_search_needs_no_product_and_a_fraction_of_a_cent_rounds() {
        let search = SEED.replace("add_to_cart", "search").replace(
            r#","properties":{"product_id":"prod_123","price":89000}"#,
            "",
        );
        assert_eq!(decode(search.as_bytes()).unwrap().event.item, None);
        let click = SEED
            .replace("add_to_cart", "click")
            .replace(r#","price":89000"#, "");
        let item = decode(click.as_bytes()).unwrap().event.item.unwrap();
        assert_eq!(item.product, ProductId("prod_123".into()));
        let view = SEED
            .replace("add_to_cart", "view")
            .replace("89000", "19.995");
        let item = decode(view.as_bytes()).unwrap().event.item.unwrap();
        assert_eq!(item.price, Cents(2000));
    }
}
