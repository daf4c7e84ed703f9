//! What a Feast client may ask for: the family's feature views with their features' types,
//! and the feature services (one built-in `{view}_service` per view, plus
//! `serve.feature_services`), resolved to `view:feature` references. The read API answers
//! from it and `tidemark feast export` writes it as a Feast repo, so both agree by
//! construction.

use std::collections::BTreeMap;

use anyhow::bail;
use tidemark_dataflows::contract::table::{FieldType, SinkKind, TableSpec};
use tidemark_dataflows::Family;

/// A feature's Feast type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeastType {
    Int64,
    Float64,
    String,
    /// A list of strings (commerce's `user_recent`).
    StringList,
}

impl FeastType {
    /// The name of the `feast.types` constant.
    pub fn python(self) -> &'static str {
        match self {
            FeastType::Int64 => "Int64",
            FeastType::Float64 => "Float64",
            FeastType::String => "String",
            FeastType::StringList => "Array(String)",
        }
    }
}

/// One feature view: a table of the family.
#[derive(Clone, Debug)]
pub struct View {
    pub ns: &'static str,
    /// Index into the family's `tables()`.
    pub table: usize,
    /// Entity key columns, in key order.
    pub keys: Vec<&'static str>,
    /// Stored features, then read-time ones (`ctr_decay`), with their types.
    pub features: Vec<(&'static str, FeastType)>,
    pub version: u32,
    /// Whether the read API can read it (a Redis hash or list, or the embedded store);
    /// rows that only go to a Kafka topic or a history table are not exported to Feast.
    pub readable: bool,
}

impl View {
    /// Whether the view has a feature of that name (stored or read-time).
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|(f, _)| *f == feature)
    }

    /// A feature's Feast type.
    pub fn feature_type(&self, feature: &str) -> Option<FeastType> {
        (self.features.iter())
            .find(|(f, _)| *f == feature)
            .map(|(_, t)| *t)
    }

    /// The features' names, for error messages.
    pub fn feature_names(&self) -> Vec<&'static str> {
        self.features.iter().map(|(f, _)| *f).collect()
    }
}

/// A feature service: a name for a list of `(view, feature)` references.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub refs: Vec<(&'static str, &'static str)>,
}

/// The views and services of one family under one config.
#[derive(Clone, Debug)]
pub struct Catalog {
    pub views: Vec<View>,
    pub services: Vec<Service>,
}

/// A table of the family as a Feast view.
fn view_of(family: &dyn Family, t: usize, spec: &TableSpec) -> View {
    let stored = spec.fields.iter().map(|f| {
        let ty = match f.ty {
            FieldType::Int => FeastType::Int64,
            FieldType::Float => FeastType::Float64,
            FieldType::Text => FeastType::String,
            FieldType::List => FeastType::StringList,
        };
        (f.name, ty)
    });
    // read-time features are rates and decayed scores
    let read_time =
        (family.read_time_features(spec.ns).into_iter()).map(|f| (f, FeastType::Float64));
    View {
        ns: spec.ns,
        table: t,
        keys: spec.keys.clone(),
        features: stored.chain(read_time).collect(),
        version: spec.version,
        readable: matches!(
            spec.sink,
            SinkKind::Store | SinkKind::List | SinkKind::RedisHash
        ),
    }
}

impl Catalog {
    /// The family's views and the services of `configured` (`serve.feature_services`);
    /// an error names the service and the fix.
    pub fn new(
        family: &dyn Family,
        configured: &BTreeMap<String, Vec<String>>,
    ) -> anyhow::Result<Catalog> {
        let tables = family.tables();
        let views: Vec<View> = (tables.iter().enumerate())
            .map(|(t, spec)| view_of(family, t, spec))
            .collect();
        let mut services: Vec<Service> = (views.iter().filter(|v| v.readable))
            .map(|v| Service {
                name: format!("{}_service", v.ns),
                refs: v.features.iter().map(|(f, _)| (v.ns, *f)).collect(),
            })
            .collect();
        let mut catalog = Catalog {
            views,
            services: Vec::new(),
        };
        for (name, refs) in configured {
            let at = format!("serve.feature_services.{name}");
            let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
            if name.is_empty() || !name.chars().all(plain) {
                bail!("{at}: a service's name is letters, digits, '_' and '-' only");
            }
            if services.iter().any(|s| s.name == *name) {
                bail!("{at}: '{name}' is a built-in service (all features of a view): choose another name");
            }
            if refs.is_empty() {
                bail!("{at} is empty: list \"view:feature\" references or whole views");
            }
            let mut resolved = Vec::new();
            for r in refs {
                resolved.extend(
                    catalog
                        .expand(r)
                        .map_err(|e| anyhow::anyhow!("{at}: {e}"))?,
                );
            }
            services.push(Service {
                name: name.clone(),
                refs: resolved,
            });
        }
        catalog.services = services;
        Ok(catalog)
    }

