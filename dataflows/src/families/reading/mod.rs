//! Webtoon reading: sessions with their completion/exit state, and features per session,
//! user, episode, segment (country × genre × local time of day), A/B experiment group and
//! data-quality hour (DESIGN §5.2, seed 001).
//!
//! A session is a function of its events, not of their arrival order: one `reduce` per
//! session id rebuilds it from the events it holds and from "alive" markers that expire
//! `session_timeout_ms` after each event, so a session without a `complete` or `exit`
//! turns `timed_out` when stream time passes its last event plus the timeout. Sessions
//! then contribute to windowed sums by their start time, like events do in `search`;
//! a changed session retracts its old contributions, so every sum stays exact.

mod decode;
mod events;
mod experiments;
pub mod generate;
mod quality;
mod sessions;
mod tables;
mod views;
mod zones;

pub use events::*;
pub use experiments::*;
use quality::quality_of;
pub use sessions::*;
pub use tables::*;
pub use views::*;
pub use zones::{countries, country_zone};

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::contract::dataflow::{Dataflow, Flagged, GenerateSpec, Produced};
use crate::contract::dimension::{DimRow, DimensionSpec};
use crate::contract::event::{Rejection, Timed};
use crate::contract::quality::{CheckName, ExpectSpec};
use crate::contract::record::{DecodeError, ErrorKind, RecordRef};
use crate::contract::state::State;
use crate::contract::table::{FeatureRow, TableSpec};
use crate::contract::time::{Tick, Window, MINUTE, WINDOW_30D};
use crate::operators::window_sums::window_rows;
use crate::operators::windowed::with_expiries;
use differential_dataflow::AsCollection;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Concat;

/// What the family flags events with (`not_flagged`), by index: `out_of_order_events` and
/// `unzoned_events` of `quality_hourly`.
const FLAGS: [&str; 2] = ["out_of_order", "unzoned"];

/// `[dataflows.reading]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadingConfig {
    pub topic: String,
    /// A session without events for this long (stream time) is `timed_out`.
    pub session_timeout_ms: u64,
    /// An exit (the `exit` event) below this depth is an early exit.
    pub early_exit_pct: u8,
    /// The Postgres table of episode metadata.
    pub metadata_table: String,
    /// The group others are compared with; when an experiment has none by this name, its
    /// first group by name.
    pub control_group: String,
}

