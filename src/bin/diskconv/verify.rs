//! `diskconv verify`: block-by-block comparison of a source and its migrated copy, with an
//! optional SHA-256 manifest of the source. Exit 0 equal, 1 different, 2 error.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use diskconv::files::{TempFile, resolve_output_file};
use diskconv::verify::{DEFAULT_BLOCK_SIZE, Manifest, VerifyReport, verify_cancellable};
use diskconv::{Error, ErrorKind, ImageReader, ReferencePolicy, Result};

/// `diskconv verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Format of the source (detected when omitted).
    #[arg(short = 'f', value_name = "FMT")]
    pub format_src: Option<String>,
    /// Format of the target (detected when omitted).
    #[arg(short = 'F', value_name = "FMT")]
    pub format_dst: Option<String>,
    /// Block size (a multiple of 512; suffixes k, M accepted).
    #[arg(long, value_name = "N")]
    pub block_size: Option<String>,
    /// Write the SHA-256 of every source block to FILE (JSON), as an audit record.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// How many mismatching ranges to list in the human output (JSON lists them all).
    #[arg(long, value_name = "N", default_value_t = 20, conflicts_with = "json")]
    pub max_ranges: usize,
    #[command(flatten)]
    pub refs: crate::args::RefArgs,
    #[command(flatten)]
    pub nbd_tls: crate::args::NbdTlsArgs,
    #[command(flatten)]
    pub threads: crate::args::ThreadArgs,
    #[command(flatten)]
    pub s3: crate::args::S3Args,
    /// The source image.
    pub src: PathBuf,
    /// The target image, or an uploaded object `s3://BUCKET/KEY` (its SHA-256 metadata is
    /// checked against its bytes, and its content against the source).
    pub dst: PathBuf,
}

/// Verifies with a manifest: written under a locked temporary name beside its final name
/// (symbolic links followed) and renamed when complete, so a manifest file that exists is a whole
/// one; the path is checked before anything is read.
fn write_manifest(
    args: &VerifyArgs,
    mpath: &Path,
    a: &dyn ImageReader,
    b: &dyn ImageReader,
    block_size: u64,
    cancel: &AtomicBool,
) -> Result<VerifyReport> {
    let target = resolve_output_file(mpath)?;
    let (temp, storage) = TempFile::create(&target)?;
    for p in temp.stale_removed() {
        errln!(
            "diskconv: removed a stale temporary left by an interrupted run: {}",
            p.display()
        );
    }
    let f = storage
        .file()
        .try_clone()
        .map_err(|e| Error::io("opening the manifest", e).in_file(temp.temp_path()))?;
    let mut w = BufWriter::new(f);
    let r = verify_cancellable(
        a,
        b,
        block_size,
        Some(Manifest {
            out: &mut w,
            source: args.src.display().to_string(),
        }),
        Some(cancel),
    )?;
    drop(w.into_inner().map_err(|e| {
        Error::io("writing the manifest", e.into_error()).in_file(temp.temp_path())
    })?);
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    // Synced, renamed into place, the folder synced.
    temp.commit()?;
    Ok(r)
}

/// The `--block-size`, checked.
pub fn block_size(args: &VerifyArgs) -> Result<u64> {
    let block_size = match &args.block_size {
        None => DEFAULT_BLOCK_SIZE,
        Some(s) => diskconv::util::parse_size(s)
            .ok_or_else(|| Error::InvalidArgument(format!("--block-size {s:?} is not a size")))?,
    };
    diskconv::verify::check_block_size(block_size, diskconv::verify::BlockSizes::Sectors)?;
    Ok(block_size)
}

