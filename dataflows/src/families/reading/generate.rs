//! Synthetic reading traffic: readers in a dozen countries (most sending their IANA zone)
//! open episodes of Zipf-popular titles, scroll down in uneven steps and complete, exit
//! part way, or stop sending (a timeout). An experiment's treatment group completes about
//! five points more often than its control. A session's events are about twelve seconds
//! apart, so sessions last minutes. On request: duplicates, out-of-order and malformed
//! records, and a scroll after the exit in some sessions.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::json;

use crate::contract::dataflow::{GenerateSpec, Produced};
use crate::contract::dimension::DimRow;
use crate::contract::time::DAY;
use crate::generate::{Base, Records, Traffic};

pub const GENRES: [&str; 8] = [
    "romance",
    "action",
    "fantasy",
    "drama",
    "comedy",
    "thriller",
    "slice_of_life",
    "horror",
];
pub const TITLES: usize = 60;
pub const EPISODES_PER_TITLE: usize = 20;
const USERS: u64 = 5_000;
pub const EXPERIMENT: &str = "reader-v2";
/// Seconds between two events of one session, on average.
const SESSION_GAP_S: u64 = 12;

/// (country, weight, zones its readers send)
const COUNTRIES: [(&str, u32, &[&str]); 11] = [
    ("KR", 30, &["Asia/Seoul"]),
    (
        "US",
        15,
        &["America/New_York", "America/Los_Angeles", "America/Chicago"],
    ),
    ("JP", 12, &["Asia/Tokyo"]),
    ("TW", 8, &["Asia/Taipei"]),
    ("TH", 8, &["Asia/Bangkok"]),
    ("ID", 8, &["Asia/Jakarta", "Asia/Makassar"]),
    ("FR", 5, &["Europe/Paris"]),
    ("DE", 4, &["Europe/Berlin"]),
    ("BR", 5, &["America/Sao_Paulo"]),
    ("MX", 5, &["America/Mexico_City"]),
    ("NZ", 2, &["Pacific/Auckland"]),
];

/// The catalog: `episode_metadata(episode_id, title_id, genre, episode_no)` rows.
pub fn episode_metadata() -> Vec<DimRow> {
    let mut rows = Vec::new();
    for t in 0..TITLES {
        for n in 0..EPISODES_PER_TITLE {
            rows.push(vec![
                format!("ep-{t}-{n}"),
                format!("title-{t}"),
                GENRES[t % GENRES.len()].to_string(),
                (n + 1).to_string(),
            ]);
        }
    }
    rows
}

struct Session {
    id: String,
    fields: serde_json::Map<String, serde_json::Value>,
    /// (event_type, scroll_pct)
    script: VecDeque<(&'static str, Option<f64>)>,
}

pub struct ReadingTraffic {
    topic: String,
    base: Base,
    titles: Zipf<f64>,
    serial: u64,
    clock_ms: f64,
    pool: usize,
    sessions: Vec<Session>,
}

impl ReadingTraffic {
    pub fn new(topic: String, spec: GenerateSpec) -> Traffic<Self> {
        Traffic(ReadingTraffic {
            topic,
            titles: Zipf::new(TITLES as f64, 1.1).expect("valid Zipf parameters"),
            serial: 0,
            clock_ms: spec.start_ms as f64,
            pool: (spec.events_per_s() * SESSION_GAP_S).clamp(4, 100_000) as usize,
            sessions: Vec::new(),
            base: Base::new(spec, 200),
        })
    }