    /// A view by name, readable or not (`GET /features` serves every table).
    pub fn view(&self, ns: &str) -> Option<&View> {
        self.views.iter().find(|v| v.ns == ns)
    }

    /// A feature service by name.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The names of the views Feast may read, for error messages.
    pub fn readable_names(&self) -> String {
        let names: Vec<&str> = (self.views.iter().filter(|v| v.readable))
            .map(|v| v.ns)
            .collect();
        names.join(", ")
    }

    /// A service's reference: `view:feature`, or `view` for all of its features.
    fn expand(&self, r: &str) -> anyhow::Result<Vec<(&'static str, &'static str)>> {
        let (ns, feature) = match r.split_once(':') {
            Some((ns, f)) => (ns, Some(f)),
            None => (r, None),
        };
        let Some(view) = self.view(ns).filter(|v| v.readable) else {
            bail!(
                "'{r}': no feature view '{ns}' that the read API serves (views: {})",
                self.readable_names()
            );
        };
        match feature {
            None => Ok(view.features.iter().map(|(f, _)| (view.ns, *f)).collect()),
            Some(f) => match view.features.iter().find(|(x, _)| *x == f) {
                Some((f, _)) => Ok(vec![(view.ns, *f)]),
                None => bail!(
                    "'{r}': view '{ns}' has no feature '{f}' (features: {})",
                    view.feature_names().join(", ")
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search() -> Box<dyn Family> {
        tidemark_dataflows::family("search", None).unwrap()
    }

    #[test]
    fn every_readable_view_has_a_service_of_all_its_features() {
        let c = Catalog::new(&*search(), &BTreeMap::new()).unwrap();
        let doc = c.service("doc_service").unwrap();
        assert!(doc.refs.contains(&("doc", "clicks_7d")));
        assert!(doc.refs.contains(&("doc", "ctr_decay")), "read-time too");
        assert_eq!(doc.refs.len(), c.view("doc").unwrap().features.len());
    }

    #[test]
    fn configured_services_resolve_whole_views_and_refuse_unknown_names() {
        let mut s = BTreeMap::new();
        s.insert(
            "ranker".to_string(),
            vec!["doc:clicks_7d".to_string(), "qd".to_string()],
        );
        let c = Catalog::new(&*search(), &s).unwrap();
        let r = c.service("ranker").unwrap();
        assert_eq!(r.refs[0], ("doc", "clicks_7d"));
        assert!(r.refs.len() > 2 && r.refs[1..].iter().all(|(v, _)| *v == "qd"));
        for (bad, says) in [
            (vec!["doc:nope".to_string()], "has no feature 'nope'"),
            (vec!["nope:x".to_string()], "no feature view 'nope'"),
            (vec![], "is empty"),
        ] {
            let mut s = BTreeMap::new();
            s.insert("x".to_string(), bad);
            let e = Catalog::new(&*search(), &s).unwrap_err().to_string();
            assert!(
                e.contains("serve.feature_services.x") && e.contains(says),
                "{e}"
            );
        }
        let mut s = BTreeMap::new();
        s.insert("doc_service".to_string(), vec!["doc".to_string()]);
        let e = Catalog::new(&*search(), &s).unwrap_err().to_string();
        assert!(e.contains("built-in"), "{e}");
        let mut s = BTreeMap::new();
        s.insert("a b".to_string(), vec!["doc".to_string()]);
        let e = Catalog::new(&*search(), &s).unwrap_err().to_string();
        assert!(e.contains("letters, digits"), "{e}");
        // ads' `performance` rows go to a Kafka topic only: no view the API serves
        let ads = tidemark_dataflows::family("ads", None).unwrap();
        let mut s = BTreeMap::new();
        s.insert(
            "x".to_string(),
            vec!["campaign".to_string(), "performance".to_string()],
        );
        let e = Catalog::new(&*ads, &s).unwrap_err().to_string();
        assert!(
            e.contains("no feature view 'performance' that the read API serves"),
            "{e}"
        );
        let c = Catalog::new(&*ads, &BTreeMap::new()).unwrap();
        assert!(
            c.service("campaign_service").is_some() && c.service("performance_service").is_none()
        );
    }
}
