//! Parsers for the text index files depmod writes into `/lib/modules/<version>/` (kmod's
//! `depmod(8)`, `modules.dep(5)`, `modprobe.d(5)` for the softdep syntax): `modules.dep`,
//! `modules.alias`, `modules.builtin`, `modules.builtin.modinfo`, `modules.softdep`,
//! `modules.order`.
//!
//! Each parser takes the file's bytes and the absolute offset they were read from (0 for a
//! whole file), and names the line and its byte offset in its errors. Names are normalized as
//! kmod normalizes them (`-` and `_` are the same character in module names and aliases).

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, ErrorKind, Result, StructureError};

/// The format name errors use.
const FORMAT: &str = "kmod";

/// Longest line accepted in an index file (kmod's own line buffer is 4 KiB for config lines;
/// a `modules.dep` line of a module with many dependencies can be longer).
const MAX_LINE: usize = 1 << 20;

fn invalid(file: &str, line: usize, offset: u64, detail: impl Into<String>) -> Error {
    Error::typed(
        ErrorKind::InvalidFormat,
        StructureError::invalid(FORMAT, format!("{file} line {line}"), offset, detail),
    )
}

/// The lines of `bytes` with their 1-based number and absolute offset; comments (`#`) and blank
/// lines are skipped when `comments` is set.
fn lines<'a>(
    file: &'static str,
    bytes: &'a [u8],
    offset: u64,
    comments: bool,
) -> impl Iterator<Item = Result<(usize, u64, &'a str)>> + 'a {
    let mut pos = 0usize;
    let mut n = 0usize;
    std::iter::from_fn(move || {
        loop {
            if pos >= bytes.len() {
                return None;
            }
            let start = pos;
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| start + i);
            pos = end.saturating_add(1);
            n += 1;
            let at = offset.saturating_add(start as u64);
            if end - start > MAX_LINE {
                return Some(Err(invalid(
                    file,
                    n,
                    at,
                    format!("line is {} bytes, more than {MAX_LINE}", end - start),
                )));
            }
            let raw = &bytes[start..end];
            let text = match std::str::from_utf8(raw) {
                Ok(t) => t.trim_end_matches('\r'),
                Err(e) => {
                    return Some(Err(invalid(
                        file,
                        n,
                        at.saturating_add(e.valid_up_to() as u64),
                        "expected UTF-8 text, found an invalid byte sequence",
                    )));
                }
            };
            let t = text.trim();
            if t.is_empty() || (comments && t.starts_with('#')) {
                continue;
            }
            return Some(Ok((n, at, t)));
        }
    })
}

/// The module name of a module file path, as kmod derives it: the file name up to its first
/// `.`, with `-` turned into `_` (`kernel/drivers/nvme/host/nvme-core.ko.xz` → `nvme_core`).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split('.').next().unwrap_or(base);
    normalize_name(stem)
}

/// A module name with `-` turned into `_` (kmod's `modname_normalize`).
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// An alias or alias pattern with `-` turned into `_` outside `[...]` (kmod's
/// `alias_normalize`), so that `crypto-crc32c` and `crypto_crc32c` match.
pub fn normalize_alias(alias: &str) -> String {
    let mut out = String::with_capacity(alias.len());
    let mut in_class = false;
    for c in alias.chars() {
        match c {
            '[' => in_class = true,
            ']' => in_class = false,
            '-' if !in_class => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// One line of `modules.dep`: a module file and the files it depends on (the whole transitive
/// list, in load order: last loaded first, as depmod writes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    /// The module's path, relative to `/lib/modules/<version>/`.
    pub path: String,
    /// Its dependencies' paths, as written.
    pub deps: Vec<String>,
}

/// A parsed `modules.dep`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulesDep {
    /// The lines in file order.
    pub entries: Vec<DepEntry>,
    by_name: HashMap<String, usize>,
}

impl ModulesDep {
    /// The entry of the module named `name` (normalized first); the first one when a name
    /// appears twice (kmod keeps the first too).
    pub fn get(&self, name: &str) -> Option<&DepEntry> {
        self.by_name
            .get(&normalize_name(name))
            .map(|&i| &self.entries[i])
    }

    /// The entry whose path is `path`.
    pub fn by_path(&self, path: &str) -> Option<&DepEntry> {
        self.get(&module_name(path)).filter(|e| e.path == path)
    }

    /// How many modules it lists.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it lists no module.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Strips `/lib/modules/<anything>/` (or `/usr/lib/modules/...`) from an absolute path, as
/// old depmod versions wrote absolute paths.
fn relative(path: &str) -> &str {
    for prefix in ["/usr/lib/modules/", "/lib/modules/"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            return rest.split_once('/').map_or(rest, |(_, r)| r);
        }
    }
    path
}

/// Checks a module path: relative, no `..`, no NUL, ends in `.ko` or `.ko.<something>`.
fn check_path(file: &str, line: usize, at: u64, path: &str) -> Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || path.contains('\0')
        || !(path.ends_with(".ko") || path.contains(".ko."));
    if bad {
        return Err(invalid(
            file,
            line,
            at,
            format!(
                "expected a module path relative to the modules folder ending in .ko or .ko.*, \
                 found {path:?}"
            ),
        ));
    }
    Ok(())
}

