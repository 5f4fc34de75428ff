//! Reading an OVA package without extracting it.
//!
//! An OVA is a USTAR tar: the `.ovf` descriptor first, an optional `.mf` manifest (and `.cert`
//! signature), then the disks in the order the OVF lists them. [`OvaPackage`] lists the
//! members, checks the manifest and parses the OVF; each disk (`DiskSection/Disk`, its
//! `ovf:fileRef` resolved through `References/File/@ovf:href`) is opened in place over a
//! [`SliceStorage`] of its member, as the format its content shows (VMDK normally; qcow2, VHD
//! and VHDX members are read too).
//!
//! Manifest: when [`PackageOptions::verify_manifest`] is on (the default), the OVF is hashed and
//! compared before it is parsed, and the disks about to be read before they are opened (several
//! disks at once, on separate threads). That costs one sequential read of each disk member
//! before the conversion reads it again: verifying while converting would mean parsing and
//! decompressing unverified bytes first, and `info`, `map` and `compare` have no final step
//! at which a late mismatch could still withdraw what was shown. A manifest that lists a file
//! the archive lacks, or a line that does not parse, is an error; a member the manifest does
//! not list is a warning (its integrity is unknown). A `.cert` signature is reported but not
//! checked.
//!
//! [`PackageOptions::verify_manifest`]: crate::open::PackageOptions::verify_manifest

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use super::OvaError;
use super::manifest::{
    DigestAlgorithm, MAX_MANIFEST_BYTES, ManifestEntry, OvaManifest, digest_range, plain_name,
};
use super::ovf::{MAX_OVF_BYTES, OvfEnvelope, parse_ovf};
use crate::bytes::hex;
use crate::error::{Error, Result};
use crate::image::{
    Extent, Format, ImageInfo, ImageReader, ManifestInfo, PackageDisk, PackageInfo, PackageNic,
};
use crate::reference::{OpenContext, PackageOptions};
use crate::storage::Storage;

/// Largest number of tar members looked at.
const MAX_MEMBERS: usize = 10_000;

/// A read-only window `[offset, offset + len)` of another storage.
#[derive(Debug)]
pub struct SliceStorage {
    inner: Arc<dyn Storage>,
    offset: u64,
    len: u64,
}

impl SliceStorage {
    /// A window of `len` bytes at `offset` of `inner`.
    pub fn new(inner: Arc<dyn Storage>, offset: u64, len: u64) -> Self {
        SliceStorage { inner, offset, len }
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "a member of an OVA package is read-only",
    )
}

impl Storage for SliceStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len - offset) as usize;
        // offset < len and self.offset + len was checked against the inner length at creation.
        let mut done = 0;
        while done < n {
            let r = self
                .inner
                .read_at(&mut buf[done..n], self.offset + offset + done as u64)?;
            if r == 0 {
                break;
            }
            done += r;
        }
        Ok(done)
    }

    fn write_all_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only())
    }
}

/// `Read + Seek` over a storage, for the tar crate.
struct Cursor<'a> {
    storage: &'a dyn Storage,
    pos: u64,
}

impl Read for Cursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.storage.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.storage.len()?.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad seek"))?;
        Ok(self.pos)
    }
}

/// One regular-file member of the tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaMember {
    /// Its name in the archive.
    pub name: String,
    /// Offset of its data in the archive.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// The regular-file members of the tar in `storage`, in archive order.
pub fn list_members(storage: &dyn Storage) -> Result<Vec<OvaMember>> {
    let total = storage
        .len()
        .map_err(|e| Error::io("getting the OVA's length", e))?;
    let tar_err =
        |e: io::Error| Error::InvalidFormat(format!("the OVA is not a readable tar archive: {e}"));
    let mut archive = tar::Archive::new(Cursor { storage, pos: 0 });
    let mut out = Vec::new();
    for entry in archive.entries_with_seek().map_err(tar_err)? {
        let entry = entry.map_err(tar_err)?;
        if out.len() >= MAX_MEMBERS {
            return Err(Error::InvalidFormat(format!(
                "the OVA has more than {MAX_MEMBERS} members"
            )));
        }
        let h = entry.header();
        if !h.entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let size = entry.size();
        let offset = entry.raw_file_position();
        if offset.checked_add(size).is_none_or(|e| e > total) {
            return Err(Error::Corrupt(format!(
                "OVA member '{name}' ({size} bytes at {offset:#x}) runs past the end of the file ({total:#x} bytes): the package is truncated"
            )));
        }
        out.push(OvaMember { name, offset, size });
    }
    Ok(out)
}

fn package_error(msg: impl Into<String>) -> Error {
    OvaError::Package(msg.into()).into()
}

