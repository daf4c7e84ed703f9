//! Which job owns each feature view in a store. Two jobs writing one view would overwrite
//! each other's entities, and a restart's rollback of one would delete the other's: so a
//! job claims its views at start (Redis hash `tidemark:owners`, Postgres table
//! `tidemark_owners`) and a job whose view another job holds is refused with the fix.
//! `tidemark release --job J` hands J's views back once J is retired.

use anyhow::Context;
use tidemark_dataflows::contract::table::TableSpec;

use super::entity_key;
use super::postgres::table_name;
use crate::config::Config;

/// The Postgres table of owners: table name → job.
const OWNERS_TABLE: &str = "CREATE TABLE IF NOT EXISTS tidemark_owners (name text PRIMARY KEY, \
     job text NOT NULL, claimed_at timestamptz NOT NULL DEFAULT now())";

/// The Redis hash of owners: key prefix (`feat:doc`) → job.
pub const REDIS_OWNERS: &str = "tidemark:owners";

/// Claims every view in `tables` for `job` in the configured stores; a view another job
/// holds is an error naming it, its owner and the fix.
pub fn claim(cfg: &Config, tables: &[TableSpec]) -> anyhow::Result<()> {
    let job = &cfg.job;
    let mut taken: Vec<String> = Vec::new();
    if let Some(url) = &cfg.redis.url {
        let prefixes = redis_views(tables);
        if !prefixes.is_empty() {
            let mut c = redis::Client::open(url.as_str())?
                .get_connection()
                .context("connecting to redis (redis.url)")?;
            // claim what is free, then report what another job holds
            let owners: Vec<Option<String>> = redis::Script::new(
                "for _, v in ipairs(KEYS) do redis.call('HSETNX', ARGV[1], v, ARGV[2]) end \
                 return redis.call('HMGET', ARGV[1], unpack(KEYS))",
            )
            .key(&prefixes)
            .arg(REDIS_OWNERS)
            .arg(job)
            .invoke(&mut c)
            .context("claiming the job's views in redis")?;
            for (view, owner) in prefixes.iter().zip(owners) {
                if let Some(o) = owner.filter(|o| o != job) {
                    taken.push(format!("redis {view}:* (job '{o}')"));
                }
            }
        }
    }
    if let Some(url) = &cfg.postgres.url {
        let names: Vec<String> = tables
            .iter()
            .filter(|t| t.sink.in_postgres())
            .map(table_name)
            .collect();
        if !names.is_empty() {
            let mut c = postgres::Client::connect(url, postgres::NoTls)
                .context("connecting to postgres (postgres.url)")?;
            super::postgres::create(&mut c, OWNERS_TABLE)?;
            c.execute(
                "INSERT INTO tidemark_owners (name, job) SELECT unnest($1::text[]), $2 \
                 ON CONFLICT (name) DO NOTHING",
                &[&names, job],
            )?;
            for row in c.query(
                "SELECT name, job FROM tidemark_owners WHERE name = ANY($1) AND job <> $2 ORDER BY name",
                &[&names, job],
            )? {
                let (name, owner): (String, String) = (row.get(0), row.get(1));
                taken.push(format!("postgres table {name} (job '{owner}')"));
            }
        }
    }
    if !taken.is_empty() {
        anyhow::bail!(
            "job '{job}' writes feature views another job owns: {}. Two jobs writing one view overwrite \
             and roll back each other's entities: run this one as that job (--job), give it stores of its \
             own (another Redis database, another Postgres database), or, once the other job is retired, \
             hand its views back with `tidemark release --job <that job>`",
            taken.join(", ")
        );
    }
    Ok(())
}

/// The key prefixes of the views `tables` keep in Redis.
fn redis_views(tables: &[TableSpec]) -> Vec<String> {
    let mut v: Vec<String> = tables
        .iter()
        .filter(|t| t.sink.in_redis())
        .map(|t| entity_key(t, &[]))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Hands back every view `cfg.job` owns in the configured stores (`tidemark release`).
/// Returns what was released.
pub fn release(cfg: &Config) -> anyhow::Result<Vec<String>> {
    let job = &cfg.job;
    let mut released = Vec::new();
    if let Some(url) = &cfg.redis.url {
        let mut c = redis::Client::open(url.as_str())?
            .get_connection()
            .context("connecting to redis (redis.url)")?;
        let owners: std::collections::BTreeMap<String, String> =
            redis::cmd("HGETALL").arg(REDIS_OWNERS).query(&mut c)?;
        for (view, _) in owners.into_iter().filter(|(_, o)| o == job) {
            let _: () = redis::cmd("HDEL")
                .arg(REDIS_OWNERS)
                .arg(&view)
                .query(&mut c)?;
            released.push(format!("redis {view}:*"));
        }
    }
    if let Some(url) = &cfg.postgres.url {
        let mut c = postgres::Client::connect(url, postgres::NoTls)
            .context("connecting to postgres (postgres.url)")?;
        super::postgres::create(&mut c, OWNERS_TABLE)?;
        for row in c.query(
            "DELETE FROM tidemark_owners WHERE job = $1 RETURNING name",
            &[job],
        )? {
            released.push(format!("postgres table {}", row.get::<_, String>(0)));
        }
    }
    Ok(released)
}
