//! Fuzzes `$I30` index parsing and the tree code on arbitrary bytes: the input is split into an
//! `$INDEX_ROOT` value (its length in 8-byte units in the input's last byte) and 512-byte index
//! blocks (fixups as on disk), then parsed, walked,
//! searched and inserted into. Any panic or endless loop is a bug; errors are fine.
#![no_main]

use diskconv::error::Result;
use diskconv::guest::ntfs::index::{self, IndexEntry, IndexStore, node};
use diskconv::guest::ntfs::upcase::UpCase;
use diskconv::guest::ntfs::{NtfsError, fixup};
use libfuzzer_sys::fuzz_target;

const BS: usize = 512;

struct Store {
    root: Vec<u8>,
    blocks: Vec<Vec<u8>>,
}

impl IndexStore for Store {
    fn block_size(&self) -> u32 {
        BS as u32
    }
    fn vcn_per_block(&self) -> u64 {
        1
    }
    fn root(&self) -> Result<Vec<u8>> {
        Ok(self.root.clone())
    }
    fn root_capacity(&self) -> Result<usize> {
        Ok(self.root.len().max(256))
    }
    fn set_root(&mut self, value: &[u8]) -> Result<()> {
        self.root = value.to_vec();
        Ok(())
    }
    fn read_block(&self, vcn: u64) -> Result<Vec<u8>> {
        let mut b = self
            .blocks
            .get(vcn as usize)
            .cloned()
            .ok_or_else(|| NtfsError::corrupt("fuzz", vcn, "no such block"))?;
        fixup::remove(&mut b, "fuzz block", vcn)?;
        Ok(b)
    }
    fn write_block(&mut self, vcn: u64, block: &[u8]) -> Result<()> {
        let mut b = block.to_vec();
        fixup::apply(&mut b, "fuzz block", vcn)?;
        if let Some(slot) = self.blocks.get_mut(vcn as usize) {
            *slot = b;
        }
        Ok(())
    }
    fn allocate_block(&mut self) -> Result<u64> {
        if self.blocks.len() > 64 {
            return Err(NtfsError::NoSpace {
                detail: "fuzz".into(),
            }
            .into());
        }
        self.blocks.push(vec![0; BS]);
        Ok(self.blocks.len() as u64 - 1)
    }
}

fn key(name: &str) -> Vec<u8> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let mut k = vec![0u8; 0x42 + 2 * units.len()];
    k[0x40] = units.len() as u8;
    k[0x41] = 1;
    for (i, u) in units.iter().enumerate() {
        k[0x42 + 2 * i..0x44 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    k
}

fuzz_target!(|data: &[u8]| {
    let _ = node::parse_root(data);
    if data.len() >= BS {
        let _ = node::parse_block(&data[..BS], BS as u32, 0);
    }
    // The last byte says where the root ends (in 8-byte units); index blocks follow it.
    let Some((&last, body)) = data.split_last() else {
        return;
    };
    let split = (usize::from(last) * 8).min(body.len());
    let root = body[..split].to_vec();
    let blocks = body[split..].chunks(BS).map(|c| {
        let mut b = c.to_vec();
        b.resize(BS, 0);
        b
    });
    let mut store = Store {
        root,
        blocks: blocks.collect(),
    };
    let up = UpCase::default_table();
    let _ = index::entries(&store);
    let _ = index::lookup(&store, &up, &"abc".encode_utf16().collect::<Vec<_>>());
    for name in ["abc", "ABD", "zz", "é", "a_b"] {
        let _ = index::insert(
            &mut store,
            &up,
            IndexEntry {
                file_ref: 42,
                key: key(name),
            },
        );
    }
    let name: Vec<u16> = "zz".encode_utf16().collect();
    let _ = index::update_key(&mut store, &up, &name, 42, &key("zz"));
    let _ = index::entries(&store);
});
