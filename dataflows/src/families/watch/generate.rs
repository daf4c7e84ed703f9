//! Synthetic traffic in seed 004's two schemas: viewers with tastes over clusters of items
//! are shown ranked slates (`impressions`) and watch some of what they were shown, now and
//! then an item they watched before (`watches`), with realistic completion (many abandon
//! early, many finish); plus duplicates, out-of-order and malformed records on request.

use std::collections::HashMap;

use rand::RngExt;
use rand_distr::{Distribution, Zipf};
use serde_json::json;

use crate::contract::dataflow::{GenerateSpec, Produced};
use crate::generate::{Base, Records, Traffic};

const ITEMS: usize = 20_000;
const CLUSTERS: usize = 40;
const USERS: u64 = 20_000;
const SURFACES: [&str; 3] = ["home", "up_next", "search"];

/// An item's id and its length in seconds (fixed per item).
pub fn item(i: usize) -> (String, u32) {
    (format!("v{i}"), 60 + (i as u32 * 37) % 3_540)
}

/// The viewer's clusters: a main taste and a second one.
fn tastes(user: u64) -> [usize; 2] {
    let h = user.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    [(h >> 7) as usize % CLUSTERS, (h >> 29) as usize % CLUSTERS]
}

pub struct WatchTraffic {
    impressions: String,
    watches: String,
    base: Base,
    rank: Zipf<f64>,
    users: Zipf<f64>,
    clock_ms: f64,
    /// Each viewer's last slate and last watches (for re-watches).
    shown: HashMap<u64, (Vec<usize>, Vec<usize>)>,
}

impl WatchTraffic {
    pub fn new(impressions: String, watches: String, spec: GenerateSpec) -> Traffic<Self> {
        Traffic(WatchTraffic {
            impressions,
            watches,
            rank: Zipf::new((ITEMS / CLUSTERS) as f64, 1.0).expect("valid Zipf parameters"),
            users: Zipf::new(USERS as f64, 0.8).expect("valid Zipf parameters"),
            clock_ms: spec.start_ms as f64,
            shown: HashMap::new(),
            base: Base::new(spec, 40),
        })
    }

    /// An item of one of the viewer's clusters, popular ones most often.
    fn pick(&mut self, user: u64) -> usize {
        let rng = &mut self.base.rng;
        let cluster = tastes(user)[usize::from(rng.random_bool(0.25))];
        let rank = self.rank.sample(rng) as usize - 1;
        (rank * CLUSTERS + cluster) % ITEMS
    }

    fn time(&mut self) -> u64 {
        let mean_gap = self.base.spec.mean_gap_ms();
        self.clock_ms += -mean_gap * (1.0 - self.base.rng.random::<f64>()).ln();
        let mut ts = self.clock_ms as u64;
        if self.base.rng.random_bool(self.base.spec.disorder_share) {
            ts = ts.saturating_sub(self.base.rng.random_range(1..900_000));
        }
        ts
    }

    fn id(&self, kind: &str) -> String {
        format!("{kind}_{}_{}", self.base.spec.seed, self.base.emitted)
    }

    fn slate(&mut self, user: u64, ts: u64) -> Produced {
        let n = self.base.rng.random_range(4..=12);
        let mut items: Vec<usize> = Vec::with_capacity(n);
        while items.len() < n {
            let i = self.pick(user);
            if !items.contains(&i) {
                items.push(i);
            }
        }
        let shown: Vec<_> = items
            .iter()
            .enumerate()
            .map(|(p, i)| json!({"item_id": item(*i).0, "position": p}))
            .collect();
        let rng = &mut self.base.rng;
        let surface = SURFACES[rng.random_range(0..SURFACES.len())];
        let event = json!({
            "event_id": self.id("imp"), "ts": ts, "user_id": format!("user_{user}"),
            "items": shown, "request_id": format!("req_{}", self.base.emitted), "surface": surface,
        });
        self.shown.entry(user).or_default().0 = items;
        Produced::new(
            &self.impressions,
            serde_json::to_vec(&event).expect("JSON"),
            ts,
        )
    }

