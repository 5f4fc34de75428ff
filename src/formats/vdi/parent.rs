//! Finding the parent of a differencing VDI, which names it only by UUID (see the
//! [module documentation](super) for the rules).

use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::reference::{OpenContext, ReferencePolicy};

use super::corrupt;
use super::header::{PRE_HEADER_SIZE, VdiHeader};
use super::reader::read_header;

/// VDI files looked at per folder at most: a folder of thousands of images is not read whole.
const MAX_CANDIDATES: usize = 1024;

/// Whether `parent`, found at `shown`, is the parent `child` names. A parent with the right
/// `uuidCreate` whose `uuidModify` differs from the child's `uuidParentModify` is an error:
/// the parent was changed after the child was made, and the chain would read wrong data.
fn is_parent(child: &VdiHeader, parent: &VdiHeader, shown: &str) -> Result<bool> {
    if parent.uuid_create != child.uuid_linkage {
        return Ok(false);
    }
    if !child.uuid_parent_modify.is_nil() && parent.uuid_modify != child.uuid_parent_modify {
        return Err(corrupt(
            "header",
            PRE_HEADER_SIZE as u64,
            format!(
                "the parent {shown} (uuid {:x}) was modified after this differencing image was \
                 made: its modification uuid is {:x}, this image expects {:x} \
                 (uuidParentModify); reading the chain would mix old and new data",
                parent.uuid_create, parent.uuid_modify, child.uuid_parent_modify
            ),
        )
        .into());
    }
    Ok(true)
}

/// The header of the VDI named `name` (relative to the child's folder), read through the
/// reference gate; `Ok(None)` when it is not a readable VDI.
fn candidate_header(
    ctx: &OpenContext<'_>,
    child: Option<&Path>,
    name: &str,
) -> Result<Option<VdiHeader>> {
    let storage = ctx.open_reference_storage(child, "parent", name)?;
    Ok(read_header(storage.as_ref()).ok().map(|(h, _)| h))
}

/// Checks that `name`, named by the caller, is the parent of `child_header`.
pub(super) fn check_named(
    ctx: &OpenContext<'_>,
    child: Option<&Path>,
    name: &str,
    child_header: &VdiHeader,
) -> Result<()> {
    let Some(h) = candidate_header(ctx, child, name)? else {
        return Err(Error::InvalidArgument(format!(
            "the parent named, {name}, is not a readable VDI image"
        )));
    };
    if !is_parent(child_header, &h, name)? {
        return Err(corrupt(
            "header",
            PRE_HEADER_SIZE as u64,
            format!(
                "the parent named, {name}, has uuid {:x}, but this image's parent is {:x} \
                 (uuidLinkage)",
                h.uuid_create, child_header.uuid_linkage
            ),
        )
        .into());
    }
    Ok(())
}

/// The `*.vdi` file names of `folder`, `{UUID}.vdi` and `UUID.vdi` first, then the others in
/// name order, without `skip`; at most [`MAX_CANDIDATES`]. A folder that cannot be listed has
/// none.
fn vdi_names(folder: &Path, uuid: &str, skip: Option<&str>) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.to_ascii_lowercase().ends_with(".vdi") && Some(n.as_str()) != skip)
        .collect();
    let rank = |n: &str| {
        let stem = n[..n.len() - 4].to_ascii_lowercase();
        let stem = stem.trim_start_matches('{').trim_end_matches('}');
        u8::from(stem != uuid)
    };
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    names.truncate(MAX_CANDIDATES);
    names
}

/// What [`locate`] found.
pub(super) enum Lookup {
    /// The parent's name relative to the child's folder (`NAME` or `../NAME`).
    Found(String),
    /// No parent found, or the reference policy did not let diskconv look: why.
    Missing(Error),
}

/// Finds the parent of the differencing image `h` found at `child`. `Err` when a VDI with the
/// parent's UUID was found but its modification UUID is not the one the child records, or an
/// I/O error stopped the search.
pub(super) fn locate(ctx: &OpenContext<'_>, child: Option<&Path>, h: &VdiHeader) -> Result<Lookup> {
    let uuid = format!("{:x}", h.uuid_linkage);
    let wanted = format!("{{{uuid}}}");
    let folder = child.and_then(Path::parent);
    let (Some(child), Some(folder)) = (child, folder) else {
        return Ok(Lookup::Missing(Error::ReferenceDenied {
            what: "parent",
            name: wanted,
            reason: "not searched for beside an image that has no folder (opened from memory)"
                .into(),
        }));
    };
    if ctx.references() == ReferencePolicy::Deny {
        return Ok(Lookup::Missing(Error::ReferenceDenied {
            what: "parent",
            name: wanted,
            reason: "not searched for: references are denied".into(),
        }));
    }
    let own = child.file_name().and_then(|n| n.to_str());
    let up = folder.parent();
    let mut looked = 0usize;
    let mut denied: Vec<String> = Vec::new();
    let mut places = vec![(folder, "")];
    if let Some(up) = up {
        places.push((up, "../"));
    }
    for (dir, prefix) in places {
        let skip = if prefix.is_empty() { own } else { None };
        for n in vdi_names(dir, &uuid, skip) {
            let name = format!("{prefix}{n}");
            match candidate_header(ctx, Some(child), &name) {
                Ok(Some(ph)) => {
                    looked += 1;
                    if is_parent(h, &ph, &dir.join(&n).display().to_string())? {
                        return Ok(Lookup::Found(name));
                    }
                }
                Ok(None) => looked += 1,
                Err(e) if e.kind() == ErrorKind::ReferenceDenied => denied.push(name),
                // Vanished or unreadable: not the parent.
                Err(e) if e.kind() == ErrorKind::Io => {}
                // The chain is too deep: no parent may be opened.
                Err(e) => return Err(e),
            }
        }
    }
    let places = match up {
        Some(up) => format!("{} and {}", folder.display(), up.display()),
        None => folder.display().to_string(),
    };
    if !denied.is_empty() {
        return Ok(Lookup::Missing(Error::ReferenceDenied {
            what: "parent",
            name: wanted,
            reason: format!(
                "not found among the {looked} VDI files the reference policy let diskconv read \
                 in {places}; {} more ({}) lie outside the image's folder and were not looked \
                 at (VirtualBox keeps snapshot images in a Snapshots folder beside the base \
                 disk)",
                denied.len(),
                denied.join(", ")
            ),
        }));
    }
    Ok(Lookup::Missing(Error::Corrupt(format!(
        "the parent of this differencing VDI, a VDI whose uuid is {uuid} (uuidLinkage), was not \
         found among the {looked} VDI files in {places}; VirtualBox records where the parent \
         is in its media registry, not in the image: put the parent beside the image"
    ))))
}
