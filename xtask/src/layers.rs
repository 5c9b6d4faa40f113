//! The agent's module graph: no top-level module of `netguard/src` may import one that
//! imports it back (directly or around a longer loop), and no file may grow past
//! [`MAX_LINES`]. Imports are read from the source text: every `crate::<module>` path,
//! including those inside `use crate::{...}` groups; comments are skipped.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use anyhow::{Result, bail};

/// The longest file a newcomer should have to read at once.
pub const MAX_LINES: usize = 400;

/// Checks the crate at `src` (its `lib.rs` directory).
pub fn check(src: &Path) -> Result<()> {
    let mut sources = Vec::new();
    collect(src, src, &mut sources)?;
    let modules: BTreeSet<String> = sources.iter().filter_map(|(m, _)| m.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut too_long = Vec::new();
    for (module, (path, text)) in sources.iter().filter_map(|(m, s)| Some((m.as_ref()?, s))) {
        let lines = text.lines().count();
        if lines > MAX_LINES {
            too_long.push(format!("{} ({lines} lines)", path.display()));
        }
        let edges = graph.entry(module.clone()).or_default();
        for used in crate_modules(text) {
            if used != *module && modules.contains(&used) {
                edges.insert(used);
            }
        }
    }
    let mut problems = Vec::new();
    if !too_long.is_empty() {
        problems.push(format!(
            "files over {MAX_LINES} lines (split them by concern): {}",
            too_long.join(", ")
        ));
    }
    if let Some(cycle) = find_cycle(&graph) {
        problems.push(format!(
            "import cycle between modules: {} (move what both need into a module of its own)",
            cycle.join(" -> ")
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

type Source = (Option<String>, (std::path::PathBuf, String));

/// Every `.rs` file below `dir`, with the top-level module it belongs to (`None` for the
/// crate root and `main.rs`).
fn collect(src: &Path, dir: &Path, out: &mut Vec<Source>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(src, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(src)?;
            let first = relative.components().next().map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            });
            let module = first.filter(|m| m != "lib" && m != "main");
            out.push((module, (path.clone(), fs::read_to_string(&path)?)));
        }
    }
    Ok(())
}

/// The top-level modules a source file names through `crate::`.
fn crate_modules(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            found.extend(group_heads(group));
        } else {
            found.insert(ident(rest).to_string());
        }
    }
    found
}

/// The first path segment of each item of a `{a::b, c, d::{e}}` group.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut at_item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item_start = true,
            c if at_item_start && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                heads.push(ident(&group[i..]).to_string());
                at_item_start = false;
            }
            _ => {}
        }
    }
    heads
}

fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_read_from_paths_and_groups_but_not_comments() {
        let text = "use crate::{config::X, domain::{A, B}, kernel};\n\
                    // crate::report is only mentioned\n\
                    fn f() { crate::sys::read(); }\n";
        assert_eq!(
            crate_modules(text),
            ["config", "domain", "kernel", "sys"]
                .map(String::from)
                .into()
        );
    }

    #[test]
    fn a_cycle_is_named_and_a_tree_is_not_one() {
        let edges = |pairs: &[(&str, &str)]| {
            let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (a, b) in pairs {
                graph
                    .entry(a.to_string())
                    .or_default()
                    .insert(b.to_string());
                graph.entry(b.to_string()).or_default();
            }
            graph
        };
        let cycle = find_cycle(&edges(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4);
        assert!(find_cycle(&edges(&[("a", "b"), ("a", "c"), ("b", "c")])).is_none());
    }
}
