//! The output destination as a [`Sink`]: every format writes through the trait only, so a sink
//! that is not a local folder (here: memory, as an object-store or network sink would hold
//! the parts until its commit) receives complete, valid images. Oracle: qemu-img reads the
//! committed bytes and compares them with the source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use diskconv::files::{Sink, SinkCapabilities};
use diskconv::storage::{MemStorage, Storage};
use diskconv::{ConvertOptions, Format, OpenOptions, OutputOptions};

use crate::util::{make_raw, qemu_compare, require, tmpdir};

/// Named parts in memory, published into `published` only on commit.
#[derive(Debug)]
struct MemSink {
    target: PathBuf,
    parts: Vec<(String, Arc<MemStorage>)>,
    scratch: Vec<Arc<MemStorage>>,
    published: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

impl Sink for MemSink {
    fn target(&self) -> &Path {
        &self.target
    }
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities {
            random_access: true,
            siblings: true,
        }
    }
    fn main(&mut self) -> diskconv::Result<Arc<dyn Storage>> {
        let name = self
            .target
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        self.sibling(&name)
    }
    fn sibling(&mut self, name: &str) -> diskconv::Result<Arc<dyn Storage>> {
        let s = Arc::new(MemStorage::new());
        self.parts.push((name.to_string(), s.clone()));
        Ok(s)
    }
    fn scratch(&mut self) -> diskconv::Result<Arc<dyn Storage>> {
        let s = Arc::new(MemStorage::new());
        self.scratch.push(s.clone());
        Ok(s)
    }
    fn commit(self: Box<Self>) -> diskconv::Result<()> {
        let mut p = self.published.lock().unwrap();
        for (name, s) in &self.parts {
            p.insert(name.clone(), s.to_vec());
        }
        Ok(())
    }
    fn abandon(self: Box<Self>) {}
}

#[test]
fn every_format_writes_through_a_sink_that_is_not_a_folder() {
    if !require("qemu-img") {
        return;
    }
    let dir = tmpdir();
    let src_path = dir.path().join("src.raw");
    make_raw(&src_path, 3 << 20, 11);
    let src = diskconv::open(&src_path, &OpenOptions::default()).unwrap();
    let size = src.virtual_size();
    for (format, options, qemu_format) in [
        (Format::Raw, "", "raw"),
        (Format::Qcow2, "", "qcow2"),
        (Format::Qcow2, "compressed", "qcow2"),
        (Format::Vhd, "", "vpc"),
        (Format::Vhdx, "", "vhdx"),
        (Format::Vdi, "", "vdi"),
        (Format::Vmdk, "subformat=monolithicFlat", "vmdk"),
        (Format::Vmdk, "subformat=streamOptimized", "vmdk"),
    ] {
        let published = Arc::new(Mutex::new(BTreeMap::new()));
        let name = format!("out.{}", format.name());
        let sink = Box::new(MemSink {
            target: PathBuf::from(&name),
            parts: Vec::new(),
            scratch: Vec::new(),
            published: published.clone(),
        });
        let opts = match options {
            "compressed" => OutputOptions::new(format).compressed(true),
            _ => OutputOptions::new(format).with_options(options).unwrap(),
        };
        diskconv::convert::convert_to_sink(
            &*src,
            sink,
            |s| diskconv::create_writer(s, size, &opts),
            &ConvertOptions::default(),
            None,
        )
        .unwrap_or_else(|e| panic!("{format} {options}: {}", e.chain()));
        // The committed parts, laid out as files, are the image.
        let out_dir = dir
            .path()
            .join(format!("{}-{}", format.name(), options.len()));
        std::fs::create_dir(&out_dir).unwrap();
        let published = published.lock().unwrap();
        assert!(published.contains_key(&name), "{format} {options}");
        for (part, bytes) in published.iter() {
            std::fs::write(out_dir.join(part), bytes).unwrap();
        }
        assert!(
            qemu_compare(&src_path, "raw", &out_dir.join(&name), qemu_format),
            "{format} {options}: the image written through the sink differs from the source"
        );
    }
}

#[test]
fn a_failed_conversion_abandons_the_sink() {
    let dir = tmpdir();
    let src_path = dir.path().join("src.raw");
    make_raw(&src_path, 1 << 20, 5);
    let src = diskconv::open(&src_path, &OpenOptions::default()).unwrap();
    let published = Arc::new(Mutex::new(BTreeMap::new()));
    let sink = Box::new(MemSink {
        target: PathBuf::from("small.raw"),
        parts: Vec::new(),
        scratch: Vec::new(),
        published: published.clone(),
    });
    let opts = OutputOptions::new(Format::Raw);
    // A writer smaller than the source: refused, nothing published.
    let e = diskconv::convert::convert_to_sink(
        &*src,
        sink,
        |s| diskconv::create_writer(s, 4096, &opts),
        &ConvertOptions::default(),
        None,
    )
    .unwrap_err();
    assert_eq!(
        e.kind(),
        diskconv::ErrorKind::InvalidArgument,
        "{}",
        e.chain()
    );
    assert!(published.lock().unwrap().is_empty());
}
