//! What the process reports about itself, read from [`Shared`]: readiness, what a stop is
//! stuck on, the Prometheus text and the `/status` document; and the watcher that checks
//! the stores and the group's offsets once a second.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

use super::Shared;
use crate::clock::now_ms;
use crate::config::Config;
use crate::telemetry::*;
use tidemark_dataflows::Family;

/// Why the process is not ready; empty when it is.
pub fn not_ready(shared: &Shared) -> Vec<String> {
    let s = &shared.status;
    let mut why = Vec::new();
    if shared.drain.load(Relaxed) {
        why.push("draining: stopping on SIGTERM".to_string());
    }
    if let Some(waiting) = s.starting.lock().expect("status lock").as_ref() {
        why.push(format!("starting: {waiting}"));
    }
    let grace = match s.unready_after_ms.load(Relaxed) {
        0 => 30_000,
        ms => ms,
    };
    let now = now_ms();
    let failing = |since: u64| since > 0 && now.saturating_sub(since) >= grace;
    for (sink, st) in shared.sinks.lock().expect("sink stats").iter() {
        let writing = st.writing_since.load(Relaxed);
        if failing(writing) {
            why.push(format!(
                "{sink}: a write has been in flight for {} s",
                (now - writing) / 1000
            ));
        }
        let since = st.failing_since.load(Relaxed);
        if failing(since) {
            let error = st.last_error.lock().expect("sink stats").clone();
            why.push(format!(
                "{sink} writes failing for {} s: {}",
                (now - since) / 1000,
                error.map(|(_, e)| e).unwrap_or_default()
            ));
        }
    }
    if let Some(d) = s.dlq.get() {
        let since = d.failing_since();
        if failing(since) {
            why.push(format!(
                "DLQ deliveries failing for {} s ({} failed): no checkpoint is saved past them",
                (now - since) / 1000,
                d.failed()
            ));
        }
    }
    {
        let c = s.checkpoint.lock().expect("status lock");
        if let Some(since) = c.failing_since_ms.filter(|t| failing(*t)) {
            why.push(format!(
                "checkpoints failing for {} s: {}",
                (now - since) / 1000,
                c.last_error.clone().unwrap_or_default()
            ));
        }
    }
    let (assigned, sources) = (s.assigned.load(Relaxed), s.sources.load(Relaxed));
    if sources == 0 || assigned < sources {
        why.push(format!("sources assigned: {assigned} of {sources} workers"));
    }
    for (sink, h) in s.health.lock().expect("status lock").iter() {
        if !h.up {
            why.push(format!(
                "{sink} unreachable: {}",
                h.error.as_deref().unwrap_or("no answer")
            ));
        }
    }
    why
}

/// What a stop that overran its deadline was waiting for: the reasons it is not ready,
/// each worker's last word on its stop, and every sink whose writes fail.
pub fn stuck(shared: &Shared) -> String {
    let mut parts: Vec<String> = not_ready(shared)
        .into_iter()
        .filter(|r| !r.starts_with("draining"))
        .collect();
    let now = now_ms();
    for (w, (at, stage)) in shared.status.stopping.lock().expect("status lock").iter() {
        parts.push(format!(
            "worker {w} (said {} ms ago): {stage}",
            now.saturating_sub(*at)
        ));
    }
    for (sink, st) in shared.sinks.lock().expect("sink stats").iter() {
        let writing = st.writing_since.load(Relaxed);
        if writing > 0 && now.saturating_sub(writing) > 1_000 {
            parts.push(format!(
                "{sink}: a write has been in flight for {} ms",
                now - writing
            ));
        }
        if st.failing_since.load(Relaxed) > 0 {
            let error = st.last_error.lock().expect("sink stats").clone();
            parts.push(format!(
                "{sink} writes failing: {}",
                error.map(|(_, e)| e).unwrap_or_default()
            ));
        }
    }
    if let Some(e) = shared
        .status
        .checkpoint
        .lock()
        .expect("status lock")
        .last_error
        .clone()
    {
        parts.push(format!("the last checkpoint error: {e}"));
    }
    if parts.is_empty() {
        parts.push("no worker reported its stop".into());
    }
    parts.join("; ")
}

