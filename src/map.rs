//! The extent map of an image, as `diskconv map` shows it: what each stretch of the virtual disk
//! holds, with neighbouring extents that nothing distinguishes merged into one entry.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::image::{Extent, ExtentKind, ImageReader};

/// One run of the map: extents of the same kind, depth and compression whose host bytes (when
/// they have any) follow each other. Its JSON form is one entry of `diskconv map --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapEntry {
    /// Start, in bytes of virtual disk.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// What it holds.
    pub kind: ExtentKind,
    /// Which image of a chain it comes from (0: the image itself).
    pub depth: u32,
    /// Where its bytes start in that image's file, when stored plainly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The data is stored compressed.
    pub compressed: bool,
}

impl MapEntry {
    /// Extends this entry by `e` when `e` follows it and nothing distinguishes them; returns
    /// whether it did.
    fn absorb(&mut self, e: &Extent) -> bool {
        let contiguous = match (self.offset, e.host_offset) {
            (Some(h), Some(n)) => h + self.length == n,
            (None, None) => true,
            _ => false,
        };
        if self.kind == e.kind
            && self.depth == e.depth
            && self.compressed == e.compressed
            && contiguous
        {
            self.length += e.len;
            return true;
        }
        false
    }
}

impl From<&Extent> for MapEntry {
    fn from(e: &Extent) -> Self {
        MapEntry {
            start: e.offset,
            length: e.len,
            kind: e.kind,
            depth: e.depth,
            offset: e.host_offset,
            compressed: e.compressed,
        }
    }
}

/// The whole virtual disk of `img` as merged map entries, in order. A reader that maps no
/// extent at an offset inside the disk is an error ([`Error::Corrupt`]).
pub fn extent_map(img: &dyn ImageReader) -> Result<Vec<MapEntry>> {
    let size = img.virtual_size();
    let mut entries: Vec<MapEntry> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let e = img.map(pos, size - pos)?;
        if e.len == 0 {
            return Err(Error::Corrupt(format!("no extent at offset {pos:#x}")));
        }
        pos += e.len;
        if let Some(last) = entries.last_mut() {
            if last.absorb(&e) {
                continue;
            }
        }
        entries.push(MapEntry::from(&e));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::RAW;
    use crate::image::{Format, ImageInfo};

    /// A reader that maps the extents it was given (reads are not used).
    struct Mapped(Vec<Extent>, u64);

    impl ImageReader for Mapped {
        fn format(&self) -> Format {
            RAW
        }
        fn virtual_size(&self) -> u64 {
            self.1
        }
        fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
            Ok(self
                .0
                .iter()
                .find(|e| e.offset <= offset && offset < e.offset + e.len)
                .map(|e| {
                    let skip = offset - e.offset;
                    Extent {
                        offset,
                        len: (e.len - skip).min(max_len),
                        host_offset: e.host_offset.map(|h| h + skip),
                        ..*e
                    }
                })
                .unwrap_or(Extent::new(offset, 0, ExtentKind::Unallocated)))
        }
        fn read_at(&self, _buf: &mut [u8], _offset: u64) -> Result<()> {
            Ok(())
        }
        fn info(&self) -> ImageInfo {
            ImageInfo::new(RAW, self.1)
        }
    }

    fn ext(offset: u64, len: u64, kind: ExtentKind, host: Option<u64>) -> Extent {
        Extent {
            host_offset: host,
            ..Extent::new(offset, len, kind)
        }
    }

    #[test]
    fn merges_only_what_nothing_distinguishes() {
        use ExtentKind::*;
        let img = Mapped(
            vec![
                ext(0, 10, Data, Some(100)),
                ext(10, 10, Data, Some(110)), // host-contiguous: merged
                ext(20, 10, Data, Some(500)), // host jump: new entry
                ext(30, 5, Zero, None),
                ext(35, 5, Zero, None), // merged
                ext(40, 5, Unallocated, None),
                Extent {
                    depth: 1,
                    ..ext(45, 5, Unallocated, None)
                },
                Extent {
                    compressed: true,
                    ..ext(50, 5, Data, None)
                },
            ],
            55,
        );
        let m = extent_map(&img).unwrap();
        let got: Vec<_> = m
            .iter()
            .map(|e| (e.start, e.length, e.kind, e.depth, e.offset, e.compressed))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 20, Data, 0, Some(100), false),
                (20, 10, Data, 0, Some(500), false),
                (30, 10, Zero, 0, None, false),
                (40, 5, Unallocated, 0, None, false),
                (45, 5, Unallocated, 1, None, false),
                (50, 5, Data, 0, None, true),
            ]
        );
        assert_eq!(
            serde_json::to_string(&m[2]).unwrap(),
            r#"{"start":30,"length":10,"kind":"zero","depth":0,"compressed":false}"#
        );
    }

    #[test]
    fn a_gap_in_the_map_is_an_error() {
        let img = Mapped(vec![ext(0, 10, ExtentKind::Data, None)], 20);
        let e = extent_map(&img).unwrap_err();
        assert_eq!(e.to_string(), "no extent at offset 0xa");
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
    }
}
