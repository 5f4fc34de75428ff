//! `convert ... s3://BUCKET/KEY` and `verify IMG s3://BUCKET/KEY`: the CLI side of the S3
//! upload (the library's `cloud::s3`).

#[cfg(feature = "cloud")]
use std::io::Write;
use std::process::ExitCode;

use diskconv::{Error, Result};

#[cfg(not(feature = "cloud"))]
fn no_cloud() -> Result<ExitCode> {
    Err(Error::Unsupported(
        "this diskconv was built without object-store support (cargo feature `cloud`)".into(),
    ))
}

/// `convert SRC s3://BUCKET/KEY`.
#[cfg(not(feature = "cloud"))]
pub fn convert(_a: &crate::args::ConvertArgs, _p: diskconv::ReferencePolicy) -> Result<ExitCode> {
    no_cloud()
}

/// `verify SRC s3://BUCKET/KEY`.
#[cfg(not(feature = "cloud"))]
pub fn verify(
    _a: &crate::verify::VerifyArgs,
    _b: u64,
    _p: diskconv::ReferencePolicy,
) -> Result<ExitCode> {
    no_cloud()
}

#[cfg(feature = "cloud")]
fn config(a: &crate::args::S3Args) -> Result<diskconv::cloud::s3::S3Config> {
    diskconv::cloud::s3::S3Config::from_env(&diskconv::cloud::s3::S3ConfigOptions {
        endpoint: a.endpoint.clone(),
        path_style: a.s3_path_style,
    })
}

/// `convert SRC s3://BUCKET/KEY`.
#[cfg(feature = "cloud")]
pub fn convert(
    a: &crate::args::ConvertArgs,
    policy: diskconv::ReferencePolicy,
) -> Result<ExitCode> {
    use diskconv::cloud::s3::{S3UploadOptions, S3Url, convert_to_s3};
    use diskconv::{ConvertOptions, ErrorKind};

    let dst = a.dst.to_str().unwrap_or_default();
    let url = S3Url::parse(dst)?;
    let out = crate::output_options(a)?;
    let cfg = config(&a.s3)?;
    let src: std::sync::Arc<dyn diskconv::ImageReader> =
        crate::open_input(&a.src, &a.input, policy)?.into();
    // `--target`: its preflight first, and the disk padded to the target's size rules.
    let target_out = crate::target_choice(a)?;
    if let Some((t, to)) = &target_out {
        if let Some(code) = crate::preflight::before_convert(a, *t, to, &src, policy)? {
            return Ok(code);
        }
    }
    let padded = target_out.as_ref().map(|(_, to)| {
        diskconv::cloud::PaddedReader::new(src.as_ref(), to.output_size(src.virtual_size()))
    });
    let reader: &dyn diskconv::ImageReader = match &padded {
        Some(p) => p,
        None => src.as_ref(),
    };
    let cancel = crate::term::cancel_on_signals()?;
    let opts = ConvertOptions {
        cancel: Some(cancel),
        ..ConvertOptions::default()
    };
    let start = std::time::Instant::now();
    let mut cb = crate::term::percent_lines(a.progress);
    let upload = S3UploadOptions {
        resume: a.resume,
        ..S3UploadOptions::default()
    };
    let r = convert_to_s3(reader, &url, cfg, &out, &upload, &opts, Some(&mut cb));
    let (stats, report) = match r {
        Err(e) if e.kind() == ErrorKind::Cancelled => {
            return Ok(crate::term::interrupted(&format!(
                "upload to {url} stopped; its multipart upload was aborted, nothing was stored \
                 under the key"
            )));
        }
        r => r?,
    };
    for n in &report.notes {
        errln!("diskconv: {n}");
    }
    errln!(
        "diskconv: uploaded {url}: {} bytes, SHA-256 {} ({} parts of {}: {} sent, {} already \
         in the bucket)",
        report.size,
        report.sha256,
        report.parts,
        diskconv::util::human_bytes(report.part_size),
        report.parts_sent,
        report.parts_reused
    );
    if a.json {
        let secs = start.elapsed().as_secs_f64();
        let v = serde_json::json!({
            "virtual_size": stats.virtual_size,
            "output_size": stats.output_size,
            "seconds": secs,
            "bytes_read": stats.bytes_read,
            "data_bytes": stats.data_bytes,
            "zero_bytes": stats.zero_bytes,
            "output": stats.output,
            "upload": report,
        });
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{v}").map_err(crate::term::stdout_error)?;
    } else if a.stats {
        crate::print_stats(&stats, start.elapsed().as_secs_f64(), false)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `verify SRC s3://BUCKET/KEY`: exit 0 when the stored SHA-256 matches the object's bytes and
/// its content matches the source, 1 when not.
#[cfg(feature = "cloud")]
pub fn verify(
    args: &crate::verify::VerifyArgs,
    block_size: u64,
    policy: diskconv::ReferencePolicy,
) -> Result<ExitCode> {
    use diskconv::ErrorKind;
    use diskconv::cloud::s3::{S3Url, verify_s3};

    if args.manifest.is_some() {
        return Err(Error::InvalidArgument(
            "--manifest is for local targets; verify the source against its S3 copy without it"
                .into(),
        ));
    }
    let url = S3Url::parse(args.dst.to_str().unwrap_or_default())?;
    let cfg = config(&args.s3)?;
    let a = diskconv::open(
        &args.src,
        &crate::open_options(args.format_src.as_deref(), None, policy)?,
    )?;
    let format = args
        .format_dst
        .as_deref()
        .map(str::parse::<diskconv::image::Format>)
        .transpose()?;
    let cancel = crate::term::cancel_on_signals()?;
    let r = match verify_s3(a.as_ref(), &url, cfg, format, block_size, Some(&cancel)) {
        Err(e) if e.kind() == ErrorKind::Cancelled => {
            return Ok(crate::term::interrupted(
                "verify stopped; nothing was written",
            ));
        }
        r => r?,
    };
    let mut out = std::io::stdout().lock();
    let res = if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "ok": r.ok(),
                "url": r.url.to_string(),
                "size": r.size,
                "stored_sha256": r.stored_sha256,
                "sha256": r.sha256,
                "sha256_matches": r.stored_sha256.as_deref() == Some(r.sha256.as_str()),
                "equal": r.content.equal,
                "mismatched_blocks": r.content.mismatched_blocks,
                "bytes_compared": r.content.bytes_compared,
            })
        )
    } else {
        (|| {
            match &r.stored_sha256 {
                Some(s) if *s == r.sha256 => writeln!(
                    out,
                    "{}: {} bytes, SHA-256 {} matches the stored one",
                    r.url, r.size, r.sha256
                )?,
                Some(s) => writeln!(
                    out,
                    "{}: {} bytes, SHA-256 {} DIFFERS from the stored {s}",
                    r.url, r.size, r.sha256
                )?,
                None => writeln!(
                    out,
                    "{}: {} bytes, SHA-256 {}; the object has no stored SHA-256 (x-amz-meta-sha256)",
                    r.url, r.size, r.sha256
                )?,
            }
            if r.content.equal {
                writeln!(out, "Images are identical.")
            } else {
                writeln!(
                    out,
                    "Images differ: {} block(s) of {} bytes",
                    r.content.mismatched_blocks, r.content.block_size
                )
            }
        })()
    };
    res.map_err(crate::term::stdout_error)?;
    Ok(if r.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
