//! The library's modules form layers: no import cycle among them. Edges come from the
//! source itself (`use crate::...`, `crate::a::b` paths, `super::...`), read as text, so the
//! check needs no compiler plugin and fails the moment a new `use` closes a cycle.
//!
//! Two granularities are checked: the top-level modules (`app`, `web`, `store`, ...), and
//! every file, where a module's edges to its own ancestors and descendants are structure,
//! not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`app::views`) of each source file below `src/`, the binary's own excluded.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("src/ is readable").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("below src/").with_extension("");
            let mut parts: Vec<String> = relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|last| last == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            // The binary (main.rs, cli/) sits on top of the library and is not part of it.
            if name == "lib" || name == "main" || name == "cli" || name.starts_with("cli::") {
                continue;
            }
            found.insert(name, std::fs::read_to_string(&path).expect("sources are UTF-8"));
        }
    }
    found
}

/// Every path a file names: `crate::a::b` and `super::c` in code and in `use` trees
/// (`use crate::{a, b::{c, d}}` expands to each leaf), comments left out.
fn named_paths(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut paths = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &code[at..];
        let root = ["crate::", "super::"].into_iter().find(|root| rest.starts_with(root));
        let boundary =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':');
        match root {
            Some(root) if boundary => {
                let (tree, used) = use_tree(&rest[root.len()..]);
                for leaf in tree {
                    paths.push(format!("{}{leaf}", &root[..root.len() - 2]).replace("::::", "::"));
                }
                at += root.len() + used;
            }
            _ => at += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    paths
}

/// Reads a path or a braced use tree from the start of `text`: its leaves (each starting
/// with `::`), and how many bytes it took.
fn use_tree(text: &str) -> (Vec<String>, usize) {
    let mut prefix = String::new();
    let mut at = 0;
    let bytes = text.as_bytes();
    loop {
        let start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        prefix.push_str("::");
        prefix.push_str(&text[start..at]);
        if text[at..].starts_with("::{") {
            at += 3;
            let mut leaves = Vec::new();
            loop {
                while at < bytes.len() && (bytes[at] as char).is_whitespace() {
                    at += 1;
                }
                if at >= bytes.len() || bytes[at] == b'}' {
                    return (leaves, at + 1);
                }
                let (inner, used) = use_tree(&text[at..]);
                leaves.extend(inner.into_iter().map(|leaf| format!("{prefix}{leaf}")));
                at += used;
                while at < bytes.len() && (bytes[at] == b',' || (bytes[at] as char).is_whitespace()) {
                    at += 1;
                }
            }
        }
        if text[at..].starts_with("::") && text[at + 2..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            at += 2;
            continue;
        }
        return (vec![prefix], at);
    }
}

/// The module a `crate::...` or `super::...` path from `module` lands in: the longest
/// prefix that is a module.
fn resolve(module: &str, path: &str, known: &BTreeMap<String, String>) -> Option<String> {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path.split("::").filter(|part| !part.is_empty());
    match parts.next()? {
        "crate" => {}
        "super" => {
            segments.extend(module.split("::"));
            segments.pop();
            for part in parts.by_ref() {
                if part != "super" {
                    segments.push(part);
                    break;
                }
                segments.pop();
            }
        }
        _ => return None,
    }
    segments.extend(parts);
    (1..=segments.len()).rev().map(|n| segments[..n].join("::")).find(|candidate| known.contains_key(candidate))
}

/// Whether one module contains the other (or is it).
fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

/// The cycles of `graph`, each as the modules of one strongly connected component.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then collect components on the reversed graph.
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for start in graph.keys() {
        let mut stack = vec![(start.clone(), false)];
        while let Some((node, finished)) = stack.pop() {
            if finished {
                order.push(node);
                continue;
            }
            if !seen.insert(node.clone()) {
                continue;
            }
            stack.push((node.clone(), true));
            for next in graph.get(&node).into_iter().flatten() {
                if !seen.contains(next) {
                    stack.push((next.clone(), false));
                }
            }
        }
    }
    let mut reversed: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (from, targets) in graph {
        for to in targets {
            reversed.entry(to).or_default().push(from);
        }
    }
    let mut assigned = BTreeSet::new();
    let mut found = Vec::new();
    for start in order.iter().rev() {
        if assigned.contains(start) {
            continue;
        }
        let mut component = Vec::new();
        let mut stack = vec![start];
        while let Some(node) = stack.pop() {
            if !assigned.insert(node.clone()) {
                continue;
            }
            component.push(node.clone());
            stack.extend(reversed.get(node).into_iter().flatten().copied());
        }
        if component.len() > 1 {
            component.sort();
            found.push(component);
        }
    }
    found
}

/// The import graph: file-level, or by top-level module.
fn graph(top_level: bool) -> BTreeMap<String, BTreeSet<String>> {
    let known = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &known {
        for path in named_paths(text) {
            let Some(target) = resolve(module, &path, &known) else { continue };
            let (from, to) = if top_level {
                let top = |name: &str| name.split("::").next().unwrap_or(name).to_string();
                (top(module), top(&target))
            } else {
                (module.clone(), target)
            };
            if !related(&from, &to) {
                graph.entry(from).or_default().insert(to);
            }
        }
    }
    graph
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let graph = graph(true);
    assert!(graph.contains_key("app") && graph["app"].contains("store"), "the graph was not read: {graph:?}");
    assert_eq!(cycles(&graph), Vec::<Vec<String>>::new(), "modules that import each other");
}

#[test]
fn source_files_have_no_import_cycle() {
    let graph = graph(false);
    assert!(graph.get("app::devices").is_some_and(|to| to.contains("devices")), "the graph was not read");
    assert_eq!(cycles(&graph), Vec::<Vec<String>>::new(), "files that import each other");
}

#[test]
fn the_reader_sees_use_trees_super_paths_and_cycles() {
    let paths = named_paths("use crate::app::{App, views::{A, B}};\nlet x = super::super::x::f(); // crate::hidden");
    assert_eq!(paths, ["crate::app::App", "crate::app::views::A", "crate::app::views::B", "super::super::x::f"]);
    let known: BTreeMap<String, String> =
        ["a", "a::b", "c"].into_iter().map(|name| (name.to_string(), String::new())).collect();
    assert_eq!(resolve("a::b", "super::super::c::f", &known).as_deref(), Some("c"));
    assert_eq!(resolve("a::b", "crate::a::b::T", &known).as_deref(), Some("a::b"));
    let cyclic: BTreeMap<String, BTreeSet<String>> =
        [("x", "y"), ("y", "z"), ("z", "x"), ("z", "w")].into_iter().fold(BTreeMap::new(), |mut graph, (from, to)| {
            graph.entry(from.to_string()).or_insert_with(BTreeSet::new).insert(to.to_string());
            graph
        });
    assert_eq!(cycles(&cyclic), vec![vec!["x".to_string(), "y".to_string(), "z".to_string()]]);
}
