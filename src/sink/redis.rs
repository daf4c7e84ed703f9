//! Redis: one hash per entity, only changed fields, `_tick` and `_v`; each write is one
//! MULTI/EXEC, so a reader never sees part of a tick.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tidemark_dataflows::contract::table::{EntityChange, SinkKind, TableSpec, TickChanges, Value};
use tidemark_dataflows::Tick;

use super::{entity_key, newest_per_entity, Store, Writer};
use crate::telemetry::Unstorable;

/// Records a worker's progress and raises the job frontier to the least progress of all
/// workers, never lowering it. KEYS: progress hash, frontier; ARGV: worker, tick, peers.
const PROGRESS_SCRIPT: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local least = nil
for w = 0, tonumber(ARGV[3]) - 1 do
  local v = redis.call('HGET', KEYS[1], tostring(w))
  if not v then return -1 end
  v = tonumber(v)
  if least == nil or v < least then least = v end
end
local current = tonumber(redis.call('GET', KEYS[2]) or '-1')
if least > current then redis.call('SET', KEYS[2], string.format('%d', least)) end
return least
"#;

/// [`GUARDED_WRITE`]'s SHA-1, as `EVALSHA` names it.
static GUARDED_WRITE_SHA: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| redis::Script::new(GUARDED_WRITE).get_hash().to_string());

/// Writes one entity unless the hash already holds a newer tick (monotonic visibility
/// across restarts and replays, DESIGN §4). KEYS: the hash; ARGV: tick, version, ttl
/// (0 = none), then the number `n` of fields that became null and those `n` fields
/// (deleted from the hash), then field/value pairs — nothing after the ttl means the
/// entity is gone.
const GUARDED_WRITE: &str = r#"
local stored = tonumber(redis.call('HGET', KEYS[1], '_tick') or '-1')
if stored > tonumber(ARGV[1]) then return 0 end
if #ARGV == 3 then redis.call('DEL', KEYS[1]) return 1 end
local pairs_at = 5 + tonumber(ARGV[4])
if pairs_at > 5 then redis.call('HDEL', KEYS[1], unpack(ARGV, 5, pairs_at - 1)) end
redis.call('HSET', KEYS[1], '_tick', ARGV[1], '_v', ARGV[2], unpack(ARGV, pairs_at))
if ARGV[3] ~= '0' then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"#;

/// Deletes each hash of KEYS whose `_tick` is in (ARGV[1], ARGV[2]): what a run wrote
/// after the checkpoint a restart resumes from (`Store::roll_back`).
const ROLL_BACK: &str = r#"
local n = 0
local since, before = tonumber(ARGV[1]), tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  if redis.call('TYPE', key).ok == 'hash' then
    local t = tonumber(redis.call('HGET', key, '_tick') or '-1')
    if t > since and t < before then redis.call('DEL', key) n = n + 1 end
  end
end
return n
"#;

/// Replaces one entity with its restored row unless it holds the checkpoint's value
/// already (its tick is at or before the checkpoint) or a newer one. KEYS: the hash;
/// ARGV: since, tick, version, ttl (0 = none), then every field/value pair but the nulls.
const REWRITE: &str = r#"
local stored = redis.call('HGET', KEYS[1], '_tick')
if stored and (tonumber(stored) <= tonumber(ARGV[1]) or tonumber(stored) > tonumber(ARGV[2])) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_tick', ARGV[2], '_v', ARGV[3], unpack(ARGV, 5))
if ARGV[4] ~= '0' then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"#;

/// How long one reply may take: longer, the connection is dropped and the write retried.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Entities per round trip when a restart rolls back or rewrites.
const RESTART_BATCH: usize = 5_000;

/// Replaces a list key whole: `DEL` then `RPUSH` of the row's JSON array, in the same
/// transaction as the rest of the tick. Returns the key and how many commands it queued.
fn list_change(
    pipe: &mut redis::Pipeline,
    spec: &TableSpec,
    c: &EntityChange,
    ttl: Option<u64>,
) -> (String, usize) {
    let key = entity_key(spec, &c.key);
    pipe.del(&key);
    let items: Vec<String> = match c.after.as_ref().and_then(|v| v.first()) {
        Some(Value::Text(json)) => serde_json::from_str(json).unwrap_or_default(),
        _ => Vec::new(),
    };
    if items.is_empty() {
        return (key, 1);
    }
    pipe.cmd("RPUSH").arg(&key).arg(items);
    if let Some(ttl) = ttl {
        pipe.expire(&key, ttl as i64);
        return (key, 3);
    }
    (key, 2)
}

