//! What the tests need besides Rust, and a summary of what is missing.
//!
//! `tests/oracles/tools.txt` is the one list of the tools, Python modules and conditions the tests
//! use: `.ci/run` installs from it, [`crate::util::require`] accepts only names from it, and
//! README.md shows it (checked here). The test `zz_oracles::summary` always runs and reports
//! what is missing, with [`summary_text`].
//!
//! Which tests skip because of an entry is read from the test sources: a test needs an entry
//! when its body, or a helper it calls (followed through the helpers of every test module),
//! names it (`"qemu-img"`, `import regipy`, a call of `util::corpus_root`, ...): see [`markers`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::util;

/// The list, as the tests were built with it.
const LIST: &str = include_str!("../oracles/tools.txt");

/// How an entry of the list is provided and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An executable on PATH, from a Debian package.
    Command,
    /// A module python3 imports, from a pip package.
    Python,
    /// An executable on PATH, from an npm package installed globally (`npm install -g`).
    Npm,
    /// An executable on PATH built from a crate with `cargo install` (package column:
    /// `CRATE@VERSION/FEATURES`).
    Cargo,
    /// A C library the build links, found by `pkg-config --exists NAME`, from a Debian package
    /// (with pkg-config). The build needs it, so no test requires it.
    Library,
    /// Not installable (root and loop devices, the corpus): checked here.
    Condition,
}

/// One entry of `tests/oracles/tools.txt`.
#[derive(Debug)]
pub struct Oracle {
    /// Command, module or condition name, as `require` takes it.
    pub name: &'static str,
    /// How it is provided and checked.
    pub kind: Kind,
    /// The Debian package (commands) or pip package (Python modules); `-` for conditions.
    pub package: &'static str,
    /// What the tests do with it.
    pub checks: &'static str,
}

impl Oracle {
    /// How to get this entry when it is missing.
    pub fn remedy(&self) -> String {
        match (self.kind, self.name) {
            (Kind::Command, _) => format!("Debian package {}", self.package),
            (Kind::Python, _) => format!("pip package {}", self.package),
            (Kind::Npm, _) => format!("npm package {} (npm install -g)", self.package),
            (Kind::Cargo, _) => {
                let (krate, features) = self.package.split_once('/').unwrap_or((self.package, ""));
                format!("cargo install --locked {krate} --features '{features}'")
            }
            (Kind::Library, _) => format!("Debian packages {} and pkg-config", self.package),
            (_, "loop-device") => "run the tests as root where loop devices exist".into(),
            (_, "corpus") => format!(
                "put the corpus at {} or set DISKCONV_TEST_CORPUS",
                util::DEFAULT_CORPUS
            ),
            (_, "boot-oracles") => {
                "run .ci/boot-oracles as root (or set DISKCONV_BOOT_ORACLES to where it ran)".into()
            }
            _ => unreachable!("condition {} has no check", self.name),
        }
    }
}

/// Every entry of the list, in its order.
pub fn all() -> &'static [Oracle] {
    static ALL: OnceLock<Vec<Oracle>> = OnceLock::new();
    ALL.get_or_init(|| parse(LIST))
}

/// Parses the list; panics on a malformed line (naming it).
fn parse(text: &'static str) -> Vec<Oracle> {
    /// The first space-separated word of `s` and the rest, leading spaces removed.
    fn word(s: &str) -> (&str, &str) {
        let s = s.trim_start();
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        (&s[..end], s[end..].trim_start())
    }
    let mut out: Vec<Oracle> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = word(line);
        let (kind, rest) = word(rest);
        let (package, checks) = word(rest);
        let kind = match kind {
            "command" => Kind::Command,
            "python" => Kind::Python,
            "npm" => Kind::Npm,
            "cargo" => Kind::Cargo,
            "library" => Kind::Library,
            "condition" => Kind::Condition,
            k => panic!("tests/oracles/tools.txt line {}: unknown kind {k:?}", n + 1),
        };
        assert!(
            !checks.is_empty() && (kind == Kind::Condition) == (package == "-"),
            "tests/oracles/tools.txt line {}: want NAME KIND PACKAGE WHAT, PACKAGE `-` for a condition only",
            n + 1
        );
        assert!(
            out.iter().all(|o| o.name != name),
            "tests/oracles/tools.txt line {}: {name} is listed twice",
            n + 1
        );
        out.push(Oracle {
            name,
            kind,
            package,
            checks,
        });
    }
    out
}

