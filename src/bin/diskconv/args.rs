//! Command-line arguments. Option names follow qemu-img where a user would expect that.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use diskconv::ReferencePolicy;

/// Block-level disk image conversion for machine migrations.
#[derive(Debug, Parser)]
#[command(
    name = "diskconv",
    version,
    about,
    max_term_width = 100,
    after_help = crate::exit::ALL_COMMANDS
)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `--references`: which files named inside an image may be opened (on the commands that open
/// images).
#[derive(Debug, Args, Clone, Copy)]
pub struct RefArgs {
    /// Which files named inside an image (backing files, data files, extents, parents) may be
    /// opened: `deny`, `folder` (only under the image's own folder, the default) or `anywhere`.
    #[arg(long, default_value = "folder", value_name = "POLICY", value_parser = parse_policy)]
    pub references: ReferencePolicy,
}

fn parse_policy(s: &str) -> Result<ReferencePolicy, String> {
    s.parse().map_err(|e: diskconv::Error| e.to_string())
}

/// `--tls-psk` / `--tls-username`: TLS-PSK for the `nbds://` URIs a command names, as flags
/// (the same as the URI's `tls-psk-file=` and `tls-username=` query keys).
#[derive(Debug, Args, Clone, Default)]
pub struct NbdTlsArgs {
    /// TLS-PSK key file (psktool's `identity:hexkey` lines) for the nbds:// and nbds+unix://
    /// URIs the command names: the same as their `tls-psk-file=` query key.
    #[arg(long = "tls-psk", value_name = "FILE")]
    pub tls_psk: Option<PathBuf>,
    /// The PSK identity to use with --tls-psk (default: the file's identity when it holds only
    /// one, else as for the URI: the user name before `@`, else the login name).
    #[arg(long = "tls-username", value_name = "NAME", requires = "tls_psk")]
    pub tls_username: Option<String>,
}

/// `-m/--threads`: the worker pool (on the commands that read, hash or compress in parallel).
#[derive(Debug, Args, Clone, Copy)]
pub struct ThreadArgs {
    /// Worker threads for reading, zero detection, hashing and compression, 1 to 1024
    /// (default: one per core).
    #[arg(
        long,
        short = 'm',
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    pub threads: Option<u16>,
}

/// Parses the command line. Options that used to be global (`--references`, `-m/--threads`) are
/// still accepted before the command name: they are moved behind it, where the commands that
/// take them find them (and the others refuse them).
pub fn parse() -> Result<Cli, clap::Error> {
    let mut cmd = crate::exit::with_exit_codes(Cli::command());
    let matches =
        cmd.try_get_matches_from_mut(move_leading_options(std::env::args_os().collect()))?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let Err(why) = cli.command.apply_nbd_tls() {
        return Err(cmd.error(clap::error::ErrorKind::ArgumentConflict, why));
    }
    Ok(cli)
}

/// Percent-encodes a URI query value (everything but unreserved characters and `/`).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `diskconv --references anywhere info x` -> `diskconv info --references anywhere x` (and the
/// same for `-m`/`--threads`, behind `inject windows`, `ntfs ls`, ... for the commands with
/// subcommands).
fn move_leading_options(args: Vec<OsString>) -> Vec<OsString> {
    let mut moved = Vec::new();
    let mut i = 1;
    while let Some(a) = args.get(i).and_then(|a| a.to_str()) {
        let takes_value = matches!(a, "--references" | "--threads" | "-m");
        let attached = a.starts_with("--references=")
            || a.starts_with("--threads=")
            || (a.starts_with("-m") && a.len() > 2);
        if takes_value && i + 1 < args.len() {
            moved.extend_from_slice(&args[i..i + 2]);
            i += 2;
        } else if attached {
            moved.push(args[i].clone());
            i += 1;
        } else {
            break;
        }
    }
    if moved.is_empty() || i >= args.len() {
        return args;
    }
    // The command name, and the subcommand name of the commands that have subcommands.
    let mut at = i + 1;
    if matches!(args[i].to_str(), Some("inject" | "ntfs" | "hive")) && at < args.len() {
        at += 1;
    }
    let mut out = vec![args[0].clone()];
    out.extend_from_slice(&args[i..at]);
    out.extend(moved);
    out.extend_from_slice(&args[at..]);
    out
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert an image to another format (or the same one), skipping zero and unallocated blocks;
    /// `--target` writes what a cloud or hypervisor imports, after a preflight.
    #[command(after_help = crate::exit::CONVERT)]
    Convert(ConvertArgs),
    /// Describe an image: format, sizes, clusters, backing chain, bitmaps, snapshots, flags.
    Info(ImageArgs),
    /// List the extents of an image: data, zero or unallocated, and where they come from.
    Map(ImageArgs),
    /// Compare the contents of two images of any formats. Exit 0: same, 1: different, 2: error.
    #[command(after_help = crate::exit::COMPARE)]
    Compare(CompareArgs),
    /// Check the structure of a qcow2, VMDK, VHD, VHDX or VDI image. Exit 0: clean (warnings
    /// allowed), 2: corruptions, 3: leaks only, 1: the check could not run.
    #[command(after_help = crate::exit::CHECK)]
    Check(CheckArgs),
    /// Read and edit Windows registry hives offline: ls, get, set, delete, import, export, check,
    /// replay, new.
    #[command(after_help = crate::exit::HIVE)]
    Hive(crate::hive::HiveArgs),
    /// Copy SRC to DST, then on later runs only the blocks that changed (live migration passes);
    /// resumable, with a state file beside the target.
    Sync(crate::sync::SyncArgs),
    /// Compare two images block by block by hash; list mismatching ranges; write a SHA-256
    /// manifest. Exit 0: equal, 1: different, 2: error.
    #[command(after_help = crate::exit::VERIFY)]
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
    /// Check whether an image will import into a cloud or hypervisor and boot there: pass /
    /// warn / fail per check, with what fixes each failure. Exit 0: nothing fails, 3: a check
    /// failed.
    #[command(after_help = crate::exit::PREFLIGHT)]
    Preflight(crate::preflight::PreflightArgs),
    /// Export images over NBD (the Network Block Device protocol) to nbdinfo, nbdcopy,
    /// qemu-img, qemu and diskconv clients; read-only unless --writable.
    Serve(crate::serve::ServeArgs),
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
    /// Output format: raw, qcow2, vmdk, ova, vpc (VHD), vhdx, vdi or gcp (a Compute Engine image:
    /// disk.raw in a sparse GNU tar, gzip-compressed, the size rounded up to a whole GiB).
    /// Default: the one DST's extension names (.qcow2, .vmdk, .vhd/.vpc, .vhdx, .vdi, .ova,
    /// .tar.gz, .raw), else raw. A format that differs from the one DST's extension names is
    /// warned about.
    #[arg(short = 'O', long = "output-format", value_name = "FMT")]
    pub output_format: Option<String>,
    /// Output options, `key=value,...` (repeatable); options that mean nothing for the format
    /// or with the others are refused.
    ///
    /// qcow2: compat=0.10|1.1, cluster_size=512..2M, compression_type=zlib|zstd,
    /// preallocation=off|metadata|falloc|full.
    ///
    /// raw: preallocation=off|falloc|full.
    ///
    /// vmdk: subformat=streamOptimized|monolithicSparse|monolithicFlat|vmfs,
    /// adapter_type=lsilogic|ide|buslogic|legacyESX, hwversion=N.
    ///
    /// ova: name=, cpus=, memory=, os_type=, firmware=bios|efi, adapter_type=, hwversion=.
    ///
    /// vpc: subformat=dynamic|fixed, block_size=512k..256M (dynamic only), round_to_mib=on|off.
    ///
    /// vhdx: subformat=dynamic|fixed, block_size=1M..256M, logical_sector_size=512|4096,
    /// physical_sector_size=512|4096.
    ///
    /// vdi: subformat=dynamic|fixed (or static=on|off).
    ///
    /// gcp: level=1..9 (deflate level, default 6).
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Compress the output (qcow2 only; streamOptimized VMDK and OVA are always compressed).
    #[arg(short = 'c', long = "compress")]
    pub compress: bool,
    /// Show a progress bar with rate and time left (on a terminal; lines every 10% otherwise).
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Print what was done when finished: bytes of data and zeros read, time, and the bytes
    /// written to the output by kind (compressed data, uncompressed data, zeros, metadata,
    /// unwritten holes), which add up to the output's length.
    #[arg(long)]
    pub stats: bool,
    /// Print the statistics of `--stats` as one JSON object (implies `--stats`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub refs: RefArgs,
    #[command(flatten)]
    pub nbd_tls: NbdTlsArgs,
    #[command(flatten)]
    pub threads: ThreadArgs,
    /// OVA source: write every disk, to DST with `-diskN` before its extension
    /// (`web01.qcow2` -> `web01-disk1.qcow2`, `web01-disk2.qcow2`); none appears unless all
    /// succeed.
    #[arg(long = "all-disks", conflicts_with = "disk")]
    pub all_disks: bool,
    /// Write what TARGET imports (aws, azure, gcp, alibaba, huawei, openstack, vsphere, hyperv,
    /// kvm): its format and options (azure: a fixed VHD of whole MiB, at least 20 MiB; aws and
    /// vsphere: streamOptimized VMDK; hyperv: VHDX; kvm, openstack: qcow2; ...), after a
    /// preflight that stops on a failure. An explicit -O or -o still wins; where it departs
    /// from the target's rules a warning says so.
    #[arg(long, value_name = "TARGET", conflicts_with = "all_disks")]
    pub target: Option<String>,
    /// With --target: the boot mode the VM will use, bios or uefi (Azure, Hyper-V: generation
    /// 1 or 2); the preflight fails when the disk cannot boot so. Default: any the target has.
    #[arg(long = "boot-mode", value_name = "MODE", requires = "target")]
    pub boot_mode: Option<String>,
    /// With --target: convert even when the preflight fails (the report is printed either way).
    #[arg(long = "no-preflight", requires = "target")]
    pub no_preflight: bool,
    #[command(flatten)]
    pub s3: S3Args,
    /// Upload output (s3:// or an Azure page blob): continue the upload of an interrupted
    /// (killed) run to the same object; what the bucket or blob already holds is checked, not
    /// sent again (the record is under $DISKCONV_STATE_DIR, else $XDG_STATE_HOME/diskconv,
    /// else ~/.local/state/diskconv).
    #[arg(long)]
    pub resume: bool,
    /// Upload output: requests in flight at once, each on its own thread (default 8).
    #[arg(
        long = "upload-threads",
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    pub upload_threads: Option<u16>,
    /// The source image or block device.
    pub src: PathBuf,
    /// The output file (written under a temporary name, renamed into place on success), an
    /// object `s3://BUCKET/KEY` (uploaded while it is produced; see --endpoint), or an Azure
    /// page blob: https://ACCOUNT.blob.core.windows.net/CONTAINER/NAME.vhd?SAS (a fixed VHD;
    /// the URL is shown without its query).
    pub dst: PathBuf,
}

/// Where an `s3://` object is (credentials and region come from the AWS environment
/// variables and profile files).
#[derive(Debug, Args, Clone, Default)]
pub struct S3Args {
    /// S3 endpoint URL (`http(s)://HOST[:PORT]`) of an S3-compatible store (MinIO, Ceph, OSS,
    /// OBS, GCS). Default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's endpoint_url,
    /// else AWS's regional endpoint. A custom endpoint is addressed path-style.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Path-style addressing (`ENDPOINT/BUCKET/KEY`) for AWS's endpoint too (default there:
    /// virtual-hosted, `BUCKET.ENDPOINT/KEY`).
    #[arg(long = "s3-path-style")]
    pub s3_path_style: bool,
}

/// `diskconv info` and `diskconv map`: one image, text or JSON.
#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(flatten)]
    pub input: Input,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub refs: RefArgs,
    #[command(flatten)]
    pub nbd_tls: NbdTlsArgs,
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
    #[command(flatten)]
    pub refs: RefArgs,
    #[command(flatten)]
    pub nbd_tls: NbdTlsArgs,
    #[command(flatten)]
    pub threads: ThreadArgs,
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
    /// Also inflate every compressed grain of a VMDK (slower: reads all the data).
    #[arg(long)]
    pub deep: bool,
    #[command(flatten)]
    pub refs: RefArgs,
    /// The image.
    pub image: PathBuf,
}

