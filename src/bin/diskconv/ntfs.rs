//! `diskconv ntfs`: list, read and write files on an NTFS volume inside an image.
//!
//! The volume is found through the image's partition table (the only NTFS volume, or the one
//! `--partition` names). Reads open the image read-only. Writes open it for an edit
//! ([`ImageTx`]): every change is collected in memory and committed at the end with an undo
//! journal, so a failure leaves the image byte-identical and an interrupted commit can be
//! undone with `diskconv ntfs rollback`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use diskconv::files::RollbackOutcome;
use diskconv::guest::disk::{CommitStats, DiskRead, ImageTx, TxDisk, Window, rollback};
use diskconv::guest::ntfs::{NtfsOpenOptions, NtfsVolume};
use diskconv::guest::partition::{Volume, find_volumes};
use diskconv::guest::volume::{open_ntfs, select_ntfs, summary};
use diskconv::image::ImageReader;
use diskconv::util::human_bytes;
use diskconv::{Error, Format, OpenOptions, ReferencePolicy, Result};

/// Largest file `cat` and `put` move (they hold it in memory).
const MAX_FILE: u64 = 1 << 30;

/// `diskconv ntfs`.
#[derive(Debug, Args)]
pub struct NtfsArgs {
    /// The NTFS command.
    #[command(subcommand)]
    pub command: NtfsCommand,
}

/// Which image and which volume in it.
#[derive(Debug, Args)]
pub struct Target {
    /// The disk image (raw, qcow2, VHD, VHDX, VMDK; detected from the content).
    pub image: PathBuf,
    /// The partition holding the volume (its number as Linux names it; 0 = a volume over the
    /// whole disk). Default: the only NTFS volume.
    #[arg(long, value_name = "N")]
    pub partition: Option<u32>,
    /// The image's format instead of detecting it.
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    #[command(flatten)]
    pub refs: crate::args::RefArgs,
    #[command(flatten)]
    pub nbd_tls: crate::args::NbdTlsArgs,
}

