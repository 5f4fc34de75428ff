//! Writing OVA packages: a USTAR tar holding `<name>.ovf`, `<name>.mf` and
//! `<name>-disk1.vmdk` (streamOptimized), in that order (OVF 1.x, DMTF DSP0243; REFERENCE.md
//! section 2 "OVA").
//!
//! The engine writes the disk into a scratch file; the stream writer hashes it while writing (it
//! is append-only), so at `finish` the OVF and the manifest are known without reading the disk
//! again, and the disk is copied into the tar in one read pass.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{Firmware, OvaOptions};
use crate::bytes::hex;
use crate::error::{Error, Result};
use crate::files::Sink;
use crate::formats::vmdk::writer::{AdapterType, StreamSummary, StreamWriter, VmdkWriteOptions};
use crate::image::{Chunk, Compressor, Format, ImageWriter, WriteReport};
use crate::storage::Storage;

/// Tar block size.
const BLOCK: u64 = 512;
/// Copy buffer for the disk.
const COPY_BUF: usize = 1 << 20;

/// Writes an OVA: see the module documentation.
pub struct OvaWriter {
    stream: StreamWriter,
    scratch: Arc<dyn Storage>,
    out: Arc<dyn Storage>,
    size: u64,
    base: String,
    vmdk: VmdkWriteOptions,
    ova: OvaOptions,
}

impl fmt::Debug for OvaWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OvaWriter")
            .field("size", &self.size)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A member base name made of `[A-Za-z0-9._-]` only (others become `_`), at most 80 bytes so
/// every member name fits the 100-byte USTAR name field.
pub fn member_base_name(vm_name: &str) -> String {
    let mut s: String = vm_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        s.insert(0, 'v');
    }
    s
}

/// Escapes `s` for XML text and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// What the OVF needs to know about the disk file.
#[derive(Debug, Clone)]
pub struct OvfDisk<'a> {
    /// Member name of the disk.
    pub href: &'a str,
    /// Its size in bytes.
    pub file_size: u64,
    /// Virtual disk size in bytes.
    pub capacity: u64,
    /// Bytes of the virtual disk that hold data.
    pub populated: u64,
}

/// The OVF 1.0 envelope as VMware's ovftool exports it, for one disk.
pub fn ovf_text(disk: &OvfDisk<'_>, vmdk: &VmdkWriteOptions, ova: &OvaOptions) -> String {
    let name = xml_escape(&ova.vm_name);
    let os = xml_escape(&ova.os_type);
    let href = xml_escape(disk.href);
    let controller = match vmdk.adapter_type {
        AdapterType::Ide => "      <Item>\n\
        <rasd:Address>0</rasd:Address>\n\
        <rasd:Description>IDE Controller</rasd:Description>\n\
        <rasd:ElementName>IDE 0</rasd:ElementName>\n\
        <rasd:InstanceID>3</rasd:InstanceID>\n\
        <rasd:ResourceType>5</rasd:ResourceType>\n\
      </Item>\n"
            .to_string(),
        scsi => {
            let sub = match scsi {
                AdapterType::LsiLogic => "lsilogic",
                _ => "buslogic",
            };
            format!(
                "      <Item>\n\
        <rasd:Address>0</rasd:Address>\n\
        <rasd:Description>SCSI Controller</rasd:Description>\n\
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>\n\
        <rasd:InstanceID>3</rasd:InstanceID>\n\
        <rasd:ResourceSubType>{sub}</rasd:ResourceSubType>\n\
        <rasd:ResourceType>6</rasd:ResourceType>\n\
      </Item>\n"
            )
        }
    };
    let firmware = match ova.firmware {
        Firmware::Bios => "bios",
        Firmware::Efi => "efi",
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="diskconv-{ver}" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{href}" ovf:id="file1" ovf:size="{file_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="{populated}"/>
  </DiskSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="1" vmw:osType="{os}">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-{hw:02}</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{mem}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{mem}</rasd:VirtualQuantity>
      </Item>
{controller}      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="{firmware}"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#,
        ver = env!("CARGO_PKG_VERSION"),
        file_size = disk.file_size,
        capacity = disk.capacity,
        populated = disk.populated,
        hw = vmdk.hw_version,
        cpus = ova.cpus,
        mem = ova.memory_mib,
    )
}

/// A USTAR header block for a regular file `name` of `size` bytes.
fn tar_header(name: &str, size: u64, mtime: u64) -> Result<[u8; 512]> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)
        .map_err(|e| Error::InvalidArgument(format!("OVA member name '{name}': {e}")))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(*h.as_bytes())
}

impl OvaWriter {
    /// An OVA at the output's target; the disk goes to a scratch file until `finish`.
    pub fn create(
        files: &mut dyn Sink,
        size: u64,
        vmdk: &VmdkWriteOptions,
        ova: &OvaOptions,
    ) -> Result<Self> {
        let base = member_base_name(&ova.vm_name);
        let out = files.main()?;
        let scratch = files.scratch()?;
        let disk_name = format!("{base}-disk1.vmdk");
        let stream = StreamWriter::create(scratch.clone(), size, &disk_name, vmdk, true)?;
        Ok(OvaWriter {
            stream,
            scratch,
            out,
            size,
            base,
            vmdk: vmdk.clone(),
            ova: ova.clone(),
        })
    }

    fn put(&self, data: &[u8], off: u64, what: &str) -> Result<()> {
        self.out.write_all_at(data, off).map_err(|e| {
            Error::io(
                format!(
                    "writing the OVA {what} ({} bytes) at offset {off:#x}",
                    data.len()
                ),
                e,
            )
        })
    }

