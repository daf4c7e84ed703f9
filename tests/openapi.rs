//! `/openapi.json` describes every endpoint the server serves, from the handlers and their
//! types: each path and method in it is answered (not with the 404 or 405 of an endpoint
//! that does not exist), every endpoint of the README's table is in it, and the bodies'
//! schemas are the handlers' own types. On the demo's server.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The endpoints the README's table names, as OpenAPI paths.
fn readme_endpoints() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("### Endpoints")
        .expect("the README's endpoint table");
    let table = &readme[start..];
    let table = &table[..table[3..].find("\n### ").map_or(table.len(), |i| i + 3)];
    let mut out = BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split(" | ").next().unwrap_or_default();
        for token in first.split('`').skip(1).step_by(2) {
            let path = token.rsplit(' ').next().unwrap_or_default();
            let path = path.split('[').next().unwrap_or_default();
            if path.starts_with('/') {
                out.insert(path.to_string());
            }
        }
    }
    out
}

#[test]
fn the_openapi_document_describes_every_endpoint_the_server_serves() {
    let (child, base) = search_demo(300, 1000);
    let (code, text) = http_get(&format!("{base}/openapi.json"), Duration::from_secs(5)).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{code}: {e}: {text}"));
    let client = http_client()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut failed = Vec::new();
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        let url = format!(
            "{base}{}",
            path.replace("{view}", "doc").replace("{id}", "doc-0")
        );
        for method in item.as_object().unwrap().keys() {
            let r = match method.as_str() {
                "get" => client.get(&url).send(),
                "post" => client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body("{}")
                    .send(),
                m => panic!("{path}: a {m} the test does not call"),
            }
            .unwrap();
            let status = r.status().as_u16();
            let body = r.text().unwrap();
            // an endpoint that does not exist answers 404 "no endpoint …" or 405
            if status == 405 || body.contains("no endpoint") {
                failed.push(format!("{method} {path}: {status} {body}"));
            }
        }
    }
    drop(child);
    assert!(failed.is_empty(), "described but not served: {failed:#?}");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let described: BTreeSet<String> = paths.keys().cloned().collect();
    let missing: Vec<String> = (readme_endpoints().into_iter())
        .filter(|p| !described.contains(p))
        .collect();
    assert!(
        missing.is_empty(),
        "in the README's table, not in /openapi.json: {missing:?} (described: {described:?})"
    );
    assert!(described.len() >= 13, "{described:?}");
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for s in [
        "FeatureRead",
        "ErrorBody",
        "FeastRequest",
        "FeastResponse",
        "FeastColumn",
        "Ready",
        "Health",
    ] {
        assert!(
            schemas.contains_key(s),
            "schema {s}: {:?}",
            schemas.keys().collect::<Vec<_>>()
        );
    }
    let fr = &schemas["FeastRequest"]["properties"];
    for field in [
        "features",
        "feature_service",
        "entities",
        "full_feature_names",
        "include_feature_view_version_metadata",
    ] {
        assert!(fr.get(field).is_some(), "FeastRequest.{field}: {fr}");
    }
    let read = &paths["/features/{view}/{id}"]["get"];
    let params: Vec<&str> = (read["parameters"].as_array().unwrap().iter())
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(params, ["view", "id", "features", "at"], "{read}");
}
