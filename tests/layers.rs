//! The dependency rules of ARCHITECTURE.md, checked on the source: in each crate, a module
//! uses only modules of its own layer or of the layers below, and no two modules use
//! each other, directly or through others.
//!
//! A module is a top-level file or folder of `src/` (`engine/…` is `engine`); a use is any
//! `crate::NAME` in its files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each crate's layers, lowest first.
const RUNTIME: &[&[&str]] = &[
    &["clock", "config", "crash", "permanent", "redact"],
    &["telemetry"],
    &["source", "sink", "checkpoint"],
    &["engine"],
    &["http", "topics"],
    &["bench"],
];
const DATAFLOWS: &[&[&str]] = &[
    &["contract"],
    &["ingest", "operators", "generate"],
    &["install"],
    &["families"],
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Module → the other modules of the crate it uses.
fn uses(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let used = graph.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                used.insert(name);
            }
        }
    }
    graph
}

fn check(krate: &str, src: &Path, layers: &[&[&str]]) {
    let layer_of = |m: &str| layers.iter().position(|l| l.contains(&m));
    let graph = uses(src);
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        let Some(own) = layer_of(module) else {
            wrong.push(format!("{krate}: module `{module}` is in no layer (add it to tests/layers.rs and ARCHITECTURE.md)"));
            continue;
        };
        for u in used {
            match layer_of(u) {
                Some(l) if l <= own => {}
                Some(_) => wrong.push(format!("{krate}: `{module}` uses `{u}`, a layer above it")),
                None => wrong.push(format!(
                    "{krate}: `{module}` uses `{u}`, which is in no layer"
                )),
            }
        }
    }
    // no cycle: a depth-first walk never meets a module on its own path
    fn walk(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            cycles.push(format!("{} → {m}", path[at..].join(" → ")));
            return;
        }
        if !done.insert(m.to_string()) {
            return;
        }
        path.push(m.to_string());
        for u in graph.get(m).into_iter().flatten() {
            walk(u, graph, path, done, cycles);
        }
        path.pop();
    }
    let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
    for m in graph.keys() {
        walk(m, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    wrong.extend(cycles.into_iter().map(|c| format!("{krate}: a cycle: {c}")));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_module_uses_only_its_layer_and_those_below_without_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    check("tidemark", &root.join("src"), RUNTIME);
    check("tidemark-dataflows", &root.join("dataflows/src"), DATAFLOWS);
}

#[test]
fn a_use_of_a_higher_layer_and_a_cycle_are_caught() {
    let dir = std::env::temp_dir().join(format!("tidemark-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::write(dir.join("a.rs"), "use crate::b::x;").unwrap();
    std::fs::write(dir.join("b/mod.rs"), "use crate::a::y;").unwrap();
    let up = std::panic::catch_unwind(|| check("t", &dir, &[&["a"], &["b"]]));
    let e = *up.unwrap_err().downcast::<String>().unwrap();
    assert!(e.contains("`a` uses `b`, a layer above it"), "{e}");
    let same = std::panic::catch_unwind(|| check("t", &dir, &[&["a", "b"]]));
    let e = *same.unwrap_err().downcast::<String>().unwrap();
    assert!(e.contains("a cycle: a → b → a"), "{e}");
}