/// Parses `modules.dep`: lines `path: dep dep ...`.
pub fn parse_modules_dep(bytes: &[u8], offset: u64) -> Result<ModulesDep> {
    let mut out = ModulesDep::default();
    for l in lines("modules.dep", bytes, offset, true) {
        let (n, at, text) = l?;
        let Some((path, deps)) = text.split_once(':') else {
            return Err(invalid(
                "modules.dep",
                n,
                at,
                format!("expected `path: dependencies`, found no ':' in {text:?}"),
            ));
        };
        let path = relative(path.trim()).to_string();
        check_path("modules.dep", n, at, &path)?;
        let mut list = Vec::new();
        for d in deps.split_ascii_whitespace() {
            let d = relative(d).to_string();
            check_path("modules.dep", n, at, &d)?;
            list.push(d);
        }
        let name = module_name(&path);
        let i = out.entries.len();
        out.by_name.entry(name).or_insert(i);
        out.entries.push(DepEntry { path, deps: list });
    }
    Ok(out)
}

/// A parsed `modules.builtin` or `modules.order`: one module path per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleList {
    /// The paths in file order.
    pub paths: Vec<String>,
    names: HashMap<String, usize>,
}

impl ModuleList {
    /// Whether the module named `name` is listed.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(&normalize_name(name))
    }

    /// The position of the module named `name` in the list.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.names.get(&normalize_name(name)).copied()
    }
}

fn parse_list(file: &'static str, bytes: &[u8], offset: u64) -> Result<ModuleList> {
    let mut out = ModuleList::default();
    for l in lines(file, bytes, offset, true) {
        let (n, at, text) = l?;
        let path = relative(text).to_string();
        check_path(file, n, at, &path)?;
        let i = out.paths.len();
        out.names.entry(module_name(&path)).or_insert(i);
        out.paths.push(path);
    }
    Ok(out)
}

/// Parses `modules.builtin`: the modules compiled into the kernel, one path per line.
pub fn parse_modules_builtin(bytes: &[u8], offset: u64) -> Result<ModuleList> {
    parse_list("modules.builtin", bytes, offset)
}

/// Parses `modules.order`: the modules in the order the kernel's build lists them.
pub fn parse_modules_order(bytes: &[u8], offset: u64) -> Result<ModuleList> {
    parse_list("modules.order", bytes, offset)
}

/// One `alias PATTERN MODULE` line of `modules.alias`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The pattern (a shell glob: `*`, `?`, `[...]`), normalized.
    pub pattern: String,
    /// The module it names, normalized.
    pub module: String,
}

/// Parses `modules.alias`.
pub fn parse_modules_alias(bytes: &[u8], offset: u64) -> Result<Vec<Alias>> {
    let mut out = Vec::new();
    for l in lines("modules.alias", bytes, offset, true) {
        let (n, at, text) = l?;
        let mut w = text.split_ascii_whitespace();
        match (w.next(), w.next(), w.next(), w.next()) {
            (Some("alias"), Some(pattern), Some(module), None) => out.push(Alias {
                pattern: normalize_alias(pattern),
                module: normalize_name(module),
            }),
            _ => {
                return Err(invalid(
                    "modules.alias",
                    n,
                    at,
                    format!("expected `alias PATTERN MODULE`, found {text:?}"),
                ));
            }
        }
    }
    Ok(out)
}

