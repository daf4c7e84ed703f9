//! Synthetic storefront traffic in seed 003's schema: shoppers who browse within a
//! category (Zipf-popular products at their own price levels), compare, add to cart,
//! sometimes remove or buy, click and search; contexts varied; plus duplicates,
//! out-of-order and malformed records on request.

use rand::RngExt;
use rand_distr::{Distribution, Zipf};
use serde_json::json;

use crate::contract::dataflow::{GenerateSpec, Produced};
use crate::generate::{Base, Records, Traffic};

pub const CATEGORIES: [&str; 8] = [
    "shoes",
    "outerwear",
    "kitchen",
    "books",
    "toys",
    "audio",
    "beauty",
    "garden",
];
const PRODUCTS: usize = 5_000;
const SHOPPERS: u64 = 20_000;
const DEVICES: [&str; 3] = ["mobile", "desktop", "tablet"];
const REFERRERS: [&str; 4] = ["direct", "google.com", "instagram.com", "naver.com"];
const SOURCES: [&str; 3] = ["instagram", "google", "newsletter"];
const WEATHER: [&str; 3] = ["sunny", "rainy", "cloudy"];
const SEGMENTS: [&str; 2] = ["new_visitor", "returning_visitor"];
const CAMPAIGNS: [&str; 2] = ["summer_sale", "new_arrivals"];

/// A product's category and price (in hundredths), fixed per product.
pub fn product(i: usize) -> (String, &'static str, i64) {
    let category = CATEGORIES[i % CATEGORIES.len()];
    let level = [990, 4_900, 19_900, 89_000][(i / CATEGORIES.len()) % 4];
    (format!("prod_{i}"), category, level + (i as i64 % 97) * 10)
}

/// The catalog that goes with the traffic: `products(product_id, category)`.
pub fn catalog() -> Vec<Vec<String>> {
    (0..PRODUCTS)
        .map(|i| {
            let (id, category, _) = product(i);
            vec![id, category.to_string()]
        })
        .collect()
}

/// Shoppers browsing at once: their events interleave, so a shopper's events are spread
/// over minutes of event time at realistic rates.
const CONCURRENT: usize = 48;

/// A shopper being followed: what they looked at and what is in their cart.
struct Shopper {
    user: String,
    session: String,
    seen: Vec<usize>,
    cart: Vec<usize>,
    left: u32,
}

pub struct CommerceTraffic {
    topic: String,
    base: Base,
    rank: Zipf<f64>,
    clock_ms: f64,
    shoppers: Vec<Shopper>,
    serial: u64,
}

impl CommerceTraffic {
    pub fn new(topic: String, spec: GenerateSpec) -> Traffic<Self> {
        Traffic(CommerceTraffic {
            topic,
            rank: Zipf::new(PRODUCTS as f64, 1.05).expect("valid Zipf parameters"),
            clock_ms: spec.start_ms as f64,
            shoppers: Vec::new(),
            serial: 0,
            base: Base::new(spec, 40),
        })
    }

    /// A product to view: mostly in the category of the shopper's last view.
    fn browse(&mut self, last: Option<usize>) -> usize {
        let rank = self.rank.sample(&mut self.base.rng) as usize - 1;
        match last {
            Some(last) if self.base.rng.random_bool(0.7) => {
                (last % CATEGORIES.len() + rank * CATEGORIES.len()) % PRODUCTS
            }
            _ => rank,
        }
    }

    /// The next (user, session, action, product) of one of the shoppers browsing: views
    /// within a category, carts of what they saw, removals and purchases of what is in the
    /// cart (a purchase empties that line), clicks and searches.
    fn step(&mut self) -> (String, String, &'static str, Option<usize>) {
        while self.shoppers.len() < CONCURRENT {
            self.serial += 1;
            let rng = &mut self.base.rng;
            self.shoppers.push(Shopper {
                user: format!("user_{}", rng.random_range(0..SHOPPERS)),
                session: format!("session_{}_{}", self.base.spec.seed, self.serial),
                seen: Vec::new(),
                cart: Vec::new(),
                left: rng.random_range(4..40),
            });
        }
        let i = self.base.rng.random_range(0..self.shoppers.len());
        let p: f64 = self.base.rng.random();
        let (seen, cart) = (
            !self.shoppers[i].seen.is_empty(),
            !self.shoppers[i].cart.is_empty(),
        );
        let action = match p {
            _ if !seen => ["view", "search"][usize::from(p < 0.2)],
            _ if p < 0.50 => "view",
            _ if p < 0.65 => "add_to_cart",
            _ if p < 0.69 && cart => "remove_from_cart",
            _ if p < 0.76 && cart => "purchase",
            _ if p < 0.90 => "click",
            _ => "search",
        };
        let pick =
            |rng: &mut rand::rngs::StdRng, from: &[usize]| from[rng.random_range(0..from.len())];
        let product = match action {
            "view" => {
                let last = self.shoppers[i].seen.last().copied();
                let p = self.browse(last);
                self.shoppers[i].seen.push(p);
                Some(p)
            }
            "add_to_cart" | "click" => {
                let p = pick(&mut self.base.rng, &self.shoppers[i].seen);
                if action == "add_to_cart" {
                    self.shoppers[i].cart.push(p);
                }
                Some(p)
            }
            "remove_from_cart" | "purchase" => {
                let s = &mut self.shoppers[i];
                let at = self.base.rng.random_range(0..s.cart.len());
                Some(s.cart.swap_remove(at))
            }
            _ => None,
        };
        let s = &mut self.shoppers[i];
        let (user, session) = (s.user.clone(), s.session.clone());
        s.left -= 1;
        if s.left == 0 {
            self.shoppers.swap_remove(i);
        }
        (user, session, action, product)
    }
}