/// The entry named `name`; panics when the list lacks it, so that every tool a test requires is
/// one that .ci/run installs and README.md lists.
pub fn get(name: &str) -> &'static Oracle {
    all().iter().find(|o| o.name == name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not in tests/oracles/tools.txt: add it there (kind, package, what the tests \
             do with it) so that .ci/run installs it and README.md lists it"
        )
    })
}

/// `Ok` when `o` is usable here, else why not.
pub fn check(o: &Oracle) -> Result<(), String> {
    match (o.kind, o.name) {
        (Kind::Command | Kind::Npm | Kind::Cargo, name) => on_path(name)
            .then_some(())
            .ok_or_else(|| "is not on PATH".to_string()),
        (Kind::Python, name) => {
            if !on_path("python3") {
                return Err("needs python3, which is not on PATH".into());
            }
            let out = Command::new("python3")
                .args(["-c", &format!("import {name}")])
                .output()
                .map_err(|e| format!("python3 did not run: {e}"))?;
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| "python3 cannot import it".into())
        }
        (Kind::Library, name) => {
            let out = Command::new("pkg-config")
                .args(["--exists", name])
                .status()
                .map_err(|e| format!("pkg-config did not run: {e}"))?;
            out.success()
                .then_some(())
                .ok_or_else(|| "is not found by pkg-config".into())
        }
        (Kind::Condition, "loop-device") => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            if unsafe { libc::geteuid() } != 0 {
                return Err("needs root".into());
            }
            if !on_path("losetup") {
                return Err("needs losetup, which is not on PATH".into());
            }
            let out = Command::new("losetup")
                .arg("-f")
                .output()
                .map_err(|e| format!("losetup did not run: {e}"))?;
            out.status.success().then_some(()).ok_or_else(|| {
                format!(
                    "`losetup -f` finds no free loop device: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })
        }
        (Kind::Condition, "corpus") => {
            let root = util::corpus_root();
            root.is_dir()
                .then_some(())
                .ok_or_else(|| format!("is absent: no folder {}", root.display()))
        }
        (Kind::Condition, "boot-oracles") => crate::linux_fixture::BootOracles::find().map(|_| ()),
        (Kind::Condition, name) => unreachable!("condition {name} has no check"),
    }
}

/// Whether `tool` is an executable file in a folder of PATH.
pub fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The text by which a test (or a helper it calls) names `o`.
fn markers(o: &Oracle) -> Vec<String> {
    let n = o.name;
    match (o.kind, n) {
        // A literal argument (`Command::new("tar")`, `require("tar")`), or the start or a stage
        // of a shell pipeline (`"dd if=... | sha256sum"`).
        (Kind::Command | Kind::Npm | Kind::Cargo, _) => {
            vec![format!("\"{n}\""), format!("\"{n} "), format!("| {n}")]
        }
        (Kind::Python, _) => vec![
            format!("\"{n}\""),
            format!("import {n}"),
            format!("from {n}"),
        ],
        // The build needs it; no test names it.
        (Kind::Library, _) => Vec::new(),
        (Kind::Condition, "loop-device") => vec!["\"losetup\"".into(), "\"loop-device\"".into()],
        (Kind::Condition, "corpus") => vec!["corpus_root(".into()],
        (Kind::Condition, "boot-oracles") => vec!["\"boot-oracles\"".into()],
        (Kind::Condition, _) => unreachable!("condition {n} has no markers"),
    }
}

/// A function of the test sources.
struct SrcFn {
    /// Index of its file in the scanned files.
    file: usize,
    /// Its name.
    name: String,
    /// Whether it is a method (in an `impl` block), called as `x.name()` or `Type::name()`.
    method: bool,
    /// The full test name libtest prints, for a `#[test]`.
    test: Option<String>,
    /// Its text, comment lines removed.
    body: String,
}

/// One scanned source file.
struct SrcFile {
    /// Test module name (integration tests) or module path (unit tests in src/).
    module: String,
    /// Whether it is an integration test module (so it can call the helpers of the others).
    integration: bool,
    /// Module aliases (`use crate::ntfs_fixture as fx`) and imported modules, to their module.
    aliases: HashMap<String, String>,
}

/// Every test source: the integration test modules (but the oracle modules, which name every tool
/// without using any) and the `#[cfg(test)]` parts of src/.
fn scan() -> (Vec<SrcFile>, Vec<SrcFn>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths: Vec<(PathBuf, bool)> = Vec::new();
    for e in std::fs::read_dir(root.join("tests/integration")).expect("tests/integration") {
        let p = e.expect("tests/integration entry").path();
        // The oracle modules name every tool without using any.
        let oracles = p.ends_with("oracles.rs") || p.ends_with("zz_oracles.rs");
        if p.extension().is_some_and(|x| x == "rs") && !oracles {
            paths.push((p, true));
        }
    }
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("src folder") {
            let p = e.expect("src entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                paths.push((p, false));
            }
        }
    }
    paths.sort();
    let modules: HashSet<String> = paths
        .iter()
        .filter(|(_, i)| *i)
        .map(|(p, _)| stem(p))
        .collect();
    let (mut files, mut fns) = (Vec::new(), Vec::new());
    for (path, integration) in paths {
        let text = std::fs::read_to_string(&path).expect("test source");
        let (module, text) = if integration {
            (stem(&path), text.as_str())
        } else {
            // Only the unit tests: from the first `#[cfg(test)]` on.
            let Some(at) = text.find("#[cfg(test)]") else {
                continue;
            };
            let rel = path.strip_prefix(root.join("src")).expect("under src");
            let m = rel.with_extension("").to_string_lossy().replace('/', "::");
            let m = m.trim_end_matches("::mod").to_string();
            (m, &text[at..])
        };
        let mut aliases = HashMap::new();
        if integration {
            for m in &modules {
                if text.contains(&format!("crate::{m}")) {
                    aliases.insert(m.clone(), m.clone());
                }
                for form in [format!("crate::{m}::{{self as "), format!("crate::{m} as ")] {
                    for (at, _) in text.match_indices(&form) {
                        let alias: String = text[at + form.len()..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        aliases.insert(alias, m.clone());
                    }
                }
            }
        }
        let file = files.len();
        for f in functions(text) {
            let test = f.is_test.then(|| {
                let mut parts = vec![module.clone()];
                parts.extend(f.mods.iter().cloned());
                parts.push(f.name.clone());
                parts.join("::")
            });
            fns.push(SrcFn {
                file,
                name: f.name,
                method: f.method,
                test,
                body: f.body,
            });
        }
        files.push(SrcFile {
            module,
            integration,
            aliases,
        });
    }
    (files, fns)
}

/// The file name of `p` without `.rs`.
fn stem(p: &Path) -> String {
    p.file_stem()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

/// A function found by [`functions`].
struct Found {
    name: String,
    /// The inline modules it sits in (`mod tests { ... }`), outermost first.
    mods: Vec<String>,
    /// Whether it sits in an `impl` block.
    method: bool,
    is_test: bool,
    body: String,
}

/// The functions of rustfmt-formatted Rust text: a `fn` line and the lines up to the closing
/// brace at the same indentation (functions nested in it are part of it). Comment lines are
/// left out of the bodies.
fn functions(text: &str) -> Vec<Found> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut mods: Vec<(usize, String)> = Vec::new();
    let mut impls: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        if t == "}" {
            mods.retain(|(ind, _)| *ind < indent(line));
            impls.retain(|ind| *ind < indent(line));
        }
        if (t.starts_with("impl ") || t.starts_with("impl<")) && t.ends_with('{') {
            impls.push(indent(line));
        }
        if let Some(m) = t
            .strip_prefix("mod ")
            .or_else(|| t.strip_prefix("pub mod "))
            .and_then(|r| r.strip_suffix(" {"))
        {
            mods.push((indent(line), m.to_string()));
        }
        let Some(name) = fn_name(t) else {
            i += 1;
            continue;
        };
        // The signature ends with `;` when there is no body (a trait method).
        let mut end = i;
        if !(t.ends_with('}') && t.contains('{')) {
            let close = format!("{}}}", &line[..indent(line)]);
            match lines[i + 1..].iter().position(|l| *l == close) {
                Some(k) if !t.ends_with(';') => end = i + 1 + k,
                _ => {
                    i += 1;
                    continue;
                }
            }
        }
        let mut is_test = false;
        for prev in lines[..i].iter().rev() {
            let p = prev.trim_start();
            if p == "#[test]" {
                is_test = true;
            }
            if !(p.starts_with("#[") || p.starts_with("//")) {
                break;
            }
        }
        let body: Vec<&str> = lines[i..=end]
            .iter()
            .copied()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        out.push(Found {
            name,
            mods: mods.iter().map(|(_, m)| m.clone()).collect(),
            method: impls.last().is_some_and(|&ind| ind < indent(line)),
            is_test,
            body: body.join("\n"),
        });
        i = end + 1;
    }
    out
}