impl Command {
    /// The `--references` policy of the command (the default for commands that open no image
    /// through the reference gate).
    pub fn references(&self) -> ReferencePolicy {
        use crate::inject::InjectCommand;
        use crate::ntfs::NtfsCommand;
        let r = match self {
            Command::Convert(a) => a.refs,
            Command::Info(a) | Command::Map(a) => a.refs,
            Command::Compare(a) => a.refs,
            Command::Sync(a) => a.refs,
            Command::Verify(a) => a.refs,
            Command::Inspect(a) => a.refs,
            Command::Preflight(a) => a.refs,
            Command::Check(a) => a.refs,
            Command::Serve(a) => a.refs,
            Command::Inject(a) => match &a.command {
                InjectCommand::Windows(w) => w.refs,
                InjectCommand::Linux(l) => l.refs,
            },
            Command::Ntfs(a) => match &a.command {
                NtfsCommand::Info { target, .. }
                | NtfsCommand::Ls { target, .. }
                | NtfsCommand::Cat { target, .. }
                | NtfsCommand::Put { target, .. }
                | NtfsCommand::Mkdir { target, .. } => target.refs,
                NtfsCommand::Rollback { .. } => return ReferencePolicy::default(),
            },
            Command::Hive(_) => return ReferencePolicy::default(),
        };
        r.references
    }