/// The NTFS subcommands.
#[derive(Debug, Subcommand)]
pub enum NtfsCommand {
    /// Show the volume: version, label, sizes, and whether it may be written (and why not).
    Info {
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a folder.
    Ls {
        #[command(flatten)]
        target: Target,
        /// The folder (`\` or `/` separated; default: the root).
        #[arg(default_value = "")]
        path: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a file (or write it to a local file with -o).
    Cat {
        #[command(flatten)]
        target: Target,
        /// The file on the volume.
        path: String,
        /// Write to this local file instead of standard output.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Copy a local file onto the volume, creating it or replacing its content.
    Put {
        #[command(flatten)]
        target: Target,
        /// The local file.
        local: PathBuf,
        /// Where on the volume (its folder must exist).
        path: String,
    },
    /// Create a folder.
    Mkdir {
        #[command(flatten)]
        target: Target,
        /// The folder on the volume.
        path: String,
        /// Create missing parent folders too; an existing folder is not an error.
        #[arg(short = 'p', long = "parents")]
        parents: bool,
    },
    /// Undo an edit whose commit was interrupted (restores the image from IMAGE.diskconv-undo).
    Rollback {
        /// The disk image.
        image: PathBuf,
    },
}

/// Runs the command.
pub fn run(args: NtfsArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    match args.command {
        NtfsCommand::Info { target, json } => info(&target, policy, json),
        NtfsCommand::Ls { target, path, json } => ls(&target, policy, &path, json),
        NtfsCommand::Cat {
            target,
            path,
            output,
        } => cat(&target, policy, &path, output.as_deref()),
        NtfsCommand::Put {
            target,
            local,
            path,
        } => put(&target, policy, &local, &path),
        NtfsCommand::Mkdir {
            target,
            path,
            parents,
        } => mkdir(&target, policy, &path, parents),
        NtfsCommand::Rollback { image } => rollback_cmd(&image),
    }
}

/// How to open the image of `t` (its `-f` checked).
pub fn open_options(t: &Target, policy: ReferencePolicy) -> Result<OpenOptions> {
    let format = match &t.format {
        Some(s) => Some(
            s.parse::<Format>()
                .map_err(|e: Error| Error::InvalidArgument(format!("--format '{s}': {e}")))?,
        ),
        None => None,
    };
    Ok(OpenOptions {
        format,
        references: policy,
        ..OpenOptions::default()
    })
}

/// The NTFS volume to work on.
fn choose_volume(disk: &dyn DiskRead, partition: Option<u32>) -> Result<Volume> {
    select_ntfs(&find_volumes(disk)?, partition)
}

/// Opens the image read-only and runs `f` on its NTFS volume.
fn with_volume_ro<T>(
    t: &Target,
    policy: ReferencePolicy,
    f: impl FnOnce(&Volume, &NtfsVolume<Window<&dyn ImageReader>>) -> Result<T>,
) -> Result<T> {
    let reader = diskconv::open(&t.image, &open_options(t, policy)?)?;
    let disk: &dyn ImageReader = reader.as_ref();
    let vol = choose_volume(&disk, t.partition).map_err(|e| e.in_file(&t.image))?;
    let ntfs = open_ntfs(disk, &vol, &NtfsOpenOptions { read_only: true })
        .map_err(|e| e.in_file(&t.image))?;
    f(&vol, &ntfs)
}

/// Opens the image for an edit, runs `f` on its NTFS volume, and commits.
fn with_volume_rw<T>(
    t: &Target,
    policy: ReferencePolicy,
    f: impl FnOnce(&mut NtfsVolume<Window<&mut TxDisk>>) -> Result<T>,
) -> Result<(T, CommitStats)> {
    let mut tx = ImageTx::open(&t.image, &open_options(t, policy)?)?;
    let vol = choose_volume(&tx.disk, t.partition).map_err(|e| e.in_file(&t.image))?;
    let out = {
        let mut ntfs = open_ntfs(&mut tx.disk, &vol, &NtfsOpenOptions { read_only: false })
            .map_err(|e| e.in_file(&t.image))?;
        let out = f(&mut ntfs)?;
        ntfs.flush()?;
        out
    };
    let stats = tx.commit()?;
    Ok((out, stats))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v)
        .map_err(|e| Error::InvalidArgument(format!("encoding JSON: {e}")))
}

fn info(t: &Target, policy: ReferencePolicy, json: bool) -> Result<ExitCode> {
    with_volume_ro(t, policy, |vol, ntfs| {
        let st = ntfs.state();
        let reason = st.not_writable_reason();
        if json {
            let v = serde_json::json!({
                "image": t.image,
                "partition": vol.partition.as_ref().map(|p| p.number),
                "start": vol.start,
                "len": vol.len,
                "state": st,
                "writable": reason.is_none(),
                "not_writable_reason": reason,
            });
            outln!("{}", to_json(&v)?)?;
        } else {
            let yes = |b: bool| if b { "yes" } else { "no" };
            outln!("volume:         {} at byte {:#x}", summary(vol), vol.start)?;
            outln!("NTFS version:   {}.{}", st.version.0, st.version.1)?;
            outln!("label:          {}", st.label)?;
            outln!("cluster size:   {}", st.cluster_size)?;
            outln!(
                "clusters:       {} ({} free, {} free)",
                st.total_clusters,
                st.free_clusters,
                human_bytes(st.free_clusters.saturating_mul(st.cluster_size as u64))
            )?;
            outln!("dirty:          {}", yes(st.dirty))?;
            outln!("log clean:      {}", yes(st.log_clean))?;
            outln!("hibernated:     {}", yes(st.hibernated))?;
            match reason {
                None => outln!("writable:       yes")?,
                Some(r) => outln!("writable:       no: {r}")?,
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn ls(t: &Target, policy: ReferencePolicy, path: &str, json: bool) -> Result<ExitCode> {
    with_volume_ro(t, policy, |_, ntfs| {
        let entries = ntfs.read_dir(path)?;
        let mut out = std::io::stdout().lock();
        let w = |e: std::io::Error| crate::term::stdout_error(e);
        if json {
            writeln!(out, "{}", to_json(&entries)?).map_err(w)?;
        } else {
            for e in &entries {
                writeln!(
                    out,
                    "{} {:>12} {:>8}  {}",
                    if e.is_dir { "d" } else { "-" },
                    e.size,
                    e.record,
                    e.name
                )
                .map_err(w)?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn cat(t: &Target, policy: ReferencePolicy, path: &str, output: Option<&Path>) -> Result<ExitCode> {
    let data = with_volume_ro(t, policy, |_, ntfs| ntfs.read_file(path, MAX_FILE))?;
    match output {
        Some(o) => diskconv::files::write_output(o, &data, "file")?,
        None => std::io::stdout()
            .lock()
            .write_all(&data)
            .map_err(crate::term::stdout_error)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn put(t: &Target, policy: ReferencePolicy, local: &Path, path: &str) -> Result<ExitCode> {
    let meta = std::fs::metadata(local)
        .map_err(|e| Error::io("reading the local file", e).in_file(local))?;
    if !meta.is_file() {
        return Err(Error::InvalidArgument("not a regular file".into()).in_file(local));
    }
    if meta.len() > MAX_FILE {
        return Err(Error::InvalidArgument(format!(
            "{} bytes, more than the {MAX_FILE} bytes `ntfs put` copies",
            meta.len()
        ))
        .in_file(local));
    }
    let data =
        std::fs::read(local).map_err(|e| Error::io("reading the local file", e).in_file(local))?;
    let (created, stats) = with_volume_rw(t, policy, |ntfs| ntfs.write_file(path, &data))?;
    outln!(
        "{} {path} ({} bytes); {} bytes written to the image in {} ranges",
        if created { "created" } else { "replaced" },
        data.len(),
        stats.bytes_written,
        stats.ranges
    )?;
    Ok(ExitCode::SUCCESS)
}

fn mkdir(t: &Target, policy: ReferencePolicy, path: &str, parents: bool) -> Result<ExitCode> {
    let (created, stats) = with_volume_rw(t, policy, |ntfs| {
        if parents {
            let existed = ntfs.stat(path)?.is_some();
            ntfs.create_dir_all(path)?;
            Ok(!existed)
        } else {
            if ntfs.stat(path)?.is_some() {
                return Err(Error::InvalidArgument(format!(
                    "'{path}' already exists (use -p to accept an existing folder)"
                )));
            }
            ntfs.create_dir(path)
        }
    })?;
    if created {
        outln!(
            "created {path}; {} bytes written to the image in {} ranges",
            stats.bytes_written,
            stats.ranges
        )?;
    } else {
        outln!("{path} already exists")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn rollback_cmd(image: &Path) -> Result<ExitCode> {
    match rollback(image)? {
        RollbackOutcome::Restored { ranges, bytes } => outln!(
            "restored {bytes} bytes in {ranges} ranges of {} from its undo journal",
            image.display()
        )?,
        RollbackOutcome::JournalIncomplete { reason } => outln!(
            "the undo journal was incomplete ({reason}): the interrupted commit had not \
             changed {} yet; journal removed",
            image.display()
        )?,
    }
    Ok(ExitCode::SUCCESS)
}
