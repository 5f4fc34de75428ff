//! The `.mf` manifest of an OVA package, and the streaming digests that check it.
//!
//! A manifest has one line per file of the package (DMTF DSP0243 "OVF" 1.x and 2.x, section
//! 5.1): `ALG(name)= hex`, where ALG is `SHA1` (OVF 1.x), `SHA256` or `SHA512` (OVF 2.x).
//! VMware's ovftool writes exactly that (`SHA256(vm.ovf)= 3b1f...`); VirtualBox writes the
//! BSD-checksum spelling with spaces (`SHA256 (vm.ovf) = 3b1f...`). Both are accepted, with any
//! blanks around the parts, CRLF line ends, blank lines, and upper- or lower-case hex.
//! A file may be listed under several algorithms (all are checked) but not twice with the same
//! one.
//!
//! The digest of a member is computed while reading it once, in 4 MiB blocks, with the reading
//! of the next block overlapping the hashing of the current one (a reader thread and a hashing
//! thread). SHA-1 and SHA-2 are sequential by construction, so one member cannot be split
//! across cores; several members are hashed at the same time (see
//! [`super::reader::OvaPackage::verify`]).

use std::io;
use std::sync::mpsc;

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use super::OvaError;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Largest manifest read, in bytes (a line per file; real ones are a few hundred bytes).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest number of lines in a manifest.
const MAX_LINES: usize = 10_000;
/// Bytes read at once while hashing a member.
const HASH_BLOCK: usize = 4 << 20;
/// Blocks in flight between the reading and the hashing thread.
const HASH_BUFFERS: usize = 3;

/// A digest algorithm of a manifest line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum DigestAlgorithm {
    /// SHA-1 (OVF 1.x; ovftool's and VirtualBox's default for OVF 1.0 exports).
    Sha1,
    /// SHA-256 (OVF 2.x; ovftool's default today).
    Sha256,
    /// SHA-512 (OVF 2.x).
    Sha512,
}

impl DigestAlgorithm {
    /// The name as written in a manifest line.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha1 => "SHA1",
            DigestAlgorithm::Sha256 => "SHA256",
            DigestAlgorithm::Sha512 => "SHA512",
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha1 => 20,
            DigestAlgorithm::Sha256 => 32,
            DigestAlgorithm::Sha512 => 64,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().replace('-', "").as_str() {
            "SHA1" => Some(DigestAlgorithm::Sha1),
            "SHA256" => Some(DigestAlgorithm::Sha256),
            "SHA512" => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }
}

impl std::fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// The algorithm.
    pub algorithm: DigestAlgorithm,
    /// The file name, as written.
    pub name: String,
    /// The expected digest.
    pub digest: Vec<u8>,
    /// Line number (1-based) in the manifest.
    pub line: usize,
}

/// A parsed `.mf` manifest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OvaManifest {
    /// The lines, in file order.
    pub entries: Vec<ManifestEntry>,
}