    /// The `--tls-psk`/`--tls-username` flags of the command and the image names they apply to.
    fn nbd_tls_mut(&mut self) -> Option<(&NbdTlsArgs, Vec<&mut PathBuf>)> {
        use crate::inject::InjectCommand;
        use crate::ntfs::NtfsCommand;
        Some(match self {
            Command::Convert(a) => (&a.nbd_tls, vec![&mut a.src, &mut a.dst]),
            Command::Info(a) | Command::Map(a) => (&a.nbd_tls, vec![&mut a.image]),
            Command::Compare(a) => (&a.nbd_tls, vec![&mut a.a, &mut a.b]),
            Command::Sync(a) => (&a.nbd_tls, vec![&mut a.src, &mut a.dst]),
            Command::Verify(a) => (&a.nbd_tls, vec![&mut a.src, &mut a.dst]),
            Command::Inspect(a) => (&a.nbd_tls, vec![&mut a.image]),
            Command::Preflight(a) => (&a.nbd_tls, vec![&mut a.image]),
            Command::Inject(a) => match &mut a.command {
                InjectCommand::Windows(w) => (&w.nbd_tls, vec![&mut w.image]),
                InjectCommand::Linux(l) => (&l.nbd_tls, vec![&mut l.image]),
            },
            Command::Ntfs(a) => match &mut a.command {
                NtfsCommand::Info { target, .. }
                | NtfsCommand::Ls { target, .. }
                | NtfsCommand::Cat { target, .. }
                | NtfsCommand::Put { target, .. }
                | NtfsCommand::Mkdir { target, .. } => (&target.nbd_tls, vec![&mut target.image]),
                NtfsCommand::Rollback { .. } => return None,
            },
            _ => return None,
        })
    }