/// Whether a Redis error reply may go away by itself (a loading, read-only, busy or full
/// server); any other error a command gets (a key of another type, a script error on its
/// data) comes back every time.
fn passes(e: &redis::ServerError) -> bool {
    matches!(
        e.code(),
        "LOADING"
            | "READONLY"
            | "BUSY"
            | "OOM"
            | "TRYAGAIN"
            | "CLUSTERDOWN"
            | "MASTERDOWN"
            | "NOREPLICAS"
            | "MISCONF"
            | "MOVED"
            | "ASK"
    )
}

/// Runs `pipe`, whose commands are `owners` (the entity each writes and its tick; `None`
/// for the job's own bookkeeping), and returns the entities whose command Redis refused
/// for good. Redis applies the other commands of a transaction all the same, so only a
/// passing error or a refused bookkeeping command fails the write (it is retried whole:
/// every command is guarded by tick, so a repeat changes nothing).
fn run_pipeline(
    conn: &mut redis::Connection,
    pipe: &redis::Pipeline,
    owners: &[Option<(String, Tick)>],
    what: &str,
) -> anyhow::Result<Vec<Unstorable>> {
    if owners.is_empty() {
        return Ok(Vec::new());
    }
    let reply: redis::Value = pipe.query(conn).context(what.to_string())?;
    let redis::Value::Array(results) = reply else {
        anyhow::bail!("{what}: the transaction was not executed ({reply:?})");
    };
    let mut refused = Vec::new();
    for (result, owner) in results.iter().zip(owners) {
        let redis::Value::ServerError(e) = result else {
            continue;
        };
        match owner {
            Some((entity, tick)) if !passes(e) => refused.push(Unstorable {
                entity: entity.clone(),
                tick: *tick,
                error: format!("{}: {}", e.code(), e.details().unwrap_or_default()),
            }),
            _ => anyhow::bail!("{what}: {} {}", e.code(), e.details().unwrap_or_default()),
        }
    }
    Ok(refused)
}

pub struct RedisStore {
    conn: Option<redis::Connection>,
    client: redis::Client,
    writer: Writer,
    ttl_secs: Option<u64>,
}

impl RedisStore {
    pub fn open(url: &str, writer: Writer, ttl_secs: Option<u64>) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .with_context(|| format!("redis url '{}' (redis.url)", crate::redact::redact(url)))?;
        let mut store = RedisStore {
            conn: None,
            client,
            writer,
            ttl_secs,
        };
        store.connection()?;
        Ok(store)
    }

    fn connection(&mut self) -> anyhow::Result<&mut redis::Connection> {
        if self.conn.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(Duration::from_secs(5))
                .context("connecting to redis")?;
            // a server that stops answering fails the write (it is retried) rather than
            // holding it forever
            conn.set_read_timeout(Some(IO_TIMEOUT))?;
            conn.set_write_timeout(Some(IO_TIMEOUT))?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// Runs `work` on the connection; a failure drops it, so the retry reconnects.
    fn on_connection<T>(
        &mut self,
        work: impl FnOnce(&mut redis::Connection) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let result = work(self.connection()?);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    pub fn progress_key(job: &str) -> String {
        format!("tidemark:{job}:progress")
    }
    pub fn frontier_key(job: &str) -> String {
        format!("tidemark:{job}:frontier")
    }
}

impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn written(&mut self) -> anyhow::Result<Option<Tick>> {
        let key = Self::progress_key(&self.writer.job);
        let ticks: Vec<u64> = redis::cmd("HVALS")
            .arg(key)
            .query(self.connection()?)
            .context("reading the job's progress from redis")?;
        Ok(ticks.into_iter().max())
    }

    fn roll_back(&mut self, since: Tick, before: Tick) -> anyhow::Result<u64> {
        let mut patterns: Vec<String> = self
            .writer
            .tables
            .iter()
            .filter(|s| matches!(s.sink, SinkKind::Store | SinkKind::RedisHash))
            .map(|s| format!("{}:*", entity_key(s, &[])))
            .collect();
        patterns.sort();
        patterns.dedup();
        self.on_connection(|conn| roll_back(conn, &patterns, since, before))
    }

    fn rewrite(
        &mut self,
        rows: &TickChanges,
        since: Tick,
        at: Tick,
    ) -> anyhow::Result<Vec<Unstorable>> {
        let (ttl, tables) = (self.ttl_secs, self.writer.tables.clone());
        self.on_connection(|conn| rewrite(conn, &tables, rows, since, at, ttl))
    }

    fn write(
        &mut self,
        ticks: &[Arc<TickChanges>],
        progress: Option<Tick>,
    ) -> anyhow::Result<Vec<Unstorable>> {
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors();
        let mut owners: Vec<Option<(String, Tick)>> = Vec::new();
        let mut loaded = false;
        // each entity once, however many of the packed ticks changed it
        for n in newest_per_entity(ticks) {
            let (tick, c) = (n.tick, n.change);
            let spec = &self.writer.tables[c.table as usize];
            match spec.sink {
                SinkKind::Store | SinkKind::RedisHash => {}
                SinkKind::List => {
                    let (key, items) = list_change(&mut pipe, spec, c, self.ttl_secs);
                    owners.extend(std::iter::repeat_n(Some((key, tick)), items));
                    continue;
                }
                SinkKind::Topic(_) | SinkKind::Records(_) | SinkKind::PgTable => continue,
            }
            if !loaded {
                // by hash from here on: the script's text once per pack, not per entity (in
                // the transaction, so a script cache flushed meanwhile cannot fail it)
                pipe.cmd("SCRIPT").arg("LOAD").arg(GUARDED_WRITE);
                owners.push(None);
                loaded = true;
            }
            let key = entity_key(spec, &c.key);
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(&*GUARDED_WRITE_SHA)
                .arg(1)
                .arg(&key)
                .arg(tick)
                .arg(spec.version)
                .arg(self.ttl_secs.unwrap_or(0));
            if let Some(values) = &c.after {
                let null = |i: &&usize| values[**i] == Value::Null;
                cmd.arg(n.changed.iter().filter(null).count());
                for &i in n.changed.iter().filter(null) {
                    cmd.arg(spec.fields[i].name);
                }
                for &i in n.changed.iter().filter(|i| !null(i)) {
                    cmd.arg(spec.fields[i].name).arg(values[i].to_string());
                }
            }
            owners.push(Some((key, tick)));
        }
        // an empty frontier (input closed) is not a tick to record
        if let Some(p) = progress.filter(|p| *p != Tick::MAX) {
            let job = &self.writer.job;
            pipe.cmd("EVAL")
                .arg(PROGRESS_SCRIPT)
                .arg(2)
                .arg(Self::progress_key(job))
                .arg(Self::frontier_key(job))
                .arg(self.writer.worker)
                .arg(p.saturating_sub(1))
                .arg(self.writer.peers);
            owners.push(None);
        }
        self.on_connection(|conn| run_pipeline(conn, &pipe, &owners, "redis MULTI/EXEC"))
    }
}