/// Updates the mirrored metrics and renders the Prometheus text.
pub fn render(shared: &Shared) -> String {
    let c = &shared.counters;
    counter!("tidemark_events_accepted_total").absolute(c.accepted.load(Relaxed));
    counter!("tidemark_events_duplicate_total").absolute(c.duplicates.load(Relaxed));
    counter!("tidemark_events_late_total").absolute(c.too_late.load(Relaxed));
    counter!("tidemark_records_held_back_total").absolute(c.held_back.load(Relaxed));
    for (reason, n) in c.invalid_by_reason() {
        counter!("tidemark_events_invalid_total", "reason" => reason).absolute(n);
    }
    counter!(DLQ).absolute(shared.status.dlq_records.load(Relaxed));
    if let Some(d) = shared.status.dlq.get() {
        counter!("tidemark_dlq_failed_total").absolute(d.failed());
        counter!("tidemark_dlq_refused_total").absolute(d.refused());
    }
    for (sink, s) in shared.sinks.lock().expect("sink stats").iter() {
        let sink = *sink;
        counter!("tidemark_sink_writes_total", "sink" => sink, "result" => "ok")
            .absolute(s.writes.load(Relaxed));
        counter!("tidemark_sink_writes_total", "sink" => sink, "result" => "error")
            .absolute(s.failures.load(Relaxed));
        counter!("tidemark_feature_updates_total", "sink" => sink, "result" => "ok")
            .absolute(s.entity_updates.load(Relaxed));
        counter!("tidemark_feature_updates_total", "sink" => sink, "result" => "error")
            .absolute(s.failed_updates.load(Relaxed));
        counter!("tidemark_feature_updates_total", "sink" => sink, "result" => "rejected")
            .absolute(s.rejected.load(Relaxed));
    }
    for ((topic, partition), p) in shared.status.partitions.lock().expect("status").iter() {
        let labels = [
            ("topic", topic.clone()),
            ("partition", partition.to_string()),
        ];
        gauge!("tidemark_kafka_position", &labels).set(p.position as f64);
        if let Some(hw) = p.high_watermark {
            gauge!("tidemark_kafka_high_watermark", &labels).set(hw as f64);
            gauge!("tidemark_consumer_read_lag_records", &labels)
                .set((hw - p.position).max(0) as f64);
            let committed = p.committed.or(p.low_watermark).unwrap_or(0);
            gauge!("tidemark_consumer_lag_records", &labels).set((hw - committed).max(0) as f64);
        }
        if let Some(o) = p.committed {
            gauge!("tidemark_kafka_committed_offset", &labels).set(o as f64);
        }
    }
    for (sink, h) in shared.status.health.lock().expect("status").iter() {
        gauge!("tidemark_sink_up", "sink" => *sink).set(if h.up { 1.0 } else { 0.0 });
    }
    gauge!("tidemark_ready").set(if not_ready(shared).is_empty() {
        1.0
    } else {
        0.0
    });
    gauge!("tidemark_events_per_second").set(shared.status.rate());
    let mut kinds: BTreeMap<&'static str, i64> = shared
        .status
        .quality_kinds
        .lock()
        .expect("status")
        .iter()
        .map(|k| (*k, 0))
        .collect();
    for counts in shared.status.quality.lock().expect("status").values() {
        for (kind, n) in counts {
            *kinds.entry(kind).or_default() += n;
        }
    }
    for (kind, n) in kinds {
        gauge!("tidemark_quality_events", "kind" => kind).set(n as f64);
    }
    crate::telemetry::process().collect();
    prometheus().render()
}