/// The name of the function a trimmed line declares, if it declares one.
fn fn_name(t: &str) -> Option<String> {
    let mut t = t;
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        t = t.strip_prefix(prefix).unwrap_or(t);
    }
    let rest = t.strip_prefix("fn ")?;
    let name: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The calls in `body`: (qualifier before `::`, if any; whether it is a method call; name).
fn calls(body: &str) -> Vec<(Option<String>, bool, String)> {
    let b = body.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    for (at, _) in body.match_indices('(') {
        let mut s = at;
        while s > 0 && is_ident(b[s - 1]) {
            s -= 1;
        }
        if s == at || b[s].is_ascii_digit() {
            continue;
        }
        let name = body[s..at].to_string();
        if matches!(
            name.as_str(),
            "if" | "while" | "match" | "for" | "in" | "return" | "fn" | "Some" | "Ok" | "Err"
        ) {
            continue;
        }
        let method = s > 0 && b[s - 1] == b'.';
        let qualifier = (s >= 2 && &body[s - 2..s] == "::").then(|| {
            let mut q = s - 2;
            while q > 0 && is_ident(b[q - 1]) {
                q -= 1;
            }
            body[q..s - 2].to_string()
        });
        out.push((qualifier, method, name));
    }
    out
}

/// For every `#[test]` function of the test sources, the entries of the list it needs:
/// named in its body or in a helper it calls, directly or through other helpers.
fn needs() -> BTreeMap<String, BTreeSet<&'static str>> {
    let (files, fns) = scan();
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (k, f) in fns.iter().enumerate() {
        by_name.entry(f.name.as_str()).or_default().push(k);
    }
    let marks: Vec<(&'static str, Vec<String>)> =
        all().iter().map(|o| (o.name, markers(o))).collect();
    // What each function calls, resolved to functions of the scanned sources.
    let callees = |k: usize| -> Vec<usize> {
        let f = &fns[k];
        let file = &files[f.file];
        let mut out = Vec::new();
        for (qualifier, method, name) in calls(&f.body) {
            let Some(cands) = by_name.get(name.as_str()) else {
                continue;
            };
            // A plain call (`drop(x)`) is never a method; `x.name()` always is.
            let fits = |c: usize| qualifier.is_some() || fns[c].method == method;
            let same: Vec<usize> = cands
                .iter()
                .copied()
                .filter(|&c| fns[c].file == f.file && fits(c))
                .collect();
            let in_module = |m: &str| -> Vec<usize> {
                cands
                    .iter()
                    .copied()
                    .filter(|&c| {
                        files[fns[c].file].integration && files[fns[c].file].module == m && fits(c)
                    })
                    .collect()
            };
            match qualifier.as_deref() {
                _ if method => out.extend(same),
                None | Some("Self" | "self" | "super") if !same.is_empty() => out.extend(same),
                None if file.integration => {
                    // Imported from another test module (`use crate::util::{run, ...}`).
                    for m in file.aliases.values() {
                        out.extend(in_module(m));
                    }
                }
                Some(q) if file.integration => {
                    if let Some(m) = file.aliases.get(q) {
                        out.extend(in_module(m));
                    } else if files.iter().any(|x| x.integration && x.module == q) {
                        out.extend(in_module(q));
                    }
                }
                _ => {}
            }
        }
        out
    };
    let direct: Vec<BTreeSet<&'static str>> = fns
        .iter()
        .map(|f| {
            marks
                .iter()
                .filter(|(_, ms)| ms.iter().any(|m| f.body.contains(m.as_str())))
                .map(|(n, _)| *n)
                .collect()
        })
        .collect();
    let graph: Vec<Vec<usize>> = (0..fns.len()).map(callees).collect();
    let mut out = BTreeMap::new();
    for (k, f) in fns.iter().enumerate() {
        let Some(test) = &f.test else { continue };
        let mut seen = HashSet::from([k]);
        let mut todo = vec![k];
        let mut need = BTreeSet::new();
        while let Some(c) = todo.pop() {
            need.extend(direct[c].iter().copied());
            for &d in &graph[c] {
                if seen.insert(d) {
                    todo.push(d);
                }
            }
        }
        out.insert(test.clone(), need);
    }
    out
}