/// `Store::roll_back` on the hashes matching `patterns`, a page of keys at a time.
fn roll_back(
    conn: &mut redis::Connection,
    patterns: &[String],
    since: Tick,
    before: Tick,
) -> anyhow::Result<u64> {
    let mut deleted = 0;
    for pattern in patterns {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(RESTART_BATCH)
                .query(conn)
                .context("scanning redis for entities written after the checkpoint")?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("EVAL")
                    .arg(ROLL_BACK)
                    .arg(keys.len())
                    .arg(&keys)
                    .arg(since)
                    .arg(before)
                    .query(conn)
                    .context("deleting entities written after the checkpoint")?;
                deleted += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(deleted)
}

/// `Store::rewrite`, a batch of entities per round trip. A batch with nothing for Redis
/// (every row of a table it does not store) sends nothing.
fn rewrite(
    conn: &mut redis::Connection,
    tables: &[TableSpec],
    rows: &TickChanges,
    since: Tick,
    at: Tick,
    ttl: Option<u64>,
) -> anyhow::Result<Vec<Unstorable>> {
    let mut refused = Vec::new();
    for chunk in rows.changes.chunks(RESTART_BATCH) {
        let mut pipe = redis::pipe();
        // one transaction: a reader never sees a list between its `DEL` and `RPUSH`
        pipe.atomic().ignore_errors();
        let mut owners: Vec<Option<(String, Tick)>> = Vec::new();
        for c in chunk {
            let spec = &tables[c.table as usize];
            let Some(values) = &c.after else { continue };
            match spec.sink {
                SinkKind::Store | SinkKind::RedisHash => {}
                // a list has no tick to tell whether it changed: it is written again
                SinkKind::List => {
                    let (key, n) = list_change(&mut pipe, spec, c, ttl);
                    owners.extend(std::iter::repeat_n(Some((key, at)), n));
                    continue;
                }
                SinkKind::Topic(_) | SinkKind::Records(_) | SinkKind::PgTable => continue,
            }
            let key = entity_key(spec, &c.key);
            let cmd = pipe
                .cmd("EVAL")
                .arg(REWRITE)
                .arg(1)
                .arg(&key)
                .arg(since)
                .arg(at)
                .arg(spec.version)
                .arg(ttl.unwrap_or(0));
            for (f, v) in spec.fields.iter().zip(values) {
                if *v != Value::Null {
                    cmd.arg(f.name).arg(v.to_string());
                }
            }
            owners.push(Some((key, at)));
        }
        refused.extend(run_pipeline(
            conn,
            &pipe,
            &owners,
            "rewriting the restored checkpoint's entities",
        )?);
    }
    Ok(refused)
}
