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
            let (patterns, done) = (patterns.clone(), done.clone());
            std::thread::spawn(move || mark_delays(&brokers, &patterns, &done))
        };
        let h = freshness(cfg, rate, a.freshness_seconds, stamp);
        done.store(true, Ordering::Relaxed);
        let sent = probes
            .join()
            .map_err(|_| anyhow::anyhow!("probe producer panicked"))??;
        let delays = marks
            .join()
            .map_err(|_| anyhow::anyhow!("pattern reader panicked"))??;
        report_freshness(
            &h?,
            rate,
            "Kafka append → Postgres COMMIT and commerce-patterns acks",
        );
        report_marks(&delays, sent);
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

/// For each probe shopper's risk on the pattern topic, the wall-clock ms from its mark to
/// its arrival at a consumer, until `done` (and 3 s more for the last marks).
fn mark_delays(brokers: &str, topic: &str, done: &AtomicBool) -> anyhow::Result<Vec<u64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-marks"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut delays = Vec::new();
    let mut ended: Option<std::time::Instant> = None;
    while ended.is_none_or(|e| e.elapsed() < Duration::from_secs(5)) {
        if ended.is_none() && done.load(Ordering::Relaxed) {
            ended = Some(std::time::Instant::now());
        }
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let at = now_ms();
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let parts: Vec<&str> = key.split('|').collect();
        if let ([user, "cart_abandonment_risk", _, mark], true) =
            (parts.as_slice(), m.payload().is_some())
        {
            if let (true, Ok(mark)) = (user.starts_with("probe-"), mark.parse::<u64>()) {
                delays.push(at.saturating_sub(mark));
            }
        }
    }
    Ok(delays)
}

fn report_marks(delays: &[u64], sent: u64) {
    let mut d = delays.to_vec();
    d.sort_unstable();
    let at = |q: f64| d.get(((d.len() as f64 * q) as usize).min(d.len().saturating_sub(1)));
    match (at(0.5), at(0.99), d.last()) {
        (Some(p50), Some(p99), Some(max)) => println!(
            "10-minute mark → pattern topic consumer: p50 {p50} ms, p99 {p99} ms, max {max} ms over {} of {sent} abandoned carts",
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
        let user = UserId(format!("user_{i:08}"));
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
                            product: ProductId(products[p][0].clone()),
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
