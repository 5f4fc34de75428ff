//! The read-only view of a guest file system that [`inspect`](crate::inspect) and
//! [`inject`](crate::inject) use, whatever the file system: ext2/3/4
//! ([`Ext4Volume`](crate::guest::ext4::Ext4Volume)) today, XFS and btrfs as their readers land.
//!
//! Paths are absolute, `/`-separated, inside the file system; symbolic links are resolved
//! inside it (never on the host). A path that does not exist or does not resolve is `None`, not
//! an error; an error means the file system could not be read (corrupt, truncated, I/O).

use crate::error::{Error, Result};

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file of this many bytes.
    File(u64),
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// A guest file system opened for reading.
pub trait GuestFs {
    /// The file system's short name (`ext4`, `xfs`, `btrfs`), for messages.
    fn fs_name(&self) -> &'static str;

    /// What `path` names, following symbolic links; `None` when it does not exist or does not
    /// resolve (a dangling link, a link loop).
    fn stat(&self, path: &str) -> Result<Option<FileKind>>;

    /// What `path` names, not following a final symbolic link.
    fn lstat(&self, path: &str) -> Result<Option<FileKind>>;

    /// The first `max` bytes (at most) of the regular file at `path`, links followed; `None`
    /// when it does not exist; an error when it is not a regular file.
    fn read_head(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>>;

    /// The names in the directory `path` (without `.` and `..`), at most `max` of them; `None`
    /// when it does not exist.
    fn list_dir(&self, path: &str, max: usize) -> Result<Option<Vec<String>>>;

    /// The target of the symbolic link at `path` (not followed); `None` when `path` does not
    /// exist or is not a symbolic link.
    fn read_link(&self, path: &str) -> Result<Option<String>>;

    /// The whole regular file at `path`, refused when it is larger than `max` bytes.
    fn read_file(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>> {
        match self.stat(path)? {
            None => Ok(None),
            Some(FileKind::File(len)) if len > max => Err(Error::Unsupported(format!(
                "{path} on the guest's {} file system is {len} bytes, more than the {max} \
                 bytes read",
                self.fs_name()
            ))),
            Some(FileKind::File(len)) => self.read_head(path, len as usize),
            Some(_) => Ok(None),
        }
    }

    /// The regular file at `path` as text (invalid UTF-8 replaced), at most `max` bytes;
    /// `None` when it does not exist or is not a regular file.
    fn read_text(&self, path: &str, max: u64) -> Result<Option<String>> {
        Ok(self
            .read_file(path, max)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }
}

/// A file system held in memory: files, directories and symbolic links by absolute path. For
/// tests of code written against [`GuestFs`], and for planning on a tree that is not in an
/// image. Parent directories are created as needed; links are resolved like a real file
/// system's (relative to the link's directory, at most 40 in a path).
#[derive(Debug, Clone, Default)]
pub struct MemFs {
    nodes: std::collections::BTreeMap<String, MemNode>,
}

#[derive(Debug, Clone)]
enum MemNode {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

/// Most links followed while resolving one path (Linux's limit).
const MAX_LINKS: usize = 40;

impl MemFs {
    /// An empty file system (only `/`).
    pub fn new() -> MemFs {
        let mut nodes = std::collections::BTreeMap::new();
        nodes.insert("/".to_string(), MemNode::Dir);
        MemFs { nodes }
    }

    fn add_parents(&mut self, path: &str) {
        let mut at = String::new();
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            at.push('/');
            at.push_str(p);
            self.nodes.entry(at.clone()).or_insert(MemNode::Dir);
        }
    }

    /// Adds (or replaces) the regular file `path`.
    pub fn file(&mut self, path: &str, data: impl AsRef<[u8]>) -> &mut MemFs {
        self.add_parents(path);
        self.nodes
            .insert(clean(path), MemNode::File(data.as_ref().to_vec()));
        self
    }

    /// Adds the directory `path`.
    pub fn dir(&mut self, path: &str) -> &mut MemFs {
        self.add_parents(path);
        self.nodes.insert(clean(path), MemNode::Dir);
        self
    }

    /// Adds the symbolic link `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut MemFs {
        self.add_parents(path);
        self.nodes
            .insert(clean(path), MemNode::Symlink(target.to_string()));
        self
    }

    /// Removes `path` (and what lies under it).
    pub fn remove(&mut self, path: &str) -> &mut MemFs {
        let p = clean(path);
        let under = format!("{p}/");
        self.nodes.retain(|k, _| *k != p && !k.starts_with(&under));
        self
    }

    /// The node `path` leads to, links followed inside (the last one too when `follow`).
    fn resolve(&self, path: &str, follow: bool) -> Option<(String, &MemNode)> {
        let mut todo: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .rev()
            .map(str::to_string)
            .collect();
        let mut cur: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(part) = todo.pop() {
            match part.as_str() {
                "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(part);
            let p = format!("/{}", cur.join("/"));
            match self.nodes.get(&p)? {
                MemNode::Symlink(t) if follow || !todo.is_empty() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return None;
                    }
                    cur.pop();
                    if t.starts_with('/') {
                        cur.clear();
                    }
                    todo.extend(
                        t.split('/')
                            .filter(|s| !s.is_empty())
                            .rev()
                            .map(str::to_string),
                    );
                }
                MemNode::File(_) if !todo.is_empty() => return None,
                _ => {}
            }
        }
        let p = format!("/{}", cur.join("/"));
        self.nodes.get(&p).map(|n| (p, n))
    }
}

fn clean(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

fn mem_kind(n: &MemNode) -> FileKind {
    match n {
        MemNode::File(d) => FileKind::File(d.len() as u64),
        MemNode::Dir => FileKind::Dir,
        MemNode::Symlink(_) => FileKind::Symlink,
    }
}

impl GuestFs for MemFs {
    fn fs_name(&self) -> &'static str {
        "in-memory"
    }
    fn stat(&self, path: &str) -> Result<Option<FileKind>> {
        Ok(self.resolve(path, true).map(|(_, n)| mem_kind(n)))
    }
    fn lstat(&self, path: &str) -> Result<Option<FileKind>> {
        Ok(self.resolve(path, false).map(|(_, n)| mem_kind(n)))
    }
    fn read_head(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>> {
        match self.resolve(path, true) {
            None => Ok(None),
            Some((_, MemNode::File(d))) => Ok(Some(d[..d.len().min(max)].to_vec())),
            Some((p, _)) => Err(Error::InvalidArgument(format!("{p}: not a regular file"))),
        }
    }
    fn list_dir(&self, path: &str, max: usize) -> Result<Option<Vec<String>>> {
        let Some((p, MemNode::Dir)) = self.resolve(path, true) else {
            return Ok(None);
        };
        let prefix = if p == "/" { p.clone() } else { format!("{p}/") };
        Ok(Some(
            self.nodes
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter(|(k, _)| k.len() > prefix.len() && !k[prefix.len()..].contains('/'))
                .map(|(k, _)| k[prefix.len()..].to_string())
                .take(max)
                .collect(),
        ))
    }
    fn read_link(&self, path: &str) -> Result<Option<String>> {
        Ok(match self.resolve(path, false) {
            Some((_, MemNode::Symlink(t))) => Some(t.clone()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_fs_resolves_links_like_a_file_system() {
        let mut fs = MemFs::new();
        fs.file("/usr/lib/os-release", "ID=debian\n")
            .symlink("/etc/os-release", "../usr/lib/os-release")
            .symlink("/lib", "usr/lib")
            .symlink("/loop", "/loop")
            .file("/etc/fstab", "x");
        assert_eq!(
            fs.read_text("/etc/os-release", 100).unwrap().as_deref(),
            Some("ID=debian\n")
        );
        assert_eq!(
            fs.stat("/lib/os-release").unwrap(),
            Some(FileKind::File(10))
        );
        assert_eq!(fs.lstat("/lib").unwrap(), Some(FileKind::Symlink));
        assert_eq!(fs.stat("/lib").unwrap(), Some(FileKind::Dir));
        assert_eq!(fs.stat("/loop").unwrap(), None);
        assert_eq!(fs.stat("/etc/fstab/x").unwrap(), None);
        assert_eq!(
            fs.read_link("/etc/os-release").unwrap().as_deref(),
            Some("../usr/lib/os-release")
        );
        assert_eq!(
            fs.list_dir("/etc", 10).unwrap().unwrap(),
            vec!["fstab".to_string(), "os-release".to_string()]
        );
        assert_eq!(
            fs.list_dir("/", 10).unwrap().unwrap(),
            vec!["etc", "lib", "loop", "usr"]
        );
        assert!(fs.read_file("/usr/lib/os-release", 5).is_err());
        fs.remove("/usr");
        assert_eq!(fs.stat("/etc/os-release").unwrap(), None);
    }
}