/// Runs `diskconv verify`.
pub fn run(args: VerifyArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let block_size = block_size(&args)?;
    if args.dst.to_str().is_some_and(|d| d.starts_with("s3://")) {
        return crate::s3::verify(&args, block_size, policy);
    }
    if let Some(url) = diskconv::cloud::azure::PageBlobUrl::detect(&args.dst)? {
        #[cfg(feature = "cloud")]
        return crate::azure::verify(&args, policy, url, block_size);
        #[cfg(not(feature = "cloud"))]
        return Err(Error::Unsupported(format!(
            "{url}: this build has no cloud support (cargo feature `cloud`)"
        )));
    }
    if let Some(m) = &args.manifest {
        // Before anything is read: a folder, a device, a missing folder is refused now.
        resolve_output_file(m)?;
    }
    let a = diskconv::open(
        &args.src,
        &crate::open_options(args.format_src.as_deref(), None, policy)?,
    )?;
    let b = diskconv::open(
        &args.dst,
        &crate::open_options(args.format_dst.as_deref(), None, policy)?,
    )?;
    // The target may be larger by a format's zero padding (see compared_size).
    diskconv::verify::compared_size(
        a.as_ref(),
        b.as_ref(),
        &args.src.display().to_string(),
        &args.dst.display().to_string(),
    )?;
    let cancel = crate::term::cancel_on_signals()?;
    let result = match &args.manifest {
        None => verify_cancellable(a.as_ref(), b.as_ref(), block_size, None, Some(&cancel)),
        Some(mpath) => write_manifest(&args, mpath, a.as_ref(), b.as_ref(), block_size, &cancel),
    };
    let report = match result {
        Err(e) if e.kind() == ErrorKind::Cancelled => {
            return Ok(crate::term::interrupted(&match &args.manifest {
                Some(m) => format!(
                    "verify stopped; no manifest written (its temporary file was removed{})",
                    if m.exists() {
                        format!(", {} is as it was", m.display())
                    } else {
                        String::new()
                    }
                ),
                None => "verify stopped before the end; nothing was written".into(),
            }));
        }
        r => r?,
    };
    let out = std::io::stdout();
    let mut out = out.lock();
    let res = if args.json {
        let ranges: Vec<serde_json::Value> = report
            .mismatches
            .iter()
            .map(|r| serde_json::json!({"offset": r.start, "length": r.end - r.start}))
            .collect();
        let v = serde_json::json!({
            "equal": report.equal,
            "size": report.size,
            "block_size": report.block_size,
            "blocks": report.blocks,
            "mismatched_blocks": report.mismatched_blocks,
            "mismatches": ranges,
            "mismatches_truncated": report.mismatches_truncated,
            "bytes_compared": report.bytes_compared,
            "elapsed_secs": report.elapsed.as_secs_f64(),
            "manifest": args.manifest.as_ref().map(|p| p.display().to_string()),
        });
        writeln!(out, "{v}")
    } else {
        (|| {
            let secs = report.elapsed.as_secs_f64();
            writeln!(
                out,
                "{} blocks of {} bytes, {} bytes read and compared in {secs:.2} s",
                report.blocks, report.block_size, report.bytes_compared
            )?;
            if report.equal {
                writeln!(out, "Images are identical.")?;
            } else {
                writeln!(
                    out,
                    "Images differ: {} block(s) in {} range(s){}:",
                    report.mismatched_blocks,
                    report.mismatches.len(),
                    if report.mismatches_truncated {
                        " (and more not listed)"
                    } else {
                        ""
                    }
                )?;
                for r in report.mismatches.iter().take(args.max_ranges) {
                    writeln!(
                        out,
                        "  {:#x}..{:#x} ({} bytes)",
                        r.start,
                        r.end,
                        r.end - r.start
                    )?;
                }
                if report.mismatches.len() > args.max_ranges {
                    writeln!(
                        out,
                        "  ... {} more range(s)",
                        report.mismatches.len() - args.max_ranges
                    )?;
                }
            }
            if let Some(m) = &args.manifest {
                writeln!(out, "Manifest written to {}", m.display())?;
            }
            Ok(())
        })()
    };
    res.map_err(crate::term::stdout_error)?;
    Ok(if report.equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
