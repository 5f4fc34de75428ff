//! [`MemFs`]: a guest file system held in memory, for tests and fuzzing of the configuration
//! readers, and to apply a plan's [`FileChange`]s and read the result again.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::guest::fs::{FileKind, GuestFs};
use crate::guest::linuxcfg::{ChangeAction, FileChange, FsRole};

/// The most symbolic links followed while resolving one path.
const MAX_LINKS: usize = 40;

/// An in-memory file system: regular files and symbolic links by absolute path; folders exist
/// implicitly above every entry (and explicitly when made with [`MemFs::mkdir`]).
#[derive(Debug, Clone, Default)]
pub struct MemFs {
    files: BTreeMap<String, Vec<u8>>,
    links: BTreeMap<String, String>,
    dirs: BTreeMap<String, ()>,
}

/// `path` made absolute and normal: no empty, `.` or `..` parts (`..` at the top stays there).
fn normal(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The folder holding `path` (normal), `/` for the top.
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

impl MemFs {
    /// An empty file system.
    pub fn new() -> MemFs {
        MemFs::default()
    }

    /// Adds (or replaces) the regular file `path`.
    pub fn file(&mut self, path: &str, content: impl AsRef<[u8]>) -> &mut MemFs {
        let p = normal(path);
        self.links.remove(&p);
        self.files.insert(p, content.as_ref().to_vec());
        self
    }

    /// Adds (or replaces) the symbolic link `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut MemFs {
        let p = normal(path);
        self.files.remove(&p);
        self.links.insert(p, target.to_string());
        self
    }

    /// Adds the (empty) folder `path`.
    pub fn mkdir(&mut self, path: &str) -> &mut MemFs {
        self.dirs.insert(normal(path), ());
        self
    }

    /// Applies `changes` that concern the file system `role`, checking that each file still
    /// holds what the plan saw (`before`, the link target): a mismatch is an error naming the
    /// path.
    pub fn apply(&mut self, role: FsRole, changes: &[FileChange]) -> Result<()> {
        for c in changes.iter().filter(|c| c.fs == role) {
            let p = normal(&c.path);
            let seen = |now: Option<&Vec<u8>>, before: &str| -> Result<()> {
                if now.map(|b| b.as_slice()) == Some(before.as_bytes()) {
                    Ok(())
                } else {
                    Err(Error::InvalidArgument(format!(
                        "{p}: the file changed since the plan was made"
                    )))
                }
            };
            match &c.action {
                ChangeAction::Replace { before, after } => {
                    seen(self.files.get(&p), before)?;
                    self.files.insert(p, after.as_bytes().to_vec());
                }
                ChangeAction::Remove { before } => {
                    seen(self.files.get(&p), before)?;
                    self.files.remove(&p);
                }
                ChangeAction::RemoveLink { target } => {
                    if self.links.get(&p) != Some(target) {
                        return Err(Error::InvalidArgument(format!(
                            "{p}: not the symbolic link to {target} the plan saw"
                        )));
                    }
                    self.links.remove(&p);
                }
                ChangeAction::Add { content } => {
                    if self.exists(&p) {
                        return Err(Error::InvalidArgument(format!(
                            "{p}: exists, the plan meant to add it"
                        )));
                    }
                    self.files.insert(p, content.as_bytes().to_vec());
                }
            }
        }
        Ok(())
    }

    fn exists(&self, p: &str) -> bool {
        self.files.contains_key(p) || self.links.contains_key(p) || self.is_dir(p)
    }

    fn is_dir(&self, p: &str) -> bool {
        if p == "/" || self.dirs.contains_key(p) {
            return true;
        }
        let prefix = format!("{p}/");
        fn under<V>(m: &BTreeMap<String, V>, prefix: &str) -> bool {
            m.range(prefix.to_string()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(prefix))
        }
        under(&self.files, &prefix) || under(&self.links, &prefix) || under(&self.dirs, &prefix)
    }

    /// `path` with every link resolved (the final one too when `follow`); `None` on a loop
    /// or too many links.
    fn resolve(&self, path: &str, follow: bool) -> Option<String> {
        let mut todo: Vec<String> = normal(path)
            .split('/')
            .filter(|s| !s.is_empty())
            .rev()
            .map(String::from)
            .collect();
        let mut cur = String::from("/");
        let mut hops = 0;
        while let Some(part) = todo.pop() {
            let next = if part == ".." {
                parent(&cur).to_string()
            } else if part == "." {
                cur.clone()
            } else if cur == "/" {
                format!("/{part}")
            } else {
                format!("{cur}/{part}")
            };
            let last = todo.is_empty();
            match self.links.get(&next) {
                Some(t) if follow || !last => {
                    hops += 1;
                    if hops > MAX_LINKS {
                        return None;
                    }
                    let base = if t.starts_with('/') {
                        "/".to_string()
                    } else {
                        parent(&next).to_string()
                    };
                    for p in t.split('/').filter(|s| !s.is_empty()).rev() {
                        todo.push(p.to_string());
                    }
                    cur = base;
                }
                _ => cur = next,
            }
        }
        Some(cur)
    }

    fn kind(&self, p: &str) -> Option<FileKind> {
        if let Some(b) = self.files.get(p) {
            Some(FileKind::File(b.len() as u64))
        } else if self.links.contains_key(p) {
            Some(FileKind::Symlink)
        } else if self.is_dir(p) {
            Some(FileKind::Dir)
        } else {
            None
        }
    }
}

