//! `tidemark bench reading`: the reading dataflow alone (pre-decoded events, 1 and N
//! workers), memory per open session, and with `--kafka` freshness from Kafka append to
//! the Postgres commit at a fixed rate.

use std::sync::Arc;
use std::time::Instant;

use differential_dataflow::input::Input;
use tidemark_dataflows::ingest::{EventId, Rejection, Timed};
use tidemark_dataflows::reading::{
    generate, Action, EpisodeId, Reader, Reading, ReadingConfig, ReadingEvent, SessionId, UserId,
};
use tidemark_dataflows::{Dataflow, Family, GenerateSpec, Tick};
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::bench::{
    freshness, held_bytes, live_config, report_freshness, report_throughput, BenchArgs,
};
use crate::engine::timely_config;
use crate::kafka::now_ms;

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    // first, while nothing else has grown the heap: freed memory the allocator keeps
    // would otherwise be reused and hide part of the growth
    open_sessions(a.sessions)?;
    let reading = Reading::new(ReadingConfig::default());
    eprintln!("generating {} reading events …", a.events);
    let spec = GenerateSpec {
        events: a.events,
        rate: 20_000,
        duplicate_share: 0.0,
        disorder_share: 0.0,
        ..Default::default()
    };
    let events: Vec<Timed<ReadingEvent>> = Family::generate(&reading, &spec)
        .filter_map(|p| reading.decode(&crate::bench::record(&p.payload)).ok())
        .collect();
    let events = Arc::new(events);
    let catalog = Arc::new(vec![generate::episode_metadata()]);
    report_throughput(reading.clone(), &events, catalog, &a.workers, a.batch)?;
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
    let before = held_bytes();
    let started = Instant::now();
    let guards = timely::execute(timely_config(1, 1, 0, None)?, move |worker| {
        let probe = ProbeHandle::new();
        let state = tidemark_dataflows::state::State::none(0, 1);
        let dataflow = worker.next_dataflow_index();
        let (mut input, mut catalog) = worker.dataflow::<Tick, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Timed<ReadingEvent>, isize>();
            let (catalog, meta) = scope.new_collection();
            let (_, rejected) = scope.new_collection::<Rejection, isize>();
            Reading::new(ReadingConfig::default())
                .build(events, vec![meta], rejected, &state)
                .probe_with(&probe);
            (input, catalog)
        });
        for row in generate::episode_metadata() {
            catalog.insert(row);
        }
        drop(catalog);
        let base = 1_767_225_600_000u64;
        let mut tick = base;
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            input.advance_to(tick);
            for &i in chunk {
                let reader = Reader {
                    user: UserId(format!("user-{}", i % 50_000)),
                    episode: EpisodeId(format!("ep-{}-{}", i % 60, i % 20)),
                    country: "KR".into(),
                    device: "phone".into(),
                    platform: "ios".into(),
                    tz: "Asia/Seoul".into(),
                    arm: None,
                };
                let session = SessionId(format!("rs-{i}"));
                let steps = [Action::Enter, Action::Scroll(20), Action::Scroll(35), Action::Scroll(50)];
                for (k, action) in steps.into_iter().enumerate() {
                    input.insert(Timed {
                        id: EventId::of(&format!("{i}-{k}")),
                        ts: tick - 3_000 + k as u64 * 1_000,
                        event: ReadingEvent {
                            session: session.clone(),
                            action,
                            reader: reader.clone(),
                        },
                    });
                }
            }
            input.flush();
            worker.step_while(|| probe.less_than(&tick));
            tick += 1;
        }
        input.advance_to(tick);
        input.flush();
        worker.step_while(|| probe.less_than(&tick));
        let grown = held_bytes().saturating_sub(before);
        println!(
            "memory per open session: {:.0} B ({n} open sessions of 4 events, RSS +{} MB, built in {:.1} s)",
            grown as f64 / n as f64,
            grown / 1_000_000,
            started.elapsed().as_secs_f64()
        );
        // the sessions stay open: the dataflow goes without running their timeouts out
        worker.drop_dataflow(dataflow);
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    drop(guards);
    Ok(())
}
