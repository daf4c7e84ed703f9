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
    &["archive", "source", "sink", "checkpoint"],
    &["engine"],
    &["batch", "dlq_replay", "feast", "http", "quality", "topics"],
    &["bench"],
];
const DATAFLOWS: &[&[&str]] = &[
    &["contract"],
    &["ingest", "operators", "generate"],
    &["install"],
    &["families", "quality"],
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

/// The top-level modules a path names, as written in a file whose module path (from the
/// crate root) is `at`: `crate::NAME…`, `crate::{NAME…, NAME…}`, and `super::`… resolved by
/// the file's depth in its `use` items (`$crate::` in a macro counts as the macro's own
/// module's use).
fn named(text: &str, at: &[String]) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            // the names at the group's first level: `crate::{a::x, b, c::{y, z}}`
            let (mut depth, mut start) = (0, true);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_ascii_alphanumeric() || c == '_') => {
                        out.insert(ident(&group[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    // `super::` from module path `at` in the file's own `use` items (at the start of a
    // line: an indented one is inside an inline module, such as `mod tests`, whose
    // `super` is the file itself): each `super::` goes a level up
    let mut k = 0;
    while let Some(i) = text[k..].find("super::") {
        let start = k + i;
        k = start + 7;
        if start > 0 && text[..start].ends_with("::") {
            continue; // counted with the chain's first `super::`
        }
        let line = &text[text[..start].rfind('\n').map_or(0, |n| n + 1)..start];
        if !matches!(
            line,
            "use " | "pub use " | "pub(crate) use " | "pub(super) use "
        ) {
            continue;
        }
        let mut rest = &text[start..];
        let mut up = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            up += 1;
            rest = r;
        }
        if up == at.len() {
            // to the crate root: the next name is a top-level module
            out.insert(ident(rest));
        } else if up > at.len() {
            out.insert(format!("(above the crate root in {})", at.join("::")));
        }
    }
    out.remove("");
    out.remove("self");
    out
}

/// Module → the other top-level modules of the crate it uses.
fn uses(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        // the file's module path: `engine/worker.rs` is engine::worker, `engine/mod.rs` engine
        let mut at: Vec<String> = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if at.last().is_some_and(|l| l == "mod") {
            at.pop();
        }
        let Some(module) = at.first().cloned() else {
            continue;
        };
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let used = graph.entry(module.clone()).or_default();
        used.extend(named(&text, &at).into_iter().filter(|n| *n != module));
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
fn every_form_of_path_is_read() {
    let at = |p: &str| p.split("::").map(String::from).collect::<Vec<_>>();
    let names = |text: &str, file: &str| named(text, &at(file)).into_iter().collect::<Vec<_>>();
    assert_eq!(names("use crate::b::x;", "a"), ["b"]);
    assert_eq!(
        names("use crate::{b::x, c, d::{e, f}};", "a"),
        ["b", "c", "d"]
    );
    assert_eq!(names("let v = crate::b::f();", "a::inner"), ["b"]);
    // `super::` from a top-level file and from a nested one
    assert_eq!(names("use super::b::x;", "a"), ["b"]);
    assert_eq!(
        names("use super::sibling;", "a::inner"),
        Vec::<String>::new()
    );
    assert_eq!(names("use super::super::b;", "a::inner"), ["b"]);
    assert_eq!(
        names("macro_rules! m { () => { $crate::b::f() } }", "a"),
        ["b"]
    );
    // an inline module's `super` is the file's own module
    let inline = "mod tests {\n    use super::*;\n    use super::helper;\n}";
    assert_eq!(names(inline, "a"), Vec::<String>::new());
}

#[test]
fn a_use_of_a_higher_layer_and_a_cycle_are_caught() {
    let dir = std::env::temp_dir().join(format!("tidemark-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::write(dir.join("a.rs"), "use crate::{b::x};").unwrap();
    std::fs::write(dir.join("b/mod.rs"), "mod inner;").unwrap();
    std::fs::write(dir.join("b/inner.rs"), "use super::super::a::y;").unwrap();
    let up = std::panic::catch_unwind(|| check("t", &dir, &[&["a"], &["b"]]));
    let e = *up.unwrap_err().downcast::<String>().unwrap();
    assert!(e.contains("`a` uses `b`, a layer above it"), "{e}");
    let same = std::panic::catch_unwind(|| check("t", &dir, &[&["a", "b"]]));
    let e = *same.unwrap_err().downcast::<String>().unwrap();
    assert!(e.contains("a cycle: a → b → a"), "{e}");
}
