//! Where a file goes: Hive layout by the records' event hour, named by partition and offsets.
//!
//! `topic={t}/dt=YYYY-MM-DD/hour=HH/part-{partition}-{first offset}-{last offset}.parquet`
//! (UTC). The offsets make a name unique and tell a restart which files lie past the
//! positions it resumes from, without opening them.

use object_store::path::Path;

const HOUR_MS: i64 = 3_600_000;

/// The start of the UTC hour holding `ms` (a negative time is filed at the epoch).
pub fn hour_of(ms: i64) -> i64 {
    ms.max(0) / HOUR_MS * HOUR_MS
}

/// The folder of one topic's files.
pub fn topic_dir(prefix: &Path, topic: &str) -> Path {
    prefix.clone().join(format!("topic={topic}"))
}

/// Where worker `worker` of job `job` marks how far its records are archived.
pub fn mark_path(prefix: &Path, job: &str, worker: usize) -> Path {
    prefix
        .clone()
        .join("_marks")
        .join(job)
        .join(format!("worker-{worker}.json"))
}

/// The path of the file of `topic`/`partition`'s records of the hour starting at `hour_ms`,
/// offsets `first..=last`.
pub fn file_path(
    prefix: &Path,
    topic: &str,
    hour_ms: i64,
    partition: i32,
    first: i64,
    last: i64,
) -> Path {
    let (y, m, d) = civil_from_days(hour_ms.div_euclid(86_400_000));
    let hour = hour_ms.rem_euclid(86_400_000) / HOUR_MS;
    topic_dir(prefix, topic)
        .join(format!("dt={y:04}-{m:02}-{d:02}"))
        .join(format!("hour={hour:02}"))
        .join(format!("part-{partition}-{first}-{last}.parquet"))
}

/// The partition and offset range a file's name gives, if it is an archive file.
pub fn parse_name(name: &str) -> Option<(i32, i64, i64)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let mut parts = rest.splitn(3, '-');
    let partition = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    Some((partition, first, last))
}

/// The start of the hour a file's path files it under (`…/dt=YYYY-MM-DD/hour=HH/…`).
pub fn hour_of_path(path: &Path) -> Option<i64> {
    let parts: Vec<String> = path.parts().map(|p| p.as_ref().to_string()).collect();
    let day = parts.iter().find_map(|p| p.strip_prefix("dt="))?;
    let hour: i64 = parts
        .iter()
        .find_map(|p| p.strip_prefix("hour="))?
        .parse()
        .ok()?;
    let mut ymd = day.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    Some(days_from_civil(y, m, d) * 86_400_000 + hour * HOUR_MS)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_hive_layout_by_utc_hour() {
        let root = Path::from("lake");
        // 2026-03-01T13:59:59.999Z
        let ms = 1_772_373_599_999;
        let p = file_path(&root, "search-events", hour_of(ms), 3, 10, 42);
        assert_eq!(
            p.as_ref(),
            "lake/topic=search-events/dt=2026-03-01/hour=13/part-3-10-42.parquet"
        );
        assert_eq!(hour_of(ms + 1) - hour_of(ms), HOUR_MS);
        // leap day and the year's end
        let p = file_path(&root, "t", 1_709_164_800_000, 0, 0, 0);
        assert!(p.as_ref().contains("dt=2024-02-29/hour=00"), "{p}");
        let p = file_path(&root, "t", 1_767_222_000_000, 0, 0, 0);
        assert!(p.as_ref().contains("dt=2025-12-31/hour=23"), "{p}");
        assert!(file_path(&root, "t", hour_of(-5), 0, 0, 0)
            .as_ref()
            .contains("dt=1970-01-01/hour=00"));
        // and back
        for hour in [0, 1_709_164_800_000, 1_767_222_000_000, hour_of(ms)] {
            assert_eq!(
                hour_of_path(&file_path(&root, "t", hour, 0, 0, 0)),
                Some(hour)
            );
        }
    }

    #[test]
    fn names_give_back_partition_and_offsets() {
        assert_eq!(parse_name("part-3-10-42.parquet"), Some((3, 10, 42)));
        assert_eq!(parse_name("part-3-10.parquet"), None);
        assert_eq!(parse_name("part-x-1-2.parquet"), None);
        assert_eq!(parse_name("other.parquet"), None);
    }
}
