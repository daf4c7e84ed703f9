//! Feast parity: the read API answers and refuses Feast requests as Feast's own feature
//! server does (feature services, name collisions, no features, unknown views and services
//! as Feast's exceptions, entity columns in request order, version metadata, `/health`, the
//! writing endpoints as 501), and Feast's real Python SDK reads a running Tidemark through
//! a repo written by `tidemark feast export` (`feast apply` on it, then
//! `get_online_features`, values equal to the read API's). On the demo's server.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// (status, body as JSON) of a POST of a raw body (raw: the entities' order is the test's).
fn post(url: &str, body: &str) -> (u16, Value) {
    let r = http_client()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let json =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"));
    (status, json)
}

#[test]
/// Long: one table of requests and what Feast's server answers, checked in turn.
fn feast_requests_are_answered_and_refused_as_feasts_server_does() {
    let (child, base) = search_demo(600, 2000);
    let url = format!("{base}/get-online-features");
    let mut failed: Vec<String> = Vec::new();
    let mut check = |what: &str, ok: bool, got: &Value| {
        if !ok {
            failed.push(format!("{what}: {got}"));
        }
    };

    // entity columns in request order, then the features; each view's schema version
    let (code, a) = post(
        &url,
        r#"{"entities": {"query_hash": ["q"], "doc_id": ["doc-0"]},
            "features": ["qd:ctr_qd", "doc:clicks_7d"],
            "include_feature_view_version_metadata": true}"#,
    );
    check(
        "order",
        code == 200
            && a["metadata"]["feature_names"]
                == json!(["query_hash", "doc_id", "ctr_qd", "clicks_7d"]),
        &a,
    );
    check(
        "version metadata",
        a["metadata"]["feature_view_metadata"]
            == json!([{"name": "qd", "version": 1}, {"name": "doc", "version": 1}]),
        &a,
    );
    check(
        "doc-0 is present",
        a["results"][3]["statuses"] == json!(["PRESENT"]),
        &a,
    );
    let (_, plain) = post(
        &url,
        r#"{"entities": {"doc_id": ["doc-0"]}, "features": ["doc:clicks_7d"]}"#,
    );
    check(
        "no metadata unless asked",
        plain["metadata"].get("feature_view_metadata").is_none(),
        &plain,
    );

    // a feature service: every feature of the view, in the view's order
    let (code, a) = post(
        &url,
        r#"{"entities": {"doc_id": ["doc-0"]}, "feature_service": "doc_service"}"#,
    );
    let names: Vec<&str> = (a["metadata"]["feature_names"]
        .as_array()
        .into_iter()
        .flatten())
    .filter_map(Value::as_str)
    .collect();
    check(
        "doc_service",
        code == 200
            && names.len() > 5
            && names[0] == "doc_id"
            && names.contains(&"clicks_7d")
            && names.contains(&"ctr_decay"),
        &a,
    );

    // refusals, each Feast's exception class with its status
    let refused = [
        (
            r#"{"entities": {"doc_id": ["doc-0"], "query_hash": ["q"]}, "features": ["doc:clicks_7d", "qd:clicks_7d"]}"#,
            400,
            "FeatureNameCollisionError",
            "Duplicate features named clicks_7d found.",
        ),
        (
            r#"{"entities": {"doc_id": ["doc-0"]}, "features": ["doc:clicks_7d", "doc:clicks_7d"], "full_feature_names": true}"#,
            400,
            "FeatureNameCollisionError",
            "doc__clicks_7d",
        ),
        (
            r#"{"entities": {"doc_id": ["doc-0"]}, "features": []}"#,
            400,
            "FeastError",
            "No features specified for retrieval",
        ),
        (
            r#"{"entities": {"doc_id": ["doc-0"]}}"#,
            400,
            "FeastError",
            "No features specified for retrieval",
        ),
        (
            r#"{"entities": {"doc_id": ["doc-0"]}, "features": ["nope:x"]}"#,
            404,
            "FeatureViewNotFoundException",
            "Feature view nope does not exist",
        ),
        (
            r#"{"entities": {"doc_id": ["doc-0"]}, "feature_service": "nope"}"#,
            404,
            "FeatureServiceNotFoundException",
            "Feature service nope does not exist",
        ),
        (
            r#"{"entities": {"doc_id": ["doc-0"]}, "features": ["doc:nope"]}"#,
            400,
            "FeastError",
            "has no feature 'nope'",
        ),
        (r#"not json"#, 400, "FeastError", "request body"),
    ];
    for (body, status, class, says) in refused {
        let (code, a) = post(&url, body);
        let detail = feast_detail(&a);
        let ok = code == status
            && detail
                .as_ref()
                .is_some_and(|(c, m)| c == class && m.contains(says));
        check(body, ok, &json!({"status": code, "body": a}));
    }
    // the same names are no collision with full feature names
    let (code, a) = post(
        &url,
        r#"{"entities": {"doc_id": ["doc-0"], "query_hash": ["q"]}, "features": ["doc:clicks_7d", "qd:clicks_7d"], "full_feature_names": true}"#,
    );
    check(
        "full names",
        code == 200
            && a["metadata"]["feature_names"]
                == json!(["doc_id", "query_hash", "doc__clicks_7d", "qd__clicks_7d"]),
        &a,
    );

    // Feast's other endpoints: /health as readiness, the writing ones a 501 saying why
    let (code, health) = http_get(&format!("{base}/health"), Duration::from_secs(5)).unwrap();
    check(
        "health",
        code == 200 && health.contains("\"healthy\":true"),
        &json!(health),
    );
    for path in [
        "/push",
        "/write-to-online-store",
        "/materialize",
        "/materialize-incremental",
    ] {
        let (code, a) = post(&format!("{base}{path}"), "{}");
        let ok = code == 501
            && feast_detail(&a).is_some_and(|(c, m)| c == "FeastError" && m.contains("Tidemark"));
        check(path, ok, &a);
    }
    let r = http_client().build().unwrap().get(&url).send().unwrap();
    let code = r.status().as_u16();
    let a: Value = r.json().unwrap();
    check(
        "GET on a Feast endpoint",
        code == 405 && feast_detail(&a).is_some(),
        &a,
    );

    drop(child);
    assert!(failed.is_empty(), "{failed:#?}");
}

