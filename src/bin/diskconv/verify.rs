//! `diskconv verify`: block-by-block comparison of a source and its migrated copy, with an
//! optional SHA-256 manifest of the source. Exit 0 equal, 1 different, 2 error.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use diskconv::sync::verify::{DEFAULT_BLOCK_SIZE, Manifest, verify};
use diskconv::{Error, ReferencePolicy, Result};

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
    pub threads: crate::args::ThreadArgs,
    /// The source image.
    pub src: PathBuf,
    /// The target image.
    pub dst: PathBuf,
}

/// The `--block-size`, checked.
pub fn block_size(args: &VerifyArgs) -> Result<u64> {
    let block_size = match &args.block_size {
        None => DEFAULT_BLOCK_SIZE,
        Some(s) => diskconv::util::parse_size(s)
            .ok_or_else(|| Error::InvalidArgument(format!("--block-size {s:?} is not a size")))?,
    };
    diskconv::sync::verify::check_block_size(block_size)?;
    Ok(block_size)
}

/// Runs `diskconv verify`.
pub fn run(args: VerifyArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let block_size = block_size(&args)?;
    let a = diskconv::open(
        &args.src,
        &crate::open_options(args.format_src.as_deref(), None, policy)?,
    )?;
    let b = diskconv::open(
        &args.dst,
        &crate::open_options(args.format_dst.as_deref(), None, policy)?,
    )?;
    // The target may be larger by a format's zero padding (see compared_size).
    diskconv::sync::verify::compared_size(
        a.as_ref(),
        b.as_ref(),
        &args.src.display().to_string(),
        &args.dst.display().to_string(),
    )?;
    let report = match &args.manifest {
        None => verify(a.as_ref(), b.as_ref(), block_size, None)?,
        Some(mpath) => {
            // Written beside its final name and renamed when complete: a manifest file that
            // exists is a whole one.
            let mut tmp_name = mpath.as_os_str().to_owned();
            tmp_name.push(".part");
            let tmp = PathBuf::from(tmp_name);
            let f = std::fs::File::create(&tmp)
                .map_err(|e| Error::io("creating the manifest", e).in_file(&tmp))?;
            let mut w = BufWriter::new(f);
            let r = verify(
                a.as_ref(),
                b.as_ref(),
                block_size,
                Some(Manifest {
                    out: &mut w,
                    source: args.src.display().to_string(),
                }),
            );
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            let f = w
                .into_inner()
                .map_err(|e| Error::io("writing the manifest", e.into_error()).in_file(&tmp))?;
            f.sync_all()
                .map_err(|e| Error::io("syncing the manifest", e).in_file(&tmp))?;
            std::fs::rename(&tmp, mpath)
                .map_err(|e| Error::io("renaming the manifest into place", e).in_file(mpath))?;
            r
        }
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
    res.map_err(|e| Error::io("writing to standard output", e))?;
    Ok(if report.equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
