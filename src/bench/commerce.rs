//! `tidemark bench commerce`: the commerce dataflow alone (pre-decoded events, 1 and N
//! workers, a short span and one past the 24-hour window), memory per active shopper with
//! a full 50-product list, and with `--kafka` freshness from Kafka append to the Postgres
//! commit and the pattern topic's acks at a fixed rate, and how long after its 10-minute
//! mark a cart's risk reaches the pattern topic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};

use tidemark_dataflows::contract::event::{EventId, Timed};
use tidemark_dataflows::families::commerce::{
    generate, Action, Cents, Commerce, CommerceConfig, CommerceEvent, Context, Item, ProductId,
    UserId,
};
use tidemark_dataflows::{Dataflow, GenerateSpec, Tick};

use crate::bench::{
    freshness, held_growth, live_config, report_freshness, report_spans, BenchArgs,
};
use crate::clock::now_ms;

/// Events of one active shopper in the memory figure: 50 views of distinct products (a
/// full `user_recent` list) and 2 carts, within 10 minutes.
const EVENTS_PER_SHOPPER: u64 = 52;

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    // first, while nothing else has grown the heap (see `bench reading`)
    active_shoppers(a.sessions)?;
    let commerce = Commerce::new(CommerceConfig::default());
    report_spans(commerce, a, |_| vec![generate::catalog()])?;
    if a.kafka {
        let stamp = now_ms();
        let [input, patterns] = ["commerce", "patterns"].map(|t| format!("bench-{t}-{stamp}"));
        let rate = a.freshness_rate.unwrap_or(20_000);
        let spec = GenerateSpec {
            events: rate * a.freshness_seconds,
            rate,
            ..Default::default()
        };
        let section = serde_json::json!({"patterns_topic": &patterns});
        let topics = [(&*input, 4), (&*patterns, 3)];
        let cfg = live_config(
            "commerce",
            stamp,
            a.e2e_workers,
            &[&input],
            section,
            &spec,
            &topics,
        )?;
        let brokers = cfg.kafka.brokers.clone();
        let done = Arc::new(AtomicBool::new(false));
        let probes = {
            let (brokers, input, done) = (brokers.clone(), input.clone(), done.clone());
            std::thread::spawn(move || abandoned_carts(&brokers, &input, &done))
        };
        let marks = {
            let (brokers, patterns, done) = (brokers.clone(), patterns.clone(), done.clone());
            std::thread::spawn(move || mark_arrivals(&brokers, &patterns, &done))
        };
        let passing = {
            let (input, done) = (input.clone(), done.clone());
            std::thread::spawn(move || appended(&brokers, &input, &done))
        };
        let h = freshness(cfg, rate, a.freshness_seconds, stamp);
        done.store(true, Ordering::Relaxed);
        let sent = probes
            .join()
            .map_err(|_| anyhow::anyhow!("probe producer panicked"))??;
        let arrivals = marks
            .join()
            .map_err(|_| anyhow::anyhow!("pattern reader panicked"))??;
        let appended = passing
            .join()
            .map_err(|_| anyhow::anyhow!("input reader panicked"))??;
        report_freshness(
            &h?,
            rate,
            "Kafka append → Postgres COMMIT and commerce-patterns acks",
        );
        let by_clock: Vec<u64> = arrivals
            .iter()
            .map(|(m, at)| at.saturating_sub(*m))
            .collect();
        report_marks("its mark by the wall clock", &by_clock, sent);
        let by_stream = since_passed(&arrivals, appended);
        report_marks(
            "the append of the first record past its mark (stream time passing it)",
            &by_stream,
            sent,
        );
    }
    Ok(())
}

