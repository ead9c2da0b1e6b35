//! The module graph of `proxyd/src`: read from the sources (every
//! `crate::<module>` path outside comments), so an import that brings back
//! a cycle fails here rather than in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

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

/// module -> modules it imports, for every module under `proxyd/src`
/// (`foo.rs` and everything in `foo/` count as `foo`).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
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
fn proxyd_modules_import_each_other_without_cycles() {
    let graph = module_graph();
    assert!(graph.contains_key("metrics") && graph.contains_key("reload"), "{graph:?}");
    assert_eq!(find_cycle(&graph), None, "module graph: {graph:#?}");
}

#[test]
fn telemetry_flows_one_way_from_emitters_to_sinks() {
    let graph = module_graph();
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
