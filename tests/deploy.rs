//! The example Kubernetes manifests under `deploy/kubernetes/` fit the server they deploy:
//! the probes ask for paths it serves on the port its config binds, the grace period
//! covers the stop's deadline, the timely cluster's hostfile has one process per replica
//! on the port the pods open, and the config is one `config check` accepts. Then the
//! ConfigMap's config runs (its stores pointed at this machine's), answers its probes, and
//! after SIGTERM answers HTTP until the process exits.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_yaml::Value;

/// Every document of every manifest, by kind and name.
fn manifests() -> BTreeMap<(String, String), Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let kind = v["kind"].as_str().unwrap().to_string();
            let name = v["metadata"]["name"].as_str().unwrap().to_string();
            out.insert((kind, name), v);
        }
    }
    out
}

use serde::Deserialize;

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Whether the process has exited: a zombie (its threads being torn down) or reaped.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => true,
    }
}

/// The paths the server answers 200 on once ready (probes may use any of them).
const PROBES: [&str; 3] = ["/livez", "/readyz", "/health"];

#[test]
/// Long: one scenario — the manifests read, then the server run and stopped — its checks
/// where each step happens.
fn the_manifests_fit_the_server_and_it_answers_until_it_exits() {
    let all = manifests();
    let config = &all[&("ConfigMap".into(), "tidemark-config".into())]["data"];
    let toml_text = str_of(&config["tidemark.toml"]).to_string();
    let parsed: toml::Value = toml::from_str(&toml_text).unwrap();
    let http = parsed["http"].as_str().unwrap();
    let port: u64 = http.rsplit(':').next().unwrap().parse().unwrap();
    let hostfile: Vec<&str> = str_of(&config["hostfile"]).lines().collect();

    let mut workloads = 0;
    for ((kind, name), w) in &all {
        if kind != "Deployment" && kind != "StatefulSet" {
            continue;
        }
        workloads += 1;
        let pod = &w["spec"]["template"]["spec"];
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace > 29,
            "{name}: a grace of {grace} s cuts the 29 s stop short"
        );
        assert_eq!(pod["enableServiceLinks"], Value::Bool(false), "{name}");
        let c = &pod["containers"][0];
        let ports: BTreeMap<&str, u64> = (c["ports"].as_sequence().unwrap().iter())
            .map(|p| (str_of(&p["name"]), p["containerPort"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            ports["http"], port,
            "{name}: containerPort http is the config's http port"
        );
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let get = &c[probe]["httpGet"];
            let path = str_of(&get["path"]);
            assert!(
                PROBES.contains(&path),
                "{name}.{probe}: {path} is not served"
            );
            let p = &get["port"];
            assert!(
                p.as_str() == Some("http") || p.as_u64() == Some(port),
                "{name}.{probe}: port {p:?}"
            );
        }
        assert_eq!(
            str_of(&c["readinessProbe"]["httpGet"]["path"]),
            "/readyz",
            "{name}"
        );
        assert!(
            c["resources"]["requests"]["cpu"].as_str().is_some(),
            "{name}: resources"
        );
        assert!(
            c["resources"]["limits"]["memory"].as_str().is_some(),
            "{name}: resources"
        );
        let args: Vec<String> = (c["args"].as_sequence().unwrap().iter())
            .map(|a| str_of(a).to_string())
            .collect();
        let line = args.join(" ");
        assert!(
            line.contains("/etc/tidemark/tidemark.toml"),
            "{name}: {line}"
        );
        let command: Vec<String> = (c["command"].as_sequence().into_iter().flatten())
            .map(|a| str_of(a).to_string())
            .collect();
        let whole = format!("{} {line}", command.join(" "));
        assert!(
            whole.contains("tidemark run ") || (command == ["tidemark"] && args[0] == "run"),
            "{name}: {whole}"
        );
        if kind == "StatefulSet" {
            assert!(
                line.contains(r#"--process "${POD_INDEX:-${HOSTNAME##*-}}""#),
                "{line}"
            );
            assert_eq!(
                str_of(&w["spec"]["updateStrategy"]["type"]),
                "OnDelete",
                "{name}"
            );
            let replicas = w["spec"]["replicas"].as_u64().unwrap() as usize;
            assert_eq!(hostfile.len(), replicas, "one hostfile line per process");
            assert!(line.contains(&format!("--processes {replicas}")), "{line}");
            assert!(line.contains("--hostfile /etc/tidemark/hostfile"), "{line}");
            let service = str_of(&w["spec"]["serviceName"]);
            for (i, h) in hostfile.iter().enumerate() {
                assert_eq!(
                    *h,
                    format!("{name}-{i}.{service}:{}", ports["timely"]),
                    "hostfile line {i}"
                );
            }
            let headless = &all[&("Service".into(), service.to_string())]["spec"];
            assert_eq!(
                str_of(&headless["clusterIP"]),
                "None",
                "{service} is headless"
            );
        }
    }
    assert_eq!(workloads, 2, "a Deployment and a StatefulSet");
    for ((kind, name), s) in &all {
        if kind == "Service" {
            for p in s["spec"]["ports"].as_sequence().unwrap() {
                let target = str_of(&p["targetPort"]);
                assert!(
                    ["http", "timely"].contains(&target),
                    "{name}: targetPort {target}"
                );
            }
        }
    }

    // the config as it is, with the example Secret's variables: `config check` takes it
    let file = std::env::temp_dir().join(format!("tidemark-deploy-{}.toml", std::process::id()));
    std::fs::write(&file, &toml_text).unwrap();
    let secret = &all[&("Secret".into(), "tidemark-secrets".into())]["stringData"];
    let mut check = engine_command();
    check.args(["config", "check", "--config", file.to_str().unwrap()]);
    for (k, v) in secret.as_mapping().unwrap() {
        check.env(str_of(k), str_of(v));
    }
    for k in [
        "TIDEMARK_KAFKA",
        "TIDEMARK_PG",
        "TIDEMARK_REDIS",
        "TIDEMARK_S3",
    ] {
        check.env_remove(k);
    }
    let checked = check.output().unwrap();
    assert!(
        checked.status.success(),
        "config check: {}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // and it runs, pointed at this machine's services: probes answer, then a stop
    let topic = fresh_topic("deploy", 2);
    let kafka = kafka();
    tidemark(
        &["generate", "--events", "100000", "--topic", &topic],
        &[("TIDEMARK_KAFKA", kafka.as_str())],
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let topics = format!("[\"{topic}\"]");
    let pg = fresh_pg("tidemark_deploy");
    let redis = fresh_redis(12);
    let mut child = engine_command()
        .args(["run", "--config", file.to_str().unwrap()])
        .env("TIDEMARK_HTTP", &addr)
        .env("TIDEMARK_KAFKA__BROKERS", &kafka)
        .env("TIDEMARK_KAFKA__TOPICS", &topics)
        .env("TIDEMARK_POSTGRES__URL", &pg)
        .env("TIDEMARK_REDIS__URL", &redis)
        .env("TIDEMARK_JOB", format!("deploy{}", std::process::id()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://{addr}");
    let started = Instant::now();
    while http_get(&format!("{base}/readyz"), Duration::from_secs(2)).is_none_or(|(s, _)| s != 200)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "ready within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for path in PROBES {
        let (status, body) = http_get(&format!("{base}{path}"), Duration::from_secs(2)).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
    }
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    // every poll answers until the process has exited (its main thread ended: the kernel
    // may take a while longer to tear the rest down); a poll that raced the exit may not
    let pid = child.id();
    let mut polls = Vec::new();
    loop {
        let livez = http_get(&format!("{base}/livez"), Duration::from_secs(3)).map(|(s, _)| s);
        let readyz = http_get(&format!("{base}/readyz"), Duration::from_secs(3));
        if exited(pid) {
            break;
        }
        polls.push((livez, readyz));
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "stopped within the deadline"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(child.wait().unwrap().success(), "SIGTERM: exit 0");
    let unanswered = polls
        .iter()
        .filter(|(l, r)| *l != Some(200) || r.is_none())
        .count();
    assert_eq!(
        unanswered, 0,
        "the API answered every poll until the process exited: {polls:?}"
    );
    assert!(
        polls.iter().any(|(_, r)| r
            .as_ref()
            .is_some_and(|(s, b)| *s == 503 && b.contains("draining"))),
        "readyz said draining while it drained: {polls:?}"
    );
    let _ = std::fs::remove_file(&file);
}
