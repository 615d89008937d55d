//! ARCHITECTURE.md's dependency rule, checked: every `crate::…` path in `src/` (outside
//! `#[cfg(test)]` code) names a module its own module may depend on. A new import against the
//! rule fails here, with the file and the edge.

use std::collections::BTreeMap;
use std::path::Path;

/// Which modules each module of the library may use. `http` is the outer adapter; `model` uses
/// nothing; `store` and `hsm` never use each other, `http`, `keys` or `backup`.
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("failpoint", &[]),
    ("fsutil", &[]),
    ("clock", &[]),
    ("hsm", &["model", "failpoint"]),
    ("auth", &["model"]),
    ("store", &["model", "auth"]),
    ("error", &["model", "hsm", "store"]),
    ("tls", &["clock", "fsutil"]),
    ("audit", &["model", "error", "clock", "store", "fsutil"]),
    (
        "access",
        &["model", "error", "clock", "store", "auth", "audit"],
    ),
    (
        "keys",
        &[
            "model",
            "error",
            "clock",
            "failpoint",
            "store",
            "hsm",
            "secdomain",
        ],
    ),
    (
        "backup",
        &[
            "model",
            "error",
            "clock",
            "failpoint",
            "fsutil",
            "store",
            "keys",
            "client",
        ],
    ),
    (
        "http",
        &[
            "model", "error", "clock", "config", "auth", "access", "audit", "keys", "backup",
        ],
    ),
    // The command line's side: it assembles everything, so it may use everything but `http`'s
    // internals through `lib::app`.
    ("config", &["model", "auth", "hsm"]),
    ("client", &["tls", "model", "error"]),
    ("pem", &["model"]),
    ("secdomain", &["model"]),
    (
        "admin",
        &[
            "model", "error", "clock", "store", "auth", "audit", "access", "fsutil",
        ],
    ),
    (
        "provision",
        &[
            "model",
            "error",
            "clock",
            "failpoint",
            "fsutil",
            "store",
            "hsm",
            "auth",
            "tls",
            "config",
            "keys",
            "secdomain",
        ],
    ),
];

/// Modules that assemble the others (the binary's entry points); not checked.
const ASSEMBLERS: &[&str] = &["lib", "main", "cli", "serve"];

/// The top-level modules named by `crate::` paths in `text`, with `#[cfg(test)]` code cut off.
fn used_modules(text: &str) -> Vec<String> {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d}`: the first segment of each item at the top level.
            let mut depth = 0;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(ch);
                }
            }
            found.push(first_segment(&item));
        } else {
            found.push(first_segment(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src reads") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_import_follows_the_dependency_rule() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let module = relative
            .components()
            .next()
            .expect("a first component")
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if ASSEMBLERS.contains(&module.as_str()) {
            continue;
        }
        let Some(may) = allowed.get(module.as_str()) else {
            broken.push(format!(
                "{}: module `{module}` is not in the dependency rule (add it to ALLOWED and ARCHITECTURE.md)",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("reads");
        for used in used_modules(&text) {
            checked += 1;
            if used != module && !may.contains(&used.as_str()) {
                broken.push(format!("{}: `{module}` uses `{used}`", relative.display()));
            }
        }
    }
    assert!(checked > 100, "the check saw only {checked} imports");
    assert!(
        broken.is_empty(),
        "imports against the rule:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_import_reader_sees_grouped_and_nested_paths() {
    let text = "use crate::{hsm, store::{self, Store}};\nuse crate::model::KeyName;\n// use crate::http;\nfn f() { crate::error::Error::Internal(String::new()); }\n#[cfg(test)]\nmod tests { use crate::http; }\n";
    assert_eq!(used_modules(text), vec!["hsm", "store", "model", "error"]);
}