impl GuestFs for MemFs {
    fn fs_name(&self) -> &'static str {
        "memory"
    }
    fn stat(&self, path: &str) -> Result<Option<FileKind>> {
        Ok(self.resolve(path, true).and_then(|p| self.kind(&p)))
    }
    fn lstat(&self, path: &str) -> Result<Option<FileKind>> {
        Ok(self.resolve(path, false).and_then(|p| self.kind(&p)))
    }
    fn read_head(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>> {
        let Some(p) = self.resolve(path, true) else {
            return Ok(None);
        };
        match self.kind(&p) {
            None => Ok(None),
            Some(FileKind::File(_)) => {
                let b = &self.files[&p];
                Ok(Some(b[..b.len().min(max)].to_vec()))
            }
            Some(_) => Err(Error::InvalidArgument(format!(
                "{path}: not a regular file"
            ))),
        }
    }
    fn list_dir(&self, path: &str, max: usize) -> Result<Option<Vec<String>>> {
        let Some(p) = self.resolve(path, true) else {
            return Ok(None);
        };
        if self.kind(&p) != Some(FileKind::Dir) {
            return Ok(None);
        }
        let prefix = if p == "/" { p.clone() } else { format!("{p}/") };
        let mut names: Vec<String> = Vec::new();
        for k in self
            .files
            .keys()
            .chain(self.links.keys())
            .chain(self.dirs.keys())
        {
            if let Some(rest) = k.strip_prefix(&prefix) {
                let name = rest.split('/').next().unwrap_or("");
                if !name.is_empty() && !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        names.truncate(max);
        Ok(Some(names))
    }
    fn read_link(&self, path: &str) -> Result<Option<String>> {
        let Some(p) = self.resolve(path, false) else {
            return Ok(None);
        };
        Ok(self.links.get(&p).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_inside() {
        let mut fs = MemFs::new();
        fs.file("/usr/lib/os-release", "ID=debian\n")
            .symlink("/etc/os-release", "../usr/lib/os-release")
            .symlink("/etc/loop", "/etc/loop")
            .symlink("/lib", "usr/lib");
        assert_eq!(
            fs.stat("/etc/os-release").unwrap(),
            Some(FileKind::File(10))
        );
        assert_eq!(
            fs.lstat("/etc/os-release").unwrap(),
            Some(FileKind::Symlink)
        );
        assert_eq!(
            fs.stat("/lib/os-release").unwrap(),
            Some(FileKind::File(10))
        );
        assert_eq!(fs.stat("/etc/loop").unwrap(), None);
        assert_eq!(
            fs.list_dir("/etc", 10).unwrap().unwrap(),
            vec!["loop", "os-release"]
        );
        assert_eq!(fs.stat("/usr").unwrap(), Some(FileKind::Dir));
        assert_eq!(
            fs.read_text("/etc/os-release", 100).unwrap().unwrap(),
            "ID=debian\n"
        );
        assert_eq!(
            fs.read_link("/etc/os-release").unwrap().as_deref(),
            Some("../usr/lib/os-release")
        );
    }
}