    fn new_session(&mut self) -> Session {
        self.serial += 1;
        let rng = &mut self.base.rng;
        let user = rng.random_range(0..USERS);
        // a reader's country, zone, device and experiment group follow from who they are
        let mut who = StdRng::seed_from_u64(user);
        let total: u32 = COUNTRIES.iter().map(|c| c.1).sum();
        let mut pick = who.random_range(0..total);
        let (country, _, zones) = COUNTRIES
            .iter()
            .find(|(_, w, _)| {
                let hit = pick < *w;
                pick = pick.saturating_sub(*w);
                hit
            })
            .expect("weights cover the range");
        let tz = who
            .random_bool(0.6)
            .then(|| zones[who.random_range(0..zones.len())]);
        let (device, platform) = match who.random_range(0..3) {
            0 => ("phone", "ios"),
            1 => ("phone", "android"),
            _ => ("desktop", "web"),
        };
        let group = match who.random_range(0..4) {
            0 => Some("control"),
            1 => Some("treatment"),
            _ => None,
        };
        let title = self.titles.sample(rng) as usize - 1;
        let episode = format!("ep-{title}-{}", rng.random_range(0..EPISODES_PER_TITLE));
        let mut fields = serde_json::Map::new();
        fields.insert("user_id".into(), json!(format!("user-{user}")));
        fields.insert("episode_id".into(), json!(episode));
        fields.insert("country".into(), json!(country));
        fields.insert("device".into(), json!(device));
        fields.insert("platform".into(), json!(platform));
        if let Some(tz) = tz {
            fields.insert("tz".into(), json!(tz));
        }
        if let Some(g) = group {
            fields.insert("experiment_name".into(), json!(EXPERIMENT));
            fields.insert("experiment_group".into(), json!(g));
        }
        // some titles hold readers better; the treatment adds five points
        let base = 0.5 + 0.25 * ((title * 37) % 10) as f64 / 10.0;
        let p_complete = base
            + if group == Some("treatment") {
                0.05
            } else {
                0.0
            };
        let mut script = VecDeque::from([("enter", None)]);
        let completes = rng.random_bool(p_complete);
        let times_out = !completes && rng.random_bool(0.08);
        let stop_at = if completes {
            100
        } else {
            rng.random_range(3..98u8)
        };
        let mut pct = 0u8;
        while pct < stop_at {
            pct = (pct + rng.random_range(4..16u8)).min(stop_at);
            // depths as a reader's app sends them: not always whole percents
            let shown = f64::from(pct) - f64::from(rng.random_range(0..4u8)) * 0.25;
            script.push_back(("scroll", Some(shown.max(0.0))));
        }
        if completes {
            script.push_back(("complete", None));
        } else if !times_out {
            script.push_back(("exit", None));
            if rng.random_bool(self.base.spec.disorder_share) {
                // a scroll that arrives after the exit: an order error to count
                script.push_back(("scroll", Some(f64::from(pct.saturating_add(5).min(100)))));
            }
        }
        Session {
            id: format!("rs-{}-{}", self.base.spec.seed, self.serial),
            fields,
            script,
        }
    }
}

impl Records for ReadingTraffic {
    fn base(&mut self) -> &mut Base {
        &mut self.base
    }
    fn valid(&mut self) -> Produced {
        let mean_gap = self.base.spec.mean_gap_ms();
        self.clock_ms += -mean_gap * (1.0 - self.base.rng.random::<f64>()).ln();
        while self.sessions.len() < self.pool {
            let s = self.new_session();
            self.sessions.push(s);
        }
        let i = self.base.rng.random_range(0..self.sessions.len());
        let (kind, pct) = self.sessions[i]
            .script
            .pop_front()
            .expect("sessions in the pool have steps left");
        let mut ts = self.clock_ms as u64;
        if self.base.rng.random_bool(self.base.spec.disorder_share) {
            // mostly a little late; now and then days late
            ts = if self.base.rng.random_bool(0.1) {
                ts.saturating_sub(self.base.rng.random_range(DAY..10 * DAY))
            } else {
                ts.saturating_sub(self.base.rng.random_range(1..60_000))
            };
        }
        let s = &self.sessions[i];
        let mut v = s.fields.clone();
        v.insert(
            "event_id".into(),
            json!(format!("re-{}-{}", self.base.spec.seed, self.base.emitted)),
        );
        v.insert("event_type".into(), json!(kind));
        v.insert("ts".into(), json!(ts));
        v.insert("session_id".into(), json!(s.id));
        if let Some(p) = pct {
            v.insert("scroll_pct".into(), json!(p));
        }
        let key = s.id.clone();
        if self.sessions[i].script.is_empty() {
            self.sessions.swap_remove(i);
        }
        Produced {
            topic: self.topic.clone(),
            key: Some(key),
            payload: serde_json::to_vec(&v).expect("JSON"),
            ts,
        }
    }
    fn malformed(&mut self) -> Produced {
        let n = self.base.emitted;
        let ts = self.clock_ms as u64;
        let common = format!(
            r#""event_id":"bad-{n}","ts":{ts},"user_id":"u","session_id":"s-bad","episode_id":"ep-0-0","device":"phone","platform":"ios""#
        );
        let payload = match self.base.rng.random_range(0..6) {
            0 => format!("{{\"event_id\": \"bad-{n}\", \"event_type\": \"scroll\", "),
            1 => format!(r#"{{{common},"event_type":"enter","country":null}}"#),
            2 => format!(r#"{{{common},"event_type":"scroll","country":"KR","scroll_pct":150}}"#),
            3 => {
                format!(r#"{{{common},"event_type":"scroll","country":"KR","scroll_pct":"half"}}"#)
            }
            4 => format!(r#"{{{common},"event_type":"enter","country":"KR","tz":"Mars/Olympus"}}"#),
            _ => format!(r#"{{{common},"event_type":"like","country":"KR"}}"#),
        };
        Produced::new(&self.topic, payload, ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::reading::decode::decode;

    #[test]
    fn traffic_decodes_and_the_treatment_completes_more() {
        let spec = GenerateSpec {
            events: 60_000,
            rate: 50,
            invalid_share: 0.01,
            ..GenerateSpec::default()
        };
        let (mut valid, mut invalid) = (0, 0);
        let mut ends: std::collections::BTreeMap<(String, String), (u32, u32)> = Default::default();
        for p in ReadingTraffic::new("t".into(), spec) {
            match decode(&p.payload) {
                Ok(e) => {
                    valid += 1;
                    let group = e.event.reader.arm.map(|a| a.group).unwrap_or_default();
                    let c = ends
                        .entry((group.to_string(), e.event.session.0.to_string()))
                        .or_default();
                    match e.event.action {
                        crate::families::reading::Action::Complete => c.0 = 1,
                        crate::families::reading::Action::Exit => c.1 = 1,
                        _ => {}
                    }
                }
                Err(_) => invalid += 1,
            }
        }
        assert!(invalid > 300 && invalid < 900, "{invalid}");
        assert!(valid > 50_000);
        let rate = |g: &str| {
            let (c, e) = ends
                .iter()
                .filter(|((grp, _), _)| grp == g)
                .fold((0, 0), |(c, e), (_, (a, b))| (c + a, e + b));
            c as f64 / (c + e) as f64
        };
        let lift = rate("treatment") - rate("control");
        assert!(lift > 0.01 && lift < 0.1, "lift {lift}");
        assert_eq!(episode_metadata().len(), TITLES * EPISODES_PER_TITLE);
    }
}
