//! `tidemark bench serve`: latency and throughput of the read API over real Redis, single
//! entity and 1,000-entity Feast lookups, from a client in the same process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use crate::config::Config;
use crate::engine::Shared;
use crate::http;

/// One load shape: how requests look and how many are in flight.
struct Shape {
    name: &'static str,
    /// Entities per request (1 = `GET /features`, else one Feast POST).
    batch: usize,
    concurrency: usize,
}

/// Long: the benchmark's shapes in sequence, each a few lines.
pub fn run(entities: u64, seconds: u64) -> anyhow::Result<()> {
    let url = std::env::var("TIDEMARK_REDIS")
        .context("bench serve reads from Redis: set TIDEMARK_REDIS (scripts/services.sh env)")?;
    let family = crate::engine::family_of(&Config::default())?;
    let doc = family
        .tables()
        .into_iter()
        .find(|t| t.ns == "doc")
        .expect("the search family has a doc view");
    eprintln!("writing {entities} doc entities to {url} …");
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_connection()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let id = |i: u64| format!("bench-serve-{i}");
    for chunk in (0..entities).collect::<Vec<_>>().chunks(10_000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            let mut fields: Vec<(String, String)> = doc
                .fields
                .iter()
                .map(|f| {
                    (
                        f.name.to_string(),
                        rng.random_range(0..10_000u32).to_string(),
                    )
                })
                .collect();
            fields.push(("_tick".into(), crate::clock::now_ms().to_string()));
            pipe.hset_multiple(format!("feat:doc:{}", id(i)), &fields)
                .ignore();
        }
        pipe.query::<()>(&mut conn)?;
    }
    let shared = Arc::new(Shared::default());
    let addr = http::serve(
        "127.0.0.1:0",
        family,
        Some(http::Backend::Redis(client)),
        shared,
        Config::default(),
    )?;
    let base = format!("http://{addr}");
    let field = doc.fields[0].name;
    let shapes = [
        Shape {
            name: "GET /features, 1 entity",
            batch: 1,
            concurrency: 1,
        },
        Shape {
            name: "GET /features, 1 entity",
            batch: 1,
            concurrency: 16,
        },
        Shape {
            name: "POST /get-online-features, 1,000 entities",
            batch: 1_000,
            concurrency: 1,
        },
        Shape {
            name: "POST /get-online-features, 1,000 entities",
            batch: 1_000,
            concurrency: 4,
        },
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "| requests | in flight | requests/s | entity lookups/s | p50 ms | p99 ms | p99.9 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for shape in &shapes {
        let (count, histogram, took) = rt.block_on(load(&base, field, shape, entities, seconds))?;
        let rps = count as f64 / took.as_secs_f64();
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
            shape.name,
            shape.concurrency,
            rps,
            rps * shape.batch as f64,
            ms(0.5),
            ms(0.99),
            ms(0.999)
        );
    }
    let keys: Vec<String> = (0..entities)
        .map(|i| format!("feat:doc:{}", id(i)))
        .collect();
    for chunk in keys.chunks(10_000) {
        redis::cmd("DEL").arg(chunk).query::<()>(&mut conn)?;
    }
    Ok(())
}

/// Runs `shape` for `seconds`; returns requests done, latencies (µs) and the time taken.
async fn load(
    base: &str,
    field: &str,
    shape: &Shape,
    entities: u64,
    seconds: u64,
) -> anyhow::Result<(u64, hdrhistogram::Histogram<u64>, Duration)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(shape.concurrency)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..shape.concurrency {
        let (client, base, field) = (client.clone(), base.to_string(), field.to_string());
        let batch = shape.batch;
        tasks.push(tokio::spawn(async move {
            let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("bounds");
            let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let response = if batch == 1 {
                    let i = rng.random_range(0..entities);
                    client
                        .get(format!("{base}/features/doc/bench-serve-{i}"))
                        .send()
                        .await?
                } else {
                    let ids: Vec<String> = (0..batch)
                        .map(|_| format!("bench-serve-{}", rng.random_range(0..entities)))
                        .collect();
                    client
                        .post(format!("{base}/get-online-features"))
                        .json(&json!({"features": [format!("doc:{field}")], "entities": {"doc_id": ids}}))
                        .send()
                        .await?
                };
                let status = response.status();
                let body = response.bytes().await?;
                anyhow::ensure!(status.is_success(), "{status}: {}", String::from_utf8_lossy(&body));
                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                n += 1;
            }
            anyhow::Ok((n, h))
        }));
    }
    let mut total = 0;
    let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        let (n, h) = t.await??;
        total += n;
        all.add(h)?;
    }
    Ok((total, all, started.elapsed()))
}