    /// Puts `--tls-psk FILE` (and `--tls-username`) into the query of every `nbds://` URI the
    /// command names, as `tls-psk-file=` and `tls-username=`. Refused: the flag without such a
    /// URI, or with a URI that names its own key file.
    fn apply_nbd_tls(&mut self) -> Result<(), String> {
        let Some((tls, paths)) = self.nbd_tls_mut() else {
            return Ok(());
        };
        let Some(file) = tls.tls_psk.clone() else {
            return Ok(());
        };
        let username = tls.tls_username.clone().or_else(|| {
            // The file's identity when it holds only one (what `diskconv serve --tls-psk` of
            // the same file accepts); otherwise the URI's rule applies.
            let f = diskconv::net::tls::PskFile::load(&file).ok()?;
            let mut ids = f.identities();
            let first = ids.next()?.to_string();
            ids.next().is_none().then_some(first)
        });
        let mut applied = 0;
        for p in paths {
            let Some(s) = p.to_str() else { continue };
            if !(s.starts_with("nbds://") || s.starts_with("nbds+unix://")) {
                continue;
            }
            let query = s.split_once('?').map_or("", |(_, q)| q);
            if query.split('&').any(|kv| kv.starts_with("tls-psk-file=")) {
                return Err(format!(
                    "--tls-psk and the URI's tls-psk-file= both name a key file for {}: keep one",
                    s.split_once('?').map_or(s, |(u, _)| u)
                ));
            }
            let authority = s.split_once("://").map_or("", |(_, r)| r);
            let has_user = authority.split('/').next().is_some_and(|a| a.contains('@'));
            let mut out = s.to_string();
            out.push(if s.contains('?') { '&' } else { '?' });
            out.push_str("tls-psk-file=");
            out.push_str(&percent_encode(&file.to_string_lossy()));
            if let Some(u) = &username {
                let explicit = tls.tls_username.is_some();
                if explicit
                    && (has_user || query.split('&').any(|kv| kv.starts_with("tls-username=")))
                {
                    return Err(format!(
                        "--tls-username and the URI both name the PSK identity for {}: keep one",
                        s.split_once('?').map_or(s, |(u, _)| u)
                    ));
                }
                if explicit || !(has_user || query.contains("tls-username=")) {
                    out.push_str("&tls-username=");
                    out.push_str(&percent_encode(u));
                }
            }
            *p = PathBuf::from(out);
            applied += 1;
        }
        if applied == 0 {
            return Err(
                "--tls-psk applies to nbds:// and nbds+unix:// URIs, and the command names none"
                    .into(),
            );
        }
        Ok(())
    }

    /// The `-m/--threads` of the command, if given.
    pub fn threads(&self) -> Option<usize> {
        let t = match self {
            Command::Convert(a) => a.threads,
            Command::Compare(a) => a.threads,
            Command::Sync(a) => a.threads,
            Command::Verify(a) => a.threads,
            _ => return None,
        };
        t.threads.map(usize::from)
    }
}