/// Up to a few test names, or how many tests of which modules.
fn describe(tests: &[&String]) -> String {
    match tests.len() {
        0 => "no test needs it".into(),
        1..=4 => {
            let names: Vec<&str> = tests.iter().map(|t| t.as_str()).collect();
            format!("{} skip: {}", plural(tests.len()), names.join(", "))
        }
        n => {
            let mut by_module: BTreeMap<&str, usize> = BTreeMap::new();
            for t in tests {
                let module = t.rsplit_once("::").map_or(t.as_str(), |(m, _)| m);
                *by_module.entry(module).or_default() += 1;
            }
            let mut groups: Vec<(&str, usize)> = by_module.into_iter().collect();
            groups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let groups: Vec<String> = groups.iter().map(|(m, k)| format!("{m} ({k})")).collect();
            format!("{} skip: {}", plural(n), groups.join(", "))
        }
    }
}

/// "1 test", "N tests".
fn plural(n: usize) -> String {
    if n == 1 {
        "1 test".into()
    } else {
        format!("{n} tests")
    }
}

/// The summary for the entries that are missing (with why), or one line saying none is.
pub fn summary_text(missing: &[(&Oracle, String)]) -> String {
    if missing.is_empty() {
        return format!(
            "test oracles: all {} entries of tests/oracles/tools.txt are here; no test skips for want of one\n",
            all().len()
        );
    }
    let needs = needs();
    let width = missing.iter().map(|(o, _)| o.name.len()).max().unwrap_or(0);
    let mut skipping = BTreeSet::new();
    let mut lines = String::new();
    for (o, why) in missing {
        let tests: Vec<&String> = needs
            .iter()
            .filter(|(_, need)| need.contains(o.name))
            .map(|(t, _)| t)
            .collect();
        skipping.extend(tests.iter().copied());
        lines += &format!(
            "test oracles:   {:width$}  {why} ({}); {}\n",
            o.name,
            o.remedy(),
            describe(&tests)
        );
    }
    let set = |kind: Kind| -> Vec<&str> {
        let s: BTreeSet<&str> = missing
            .iter()
            .filter(|(o, _)| o.kind == kind)
            .map(|(o, _)| o.package)
            .collect();
        s.into_iter().collect()
    };
    let mut install = Vec::new();
    let mut apt = set(Kind::Command);
    if !set(Kind::Library).is_empty() {
        apt.extend(set(Kind::Library));
        apt.push("pkg-config");
    }
    if !apt.is_empty() {
        apt.sort();
        apt.dedup();
        install.push(format!("apt-get install -y {}", apt.join(" ")));
    }
    for p in set(Kind::Cargo) {
        let (krate, features) = p.split_once('/').unwrap_or((p, ""));
        install.push(format!(
            "cargo install --locked {krate} --features '{features}'"
        ));
    }
    if !set(Kind::Python).is_empty() {
        install.push(format!(
            "python3 -m pip install {}",
            set(Kind::Python).join(" ")
        ));
    }
    if !set(Kind::Npm).is_empty() {
        install.push(format!("npm install -g {}", set(Kind::Npm).join(" ")));
    }
    let mut text = format!(
        "test oracles: {} of {} entries of tests/oracles/tools.txt missing, {} skip (see README.md \"Set-up\"):\n",
        missing.len(),
        all().len(),
        plural(skipping.len())
    );
    text += &lines;
    if !install.is_empty() {
        text += &format!(
            "test oracles: install them with `{}` (or run .ci/run, which installs every entry)\n",
            install.join(" && ")
        );
    }
    text
}

