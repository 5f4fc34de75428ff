//! Applying a plan's [`FileChange`]s to an in-memory file system ([`MemFs`], the guest layer's
//! own), for tests and fuzzing of the configuration readers: the result is read again.

use crate::error::{Error, Result};
use crate::guest::fs::{FileKind, GuestFs, MemFs};
use crate::guest::linuxcfg::{ChangeAction, FileChange, FsRole};

/// Applying a plan to a file system in memory.
pub trait ApplyChanges {
    /// Applies `changes` that concern the file system `role`, checking that each file still
    /// holds what the plan saw (`before`, the link target): a mismatch is an error naming the
    /// path.
    fn apply(&mut self, role: FsRole, changes: &[FileChange]) -> Result<()>;
}

impl ApplyChanges for MemFs {
    fn apply(&mut self, role: FsRole, changes: &[FileChange]) -> Result<()> {
        for c in changes.iter().filter(|c| c.fs == role) {
            let p = c.path.as_str();
            let text = |fs: &MemFs| -> Result<Option<Vec<u8>>> {
                match fs.lstat(p)? {
                    Some(FileKind::File(_)) => fs.read_head(p, usize::MAX),
                    _ => Ok(None),
                }
            };
            let seen = |now: Option<Vec<u8>>, before: &str| -> Result<()> {
                if now.as_deref() == Some(before.as_bytes()) {
                    Ok(())
                } else {
                    Err(Error::InvalidArgument(format!(
                        "{p}: the file changed since the plan was made"
                    )))
                }
            };
            match &c.action {
                ChangeAction::Replace { before, after } => {
                    seen(text(self)?, before)?;
                    self.file(p, after.as_bytes());
                }
                ChangeAction::Remove { before } => {
                    seen(text(self)?, before)?;
                    self.remove(p);
                }
                ChangeAction::RemoveLink { target } => {
                    if self.read_link(p)?.as_ref() != Some(target) {
                        return Err(Error::InvalidArgument(format!(
                            "{p}: not the symbolic link to {target} the plan saw"
                        )));
                    }
                    self.remove(p);
                }
                ChangeAction::Add { content } => {
                    if self.lstat(p)?.is_some() {
                        return Err(Error::InvalidArgument(format!(
                            "{p}: exists, the plan meant to add it"
                        )));
                    }
                    self.file(p, content.as_bytes());
                }
            }
        }
        Ok(())
    }
}
