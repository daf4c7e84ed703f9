//! `tidemark bench reading`: the reading dataflow alone (pre-decoded events, 1 and N
//! workers), memory per open session, and with `--kafka` freshness from Kafka append to
//! the Postgres commit at a fixed rate.

use tidemark_dataflows::contract::event::{EventId, Timed};
use tidemark_dataflows::families::reading::{
    generate, Action, Depth, EpisodeId, Reader, Reading, ReadingConfig, ReadingEvent, SessionId,
    UserId,
};
use tidemark_dataflows::{Dataflow, GenerateSpec, Tick};

use crate::bench::{
    freshness, held_growth, live_config, report_freshness, report_spans, BenchArgs,
};
use crate::clock::now_ms;

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    if a.quality_cost {
        // its episodes are a Postgres table: Postgres is also its store here
        return crate::bench::quality::cost("reading", a, true);
    }
    // first, while nothing else has grown the heap: freed memory the allocator keeps
    // would otherwise be reused and hide part of the growth
    open_sessions(a.sessions)?;
    let reading = Reading::new(ReadingConfig::default());
    report_spans(reading.clone(), a, |_| vec![generate::episode_metadata()])?;
    if a.kafka {
        let stamp = now_ms();
        let topic = format!("bench-reading-{stamp}");
        let spec = GenerateSpec::default();
        let topics = [(&*topic, 4)];
        let section = serde_json::json!({});
        let cfg = live_config(
            "reading",
            stamp,
            a.e2e_workers,
            &[&topic],
            section,
            &spec,
            &topics,
        )?;
        let rate = a.freshness_rate.unwrap_or(20_000);
        let h = freshness(cfg, rate, a.freshness_seconds, stamp)?;
        report_freshness(&h, rate, "Kafka append → Postgres COMMIT");
    }
    Ok(())
}

/// Resident memory per open session: `n` sessions of an enter and three scrolls each,
/// none finished, on one worker; RSS after minus RSS before (both after `mi_collect`),
/// over `n`.
fn open_sessions(n: u64) -> anyhow::Result<()> {
    let sessions = |i: u64, tick: Tick| {
        let reader = Reader {
            user: UserId(format!("user-{}", i % 50_000).into()),
            episode: EpisodeId(format!("ep-{}-{}", i % 60, i % 20).into()),
            country: "KR".into(),
            device: "phone".into(),
            platform: "ios".into(),
            tz: Some("Asia/Seoul".into()),
            arm: None,
        };
        let session = SessionId(format!("rs-{i}").into());
        let steps = [
            Action::Enter,
            Action::Scroll(Depth(20_000)),
            Action::Scroll(Depth(35_000)),
            Action::Scroll(Depth(50_000)),
        ];
        steps
            .into_iter()
            .enumerate()
            .map(|(k, action)| Timed {
                id: EventId::of(&format!("{i}-{k}")),
                ts: tick - 3_000 + k as u64 * 1_000,
                event: ReadingEvent {
                    session: session.clone(),
                    action,
                    reader: reader.clone(),
                },
            })
            .collect()
    };
    // one tick per chunk; the sessions stay open (their timeouts are not run out)
    let next = |_, tick: Tick| tick + 1;
    let reading = Reading::new(ReadingConfig::default());
    let catalog = vec![generate::episode_metadata()];
    let g = held_growth(reading, catalog, 1_767_225_600_000, n, sessions, next)?;
    println!(
        "memory per open session: {:.0} B ({n} open sessions of 4 events, RSS +{} MB, built in {:.1} s)",
        g.total as f64 / n as f64,
        g.total / 1_000_000,
        g.secs
    );
    Ok(())
}
