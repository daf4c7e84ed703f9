//! The built-in traffic as a record source: a family's generator, for `demo` and the
//! benchmarks (no Kafka).

use std::time::Instant;

use tidemark_dataflows::contract::record::{Poll, RecordRef, RecordSource, Visit};
use tidemark_dataflows::Produced;

use crate::archive::file::RecordIn;
use crate::archive::WorkerArchive;

/// The family's synthetic traffic as a source: worker `w` of `n` takes records `w, w+n, …`.
pub struct GeneratorSource {
    records: Box<dyn Iterator<Item = Produced> + Send>,
    worker: usize,
    peers: usize,
    next: u64,
    pace: Option<(Instant, u64)>,
    done: bool,
    /// The demo's archive: each topic is one partition per worker.
    archive: Option<(WorkerArchive, Vec<String>)>,
    /// `tidemark_events_consumed_total{topic}`, as a Kafka source counts it, with the
    /// records taken in this poll (added once per poll, not per record).
    consumed: Vec<(String, metrics::Counter, u64)>,
}

impl GeneratorSource {
    pub fn new(
        records: Box<dyn Iterator<Item = Produced> + Send>,
        worker: usize,
        peers: usize,
        pace: Option<u64>,
    ) -> Self {
        GeneratorSource {
            records,
            worker,
            peers,
            next: 0,
            pace: pace.map(|r| (Instant::now(), r.max(1))),
            done: false,
            archive: None,
            consumed: Vec::new(),
        }
    }

    /// Archives the records the dataflow takes, under `topics` (the family's).
    pub fn archived(mut self, archive: WorkerArchive, topics: Vec<String>) -> Self {
        self.archive = Some((archive, topics));
        self
    }

    fn count(&mut self, topic: &str) {
        let i = match self.consumed.iter().position(|(t, _, _)| t == topic) {
            Some(i) => i,
            None => {
                let c = metrics::counter!(crate::telemetry::CONSUMED, "topic" => topic.to_string());
                self.consumed.push((topic.to_string(), c, 0));
                self.consumed.len() - 1
            }
        };
        self.consumed[i].2 += 1;
    }

    /// Adds the poll's counts to the counters.
    fn flush_counts(&mut self) {
        for (_, counter, n) in &mut self.consumed {
            if *n > 0 {
                counter.increment(std::mem::take(n));
            }
        }
    }
}

impl RecordSource for GeneratorSource {
    fn poll(&mut self, max: usize, visit: &mut dyn FnMut(RecordRef<'_>) -> Visit) -> Poll {
        let polled = self.take(max, visit);
        self.flush_counts();
        polled
    }
    fn tend(&mut self) {
        if let Some((archive, _)) = &mut self.archive {
            archive.tend();
        }
    }
    fn now_ms(&self) -> u64 {
        crate::clock::now_ms()
    }
}

impl GeneratorSource {
    /// Takes up to `max` records of this worker, counting them per topic.
    fn take(&mut self, max: usize, visit: &mut dyn FnMut(RecordRef<'_>) -> Visit) -> Poll {
        let mut n = 0;
        while n < max && !self.done {
            if let Some((start, rate)) = self.pace {
                if self.next as f64 / rate as f64 > start.elapsed().as_secs_f64() {
                    return Poll::Caught { idle: false };
                }
            }
            let Some(p) = self.records.next() else {
                self.done = true;
                break;
            };
            let i = self.next;
            self.next += 1;
            if i as usize % self.peers != self.worker {
                continue;
            }
            n += 1;
            self.count(&p.topic);
            let key = p.key.as_deref().map(str::as_bytes);
            let record = RecordRef {
                topic: &p.topic,
                partition: self.worker as i32,
                offset: i as i64,
                append_ms: crate::clock::now_ms() as i64,
                key,
                payload: &p.payload,
                read_ms: None,
                headers: None,
                tombstone: false,
            };
            if let (Visit::Taken(event), Some((archive, topics))) =
                (visit(record), &mut self.archive)
            {
                let lane = topics.iter().position(|t| *t == p.topic).unwrap_or(0);
                let r = RecordIn::taken(&record, event, record.append_ms as u64);
                archive.take(lane, &p.topic, record.partition, r, std::iter::empty());
            }
        }
        if self.done {
            Poll::Finished
        } else if n == max {
            Poll::Busy
        } else {
            Poll::Caught { idle: false }
        }
    }
}
