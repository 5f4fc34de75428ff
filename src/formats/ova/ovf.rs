//! The OVF descriptor of an OVA package (DMTF DSP0243, OVF 1.x and 2.x): what the package
//! holds (`References`, `DiskSection`, `NetworkSection`) and the virtual machine it describes
//! (`VirtualSystem`: name, operating system, CPUs, memory, firmware, disks and their
//! controllers, network adapters).
//!
//! Elements and attributes are matched by local name whatever their namespace prefix, so OVF
//! 1.x (`http://schemas.dmtf.org/ovf/envelope/1`) and 2.x (`.../envelope/2`), VMware's `vmw:`
//! and VirtualBox's `vbox:` extensions, and writers that omit prefixes all read the same way.
//! OVF 2.x `StorageItem` (`sasd:`) and `EthernetPortItem` (`epasd:`) are read like `Item`.
//!
//! Hostile descriptors: the text is at most [`MAX_OVF_BYTES`]; a pre-scan refuses DTDs
//! (no entity expansion), nesting deeper than [`MAX_DEPTH`] and more than [`MAX_XMLNS`]
//! namespace declarations (each nested declaration copies the ones in scope in the XML
//! library, so they are bounded to keep that linear); the XML library then parses without
//! recursion under a node limit. Every walk below is iterative.

use roxmltree::{Document, Node, ParsingOptions};

use super::OvaError;
use crate::error::{Error, Result};

/// Largest OVF descriptor read, in bytes (real ones are a few KiB to a few hundred KiB).
pub const MAX_OVF_BYTES: u64 = 8 << 20;
/// Deepest element nesting accepted (real descriptors nest about 10 deep).
pub const MAX_DEPTH: usize = 256;
/// Most namespace declarations accepted in one descriptor.
pub const MAX_XMLNS: usize = 1024;
/// Most XML nodes (elements, text, comments) accepted.
const MAX_NODES: u32 = 1_000_000;
/// Most `File`, `Disk`, `VirtualSystem` and hardware items accepted (each far above what a
/// virtual machine has: VMware allows 256 disks); keeps every lookup below cheap.
pub const MAX_ENTRIES: usize = 10_000;

fn too_many(file: &str, what: &str) -> Error {
    ovf_error(file, format!("more than {MAX_ENTRIES} {what}"))
}

/// One `File` of the `References` section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OvfFile {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`: the member name inside the OVA.
    pub href: String,
    /// `ovf:size` in bytes, when given.
    pub size: Option<u64>,
    /// `ovf:compression` (e.g. `gzip`), when given and not `identity`.
    pub compression: Option<String>,
    /// `ovf:chunkSize`, when the file is split into chunks.
    pub chunk_size: Option<u64>,
}

/// One `Disk` of the `DiskSection`, in document order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OvfDisk {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// `ovf:fileRef`: the `File` holding the disk; `None` for a blank disk created at import.
    pub file_ref: Option<String>,
    /// The declared capacity in bytes (`ovf:capacity` times `ovf:capacityAllocationUnits`);
    /// `None` when the capacity is a `${property}` reference.
    pub capacity: Option<u64>,
    /// `ovf:capacity` and its units as written, e.g. `50 x byte * 2^30`.
    pub capacity_text: String,
    /// `ovf:format`, a URL naming the disk format (e.g. VMware's `...vmdk.html#streamOptimized`).
    pub format: Option<String>,
    /// `ovf:populatedSize` in bytes, when given.
    pub populated_size: Option<u64>,
}

/// A disk attached in the virtual hardware (`ResourceType` 17).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OvfDiskAttachment {
    /// The `diskId` its `HostResource` (`ovf:/disk/ID`) names.
    pub disk_id: String,
    /// The controller, e.g. `SCSI controller 0 (lsilogicsas), unit 0`.
    pub controller: Option<String>,
}

/// A network adapter (`ResourceType` 10).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OvfNic {
    /// The network it connects to (`Connection`).
    pub network: Option<String>,
    /// The adapter type (`ResourceSubType`, e.g. `E1000`, `VmxNet3`, `virtio`).
    pub adapter: Option<String>,
    /// Its name in the descriptor (`ElementName` or `Caption`).
    pub name: Option<String>,
}

