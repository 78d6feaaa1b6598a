//! The import rules of `docs/architecture.md`, checked on the sources: sources → model →
//! writers, the agent keeps one writer in step, inspect reads beside it. A module's
//! crate imports are every `crate::name` path and every name at the top of a
//! `crate::{…}` use tree, outside comments and its `#[cfg(test)]` module.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules (folders and files of `src/`, less `lib.rs` and `main.rs`).
fn top_modules() -> BTreeSet<String> {
    fs::read_dir(src())
        .expect("read src/")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lib.rs" && n != "main.rs")
        .map(|n| n.trim_end_matches(".rs").to_string())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    if dir.is_file() {
        out.push(dir.to_path_buf());
        return;
    }
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of `file` without comments and without its unit tests.
fn code(file: &Path) -> String {
    let text = fs::read_to_string(file).expect("read source");
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segments after `crate::` in `code`, including the top names of
/// `crate::{a::x, b, c::{…}}`.
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(tree) = rest.strip_prefix('{') {
            // Names at depth 0 of the tree, each at the start of an item.
            let (mut depth, mut start_of_item, mut name) = (0usize, true, String::new());
            for c in tree.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start_of_item = true,
                    c if depth == 0 && start_of_item && is_ident(c) => name.push(c),
                    _ => {
                        if !name.is_empty() {
                            found.insert(std::mem::take(&mut name));
                            start_of_item = false;
                        }
                    }
                }
            }
        } else {
            found.insert(rest.chars().take_while(|c| is_ident(*c)).collect());
        }
    }
    found
}

/// Each top-level module → the other top-level modules it imports.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let tops = top_modules();
    tops.iter()
        .map(|top| {
            let mut files = Vec::new();
            let dir = src().join(top);
            let root = if dir.exists() {
                dir
            } else {
                src().join(format!("{top}.rs"))
            };
            rust_files(&root, &mut files);
            let used = files
                .iter()
                .flat_map(|f| crate_imports(&code(f)))
                .filter(|name| tops.contains(name) && name != top)
                .collect();
            (top.clone(), used)
        })
        .collect()
}

#[test]
fn the_tree_follows_sources_model_writers() {
    let imports = imports();
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("model", &[][..]),
        ("config", &["model"][..]),
        ("manifests", &["model", "config"][..]),
        ("cluster", &["model", "manifests"][..]),
        ("ebpf", &["model", "config"][..]),
        ("iptables", &["model", "config"][..]),
        ("record", &["iptables"][..]),
        (
            "agent",
            &[
                "model",
                "config",
                "manifests",
                "cluster",
                "ebpf",
                "iptables",
                "record",
            ][..],
        ),
        (
            "inspect",
            &["model", "config", "manifests", "ebpf", "iptables", "record"][..],
        ),
        ("cli", &[][..]),
    ]);
    for (module, used) in &imports {
        let ok = allowed.get(module.as_str()).unwrap_or_else(|| {
            panic!("{module}: a new top-level module; add it to docs/architecture.md and here")
        });
        let extra: Vec<&String> = used.iter().filter(|u| !ok.contains(&u.as_str())).collect();
        assert!(extra.is_empty(), "{module} imports {extra:?}; allowed: {ok:?}");
    }
}

#[test]
fn src_holds_folders_and_at_most_four_files() {
    let files: Vec<String> = fs::read_dir(src())
        .expect("read src/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(files.len() <= 4, "loose files in src/: {files:?}");
}

#[test]
fn the_import_scanner_reads_use_trees() {
    let code = "use crate::{\n    config::{A, B},\n    model::{self, C},\n    record,\n};\nlet x = crate::ebpf::f();";
    let found: Vec<String> = crate_imports(code).into_iter().collect();
    assert_eq!(found, ["config", "ebpf", "model", "record"]);
}