fn syntax(manifest: &str, line: usize, detail: impl Into<String>) -> Error {
    OvaError::ManifestSyntax {
        manifest: manifest.to_string(),
        line,
        detail: detail.into(),
    }
    .into()
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl OvaManifest {
    /// Parses the manifest bytes; `manifest` is its member name, for messages.
    pub fn parse(bytes: &[u8], manifest: &str) -> Result<Self> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            syntax(manifest, line, "the line is not UTF-8 text")
        })?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut entries: Vec<ManifestEntry> = Vec::new();
        let mut seen: std::collections::HashMap<(String, DigestAlgorithm), usize> =
            std::collections::HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if line > MAX_LINES {
                return Err(syntax(
                    manifest,
                    line,
                    format!("more than {MAX_LINES} lines"),
                ));
            }
            let l = raw.trim();
            if l.is_empty() {
                continue;
            }
            let shown: String = l.chars().take(80).collect();
            let bad = |why: &str| syntax(manifest, line, format!("{why} in '{shown}'"));
            let open = l
                .find('(')
                .ok_or_else(|| bad("expected ALG(name)= digest, found no '('"))?;
            let alg_text = l[..open].trim();
            let algorithm = DigestAlgorithm::parse(alg_text).ok_or_else(|| {
                bad(&format!(
                    "unknown digest algorithm '{alg_text}' (expected SHA1, SHA256 or SHA512)"
                ))
            })?;
            // The digest and '=' cannot hold ')': the last one closes the name, which may
            // itself hold parentheses ("disk (1).vmdk").
            let close = l
                .rfind(')')
                .filter(|&c| c > open)
                .ok_or_else(|| bad("no ')' closing the file name"))?;
            let name = &l[open + 1..close];
            if name.is_empty() {
                return Err(bad("empty file name"));
            }
            let rest = l[close + 1..].trim_start();
            let hex = rest
                .strip_prefix('=')
                .ok_or_else(|| bad("expected '=' after the file name"))?
                .trim();
            let digest = parse_hex(hex).ok_or_else(|| bad("the digest is not hexadecimal"))?;
            if digest.len() != algorithm.digest_len() {
                return Err(bad(&format!(
                    "a {algorithm} digest has {} hex digits, this one {}",
                    algorithm.digest_len() * 2,
                    hex.len()
                )));
            }
            if let Some(prev) = seen.insert((name.to_string(), algorithm), line) {
                return Err(syntax(
                    manifest,
                    line,
                    format!("'{name}' is listed twice with {algorithm} (lines {prev} and {line})"),
                ));
            }
            entries.push(ManifestEntry {
                algorithm,
                name: name.to_string(),
                digest,
                line,
            });
        }
        if entries.is_empty() {
            return Err(syntax(manifest, 1, "the manifest lists no file"));
        }
        Ok(OvaManifest { entries })
    }

    /// The lines that name `member` (compared without a leading `./`).
    pub fn entries_for<'a>(&'a self, member: &'a str) -> impl Iterator<Item = &'a ManifestEntry> {
        let m = plain_name(member);
        self.entries
            .iter()
            .filter(move |e| plain_name(&e.name) == m)
    }

    /// The algorithms used, each once, in a stable order.
    pub fn algorithms(&self) -> Vec<DigestAlgorithm> {
        let mut a: Vec<_> = self.entries.iter().map(|e| e.algorithm).collect();
        a.sort();
        a.dedup();
        a
    }
}

/// A member name without a leading `./`.
pub fn plain_name(name: &str) -> &str {
    let mut n = name;
    while let Some(r) = n.strip_prefix("./") {
        n = r;
    }
    n
}

