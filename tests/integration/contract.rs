//! The reader contract of DESIGN.md, checked against any [`ImageReader`].

use diskconv::{ExtentKind, ImageReader};

/// Checks `img` against the bytes it must read as:
/// - the extents of `map` tile the disk with no gap or overlap, each at least 1 byte long;
/// - `read_at` of every extent, and of pseudo-random unaligned ranges, matches `expected`;
/// - zero and unallocated extents read as zeros;
/// - `map` at or after the end returns a length of 0 and reading past the end is an error.
pub fn check_reader(img: &dyn ImageReader, expected: &[u8]) {
    let size = img.virtual_size();
    assert_eq!(size, expected.len() as u64, "virtual size");

    // Extents tile the disk.
    let mut off = 0u64;
    let mut extents = 0u64;
    while off < size {
        let e = img
            .map(off, u64::MAX)
            .unwrap_or_else(|err| panic!("map({off:#x}): {}", err.chain()));
        assert_eq!(e.offset, off, "extent starts where asked");
        assert!(e.len >= 1, "empty extent at {off:#x} inside the disk");
        assert!(
            e.end() <= size,
            "extent {e:?} runs past the end ({size:#x})"
        );
        let want = &expected[off as usize..e.end() as usize];
        let mut got = vec![0xa5u8; e.len as usize];
        img.read_at(&mut got, off)
            .unwrap_or_else(|err| panic!("read_at of extent {e:?}: {}", err.chain()));
        assert!(
            got == want,
            "extent {e:?} reads differently from the expected bytes"
        );
        if matches!(e.kind, ExtentKind::Zero | ExtentKind::Unallocated) {
            assert!(
                want.iter().all(|&b| b == 0),
                "{e:?} is not zero in the oracle"
            );
        }
        if e.compressed || e.kind != ExtentKind::Data {
            assert!(e.host_offset.is_none(), "{e:?} has a host offset");
        }
        // A bounded request is honoured.
        let small = img.map(off, 1).unwrap();
        assert_eq!((small.offset, small.len), (off, 1), "map({off:#x}, 1)");
        assert_eq!(small.kind, e.kind, "map({off:#x}, 1) kind");
        off = e.end();
        extents += 1;
    }
    assert!(size == 0 || extents > 0);

    // Random unaligned reads (deterministic xorshift).
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ size;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    if size > 0 {
        for _ in 0..64 {
            let start = next() % size;
            let len = (next() % (300 << 10)).min(size - start).max(1);
            let mut got = vec![0x5au8; len as usize];
            img.read_at(&mut got, start)
                .unwrap_or_else(|err| panic!("read_at({start:#x}, {len}): {}", err.chain()));
            assert!(
                got == expected[start as usize..(start + len) as usize],
                "read of {len} bytes at {start:#x} differs"
            );
        }
    }

    // The end of the disk.
    assert_eq!(img.map(size, 1 << 20).unwrap().len, 0, "map at the end");
    assert_eq!(img.map(size + 12345, 1).unwrap().len, 0, "map past the end");
    if size > 0 {
        assert_eq!(img.map(0, 0).unwrap().len, 0, "map with max_len 0");
    }
    let mut one = [0u8; 1];
    assert!(img.read_at(&mut one, size).is_err(), "read at the end");
    let mut two = [0u8; 2];
    if size > 0 {
        assert!(
            img.read_at(&mut two, size - 1).is_err(),
            "read across the end"
        );
    }
    assert!(img.read_at(&mut one, u64::MAX).is_err(), "read at u64::MAX");
    img.read_at(&mut [], size).expect("empty read at the end");
}
