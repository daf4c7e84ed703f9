//! What a client and a log reader get when something is wrong: every HTTP error of the
//! read API is a JSON body naming the fix, a GET asks for features as strictly as the
//! Feast POST does, JSON logs stay JSON to the fatal line, and text logs written to a file
//! carry no colour codes, and each subcommand's `--help` shows its own flags only. On the
//! demo's server (no services needed).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// (status, body as JSON): the body must be JSON.
fn call(method: &str, url: &str) -> (u16, Value) {
    let client = http_client()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    }
    .send()
    .unwrap();
    let status = r.status().as_u16();
    let body = r.text().unwrap();
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {url} → {status}: not JSON ({e}): {body:?}"));
    (status, json)
}

#[test]
fn every_read_api_error_is_json_and_names_the_fix() {
    let addr = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{addr}");
    let mut child = demo_server("search", &addr, 60, 2000);
    // doc-0 is among the first documents the generator touches
    let started = Instant::now();
    let doc = format!("{base}/features/doc/doc-0");
    while http_get(&doc, Duration::from_secs(2)).is_none_or(|(s, _)| s != 200) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "doc-0 read within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let cases = [
        ("GET", format!("{doc}?at=yesterday"), 400, "at"),
        (
            "GET",
            format!("{doc}?features=clicks_7d,nope"),
            400,
            "'nope'",
        ),
        (
            "GET",
            format!("{base}/features/nope/x"),
            404,
            "no entity type 'nope'",
        ),
        (
            "GET",
            format!("{base}/features/doc/never-seen"),
            404,
            "never-seen",
        ),
        (
            "GET",
            format!("{base}/no-such-endpoint"),
            404,
            "/no-such-endpoint",
        ),
        ("POST", format!("{base}/livez"), 405, "POST"),
        (
            "POST",
            format!("{base}/get-online-features"),
            400,
            "request body",
        ),
    ];
    let mut failed = Vec::new();
    for (method, url, status, says) in &cases {
        let (got, body) = call(method, url);
        // Feast's endpoints answer Feast's shape (tests/feast.rs)
        let feast = feast_detail(&body).map(|(_, message)| message);
        let error = (body["error"].as_str().map(str::to_string))
            .or(feast)
            .unwrap_or_default();
        if got != *status || !error.contains(says) {
            failed.push(format!("{method} {url}: {got} {body}"));
        }
    }
    // the features asked for, and only those, when they exist
    let (got, body) = call("GET", &format!("{doc}?features=clicks_7d"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(got, 200, "{body}");
    let names: Vec<&String> = (body["features"].as_object().unwrap().keys())
        .filter(|k| !k.starts_with('_'))
        .collect();
    assert_eq!(names, ["clicks_7d"], "{body}");
}

#[test]
fn json_logs_hold_the_fatal_error_and_text_logs_in_a_file_have_no_colour() {
    // a config error stops a run at once, no service needed
    let out = engine_command()
        .args([
            "--log-format",
            "json",
            "run",
            "--config",
            "/nonexistent/tidemark.toml",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = (err.lines())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let last = lines.last().expect("the error is logged");
    assert_eq!(last["level"], "ERROR", "{last}");
    let error = last["fields"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("/nonexistent/tidemark.toml"), "{last}");

    // text logs to a file (not a terminal): plain text, no ANSI escapes
    let out = engine_command()
        .args(["demo", "--dataflow", "search", "--seconds", "2"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(" INFO "), "text logs: {err}");
    assert!(!err.contains('\u{1b}'), "colour codes in a file: {err:?}");
}

/// `--help` of a subcommand lists the flags it reads, not every flag of `run`.
#[test]
fn each_subcommands_help_shows_its_own_flags() {
    let help = |args: &[&str]| {
        let out = engine_command().args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{args:?} --help");
        String::from_utf8(out.stdout).unwrap()
    };
    for args in [
        &["topics", "create"][..],
        &["release"],
        &["quality", "report"],
    ] {
        let text = help(args);
        assert!(
            text.contains("--config") && text.contains("--job"),
            "{args:?}: {text}"
        );
        for foreign in [
            "--from",
            "--http",
            "--workers",
            "--group-id",
            "--exit-at-end",
        ] {
            assert!(
                !text.contains(foreign),
                "{args:?} --help shows {foreign}: {text}"
            );
        }
    }
    let run = help(&["run"]);
    for own in [
        "--from",
        "--http",
        "--workers",
        "--group-id",
        "--exit-at-end",
    ] {
        assert!(run.contains(own), "run --help lacks {own}");
    }
    // every benchmark is named, as `bench` takes them
    let bench = help(&["bench"]);
    for name in [
        "search", "reading", "ads", "commerce", "watch", "archive", "batch", "state", "serve",
    ] {
        assert!(bench.contains(name), "bench --help lacks {name}: {bench}");
    }
}
