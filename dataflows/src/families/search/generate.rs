//! Synthetic search traffic: concurrent sessions that type a prefix, maybe pick a
//! suggestion, search, click down a ranked list (Zipf-popular queries and documents), dwell,
//! add to cart and buy; plus duplicates, out-of-order and malformed records on request.

use std::collections::VecDeque;

use rand::RngExt;
use rand_distr::{Distribution, Zipf};
use serde_json::json;

use crate::contract::dataflow::{GenerateSpec, Produced};
use crate::contract::time::DAY;
use crate::generate::{Base, Records, Traffic};

const WORDS: &[&str] = &[
    "red", "wireless", "running", "shoes", "coffee", "grinder", "vintage", "lamp", "organic",
    "tea", "phone", "case", "kids", "bike", "helmet", "winter", "jacket", "gaming", "chair",
    "desk", "steel", "bottle", "yoga", "mat", "leather", "wallet", "smart", "watch", "camping",
    "tent", "Café", "crème", "über", "straße",
];
const N_QUERIES: usize = 2_000;
const N_DOCS: usize = 20_000;
const RESULTS: usize = 10;
const CONCURRENT_SESSIONS: usize = 64;

/// One step of a session's script.
enum Step {
    AcImpression {
        prefix: String,
    },
    AcSelect {
        prefix: String,
        candidate: String,
    },
    Impression {
        query: String,
        docs: Vec<String>,
    },
    Click {
        query: String,
        doc: String,
    },
    Dwell {
        query: String,
        doc: String,
        dwell_ms: u64,
    },
    AddToCart {
        doc: String,
    },
    Purchase {
        doc: String,
    },
}

struct Session {
    user: String,
    id: String,
    script: VecDeque<Step>,
}

pub struct SearchTraffic {
    topic: String,
    base: Base,
    query_rank: Zipf<f64>,
    serial: u64,
    clock_ms: f64,
    sessions: Vec<Session>,
}

impl SearchTraffic {
    pub fn new(topic: String, spec: GenerateSpec) -> Traffic<Self> {
        Traffic(SearchTraffic {
            topic,
            query_rank: Zipf::new(N_QUERIES as f64, 1.07).expect("valid Zipf parameters"),
            serial: 0,
            clock_ms: spec.start_ms as f64,
            sessions: Vec::new(),
            base: Base::new(spec, 50),
        })
    }

    fn query_text(k: usize) -> String {
        let n = WORDS.len();
        format!("{} {}", WORDS[(k * 7) % n], WORDS[(k / n + k * 3) % n])
    }

    /// Result list of a query: a fixed ranking over documents, popular ones shared.
    fn results(k: usize) -> Vec<String> {
        (0..RESULTS)
            .map(|i| format!("doc-{}", (k * 7_919 + i * i * 131 + i) % N_DOCS))
            .collect()
    }

    fn new_session(&mut self) -> Session {
        self.serial += 1;
        let rng = &mut self.base.rng;
        let k = self.query_rank.sample(rng) as usize - 1;
        let query = Self::query_text(k);
        let mut script = VecDeque::new();
        if rng.random_bool(0.5) {
            let cut = query
                .char_indices()
                .nth(rng.random_range(1..4))
                .map_or(query.len(), |(i, _)| i);
            let prefix = query[..cut].to_string();
            script.push_back(Step::AcImpression {
                prefix: prefix.clone(),
            });
            if rng.random_bool(0.4) {
                script.push_back(Step::AcSelect {
                    prefix,
                    candidate: query.clone(),
                });
            }
        }
        let docs = Self::results(k);
        script.push_back(Step::Impression {
            query: query.clone(),
            docs: docs.clone(),
        });
        for (pos, doc) in docs.iter().enumerate() {
            if rng.random_bool(0.35 / (pos as f64 + 1.0)) {
                script.push_back(Step::Click {
                    query: query.clone(),
                    doc: doc.clone(),
                });
                let dwell_ms = (rng.random::<f64>().powi(3) * 300_000.0) as u64 + 500;
                script.push_back(Step::Dwell {
                    query: query.clone(),
                    doc: doc.clone(),
                    dwell_ms,
                });
                if rng.random_bool(0.12) {
                    script.push_back(Step::AddToCart { doc: doc.clone() });
                    if rng.random_bool(0.3) {
                        script.push_back(Step::Purchase { doc: doc.clone() });
                    }
                }
            }
        }
        Session {
            user: format!("user-{}", rng.random_range(0..50_000)),
            id: format!("s-{}-{}", self.base.spec.seed, self.serial),
            script,
        }
    }

    fn next_step(&mut self) -> (String, String, Step) {
        while self.sessions.len() < CONCURRENT_SESSIONS {
            let s = self.new_session();
            self.sessions.push(s);
        }
        let i = self.base.rng.random_range(0..self.sessions.len());
        let step = self.sessions[i]
            .script
            .pop_front()
            .expect("sessions in the pool have steps left");
        let (user, id) = (self.sessions[i].user.clone(), self.sessions[i].id.clone());
        if self.sessions[i].script.is_empty() {
            self.sessions.swap_remove(i);
        }
        (user, id, step)
    }
}

