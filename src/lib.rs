//! # diskconv
//!
//! Block-level disk image conversion for machine migrations.
//!
//! The crate is layered (see `DESIGN.md` of the project): [`error`] and [`bytes`] (endian
//! fields, GUIDs) at the bottom; [`storage`] gives positional bytes; [`files`] creates and
//! changes files safely (temporary names, the image lock, the undo journal); each format in
//! [`formats`] implements [`ImageReader`] and/or [`ImageWriter`]; the [`convert`](mod@convert)
//! engine copies any reader into any writer in parallel, skipping zero and unallocated blocks,
//! and [`compare`](mod@compare) / [`verify`](mod@verify) walk two images block by block;
//! [`map`](mod@map) lists what each stretch of an image holds;
//! [`open`](fn@open) detects formats and applies the policy for files named inside an image;
//! [`guest`] reads and edits what is inside a disk (partitions, hives, NTFS), for [`inspect`]
//! and [`inject`].
//! [`net`] speaks the Network Block Device protocol: an `nbd://`, `nbds://` or `nbd+unix://`
//! URI is accepted wherever an image is named (a client with many requests in flight over
//! [`net::NbdStorage`]), and `diskconv serve` exports any image ([`net::server`]).
//!
//! ```no_run
//! use diskconv::{open, OpenOptions, OutputOptions, ConvertOptions};
//!
//! let src = open("disk.vmdk", &OpenOptions::default())?;
//! let out = OutputOptions::new("qcow2".parse()?).with_options("compression_type=zstd")?.compressed(true);
//! let stats = diskconv::convert_file(src.as_ref(), "disk.qcow2".as_ref(), &out,
//!                                    &ConvertOptions::default(), None)?;
//! println!("{} bytes of data written", stats.data_bytes);
//! # Ok::<(), diskconv::Error>(())
//! ```

#![warn(missing_docs)]

pub mod bytes;
pub mod check;
pub mod cloud;
pub mod compare;
pub mod convert;
pub mod detect;
pub mod error;
pub mod files;
pub mod formats;
pub mod guest;
pub mod image;
pub mod inject;
pub mod inspect;
pub mod map;
pub mod net;
pub mod open;
pub mod output;
pub mod reference;
pub mod storage;
pub mod sync;
pub mod testing;
pub mod util;
pub mod verify;

pub use convert::{ConvertOptions, ConvertStats, Progress, convert, convert_to_path};
pub use error::{Error, ErrorKind, Hint, Result};
pub use image::{
    Extent, ExtentKind, Format, ImageInfo, ImageReader, ImageUpdater, ImageWriter, WriteReport,
};
pub use open::{
    OpenOptions, PackageOptions, ReferencePolicy, open, open_disks, open_qcow2, open_storage,
};
pub use output::{OutputOptions, convert_file, convert_files, create_writer, disk_output_path};
