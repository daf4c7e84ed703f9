//! Checking `[[quality.expect]]` against a family's topics and views: each error names
//! the expectation, its key and the fix.

use super::{CheckName, ExpectSpec, Expectation, Expectations, Target};
use crate::contract::record::ErrorKind;
use crate::contract::table::TableSpec;

impl Expectations {
    /// Checks `specs` against the family's topics and views; the error names the
    /// expectation, its key and the fix.
    ///
    /// A topic is named as the job reads it (`kafka.topics`) or by the family's own name
    /// for it (`aliases`, in the same order), so one config serves every environment.
    /// `flags`: what the family flags events with (`not_flagged`).
    pub fn compile(
        specs: &[ExpectSpec],
        topics: &[String],
        aliases: &[String],
        tables: &[TableSpec],
        flags: &[&str],
    ) -> Result<Self, String> {
        if specs.len() > u16::MAX as usize {
            return Err(format!(
                "quality.expect: {} expectations, at most 65535",
                specs.len()
            ));
        }
        let mut list = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let at = format!("quality.expect[{i}] ({:?})", spec.name);
            if spec.name.trim().is_empty() {
                return Err(format!(
                    "quality.expect[{i}].name is empty: give every expectation a name"
                ));
            }
            if let Some(j) = specs[..i].iter().position(|s| s.name == spec.name) {
                return Err(format!(
                    "{at}.name: expectation {j} has the same name: names key the report, make them unique"
                ));
            }
            let target =
                target(&spec.on, topics, aliases, tables).map_err(|e| format!("{at}.on: {e}"))?;
            let pattern = check(spec, &target).map_err(|e| format!("{at}.check: {e}"))?;
            if !(0.0..=1.0).contains(&spec.max_failure_share) {
                return Err(format!(
                    "{at}.max_failure_share = {}: a share, between 0 and 1",
                    spec.max_failure_share
                ));
            }
            let flag = flag(spec, flags).map_err(|e| format!("{at}.flag: {e}"))?;
            list.push(Expectation {
                spec: spec.clone(),
                target,
                pattern,
                flag,
            });
        }
        Ok(Expectations {
            list,
            topics: topics.to_vec(),
        })
    }
}

/// `not_flagged`'s flag: the index of one of the family's `flags`.
fn flag(spec: &ExpectSpec, flags: &[&str]) -> Result<Option<u8>, String> {
    let known = || match flags {
        [] => "this dataflow flags no events".to_string(),
        _ => format!("use one of {}", flags.join(", ")),
    };
    match (spec.check, &spec.flag) {
        (CheckName::NotFlagged, Some(f)) => match flags.iter().position(|k| k == f) {
            Some(i) => Ok(Some(i as u8)),
            None => Err(format!("{f:?} is not a flag of this dataflow: {}", known())),
        },
        (CheckName::NotFlagged, None) => Err(format!("not_flagged needs flag: {}", known())),
        (name, Some(_)) => Err(format!(
            "{name:?} takes no flag: remove it (not_flagged does)"
        )),
        (_, None) => Ok(None),
    }
}

/// `on`, resolved.
fn target(
    on: &str,
    topics: &[String],
    aliases: &[String],
    tables: &[TableSpec],
) -> Result<Target, String> {
    if on == "events" {
        return Ok(Target::Records(None));
    }
    if let Some(rest) = on.strip_prefix("event:") {
        // the longest topic the rest starts with (topic names may hold dots)
        let named = topics.iter().enumerate();
        let found = named
            .chain(
                aliases
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i < topics.len()),
            )
            .filter(|(_, t)| rest == t.as_str() || rest.starts_with(&format!("{t}.")))
            .max_by_key(|(_, t)| t.len());
        let Some((i, topic)) = found else {
            return Err(format!(
                "{on:?} names no topic of this dataflow: use event:TOPIC or event:TOPIC.FIELD with TOPIC one of {}",
                topics.join(", ")
            ));
        };
        let field = &rest[topic.len()..];
        return match field.strip_prefix('.') {
            None => Ok(Target::Records(Some(i))),
            Some(path) if path.split('.').all(|p| !p.is_empty()) => Ok(Target::EventField(
                i,
                path.split('.').map(str::to_string).collect(),
            )),
            Some(_) => Err(format!(
                "{on:?}: an empty field name; use event:{topic}.FIELD"
            )),
        };
    }
    if let Some(rest) = on.strip_prefix("feature:") {
        let (view, field) = match rest.split_once('.') {
            Some((v, f)) => (v, Some(f)),
            None => (rest, None),
        };
        let views: Vec<&str> = tables.iter().map(|t| t.ns).collect();
        let Some(ti) = views.iter().position(|v| *v == view) else {
            return Err(format!(
                "{on:?}: no feature view '{view}': use feature:VIEW.FIELD with VIEW one of {}",
                views.join(", ")
            ));
        };
        let Some(field) = field else {
            return Ok(Target::Feature(ti as u8, None));
        };
        let fields = &tables[ti].fields;
        return match fields.iter().position(|f| f.name == field) {
            Some(fi) => Ok(Target::Feature(ti as u8, Some(fi))),
            None => Err(format!(
                "{on:?}: view '{view}' has no field '{field}': use one of {}",
                fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
            )),
        };
    }
    Err(format!(
        "{on:?}: use \"events\", \"event:TOPIC\", \"event:TOPIC.FIELD\", \"feature:VIEW\" or \"feature:VIEW.FIELD\""
    ))
}

