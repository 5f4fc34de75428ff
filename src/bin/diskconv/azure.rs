//! `convert SRC https://ACCOUNT.blob.core.windows.net/CONTAINER/NAME.vhd?SAS` and `verify SRC
//! URL`: the Azure page-blob destination. The SAS is never printed: messages show the URL
//! without its query.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use diskconv::cloud::azure::{self, PageBlobOptions, PageBlobUrl};
use diskconv::util::human_bytes;
use diskconv::{ConvertOptions, Error, ErrorKind, Format, OutputOptions, ReferencePolicy, Result};

/// The output options for a page blob: a fixed VHD unless `-O`/`-o` say otherwise (which the
/// library then refuses, saying what Azure takes).
fn output_options(a: &crate::args::ConvertArgs) -> Result<OutputOptions> {
    let format = match a.output_format.as_deref() {
        Some(f) => f.parse()?,
        None => Format::Vhd,
    };
    let mut out = OutputOptions::new(format).compressed(a.compress);
    if format == Format::Vhd {
        out.vhd.subformat = diskconv::formats::vhd::VhdSubformat::Fixed;
    }
    for o in &a.options {
        out = out.with_options(o)?;
    }
    azure::check_output_options(&out)?;
    out.validate()?;
    Ok(out)
}

/// `convert` into a page blob.
pub fn convert(
    a: crate::args::ConvertArgs,
    policy: ReferencePolicy,
    url: PageBlobUrl,
) -> Result<ExitCode> {
    let shown = url.display();
    let out = output_options(&a).map_err(|e| e.in_file(&shown))?;
    let src: std::sync::Arc<dyn diskconv::ImageReader> =
        crate::open_input(&a.src, &a.input, policy)?.into();
    // `--target`: a page blob is Azure's; its preflight runs first (the size rules are the
    // upload's own: whole MiB, at least 20 MiB).
    if let Some((t, to)) = crate::target_choice(&a)? {
        if t != diskconv::cloud::Target::Azure {
            return Err(Error::InvalidArgument(format!(
                "--target {t}: a page-blob URL is an Azure destination; use --target azure \
                 (or write the {t} artifact to a file or an s3:// object)"
            )));
        }
        if let Some(code) = crate::preflight::before_convert(&a, t, &to, &src, policy)? {
            return Ok(code);
        }
    }
    let cancel = crate::term::cancel_on_signals()?;
    let opts = ConvertOptions {
        cancel: Some(cancel),
        ..ConvertOptions::default()
    };
    let upload = PageBlobOptions {
        resume: a.resume,
        threads: a.upload_threads.map_or(azure::DEFAULT_THREADS, usize::from),
        ..PageBlobOptions::default()
    };
    let start = Instant::now();
    let mut cb = crate::term::percent_lines(a.progress);
    let stats = match azure::convert_to_page_blob(
        src.as_ref(),
        &url,
        &out,
        &upload,
        &opts,
        Some(&mut cb),
    ) {
        Err(e) if e.kind() == ErrorKind::Cancelled => {
            return Ok(crate::term::interrupted(&format!(
                "upload to {shown} stopped; its temporary blob was deleted, nothing was \
                 written under the final name"
            )));
        }
        r => r?,
    };
    let u = &stats.upload;
    if let Some(s) = &u.stale_removed {
        errln!("diskconv: deleted the temporary blob of an interrupted upload: {s}");
    }
    if stats.convert.output_size != stats.convert.virtual_size {
        errln!(
            "diskconv: note: the VHD's disk is {} bytes ({}), the source {} bytes: Azure takes \
             whole MiB and at least 20 MiB; the extra tail reads as zeros",
            stats.convert.output_size,
            human_bytes(stats.convert.output_size),
            stats.convert.virtual_size
        );
    }
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "url": u.url,
            "virtual_size": stats.convert.virtual_size,
            "output_size": stats.convert.output_size,
            "blob_length": u.blob_length,
            "sha256": u.sha256,
            "bytes_sent": u.bytes_sent,
            "requests": u.requests,
            "page_bytes": u.page_bytes,
            "segments_resumed": u.segments_resumed,
            "seconds": secs,
            "bytes_read": stats.convert.bytes_read,
            "data_bytes": stats.convert.data_bytes,
            "zero_bytes": stats.convert.zero_bytes,
        });
        let mut o = std::io::stdout().lock();
        writeln!(o, "{v}").map_err(crate::term::stdout_error)?;
    } else {
        errln!(
            "diskconv: uploaded {} ({} bytes) to {}: {} of pages in {} requests, zeros not \
             sent{}; sha256 {}",
            human_bytes(u.blob_length),
            u.blob_length,
            u.url,
            human_bytes(u.bytes_sent),
            u.requests,
            if u.segments_resumed > 0 {
                format!(
                    ", {} segments of the interrupted run kept",
                    u.segments_resumed
                )
            } else {
                String::new()
            },
            u.sha256
        );
        if a.stats {
            let mut o = std::io::stdout().lock();
            writeln!(
                o,
                "converted {} in {secs:.2} s: {} data, {} zeros; {} sent in {} Put Page requests",
                human_bytes(stats.convert.virtual_size),
                human_bytes(stats.convert.data_bytes),
                human_bytes(stats.convert.zero_bytes),
                human_bytes(u.bytes_sent),
                u.requests
            )
            .map_err(crate::term::stdout_error)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `verify SRC URL`: exit 0 when the blob's SHA-256 matches its metadata and its content the
/// source, 1 when not.
pub fn verify(
    args: &crate::verify::VerifyArgs,
    policy: ReferencePolicy,
    url: PageBlobUrl,
    block_size: u64,
) -> Result<ExitCode> {
    if args.manifest.is_some() || args.format_dst.is_some() {
        return Err(Error::InvalidArgument(
            "--manifest and -F do not apply to a page-blob target".into(),
        ));
    }
    let a = diskconv::open(
        &args.src,
        &crate::open_options(args.format_src.as_deref(), None, policy)?,
    )?;
    let cancel = crate::term::cancel_on_signals()?;
    let r = match azure::verify_page_blob(a.as_ref(), &url, block_size, Some(&cancel)) {
        Err(e) if e.kind() == ErrorKind::Cancelled => {
            return Ok(crate::term::interrupted(
                "verify stopped before the end; nothing was written",
            ));
        }
        r => r?,
    };
    let mut out = std::io::stdout().lock();
    let res = if args.json {
        let v = serde_json::json!({
            "url": url.display(),
            "equal": r.ok(),
            "sha256_recorded": r.sha256_recorded,
            "sha256": r.sha256_actual,
            "sha256_matches": r.sha256_recorded.as_deref() == Some(r.sha256_actual.as_str()),
            "content_equal": r.content.equal,
            "size": r.content.size,
            "mismatched_blocks": r.content.mismatched_blocks,
            "bytes_compared": r.content.bytes_compared,
        });
        writeln!(out, "{v}")
    } else {
        (|| {
            match &r.sha256_recorded {
                Some(s) if *s == r.sha256_actual => {
                    writeln!(out, "SHA-256 {s}: matches the blob's metadata")?
                }
                Some(s) => writeln!(
                    out,
                    "SHA-256 of the blob {} differs from its metadata {s}",
                    r.sha256_actual
                )?,
                None => writeln!(
                    out,
                    "SHA-256 of the blob {}; the blob has no sha256 metadata",
                    r.sha256_actual
                )?,
            }
            if r.content.equal {
                writeln!(out, "Content is identical to the source.")?;
            } else {
                writeln!(
                    out,
                    "Content differs from the source: {} block(s) of {} bytes",
                    r.content.mismatched_blocks, r.content.block_size
                )?;
            }
            Ok(())
        })()
    };
    res.map_err(crate::term::stdout_error)?;
    Ok(if r.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
