//! Checkpoints as rows of a Postgres table, `tidemark_checkpoints`.

use anyhow::Context;
use tidemark_dataflows::contract::state::{Restore, WorkerSnapshot};
use tidemark_dataflows::Tick;

use super::*;

/// Rows of `tidemark_checkpoints (job, grp, tick, worker, peers, state)`.
pub struct Table {
    client: postgres::Client,
    job: String,
    group: String,
    damaged: Vec<Tick>,
}

impl Table {
    pub fn open(url: &str, job: &str, group: &str) -> anyhow::Result<Self> {
        let mut client = postgres::Client::connect(url, postgres::NoTls)
            .context("connecting to postgres for checkpoints (postgres.url)")?;
        crate::sink::postgres::create(
            &mut client,
            "CREATE TABLE IF NOT EXISTS tidemark_checkpoints (job text NOT NULL, grp text NOT NULL, \
             tick bigint NOT NULL, worker int NOT NULL, peers int NOT NULL, state bytea NOT NULL, \
             saved_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (job, grp, tick, worker))",
        )?;
        Ok(Table {
            client,
            job: job.into(),
            group: group.into(),
            damaged: Vec::new(),
        })
    }

    /// The ticks of complete checkpoints, newest first.
    fn complete(&mut self) -> anyhow::Result<Vec<i64>> {
        let rows = self.client.query(
            "SELECT tick FROM tidemark_checkpoints WHERE job = $1 AND grp = $2 \
             GROUP BY tick, peers HAVING count(*) = peers ORDER BY tick DESC",
            &[&self.job, &self.group],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

impl Backend for Table {
    fn save(&mut self, part: &WorkerSnapshot) -> anyhow::Result<()> {
        let bytes = encode(part)?;
        self.client.execute(
            "INSERT INTO tidemark_checkpoints (job, grp, tick, worker, peers, state) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job, grp, tick, worker) \
             DO UPDATE SET peers = excluded.peers, state = excluded.state, saved_at = now()",
            &[
                &self.job,
                &self.group,
                &(part.tick as i64),
                &(part.worker as i32),
                &(part.peers as i32),
                &bytes,
            ],
        )?;
        Ok(())
    }

    fn latest(&mut self) -> anyhow::Result<Option<Restore>> {
        let ticks: Vec<Tick> = self.complete()?.into_iter().map(|t| t as Tick).collect();
        let (job, group) = (self.job.clone(), self.group.clone());
        let location = format!("table tidemark_checkpoints (job {job}, group {group})");
        let client = &mut self.client;
        self.damaged.clear();
        newest_valid(ticks, &location, &mut self.damaged, |tick| {
            let rows = client.query(
                "SELECT worker, peers, state FROM tidemark_checkpoints WHERE job = $1 AND grp = $2 AND tick = $3 ORDER BY worker",
                &[&job, &group, &(tick as i64)],
            )?;
            rows.iter()
                .map(|r| {
                    let (worker, peers): (i32, i32) = (r.get(0), r.get(1));
                    let bytes: Vec<u8> = r.get(2);
                    let place = Place {
                        tick,
                        peers: peers as usize,
                        worker: worker as usize,
                    };
                    decode(
                        &bytes,
                        &format!("{tick} of worker {worker} in {location}"),
                        place,
                    )
                })
                .collect()
        })
    }

    fn set_aside(&mut self, tick: Tick) -> anyhow::Result<()> {
        // another group name keeps its rows (for inspection) out of this group's listing
        let moved = self.client.execute(
            "UPDATE tidemark_checkpoints SET grp = grp || '/damaged' WHERE job = $1 AND grp = $2 AND tick = $3",
            &[&self.job, &self.group, &(tick as i64)],
        )?;
        tracing::warn!(tick, rows = moved, job = %self.job, group = %format!("{}/damaged", self.group), "a damaged checkpoint is set aside in tidemark_checkpoints (delete it once inspected)");
        Ok(())
    }

    fn damaged(&self) -> Vec<Tick> {
        self.damaged.clone()
    }

    fn prune(&mut self, worker: usize) -> anyhow::Result<()> {
        // the two newest complete checkpoints stay (see `Dir::prune`)
        if let Some(&newest) = self.complete()?.get(1) {
            self.client.execute(
                "DELETE FROM tidemark_checkpoints WHERE job = $1 AND grp = $2 AND worker = $3 AND tick < $4",
                &[&self.job, &self.group, &(worker as i32), &newest],
            )?;
        }
        Ok(())
    }
}
