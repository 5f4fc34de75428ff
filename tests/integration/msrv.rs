//! The code keeps to the Rust release `rust-version` in Cargo.toml names. Clippy's
//! `incompatible_msrv` lint checks the standard library calls against it; no lint checks the
//! language, and CI has only one (newer) compiler. This test checks the newer language feature
//! the code was found using: let chains (`if let A = a && let B = b`, `if c && let ..`),
//! stable since 1.88.

use std::path::Path;

/// `rust-version` of Cargo.toml as (major, minor).
fn rust_version() -> (u32, u32) {
    let toml = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .expect("Cargo.toml");
    let line = toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .expect("Cargo.toml sets rust-version");
    let mut parts = line.trim_end_matches('"').split('.');
    let mut next = || {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .expect("rust-version is MAJOR.MINOR")
    };
    (next(), next())
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("source folder") {
        let p = e.expect("folder entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `code` with comments, string and character literals blanked (same length, newlines kept),
/// so that only code is searched.
fn code_only(code: &str) -> String {
    let b = code.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |k| i + k);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"r#\"") || rest.starts_with(b"r\"") {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let start = i + 2 + hashes;
            let end = b[start..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len(), |k| start + k + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if rest[0] == b'"' {
            let mut k = i + 1;
            while k < b.len() && b[k] != b'"' {
                k += if b[k] == b'\\' { 2 } else { 1 };
            }
            let end = (k + 1).min(b.len());
            blank(&mut out, i, end);
            i = end;
        } else if rest[0] == b'\'' && rest.len() >= 3 {
            // A character literal ('x', '…', '\n', '\''), or else a lifetime.
            let end = if rest[1] == b'\\' {
                rest[3..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map(|k| i + 4 + k)
            } else {
                let width = code[i + 1..].chars().next().map_or(1, char::len_utf8);
                (rest.get(1 + width) == Some(&b'\'')).then_some(i + 2 + width)
            };
            match end {
                Some(end) => {
                    blank(&mut out, i, end);
                    i = end;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The let chains in `code` (comments and literals blanked): the line of each `if`/`while`
/// whose condition joins a `let` with `&&` or `||`.
fn let_chains(code: &str) -> Vec<usize> {
    let b = code.as_bytes();
    let mut found = Vec::new();
    let word_at = |i: usize, w: &str| {
        b[i..].starts_with(w.as_bytes())
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
            && b.get(i + w.len())
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
    };
    for i in 0..b.len() {
        if !(word_at(i, "if") || word_at(i, "while")) {
            continue;
        }
        // The condition runs to the `{` at nesting depth 0 (a condition cannot hold a struct
        // literal outside parentheses); a match guard's to its `=>`.
        let (mut depth, mut k) = (0i32, i);
        let (mut has_let, mut joined) = (false, false);
        while k < b.len() {
            match b[k] {
                b'(' | b'[' => depth += 1,
                b')' | b']' => depth -= 1,
                b'{' if depth == 0 => break,
                b'{' => depth += 1,
                b'}' => depth -= 1,
                b';' if depth == 0 => break,
                b'=' if depth == 0 && b.get(k + 1) == Some(&b'>') => break,
                _ => {}
            }
            if depth < 0 {
                break;
            }
            if depth == 0 {
                has_let |= word_at(k, "let");
                joined |= b[k..].starts_with(b"&&") || b[k..].starts_with(b"||");
            }
            k += 1;
        }
        if has_let && joined {
            found.push(b[..i].iter().filter(|&&c| c == b'\n').count() + 1);
        }
    }
    found
}

#[test]
fn the_let_chain_finder_finds_let_chains_and_nothing_else() {
    let src = r#"
fn f(a: Option<u8>, b: bool) {
    if let Some(x) = a && x > 3 {}
    if b && let Some(_) = a {}
    while let Some(x) = a
        && let Some(_) = Some(x)
    {}
    if let Some(x) = a.filter(|v| *v > 1 && b) {}
    if b && a.is_some() {}
    let _ = b && a.is_none();
    // if let Some(x) = a && x > 3 {}
    let s = "if let Some(x) = a && b {";
    if let Some(x) = a { if x > 1 && b {} }
    match a { Some(x) if x > 1 && b => {} _ => {} }
    match a {
        Some(x) if x > 1 && b => 1,
        _ => 2,
    };
    let y = 3;
}
"#;
    assert_eq!(let_chains(&code_only(src)), vec![3, 4, 5]);
    // Character literals are not lifetimes, whatever their width.
    let chars =
        "fn g(c: char) { if c == '\\'' || c == '…' && let_ok() {} if let 'x' = c && true {} }";
    assert_eq!(let_chains(&code_only(chars)), vec![1]);
}

#[test]
fn no_let_chains_while_rust_version_is_below_1_88() {
    if rust_version() >= (1, 88) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("source file");
        for line in let_chains(&code_only(&text)) {
            found.push(format!(
                "{}:{line}",
                f.strip_prefix(root).unwrap_or(&f).display()
            ));
        }
    }
    assert!(
        found.is_empty(),
        "let chains need Rust 1.88 but Cargo.toml says rust-version {:?}: nest the `if let`s, or \
         raise rust-version (and README.md's note on it): {found:?}",
        rust_version()
    );
}