/// Whether `name` matches the shell glob `pattern` (`*`, `?`, `[abc]`, `[a-z]`, `[!a]`/`[^a]`),
/// as kmod matches aliases with `fnmatch(3)` without flags.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point for the last `*` (linear in practice).
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class(&p, pi, s[si]) {
                        if matched {
                            pi = next;
                            si += 1;
                            continue;
                        }
                    } else if s[si] == '[' {
                        // An unterminated `[` is a literal.
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
                '\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == s[si] {
                        pi += 2;
                        si += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[si] {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the bracket expression starting at `p[start]` (`[`): `Some((matched,
/// index after the closing ]))`, or `None` when it is not terminated.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = i < p.len() && (p[i] == '!' || p[i] == '^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// One `softdep MODULE pre: A B post: C` line (of `modules.softdep` or a `modprobe.d` file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SoftDep {
    /// The module, normalized.
    pub module: String,
    /// Names loaded before it (module names or aliases).
    pub pre: Vec<String>,
    /// Names loaded after it.
    pub post: Vec<String>,
}

/// Parses `modules.softdep`. Names before the first `pre:` or `post:` are ignored, as kmod
/// ignores them; other lines (`alias`, `options`, ...) are not softdeps and are skipped, as
/// `modules.softdep` is read as a `modprobe.d` configuration file.
pub fn parse_modules_softdep(bytes: &[u8], offset: u64) -> Result<Vec<SoftDep>> {
    let mut out = Vec::new();
    for l in lines("modules.softdep", bytes, offset, true) {
        let (n, at, text) = l?;
        let mut w = text.split_ascii_whitespace();
        if w.next() != Some("softdep") {
            continue;
        }
        let Some(module) = w.next() else {
            return Err(invalid(
                "modules.softdep",
                n,
                at,
                "expected `softdep MODULE pre: ... post: ...`, found no module name",
            ));
        };
        let mut dep = SoftDep {
            module: normalize_name(module),
            ..SoftDep::default()
        };
        #[derive(PartialEq)]
        enum Mode {
            None,
            Pre,
            Post,
        }
        let mut mode = Mode::None;
        for t in w {
            match t {
                "pre:" => mode = Mode::Pre,
                "post:" => mode = Mode::Post,
                _ if mode == Mode::Pre => dep.pre.push(t.to_string()),
                _ if mode == Mode::Post => dep.post.push(t.to_string()),
                _ => {}
            }
        }
        out.push(dep);
    }
    Ok(out)
}

/// A parsed `modules.builtin.modinfo`: the `.modinfo` of every built-in module, by module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuiltinModinfo {
    /// Module name (normalized) → its `key=value` entries in file order.
    pub modules: BTreeMap<String, Vec<(String, String)>>,
}

impl BuiltinModinfo {
    /// The values of `key` for module `name`.
    pub fn values<'a>(&'a self, name: &str, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.modules
            .get(&normalize_name(name))
            .into_iter()
            .flatten()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `modules.builtin.modinfo`: NUL-separated `module.key=value` strings.
pub fn parse_modules_builtin_modinfo(bytes: &[u8], offset: u64) -> Result<BuiltinModinfo> {
    let mut out = BuiltinModinfo::default();
    let mut pos = 0usize;
    for (i, raw) in bytes.split(|&b| b == 0).enumerate() {
        let at = offset.saturating_add(pos as u64);
        pos = pos.saturating_add(raw.len() + 1);
        if raw.is_empty() {
            continue;
        }
        let what = || format!("modules.builtin.modinfo string {}", i + 1);
        let text = std::str::from_utf8(raw).map_err(|_| {
            Error::typed(
                ErrorKind::InvalidFormat,
                StructureError::invalid(FORMAT, what(), at, "expected UTF-8 text"),
            )
        })?;
        let parsed = text
            .split_once('=')
            .and_then(|(mk, v)| mk.split_once('.').map(|(m, k)| (m, k, v)))
            .filter(|(m, k, _)| !m.is_empty() && !k.is_empty());
        let Some((m, k, v)) = parsed else {
            return Err(Error::typed(
                ErrorKind::InvalidFormat,
                StructureError::invalid(
                    FORMAT,
                    what(),
                    at,
                    format!("expected `module.key=value`, found {text:?}"),
                ),
            ));
        };
        out.modules
            .entry(normalize_name(m))
            .or_default()
            .push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_kmod_derives_them() {
        assert_eq!(
            module_name("kernel/drivers/block/virtio_blk.ko.xz"),
            "virtio_blk"
        );
        assert_eq!(
            module_name("kernel/drivers/nvme/host/nvme-core.ko"),
            "nvme_core"
        );
        assert_eq!(module_name("xen-blkfront.ko.zst"), "xen_blkfront");
        assert_eq!(normalize_name("xen-blkfront"), "xen_blkfront");
        assert_eq!(normalize_alias("crypto-crc32c"), "crypto_crc32c");
        assert_eq!(normalize_alias("pci:v*d*[a-z]-x"), "pci:v*d*[a-z]_x");
    }

    #[test]
    fn modules_dep_lines() {
        // Two modules: virtio_blk depends on virtio and virtio_ring; virtio_ring on nothing;
        // an absolute path (old depmod) is made relative.
        let text = b"kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz \
kernel/drivers/virtio/virtio_ring.ko.xz\n\
kernel/drivers/virtio/virtio_ring.ko.xz:\n\
/lib/modules/2.6.32/kernel/drivers/nvme/host/nvme-core.ko:\n";
        let d = parse_modules_dep(text, 0).unwrap();
        assert_eq!(d.len(), 3);
        let e = d.get("virtio-blk").unwrap();
        assert_eq!(e.path, "kernel/drivers/block/virtio_blk.ko.xz");
        assert_eq!(e.deps.len(), 2);
        assert_eq!(d.get("virtio_ring").unwrap().deps.len(), 0);
        assert_eq!(
            d.get("nvme_core").unwrap().path,
            "kernel/drivers/nvme/host/nvme-core.ko"
        );
        assert!(d.get("virtio").is_none());
        assert!(
            d.by_path("kernel/drivers/virtio/virtio_ring.ko.xz")
                .is_some()
        );
    }

    #[test]
    fn modules_dep_errors_name_line_and_offset() {
        let e = parse_modules_dep(b"a.ko:\nno colon here\n", 100).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidFormat);
        let s = e.to_string();
        assert!(s.contains("modules.dep line 2 at 0x6a"), "{s}");
        let e = parse_modules_dep(b"../../etc/passwd.ko:\n", 0).unwrap_err();
        assert!(e.to_string().contains("relative"), "{e}");
        let e = parse_modules_dep(b"a.ko: b.txt\n", 0).unwrap_err();
        assert!(e.to_string().contains("b.txt"), "{e}");
        let e = parse_modules_dep(b"a.ko: \xff.ko\n", 0).unwrap_err();
        assert!(e.to_string().contains("at 0x6"), "{e}");
    }

    #[test]
    fn builtin_and_order() {
        let b = parse_modules_builtin(
            b"kernel/drivers/virtio/virtio.ko\nkernel/fs/ext4/ext4.ko\n",
            0,
        )
        .unwrap();
        assert!(b.contains("virtio"));
        assert!(b.contains("ext4"));
        assert!(!b.contains("virtio_blk"));
        let o = parse_modules_order(b"kernel/a.ko\nkernel/b-c.ko\n", 0).unwrap();
        assert_eq!(o.position("b_c"), Some(1));
        assert!(parse_modules_builtin(b"virtio\n", 0).is_err());
    }

    #[test]
    fn aliases_and_globs() {
        let a = parse_modules_alias(
            b"# Aliases extracted from modules themselves.\n\
alias pci:v00001AF4d00001001sv*sd*bc*sc*i* virtio_blk\n\
alias crypto-crc32c crc32c_intel\n\
alias crct10dif crct10dif-pclmul\n",
            0,
        )
        .unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[1].pattern, "crypto_crc32c");
        assert_eq!(a[2].module, "crct10dif_pclmul");
        assert!(glob_match(
            &a[0].pattern,
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"
        ));
        assert!(!glob_match(
            &a[0].pattern,
            "pci:v00001AF4d00001000sv0sd0bc0sc0i0"
        ));
        assert!(glob_match("a[0-9]c", "a5c"));
        assert!(!glob_match("a[!0-9]c", "a5c"));
        assert!(glob_match("a[^x]c", "abc"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("a[b", "a[b"));
        assert!(glob_match("[]]x", "]x"));
        assert!(parse_modules_alias(b"alias onlyone\n", 0).is_err());
    }

    #[test]
    fn softdeps() {
        let s = parse_modules_softdep(
            b"# Soft dependencies extracted from modules themselves.\n\
softdep crc_t10dif pre: crct10dif\n\
softdep cifs gcm\n\
softdep a-b pre: x y post: z\n\
options foo bar=1\n",
            0,
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].pre, vec!["crct10dif"]);
        assert!(s[1].pre.is_empty() && s[1].post.is_empty());
        assert_eq!(s[2].module, "a_b");
        assert_eq!(s[2].pre, vec!["x", "y"]);
        assert_eq!(s[2].post, vec!["z"]);
        assert!(parse_modules_softdep(b"softdep\n", 0).is_err());
    }

    #[test]
    fn builtin_modinfo() {
        let m = parse_modules_builtin_modinfo(
            b"virtio.license=GPL\0virtio.alias=virtio:d*v*\0ext4.alias=fs-ext4\0\0",
            0,
        )
        .unwrap();
        assert_eq!(m.values("virtio", "license").collect::<Vec<_>>(), ["GPL"]);
        assert_eq!(m.values("ext4", "alias").collect::<Vec<_>>(), ["fs-ext4"]);
        let e = parse_modules_builtin_modinfo(b"ok.a=b\0broken\0", 0x40).unwrap_err();
        assert!(e.to_string().contains("string 2 at 0x47"), "{e}");
    }
}
