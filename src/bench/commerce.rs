//! `tidemark bench commerce`: the commerce dataflow alone (pre-decoded events, 1 and N
//! workers, a short span and one past the 24-hour window), memory per active shopper with
//! a full 50-product list, and with `--kafka` freshness from Kafka append to the Postgres
//! commit and the pattern topic's acks at a fixed rate.

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
        let h = freshness(cfg, rate, a.freshness_seconds, stamp)?;
        report_freshness(
            &h,
            rate,
            "Kafka append → Postgres COMMIT and commerce-patterns acks",
        );
    }
    Ok(())
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