/// `temporal.time_of_day` and `temporal.day_of_week` of an instant (UTC).
fn temporal(ts: u64) -> (&'static str, String) {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::from_timestamp_millis(ts as i64).unwrap_or_default();
    let part = match t.hour() {
        6..=11 => "morning",
        12..=17 => "afternoon",
        18..=21 => "evening",
        _ => "night",
    };
    (part, t.weekday().to_string().to_lowercase())
}

impl Records for CommerceTraffic {
    fn base(&mut self) -> &mut Base {
        &mut self.base
    }
    fn valid(&mut self) -> Produced {
        let mean_gap = self.base.spec.mean_gap_ms();
        self.clock_ms += -mean_gap * (1.0 - self.base.rng.random::<f64>()).ln();
        let mut ts = self.clock_ms as u64;
        if self.base.rng.random_bool(self.base.spec.disorder_share) {
            ts = ts.saturating_sub(self.base.rng.random_range(1..900_000));
        }
        let (user, session, action, item) = self.step();
        let (time_of_day, day_of_week) = temporal(ts);
        let rng = &mut self.base.rng;
        let mut event = json!({
            "event_id": format!("evt_{}_{}", self.base.spec.seed, self.base.emitted),
            "user_id": user,
            "session_id": session,
            "event_type": action,
            "timestamp": ts,
            "context": {
                "page": {"url": item.map_or("/search".to_string(), |i| format!("/products/prod_{i}")),
                         "referrer": REFERRERS[rng.random_range(0..REFERRERS.len())]},
                "device": {"type": DEVICES[rng.random_range(0..DEVICES.len())]},
                "weather": {"status": WEATHER[rng.random_range(0..WEATHER.len())],
                            "temperature": rng.random_range(-50..350) as f64 / 10.0},
                "temporal": {"time_of_day": time_of_day, "day_of_week": day_of_week},
                "user": {"login_status": rng.random_bool(0.6),
                         "segment": SEGMENTS[rng.random_range(0..SEGMENTS.len())]},
                "campaign": {"utm_source": SOURCES[rng.random_range(0..SOURCES.len())],
                             "utm_campaign": CAMPAIGNS[rng.random_range(0..CAMPAIGNS.len())]},
            },
        });
        if let Some(i) = item {
            let (id, _, cents) = product(i);
            let price = cents as f64 / 100.0;
            event["properties"] = json!({"product_id": id, "price": price});
        }
        let payload = serde_json::to_vec(&event).expect("JSON");
        Produced::new(&self.topic, payload, ts)
    }
    fn malformed(&mut self) -> Produced {
        let ts = self.clock_ms as u64;
        let head = format!(
            r#""event_id":"bad_{}","user_id":"user_bad","session_id":"s","timestamp":{ts}"#,
            self.base.emitted
        );
        let payload = match self.base.rng.random_range(0..5) {
            0 => format!(r#"{{{head},"event_type":"wishlist"}}"#),
            1 => format!(
                r#"{{{head},"event_type":"view","properties":{{"product_id":"p","price":-3}}}}"#
            ),
            2 => format!(r#"{{{head},"event_type":"add_to_cart"}}"#),
            3 => format!(
                r#"{{{head},"event_type":"search","context":{{"user":{{"login_status":"yes"}}}}}}"#
            ),
            _ => "{\"event_id\":".to_string(),
        };
        Produced::new(&self.topic, payload.into_bytes(), ts)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::families::commerce::decode::decode;

    #[test]
    fn traffic_decodes_in_realistic_shares_and_the_malformed_share_is_refused() {
        let spec = GenerateSpec {
            events: 20_000,
            invalid_share: 0.01,
            ..GenerateSpec::default()
        };
        let (mut actions, mut invalid) = (BTreeMap::<&str, u32>::new(), 0);
        let mut products = std::collections::BTreeSet::new();
        for p in CommerceTraffic::new("commerce-events".into(), spec) {
            match decode(&p.payload) {
                Ok(e) => {
                    *actions.entry(e.event.action.as_str()).or_default() += 1;
                    if let Some(item) = e.event.item {
                        products.insert(item.product);
                    }
                }
                Err(_) => invalid += 1,
            }
        }
        assert!((120..320).contains(&invalid), "{invalid}");
        let share = |a: &str| actions.get(a).copied().unwrap_or(0) as f64 / 20_000.0;
        assert!(share("view") > 0.4 && share("view") < 0.75, "{actions:?}");
        for a in [
            "add_to_cart",
            "remove_from_cart",
            "purchase",
            "click",
            "search",
        ] {
            assert!(share(a) > 0.01, "{a}: {actions:?}");
        }
        assert!(products.len() > 500, "{}", products.len());
    }
}
