//! The smallest whole family, as README "Adding a feature family" describes one: page
//! views per page over the last 10 minutes. It decodes its topic with the contract's
//! helpers, builds its feature with `operators::windowed::contributions` and a `reduce`,
//! makes synthetic traffic through the shared generator loop (malformed records and
//! copies included), and the engine runs it from Kafka into Redis unchanged. The stores
//! must hold exactly a naive recount of the definition at the final tick.

mod common;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use common::*;
use differential_dataflow::VecCollection;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use tidemark::config::Config;
use tidemark::engine::{run, timely_config, RunOptions, Shared};
use tidemark_dataflows::contract::event::{EventId, Rejection, Timed};
use tidemark_dataflows::contract::record::{
    diagnose, epoch_ms, required, DecodeError, Expect, RecordRef,
};
use tidemark_dataflows::contract::state::State;
use tidemark_dataflows::contract::table::{int, FeatureRow, SinkKind, TableSpec, Value};
use tidemark_dataflows::contract::time::Window;
use tidemark_dataflows::generate::{Base, Records, Traffic};
use tidemark_dataflows::operators::windowed::contributions;
use tidemark_dataflows::{Dataflow, GenerateSpec, Produced, Tick};

/// The one feature's window.
const WINDOW: Window = Window::minutes(10);
const PAGES: [&str; 5] = ["home", "cart", "help", "deals", "about"];

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PagesConfig {
    topic: String,
}

#[derive(Clone)]
struct Pages(PagesConfig);

/// The wire format: `{"event_id", "ts", "page"}`.
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    ts: Option<i64>,
    #[serde(borrow)]
    page: Option<Cow<'a, str>>,
}

fn expect(field: &str) -> Expect {
    match field {
        "ts" => Expect::Integer,
        "event_id" | "page" => Expect::Text,
        _ => Expect::Any,
    }
}

impl Dataflow for Pages {
    type Event = String;
    type Config = PagesConfig;
    const NAME: &'static str = "pages";

    fn new(config: PagesConfig) -> Self {
        Pages(config)
    }
    fn config(&self) -> &PagesConfig {
        &self.0
    }
    fn topics(&self) -> Vec<String> {
        vec![self.0.topic.clone()]
    }
    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec {
            ns: "page",
            keys: vec!["page"],
            fields: vec![int("views_10m")],
            version: 1,
            sink: SinkKind::Store,
            redis_prefix: None,
        }]
    }
    fn horizon(&self) -> Window {
        WINDOW
    }
    fn decode(&self, r: &RecordRef<'_>) -> Result<Timed<String>, DecodeError> {
        let raw: Raw =
            serde_json::from_slice(r.payload).map_err(|e| diagnose(r.payload, e, expect))?;
        Ok(Timed {
            id: EventId::of(required(&raw.event_id, "event_id")?),
            ts: epoch_ms(raw.ts, "ts")?,
            event: required(&raw.page, "page")?.to_string(),
        })
    }
    fn keys(&self, page: &String, visit: &mut dyn FnMut(&'static str, &str)) {
        visit("page", page)
    }
    fn build<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<String>>,
        _dimensions: Vec<VecCollection<'s, Tick, Vec<String>>>,
        _rejected: VecCollection<'s, Tick, Rejection>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        // a view counts from its insertion until its expiry in the window
        contributions(state, events, |e: &Timed<String>| {
            Some((e.event.clone(), 1, Some(WINDOW.expiry(e.ts))))
        })
        .map(|page| (page, ()))
        .reduce(|page, views, out| {
            let row = FeatureRow {
                table: 0,
                key: vec![page.clone()],
                values: vec![Value::Int(views[0].1 as i64)],
            };
            out.push((row, 1))
        })
        .map(|(_, row)| row)
    }
    fn generate(&self, spec: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send> {
        Box::new(Traffic(PageTraffic {
            topic: self.0.topic.clone(),
            base: Base::new(spec.clone(), 20),
        }))
    }
}