impl Records for SearchTraffic {
    fn base(&mut self) -> &mut Base {
        &mut self.base
    }
    fn valid(&mut self) -> Produced {
        let mean_gap = self.base.spec.mean_gap_ms();
        self.clock_ms += -mean_gap * (1.0 - self.base.rng.random::<f64>()).ln();
        let mut ts = self.clock_ms as u64;
        if self.base.rng.random_bool(self.base.spec.disorder_share) {
            // mostly a little late; now and then days late, past the 7-day window
            ts = if self.base.rng.random_bool(0.1) {
                ts.saturating_sub(self.base.rng.random_range(6 * DAY..40 * DAY))
            } else {
                ts.saturating_sub(self.base.rng.random_range(1..120_000))
            };
        }
        let (user, session, step) = self.next_step();
        let event_id = format!("ev-{}-{}", self.base.spec.seed, self.base.emitted);
        let base = json!({"event_id": event_id, "ts": ts, "user_id": user, "session_id": session});
        let mut v = base;
        let o = v.as_object_mut().expect("an object");
        let mut set = |k: &str, x: serde_json::Value| {
            o.insert(k.to_string(), x);
        };
        match step {
            Step::AcImpression { prefix } => {
                set("event_type", json!("ac_impression"));
                set("prefix", json!(prefix));
                set(
                    "candidates",
                    json!([Self::query_text(1), Self::query_text(2)]),
                );
            }
            Step::AcSelect { prefix, candidate } => {
                set("event_type", json!("ac_select"));
                set("prefix", json!(prefix));
                set("candidate", json!(candidate));
            }
            Step::Impression { query, docs } => {
                set("event_type", json!("search_impression"));
                set("query", json!(query));
                set("doc_ids", json!(docs));
            }
            Step::Click { query, doc } => {
                set("event_type", json!("click"));
                set("query", json!(query));
                set("doc_id", json!(doc));
            }
            Step::Dwell {
                query,
                doc,
                dwell_ms,
            } => {
                set("event_type", json!("dwell"));
                set("query", json!(query));
                set("doc_id", json!(doc));
                set("dwell_ms", json!(dwell_ms));
            }
            Step::AddToCart { doc } => {
                set("event_type", json!("add_to_cart"));
                set("doc_id", json!(doc));
            }
            Step::Purchase { doc } => {
                set("event_type", json!("purchase"));
                set("doc_id", json!(doc));
            }
        }
        Produced {
            topic: self.topic.clone(),
            key: Some(session),
            payload: serde_json::to_vec(&v).expect("JSON"),
            ts,
        }
    }
    fn malformed(&mut self) -> Produced {
        let n = self.base.emitted;
        let ts = self.clock_ms as u64;
        let payload = match self.base.rng.random_range(0..5) {
            0 => format!("{{\"event_id\": \"bad-{n}\", \"event_type\": \"click\", "),
            1 => format!(
                r#"{{"event_id":"bad-{n}","event_type":"click","ts":{ts},"user_id":"u","session_id":null,"query":"q","doc_id":"d"}}"#
            ),
            2 => format!(
                r#"{{"event_id":"bad-{n}","event_type":"click","ts":"{ts}","user_id":"u","session_id":"s","query":"q","doc_id":"d"}}"#
            ),
            3 => format!(
                r#"{{"event_id":"bad-{n}","event_type":"hover","ts":{ts},"user_id":"u","session_id":"s"}}"#
            ),
            _ => format!(
                r#"{{"event_id":"bad-{n}","event_type":"dwell","ts":{ts},"user_id":"u","session_id":"s","query":"q","doc_id":"d","dwell_ms":-1}}"#
            ),
        };
        Produced::new(&self.topic, payload, ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::search::decode::decode;

    #[test]
    fn traffic_is_deterministic_and_decodes() {
        let spec = GenerateSpec {
            events: 2_000,
            invalid_share: 0.0,
            ..Default::default()
        };
        let a: Vec<_> = SearchTraffic::new("t".into(), spec.clone()).collect();
        let b: Vec<_> = SearchTraffic::new("t".into(), spec).collect();
        assert_eq!(a, b);
        assert!(a.len() >= 2_000);
        for p in &a {
            decode(&p.payload)
                .unwrap_or_else(|e| panic!("{e:?}: {}", String::from_utf8_lossy(&p.payload)));
        }
        let kinds: std::collections::BTreeSet<String> = a
            .iter()
            .map(|p| {
                serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap()["event_type"]
                    .to_string()
            })
            .collect();
        assert_eq!(kinds.len(), 7, "{kinds:?}");
    }

    #[test]
    fn malformed_share_is_respected() {
        let spec = GenerateSpec {
            events: 2_000,
            invalid_share: 0.1,
            duplicate_share: 0.0,
            ..Default::default()
        };
        let bad = SearchTraffic::new("t".into(), spec)
            .filter(|p| decode(&p.payload).is_err())
            .count();
        assert!((120..=280).contains(&bad), "{bad}");
    }
}
