//! `tidemark feast export`: a ready Feast feature repo for the job's family, so a Feast user
//! runs `feast apply` and reads Tidemark's features through Feast's `remote` online store,
//! with no definitions written by hand. The views, types and services are the read API's
//! own ([`Catalog`]), so what Feast asks for is what the API answers.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::config::feast::{Catalog, View};
use crate::config::Config;

/// `tidemark feast export`: the repo of `config`'s family for a read API at `url` (default:
/// `http://{http}`, loopback for a server on every interface); what to do next.
pub fn export_job(config: &Config, url: Option<String>, out: &Path) -> anyhow::Result<String> {
    let family = crate::engine::family_of(config)?;
    let catalog = Catalog::new(&*family, &config.serve.feature_services)?;
    let http =
        (config.http.as_deref().unwrap_or("127.0.0.1:8080")).replace("0.0.0.0:", "127.0.0.1:");
    let url = url.unwrap_or_else(|| format!("http://{http}"));
    export(config, &catalog, &url, out)?;
    let names: Vec<&str> = catalog.services.iter().map(|s| s.name.as_str()).collect();
    Ok(format!(
        "wrote a Feast repo for dataflow {} to {} (online store: {url}; services: {}); next: cd {} && feast apply",
        config.dataflow,
        out.display(),
        names.join(", "),
        out.display()
    ))
}

/// The repo's files: `feature_store.yaml` and `tidemark_{family}.py`.
pub fn export(config: &Config, catalog: &Catalog, url: &str, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out.join("data"))
        .with_context(|| format!("creating {} (--out)", out.display()))?;
    let project = format!("tidemark_{}", config.dataflow);
    let yaml = format!(
        "# Written by `tidemark feast export` for job '{job}' (dataflow {family}).\n\
         # Feast reads the online features from Tidemark's read API (`remote` online store).\n\
         project: {project}\n\
         provider: local\n\
         registry: data/registry.db\n\
         online_store:\n  type: remote\n  path: {url}\n\
         entity_key_serialization_version: 3\n",
        job = config.job,
        family = config.dataflow,
    );
    write(&out.join("feature_store.yaml"), &yaml)?;
    let py = definitions(config, catalog);
    write(&out.join(format!("tidemark_{}.py", config.dataflow)), &py)?;
    Ok(())
}

/// Writes one file of the repo, naming it in an error.
fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A Python string literal: Rust's debug form of a name of letters, digits, `_` and `-`
/// (what views, features and services are named of) is one.
fn lit(s: &str) -> String {
    format!("{s:?}")
}

/// The Python module: entities, one feature view per readable view, the services.
fn definitions(config: &Config, catalog: &Catalog) -> String {
    let views: Vec<&View> = catalog.views.iter().filter(|v| v.readable).collect();
    let mut py = String::new();
    let _ = writeln!(
        py,
        "# Written by `tidemark feast export` (Tidemark {}) for dataflow {}: the feature views\n\
         # and services Tidemark's read API serves. Regenerate rather than edit.\n\
         from datetime import timedelta\n\n\
         from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType\n\
         from feast.types import Array, Float64, Int64, String\n",
        env!("CARGO_PKG_VERSION"),
        config.dataflow
    );
    let mut keys: Vec<&str> = views.iter().flat_map(|v| v.keys.iter().copied()).collect();
    keys.sort_unstable();
    keys.dedup();
    for k in &keys {
        let _ = writeln!(
            py,
            "entity_{k} = Entity(name={n}, join_keys=[{n}], value_type=ValueType.STRING)",
            n = lit(k)
        );
    }
    for v in &views {
        view_definition(&mut py, config, v);
    }
    for (i, s) in catalog.services.iter().enumerate() {
        // the refs grouped by view, in first-seen order: `view[["a", "b"]]`
        let mut parts: Vec<(&str, Vec<&str>)> = Vec::new();
        for (view, feature) in &s.refs {
            match parts.iter_mut().find(|(v, _)| v == view) {
                Some((_, fs)) => fs.push(feature),
                None => parts.push((view, vec![feature])),
            }
        }
        let projections: Vec<String> = (parts.iter())
            .map(|(view, fs)| {
                let names: Vec<String> = fs.iter().map(|f| lit(f)).collect();
                format!("view_{view}[[{}]]", names.join(", "))
            })
            .collect();
        // numbered: service names may differ only in `-` and `_`
        let _ = writeln!(
            py,
            "\nservice_{i} = FeatureService(name={n}, features=[{p}])",
            n = lit(&s.name),
            p = projections.join(", ")
        );
    }
    py
}

/// One `FeatureView`: its entities, TTL, typed schema and a placeholder source.
fn view_definition(py: &mut String, config: &Config, v: &View) {
    let ttl = config.serve.max_age_secs.get(v.ns).copied().unwrap_or(0);
    let fields: Vec<String> = (v.keys.iter().map(|k| (*k, "String")))
        .chain(v.features.iter().map(|(f, t)| (*f, t.python())))
        .map(|(f, t)| format!("        Field(name={}, dtype={t}),", lit(f)))
        .collect();
    let entities: Vec<String> = v.keys.iter().map(|k| format!("entity_{k}")).collect();
    let _ = write!(
        py,
        "\n# `{ns}`: Redis at Tidemark's read API; the source is only a placeholder for Feast's\n\
         # registry (Tidemark computes the values from its event streams; for training rows use\n\
         # `tidemark training-set`). ttl is serve.max_age_secs.{ns} (0: never expires).\n\
         view_{ns} = FeatureView(\n    name={name},\n    entities=[{entities}],\n    \
         ttl=timedelta(seconds={ttl}),\n    schema=[\n{fields}\n    ],\n    \
         source=FileSource(name={source}, path={path}, timestamp_field=\"event_timestamp\"),\n    \
         online=True,\n    tags={{\"tidemark_schema_version\": \"{version}\"}},\n)\n",
        ns = v.ns,
        name = lit(v.ns),
        entities = entities.join(", "),
        fields = fields.join("\n"),
        source = lit(&format!("{}_source", v.ns)),
        path = lit(&format!("data/{}.parquet", v.ns)),
        version = v.version,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_names_every_view_feature_and_service() {
        let mut config = Config {
            dataflow: "search".into(),
            ..Config::default()
        };
        config.serve.max_age_secs.insert("qd".into(), 3600);
        config.serve.feature_services.insert(
            "my-ranker".into(),
            vec!["doc:clicks_7d".into(), "qd".into()],
        );
        let family = tidemark_dataflows::family("search", None).unwrap();
        let catalog = Catalog::new(&*family, &config.serve.feature_services).unwrap();
        let py = definitions(&config, &catalog);
        assert!(
            py.contains("view_doc = FeatureView(\n    name=\"doc\""),
            "{py}"
        );
        assert!(
            py.contains("Field(name=\"clicks_7d\", dtype=Int64)"),
            "{py}"
        );
        assert!(
            py.contains("Field(name=\"ctr_decay\", dtype=Float64)"),
            "{py}"
        );
        assert!(py.contains("ttl=timedelta(seconds=3600)"), "{py}");
        assert!(
            py.contains("entities=[entity_doc_id, entity_query_hash]")
                || py.contains("entities=[entity_query_hash, entity_doc_id]"),
            "{py}"
        );
        assert!(
            py.contains(
                "FeatureService(name=\"my-ranker\", features=[view_doc[[\"clicks_7d\"]], view_qd[["
            ),
            "{py}"
        );
        assert!(
            py.contains("service_0 = FeatureService(name=\"doc_service\""),
            "{py}"
        );
    }
}