fn member_list(members: &[OvaMember]) -> String {
    members
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn ends_with_ci(name: &str, ext: &str) -> bool {
    name.len() >= ext.len()
        && name.is_char_boundary(name.len() - ext.len())
        && name[name.len() - ext.len()..].eq_ignore_ascii_case(ext)
}

/// The manifest and its state.
#[derive(Debug)]
struct Manifest {
    member: OvaMember,
    parsed: std::result::Result<OvaManifest, String>,
}

/// An OVA package: its members, OVF descriptor and manifest. See the module documentation.
#[derive(Debug)]
pub struct OvaPackage {
    storage: Arc<dyn Storage>,
    members: Vec<OvaMember>,
    /// Member index by name without a leading `./` (the first of duplicates).
    by_name: HashMap<String, usize>,
    /// Member index by file name (without folders); `None` when several share it.
    by_base: HashMap<String, Option<usize>>,
    ovf_member: OvaMember,
    ovf: OvfEnvelope,
    manifest: Option<Manifest>,
    cert: Option<String>,
    verify: bool,
    verified: Vec<String>,
    warnings: Vec<String>,
}

impl OvaPackage {
    /// Lists the members of the OVA in `storage`, reads its manifest and OVF, and, when
    /// `verify_manifest`, checks the manifest against the archive and the OVF's digest before
    /// parsing it. Disks are checked by [`verify_disks`](Self::verify_disks).
    pub fn open(storage: Arc<dyn Storage>, verify_manifest: bool) -> Result<Self> {
        let members = list_members(storage.as_ref())?;
        let ovfs: Vec<&OvaMember> = members
            .iter()
            .filter(|m| ends_with_ci(&m.name, ".ovf"))
            .collect();
        let Some(&ovf_member) = ovfs.first() else {
            return Err(package_error(format!(
                "the OVA holds no .ovf descriptor (members: {})",
                member_list(&members)
            )));
        };
        let ovf_member = ovf_member.clone();
        let mut warnings = Vec::new();
        if ovfs.len() > 1 {
            warnings.push(format!(
                "the OVA holds {} .ovf descriptors; reading the first, '{}'",
                ovfs.len(),
                ovf_member.name
            ));
        }
        let mfs: Vec<&OvaMember> = members
            .iter()
            .filter(|m| ends_with_ci(&m.name, ".mf"))
            .collect();
        if mfs.len() > 1 {
            return Err(package_error(format!(
                "the OVA holds {} manifests ({}); a package has one",
                mfs.len(),
                mfs.iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let manifest = match mfs.first() {
            None => None,
            Some(m) => {
                let parsed = if m.size > MAX_MANIFEST_BYTES {
                    Err(OvaError::ManifestSyntax {
                        manifest: m.name.clone(),
                        line: 1,
                        detail: format!(
                            "{} bytes, more than the {MAX_MANIFEST_BYTES} accepted",
                            m.size
                        ),
                    }
                    .into())
                } else {
                    let bytes = read_member(storage.as_ref(), m, "manifest")?;
                    OvaManifest::parse(&bytes, &m.name)
                };
                let parsed = match parsed {
                    Ok(p) => Ok(p),
                    Err(e) if verify_manifest => return Err(e),
                    Err(e) => Err(e.to_string()),
                };
                Some(Manifest {
                    member: (*m).clone(),
                    parsed,
                })
            }
        };
        let cert = members
            .iter()
            .find(|m| ends_with_ci(&m.name, ".cert"))
            .map(|m| m.name.clone());
        if let Some(c) = &cert {
            warnings.push(format!(
                "the package is signed ({c}); diskconv does not check signatures, only the \
                 manifest's digests"
            ));
        }
        let mut by_name = HashMap::new();
        let mut by_base: HashMap<String, Option<usize>> = HashMap::new();
        for (i, m) in members.iter().enumerate() {
            by_name.entry(plain_name(&m.name).to_string()).or_insert(i);
            let base = m.name.rsplit('/').next().unwrap_or(&m.name).to_string();
            by_base
                .entry(base)
                .and_modify(|v| *v = None)
                .or_insert(Some(i));
        }
        let mut pkg = OvaPackage {
            storage,
            members,
            by_name,
            by_base,
            ovf_member: ovf_member.clone(),
            ovf: OvfEnvelope::default(),
            manifest,
            cert,
            verify: verify_manifest,
            verified: Vec::new(),
            warnings,
        };
        if verify_manifest {
            if let Some((name, line)) = pkg.missing_members().into_iter().next() {
                let manifest = pkg
                    .manifest
                    .as_ref()
                    .map(|m| m.member.name.clone())
                    .unwrap_or_default();
                return Err(OvaError::ManifestMissingMember {
                    manifest,
                    line,
                    name,
                }
                .into());
            }
            pkg.verify_members(std::slice::from_ref(&ovf_member), "the OVF descriptor")?;
        }
        if ovf_member.size > MAX_OVF_BYTES {
            return Err(OvaError::Ovf {
                file: ovf_member.name.clone(),
                detail: format!(
                    "{} bytes, more than the {MAX_OVF_BYTES} accepted",
                    ovf_member.size
                ),
            }
            .into());
        }
        let bytes = read_member(pkg.storage.as_ref(), &ovf_member, "OVF descriptor")?;
        pkg.ovf = parse_ovf(&bytes, &ovf_member.name)?;
        for f in &pkg.ovf.files {
            if f.compression.is_some() || f.chunk_size.is_some() {
                continue;
            }
            if let (Some(want), Some(m)) = (f.size, pkg.find_member(&f.href)) {
                if want != m.size {
                    pkg.warnings.push(format!(
                        "the OVF gives file '{}' a size of {want} bytes but its member holds {} \
                         bytes",
                        f.href, m.size
                    ));
                }
            }
        }
        if pkg.ovf.systems.len() > 1 {
            pkg.warnings.push(format!(
                "the OVF describes {} virtual systems; the description is the first one's",
                pkg.ovf.systems.len()
            ));
        }
        Ok(pkg)
    }

    /// The parsed OVF descriptor.
    pub fn ovf(&self) -> &OvfEnvelope {
        &self.ovf
    }

    /// The members, in archive order.
    pub fn members(&self) -> &[OvaMember] {
        &self.members
    }

    /// The number of disks the OVF lists.
    pub fn disk_count(&self) -> usize {
        self.ovf.disks.len()
    }

    /// Members whose digests were checked so far.
    pub fn verified(&self) -> &[String] {
        &self.verified
    }

    /// Warnings gathered so far.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The member named `name` (as an OVF href or manifest line writes it): the same name
    /// without a leading `./`, else the only member with that file name in a folder.
    pub fn find_member(&self, name: &str) -> Option<&OvaMember> {
        let want = plain_name(name);
        let i = match self.by_name.get(want) {
            Some(&i) => i,
            None => (*self.by_base.get(want)?)?,
        };
        self.members.get(i)
    }

    /// Manifest lines naming files the archive does not hold: (name, line).
    fn missing_members(&self) -> Vec<(String, usize)> {
        let Some(Manifest { parsed: Ok(mf), .. }) = &self.manifest else {
            return Vec::new();
        };
        let mut seen = HashSet::new();
        let mut out: Vec<(String, usize)> = Vec::new();
        for e in &mf.entries {
            if self.find_member(&e.name).is_none() && seen.insert(e.name.as_str()) {
                out.push((e.name.clone(), e.line));
            }
        }
        out
    }

    /// Members the manifest does not list (other than itself and the signature).
    fn unlisted_members(&self) -> Vec<String> {
        let Some(Manifest {
            parsed: Ok(mf),
            member,
        }) = &self.manifest
        else {
            return Vec::new();
        };
        let listed: HashSet<&str> = mf
            .entries
            .iter()
            .filter_map(|e| self.find_member(&e.name))
            .map(|m| m.name.as_str())
            .collect();
        self.members
            .iter()
            .filter(|m| m.name != member.name && Some(&m.name) != self.cert.as_ref())
            .filter(|m| !listed.contains(m.name.as_str()))
            .map(|m| m.name.clone())
            .collect()
    }

    fn entries_of(&self, member: &OvaMember) -> Vec<ManifestEntry> {
        let Some(Manifest { parsed: Ok(mf), .. }) = &self.manifest else {
            return Vec::new();
        };
        mf.entries
            .iter()
            .filter(|e| self.find_member(&e.name).map(|m| &m.name) == Some(&member.name))
            .cloned()
            .collect()
    }

    /// Hashes `members` (at the same time, one thread each, up to the thread pool's size) and
    /// compares them with the manifest. A member the manifest does not list gets a warning.
    fn verify_members(&mut self, members: &[OvaMember], what: &str) -> Result<()> {
        let Some(manifest) = &self.manifest else {
            return Ok(());
        };
        let manifest_name = manifest.member.name.clone();
        let mut jobs: Vec<(OvaMember, Vec<ManifestEntry>)> = Vec::new();
        for m in members {
            if self.verified.contains(&m.name) || jobs.iter().any(|(j, _)| j.name == m.name) {
                continue;
            }
            let entries = self.entries_of(m);
            if entries.is_empty() {
                self.warnings.push(format!(
                    "the manifest {manifest_name} does not list {what} '{}': its integrity is \
                     not verified",
                    m.name
                ));
                continue;
            }
            jobs.push((m.clone(), entries));
        }
        let storage = self.storage.as_ref();
        let results: Vec<Result<Vec<Vec<u8>>>> = jobs
            .par_iter()
            .map(|(m, entries)| {
                let algs: Vec<DigestAlgorithm> = entries.iter().map(|e| e.algorithm).collect();
                digest_range(storage, m.offset, m.size, &algs)
                    .map_err(|e| e.in_file(format!("(OVA member) {}", m.name)))
            })
            .collect();
        for ((m, entries), r) in jobs.iter().zip(results) {
            let digests = r?;
            for (e, d) in entries.iter().zip(&digests) {
                if *d != e.digest {
                    return Err(OvaError::ManifestMismatch {
                        member: m.name.clone(),
                        manifest: manifest_name.clone(),
                        line: e.line,
                        algorithm: e.algorithm,
                        expected: hex(&e.digest),
                        found: hex(d),
                    }
                    .into());
                }
            }
            self.verified.push(m.name.clone());
        }
        Ok(())
    }

    /// The member holding disk `index` (1-based).
    pub fn disk_member(&self, index: usize) -> Result<&OvaMember> {
        let count = self.disk_count();
        if index == 0 || index > count {
            return Err(OvaError::NoSuchDisk {
                requested: index,
                count,
            }
            .into());
        }
        let disk = &self.ovf.disks[index - 1];
        let Some(file_ref) = &disk.file_ref else {
            return Err(package_error(format!(
                "disk {index} ('{}') has no file in the package: it is a blank disk of {} that \
                 the importing hypervisor creates",
                disk.disk_id, disk.capacity_text
            )));
        };
        let file = self.ovf.file_of(disk).ok_or_else(|| {
            package_error(format!(
                "disk {index} ('{}') is stored in file '{file_ref}', which the OVF's References \
                 do not list",
                disk.disk_id
            ))
        })?;
        if let Some(c) = &file.compression {
            return Err(Error::Unsupported(format!(
                "the OVA's disk '{}' is stored with compression '{c}'; only plain disk members \
                 are read",
                file.href
            )));
        }
        if file.chunk_size.is_some() {
            return Err(Error::Unsupported(format!(
                "the OVA's disk '{}' is split into chunks (ovf:chunkSize); only whole disk \
                 members are read",
                file.href
            )));
        }
        self.find_member(&file.href).ok_or_else(|| {
            package_error(format!(
                "the OVF names disk file '{}' but the OVA has no such member (members: {})",
                file.href,
                member_list(&self.members)
            ))
        })
    }

    /// Checks the manifest's digests of disks `indices` (1-based), all at the same time, when
    /// the package was opened with verification on.
    pub fn verify_disks(&mut self, indices: &[usize]) -> Result<()> {
        if !self.verify {
            return Ok(());
        }
        let mut members = Vec::new();
        for &i in indices {
            members.push(self.disk_member(i)?.clone());
        }
        self.verify_members(&members, "the disk member")
    }

    /// Opens disk `index` (1-based) in place, as the format its content shows (VMDK unless
    /// it is qcow2, VHD or VHDX). Files it names are refused: it has no folder.
    pub fn open_disk(&self, index: usize, ctx: &OpenContext<'_>) -> Result<Box<dyn ImageReader>> {
        let m = self.disk_member(index)?.clone();
        let slice: Arc<dyn Storage> =
            Arc::new(SliceStorage::new(self.storage.clone(), m.offset, m.size));
        let format = match ctx.detect(slice.as_ref()) {
            Ok(f @ (Format::Qcow2 | Format::Vhd | Format::Vhdx | Format::Vmdk)) => f,
            _ => Format::Vmdk,
        };
        ctx.open_member(slice, format)
            .map_err(|e| e.in_file(format!("(OVA member) {}", m.name)))
    }

    /// The capacity error for disk `index` whose virtual size is `actual`, if they differ.
    fn capacity_mismatch(&self, index: usize, actual: u64) -> Option<OvaError> {
        let d = self.ovf.disks.get(index.checked_sub(1)?)?;
        let declared = d.capacity?;
        (declared != actual).then(|| OvaError::CapacityMismatch {
            index,
            member: self
                .disk_member(index)
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            declared,
            declared_text: d.capacity_text.clone(),
            actual,
        })
    }

    /// The description `diskconv info` shows.
    pub fn describe(&self) -> PackageInfo {
        let sys = self.ovf.systems.first().cloned().unwrap_or_default();
        let disks = self
            .ovf
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let member = self.disk_member(i + 1).ok();
                PackageDisk {
                    index: i + 1,
                    id: d.disk_id.clone(),
                    file: member
                        .map(|m| m.name.clone())
                        .or_else(|| self.ovf.file_of(d).map(|f| f.href.clone())),
                    file_size: member.map(|m| m.size),
                    capacity: d.capacity,
                    capacity_text: d.capacity_text.clone(),
                    format: d.format.clone(),
                    virtual_size: None,
                    image_format: None,
                    controller: sys
                        .disks
                        .iter()
                        .find(|a| a.disk_id == d.disk_id)
                        .and_then(|a| a.controller.clone()),
                }
            })
            .collect();
        let manifest = self.manifest.as_ref().map(|m| match &m.parsed {
            Ok(mf) => ManifestInfo {
                file: m.member.name.clone(),
                algorithms: mf.algorithms().iter().map(|a| a.name().into()).collect(),
                entries: mf.entries.len(),
                verified: self.verified.clone(),
                not_listed: self.unlisted_members(),
                missing: self.missing_members().into_iter().map(|(n, _)| n).collect(),
                error: None,
            },
            Err(e) => ManifestInfo {
                file: m.member.name.clone(),
                error: Some(e.clone()),
                ..ManifestInfo::default()
            },
        });
        PackageInfo {
            descriptor: self.ovf_member.name.clone(),
            descriptor_version: self.ovf.version.clone(),
            name: sys.name,
            cpus: sys.cpus,
            memory_bytes: sys.memory_bytes,
            os_id: sys.os_id,
            os_type: sys.os_type,
            os_description: sys.os_description,
            firmware: sys.firmware,
            hardware_family: sys.hardware_family,
            disks,
            nics: sys
                .nics
                .into_iter()
                .map(|n| PackageNic {
                    network: n.network,
                    adapter: n.adapter,
                    name: n.name,
                })
                .collect(),
            selected_disk: None,
            manifest,
            certificate: self.cert.clone(),
        }
    }

    /// Warnings about the manifest's state that apply whatever is read: a malformed manifest
    /// or files it lists that are absent, when not verifying (verifying makes them errors).
    fn manifest_warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.verify {
            return w;
        }
        if let Some(Manifest {
            parsed: Err(e),
            member,
        }) = &self.manifest
        {
            w.push(format!("the manifest {} is unusable: {e}", member.name));
        }
        for (name, line) in self.missing_members() {
            w.push(format!(
                "the manifest (line {line}) lists '{name}', which the OVA does not contain"
            ));
        }
        w
    }
}

fn read_member(storage: &dyn Storage, m: &OvaMember, what: &str) -> Result<Vec<u8>> {
    let mut b = vec![0u8; m.size as usize];
    storage
        .read_exact_at(&mut b, m.offset)
        .map_err(|e| Error::io(format!("reading the {what} '{}'", m.name), e))?;
    Ok(b)
}

/// One disk of an OVA package, with the package's description.
pub struct OvaReader {
    disk: Box<dyn ImageReader>,
    index: usize,
    package: PackageInfo,
    warnings: Vec<String>,
    file_size: Option<u64>,
}

impl std::fmt::Debug for OvaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OvaReader")
            .field("index", &self.index)
            .field("package", &self.package.name)
            .finish_non_exhaustive()
    }
}