/// The entries of the list that are missing here, with why.
pub fn missing() -> Vec<(&'static Oracle, String)> {
    all()
        .iter()
        .filter_map(|o| check(o).err().map(|why| (o, why)))
        .collect()
}

/// The install commands in README.md name exactly the packages of the list, its table names
/// every entry, and .ci/run installs from the list and runs README.md's test command.
#[test]
fn readme_and_ci_follow_the_list() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    let packages = |kind: Kind| -> BTreeSet<&str> {
        all()
            .iter()
            .filter(|o| o.kind == kind)
            .map(|o| o.package)
            .collect()
    };
    // The words after `install` on the first README line holding `what`, options left out.
    let installed = |what: &str| -> BTreeSet<&str> {
        let line = readme
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("README.md has no `{what}` line"));
        line.split_whitespace()
            .skip_while(|w| *w != "install")
            .skip(1)
            .take_while(|w| *w != "&&")
            .filter(|w| !w.starts_with('-'))
            .collect()
    };
    for (what, kind) in [
        ("apt-get install", Kind::Command),
        ("pip install", Kind::Python),
        ("npm install -g", Kind::Npm),
    ] {
        let mut want = packages(kind);
        // C libraries come from Debian packages too, found with pkg-config.
        if kind == Kind::Command && !packages(Kind::Library).is_empty() {
            want.extend(packages(Kind::Library));
            want.insert("pkg-config");
        }
        let want_line: Vec<&str> = want.iter().copied().collect();
        assert_eq!(
            installed(what),
            want,
            "README.md's `{what}` line must name the {kind:?} packages of tests/oracles/tools.txt: {}",
            want_line.join(" ")
        );
    }
    let rows: Vec<String> = all()
        .iter()
        .map(|o| format!("| `{}` | {} | {} |", o.name, o.package, o.checks))
        .filter(|row| !readme.lines().any(|l| l == row))
        .collect();
    assert!(
        rows.is_empty(),
        "README.md's table of test tools must have these rows, as tests/oracles/tools.txt says:\n{}",
        rows.join("\n")
    );
    assert!(
        ci.contains("tests/oracles/tools.txt"),
        ".ci/run must install from tests/oracles/tools.txt"
    );
    let block = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split_once("```").map(|(b, _)| b.trim()))
        .find(|b| b.starts_with("cargo test"))
        .expect("README.md shows the test command in a ```sh block");
    assert!(
        ci.lines().any(|l| l.trim() == block),
        ".ci/run must run README.md's test command `{block}`"
    );
}

