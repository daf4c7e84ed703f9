//! The built-in traffic as a record source: a family's generator, for `demo` and the
//! benchmarks (no Kafka).

use std::time::Instant;

use tidemark_dataflows::contract::record::{Poll, RecordRef, RecordSource, Visit};
use tidemark_dataflows::Produced;

/// The family's synthetic traffic as a source: worker `w` of `n` takes records `w, w+n, …`.
pub struct GeneratorSource {
    records: Box<dyn Iterator<Item = Produced> + Send>,
    worker: usize,
    peers: usize,
    next: u64,
    pace: Option<(Instant, u64)>,
    done: bool,
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
        }
    }
}

impl RecordSource for GeneratorSource {
    fn poll(&mut self, max: usize, visit: &mut dyn FnMut(RecordRef<'_>) -> Visit) -> Poll {
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
            let key = p.key.as_deref().map(str::as_bytes);
            visit(RecordRef {
                topic: &p.topic,
                partition: self.worker as i32,
                offset: i as i64,
                append_ms: crate::clock::now_ms() as i64,
                key,
                payload: &p.payload,
            });
        }
        if self.done {
            Poll::Finished
        } else if n == max {
            Poll::Busy
        } else {
            Poll::Caught { idle: false }
        }
    }
    fn now_ms(&self) -> u64 {
        crate::clock::now_ms()
    }
}