impl OvaReader {
    /// The disk's 1-based number in the OVF's order.
    pub fn disk_index(&self) -> usize {
        self.index
    }

    /// The package's description.
    pub fn package(&self) -> &PackageInfo {
        &self.package
    }

    /// What a person should know about this disk or its package.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

fn image_format(i: &ImageInfo) -> String {
    match &i.subformat {
        Some(s) => format!("{} {s}", i.format),
        None => i.format.to_string(),
    }
}

/// Builds the reader of disk `index` of `pkg`: checks its capacity, describes the package.
fn make_reader(
    pkg: &OvaPackage,
    index: usize,
    disk: Box<dyn ImageReader>,
    po: &PackageOptions,
    ctx: &OpenContext<'_>,
    extra_warnings: &[String],
) -> Result<OvaReader> {
    let mut warnings: Vec<String> = pkg.warnings.clone();
    warnings.extend(pkg.manifest_warnings());
    warnings.extend(extra_warnings.iter().cloned());
    if let Some(e) = pkg.capacity_mismatch(index, disk.virtual_size()) {
        if !po.allow_capacity_mismatch {
            return Err(e.into());
        }
        warnings.push(e.as_warning());
    }
    let mut package = pkg.describe();
    package.selected_disk = Some(index);
    let inner = disk.info();
    if let Some(d) = package.disks.get_mut(index - 1) {
        d.virtual_size = Some(disk.virtual_size());
        d.image_format = Some(image_format(&inner));
    }
    if po.describe_all_disks {
        for i in 1..=pkg.disk_count() {
            if i == index {
                continue;
            }
            match pkg.open_disk(i, ctx) {
                Ok(other) => {
                    if let Some(e) = pkg.capacity_mismatch(i, other.virtual_size()) {
                        warnings.push(e.as_warning());
                    }
                    if let Some(d) = package.disks.get_mut(i - 1) {
                        d.virtual_size = Some(other.virtual_size());
                        d.image_format = Some(image_format(&other.info()));
                    }
                }
                Err(e) => warnings.push(format!("disk {i} cannot be read: {}", e.chain())),
            }
        }
    }
    Ok(OvaReader {
        disk,
        index,
        package,
        warnings,
        file_size: pkg.storage.len().ok(),
    })
}

impl ImageReader for OvaReader {
    fn format(&self) -> Format {
        Format::Ova
    }

