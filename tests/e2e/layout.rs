//! The module graph of every crate in the workspace, read from the sources
//! (every `crate::<module>` path outside comments; `foo.rs` and everything
//! in `foo/` count as module `foo`), so an import that brings back a cycle
//! fails here rather than in review. One mechanism for all crates; rules
//! about one crate's layering (proxyd's telemetry) sit beside it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module of each `crate::` path in `source`, comments skipped.
fn crate_imports(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let before_ok = at == 0 || !rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$');
            if before_ok {
                if let Some(group) = after.strip_prefix('{') {
                    // `crate::{a, b::c}`: the first segment of each item (single-line groups).
                    let inner = group.split('}').next().unwrap_or("");
                    for item in inner.split(',') {
                        let name: String =
                            item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        if !name.is_empty() {
                            found.insert(name);
                        }
                    }
                } else {
                    let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        found.insert(name);
                    }
                }
            }
            rest = after;
        }
    }
    found
}

/// The workspace's root directory (this package lives in `tests/`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Every crate of the workspace with a `src/` directory, by directory name.
fn crates() -> BTreeSet<String> {
    std::fs::read_dir(workspace_root())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|dir| dir.join("Cargo.toml").is_file() && dir.join("src").is_dir())
        .map(|dir| dir.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// module -> modules it imports, for every module under `<krate>/src`
/// (`foo.rs` and everything in `foo/` count as `foo`).
fn module_graph(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = workspace_root().join(krate).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![src.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
            let module = first.trim_end_matches(".rs").to_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            let imports = crate_imports(&std::fs::read_to_string(&path).unwrap());
            let entry = graph.entry(module.clone()).or_default();
            entry.extend(imports.into_iter().filter(|m| *m != module));
        }
    }
    graph
}

/// A cycle through `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_import_scanner_sees_plain_grouped_and_skips_comments() {
    let source = "use crate::a::X;\nuse crate::{b, c::Y};\n//! [`crate::d`]\nlet x = crate::e::f(); // crate::g\n";
    let found: Vec<String> = crate_imports(source).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "e"]);
    let mut graph = BTreeMap::new();
    graph.insert("x".to_owned(), BTreeSet::from(["y".to_owned()]));
    graph.insert("y".to_owned(), BTreeSet::from(["x".to_owned()]));
    assert_eq!(find_cycle(&graph), Some(vec!["x".to_owned(), "y".to_owned(), "x".to_owned()]));
}

#[test]
fn no_crate_has_an_import_cycle() {
    let crates = crates();
    for expected in ["egress-policy", "policyc", "proxyd", "testkit"] {
        assert!(crates.contains(expected), "{expected} not found among {crates:?}");
    }
    for krate in &crates {
        let graph = module_graph(krate);
        assert!(graph.len() > 1, "{krate}: no modules read: {graph:?}");
        assert_eq!(find_cycle(&graph), None, "{krate}: module graph: {graph:#?}");
    }
}

#[test]
fn the_graphs_are_read_from_the_real_modules() {
    let proxyd = module_graph("proxyd");
    assert!(proxyd.contains_key("metrics") && proxyd.contains_key("reload"), "{proxyd:?}");
    let core = module_graph("egress-policy");
    assert!(core["address"].contains("policy") && core["signature"].contains("table"), "{core:?}");
    let policyc = module_graph("policyc");
    assert!(policyc["commands"].contains("report") && policyc["suggest"].contains("decision_log"), "{policyc:?}");
}

#[test]
fn telemetry_flows_one_way_from_emitters_to_sinks() {
    let graph = module_graph("proxyd");
    let imports = |module: &str| graph.get(module).cloned().unwrap_or_default();
    // The vocabulary depends on nothing in the crate.
    assert_eq!(imports("events"), BTreeSet::new(), "events must import no crate module");
    // statsd (a sink) knows only the vocabulary.
    assert_eq!(imports("statsd"), BTreeSet::from(["events".to_owned()]), "statsd may import only events");
    // The facade renders what it is handed: never the reload, admin or request code.
    for forbidden in ["reload", "admin", "server", "tunnel", "egress"] {
        assert!(!imports("metrics").contains(forbidden), "metrics imports {forbidden}: {:?}", imports("metrics"));
    }
}
