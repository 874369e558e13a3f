//! The dependency rule of `lib.rs` checked against the code: each module imports only from
//! the modules listed before it in the map's "Layers" list (test modules excepted).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The modules in the order `lib.rs` lists them under "Layers".
fn layers(lib_rs: &str) -> Vec<String> {
    let mut in_list = false;
    let mut order = Vec::new();
    for line in lib_rs.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            break;
        };
        let doc = doc.trim();
        if doc.starts_with("Layers") {
            in_list = true;
            continue;
        }
        if in_list {
            match doc.split_once(". [`") {
                Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) => {
                    order.push(rest.split('`').next().unwrap_or_default().to_string());
                }
                _ if doc.is_empty() => break,
                _ => {}
            }
        }
    }
    order
}

/// The crate modules a file's non-test code names (`crate::x`, `crate::{x, y}`).
fn references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        let code = line.split("//").next().unwrap_or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or_default();
                out.extend(
                    group
                        .split(',')
                        .map(|p| p.trim().split("::").next().unwrap_or_default().to_string()),
                );
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// (module, what it imports against the rule) for every module.
fn violations(src: &Path) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let order = layers(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let rank = |m: &str| order.iter().position(|o| o == m);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if ["lib", "main", "layering", "test_fixtures"].contains(&module.as_str()) {
            continue;
        }
        let Some(mine) = rank(&module) else {
            bad.entry(module)
                .or_default()
                .push("(not in the map)".into());
            continue;
        };
        for r in references(&std::fs::read_to_string(&f).unwrap()) {
            if r != module && rank(&r).is_none_or(|theirs| theirs > mine) {
                let what = format!("{r} (in {})", rel.display());
                if !bad.get(&module).is_some_and(|v| v.contains(&what)) {
                    bad.entry(module.clone()).or_default().push(what);
                }
            }
        }
    }
    (order, bad)
}

#[test]
fn each_module_imports_only_from_the_modules_before_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (order, bad) = violations(&src);
    assert!(order.len() > 10, "the Layers list of lib.rs: {order:?}");
    assert!(
        bad.is_empty(),
        "imports against the layers of lib.rs: {bad:#?}"
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    assert_eq!(
        references("use crate::{job::X, store};\nfn f() { crate::app::serve(); } // crate::no\n"),
        ["job", "store", "app"]
    );
    assert!(references("#[cfg(test)]\nmod tests {\n use crate::app;\n}\n").is_empty());
    let lib = "//! Layers:\n//! 1. [`uid`] — a\n//! 2. [`store`] — b\n//!\n//! other\n";
    assert_eq!(layers(lib), ["uid", "store"]);
}