/// The Python of the venv `scripts/test.sh` makes with Feast's SDK (pinned there).
fn feast_python() -> PathBuf {
    let python = std::env::var("TIDEMARK_FEAST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/tidemark-feast-venv/bin/python")
        });
    assert!(
        python.exists(),
        "{}: no Feast SDK; scripts/test.sh creates its venv (or set TIDEMARK_FEAST_PYTHON)",
        python.display()
    );
    python
}

#[test]
/// Long: export, apply, read, then the report's checks one by one.
fn feasts_sdk_reads_tidemark_through_an_exported_repo() {
    let python = feast_python();
    let (child, base) = search_demo(600, 500);
    let repo = std::env::temp_dir().join(format!("tidemark-feast-repo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&repo);
    let out = tidemark(
        &[
            "feast",
            "export",
            "--dataflow",
            "search",
            "--out",
            repo.to_str().unwrap(),
            "--url",
            &base,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `feast apply` with the venv's own CLI
    let feast = python.with_file_name("feast");
    let applied = output_within(
        Command::new(&feast).arg("apply").current_dir(&repo),
        Duration::from_secs(120),
    );
    assert!(
        applied.status.success(),
        "feast apply: {}{}",
        String::from_utf8_lossy(&applied.stdout),
        String::from_utf8_lossy(&applied.stderr)
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/feast/sdk_reads.py");
    let read = output_within(
        Command::new(&python)
            .arg(&script)
            .arg(&repo)
            .arg(&base)
            .arg("30"),
        Duration::from_secs(180),
    );
    drop(child);
    let stdout = String::from_utf8_lossy(&read.stdout);
    assert!(
        read.status.success(),
        "sdk_reads.py: {stdout}{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("report ({e}): {stdout}"));
    // most of 30 documents hold still long enough around a read to be compared
    assert_eq!(report["stored"], 30, "{report}");
    assert!(report["compared"].as_u64().unwrap() >= 20, "{report}");
    assert_eq!(report["mismatches"], json!([]), "{report}");
    let columns = report["service_columns"].as_array().unwrap();
    assert!(
        columns.len() > 5 && columns.contains(&json!("ctr_decay")),
        "{report}"
    );
    for (case, class) in [
        ("collision", "FeatureNameCollisionError"),
        ("no_features", "FeastError"),
        ("unknown_view", "FeatureViewNotFoundException"),
        ("unknown_service", "FeatureServiceNotFoundException"),
    ] {
        let e = &report["errors"][case];
        assert_eq!(e[0], "feast.errors", "{case}: {e}");
        assert_eq!(e[1], class, "{case}: {e}");
    }
    assert_eq!(
        report["full_names"],
        json!(["doc__clicks_7d", "doc_id", "qd__clicks_7d", "query_hash"]),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&repo);
}
