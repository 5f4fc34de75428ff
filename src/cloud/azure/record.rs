//! The local record of an upload in progress, for `--resume`.
//!
//! One file per destination, `azure-<xxh3 of the URL without its query>.jsonl` in the state
//! folder the caller gives (the CLI: `$DISKCONV_STATE_DIR`, else `$XDG_STATE_HOME/diskconv`,
//! else `~/.local/state/diskconv`). Its first line says what is being uploaded (the URL
//! without its query, the temporary blob's name, the blob's length, the segment size, the
//! source's size); each further line is one finished segment: its index, the xxh3-128 of its
//! bytes as the VHD has them (zeros included) and the bytes of pages sent for it. Lines are
//! appended and synced as segments finish; a line torn by a kill is ignored. No secret is
//! written: the SAS stays on the command line.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The first line of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHeader {
    /// Record layout version (1).
    pub version: u32,
    /// The destination, without its query.
    pub url: String,
    /// The temporary blob beside it.
    pub temp_blob: String,
    /// Length of the blob (the VHD file).
    pub blob_length: u64,
    /// Bytes per segment.
    pub segment_size: u64,
    /// Virtual size of the source.
    pub source_size: u64,
}

/// A finished segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentDone {
    /// Segment index.
    pub segment: u64,
    /// xxh3-128 of its bytes, hex.
    #[serde(with = "hex128")]
    pub xxh3: u128,
    /// Bytes of pages sent for it (its non-zero sectors).
    pub data_bytes: u64,
}

mod hex128 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:032x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        u128::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

/// The record file of the upload to `url_shown` (the URL without its query) in `dir`.
pub fn record_path(dir: &Path, url_shown: &str) -> PathBuf {
    let h = xxhash_rust::xxh3::xxh3_64(url_shown.as_bytes());
    dir.join(format!("azure-{h:016x}.jsonl"))
}

/// A record read back.
#[derive(Debug)]
pub struct Record {
    /// What is being uploaded.
    pub header: RecordHeader,
    /// Finished segments by index.
    pub done: BTreeMap<u64, SegmentDone>,
}

/// Reads the record at `path`; `None` when there is none. A record that does not parse is
/// an error naming the file.
pub fn read(path: &Path) -> Result<Option<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading the upload record", e).in_file(path)),
    };
    let mut lines = text.lines();
    let header: RecordHeader = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            Error::Corrupt("the upload record's first line is not a record header".into())
                .in_file(path)
        })?;
    if header.version != 1 {
        return Err(Error::Unsupported(format!(
            "upload record version {} (this build reads version 1)",
            header.version
        ))
        .in_file(path));
    }
    let mut done = BTreeMap::new();
    for l in lines {
        // A line torn by a kill does not parse: that segment counts as not finished.
        if let Ok(s) = serde_json::from_str::<SegmentDone>(l) {
            done.insert(s.segment, s);
        }
    }
    Ok(Some(Record { header, done }))
}

/// An open record, appended to as segments finish.
#[derive(Debug)]
pub struct RecordWriter {
    path: PathBuf,
    file: File,
}

impl RecordWriter {
    /// Starts a new record at `path` (replacing an old one) with `header`, synced; creates
    /// the folder.
    pub fn create(path: &Path, header: &RecordHeader) -> Result<RecordWriter> {
        let io = |e| Error::io("writing the upload record", e).in_file(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = File::create(path).map_err(io)?;
        let line = serde_json::to_string(header)
            .map_err(|e| Error::Internal(format!("internal error: record header: {e}")))?;
        writeln!(file, "{line}").map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(RecordWriter {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Continues the record at `path`.
    pub fn append(path: &Path) -> Result<RecordWriter> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io("opening the upload record", e).in_file(path))?;
        Ok(RecordWriter {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends a finished segment, synced.
    pub fn push(&mut self, s: &SegmentDone) -> Result<()> {
        let io = |e| Error::io("writing the upload record", e).in_file(&self.path);
        let line = serde_json::to_string(s)
            .map_err(|e| Error::Internal(format!("internal error: record line: {e}")))?;
        // One write call per line: a kill leaves at most the last line torn.
        self.file
            .write_all(format!("{line}\n").as_bytes())
            .map_err(io)?;
        self.file.sync_data().map_err(io)
    }

    /// The record's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_ignores_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        let p = record_path(d.path(), "http://h/c/d.vhd");
        assert!(read(&p).unwrap().is_none());
        let h = RecordHeader {
            version: 1,
            url: "http://h/c/d.vhd".into(),
            temp_blob: "d.vhd.tmp".into(),
            blob_length: 1 << 30,
            segment_size: 64 << 20,
            source_size: 1 << 30,
        };
        let mut w = RecordWriter::create(&p, &h).unwrap();
        let s = SegmentDone {
            segment: 3,
            xxh3: u128::MAX - 5,
            data_bytes: 4096,
        };
        w.push(&s).unwrap();
        drop(w);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"segment\":4,\"xx")
            .unwrap();
        let r = read(&p).unwrap().unwrap();
        assert_eq!(r.header, h);
        assert_eq!(r.done.len(), 1);
        assert_eq!(r.done[&3], s);
        std::fs::write(&p, "junk\n").unwrap();
        assert!(read(&p).is_err());
    }
}
