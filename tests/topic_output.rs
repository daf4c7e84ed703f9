//! A family whose table is a Kafka topic: its rows reach the topic as a keyed changelog,
//! and the feature stores are left alone. The family lives here, not in the registry: the
//! engine runs any `Family` it is handed.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use differential_dataflow::VecCollection;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tidemark::config::Config;
use tidemark::engine::{run, timely_config, RunOptions, Shared};
use tidemark_dataflows::contract::event::Timed;
use tidemark_dataflows::contract::record::{DecodeError, RecordRef};
use tidemark_dataflows::contract::state::State;
use tidemark_dataflows::contract::table::{int, text, FeatureRow, SinkKind, TableSpec, Value};
use tidemark_dataflows::contract::time::Window;
use tidemark_dataflows::operators::windowed::contributions;
use tidemark_dataflows::{Dataflow, GenerateSpec, Produced, Tick};

#[derive(Clone, Default, Serialize, Deserialize)]
struct VisitsConfig {
    input: String,
    output: String,
}

/// Visits per user over one day, as a changelog topic.
#[derive(Clone)]
struct Visits(VisitsConfig);

impl Dataflow for Visits {
    type Event = String;
    type Config = VisitsConfig;
    const NAME: &'static str = "visits";

    fn new(config: VisitsConfig) -> Self {
        Visits(config)
    }
    fn config(&self) -> &VisitsConfig {
        &self.0
    }
    fn topics(&self) -> Vec<String> {
        vec![self.0.input.clone()]
    }
    fn tables(&self) -> Vec<TableSpec> {
        vec![
            TableSpec {
                ns: "visits",
                keys: vec!["user_id"],
                fields: vec![int("visits_1d")],
                version: 1,
                sink: SinkKind::Topic(self.0.output.clone()),
                redis_prefix: None,
            },
            TableSpec {
                ns: "visitors",
                keys: vec!["site"],
                fields: vec![text("users")],
                version: 1,
                sink: SinkKind::List,
                redis_prefix: None,
            },
        ]
    }
    fn horizon(&self) -> Window {
        Window::days(1)
    }
    fn decode(&self, r: &RecordRef<'_>) -> Result<Timed<String>, DecodeError> {
        decode_user_event(r)
    }
    fn build<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<String>>,
        _dimensions: Vec<VecCollection<'s, Tick, Vec<String>>>,
        _rejected: VecCollection<'s, Tick, tidemark_dataflows::contract::event::Rejection>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        // every visitor so far, as a Redis list
        let visitors = events
            .clone()
            .map(|e| ("all".to_string(), e.event))
            .reduce(|_, users, out| {
                let users: Vec<&String> = users.iter().map(|(u, _)| *u).collect();
                out.push((serde_json::to_string(&users).unwrap(), 1))
            })
            .map(|(site, users)| FeatureRow {
                table: 1,
                key: vec![site],
                values: vec![Value::Text(users)],
            });
        contributions(state, events, |e: &Timed<String>| {
            Some((e.event.clone(), 1, Some(Window::days(1).expiry(e.ts))))
        })
        .map(|user| (user, ()))
        .reduce(|user, n, out| {
            out.push((
                FeatureRow {
                    table: 0,
                    key: vec![user.clone()],
                    values: vec![Value::Int(n[0].1 as i64)],
                },
                1,
            ))
        })
        .map(|(_, row)| row)
        .concat(visitors)
    }
    fn generate(&self, _: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send> {
        Box::new(std::iter::empty())
    }
}

#[test]
fn a_topic_table_is_a_keyed_changelog_and_a_list_table_a_redis_list() {
    let input = fresh_topic("visits-in", 2);
    let output = fresh_topic("visits-out", 1);
    let sender = tidemark::sink::producer::Sender::new(&kafka()).unwrap();
    let ts = 1_767_225_600_000u64;
    for (i, user) in ["u1", "u2", "u1", "u1"].iter().enumerate() {
        let payload = format!(
            r#"{{"event_id":"v{i}","ts":{},"user_id":"{user}"}}"#,
            ts + i as u64 * 1_000
        );
        sender
            .send(&input, Some(user.as_bytes()), payload.as_bytes(), None)
            .unwrap();
    }
    sender.flush().unwrap();

    let redis = fresh_redis(11);
    let flags =
        serde_json::json!({"job": output, "kafka": {"group_id": output}, "redis": {"url": redis}});
    let mut config = Config::load(None, flags).unwrap();
    config.checkpoint.dir = state_dir().into();
    // Redis and the topics only (not the shared Postgres the environment names)
    config.postgres.url = None;
    let visits = Visits(VisitsConfig {
        input: input.clone(),
        output: output.clone(),
    });
    let opts = RunOptions {
        family: Some(Arc::new(move || Box::new(visits.clone()))),
        ..RunOptions::kafka(timely_config(2, 1, 0, None).unwrap(), config, true)
    };
    let final_tick = run(opts, Arc::new(Shared::default())).unwrap();
    assert_eq!(final_tick, Some(ts + 3_000));

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", "check")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&output, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let (_, end) = consumer
        .fetch_watermarks(&output, 0, Duration::from_secs(10))
        .unwrap();
    let mut latest: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut read = 0;
    while read < end {
        let Some(m) = consumer.poll(Duration::from_secs(10)) else {
            panic!("only {read} of {end} records arrived")
        };
        let m = m.unwrap();
        read = m.offset() + 1;
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        latest.insert(key, serde_json::from_slice(m.payload().unwrap()).unwrap());
    }
    assert_eq!(latest.len(), 2, "{latest:?}");
    assert_eq!(latest["u1"]["visits_1d"], 3);
    assert_eq!(latest["u1"]["user_id"], "u1");
    assert_eq!(latest["u2"]["visits_1d"], 1);
    assert_eq!(latest["u1"]["_tick"], ts + 3_000);
    assert!(
        redis_features(&redis).is_empty(),
        "a topic table is not written to Redis"
    );
    let mut c = redis::Client::open(redis.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let visitors: Vec<String> = redis::cmd("LRANGE")
        .arg("visitors:all")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(visitors, vec!["u1", "u2"], "a list table is a Redis list");
}