/// Whether `check` fits `target` and has what it needs; `matches`' pattern, compiled.
fn check(spec: &ExpectSpec, target: &Target) -> Result<Option<regex::Regex>, String> {
    let name = spec.check;
    let ok_target = match target {
        Target::Records(None) => name.on_records(),
        Target::Records(Some(_)) => {
            name.on_records() && !matches!(name, CheckName::Unique | CheckName::NotFlagged)
        }
        Target::EventField(..) | Target::Feature(_, Some(_)) => {
            !name.on_records() || name == CheckName::RowsPerHour
        }
        Target::Feature(_, None) => name == CheckName::RowsPerHour,
    };
    if !ok_target {
        let fix = match name {
            CheckName::Unique => {
                "unique applies to \"events\" (event ids within the dedup horizon)"
            }
            CheckName::NotFlagged => "not_flagged applies to \"events\"",
            CheckName::Valid | CheckName::NotOutOfOrder | CheckName::Freshness => {
                "use on = \"events\" or \"event:TOPIC\" (whole records)"
            }
            _ => "use on = \"event:TOPIC.FIELD\" or \"feature:VIEW.FIELD\" (a field)",
        };
        return Err(format!("{name:?} does not apply to {:?}: {fix}", spec.on));
    }
    let bounds = matches!(
        name,
        CheckName::Between
            | CheckName::RowsPerHour
            | CheckName::MeanBetween
            | CheckName::StddevBetween
    );
    if name == CheckName::Freshness {
        return match (spec.min, spec.max) {
            (None, Some(max)) if max >= 0.0 => Ok(None),
            _ => Err("freshness needs max = SECONDS (≥ 0) and no min: the largest age of the stream at a record's arrival".into()),
        };
    }
    if bounds && spec.min.is_none() && spec.max.is_none() {
        return Err(format!("{name:?} needs min, max or both"));
    }
    if !bounds && (spec.min.is_some() || spec.max.is_some()) {
        return Err(format!("{name:?} takes no min or max: remove them"));
    }
    if let (Some(a), Some(b)) = (spec.min, spec.max) {
        if a > b {
            return Err(format!("min = {a} is above max = {b}"));
        }
    }
    if name != CheckName::InSet && spec.values.is_some() {
        return Err(format!(
            "{name:?} takes no values: remove them (in_set does)"
        ));
    }
    if name != CheckName::Matches && spec.pattern.is_some() {
        return Err(format!(
            "{name:?} takes no pattern: remove it (matches does)"
        ));
    }
    if let Some(reasons) = &spec.reasons {
        if name != CheckName::Valid {
            return Err(format!(
                "{name:?} takes no reasons: remove them (valid does)"
            ));
        }
        let known = ErrorKind::ALL.map(|k| k.as_str());
        if let Some(r) = reasons.iter().find(|r| !known.contains(&r.as_str())) {
            return Err(format!("reason {r:?} is not one of {}", known.join(", ")));
        }
        if reasons.is_empty() {
            return Err("reasons = []: list at least one, or leave it out for all".into());
        }
    }
    if name == CheckName::InSet && spec.values.as_ref().is_none_or(Vec::is_empty) {
        return Err("in_set needs values = [\"a\", \"b\", …]".into());
    }
    match (name, &spec.pattern) {
        (CheckName::Matches, Some(p)) => regex::Regex::new(p)
            .map(Some)
            .map_err(|e| format!("pattern {p:?}: {e}")),
        (CheckName::Matches, None) => Err("matches needs pattern = \"^…$\"".into()),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::table::{float, SinkKind};

    fn tables() -> Vec<TableSpec> {
        vec![TableSpec {
            ns: "doc",
            keys: vec!["doc_id"],
            fields: vec![float("ctr_doc")],
            version: 1,
            sink: SinkKind::Store,
            redis_prefix: None,
        }]
    }

    #[test]
    fn targets_and_errors_name_the_fix() {
        let topics = vec!["search-events".to_string(), "a.b".to_string()];
        let t = tables();
        let c = |on: &str, check| {
            let spec = ExpectSpec::new("x", on, check).bounds(Some(0.0), Some(1.0));
            Expectations::compile(&[spec], &topics, &[], &t, &[]).map(|e| e.list[0].target.clone())
        };
        assert_eq!(
            c("feature:doc.ctr_doc", CheckName::Between),
            Ok(Target::Feature(0, Some(0)))
        );
        assert_eq!(
            c("event:a.b.c.d", CheckName::Between),
            Ok(Target::EventField(1, vec!["c".into(), "d".into()]))
        );
        assert!(c("feature:doc.nope", CheckName::Between)
            .unwrap_err()
            .contains("ctr_doc"));
        assert!(c("event:other.x", CheckName::Between)
            .unwrap_err()
            .contains("search-events"));
        let unique = ExpectSpec::new("u", "event:search-events.event_id", CheckName::Unique);
        let e = Expectations::compile(&[unique], &topics, &[], &t, &[]).unwrap_err();
        assert!(
            e.contains("quality.expect[0]") && e.contains("\"events\""),
            "{e}"
        );
        let fresh = |min, max| {
            let spec = ExpectSpec::new("f", "events", CheckName::Freshness).bounds(min, max);
            Expectations::compile(&[spec], &topics, &[], &t, &[]).map(|_| ())
        };
        assert_eq!(fresh(None, Some(60.0)), Ok(()));
        for (min, max) in [(None, None), (Some(1.0), Some(60.0)), (None, Some(-1.0))] {
            let e = fresh(min, max).unwrap_err();
            assert!(e.contains("max = SECONDS"), "{e}");
        }
        let valid = |reasons: &[&str], check| {
            let mut spec = ExpectSpec::new("r", "events", check);
            spec.reasons = Some(reasons.iter().map(|r| r.to_string()).collect());
            Expectations::compile(&[spec], &topics, &[], &t, &[]).map(|_| ())
        };
        assert_eq!(valid(&["range", "json"], CheckName::Valid), Ok(()));
        assert!(valid(&["nulls"], CheckName::Valid)
            .unwrap_err()
            .contains("missing_field"));
        assert!(valid(&[], CheckName::Valid)
            .unwrap_err()
            .contains("leave it out"));
        assert!(valid(&["json"], CheckName::Unique)
            .unwrap_err()
            .contains("valid does"));
        let on_field = ExpectSpec::new("f", "event:search-events.ts", CheckName::Freshness);
        let e = Expectations::compile(&[on_field.bounds(None, Some(9.0))], &topics, &[], &t, &[]);
        assert!(e.unwrap_err().contains("whole records"));
    }

    #[test]
    fn a_flag_is_one_the_family_has() {
        let (topics, t) = (vec!["reading-events".to_string()], tables());
        let flagged = |on: &str, flag: Option<&str>, flags: &[&str]| {
            let mut spec = ExpectSpec::new("f", on, CheckName::NotFlagged);
            spec.flag = flag.map(str::to_string);
            Expectations::compile(&[spec], &topics, &[], &t, flags).map(|e| e.list[0].flag)
        };
        let flags = ["out_of_order", "unzoned"];
        assert_eq!(flagged("events", Some("unzoned"), &flags), Ok(Some(1)));
        let e = flagged("events", Some("late"), &flags).unwrap_err();
        assert!(
            e.contains(".flag") && e.contains("out_of_order, unzoned"),
            "{e}"
        );
        let e = flagged("events", None, &flags).unwrap_err();
        assert!(e.contains("needs flag"), "{e}");
        let e = flagged("events", Some("unzoned"), &[]).unwrap_err();
        assert!(e.contains("flags no events"), "{e}");
        let e = flagged("event:reading-events", Some("unzoned"), &flags).unwrap_err();
        assert!(e.contains("applies to \"events\""), "{e}");
        let mut valid = ExpectSpec::new("v", "events", CheckName::Valid);
        valid.flag = Some("unzoned".into());
        let e = Expectations::compile(&[valid], &topics, &[], &t, &flags).unwrap_err();
        assert!(e.contains("not_flagged does"), "{e}");
    }
}