/// A `VirtualSystem`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct OvfSystem {
    /// `ovf:id`.
    pub id: Option<String>,
    /// `Name`, else VirtualBox's machine name, else the id.
    pub name: Option<String>,
    /// `OperatingSystemSection` `ovf:id` (a CIM operating-system number, e.g. 101).
    pub os_id: Option<String>,
    /// The guest type: VMware's `vmw:osType` (e.g. `windows9Server64Guest`) or VirtualBox's
    /// `vbox:OSType` (e.g. `Ubuntu_64`).
    pub os_type: Option<String>,
    /// `OperatingSystemSection` `Description`.
    pub os_description: Option<String>,
    /// `VirtualSystemType`, e.g. `vmx-14` or `virtualbox-2.2`.
    pub hardware_family: Option<String>,
    /// Virtual CPUs.
    pub cpus: Option<u64>,
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
    /// `bios` or `efi`: VMware's `vmw:Config firmware`, or VirtualBox's `Firmware type`.
    pub firmware: Option<String>,
    /// Disks attached to controllers.
    pub disks: Vec<OvfDiskAttachment>,
    /// Network adapters.
    pub nics: Vec<OvfNic>,
}

/// A parsed OVF descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct OvfEnvelope {
    /// `1.x` or `2.x` (from the envelope namespace), or the `ovf:version` attribute.
    pub version: Option<String>,
    /// `References`.
    pub files: Vec<OvfFile>,
    /// `DiskSection`, in document order (disk 1 is the first).
    pub disks: Vec<OvfDisk>,
    /// `NetworkSection` network names.
    pub networks: Vec<String>,
    /// Every `VirtualSystem` (a `VirtualSystemCollection` holds several).
    pub systems: Vec<OvfSystem>,
}

impl OvfEnvelope {
    /// The `File` a disk is stored in (the first with its id).
    pub fn file_of(&self, disk: &OvfDisk) -> Option<&OvfFile> {
        let r = disk.file_ref.as_deref()?;
        self.files.iter().find(|f| f.id == r)
    }
}

fn ovf_error(file: &str, detail: impl Into<String>) -> Error {
    OvaError::Ovf {
        file: file.to_string(),
        detail: detail.into(),
    }
    .into()
}