    /// Writes one member (header, data, padding) at `off`; returns the offset after it.
    fn put_member(&self, name: &str, data: &[u8], off: u64, mtime: u64) -> Result<u64> {
        let len = data.len() as u64;
        self.put(
            &tar_header(name, len, mtime)?,
            off,
            &format!("{name} header"),
        )?;
        let mut body = data.to_vec();
        body.resize(len.div_ceil(BLOCK) as usize * BLOCK as usize, 0);
        self.put(&body, off + BLOCK, name)?;
        Ok(off + BLOCK + body.len() as u64)
    }

    /// Writes the package; returns its length (every byte of it is written).
    fn assemble(&self, disk: &StreamSummary) -> Result<u64> {
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let disk_name = format!("{}-disk1.vmdk", self.base);
        let ovf_name = format!("{}.ovf", self.base);
        let mf_name = format!("{}.mf", self.base);
        let ovf = ovf_text(
            &OvfDisk {
                href: &disk_name,
                file_size: disk.file_size,
                capacity: self.size,
                populated: disk.populated_bytes,
            },
            &self.vmdk,
            &self.ova,
        );
        let disk_hash = disk.sha256.ok_or_else(|| {
            Error::Internal("OVA writer internal error: the disk was not hashed".into())
        })?;
        let mf = format!(
            "SHA256({ovf_name})= {}\nSHA256({disk_name})= {}\n",
            hex(&Sha256::digest(ovf.as_bytes())),
            hex(&disk_hash)
        );
        let mut off = self.put_member(&ovf_name, ovf.as_bytes(), 0, mtime)?;
        off = self.put_member(&mf_name, mf.as_bytes(), off, mtime)?;
        self.put(
            &tar_header(&disk_name, disk.file_size, mtime)?,
            off,
            &format!("{disk_name} header"),
        )?;
        off += BLOCK;
        let mut buf = vec![0u8; COPY_BUF];
        let mut pos = 0u64;
        while pos < disk.file_size {
            let n = (disk.file_size - pos).min(COPY_BUF as u64) as usize;
            self.scratch
                .read_exact_at(&mut buf[..n], pos)
                .map_err(|e| {
                    Error::io(
                        format!("reading {n} bytes of the scratch disk at offset {pos:#x}"),
                        e,
                    )
                })?;
            self.put(&buf[..n], off + pos, &disk_name)?;
            pos += n as u64;
        }
        off += disk.file_size.div_ceil(BLOCK) * BLOCK;
        // Padding of the last member plus the two zero blocks that end a tar, rounded up to
        // the 10 KiB record size GNU tar uses.
        let end = (off + 2 * BLOCK).div_ceil(20 * BLOCK) * 20 * BLOCK;
        let tail = disk.file_size.div_ceil(BLOCK) * BLOCK - disk.file_size;
        let zeros = vec![0u8; (end - off + tail) as usize];
        self.put(&zeros, off - tail, "end of archive")?;
        self.out
            .sync()
            .map_err(|e| Error::io("syncing the OVA package", e))?;
        Ok(end)
    }
}

impl ImageWriter for OvaWriter {
    fn format(&self) -> Format {
        Format::Ova
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn granularity(&self) -> u64 {
        crate::formats::vmdk::writer::GRAIN_SIZE
    }

    fn needs_sequential(&self) -> bool {
        true
    }

    fn compressor(&self) -> Option<Arc<dyn Compressor>> {
        self.stream.compressor()
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.stream.inner().write_at(buf, offset)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.stream.inner().write_zeroes(offset, len)
    }

    fn write_chunk(&mut self, chunk: &Chunk) -> Result<()> {
        self.stream.inner().write_chunk(chunk)
    }

    fn finish(mut self: Box<Self>) -> Result<WriteReport> {
        let summary = self.stream.finish_with_summary()?;
        let len = self.assemble(&summary)?;
        // The package is written whole: the disk's compressed grains, and metadata (the tar
        // headers and padding, the OVF, the manifest and the disk's own metadata).
        let compressed = summary.report.compressed;
        WriteReport {
            compressed,
            metadata: len - compressed,
            ..WriteReport::default()
        }
        .complete(&[self.out.as_ref()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_sanitised() {
        assert_eq!(xml_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(member_base_name("My VM/1"), "My_VM_1");
        assert_eq!(member_base_name(".hidden"), "v.hidden");
        assert_eq!(member_base_name(&"x".repeat(200)).len(), 80);
        let ova = OvaOptions {
            vm_name: "A <&> B".into(),
            ..Default::default()
        };
        let disk = OvfDisk {
            href: "d.vmdk",
            file_size: 1024,
            capacity: 1 << 20,
            populated: 65536,
        };
        let t = ovf_text(&disk, &VmdkWriteOptions::default(), &ova);
        assert!(t.contains("<Name>A &lt;&amp;&gt; B</Name>"), "{t}");
        assert!(t.contains("ovf:capacity=\"1048576\""));
        assert!(t.contains("<rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>"));
        assert!(t.contains("vmx-14"));
    }

    #[test]
    fn tar_headers_are_ustar() {
        let h = tar_header("a.ovf", 1234, 0).unwrap();
        assert_eq!(&h[257..263], b"ustar\0");
        assert_eq!(&h[..5], b"a.ovf");
        assert_eq!(&h[124..135], b"00000002322"); // 1234 in octal
    }
}