/// The `/status` document.
/// Long: it builds one JSON document, section by section, as README "Endpoints" lists them.
pub fn status(shared: &Shared, cfg: &Config, family: &dyn Family) -> Value {
    let (name, feature_loop) = (family.name(), family.feature_loop(&shared.counters));
    let c = &shared.counters;
    let s = &shared.status;
    let partitions: Vec<Value> = s
        .partitions
        .lock()
        .expect("status")
        .iter()
        .map(|((topic, partition), p)| {
            json!({
                "topic": topic,
                "partition": partition,
                "worker": p.worker,
                "position": p.position,
                "committed": p.committed,
                "low_watermark": p.low_watermark,
                "high_watermark": p.high_watermark,
                "lag": p.high_watermark.map(|hw| (hw - p.committed.or(p.low_watermark).unwrap_or(0)).max(0)),
                "read_lag": p.high_watermark.map(|hw| (hw - p.position).max(0)),
            })
        })
        .collect();
    let workers: Vec<Value> = s
        .workers
        .lock()
        .expect("status")
        .iter()
        .map(|(w, st)| json!({"worker": w, "processed": st.processed, "durable": st.durable}))
        .collect();
    let health = s.health.lock().expect("status").clone();
    let sinks: serde_json::Map<String, Value> = shared
        .sinks
        .lock()
        .expect("sink stats")
        .iter()
        .map(|(name, st)| {
            let h = health.get(name);
            (
                name.to_string(),
                json!({
                    "writes": st.writes.load(Relaxed),
                    "entity_updates": st.entity_updates.load(Relaxed),
                    "failures": st.failures.load(Relaxed),
                    "rejected": st.rejected.load(Relaxed),
                    "last_rejected": st.last_rejected.lock().expect("sink stats").clone()
                        .map(|u| json!({"entity": u.entity, "tick": u.tick, "error": u.error})),
                    "failing_since_ms": Some(st.failing_since.load(Relaxed)).filter(|t| *t > 0),
                    "last_error": st.last_error.lock().expect("sink stats").clone()
                        .map(|(at, e)| json!({"at_ms": at, "error": e})),
                    "reachable": h.map(|h| h.up),
                    "checked_at_ms": h.map(|h| h.checked_at_ms),
                }),
            )
        })
        .collect();
    let invalid: serde_json::Map<String, Value> = c
        .invalid_by_reason()
        .iter()
        .map(|(r, n)| (r.to_string(), (*n).into()))
        .collect();
    let frontier = s
        .workers
        .lock()
        .expect("status")
        .values()
        .map(|w| w.durable)
        .min()
        .flatten();
    let why = not_ready(shared);
    json!({
        "job": cfg.job,
        "group": crate::config::group_of(cfg),
        "dataflow": name,
        "ready": why.is_empty(),
        "not_ready": why,
        "draining": shared.drain.load(Relaxed),
        "uptime_ms": now_ms().saturating_sub(s.started_ms.load(Relaxed)),
        "sources": partitions,
        "dataflows": {
            name: {
                "consumed": c.consumed.load(Relaxed),
                "accepted": c.accepted.load(Relaxed),
                "duplicates": c.duplicates.load(Relaxed),
                "too_late": c.too_late.load(Relaxed),
                "held_back": c.held_back.load(Relaxed),
                "invalid": invalid,
                "dlq_records": s.dlq_records.load(Relaxed),
                "dlq_failed": s.dlq.get().map(|d| d.failed()),
                "dlq_refused": s.dlq.get().map(|d| d.refused()),
                "events_per_second": s.rate(),
                "feature_loop": feature_loop,
            }
        },
        "workers": workers,
        "frontier": frontier,
        "sinks": sinks,
        "health": health,
        "checkpoint": s.checkpoint.lock().expect("status").clone(),
        // the newest 48 hours
        "quality_hourly": s.quality.lock().expect("status").iter().rev().take(48)
            .map(|(h, c)| (h.clone(), json!(c))).collect::<serde_json::Map<String, Value>>(),
        // the expectations' newest 48 hours
        "quality": s.report.newest(48).into_iter()
            .map(|(h, r)| (h, json!(r))).collect::<serde_json::Map<String, Value>>(),
    })
}

