//! The source tree keeps the shape `docs/design.md` describes: no two files import each other,
//! no source file grows past 1,000 lines of non-test code, and `pipeline/src/` holds `main.rs`,
//! `lib.rs` and role folders only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's module path within its crate (`lib.rs` and `main.rs` are the root).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.last().map(String::as_str) {
        Some("lib") | Some("main") => parts.clear(),
        Some("mod") => {
            parts.pop();
        }
        _ => {}
    }
    parts
}

/// The code of a file before its unit tests.
fn non_test_code(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// Paths a file names: `crate::a::b`, `super::a`, and `child::x` for its own `mod child;`.
fn references(module: &[String], code: &str) -> BTreeSet<Vec<String>> {
    let mut refs = BTreeSet::new();
    // The identifiers of a path, up to its first non-identifier character.
    let words = |rest: &str| -> Vec<String> {
        let mut path = Vec::new();
        for segment in rest.split("::") {
            let ident: String = segment
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let whole = ident.len() == segment.len();
            if !ident.is_empty() {
                path.push(ident);
            }
            if !whole {
                break;
            }
        }
        path
    };
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        refs.insert(words(&code[i + "crate::".len()..]));
    }
    // `super` of `a/b.rs` and of `a/b/mod.rs` is `a`.
    let parent: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
    for (i, _) in code.match_indices("super::") {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut path = parent.clone();
        path.extend(words(&code[i + "super::".len()..]));
        refs.insert(path);
    }
    for line in code.lines() {
        let line = line.trim_start().trim_start_matches("pub ");
        if let Some(name) = line.strip_prefix("mod ").and_then(|l| l.strip_suffix(';')) {
            if code.contains(&format!("{name}::")) {
                let mut path = module.to_vec();
                path.push(name.to_string());
                refs.insert(path);
            }
        }
    }
    refs
}

/// Every pair of files of one crate that import each other.
fn circles(krate: &str) -> Vec<(PathBuf, PathBuf)> {
    let src = workspace().join(krate).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let mut edges: BTreeSet<(PathBuf, PathBuf)> = BTreeSet::new();
    for (module, file) in &modules {
        if module.last().is_some_and(|m| m == "tests") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("source");
        // Docs may name any path; only code imports.
        let code: String = non_test_code(&text)
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for r in references(module, &code) {
            // The file of the longest module path the reference starts with.
            let target = modules
                .iter()
                .filter(|(m, _)| m.len() <= r.len() && r[..m.len()] == m[..])
                .max_by_key(|(m, _)| m.len())
                .map(|(_, f)| f.clone());
            if let Some(t) = target.filter(|t| t != file) {
                edges.insert((file.clone(), t));
            }
        }
    }
    edges
        .iter()
        .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
        .cloned()
        .collect()
}

#[test]
fn no_two_files_import_each_other() {
    for krate in ["schemas", "operators", "pipeline"] {
        let found = circles(krate);
        assert!(
            found.is_empty(),
            "{krate}: files that import each other: {found:#?}"
        );
    }
}

#[test]
fn the_checker_sees_a_circle() {
    let module = vec!["a".to_string()];
    let refs = references(
        &module,
        "use crate::b::Thing;\nuse super::c;\nmod d;\nuse d::X;",
    );
    assert!(refs.contains(&vec!["b".to_string(), "Thing".to_string()]));
    assert!(refs.contains(&vec!["c".to_string()]));
    assert!(refs.contains(&vec!["a".to_string(), "d".to_string()]));
}

#[test]
fn no_source_file_is_over_a_thousand_lines_of_non_test_code() {
    let mut long = Vec::new();
    for krate in ["schemas", "operators", "pipeline", "benchmarks"] {
        let mut files = Vec::new();
        rust_files(&workspace().join(krate).join("src"), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).expect("source");
            let lines = non_test_code(&text).lines().count();
            if lines > 1000 {
                long.push((f, lines));
            }
        }
    }
    assert!(long.is_empty(), "files over 1,000 lines: {long:?}");
}

#[test]
fn pipeline_src_holds_main_lib_and_role_folders() {
    let src = workspace().join("pipeline/src");
    let mut entries: Vec<String> = std::fs::read_dir(&src)
        .expect("pipeline/src")
        .map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                format!("{name}/")
            } else {
                name
            }
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            "commands/",
            "config/",
            "lib.rs",
            "main.rs",
            "reports/",
            "sinks/",
            "sources/"
        ]
    );
    // Every command of the binary is one file under commands/.
    let main = std::fs::read_to_string(src.join("main.rs")).expect("main.rs");
    for command in [
        "run",
        "demo",
        "gen",
        "migrate",
        "catalog",
        "invoice",
        "shadow",
        "trace",
        "reconcile",
    ] {
        assert!(
            src.join("commands").join(format!("{command}.rs")).exists(),
            "commands/{command}.rs"
        );
        assert!(
            main.contains(&format!("meterflow::commands::{command}::")),
            "main.rs dispatches {command}"
        );
    }
}
