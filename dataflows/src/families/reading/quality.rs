//! Data quality: null, duplicate, out-of-order and out-of-range events per hour.

use crate::contract::event::{Rejected, Rejection};
use crate::contract::record::ErrorKind;
use crate::contract::time::{Tick, HOUR, WINDOW_30D};

use super::*;

/// What a rejected record adds to its hour's quality counts.
pub(super) fn quality_of(r: &Rejection) -> ((Entity, Measure), isize, Option<Tick>) {
    let measure = match &r.reason {
        Rejected::Duplicate => Measure::Duplicate,
        Rejected::Invalid(ErrorKind::MissingField) => Measure::Null,
        Rejected::Invalid(ErrorKind::Range) => Measure::OutOfRange,
        Rejected::Invalid(_) => Measure::Malformed,
    };
    let hour = r.ts - r.ts % HOUR;
    (
        (Entity::Quality(hour), measure),
        1,
        Some(WINDOW_30D.expiry(hour)),
    )
}