enum Hasher {
    Sha1(Sha1),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(a: DigestAlgorithm) -> Self {
        match a {
            DigestAlgorithm::Sha1 => Hasher::Sha1(Sha1::new()),
            DigestAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// The digests of `len` bytes at `offset` of `storage`, one per algorithm of `algorithms`, read
/// once in order. Reading the next block overlaps hashing the current one; memory is
/// `HASH_BUFFERS` blocks of 4 MiB.
pub fn digest_range(
    storage: &dyn Storage,
    offset: u64,
    len: u64,
    algorithms: &[DigestAlgorithm],
) -> Result<Vec<Vec<u8>>> {
    let mut hashers: Vec<Hasher> = algorithms.iter().map(|&a| Hasher::new(a)).collect();
    if len <= HASH_BLOCK as u64 {
        let mut buf = vec![0u8; len as usize];
        storage
            .read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io(format!("reading {len} bytes at offset {offset:#x}"), e))?;
        for h in &mut hashers {
            h.update(&buf);
        }
        return Ok(hashers.into_iter().map(Hasher::finish).collect());
    }
    let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(HASH_BUFFERS);
    let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(HASH_BUFFERS);
    for _ in 0..HASH_BUFFERS {
        // The channel has room for exactly HASH_BUFFERS buffers.
        let _ = free_tx.send(vec![0u8; HASH_BLOCK]);
    }
    let result = std::thread::scope(|s| {
        // Owned by this closure, so an early return closes both channels and the reading
        // thread stops instead of waiting for a buffer forever.
        let (full_rx, free_tx) = (full_rx, free_tx);
        s.spawn(move || {
            let mut pos = 0u64;
            while pos < len {
                let Ok(mut buf) = free_rx.recv() else { return };
                let n = (len - pos).min(HASH_BLOCK as u64) as usize;
                let r = storage
                    .read_exact_at(&mut buf[..n], offset + pos)
                    .map(|_| (buf, n));
                let failed = r.is_err();
                if full_tx.send(r).is_err() || failed {
                    return;
                }
                pos += n as u64;
            }
        });
        let mut pos = 0u64;
        while pos < len {
            let (buf, n) = match full_rx.recv() {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    return Err(Error::io(
                        format!(
                            "reading {} bytes at offset {:#x}",
                            (len - pos).min(HASH_BLOCK as u64),
                            offset + pos
                        ),
                        e,
                    ));
                }
                Err(_) => {
                    return Err(Error::Internal(
                        "internal error: the reading thread of the digest stopped".into(),
                    ));
                }
            };
            for h in &mut hashers {
                h.update(&buf[..n]);
            }
            pos += n as u64;
            // The reader may have finished; a closed channel is fine.
            let _ = free_tx.send(buf);
        }
        Ok(())
    });
    result?;
    Ok(hashers.into_iter().map(Hasher::finish).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::hex;
    use crate::storage::MemStorage;

    const ABC_SHA1: &str = "a9993e364706816aba3e25717850c26c9cd0d89d";
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn parses_ovftool_and_virtualbox_spellings() {
        let text = format!(
            "SHA1(vm.ovf)= {ABC_SHA1}\r\n\
             \r\n\
             SHA256 (vm-disk1.vmdk) = {}\n\
             sha256(disk (1).vmdk)={ABC_SHA256}\n",
            ABC_SHA256.to_uppercase()
        );
        let m = OvaManifest::parse(text.as_bytes(), "vm.mf").unwrap();
        assert_eq!(m.entries.len(), 3);
        assert_eq!(m.entries[0].algorithm, DigestAlgorithm::Sha1);
        assert_eq!(m.entries[0].name, "vm.ovf");
        assert_eq!(hex(&m.entries[0].digest), ABC_SHA1);
        assert_eq!(m.entries[1].name, "vm-disk1.vmdk");
        assert_eq!(m.entries[1].line, 3);
        assert_eq!(hex(&m.entries[1].digest), ABC_SHA256);
        assert_eq!(m.entries[2].name, "disk (1).vmdk");
        assert_eq!(m.entries_for("./vm.ovf").count(), 1);
        assert_eq!(
            m.algorithms(),
            [DigestAlgorithm::Sha1, DigestAlgorithm::Sha256]
        );
        let sha512 = format!("SHA512(a)= {}\n", "ab".repeat(64));
        assert_eq!(
            OvaManifest::parse(sha512.as_bytes(), "m").unwrap().entries[0].algorithm,
            DigestAlgorithm::Sha512
        );
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let cases: &[(&str, &str)] = &[
            ("SHA256(a)= 00\n", "64 hex digits"),
            ("MD5(a)= 00\n", "unknown digest algorithm 'MD5'"),
            ("SHA1 a = 00\n", "no '('"),
            ("SHA1(a = 00\n", "no ')'"),
            ("SHA1()= 00\n", "empty file name"),
            ("SHA1(a) 00\n", "expected '='"),
            ("SHA1(a)= xyz\n", "not hexadecimal"),
            ("", "lists no file"),
        ];
        for (text, want) in cases {
            let e = OvaManifest::parse(text.as_bytes(), "p.mf").unwrap_err();
            let s = e.to_string();
            assert!(s.contains(want) && s.contains("p.mf"), "{text:?}: {s}");
            assert_eq!(e.kind(), crate::ErrorKind::InvalidFormat);
        }
        let twice = format!("SHA1(a)= {ABC_SHA1}\nSHA1(a)= {ABC_SHA1}\n");
        let e = OvaManifest::parse(twice.as_bytes(), "p.mf").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(e.to_string().contains("lines 1 and 2"), "{e}");
        let e = OvaManifest::parse(b"SHA1(a)= 00\n\xff\n", "p.mf").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn digests_small_and_large_ranges() {
        let s = MemStorage::from_vec(b"xxabcyy".to_vec());
        let d = digest_range(&s, 2, 3, &[DigestAlgorithm::Sha1, DigestAlgorithm::Sha256]).unwrap();
        assert_eq!(hex(&d[0]), ABC_SHA1);
        assert_eq!(hex(&d[1]), ABC_SHA256);
        // More than one block, with an odd tail: the same as hashing in one go.
        let data: Vec<u8> = (0..(HASH_BLOCK * 2 + 12345))
            .map(|i| (i * 7) as u8)
            .collect();
        let s = MemStorage::from_vec(data.clone());
        let d = digest_range(&s, 5, data.len() as u64 - 5, &[DigestAlgorithm::Sha512]).unwrap();
        assert_eq!(d[0], Sha512::digest(&data[5..]).to_vec());
        // A range past the end is an error, not a hang.
        assert!(digest_range(&s, 5, data.len() as u64, &[DigestAlgorithm::Sha1]).is_err());
    }
}