/// Shoppers who put a product in the cart 9 min 57 s before now and buy nothing, one
/// every 100 ms until `done`, into the input topic among the generated traffic: each
/// cart's mark comes 3 s after it is sent. Returns how many were sent.
fn abandoned_carts(brokers: &str, topic: &str, done: &AtomicBool) -> anyhow::Result<u64> {
    let sender = crate::sink::producer::Sender::new(brokers)?;
    // the engine starts within freshness()'s first two seconds
    std::thread::sleep(Duration::from_secs(3));
    let mut sent = 0;
    while !done.load(Ordering::Relaxed) {
        let ts = now_ms() + 3_000 - 600_000;
        let payload = format!(
            r#"{{"event_id":"probe-{sent}","user_id":"probe-{sent}","session_id":"probe","event_type":"add_to_cart","timestamp":{ts},"properties":{{"product_id":"prod_0","price":9.9}}}}"#
        );
        let user = format!("probe-{sent}");
        sender.send(topic, Some(user.as_bytes()), payload.as_bytes(), None)?;
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    sender.flush()?;
    Ok(sent)
}

/// A consumer of `topic` from its start until `done` (and 5 s more, for the last records).
fn reader(brokers: &str, topic: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Reads `consumer` until 5 s after `done`, handing each record to `take`.
fn read_until(
    consumer: &BaseConsumer,
    done: &AtomicBool,
    mut take: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) {
    let mut ended: Option<std::time::Instant> = None;
    while ended.is_none_or(|e| e.elapsed() < Duration::from_secs(5)) {
        if ended.is_none() && done.load(Ordering::Relaxed) {
            ended = Some(std::time::Instant::now());
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            take(&m);
        }
    }
}

/// For each probe shopper's risk on the pattern topic: its mark and the wall-clock ms it
/// arrived at a consumer.
fn mark_arrivals(brokers: &str, topic: &str, done: &AtomicBool) -> anyhow::Result<Vec<(u64, u64)>> {
    let consumer = reader(brokers, topic, &format!("{topic}-marks"))?;
    let mut arrivals = Vec::new();
    read_until(&consumer, done, |m| {
        let at = now_ms();
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let parts: Vec<&str> = key.split('|').collect();
        if let ([user, "cart_abandonment_risk", _, mark], true) =
            (parts.as_slice(), m.payload().is_some())
        {
            if let (true, Ok(mark)) = (user.starts_with("probe-"), mark.parse::<u64>()) {
                arrivals.push((mark, at));
            }
        }
    });
    Ok(arrivals)
}

/// Every input record's event time and Kafka timestamp (its append).
fn appended(brokers: &str, topic: &str, done: &AtomicBool) -> anyhow::Result<Vec<(u64, u64)>> {
    let consumer = reader(brokers, topic, &format!("{topic}-times"))?;
    let mut times = Vec::new();
    read_until(&consumer, done, |m| {
        let ts = m.payload().and_then(|p| {
            let v: serde_json::Value = serde_json::from_slice(p).ok()?;
            v.get("timestamp")?.as_u64()
        });
        if let (Some(ts), Some(append)) = (ts, m.timestamp().to_millis()) {
            times.push((ts, append as u64));
        }
    });
    Ok(times)
}

/// For each arrival, ms since stream time passed its mark: since the earliest append of a
/// record whose event time is past the mark. Stream time needs every worker past the mark,
/// so this is the longest the engine can have taken (a worker whose partitions lag holds
/// the mark back, and that wait is counted).
fn since_passed(arrivals: &[(u64, u64)], mut appended: Vec<(u64, u64)>) -> Vec<u64> {
    // by event time, latest first, with the earliest append among those at or after each
    appended.sort_unstable_by_key(|a| std::cmp::Reverse(a.0));
    let mut earliest = u64::MAX;
    let suffix: Vec<(u64, u64)> = appended
        .iter()
        .map(|(ts, append)| {
            earliest = earliest.min(*append);
            (*ts, earliest)
        })
        .collect();
    arrivals
        .iter()
        .filter_map(|(mark, at)| {
            // the last entry with an event time past the mark holds the earliest append of all of them
            let n = suffix.partition_point(|(ts, _)| ts > mark);
            let passed = suffix[..n].last()?.1;
            Some(at.saturating_sub(passed))
        })
        .collect()
}

fn report_marks(from: &str, delays: &[u64], sent: u64) {
    let mut d = delays.to_vec();
    d.sort_unstable();
    let at = |q: f64| d.get(((d.len() as f64 * q) as usize).min(d.len().saturating_sub(1)));
    match (at(0.5), at(0.99), d.last()) {
        (Some(p50), Some(p99), Some(max)) => println!(
            "10-minute mark → pattern topic consumer, from {from}: p50 {p50} ms, p99 {p99} ms, max {max} ms over {} of {sent} abandoned carts",
            d.len()
        ),
        _ => println!("10-minute mark → pattern topic consumer: no risk seen ({sent} abandoned carts sent)"),
    }
}

/// Resident memory per active shopper: `n` shoppers of [`EVENTS_PER_SHOPPER`] events each,
/// held on one worker (every window, the day's events, the list and the marks); RSS after
/// minus RSS before, over `n`.
fn active_shoppers(n: u64) -> anyhow::Result<()> {
    let products = generate::catalog();
    let shopper = move |i: u64, tick: Tick| {
        let user = UserId(format!("user_{i:08}").into());
        (0..EVENTS_PER_SHOPPER)
            .map(|k| {
                let action = if k < 50 {
                    Action::View
                } else {
                    Action::AddToCart
                };
                let p = (i * 7 + k % 50) as usize % products.len();
                Timed {
                    id: EventId::of(&format!("{i}-{k}")),
                    ts: tick - 600_000 + k * 10_000,
                    event: CommerceEvent {
                        user: user.clone(),
                        action,
                        item: Some(Item {
                            product: ProductId(products[p][0].as_str().into()),
                            price: Cents(4_900),
                        }),
                        context: Context {
                            device: Some("mobile".into()),
                            referrer: Some("instagram.com".into()),
                            utm_source: Some("instagram".into()),
                        },
                    },
                }
            })
            .collect()
    };
    let next = |_, tick: Tick| tick + 1;
    let commerce = Commerce::new(CommerceConfig::default());
    let catalog = vec![generate::catalog()];
    let g = held_growth(commerce, catalog, 1_767_225_600_000, n, shopper, next)?;
    println!(
        "memory per active shopper: {:.0} B ({n} shoppers of {EVENTS_PER_SHOPPER} events, a full 50-product list each; RSS +{} MB, built in {:.1} s)",
        g.total as f64 / n as f64,
        g.total / 1_000_000,
        g.secs
    );
    Ok(())
}
