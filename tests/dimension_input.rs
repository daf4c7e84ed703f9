//! A Postgres table as a live differential input: changing a row while the engine runs
//! moves every dependent feature. The family lives here, as in `topic_output.rs`.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use tidemark::config::Config;
use tidemark::engine::{run, timely_config, RunOptions, Shared};
use tidemark_dataflows::contract::dimension::{DimRow, DimensionSpec};
use tidemark_dataflows::contract::event::Timed;
use tidemark_dataflows::contract::record::{DecodeError, RecordRef};
use tidemark_dataflows::contract::state::State;
use tidemark_dataflows::contract::table::{int, FeatureRow, SinkKind, TableSpec, Value};
use tidemark_dataflows::contract::time::Window;
use tidemark_dataflows::operators::windowed::contributions;
use tidemark_dataflows::{Dataflow, GenerateSpec, Produced, Tick};

#[derive(Clone, Default, Serialize, Deserialize)]
struct CountryConfig {
    topic: String,
}

/// Visits per country, where a user's country comes from the table `user_country`.
#[derive(Clone)]
struct CountryVisits(CountryConfig);

impl Dataflow for CountryVisits {
    type Event = String;
    type Config = CountryConfig;
    const NAME: &'static str = "country_visits";

    fn new(config: CountryConfig) -> Self {
        CountryVisits(config)
    }
    fn config(&self) -> &CountryConfig {
        &self.0
    }
    fn topics(&self) -> Vec<String> {
        vec![self.0.topic.clone()]
    }
    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec {
            ns: "country",
            keys: vec!["country"],
            fields: vec![int("visits_1d")],
            version: 1,
            sink: SinkKind::Store,
            redis_prefix: None,
        }]
    }
    fn horizon(&self) -> Window {
        Window::days(1)
    }
    fn dimensions(&self) -> Vec<DimensionSpec> {
        vec![DimensionSpec {
            table: "user_country".into(),
            columns: vec!["user_id".into(), "country".into()],
            create: None,
        }]
    }
    fn decode(&self, r: &RecordRef<'_>) -> Result<Timed<String>, DecodeError> {
        decode_user_event(r)
    }
    fn build<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<String>>,
        dimensions: Vec<VecCollection<'s, Tick, DimRow>>,
        _rejected: VecCollection<'s, Tick, tidemark_dataflows::contract::event::Rejection>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        let visits = contributions(state, events, |e: &Timed<String>| {
            Some((e.event.clone(), 1, Some(Window::days(1).expiry(e.ts))))
        });
        let country = dimensions[0]
            .clone()
            .map(|row| (row[0].clone(), row[1].clone()));
        visits
            .map(|user| (user, ()))
            .join_map(country, |_, (), country| (country.clone(), ()))
            .reduce(|country, n, out| {
                out.push((
                    FeatureRow {
                        table: 0,
                        key: vec![country.clone()],
                        values: vec![Value::Int(n[0].1 as i64)],
                    },
                    1,
                ))
            })
            .map(|(_, row)| row)
    }
    fn generate(&self, _: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send> {
        Box::new(std::iter::empty())
    }
}

fn visits(redis: &str, country: &str) -> Option<String> {
    let mut c = redis::Client::open(redis)
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("HGET")
        .arg(format!("feat:country:{country}"))
        .arg("visits_1d")
        .query(&mut c)
        .unwrap()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
/// Long: one scenario, its steps in order with each check where it happens.
fn a_changed_dimension_row_moves_the_features_that_depend_on_it() {
    let topic = fresh_topic("dim-visits", 2);
    let redis = fresh_redis(12);
    let pg = fresh_pg("tm_dimension");
    let mut db = postgres::Client::connect(&pg, postgres::NoTls).unwrap();
    db.batch_execute(
        "CREATE TABLE user_country (user_id text PRIMARY KEY, country text); \
         INSERT INTO user_country VALUES ('u1', 'KR'), ('u2', 'JP')",
    )
    .unwrap();
    let sender = tidemark::sink::producer::Sender::new(&kafka()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (i, user) in ["u1", "u2", "u1"].iter().enumerate() {
        let payload = format!(
            r#"{{"event_id":"c{i}","ts":{},"user_id":"{user}"}}"#,
            now + i as u64
        );
        sender
            .send(&topic, Some(user.as_bytes()), payload.as_bytes(), None)
            .unwrap();
    }
    sender.flush().unwrap();

    let flags = serde_json::json!({
        "job": topic, "kafka": {"group_id": topic}, "redis": {"url": redis},
        "postgres": {"url": pg, "dimension_poll_ms": 100},
    });
    let mut config = Config::load(None, flags).unwrap();
    config.checkpoint.dir = state_dir().into();
    let family = CountryVisits(CountryConfig {
        topic: topic.clone(),
    });
    let make: Arc<tidemark::engine::MakeFamily> = Arc::new(move || Box::new(family.clone()));
    let opts = RunOptions {
        family: Some(make.clone()),
        ..RunOptions::kafka(timely_config(2, 1, 0, None).unwrap(), config.clone(), false)
    };
    let restart = RunOptions {
        family: Some(make),
        ..RunOptions::kafka(timely_config(1, 1, 0, None).unwrap(), config, false)
    };
    let shared = Arc::new(Shared::default());
    let s = shared.clone();
    let engine = std::thread::spawn(move || {
        let r = run(opts, s);
        if let Err(e) = &r {
            eprintln!("engine: {e:#}");
        }
        r
    });

    wait_until("KR=2 and JP=1", || {
        visits(&redis, "KR").as_deref() == Some("2") && visits(&redis, "JP").as_deref() == Some("1")
    });
    db.execute(
        "UPDATE user_country SET country = 'US' WHERE user_id = 'u1'",
        &[],
    )
    .unwrap();
    wait_until("u1's visits to move to US", || {
        visits(&redis, "US").as_deref() == Some("2") && visits(&redis, "KR").is_none()
    });
    assert_eq!(visits(&redis, "JP").as_deref(), Some("1"));
    // the feature table in Postgres follows too
    let rows = pg_features(&pg, "country", &["country"]);
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        vec!["feat:country:JP".to_string(), "feat:country:US".to_string()]
    );

    // a graceful stop (a last checkpoint), a change while stopped, a restart: the change
    // reaches the features, in both stores
    shared.drain.store(true, Ordering::Relaxed);
    engine.join().unwrap().unwrap();
    db.execute(
        "UPDATE user_country SET country = 'FR' WHERE user_id = 'u2'",
        &[],
    )
    .unwrap();
    let shared = Arc::new(Shared::default());
    let s = shared.clone();
    let restarted = std::thread::spawn(move || run(restart, s));
    wait_until("u2's visit to move to FR after the restart", || {
        visits(&redis, "FR").as_deref() == Some("1") && visits(&redis, "JP").is_none()
    });
    assert_eq!(visits(&redis, "US").as_deref(), Some("2"));
    wait_until("postgres to follow", || {
        pg_features(&pg, "country", &["country"])
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            == ["feat:country:FR", "feat:country:US"]
    });
    shared.stop.store(true, Ordering::Relaxed);
    restarted.join().unwrap().unwrap();
}
