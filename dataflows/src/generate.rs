//! What every family's synthetic traffic shares: the loop that makes `spec.events`
//! records, a share of them malformed and a share sent again a little later.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::contract::dataflow::{GenerateSpec, Produced};

/// What every generator keeps: its spec, its random source (one per seed, shared with the
/// loop, so a seed makes one stream), the records made so far and the copies to send.
pub struct Base {
    pub spec: GenerateSpec,
    pub rng: StdRng,
    /// Records made so far (malformed ones included, copies not).
    pub emitted: u64,
    pub echoes: Echoes,
}

impl Base {
    /// Copies go after 0..`copies_within` records.
    pub fn new(spec: GenerateSpec, copies_within: u32) -> Self {
        Base {
            rng: StdRng::seed_from_u64(spec.seed),
            spec,
            emitted: 0,
            echoes: Echoes::within(copies_within),
        }
    }
}

/// A family's synthetic records; [`next_record`] runs the loop.
pub trait Records {
    fn base(&mut self) -> &mut Base;
    /// Before each new record: moves the generator's clock, if it keeps one.
    fn advance(&mut self) {}
    /// A valid record.
    fn valid(&mut self) -> Produced;
    /// A malformed record, of one of the kinds the family's decoder must turn away.
    fn malformed(&mut self) -> Produced;
}

/// A family's records as an iterator (see [`next_record`]).
pub struct Traffic<R>(pub R);

impl<R: Records> Iterator for Traffic<R> {
    type Item = Produced;

    fn next(&mut self) -> Option<Produced> {
        next_record(&mut self.0)
    }
}

/// The next record of `g`: a copy due now, else a new record (malformed with the spec's
/// share), which may be sent again later; `None` once every record and copy went.
pub fn next_record(g: &mut impl Records) -> Option<Produced> {
    let b = g.base();
    if b.emitted >= b.spec.events {
        return b.echoes.rest();
    }
    if let Some(copy) = b.echoes.due() {
        return Some(copy);
    }
    g.advance();
    let b = g.base();
    let record = if b.rng.random_bool(b.spec.invalid_share) {
        g.malformed()
    } else {
        g.valid()
    };
    let b = g.base();
    b.emitted += 1;
    b.echoes
        .maybe_repeat(&mut b.rng, b.spec.duplicate_share, &record);
    Some(record)
}

/// Copies of generated records sent again a little later: the duplicates a generator
/// makes on request (`GenerateSpec::duplicate_share`).
#[derive(Default)]
pub struct Echoes {
    /// Each copy with the number of records to wait before it goes.
    waiting: std::collections::VecDeque<(u32, Produced)>,
    /// Copies go after 0..`within` records.
    within: u32,
}

impl Echoes {
    pub fn within(records: u32) -> Self {
        Echoes {
            waiting: Default::default(),
            within: records.max(1),
        }
    }
    /// The next copy once the generator is done.
    pub fn rest(&mut self) -> Option<Produced> {
        self.waiting.pop_front().map(|(_, p)| p)
    }
    /// A copy due now, if any (one more record has gone by).
    pub fn due(&mut self) -> Option<Produced> {
        let (wait, _) = self.waiting.front_mut()?;
        if *wait == 0 {
            return self.rest();
        }
        *wait -= 1;
        None
    }
    /// Sends `record` again later with probability `share`.
    pub fn maybe_repeat(&mut self, rng: &mut impl rand::RngExt, share: f64, record: &Produced) {
        if rng.random_bool(share) {
            let wait = rng.random_range(0..self.within);
            self.waiting.push_back((wait, record.clone()));
        }
    }
}