/// Checks the sinks and the group's offsets once a second, until `stop` is set.
pub fn watch(cfg: Config, shared: Arc<Shared>, stop: Arc<std::sync::atomic::AtomicBool>) {
    shared.status.started_ms.store(now_ms(), Relaxed);
    let _ = std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            let mut redis: Option<redis::Connection> = None;
            let mut pg: Option<postgres::Client> = None;
            let kafka = lag_client(&cfg);
            while !stop.load(Relaxed) {
                let started = Instant::now();
                shared
                    .status
                    .sample_rate(shared.counters.consumed.load(Relaxed));
                if let Some(url) = &cfg.redis.url {
                    let r = ping_redis(url, &mut redis);
                    report(&shared, "redis", r);
                }
                if let Some(url) = &cfg.postgres.url {
                    let r = ping_postgres(url, &mut pg);
                    report(&shared, "postgres", r);
                }
                if let Some(k) = &kafka {
                    offsets(k, &shared);
                }
                let spent = started.elapsed();
                std::thread::sleep(Duration::from_secs(1).saturating_sub(spent));
            }
        });
}

fn report(shared: &Shared, sink: &'static str, r: anyhow::Result<()>) {
    let h = Health {
        up: r.is_ok(),
        checked_at_ms: now_ms(),
        error: r.err().map(|e| format!("{e:#}")),
    };
    shared.status.health.lock().expect("status").insert(sink, h);
}

fn ping_redis(url: &str, conn: &mut Option<redis::Connection>) -> anyhow::Result<()> {
    if conn.is_none() {
        let client = redis::Client::open(url)?;
        *conn = Some(client.get_connection_with_timeout(Duration::from_millis(500))?);
    }
    let c = conn.as_mut().expect("connected");
    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
    let r: redis::RedisResult<String> = redis::cmd("PING").query(c);
    if let Err(e) = r {
        *conn = None;
        return Err(e.into());
    }
    Ok(())
}

fn ping_postgres(url: &str, client: &mut Option<postgres::Client>) -> anyhow::Result<()> {
    if client.is_none() {
        let mut config: postgres::Config = url.parse()?;
        config.connect_timeout(Duration::from_millis(500));
        *client = Some(config.connect(postgres::NoTls)?);
    }
    let c = client.as_mut().expect("connected");
    if let Err(e) = c.simple_query("SELECT 1") {
        *client = None;
        return Err(e.into());
    }
    Ok(())
}

fn lag_client(cfg: &Config) -> Option<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", crate::config::group_of(cfg))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| tracing::warn!(error = %e, "no kafka client for consumer lag"))
        .ok()
}

/// Fills in the watermarks and the group's committed offsets of the assigned partitions.
fn offsets(consumer: &BaseConsumer, shared: &Shared) {
    let assigned: Vec<(String, i32)> = shared
        .status
        .partitions
        .lock()
        .expect("status")
        .keys()
        .cloned()
        .collect();
    if assigned.is_empty() {
        return;
    }
    let timeout = Duration::from_secs(2);
    let mut tpl = TopicPartitionList::new();
    for (t, p) in &assigned {
        tpl.add_partition(t, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout).ok();
    let mut found = Vec::new();
    for (t, p) in &assigned {
        let marks = consumer.fetch_watermarks(t, *p, timeout).ok();
        let c = committed
            .as_ref()
            .and_then(|tpl| tpl.find_partition(t, *p))
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        found.push(((t.clone(), *p), marks, c));
    }
    let mut partitions = shared.status.partitions.lock().expect("status");
    for (key, marks, c) in found {
        if let Some(p) = partitions.get_mut(&key) {
            if let Some((low, high)) = marks {
                p.low_watermark = Some(low);
                p.high_watermark = Some(high);
            }
            if c.is_some() {
                p.committed = c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_every_source_is_assigned_and_again_while_draining() {
        let shared = Shared::default();
        shared.status.sources.store(2, Relaxed);
        shared.status.assigned.store(1, Relaxed);
        assert_eq!(not_ready(&shared), ["sources assigned: 1 of 2 workers"]);
        shared.status.assigned.store(2, Relaxed);
        assert!(not_ready(&shared).is_empty());
        shared.status.health.lock().unwrap().insert(
            "postgres",
            Health {
                up: false,
                checked_at_ms: 0,
                error: Some("connection refused".into()),
            },
        );
        assert_eq!(
            not_ready(&shared),
            ["postgres unreachable: connection refused"]
        );
        shared.status.health.lock().unwrap().clear();
        shared.drain.store(true, Relaxed);
        assert_eq!(not_ready(&shared), ["draining: stopping on SIGTERM"]);
    }
}