    fn watch(&mut self, user: u64, ts: u64) -> Produced {
        let (slate, watched) = self.shown.get(&user).cloned().unwrap_or_default();
        let rng = &mut self.base.rng;
        let i = if !watched.is_empty() && rng.random_bool(0.1) {
            watched[rng.random_range(0..watched.len())] // a re-watch
        } else if !slate.is_empty() && rng.random_bool(0.8) {
            // the top of a slate most often
            let at = (rng.random::<f64>().powi(2) * slate.len() as f64) as usize;
            slate[at.min(slate.len() - 1)]
        } else {
            self.pick(user)
        };
        let (id, length) = item(i);
        let rng = &mut self.base.rng;
        // abandoned early, watched half way, or finished
        let percent: f64 = match rng.random::<f64>() {
            p if p < 0.35 => rng.random_range(0.0..40.0),
            p if p < 0.6 => rng.random_range(40.0..80.0),
            _ => rng.random_range(80.0..=100.0),
        };
        let percent = (percent * 10.0).round() / 10.0;
        let seconds = (length as f64 * percent / 100.0).round();
        let event = json!({
            "event_id": self.id("watch"), "ts": ts, "user_id": format!("user_{user}"),
            "item_id": id, "percent_watched": percent, "watch_time_sec": seconds,
        });
        let entry = self.shown.entry(user).or_default();
        entry.1.push(i);
        if entry.1.len() > 8 {
            entry.1.remove(0);
        }
        Produced::new(&self.watches, serde_json::to_vec(&event).expect("JSON"), ts)
    }
}

impl Records for WatchTraffic {
    fn base(&mut self) -> &mut Base {
        &mut self.base
    }
    fn valid(&mut self) -> Produced {
        let ts = self.time();
        let user = self.users.sample(&mut self.base.rng) as u64 - 1;
        let fresh = !self.shown.contains_key(&user);
        if fresh || self.base.rng.random_bool(0.4) {
            self.slate(user, ts)
        } else {
            self.watch(user, ts)
        }
    }
    fn malformed(&mut self) -> Produced {
        let ts = self.clock_ms as u64;
        let head = format!(
            r#""event_id":"bad_{}","user_id":"user_bad","ts":{ts}"#,
            self.base.emitted
        );
        let (topic, payload) = match self.base.rng.random_range(0..5) {
            0 => (
                &self.watches,
                format!(r#"{{{head},"percent_watched":50,"watch_time_sec":3}}"#),
            ),
            1 => (
                &self.watches,
                format!(r#"{{{head},"item_id":"v1","percent_watched":180,"watch_time_sec":3}}"#),
            ),
            2 => (
                &self.impressions,
                format!(
                    r#"{{{head},"items":[{{"item_id":"v1","position":0}},{{"item_id":"v2","position":0}}]}}"#
                ),
            ),
            3 => (&self.impressions, format!(r#"{{{head},"items":"v1,v2"}}"#)),
            _ => (&self.watches, "{\"event_id\":".to_string()),
        };
        Produced::new(topic, payload.into_bytes(), ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::record::RecordRef;
    use crate::families::watch::{decode::decode, WatchEvent};

    #[test]
    fn traffic_decodes_in_realistic_shares_and_the_malformed_share_is_refused() {
        let spec = GenerateSpec {
            events: 20_000,
            invalid_share: 0.01,
            ..GenerateSpec::default()
        };
        let (mut impressions, mut watches, mut invalid, mut finished) = (0, 0, 0, 0);
        let mut items = std::collections::BTreeSet::new();
        for p in WatchTraffic::new("impressions".into(), "watches".into(), spec) {
            let r = RecordRef {
                topic: &p.topic,
                partition: 0,
                offset: 0,
                append_ms: 0,
                key: None,
                payload: &p.payload,
                read_ms: None,
                headers: None,
                tombstone: false,
            };
            match decode(&r, p.topic == "watches") {
                Ok(e) => match e.event {
                    WatchEvent::Impression(i) => {
                        impressions += 1;
                        assert!((4..=12).contains(&i.items.len()));
                    }
                    WatchEvent::Watch(w) => {
                        watches += 1;
                        finished += usize::from(w.percent_watched.0 >= 80.0);
                        items.insert(w.item);
                    }
                },
                Err(_) => invalid += 1,
            }
        }
        assert!((120..320).contains(&invalid), "{invalid}");
        assert!(
            impressions > 5_000 && watches > 5_000,
            "{impressions} {watches}"
        );
        let share = finished as f64 / watches as f64;
        assert!(share > 0.3 && share < 0.5, "{share}");
        assert!(items.len() > 1_000, "{}", items.len());
    }
}
