//! `$I30` directory indexes: the B+ tree of `$FILE_NAME` keys held in a folder's
//! `$INDEX_ROOT` (resident, in its MFT record) and `$INDEX_ALLOCATION` (INDX blocks): lookup,
//! ordered listing, and insertion with node splits and moving a full root into an index block.
//!
//! The tree code works on an [`IndexStore`], which the volume implements for a folder's record
//! (and tests implement in memory), so it never touches MFT records or bitmaps itself.

use super::upcase::UpCase;
use crate::error::Result;

/// One index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// MFT reference of the file (record number in the low 48 bits, sequence number above).
    pub file_ref: u64,
    /// The key: the file's whole `$FILE_NAME` attribute value.
    pub key: Vec<u8>,
}

impl IndexEntry {
    /// The name in the key (UTF-16 code units), or an error if the key is malformed.
    pub fn name(&self) -> Result<Vec<u16>> {
        unimplemented!("IndexEntry::name: helper B")
    }

    /// The namespace byte of the key (0 POSIX, 1 Win32, 2 DOS, 3 Win32 and DOS).
    pub fn namespace(&self) -> Result<u8> {
        unimplemented!("IndexEntry::namespace: helper B")
    }
}

/// Access to one index's storage, provided by the volume for a folder (or by a test).
pub trait IndexStore {
    /// Bytes per index block (from the index root header; normally 4096).
    fn block_size(&self) -> u32;
    /// How far the VCN advances per index block (block size / cluster size when the block is
    /// at least a cluster, else block size / 512).
    fn vcn_per_block(&self) -> u64;
    /// The current `$INDEX_ROOT` attribute value (root header + node header + entries).
    fn root(&self) -> Result<Vec<u8>>;
    /// The largest `$INDEX_ROOT` value the folder's MFT record can hold right now.
    fn root_capacity(&self) -> Result<usize>;
    /// Replaces the `$INDEX_ROOT` value (at most [`root_capacity`](Self::root_capacity) bytes).
    fn set_root(&mut self, value: &[u8]) -> Result<()>;
    /// The index block at `vcn` with its fixups removed and its `INDX` header checked.
    fn read_block(&self, vcn: u64) -> Result<Vec<u8>>;
    /// Writes the index block at `vcn` (fixups applied by the store).
    fn write_block(&mut self, vcn: u64, block: &[u8]) -> Result<()>;
    /// Allocates a new index block (creating or growing `$INDEX_ALLOCATION` and `$BITMAP`) and
    /// returns its VCN. Its content is undefined until written.
    fn allocate_block(&mut self) -> Result<u64>;
}

/// Finds the entry whose name equals `name` (ignoring case per `upcase`; for a name present in
/// both Win32 and DOS form, the Win32 entry).
pub fn lookup(store: &dyn IndexStore, upcase: &UpCase, name: &[u16]) -> Result<Option<IndexEntry>> {
    let _ = (store, upcase, name);
    unimplemented!("index::lookup: helper B")
}

/// Every entry in collation order.
pub fn entries(store: &dyn IndexStore) -> Result<Vec<IndexEntry>> {
    let _ = store;
    unimplemented!("index::entries: helper B")
}

/// Inserts `entry` in collation order, splitting full blocks and moving a full root into a new
/// index block. An entry with an equal name (ignoring case) is an error
/// ([`NtfsError::Exists`](super::NtfsError::Exists)).
pub fn insert(store: &mut dyn IndexStore, upcase: &UpCase, entry: IndexEntry) -> Result<()> {
    let _ = (store, upcase, entry);
    unimplemented!("index::insert: helper B")
}

/// Replaces the key of the entry with name `name` and reference `file_ref` (e.g. new sizes in
/// its `$FILE_NAME` copy); the name itself must not change. Returns whether it was found.
pub fn update_key(
    store: &mut dyn IndexStore,
    upcase: &UpCase,
    name: &[u16],
    file_ref: u64,
    key: &[u8],
) -> Result<bool> {
    let _ = (store, upcase, name, file_ref, key);
    unimplemented!("index::update_key: helper B")
}

/// A new, empty `$INDEX_ROOT` value for a folder (`$FILE_NAME` collation, `block_size`-byte
/// index blocks, `clusters_per_block` as stored in the root header).
pub fn new_root(block_size: u32, clusters_per_block: u8) -> Vec<u8> {
    let _ = (block_size, clusters_per_block);
    unimplemented!("index::new_root: helper B")
}