/// Views at `spec.rate` per second of event time, Zipf-ish over the pages.
struct PageTraffic {
    topic: String,
    base: Base,
}

impl PageTraffic {
    fn ts(&self) -> u64 {
        let b = &self.base;
        b.spec.start_ms + b.emitted * 1_000 / b.spec.rate.max(1)
    }
}

impl Records for PageTraffic {
    fn base(&mut self) -> &mut Base {
        &mut self.base
    }
    fn valid(&mut self) -> Produced {
        let page = PAGES[self
            .base
            .rng
            .random_range(0..PAGES.len())
            .min(self.base.rng.random_range(0..PAGES.len()))];
        let (ts, n) = (self.ts(), self.base.emitted);
        let payload = format!(r#"{{"event_id":"pv-{n}","ts":{ts},"page":"{page}"}}"#);
        Produced::new(&self.topic, payload, ts)
    }
    fn malformed(&mut self) -> Produced {
        let (ts, n) = (self.ts(), self.base.emitted);
        let payload = match n % 3 {
            0 => format!(r#"{{"event_id":"pv-{n}","ts":{ts}}}"#),
            1 => format!(r#"{{"event_id":"pv-{n}","ts":"{ts}","page":"home"}}"#),
            _ => format!(r#"{{"event_id":"pv-{n}","ts":{ts},"page":"#),
        };
        Produced::new(&self.topic, payload, ts)
    }
}

/// The definition, recounted: views of each page with `ts <= at < expiry`, each event id
/// once (its copies are duplicates), malformed records left out.
fn recount(records: &[Produced], at: Tick) -> BTreeMap<String, i64> {
    let mut seen = HashSet::new();
    let mut views: BTreeMap<String, i64> = BTreeMap::new();
    for r in records {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.payload) else {
            continue;
        };
        let (Some(id), Some(ts), Some(page)) =
            (v["event_id"].as_str(), v["ts"].as_u64(), v["page"].as_str())
        else {
            continue;
        };
        if seen.insert(id.to_string()) && ts <= at && at < (ts + 600_000).div_ceil(1_000) * 1_000 {
            *views.entry(page.to_string()).or_default() += 1;
        }
    }
    views.retain(|_, n| *n > 0);
    views
}

#[test]
fn a_family_defined_outside_the_registry_runs_from_kafka_into_redis_exactly() {
    let topic = fresh_topic("pages", 2);
    let pages = Pages(PagesConfig {
        topic: topic.clone(),
    });
    // 40 minutes of event time: views leave their 10-minute window within the run
    let spec = GenerateSpec {
        events: 2_400,
        rate: 1,
        seed: 7,
        duplicate_share: 0.05,
        invalid_share: 0.02,
        ..GenerateSpec::default()
    };
    let records: Vec<Produced> = pages.generate(&spec).collect();
    let lines: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect();
    produce(
        &topic,
        &lines.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let redis = fresh_redis(12);
    let flags =
        serde_json::json!({"job": topic, "kafka": {"group_id": topic}, "redis": {"url": redis}});
    let mut config = Config::load(None, flags).unwrap();
    config.checkpoint.dir = state_dir().into();
    config.postgres.url = None;
    let opts = RunOptions {
        family: Some(Arc::new(move || Box::new(pages.clone()))),
        ..RunOptions::kafka(timely_config(2, 1, 0, None).unwrap(), config, true)
    };
    let final_tick = run(opts, Arc::new(Shared::default())).unwrap().unwrap();

    let want: BTreeMap<String, BTreeMap<String, String>> = recount(&records, final_tick)
        .into_iter()
        .map(|(page, n)| {
            (
                format!("feat:page:{page}"),
                BTreeMap::from([("views_10m".to_string(), n.to_string())]),
            )
        })
        .collect();
    assert!(!want.is_empty() && want.len() < PAGES.len() + 1);
    let mut got = redis_features(&redis);
    for fields in got.values_mut() {
        fields.retain(|k, _| !k.starts_with('_'));
    }
    assert_eq!(got, want, "Redis at tick {final_tick} against the recount");
}