fn line_of(text: &str, pos: usize) -> usize {
    text.as_bytes()[..pos.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Bounds what the XML library will be asked to build (see the module documentation).
fn prescan(text: &str, file: &str) -> Result<()> {
    let b = text.as_bytes();
    let skip_to = |from: usize, end: &str| -> usize {
        text[from..]
            .find(end)
            .map(|p| from + p + end.len())
            .unwrap_or(b.len())
    };
    let mut i = 0;
    let mut depth = 0usize;
    let mut xmlns = 0usize;
    while let Some(p) = text[i..].find('<') {
        let at = i + p;
        i = at + 1;
        let rest = &b[i..];
        if rest.starts_with(b"!--") {
            i = skip_to(i, "-->");
        } else if rest.starts_with(b"![CDATA[") {
            i = skip_to(i, "]]>");
        } else if rest.starts_with(b"?") {
            i = skip_to(i, "?>");
        } else if rest.starts_with(b"!") {
            return Err(ovf_error(
                file,
                format!(
                    "line {}: a document type declaration (DTD) is not accepted in an OVF \
                     descriptor (entities could expand without bound)",
                    line_of(text, at)
                ),
            ));
        } else if rest.starts_with(b"/") {
            depth = depth.saturating_sub(1);
            i = skip_to(i, ">");
        } else {
            let start = i;
            let mut quote = None;
            while i < b.len() {
                let c = b[i];
                match quote {
                    Some(q) if c == q => quote = None,
                    Some(_) => {}
                    None if c == b'"' || c == b'\'' => quote = Some(c),
                    None if c == b'>' => break,
                    None => {}
                }
                i += 1;
            }
            let tag = &text[start..i.min(b.len())];
            xmlns += tag.matches("xmlns").count();
            if xmlns > MAX_XMLNS {
                return Err(ovf_error(
                    file,
                    format!(
                        "line {}: more than {MAX_XMLNS} namespace declarations",
                        line_of(text, at)
                    ),
                ));
            }
            if !tag.ends_with('/') {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ovf_error(
                        file,
                        format!(
                            "line {}: elements nested more than {MAX_DEPTH} deep",
                            line_of(text, at)
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The attribute `local` of `n` in any namespace (the OVF namespace first).
fn attr<'a>(n: Node<'a, '_>, local: &str) -> Option<&'a str> {
    let mut other = None;
    for a in n.attributes() {
        if a.name() == local {
            match a.namespace() {
                Some(ns) if ns.starts_with("http://schemas.dmtf.org/ovf/envelope/") => {
                    return Some(a.value());
                }
                _ => other = other.or(Some(a.value())),
            }
        }
    }
    other
}

fn children<'a, 'i>(n: Node<'a, 'i>, local: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    n.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == local)
}

fn child<'a, 'i>(n: Node<'a, 'i>, local: &'a str) -> Option<Node<'a, 'i>> {
    children(n, local).next()
}

/// The trimmed text of the first child element `local` (empty text is `None`).
fn child_text(n: Node<'_, '_>, local: &str) -> Option<String> {
    let c = child(n, local)?;
    let t: String = c
        .children()
        .filter(|x| x.is_text())
        .filter_map(|x| x.text())
        .collect();
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn descendants<'a, 'i>(n: Node<'a, 'i>, local: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    n.descendants()
        .filter(move |c| c.is_element() && c.tag_name().name() == local)
}

/// The multiplier of an allocation-units string: `byte`, `byte * 2^20`, `byte*10^3`,
/// `KiloBytes`, `MegaBytes`, `GigaBytes`, `TeraBytes` (binary multiples, as VirtualBox means
/// them), `KB`, `MB`, `GB`, `TB`.
pub fn parse_units(units: &str) -> Option<u64> {
    let u: String = units
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    match u.as_str() {
        "" | "byte" | "bytes" => return Some(1),
        "kilobytes" | "kb" | "kib" => return Some(1 << 10),
        "megabytes" | "mb" | "mib" => return Some(1 << 20),
        "gigabytes" | "gb" | "gib" => return Some(1 << 30),
        "terabytes" | "tb" | "tib" => return Some(1 << 40),
        _ => {}
    }
    let rest = u.strip_prefix("byte*")?;
    let (base, exp) = rest.split_once('^')?;
    let base: u64 = base.parse().ok()?;
    let exp: u32 = exp.parse().ok()?;
    if base != 2 && base != 10 {
        return None;
    }
    base.checked_pow(exp)
}

fn parse_u64(file: &str, what: &str, v: &str) -> Result<u64> {
    v.trim()
        .parse::<u64>()
        .map_err(|_| ovf_error(file, format!("{what} '{v}' is not a whole number of bytes")))
}

/// One hardware item: the text of its fields by local name.
struct Item<'a, 'i> {
    node: Node<'a, 'i>,
}

impl Item<'_, '_> {
    fn get(&self, field: &str) -> Option<String> {
        child_text(self.node, field)
    }

    fn resource_type(&self) -> Option<u32> {
        self.get("ResourceType")?.parse().ok()
    }
}

fn controller_name(item: &Item<'_, '_>) -> String {
    let sub = item.get("ResourceSubType");
    let kind = match item.resource_type() {
        Some(5) => "IDE",
        Some(6) => "SCSI",
        Some(7) => "Fibre Channel",
        Some(20)
            if sub
                .as_deref()
                .is_some_and(|s| s.to_ascii_lowercase().contains("nvme")) =>
        {
            "NVMe"
        }
        Some(20) => "SATA",
        _ => "storage",
    };
    let mut s = format!("{kind} controller");
    if let Some(a) = item.get("Address") {
        s.push(' ');
        s.push_str(&a);
    }
    if let Some(sub) = sub {
        s.push_str(&format!(" ({sub})"));
    }
    s
}

fn parse_system(vs: Node<'_, '_>, file: &str) -> Result<OvfSystem> {
    let mut sys = OvfSystem {
        id: attr(vs, "id").map(str::to_string),
        name: child_text(vs, "Name"),
        ..OvfSystem::default()
    };
    let vbox_machine = child(vs, "Machine");
    if sys.name.is_none() {
        sys.name = vbox_machine
            .and_then(|m| attr(m, "name"))
            .map(str::to_string)
            .or_else(|| sys.id.clone());
    }
    if let Some(os) = child(vs, "OperatingSystemSection") {
        sys.os_id = attr(os, "id").map(str::to_string);
        sys.os_type = attr(os, "osType")
            .map(str::to_string)
            .or_else(|| child_text(os, "OSType"));
        sys.os_description = child_text(os, "Description");
    }
    if sys.os_type.is_none() {
        sys.os_type = vbox_machine
            .and_then(|m| attr(m, "OSType"))
            .map(str::to_string);
    }
    // Firmware: VMware's vmw:Config / vmw:ExtraConfig key "firmware", else VirtualBox's
    // machine configuration <Firmware type="EFI"/> (BIOS, EFI, EFI32, EFI64, EFIDUAL).
    sys.firmware = vs
        .descendants()
        .filter(|n| n.is_element() && matches!(n.tag_name().name(), "Config" | "ExtraConfig"))
        .find(|n| attr(*n, "key") == Some("firmware"))
        .and_then(|n| attr(n, "value"))
        .map(|v| v.trim().to_ascii_lowercase())
        .or_else(|| {
            let m = vbox_machine?;
            let t = descendants(m, "Firmware").find_map(|f| attr(f, "type"))?;
            let t = t.trim().to_ascii_lowercase();
            Some(if t.starts_with("efi") {
                "efi".into()
            } else {
                t
            })
        });
    let Some(hw) = child(vs, "VirtualHardwareSection") else {
        return Ok(sys);
    };
    if let Some(s) = child(hw, "System") {
        sys.hardware_family = child_text(s, "VirtualSystemType");
    }
    let items: Vec<Item<'_, '_>> = hw
        .children()
        .filter(|c| {
            c.is_element()
                && matches!(
                    c.tag_name().name(),
                    "Item" | "StorageItem" | "EthernetPortItem"
                )
        })
        .map(|node| Item { node })
        .collect();
    if items.len() > MAX_ENTRIES {
        return Err(too_many(file, "hardware items in a VirtualHardwareSection"));
    }
    // Controllers by InstanceID, for the disks' Parent.
    let mut by_instance: std::collections::HashMap<String, usize> =
        std::collections::HashMap::new();
    for (i, it) in items.iter().enumerate() {
        if let Some(id) = it.get("InstanceID") {
            by_instance.entry(id).or_insert(i);
        }
    }
    for it in &items {
        match it.resource_type() {
            Some(3) => {
                if let Some(q) = it.get("VirtualQuantity") {
                    sys.cpus = Some(parse_u64(file, "the CPU count", &q)?);
                }
            }
            Some(4) => {
                if let Some(q) = it.get("VirtualQuantity") {
                    let n = parse_u64(file, "the memory size", &q)?;
                    let units = it.get("AllocationUnits").unwrap_or_else(|| "MB".into());
                    let m = parse_units(&units).ok_or_else(|| {
                        ovf_error(file, format!("unknown memory allocation units '{units}'"))
                    })?;
                    sys.memory_bytes = Some(n.checked_mul(m).ok_or_else(|| {
                        ovf_error(file, format!("memory size {n} x {units} overflows"))
                    })?);
                }
            }
            Some(10) => sys.nics.push(OvfNic {
                network: it.get("Connection"),
                adapter: it.get("ResourceSubType"),
                name: it.get("ElementName").or_else(|| it.get("Caption")),
            }),
            Some(17) => {
                let Some(host) = it.get("HostResource") else {
                    continue;
                };
                let Some(disk_id) = host.rsplit_once("/disk/").map(|(_, id)| id.to_string()) else {
                    continue;
                };
                let parent = it.get("Parent");
                let controller = parent
                    .as_ref()
                    .and_then(|p| {
                        items
                            .iter()
                            .find(|c| c.get("InstanceID").as_ref() == Some(p))
                    })
                    .map(controller_name)
                    .map(|c| match it.get("AddressOnParent") {
                        Some(u) => format!("{c}, unit {u}"),
                        None => c,
                    });
                sys.disks.push(OvfDiskAttachment {
                    disk_id,
                    controller,
                });
            }
            _ => {}
        }
    }
    Ok(sys)
}

/// Parses an OVF descriptor; `file` is its member name, for messages.
pub fn parse_ovf(bytes: &[u8], file: &str) -> Result<OvfEnvelope> {
    if bytes.len() as u64 > MAX_OVF_BYTES {
        return Err(ovf_error(
            file,
            format!(
                "{} bytes, more than the {MAX_OVF_BYTES} accepted",
                bytes.len()
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ovf_error(
            file,
            format!(
                "not UTF-8 text (byte offset {}, line {})",
                e.valid_up_to(),
                bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1
            ),
        )
    })?;
    prescan(text, file)?;
    let doc = Document::parse_with_options(
        text,
        ParsingOptions {
            allow_dtd: false,
            nodes_limit: MAX_NODES,
        },
    )
    .map_err(|e| ovf_error(file, format!("not well-formed XML: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Envelope" {
        return Err(ovf_error(
            file,
            format!(
                "the root element is <{}>, not an OVF <Envelope>",
                root.tag_name().name()
            ),
        ));
    }
    let version = match root.tag_name().namespace() {
        Some("http://schemas.dmtf.org/ovf/envelope/1") => Some("1.x".to_string()),
        Some("http://schemas.dmtf.org/ovf/envelope/2") => Some("2.x".to_string()),
        _ => attr(root, "version").map(str::to_string),
    };
    let mut env = OvfEnvelope {
        version,
        ..OvfEnvelope::default()
    };
    if let Some(refs) = child(root, "References") {
        for f in children(refs, "File") {
            if env.files.len() >= MAX_ENTRIES {
                return Err(too_many(file, "References/File elements"));
            }
            let id =
                attr(f, "id").ok_or_else(|| ovf_error(file, "a References/File has no ovf:id"))?;
            let href = attr(f, "href").ok_or_else(|| {
                ovf_error(file, format!("References/File '{id}' has no ovf:href"))
            })?;
            let size = attr(f, "size")
                .map(|s| parse_u64(file, &format!("the ovf:size of file '{href}'"), s))
                .transpose()?;
            let chunk_size = attr(f, "chunkSize")
                .map(|s| parse_u64(file, &format!("the ovf:chunkSize of file '{href}'"), s))
                .transpose()?;
            env.files.push(OvfFile {
                id: id.to_string(),
                href: href.to_string(),
                size,
                compression: attr(f, "compression")
                    .map(str::trim)
                    .filter(|c| !c.is_empty() && *c != "identity")
                    .map(str::to_string),
                chunk_size,
            });
        }
    }
    if let Some(ds) = child(root, "DiskSection") {
        for d in children(ds, "Disk") {
            if env.disks.len() >= MAX_ENTRIES {
                return Err(too_many(file, "DiskSection/Disk elements"));
            }
            let disk_id = attr(d, "diskId")
                .ok_or_else(|| ovf_error(file, "a DiskSection/Disk has no ovf:diskId"))?
                .to_string();
            let cap = attr(d, "capacity")
                .ok_or_else(|| ovf_error(file, format!("Disk '{disk_id}' has no ovf:capacity")))?;
            let units = attr(d, "capacityAllocationUnits").unwrap_or("byte");
            let capacity_text = if units == "byte" {
                cap.to_string()
            } else {
                format!("{cap} x {units}")
            };
            let capacity = if cap.trim_start().starts_with("${") {
                None
            } else {
                let n = parse_u64(file, &format!("the ovf:capacity of disk '{disk_id}'"), cap)?;
                let m = parse_units(units).ok_or_else(|| {
                    ovf_error(
                        file,
                        format!("disk '{disk_id}': unknown ovf:capacityAllocationUnits '{units}'"),
                    )
                })?;
                Some(n.checked_mul(m).ok_or_else(|| {
                    ovf_error(
                        file,
                        format!("disk '{disk_id}': capacity {capacity_text} overflows 64 bits"),
                    )
                })?)
            };
            let populated_size = attr(d, "populatedSize")
                .map(|s| {
                    parse_u64(
                        file,
                        &format!("the ovf:populatedSize of disk '{disk_id}'"),
                        s,
                    )
                })
                .transpose()?;
            env.disks.push(OvfDisk {
                disk_id,
                file_ref: attr(d, "fileRef").map(str::to_string),
                capacity,
                capacity_text,
                format: attr(d, "format").map(str::to_string),
                populated_size,
            });
        }
    }
    if let Some(ns) = child(root, "NetworkSection") {
        env.networks = children(ns, "Network")
            .filter_map(|n| attr(n, "name"))
            .take(MAX_ENTRIES)
            .map(str::to_string)
            .collect();
    }
    for vs in descendants(root, "VirtualSystem") {
        if env.systems.len() >= MAX_ENTRIES {
            return Err(too_many(file, "VirtualSystem elements"));
        }
        env.systems.push(parse_system(vs, file)?);
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// VMware ovftool style (OVF 1.0), trimmed from the corpus' cdi_fake_vmware_ovf.ova.
    const VMWARE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-1750787" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:href="disk1.vmdk" ovf:id="file1" ovf:size="7804077568"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="50" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="18975752192"/>
  </DiskSection>
  <NetworkSection><Network ovf:name="PG-VLAN60"/></NetworkSection>
  <VirtualSystem ovf:id="2K8R2EESP1_2_Medium">
    <Name>2K8R2EESP1_2_Medium</Name>
    <OperatingSystemSection ovf:id="103" vmw:osType="windows7Server64Guest">
      <Description>Microsoft Windows Server 2008 R2 (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <System><vssd:VirtualSystemType>vmx-10</vssd:VirtualSystemType></System>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>lsilogicsas</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>9</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Connection>PG-VLAN60</rasd:Connection><rasd:ElementName>Network adapter 1</rasd:ElementName><rasd:InstanceID>11</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"#;

    /// VirtualBox style (OVF 2.0: StorageItem, EthernetPortItem, vbox:Machine).
    const VBOX: &str = r#"<?xml version="1.0"?>
<Envelope ovf:version="2.0" xmlns="http://schemas.dmtf.org/ovf/envelope/2" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vbox="http://www.virtualbox.org/ovf/machine" xmlns:epasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData.xsd" xmlns:sasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData.xsd">
  <References>
    <File ovf:id="file1" ovf:href="web-disk001.vmdk"/>
    <File ovf:id="file2" ovf:href="web-disk002.vmdk"/>
  </References>
  <DiskSection>
    <Disk ovf:capacity="10737418240" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:capacity="2048" ovf:capacityAllocationUnits="MegaBytes" ovf:diskId="vmdisk2" ovf:fileRef="file2"/>
  </DiskSection>
  <VirtualSystem ovf:id="web">
    <OperatingSystemSection ovf:id="96">
      <Description>Debian_64</Description>
      <vbox:OSType ovf:required="false">Debian_64</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <System><vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType></System>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceSubType>AHCI</rasd:ResourceSubType><rasd:ResourceType>20</rasd:ResourceType></Item>
      <StorageItem><sasd:AddressOnParent>0</sasd:AddressOnParent><sasd:HostResource>/disk/vmdisk1</sasd:HostResource><sasd:InstanceID>8</sasd:InstanceID><sasd:Parent>5</sasd:Parent><sasd:ResourceType>17</sasd:ResourceType></StorageItem>
      <StorageItem><sasd:AddressOnParent>1</sasd:AddressOnParent><sasd:HostResource>/disk/vmdisk2</sasd:HostResource><sasd:InstanceID>9</sasd:InstanceID><sasd:Parent>5</sasd:Parent><sasd:ResourceType>17</sasd:ResourceType></StorageItem>
      <EthernetPortItem><epasd:Caption>ethernet adapter on 'NAT'</epasd:Caption><epasd:Connection>NAT</epasd:Connection><epasd:InstanceID>10</epasd:InstanceID><epasd:ResourceSubType>virtio</epasd:ResourceSubType><epasd:ResourceType>10</epasd:ResourceType></EthernetPortItem>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.16-linux" name="web01" OSType="Debian_64">
      <Hardware><Memory RAMSize="2048"/><Firmware type="EFI"/></Hardware>
    </vbox:Machine>
  </VirtualSystem>
</Envelope>"#;

    #[test]
    fn reads_a_vmware_descriptor() {
        let e = parse_ovf(VMWARE.as_bytes(), "fake.ovf").unwrap();
        assert_eq!(e.version.as_deref(), Some("1.x"));
        assert_eq!(e.files[0].href, "disk1.vmdk");
        assert_eq!(e.files[0].size, Some(7804077568));
        let d = &e.disks[0];
        assert_eq!(d.capacity, Some(50 << 30));
        assert_eq!(d.capacity_text, "50 x byte * 2^30");
        assert_eq!(d.populated_size, Some(18975752192));
        assert_eq!(e.file_of(d).unwrap().href, "disk1.vmdk");
        assert_eq!(e.networks, ["PG-VLAN60"]);
        let s = &e.systems[0];
        assert_eq!(s.name.as_deref(), Some("2K8R2EESP1_2_Medium"));
        assert_eq!(s.os_id.as_deref(), Some("103"));
        assert_eq!(s.os_type.as_deref(), Some("windows7Server64Guest"));
        assert_eq!(
            s.os_description.as_deref(),
            Some("Microsoft Windows Server 2008 R2 (64-bit)")
        );
        assert_eq!(s.hardware_family.as_deref(), Some("vmx-10"));
        assert_eq!((s.cpus, s.memory_bytes), (Some(1), Some(1 << 30)));
        assert_eq!(s.firmware.as_deref(), Some("efi"));
        assert_eq!(s.disks.len(), 1);
        assert_eq!(s.disks[0].disk_id, "vmdisk1");
        assert_eq!(
            s.disks[0].controller.as_deref(),
            Some("SCSI controller 0 (lsilogicsas), unit 0")
        );
        assert_eq!(
            s.nics,
            [OvfNic {
                network: Some("PG-VLAN60".into()),
                adapter: Some("E1000".into()),
                name: Some("Network adapter 1".into()),
            }]
        );
    }

    #[test]
    fn reads_a_virtualbox_descriptor() {
        let e = parse_ovf(VBOX.as_bytes(), "web.ovf").unwrap();
        assert_eq!(e.version.as_deref(), Some("2.x"));
        assert_eq!(e.disks.len(), 2);
        assert_eq!(e.disks[0].capacity, Some(10 << 30));
        assert_eq!(e.disks[1].capacity, Some(2048 << 20));
        assert_eq!(e.file_of(&e.disks[1]).unwrap().href, "web-disk002.vmdk");
        let s = &e.systems[0];
        assert_eq!(s.name.as_deref(), Some("web01"));
        assert_eq!(s.os_type.as_deref(), Some("Debian_64"));
        assert_eq!((s.cpus, s.memory_bytes), (Some(2), Some(2048 << 20)));
        assert_eq!(s.firmware.as_deref(), Some("efi"));
        assert_eq!(s.disks[1].disk_id, "vmdisk2");
        assert_eq!(
            s.disks[1].controller.as_deref(),
            Some("SATA controller 0 (AHCI), unit 1")
        );
        assert_eq!(s.nics[0].adapter.as_deref(), Some("virtio"));
        assert_eq!(s.nics[0].network.as_deref(), Some("NAT"));
        assert_eq!(s.nics[0].name.as_deref(), Some("ethernet adapter on 'NAT'"));
    }

    #[test]
    fn units() {
        assert_eq!(parse_units("byte * 2^30"), Some(1 << 30));
        assert_eq!(parse_units("byte*10^3"), Some(1000));
        assert_eq!(parse_units("MegaBytes"), Some(1 << 20));
        assert_eq!(parse_units("byte"), Some(1));
        assert_eq!(parse_units("byte * 3^2"), None);
        assert_eq!(parse_units("byte * 2^99"), None);
        assert_eq!(parse_units("furlongs"), None);
    }

    #[test]
    fn property_capacity_is_unknown_not_an_error() {
        let t = r#"<Envelope xmlns:ovf="o"><DiskSection><Disk ovf:diskId="d" ovf:capacity="${size}"/></DiskSection></Envelope>"#;
        let e = parse_ovf(t.as_bytes(), "x.ovf").unwrap();
        assert_eq!(e.disks[0].capacity, None);
        assert_eq!(e.disks[0].file_ref, None);
    }

    #[test]
    fn hostile_and_malformed_descriptors_are_errors() {
        let bomb = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>
<Envelope>&lol2;</Envelope>"#;
        let deep = format!(
            "<Envelope>{}{}</Envelope>",
            "<a>".repeat(100_000),
            "</a>".repeat(100_000)
        );
        let ns = format!(
            "<Envelope>{}</Envelope>",
            (0..2000)
                .map(|i| format!("<a xmlns:p{i}=\"u{i}\"/>"))
                .collect::<String>()
        );
        let cases: Vec<(String, &str)> = vec![
            (bomb.into(), "document type declaration"),
            (deep, "nested more than 256 deep"),
            (ns, "namespace declarations"),
            ("<Envelope><Disk></Envelope>".into(), "not well-formed XML"),
            ("<Other/>".into(), "not an OVF <Envelope>"),
            (
                r#"<Envelope><References><File ovf:id="f"/></References></Envelope>"#.into(),
                "unknown namespace prefix 'ovf'",
            ),
            (
                r#"<Envelope xmlns:ovf="o"><DiskSection><Disk ovf:diskId="d" ovf:capacity="12x"/></DiskSection></Envelope>"#.into(),
                "ovf:capacity of disk 'd'",
            ),
            (
                r#"<Envelope xmlns:ovf="o"><DiskSection><Disk ovf:diskId="d" ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^70"/></DiskSection></Envelope>"#.into(),
                "unknown ovf:capacityAllocationUnits",
            ),
            (
                r#"<Envelope xmlns:ovf="o"><DiskSection><Disk ovf:diskId="d" ovf:capacity="18446744073709551615" ovf:capacityAllocationUnits="byte * 2^10"/></DiskSection></Envelope>"#.into(),
                "overflows",
            ),
            (
                r#"<Envelope xmlns:ovf="o"><References><File ovf:id="f"/></References></Envelope>"#.into(),
                "has no ovf:href",
            ),
        ];
        for (text, want) in cases {
            let e = parse_ovf(text.as_bytes(), "bad.ovf").unwrap_err();
            let s = e.to_string();
            assert!(s.contains(want) && s.contains("bad.ovf"), "{want}: {s}");
            assert_eq!(e.kind(), crate::ErrorKind::InvalidFormat, "{s}");
        }
        let e = parse_ovf(b"<Envelope>\xff</Envelope>", "bad.ovf").unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        // A huge flat document is bounded by the node limit, not memory.
        let flat = format!("<Envelope>{}</Envelope>", "<a/>".repeat(1_100_000));
        let e = parse_ovf(flat.as_bytes(), "bad.ovf").unwrap_err();
        assert!(e.to_string().contains("bad.ovf"), "{e}");
        // Many items that all name a parent: linear, not quadratic; too many: an error.
        let items = |n: usize| {
            let mut t =
                String::from("<Envelope xmlns:rasd=\"r\"><VirtualSystem><VirtualHardwareSection>");
            for i in 0..n {
                t += &format!(
                    "<Item><rasd:InstanceID>{i}</rasd:InstanceID><rasd:Parent>{}</rasd:Parent>\
                     <rasd:HostResource>ovf:/disk/d{i}</rasd:HostResource>\
                     <rasd:ResourceType>17</rasd:ResourceType></Item>",
                    i / 2
                );
            }
            t + "</VirtualHardwareSection></VirtualSystem></Envelope>"
        };
        let e = parse_ovf(items(MAX_ENTRIES).as_bytes(), "many.ovf").unwrap();
        assert_eq!(e.systems[0].disks.len(), MAX_ENTRIES);
        let e = parse_ovf(items(MAX_ENTRIES + 1).as_bytes(), "many.ovf").unwrap_err();
        assert!(
            e.to_string().contains("more than 10000 hardware items"),
            "{e}"
        );
        // Comments, CDATA and '>' inside attribute values do not confuse the pre-scan.
        let ok = r#"<?xml version="1.0"?><!-- <<<< --><Envelope a="x>y"><![CDATA[<<<]]><DiskSection/></Envelope>"#;
        assert!(parse_ovf(ok.as_bytes(), "ok.ovf").is_ok());
    }
}
