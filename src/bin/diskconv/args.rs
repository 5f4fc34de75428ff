//! Command-line arguments. Option names follow qemu-img where a user would expect that.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Block-level disk image conversion for machine migrations.
#[derive(Debug, Parser)]
#[command(name = "diskconv", version, about, max_term_width = 100)]
pub struct Cli {
    /// Which files named inside an image (backing files, data files, extents) may be opened:
    /// `deny`, `folder` (only under the image's own folder, the default) or `anywhere`.
    #[arg(long, global = true, default_value = "folder", value_name = "POLICY")]
    pub references: String,

    /// Worker threads for reading, zero detection and compression (default: one per core).
    #[arg(long, short = 'm', global = true, value_name = "N")]
    pub threads: Option<usize>,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert an image to another format (or the same one), skipping zero and unallocated blocks.
    Convert(ConvertArgs),
    /// Describe an image: format, sizes, clusters, backing chain, bitmaps, snapshots, flags.
    Info(ImageArgs),
    /// List the extents of an image: data, zero or unallocated, and where they come from.
    Map(ImageArgs),
    /// Compare the contents of two images of any formats. Exit 0: same, 1: different, 2: error.
    Compare(CompareArgs),
    /// Check the structure of a qcow2 image. Exit 0: clean, 2: corruptions, 3: leaks only,
    /// 1: the check could not run.
    Check(CheckArgs),
    /// Read and edit Windows registry hives offline: ls, get, set, delete, import, export, check,
    /// replay.
    Hive(crate::hive::HiveArgs),
    /// Copy SRC to DST, then on later runs only the blocks that changed (live migration passes);
    /// resumable, with a state file beside the target.
    Sync(crate::sync::SyncArgs),
    /// Compare two images block by block by hash; list mismatching ranges; write a SHA-256
    /// manifest. Exit 0: equal, 1: different, 2: error.
    Verify(crate::verify::VerifyArgs),
    /// Show an image's partitions, file systems and installed Windows (version, build,
    /// architecture, control set).
    Inspect(crate::inspect::InspectArgs),
    /// Adapt a guest offline: `inject windows` copies and registers drivers so it boots on
    /// another platform.
    Inject(crate::inject::InjectArgs),
    /// List, read and write files on an NTFS volume inside an image (info, ls, cat, put, mkdir,
    /// rollback).
    Ntfs(crate::ntfs::NtfsArgs),
}

/// The input format and snapshot.
#[derive(Debug, Args)]
pub struct Input {
    /// Source format (detected from the content when omitted; never from the file name).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Read an internal snapshot (qcow2) instead of the active layer: NAME, ID,
    /// `snapshot.name=NAME` or `snapshot.id=ID`. On an OVA (no snapshots): a disk number, as
    /// --disk.
    #[arg(short = 'l', long = "snapshot", value_name = "SNAPSHOT")]
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub package: PackageArgs,
}

/// Disk selection and checks of OVA packages (other formats ignore them).
#[derive(Debug, Args, Clone, Default)]
pub struct PackageArgs {
    /// OVA: read disk N, numbered from 1 in the order the OVF lists them (default: the first).
    #[arg(long = "disk", value_name = "N")]
    pub disk: Option<usize>,
    /// OVA: do not check the manifest (.mf) digests of the OVF and the disk before reading
    /// them (checking reads the disk once more).
    #[arg(long = "no-verify-manifest")]
    pub no_verify_manifest: bool,
    /// OVA: read a disk whose size differs from the capacity its OVF declares (a warning
    /// instead of an error).
    #[arg(long = "allow-capacity-mismatch")]
    pub allow_capacity_mismatch: bool,
}

/// `diskconv convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub input: Input,
    /// Output format: raw, qcow2, vmdk or ova.
    #[arg(
        short = 'O',
        long = "output-format",
        value_name = "FMT",
        default_value = "raw"
    )]
    pub output_format: String,
    /// Output options, `key=value,...`. qcow2: compat=0.10|1.1, cluster_size=SIZE,
    /// compression_type=zlib|zstd, preallocation=off|metadata|falloc|full. raw: preallocation.
    /// vmdk: subformat=streamOptimized|monolithicSparse|monolithicFlat|vmfs,
    /// adapter_type=lsilogic|ide|buslogic|legacyESX, hwversion=N. ova: name=, cpus=, memory=,
    /// os_type=, firmware=bios|efi, adapter_type=, hwversion=.
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Compress the output (qcow2).
    #[arg(short = 'c', long = "compress")]
    pub compress: bool,
    /// Show a progress bar with rate and time left (on a terminal).
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Print what was done (bytes of data, zeros, compressed size, time) when finished.
    #[arg(long)]
    pub stats: bool,
    /// OVA source: write every disk, to DST with `-diskN` before its extension
    /// (`web01.qcow2` -> `web01-disk1.qcow2`, `web01-disk2.qcow2`); none appears unless all
    /// succeed.
    #[arg(long = "all-disks", conflicts_with = "disk")]
    pub all_disks: bool,
    /// The source image or block device.
    pub src: PathBuf,
    /// The output file (written under a temporary name, renamed into place on success).
    pub dst: PathBuf,
}

/// `diskconv info` and `diskconv map`: one image, text or JSON.
#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(flatten)]
    pub input: Input,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// OVA, `info`: check the manifest's digests of the OVF and the selected disk (`info`
    /// does not by default; `map` and the other commands do unless --no-verify-manifest).
    #[arg(long = "verify-manifest", conflicts_with = "no_verify_manifest")]
    pub verify_manifest: bool,
    /// The image.
    pub image: PathBuf,
}

/// `diskconv compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Format of the first image (detected when omitted).
    #[arg(short = 'f', value_name = "FMT")]
    pub format_a: Option<String>,
    /// Format of the second image (detected when omitted).
    #[arg(short = 'F', value_name = "FMT")]
    pub format_b: Option<String>,
    /// Images of different sizes are different (by default the extra part must read as zeros).
    #[arg(short = 's', long)]
    pub strict: bool,
    /// Disk selection and checks for whichever of A and B is an OVA.
    #[command(flatten)]
    pub package: PackageArgs,
    /// First image.
    pub a: PathBuf,
    /// Second image.
    pub b: PathBuf,
}

/// `diskconv check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The image.
    pub image: PathBuf,
}
