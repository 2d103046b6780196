//! The house's one rule, checked on the source text: each folder of `src/`
//! uses only the folders before it in
//! `core → plan → mongo → ops → batch → service → cli`
//! (README, "Layout"). `core` and `plan` are pure and use nothing of tally
//! outside themselves. Any `crate::` path in code counts — `use` lines and
//! paths written inline; comments and doc links do not.

use std::path::{Path, PathBuf};

/// The folders in layer order: a folder may use itself and those before it.
const LAYERS: [&str; 7] = ["core", "plan", "mongo", "ops", "batch", "service", "cli"];

fn rank(folder: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == folder)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The folder of tally each `crate::` path of a line names, comments cut.
fn used_folders(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `use crate::{a, b}` names several.
        if name.is_empty() && after.starts_with('{') {
            let group = &after[1..after.find('}').unwrap_or(after.len())];
            found.extend(
                group
                    .split(',')
                    .map(|s| s.trim().split("::").next().unwrap_or("").to_owned()),
            );
        } else {
            found.push(name);
        }
        rest = after;
    }
    found
}

/// Every (file, line number, used folder) that breaks the order.
fn violations() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 30, "read the sources under {root:?}");
    let mut bad = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&root).unwrap();
        let Some(folder) = rel.components().next().and_then(|c| c.as_os_str().to_str()) else {
            continue;
        };
        // lib.rs and main.rs sit above every folder.
        let Some(own) = rank(folder) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for used in used_folders(line) {
                let allowed = match rank(&used) {
                    Some(r) => r <= own,
                    // lib.rs items (exit_status, UsageError) sit above core.
                    None => !matches!(folder, "core" | "plan"),
                };
                if !allowed {
                    bad.push(format!("{}:{}: {folder} uses {used}", rel.display(), n + 1));
                }
            }
        }
    }
    bad
}

#[test]
fn each_folder_uses_only_the_folders_before_it() {
    let bad = violations();
    assert!(
        bad.is_empty(),
        "imports against the layer order:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_reader_sees_inline_paths_and_groups_and_skips_comments() {
    assert_eq!(used_folders("use crate::mongo::bulk;"), vec!["mongo"]);
    assert_eq!(
        used_folders("    let x = crate::service::live::Live::new(); // crate::cli"),
        vec!["service"]
    );
    assert_eq!(
        used_folders("use crate::{core::money, plan};"),
        vec!["core", "plan"]
    );
    assert!(used_folders("/// see [`crate::batch::scan`]").is_empty());
}