    fn virtual_size(&self) -> u64 {
        self.disk.virtual_size()
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        self.disk.map(offset, max_len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.disk.read_at(buf, offset)
    }

    fn dirty_ranges(&self, name: &str) -> Result<Vec<std::ops::Range<u64>>> {
        self.disk.dirty_ranges(name)
    }

    fn info(&self) -> ImageInfo {
        let mut i = self.disk.info();
        i.subformat = Some(image_format(&i));
        i.format = Format::Ova;
        i.file_size = self.file_size;
        i.allocated_bytes = None;
        i.package = Some(Box::new(self.package.clone()));
        i.warnings.extend(self.warnings.iter().cloned());
        i
    }
}

/// Opens one disk of the OVA package in `storage`: `ctx`'s `package.disk`, else the first
/// (with a warning when there are more). See the module documentation for the checks.
pub fn open_ova(
    storage: Arc<dyn Storage>,
    _path: Option<&Path>,
    ctx: &OpenContext<'_>,
) -> Result<OvaReader> {
    let po = ctx.options().package.clone();
    let mut pkg = OvaPackage::open(storage, po.verify_manifest)?;
    let count = pkg.disk_count();
    if count == 0 {
        return Err(package_error(format!(
            "the OVF descriptor '{}' lists no disk (its DiskSection is empty or absent)",
            pkg.ovf_member.name
        )));
    }
    let index = po.disk.unwrap_or(1);
    let member = pkg.disk_member(index)?.name.clone();
    let mut extra = Vec::new();
    if po.disk.is_none() && count > 1 {
        extra.push(format!(
            "the OVA holds {count} disks; reading disk 1 ('{member}') only: choose another with \
             --disk N, or convert every disk with --all-disks"
        ));
    }
    pkg.verify_disks(&[index])?;
    let disk = pkg.open_disk(index, ctx)?;
    make_reader(&pkg, index, disk, &po, ctx, &extra)
}

/// Opens every disk of the OVA package in `storage`, in the OVF's order, after checking the
/// manifest's digests of all of them (at the same time). `ctx`'s `package.disk` is ignored.
pub fn open_ova_disks(
    storage: Arc<dyn Storage>,
    _path: Option<&Path>,
    ctx: &OpenContext<'_>,
) -> Result<Vec<OvaReader>> {
    let mut po = ctx.options().package.clone();
    po.disk = None;
    po.describe_all_disks = false;
    let mut pkg = OvaPackage::open(storage, po.verify_manifest)?;
    let count = pkg.disk_count();
    if count == 0 {
        return Err(package_error(format!(
            "the OVF descriptor '{}' lists no disk (its DiskSection is empty or absent)",
            pkg.ovf_member.name
        )));
    }
    let all: Vec<usize> = (1..=count).collect();
    pkg.verify_disks(&all)?;
    let mut disks = Vec::with_capacity(count);
    for i in all {
        let d = pkg.open_disk(i, ctx)?;
        disks.push(make_reader(&pkg, i, d, &po, ctx, &[])?);
    }
    // Every reader describes every disk's real size.
    let sizes: Vec<(Option<u64>, Option<String>)> = disks
        .iter()
        .map(|d| {
            let x = &d.package.disks[d.index - 1];
            (x.virtual_size, x.image_format.clone())
        })
        .collect();
    for d in &mut disks {
        for (pd, (v, f)) in d.package.disks.iter_mut().zip(&sizes) {
            pd.virtual_size = *v;
            pd.image_format = f.clone();
        }
    }
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    /// A tar of `members` (name, bytes), in order.
    fn tar_of(members: &[(&str, Vec<u8>)]) -> Arc<dyn Storage> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        Arc::new(MemStorage::from_vec(b.into_inner().unwrap()))
    }