/// Every tool the test sources run or require by a literal name is in the list (`require`
/// checks names given otherwise when it runs), and every entry is used by some test source, so
/// .ci/run installs nothing the tests do not use.
#[test]
fn the_list_is_what_the_tests_use() {
    let (_, fns) = scan();
    let mut unlisted = BTreeSet::new();
    for f in &fns {
        for call in ["Command::new(\"", "require(\"", "have(\""] {
            for (at, _) in f.body.match_indices(call) {
                let rest = &f.body[at + call.len()..];
                let name = &rest[..rest.find('"').unwrap_or(0)];
                if !all().iter().any(|o| o.name == name) {
                    unlisted.insert(format!("{name} (in {})", f.name));
                }
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "the tests run tools tests/oracles/tools.txt lacks: {unlisted:?}"
    );
    let unused: Vec<&str> = all()
        .iter()
        .filter(|o| o.kind != Kind::Library)
        .filter(|o| {
            let ms = markers(o);
            !fns.iter()
                .any(|f| ms.iter().any(|m| f.body.contains(m.as_str())))
        })
        .map(|o| o.name)
        .collect();
    assert!(
        unused.is_empty(),
        "tests/oracles/tools.txt lists what no test uses: {unused:?}"
    );
}

/// The source scan finds the tests and follows helpers across modules: a test that calls
/// `fx::require_tools()` needs what that helper requires, and one that reads the corpus
/// through a helper needs the corpus.
#[test]
fn needs_follow_helpers() {
    let needs = needs();
    let of = |t: &str| {
        needs
            .get(t)
            .unwrap_or_else(|| panic!("the scan found no test {t}"))
    };
    let inject = needs
        .keys()
        .find(|t| t.starts_with("inject_windows::"))
        .expect("inject_windows tests");
    assert!(
        ["mkntfs", "sgdisk", "xorriso", "hivexregedit"]
            .iter()
            .all(|t| of(inject).contains(t)),
        "{inject}: {:?}",
        of(inject)
    );
    assert!(
        needs
            .iter()
            .any(|(t, n)| t.starts_with("hive_log::") && n.contains("corpus")),
        "hive_log reads the corpus through load() -> util::corpus()"
    );
    assert!(
        needs
            .keys()
            .any(|t| t.starts_with("formats::qcow2::update::tests::")),
        "unit tests in src/ are scanned too"
    );
    assert!(
        !needs
            .keys()
            .any(|t| t.starts_with("oracles::") || t.starts_with("zz_oracles::")),
        "the scan leaves the oracle modules out"
    );
}
