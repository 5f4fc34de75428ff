//! Mapping pairs: the compressed run list of a non-resident attribute (VCN ranges mapped to
//! LCNs, or sparse).

use super::NtfsError;

/// One run: `len` clusters from `vcn`, stored at `lcn` (or sparse when `lcn` is `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First virtual cluster of the run.
    pub vcn: u64,
    /// Clusters in the run (>= 1).
    pub len: u64,
    /// First logical cluster on the volume, `None` for a sparse (unallocated) run.
    pub lcn: Option<u64>,
}

/// Decodes mapping pairs starting at `first_vcn` (the attribute's lowest VCN). `offset` is the
/// absolute byte offset of `bytes`, for errors. Stops at the terminating zero byte; a missing
/// terminator, an LCN below 0 or past `total_clusters`, or a zero-length run is an error.
pub fn decode(
    bytes: &[u8],
    first_vcn: u64,
    total_clusters: u64,
    offset: u64,
) -> Result<Vec<Run>, NtfsError> {
    let _ = (bytes, first_vcn, total_clusters, offset);
    unimplemented!("runlist::decode: helper B")
}

/// Encodes runs (contiguous in VCN, the first at the attribute's lowest VCN) as mapping pairs
/// with the terminating zero byte, in the smallest form (signed, minimal-width fields).
pub fn encode(runs: &[Run]) -> Vec<u8> {
    let _ = runs;
    unimplemented!("runlist::encode: helper B")
}
