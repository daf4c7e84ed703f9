//! The ads outputs recomputed from generated JSON lines with the model the property tests
//! use (`dataflows/tests/common/ads_model.rs`), and the stores and topics read back in the
//! same shape: table → key parts joined by `|` → field → text.

#[path = "../../dataflows/tests/common/ads_model.rs"]
pub mod model;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use model::{Act, AdRead, BudgetRow};
use tidemark_dataflows::contract::table::Value;
use tidemark_dataflows::families::ads::{decode, AdEvent, Ads};
use tidemark_dataflows::Dataflow;

pub type Rows = BTreeMap<String, BTreeMap<String, String>>;

/// The model's input from generated lines in order: the first copy of each valid event
/// that was not too late when stream time (the newest event time so far) reached it; and
/// the number of invalid lines.
pub fn model_input(text: &str) -> (Vec<(AdRead, u64)>, usize) {
    let (mut events, mut invalid) = (Vec::new(), 0);
    let mut seen = HashSet::new();
    let mut stream_time = 0;
    for line in text.lines() {
        let quality = line.contains("\"quality_score\"") && !line.contains("\"event_type\"");
        let decoded = if quality {
            decode::decode_quality(line.as_bytes())
        } else {
            decode::decode(line.as_bytes(), &[])
        };
        let Ok(e) = decoded else {
            invalid += 1;
            continue;
        };
        stream_time = e.ts.max(stream_time);
        if model::too_late(e.ts, stream_time) || !seen.insert(e.id) {
            continue;
        }
        let mut advertiser = String::new();
        let (act, slot, pair) = match e.event {
            AdEvent::Impression(slot) => (Act::Impression, Some(slot), None),
            AdEvent::Click {
                slot,
                pair,
                price,
                advertiser: a,
            } => {
                advertiser = a.0;
                (Act::Click { price }, Some(slot), Some(pair))
            }
            AdEvent::Conversion {
                slot,
                pair,
                revenue,
            } => (Act::Conversion { revenue }, Some(slot), Some(pair)),
            AdEvent::Quality(q) => (
                Act::Quality {
                    product: q.product.0,
                    score: q.score.0,
                    previous: q.previous.map(|p| p.0),
                    category: q.category,
                    reason: q.reason,
                    effective_from: q.effective_from,
                },
                None,
                None,
            ),
        };
        events.push((
            AdRead {
                id: e.id.0,
                ts: e.ts,
                act,
                campaign: slot
                    .as_ref()
                    .map(|s| s.campaign.0.clone())
                    .unwrap_or_default(),
                placement: slot
                    .as_ref()
                    .map(|s| s.placement.as_str().to_string())
                    .unwrap_or_default(),
                category: slot.map(|s| s.category).unwrap_or_default(),
                device: pair.map(|p| p.device.to_string()).unwrap_or_default(),
                ad: pair.map(|p| p.ad.to_string()).unwrap_or_default(),
                advertiser,
            },
            0,
        ));
    }
    (events, invalid)
}

/// `campaign_budgets` as the model reads it.
pub fn budgets(pg: &str) -> Vec<BudgetRow> {
    let mut c = postgres::Client::connect(pg, postgres::NoTls).unwrap();
    c.query(
        "SELECT campaign_id, advertiser_id, daily_budget, timezone FROM campaign_budgets",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| BudgetRow {
        campaign: r.get(0),
        advertiser: r.get(1),
        daily: r.get(2),
        zone: r.get(3),
    })
    .collect()
}

/// The model's rows at `at`, per table index.
pub fn expected(events: &[(AdRead, u64)], budgets: &[BudgetRow], at: u64) -> BTreeMap<u8, Rows> {
    let tables = Ads::new(Default::default()).tables();
    let mut out: BTreeMap<u8, Rows> = BTreeMap::new();
    for ((t, key), values) in model::recount(events, budgets, at) {
        let fields = tables[t as usize]
            .fields
            .iter()
            .zip(values)
            // a null is absent: from a Redis hash, a topic record and a Postgres row alike
            .filter(|(_, v)| *v != Value::Null)
            .map(|(f, v)| (f.name.to_string(), v.to_string()))
            .collect();
        out.entry(t).or_default().insert(key.join("|"), fields);
    }
    out
}

fn text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Hashes under `prefix` (e.g. `budget:`), keyed by the rest with `:` read as `|`.
pub fn redis_rows(url: &str, prefix: &str) -> Rows {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut c)
        .unwrap();
    keys.into_iter()
        .map(|k| {
            let h: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&k).query(&mut c).unwrap();
            (k[prefix.len()..].replace(':', "|"), h)
        })
        .collect()
}