impl Default for ReadingConfig {
    fn default() -> Self {
        ReadingConfig {
            topic: "reading-events".into(),
            session_timeout_ms: 30 * MINUTE,
            early_exit_pct: 90,
            metadata_table: "episode_metadata".into(),
            control_group: "control".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Reading {
    config: ReadingConfig,
}

impl Dataflow for Reading {
    type Event = ReadingEvent;
    type Config = ReadingConfig;
    const NAME: &'static str = "reading";

    fn new(config: ReadingConfig) -> Self {
        Reading { config }
    }
    fn config(&self) -> &ReadingConfig {
        &self.config
    }
    fn topics(&self) -> Vec<String> {
        vec![self.config.topic.clone()]
    }
    /// Its ranges, checked on every change (`[quality]`, issue #22).
    fn expectations(&self) -> Vec<ExpectSpec> {
        vec![
            ExpectSpec::new(
                "completion_rate_7d in [0, 1]",
                "feature:user.completion_rate_7d",
                CheckName::Between,
            )
            .bounds(Some(0.0), Some(1.0)),
            ExpectSpec::new(
                "early_exit_rate_7d in [0, 1]",
                "feature:user.early_exit_rate_7d",
                CheckName::Between,
            )
            .bounds(Some(0.0), Some(1.0)),
            ExpectSpec::new(
                "episode completion_rate_30d in [0, 1]",
                "feature:episode.completion_rate_30d",
                CheckName::Between,
            )
            .bounds(Some(0.0), Some(1.0)),
            // seed 001's "zero errors": the record kinds of `quality_hourly`, whose
            // failures per hour are its null, out-of-range, malformed and duplicate counts
            ExpectSpec::new("null events", "events", CheckName::Valid)
                .reasons(&[ErrorKind::MissingField]),
            ExpectSpec::new("out-of-range events", "events", CheckName::Valid)
                .reasons(&[ErrorKind::Range]),
            ExpectSpec::new("malformed events", "events", CheckName::Valid).reasons(&[
                ErrorKind::Json,
                ErrorKind::WrongType,
                ErrorKind::UnknownType,
                ErrorKind::Oversized,
            ]),
            ExpectSpec::new("duplicate events", "events", CheckName::Unique),
            // and its session-made counts, which a later event of the session may revise
            ExpectSpec::new("out-of-order events", "events", CheckName::NotFlagged).flag(FLAGS[0]),
            ExpectSpec::new("unzoned events", "events", CheckName::NotFlagged).flag(FLAGS[1]),
        ]
    }
    fn tables(&self) -> Vec<TableSpec> {
        self.table_specs()
    }
    fn horizon(&self) -> Window {
        SESSION_RETENTION
    }
    fn dimensions(&self) -> Vec<DimensionSpec> {
        vec![DimensionSpec {
            table: self.config.metadata_table.clone(),
            columns: ["episode_id", "title_id", "genre", "episode_no"].map(String::from).into(),
            create: Some(format!(
                "CREATE TABLE IF NOT EXISTS {} (episode_id text PRIMARY KEY, title_id text NOT NULL, genre text NOT NULL, episode_no integer NOT NULL)",
                self.config.metadata_table
            )),
        }]
    }
    fn decode(&self, record: &RecordRef<'_>) -> Result<Timed<ReadingEvent>, DecodeError> {
        decode::decode(record.payload)
    }
    fn keys(&self, event: &ReadingEvent, visit: &mut dyn FnMut(&'static str, &str)) {
        let r = &event.reader;
        visit("session_id", &event.session.0);
        visit("user_id", &r.user.0);
        visit("episode_id", &r.episode.0);
        visit("country", &r.country);
        if let Some(arm) = &r.arm {
            visit("experiment_name", &arm.experiment);
            visit("experiment_group", &arm.group);
        }
    }
    fn build<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<ReadingEvent>>,
        dimensions: Vec<VecCollection<'s, Tick, DimRow>>,
        rejected: VecCollection<'s, Tick, Rejection>,
        state: &State,
    ) -> VecCollection<'s, Tick, FeatureRow> {
        self.build_flagged(events, dimensions, rejected, state).0
    }
    fn flags(&self) -> Vec<&'static str> {
        FLAGS.to_vec()
    }
    /// The flags are `quality_hourly`'s session-made counts: an event out of its
    /// session's order, an event of a reader without a zone.
    fn build_flagged<'s>(
        &self,
        events: VecCollection<'s, Tick, Timed<ReadingEvent>>,
        dimensions: Vec<VecCollection<'s, Tick, DimRow>>,
        rejected: VecCollection<'s, Tick, Rejection>,
        state: &State,
    ) -> (VecCollection<'s, Tick, FeatureRow>, Option<Flagged<'s>>) {
        let sessions = self.sessions(events, state);
        // an hour's flags are final once its 30 days end, as its `quality_hourly` row
        // is: a session leaving the state later takes none back (one leaving before, as
        // its first event's retention ends, takes its flags back from both alike)
        let flagged = (sessions.clone().inner)
            .flat_map(|((_, s), t, r)| {
                let mut flagged = Vec::new();
                for (flag, hours) in [(0u8, &s.out_of_order), (1, &s.unzoned)] {
                    for &(hour, n) in hours {
                        if t < WINDOW_30D.expiry(hour) {
                            flagged.push(((flag, hour), t, r * n as isize));
                        }
                    }
                }
                flagged
            })
            .as_collection();
        let session_rows = sessions.clone().map(|(_, s)| s.row());

        let metadata = dimensions[0].clone().map(|row| {
            let meta = EpisodeMeta {
                title: row[1].clone(),
                genre: row[2].clone(),
            };
            (EpisodeId(row[0].as_str().into()), meta)
        });
        let by_episode = sessions.map(|(_, s)| (s.reader.episode.clone(), s.summary()));
        let known = by_episode.clone().join_map(metadata.clone(), |_, s, meta| {
            (s.clone(), meta.genre.clone())
        });
        let unknown = by_episode
            .antijoin(metadata.clone().map(|(e, _)| e).distinct())
            .map(|(_, s)| (s, UNKNOWN_GENRE.to_string()));
        let this = self.clone();
        // sessions are rebuilt from their restored events, episodes' metadata from the
        // table: their contributions are not checkpointed themselves
        let derived = with_expiries(known.concat(unknown), move |s| {
            this.session_contributions(s)
        })
        .concat(
            metadata
                .map(|(e, meta)| (Entity::Episode(e), Measure::Meta(meta)))
                .inner,
        );
        let durable = with_expiries(rejected, |r| Some(quality_of(r)));
        let this = self.clone();
        let features = window_rows(
            "reading",
            state,
            durable,
            derived,
            move |entity, sums, out| out.extend(this.rows(entity, sums)),
        )
        .concat(session_rows);
        (features, Some(flagged))
    }
    fn generate(&self, spec: &GenerateSpec) -> Box<dyn Iterator<Item = Produced> + Send> {
        Box::new(generate::ReadingTraffic::new(
            self.config.topic.clone(),
            spec.clone(),
        ))
    }
    fn dimension_rows(&self, _spec: &GenerateSpec) -> Vec<(DimensionSpec, Vec<DimRow>)> {
        vec![(self.dimensions().remove(0), generate::episode_metadata())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::time::HOUR;

    #[test]
    fn time_of_day_follows_the_zone() {
        // 2026-01-01T00:30:00Z: 09:30 in Seoul, 19:30 the day before in New York
        let ts = 1_767_227_400_000;
        assert_eq!(time_of_day(ts, Some("Asia/Seoul")), "morning");
        assert_eq!(time_of_day(ts, Some("America/New_York")), "evening");
        assert_eq!(time_of_day(ts, Some("UTC")), "night");
        assert_eq!(time_of_day(ts + 12 * HOUR, None), "afternoon");
        assert_eq!(hour_key(ts - ts % HOUR), "2026-01-01T00");
    }

    #[test]
    fn on_large_samples_the_interval_is_close_to_the_wald_one() {
        // 520 of 1000 against 470 of 1000: d = 0.05, se = sqrt(.52·.48/1000 + .47·.53/1000)
        let ab = AbTest::of((520, 1000), (470, 1000));
        let se = ((0.52 * 0.48 + 0.47 * 0.53) / 1000.0f64).sqrt();
        assert!((ab.diff - 0.05).abs() < 1e-12);
        assert!((ab.ci_low - (0.05 - Z_95 * se)).abs() < 1e-3, "{ab:?}");
        assert!((ab.ci_high - (0.05 + Z_95 * se)).abs() < 1e-3, "{ab:?}");
        assert!(ab.significant());
        assert!(!AbTest::of((48, 100), (47, 100)).significant());
    }
}