    fn ovf(disks: &[(&str, &str)]) -> Vec<u8> {
        let files: String = disks
            .iter()
            .enumerate()
            .map(|(i, (href, _))| format!("<File ovf:href=\"{href}\" ovf:id=\"f{i}\"/>"))
            .collect();
        let ds: String = disks
            .iter()
            .enumerate()
            .map(|(i, (_, cap))| {
                format!("<Disk ovf:capacity=\"{cap}\" ovf:diskId=\"d{i}\" ovf:fileRef=\"f{i}\"/>")
            })
            .collect();
        format!(
            "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" \
             xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\"><References>{files}</References>\
             <DiskSection>{ds}</DiskSection><VirtualSystem ovf:id=\"vm1\"/></Envelope>"
        )
        .into_bytes()
    }

    fn sha256(b: &[u8]) -> String {
        use sha2::Digest;
        hex(&sha2::Sha256::digest(b))
    }

    #[test]
    fn verifies_the_ovf_and_the_chosen_disks() {
        let o = ovf(&[("a.vmdk", "3"), ("b.vmdk", "4")]);
        let mf = format!(
            "SHA256(p.ovf)= {}\nSHA256(a.vmdk)= {}\nSHA256(b.vmdk)= {}\n",
            sha256(&o),
            sha256(b"aaa"),
            sha256(b"bbbb")
        );
        let members = |b: &[u8]| {
            vec![
                ("p.ovf", o.clone()),
                ("p.mf", mf.clone().into_bytes()),
                ("a.vmdk", b"aaa".to_vec()),
                ("b.vmdk", b.to_vec()),
            ]
        };
        let mut p = OvaPackage::open(tar_of(&members(b"bbbb")), true).unwrap();
        assert_eq!(p.verified(), ["p.ovf"]);
        assert_eq!(p.disk_count(), 2);
        p.verify_disks(&[1, 2]).unwrap();
        assert_eq!(p.verified(), ["p.ovf", "a.vmdk", "b.vmdk"]);
        assert!(p.warnings().is_empty(), "{:?}", p.warnings());
        let d = p.describe();
        let m = d.manifest.unwrap();
        assert_eq!((m.entries, m.algorithms), (3, vec!["SHA256".to_string()]));
        assert!(m.not_listed.is_empty() && m.missing.is_empty());
        assert_eq!(d.disks[1].file.as_deref(), Some("b.vmdk"));
        assert_eq!(d.disks[1].capacity, Some(4));

        // One flipped byte in disk 2: disk 1 still verifies, disk 2 names itself and both
        // digests.
        let mut p = OvaPackage::open(tar_of(&members(b"bbbc")), true).unwrap();
        p.verify_disks(&[1]).unwrap();
        let e = p.verify_disks(&[2]).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        let s = e.to_string();
        assert!(s.contains("'b.vmdk'") && s.contains("p.mf (line 3)"), "{s}");
        assert!(
            s.contains(&sha256(b"bbbb")) && s.contains(&sha256(b"bbbc")),
            "{s}"
        );
        // Not verifying: nothing is hashed.
        let mut p = OvaPackage::open(tar_of(&members(b"bbbc")), false).unwrap();
        p.verify_disks(&[1, 2]).unwrap();
        assert!(p.verified().is_empty());
        assert_eq!(
            p.describe().manifest.unwrap().verified,
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_tampered_ovf_is_refused_before_it_is_parsed() {
        let o = ovf(&[("a.vmdk", "3")]);
        let mf = format!(
            "SHA1(p.ovf)= {}\n",
            hex(&<sha1::Sha1 as sha2::Digest>::digest(&o))
        );
        let mut bad = o.clone();
        bad[10] ^= 1;
        let s = tar_of(&[
            ("p.ovf", bad),
            ("p.mf", mf.into_bytes()),
            ("a.vmdk", b"aaa".to_vec()),
        ]);
        let e = OvaPackage::open(s.clone(), true).unwrap_err();
        assert!(
            e.to_string().contains("'p.ovf'") && e.to_string().contains("SHA1"),
            "{e}"
        );
        let p = OvaPackage::open(s, false).unwrap();
        assert_eq!(p.disk_count(), 1);
    }

    #[test]
    fn manifest_problems_are_named() {
        let o = ovf(&[("a.vmdk", "3")]);
        let ovf_line = format!("SHA256(p.ovf)= {}\n", sha256(&o));
        // Lists a file the archive lacks: an error when verifying, a warning otherwise.
        let mf = format!("{ovf_line}SHA256(gone.vmdk)= {}\n", sha256(b"x"));
        let s = tar_of(&[
            ("p.ovf", o.clone()),
            ("p.mf", mf.into_bytes()),
            ("a.vmdk", b"aaa".to_vec()),
        ]);
        let e = OvaPackage::open(s.clone(), true).unwrap_err();
        assert!(
            e.to_string().contains("lists 'gone.vmdk'") && e.to_string().contains("line 2"),
            "{e}"
        );
        let p = OvaPackage::open(s, false).unwrap();
        assert_eq!(p.describe().manifest.unwrap().missing, ["gone.vmdk"]);
        assert!(p.manifest_warnings()[0].contains("gone.vmdk"));
        // Does not list the disk: a warning, and the member is reported as not listed.
        let mut p = OvaPackage::open(
            tar_of(&[
                ("p.ovf", o.clone()),
                ("p.mf", ovf_line.clone().into_bytes()),
                ("a.vmdk", b"aaa".to_vec()),
                ("p.cert", b"SHA256(p.mf)= 00\n".to_vec()),
            ]),
            true,
        )
        .unwrap();
        p.verify_disks(&[1]).unwrap();
        let w = p.warnings().join("\n");
        assert!(w.contains("does not list the disk member 'a.vmdk'"), "{w}");
        assert!(w.contains("signed (p.cert)"), "{w}");
        let d = p.describe();
        assert_eq!(d.manifest.unwrap().not_listed, ["a.vmdk"]);
        assert_eq!(d.certificate.as_deref(), Some("p.cert"));
        // A malformed line: an error naming it when verifying, shown when not.
        let s = tar_of(&[
            ("p.ovf", o.clone()),
            ("p.mf", b"SHA256 p.ovf 00\n".to_vec()),
        ]);
        let e = OvaPackage::open(s.clone(), true).unwrap_err();
        assert!(e.to_string().contains("p.mf line 1"), "{e}");
        let p = OvaPackage::open(s, false).unwrap();
        assert!(
            p.describe()
                .manifest
                .unwrap()
                .error
                .unwrap()
                .contains("line 1")
        );
        // Two manifests, no OVF.
        let s = tar_of(&[("p.ovf", o.clone()), ("a.mf", vec![]), ("b.mf", vec![])]);
        assert!(
            OvaPackage::open(s, false)
                .unwrap_err()
                .to_string()
                .contains("2 manifests")
        );
        let s = tar_of(&[("a.vmdk", b"aaa".to_vec())]);
        let e = OvaPackage::open(s, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("no .ovf descriptor (members: a.vmdk)"),
            "{e}"
        );
    }

    #[test]
    fn disk_numbers_and_members() {
        let o = ovf(&[("a.vmdk", "3"), ("./dir/b.vmdk", "4"), ("c.vmdk", "5")]);
        let p = OvaPackage::open(
            tar_of(&[("p.ovf", o), ("a.vmdk", vec![1]), ("dir/b.vmdk", vec![2])]),
            true,
        )
        .unwrap();
        assert_eq!(p.disk_member(2).unwrap().name, "dir/b.vmdk");
        let e = p.disk_member(3).unwrap_err();
        assert!(
            e.to_string()
                .contains("'c.vmdk' but the OVA has no such member"),
            "{e}"
        );
        for n in [0, 4] {
            let e = p.disk_member(n).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
            assert!(e.to_string().contains("has 3 disk(s)"), "{e}");
        }
        assert_eq!(p.capacity_mismatch(1, 3).map(|e| e.to_string()), None);
        let e = p.capacity_mismatch(2, 1 << 20).unwrap().to_string();
        assert!(
            e.contains("declares a capacity of 4 bytes") && e.contains("1048576"),
            "{e}"
        );
        // The library says what is wrong; the hint is what the CLI turns into its flag.
        let err: crate::Error = p.capacity_mismatch(2, 1 << 20).unwrap().into();
        assert!(!err.to_string().contains("--"), "{err}");
        assert_eq!(err.hint(), Some(crate::Hint::AllowCapacityMismatch));
        assert_eq!(err.kind(), crate::ErrorKind::Corrupt);
    }

    #[test]
    fn slice_storage_is_a_bounded_read_only_window() {
        let inner: Arc<dyn Storage> = Arc::new(MemStorage::from_vec((0..100u8).collect()));
        let s = SliceStorage::new(inner, 10, 20);
        let mut b = [0u8; 30];
        assert_eq!(s.read_at(&mut b, 15).unwrap(), 5);
        assert_eq!(&b[..5], &[25, 26, 27, 28, 29]);
        assert_eq!(s.read_at(&mut b, 20).unwrap(), 0);
        assert!(s.write_all_at(&[1], 0).is_err());
    }

    #[test]
    fn garbage_is_not_a_tar() {
        let s = MemStorage::from_vec(vec![0x41; 1024]);
        assert!(list_members(&s).is_err());
    }
}