/// A Postgres table's rows, keyed by its key columns.
pub fn pg_rows(url: &str, table: &str, keys: &[&str]) -> Rows {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
        .unwrap()
        .into_iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r.get::<_, &str>(0)).unwrap();
            let o = v.as_object().unwrap();
            let key: Vec<String> = keys.iter().map(|k| text_of(&o[*k])).collect();
            let fields = o
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), text_of(v)))
                .collect();
            (key.join("|"), fields)
        })
        .collect()
}

/// What a compacted topic keeps: the latest record per key (a tombstone removes it), and
/// how many records each key had.
pub fn topic_rows(topic: &str) -> (Rows, BTreeMap<String, usize>) {
    let (mut latest, mut counts) = (Rows::new(), BTreeMap::new());
    for (key, value) in super::topic_records(topic) {
        *counts.entry(key.clone()).or_insert(0) += 1;
        match value {
            Some(serde_json::Value::Object(o)) => {
                latest.insert(
                    key,
                    o.iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k.clone(), text_of(v)))
                        .collect(),
                );
            }
            _ => {
                latest.remove(&key);
            }
        }
    }
    (latest, counts)
}

/// `rows` without `_tick` (which depends on batching) and `_v`.
pub fn without_ticks(rows: &Rows) -> Rows {
    rows.iter()
        .map(|(k, f)| {
            let f = f
                .iter()
                .filter(|(n, _)| !n.starts_with('_'))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            (k.clone(), f)
        })
        .collect()
}

/// Two runs wrote the same rows: else the number that differ and the first few, field by field.
pub fn assert_same_rows(what: &str, got: &Rows, want: &Rows) {
    let keys: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    let differ: Vec<_> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .collect();
    let shown: Vec<String> = differ
        .iter()
        .take(4)
        .map(|k| {
            let (g, w) = (got.get(*k), want.get(*k));
            let fields: Vec<String> = g
                .into_iter()
                .chain(w)
                .flat_map(|f| f.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|f| g.and_then(|g| g.get(*f)) != w.and_then(|w| w.get(*f)))
                .map(|f| {
                    let v =
                        |r: Option<&BTreeMap<String, String>>| r.and_then(|r| r.get(f)).cloned();
                    format!("{f}: {:?} vs {:?}", v(g), v(w))
                })
                .collect();
            format!("{k}: {}", fields.join(", "))
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{what}: {} of {} rows differ, e.g.\n{}",
        differ.len(),
        want.len(),
        shown.join("\n")
    );
}

/// `rows` without the alerts' `version` and `previous_timestamp`: which versions went out
/// depends on how the events were batched (see [`assert_alert_versions`]).
pub fn without_versions(rows: &Rows) -> Rows {
    rows.iter()
        .map(|(k, f)| {
            let mut f = f.clone();
            f.remove("version");
            f.remove("previous_timestamp");
            (k.clone(), f)
        })
        .collect()
}

/// The alert records on `topic` keep their contract (#18), key by key in topic order: a
/// version seen before comes again only as the same record but for `_tick` (a re-send); a new one is the
/// next number, its content differs from the last one's and names that one's `timestamp`
/// in `previous_timestamp` (none on version 1). Returns how many keys had corrections.
pub fn assert_alert_versions(topic: &str) -> usize {
    let mut sent: BTreeMap<String, Vec<serde_json::Map<String, serde_json::Value>>> =
        BTreeMap::new();
    // keys whose last record was a tombstone: back, the same content is a new version
    let mut cleared: BTreeSet<String> = BTreeSet::new();
    for (key, value) in super::topic_records(topic) {
        let Some(serde_json::Value::Object(mut record)) = value else {
            cleared.insert(key); // a retracted alert or a retired day
            continue;
        };
        // the tick it went out at is the engine's, not the alert's
        record.remove("_tick");
        if record["event_type"] == "BUDGET_SYNC" {
            assert!(record["version"].is_null(), "{key}: a sync has no version");
            continue;
        }
        let versions = sent.entry(key.clone()).or_default();
        let v = record["version"].as_u64().unwrap_or(0) as usize;
        assert!(v >= 1, "{key}: version {:?}", record["version"]);
        if v <= versions.len() {
            assert_eq!(
                record,
                versions[v - 1],
                "{key}: version {v} sent again, changed"
            );
            continue;
        }
        assert_eq!(v, versions.len() + 1, "{key}: a version skipped");
        let content = |r: &serde_json::Map<String, serde_json::Value>| {
            let mut r = r.clone();
            r.remove("version");
            r.remove("previous_timestamp");
            r
        };
        match versions.last() {
            None => assert!(record["previous_timestamp"].is_null(), "{key}: {record:?}"),
            Some(last) => {
                if !cleared.remove(&key) {
                    let (last, now) = (content(last), content(&record));
                    assert_ne!(last, now, "{key}: a version without a change");
                }
                assert_eq!(record["previous_timestamp"], last["timestamp"], "{key}");
            }
        }
        versions.push(record);
    }
    sent.values().filter(|v| v.len() > 1).count()
}
