//! Network configuration bound to MAC addresses: udev persistent-net rules, ifcfg files (Red
//! Hat, SUSE), netplan, NetworkManager keyfiles, systemd-networkd `.network` and `.link`
//! files, Debian's `/etc/network/interfaces`. The new platform gives the interfaces new MAC
//! addresses: a configuration matching the old ones applies to nothing, and a udev rule
//! naming the old one `eth0` makes the new one `eth1`.

use crate::error::Result;
use crate::guest::linuxcfg::device::unquote;
use crate::guest::linuxcfg::{FsRole, LineEdit, Planner, Reader, edit_lines, lines, mac};

/// Where udev rules written by the administrator (and the persistent-net generator) are.
const UDEV_DIR: &str = "/etc/udev/rules.d";
/// Red Hat's initscripts / NetworkManager ifcfg-rh folder.
const RH_IFCFG_DIR: &str = "/etc/sysconfig/network-scripts";
/// SUSE's wicked folder.
const SUSE_IFCFG_DIR: &str = "/etc/sysconfig/network";
/// netplan's folder in /etc.
const NETPLAN_DIR: &str = "/etc/netplan";
/// NetworkManager keyfiles.
const NM_DIR: &str = "/etc/NetworkManager/system-connections";
/// systemd-networkd in /etc.
const NETWORKD_DIR: &str = "/etc/systemd/network";
/// Debian's ifupdown.
const INTERFACES: &str = "/etc/network/interfaces";
/// Debian's ifupdown, included files.
const INTERFACES_DIR: &str = "/etc/network/interfaces.d";

/// Which configuration system a [`NetConfig`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetSource {
    /// A udev rule (`/etc/udev/rules.d/70-persistent-net.rules`) naming an interface by MAC.
    UdevRule,
    /// `/etc/sysconfig/network-scripts/ifcfg-*` (Red Hat, CentOS, Fedora).
    Ifcfg,
    /// `/etc/sysconfig/network/ifcfg-*` (SUSE).
    SuseIfcfg,
    /// `/etc/netplan/*.yaml` (Ubuntu).
    Netplan,
    /// `/etc/NetworkManager/system-connections/*`.
    NmKeyfile,
    /// `/etc/systemd/network/*.network`.
    NetworkdNetwork,
    /// `/etc/systemd/network/*.link`.
    NetworkdLink,
    /// `/etc/network/interfaces` and `/etc/network/interfaces.d/*` (Debian, older Ubuntu).
    Interfaces,
}

/// How an interface gets its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddrMethod {
    /// DHCP (v4 or v6).
    Dhcp,
    /// Static addresses.
    Static,
    /// Brought up without an address (`manual`, `none`, `disabled`).
    Manual,
    /// Not said, or not understood.
    Unknown,
}

/// One interface (or rule) of a network configuration file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NetConfig {
    /// The configuration system.
    pub source: NetSource,
    /// The file, on the root file system.
    pub path: String,
    /// The interface name it configures or gives, when it says.
    pub interface: Option<String>,
    /// The MAC addresses it matches or sets (lower case).
    pub macs: Vec<String>,
    /// How the interface gets its address ([`AddrMethod::Unknown`] for udev rules and
    /// `.link` files, which do not say).
    pub method: AddrMethod,
}

/// Whether a file name in a configuration folder is a backup the tools skip.
fn backup(name: &str) -> bool {
    name.ends_with('~')
        || [
            ".bak",
            ".orig",
            ".old",
            ".rpmnew",
            ".rpmsave",
            ".dpkg-old",
            ".dpkg-dist",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

pub(crate) fn read(r: &mut Reader<'_>) -> Result<()> {
    for name in r.list(FsRole::Root, UDEV_DIR)? {
        if !name.ends_with(".rules") {
            continue;
        }
        let path = format!("{UDEV_DIR}/{name}");
        if name.contains("persistent-net-generator") {
            r.cfg.notes.push(format!(
                "{path}: the persistent-net generator is enabled: it writes rules for the \
                 new interfaces at the next boot"
            ));
            continue;
        }
        if let Some(t) = r.text(FsRole::Root, &path)? {
            r.cfg.network.extend(parse_udev(&path, &t));
        }
    }
    for (dir, source) in [
        (RH_IFCFG_DIR, NetSource::Ifcfg),
        (SUSE_IFCFG_DIR, NetSource::SuseIfcfg),
    ] {
        for name in r.list(FsRole::Root, dir)? {
            if !name.starts_with("ifcfg-") || name == "ifcfg-lo" || backup(&name) {
                continue;
            }
            let path = format!("{dir}/{name}");
            if let Some(t) = r.text(FsRole::Root, &path)? {
                r.cfg
                    .network
                    .push(parse_ifcfg(source, &path, &name["ifcfg-".len()..], &t));
            }
        }
    }
    for name in r.list(FsRole::Root, NETPLAN_DIR)? {
        if !name.ends_with(".yaml") {
            continue;
        }
        let path = format!("{NETPLAN_DIR}/{name}");
        if let Some(t) = r.text(FsRole::Root, &path)? {
            r.cfg.network.extend(parse_netplan(&path, &t));
        }
    }
    for name in r.list(FsRole::Root, NM_DIR)? {
        if backup(&name) {
            continue;
        }
        let path = format!("{NM_DIR}/{name}");
        if let Some(t) = r.text(FsRole::Root, &path)? {
            r.cfg.network.push(parse_keyfile(&path, &t));
        }
    }
    for name in r.list(FsRole::Root, NETWORKD_DIR)? {
        let path = format!("{NETWORKD_DIR}/{name}");
        let link = name.ends_with(".link");
        if !(link || name.ends_with(".network")) {
            continue;
        }
        if let Some(t) = r.text(FsRole::Root, &path)? {
            r.cfg.network.push(parse_networkd(&path, link, &t));
        }
    }
    let mut files = vec![INTERFACES.to_string()];
    for name in r.list(FsRole::Root, INTERFACES_DIR)? {
        if !backup(&name) {
            files.push(format!("{INTERFACES_DIR}/{name}"));
        }
    }
    for path in files {
        if let Some(t) = r.text(FsRole::Root, &path)? {
            r.cfg.network.extend(parse_interfaces(&path, &t));
        }
    }
    Ok(())
}

// ---- udev rules ----

/// The quoted value of `key` with operator `op` (`==`, `=`) in a udev rule line: the key must
/// start the line or follow a space or comma.
fn udev_value(line: &str, key: &str, op: &str) -> Option<String> {
    let pat = format!("{key}{op}\"");
    let mut from = 0;
    while let Some(i) = line[from..].find(&pat) {
        let at = from + i;
        let ok = at == 0 || matches!(line.as_bytes()[at - 1], b' ' | b',' | b'\t');
        let vstart = at + pat.len();
        if ok {
            let len = line[vstart..].find('"')?;
            return Some(line[vstart..vstart + len].to_string());
        }
        from = vstart;
    }
    None
}

/// The rules of a udev rules file that match a MAC address.
fn parse_udev(path: &str, text: &str) -> Vec<NetConfig> {
    let mut out = Vec::new();
    for (l, _) in lines(text) {
        let t = l.trim();
        if t.starts_with('#') {
            continue;
        }
        let Some(m) = udev_value(t, "ATTR{address}", "==").and_then(|v| mac(&v)) else {
            continue;
        };
        out.push(NetConfig {
            source: NetSource::UdevRule,
            path: path.to_string(),
            interface: udev_value(t, "NAME", "="),
            macs: vec![m],
            method: AddrMethod::Unknown,
        });
    }
    out
}

// ---- ifcfg ----

/// `KEY=value` of a shell-style line (`export` and quotes removed); `None` for comments.
fn shell_kv(line: &str) -> Option<(&str, &str)> {
    let t = line.trim();
    if t.starts_with('#') {
        return None;
    }
    let t = t.strip_prefix("export ").unwrap_or(t);
    let (k, v) = t.split_once('=')?;
    let k = k.trim();
    if k.is_empty() || !k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return None;
    }
    Some((k, unquote(v.trim())))
}

/// The keys of an ifcfg file that bind it to a MAC address (`HWADDR` matches, `MACADDR` and
/// SUSE's `LLADDR` set it).
const IFCFG_MAC_KEYS: [&str; 3] = ["HWADDR", "MACADDR", "LLADDR"];

fn parse_ifcfg(source: NetSource, path: &str, suffix: &str, text: &str) -> NetConfig {
    let mut device = None;
    let mut macs = Vec::new();
    let mut proto = None;
    let mut has_ip = false;
    for (l, _) in lines(text) {
        let Some((k, v)) = shell_kv(l) else { continue };
        match k {
            "DEVICE" if !v.is_empty() => device = Some(v.to_string()),
            "BOOTPROTO" => proto = Some(v.to_ascii_lowercase()),
            k if IFCFG_MAC_KEYS.contains(&k) => macs.extend(mac(v)),
            k if (k.starts_with("IPADDR") || k == "PREFIXLEN") && !v.is_empty() => has_ip = true,
            _ => {}
        }
    }
    let method = match proto.as_deref() {
        Some(p) if p.starts_with("dhcp") || p == "bootp" || p == "auto6" => AddrMethod::Dhcp,
        Some("static") => AddrMethod::Static,
        _ if has_ip => AddrMethod::Static,
        Some("none") | Some("") => AddrMethod::Manual,
        _ => AddrMethod::Unknown,
    };
    NetConfig {
        source,
        path: path.to_string(),
        interface: device.or_else(|| Some(suffix.to_string())),
        macs,
        method,
    }
}

fn plan_ifcfg(p: &mut Planner<'_>, path: &str) {
    let Some(text) = p.text(FsRole::Root, path) else {
        return;
    };
    let mut dropped = Vec::new();
    let after = edit_lines(&text, |_, l| match shell_kv(l) {
        Some((k, v)) if IFCFG_MAC_KEYS.contains(&k) && !v.is_empty() => {
            dropped.push(k.to_string());
            LineEdit::Drop
        }
        _ => LineEdit::Keep,
    });
    if !dropped.is_empty() {
        p.replace(
            FsRole::Root,
            path,
            after,
            format!(
                "{} bind{} the interface to the old MAC address",
                dropped.join(" and "),
                if dropped.len() == 1 { "s" } else { "" }
            ),
        );
    }
}

// ---- INI files (keyfiles, networkd) ----

/// The section header of an INI line (`[Match]` -> `Match`).
fn section(line: &str) -> Option<&str> {
    let t = line.trim();
    t.strip_prefix('[')?.strip_suffix(']').map(str::trim)
}

/// `key=value` of an INI line, trimmed; `None` for comments and sections.
fn ini_kv(line: &str) -> Option<(&str, &str)> {
    let t = line.trim();
    if t.starts_with('#') || t.starts_with(';') || t.starts_with('[') {
        return None;
    }
    let (k, v) = t.split_once('=')?;
    Some((k.trim(), v.trim()))
}

/// The NetworkManager sections that hold the device's own MAC address.
const NM_HW_SECTIONS: [&str; 4] = ["ethernet", "802-3-ethernet", "wifi", "802-11-wireless"];

fn parse_keyfile(path: &str, text: &str) -> NetConfig {
    let mut sec = String::new();
    let mut iface = None;
    let mut macs = Vec::new();
    let mut method = AddrMethod::Unknown;
    for (l, _) in lines(text) {
        if let Some(s) = section(l) {
            sec = s.to_string();
            continue;
        }
        let Some((k, v)) = ini_kv(l) else { continue };
        match (sec.as_str(), k) {
            ("connection", "interface-name") if !v.is_empty() => iface = Some(v.to_string()),
            (s, "mac-address") if NM_HW_SECTIONS.contains(&s) => macs.extend(mac(v)),
            ("ipv4", "method") => {
                method = match v {
                    "auto" => AddrMethod::Dhcp,
                    "manual" => AddrMethod::Static,
                    "disabled" | "link-local" | "shared" => AddrMethod::Manual,
                    _ => AddrMethod::Unknown,
                }
            }
            _ => {}
        }
    }
    NetConfig {
        source: NetSource::NmKeyfile,
        path: path.to_string(),
        interface: iface,
        macs,
        method,
    }
}

fn plan_keyfile(p: &mut Planner<'_>, path: &str) {
    let Some(text) = p.text(FsRole::Root, path) else {
        return;
    };
    let mut sec = String::new();
    let mut dropped = false;
    let after = edit_lines(&text, |_, l| {
        if let Some(s) = section(l) {
            sec = s.to_string();
            return LineEdit::Keep;
        }
        match ini_kv(l) {
            Some(("mac-address", v)) if NM_HW_SECTIONS.contains(&sec.as_str()) && !v.is_empty() => {
                dropped = true;
                LineEdit::Drop
            }
            _ => LineEdit::Keep,
        }
    });
    if dropped {
        p.replace(
            FsRole::Root,
            path,
            after,
            "mac-address= ties the NetworkManager connection to the old interface".into(),
        );
    }
}

/// The `[Match]` keys of systemd-networkd that match a MAC address.
const NETWORKD_MAC_KEYS: [&str; 2] = ["MACAddress", "PermanentMACAddress"];

fn parse_networkd(path: &str, link: bool, text: &str) -> NetConfig {
    let mut sec = String::new();
    let mut iface = None;
    let mut macs = Vec::new();
    let (mut dhcp, mut addr) = (false, false);
    for (l, _) in lines(text) {
        if let Some(s) = section(l) {
            sec = s.to_string();
            if s == "Address" {
                addr = true;
            }
            continue;
        }
        let Some((k, v)) = ini_kv(l) else { continue };
        match (sec.as_str(), k) {
            ("Match", k) if NETWORKD_MAC_KEYS.contains(&k) => {
                macs.extend(v.split_whitespace().filter_map(mac))
            }
            ("Match", "Name") if !link => iface = Some(v.to_string()),
            ("Link", "Name") if link => iface = Some(v.to_string()),
            ("Network", "DHCP") => dhcp = !matches!(v, "no" | "false" | "0" | "off"),
            ("Network", "Address") if !v.is_empty() => addr = true,
            _ => {}
        }
    }
    NetConfig {
        source: if link {
            NetSource::NetworkdLink
        } else {
            NetSource::NetworkdNetwork
        },
        path: path.to_string(),
        interface: iface,
        macs,
        method: if link {
            AddrMethod::Unknown
        } else if dhcp {
            AddrMethod::Dhcp
        } else if addr {
            AddrMethod::Static
        } else {
            AddrMethod::Unknown
        },
    }
}

fn plan_networkd(p: &mut Planner<'_>, path: &str, link: bool) {
    let Some(text) = p.text(FsRole::Root, path) else {
        return;
    };
    // Which [Match] sections keep another match key once the MAC ones are gone.
    let mut sec = String::new();
    let mut other_match = Vec::new();
    let mut idx = 0usize;
    for (l, _) in lines(&text) {
        if let Some(s) = section(l) {
            sec = s.to_string();
            idx += 1;
            other_match.push(false);
            continue;
        }
        if sec == "Match" {
            if let Some((k, v)) = ini_kv(l) {
                if !NETWORKD_MAC_KEYS.contains(&k) && !v.is_empty() {
                    if let Some(o) = other_match.get_mut(idx.wrapping_sub(1)) {
                        *o = true;
                    }
                }
            }
        }
    }
    let name_key = if link { "OriginalName" } else { "Name" };
    let mut sec = String::new();
    let mut idx = 0usize;
    let mut replaced = false;
    let mut dropped = false;
    let after = edit_lines(&text, |_, l| {
        if let Some(s) = section(l) {
            sec = s.to_string();
            idx += 1;
            replaced = false;
            return LineEdit::Keep;
        }
        if sec != "Match" {
            return LineEdit::Keep;
        }
        match ini_kv(l) {
            Some((k, v)) if NETWORKD_MAC_KEYS.contains(&k) && !v.is_empty() => {
                dropped = true;
                let keeps_other = other_match.get(idx.wrapping_sub(1)).copied();
                if keeps_other == Some(false) && !replaced {
                    replaced = true;
                    let lead = &l[..l.len() - l.trim_start().len()];
                    LineEdit::Replace(format!("{lead}{name_key}=en* eth*"))
                } else {
                    LineEdit::Drop
                }
            }
            _ => LineEdit::Keep,
        }
    });
    if dropped {
        p.replace(
            FsRole::Root,
            path,
            after,
            format!(
                "[Match] by the old MAC address applies to no interface on the new platform: \
                 matched by name instead where nothing else matches ({name_key}=en* eth*)"
            ),
        );
    }
}

// ---- Debian interfaces ----

/// The words that start a stanza of `/etc/network/interfaces`.
fn stanza_start(word: &str) -> bool {
    matches!(
        word,
        "iface"
            | "mapping"
            | "auto"
            | "source"
            | "source-directory"
            | "no-auto-down"
            | "no-scripts"
    ) || word.starts_with("allow-")
}

fn parse_interfaces(path: &str, text: &str) -> Vec<NetConfig> {
    let mut out: Vec<NetConfig> = Vec::new();
    let mut in_iface = false;
    for (l, _) in lines(text) {
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let w: Vec<&str> = t.split_whitespace().collect();
        if stanza_start(w[0]) {
            in_iface = false;
            if w[0] == "iface" && w.len() >= 4 && w[3] != "loopback" {
                in_iface = true;
                out.push(NetConfig {
                    source: NetSource::Interfaces,
                    path: path.to_string(),
                    interface: Some(w[1].to_string()),
                    macs: Vec::new(),
                    method: match w[3] {
                        "dhcp" | "auto" | "bootp" => AddrMethod::Dhcp,
                        "static" | "v4tunnel" => AddrMethod::Static,
                        "manual" => AddrMethod::Manual,
                        _ => AddrMethod::Unknown,
                    },
                });
            }
            continue;
        }
        if in_iface && w[0] == "hwaddress" {
            if let (Some(last), Some(m)) = (out.last_mut(), w.last().and_then(|v| mac(v))) {
                last.macs.push(m);
            }
        }
    }
    out
}

fn plan_interfaces(p: &mut Planner<'_>, path: &str) {
    let Some(text) = p.text(FsRole::Root, path) else {
        return;
    };
    let mut dropped = false;
    let after = edit_lines(&text, |_, l| {
        let mut w = l.split_whitespace();
        if w.next() == Some("hwaddress") && w.last().and_then(mac).is_some() {
            dropped = true;
            LineEdit::Drop
        } else {
            LineEdit::Keep
        }
    });
    if dropped {
        p.replace(
            FsRole::Root,
            path,
            after,
            "hwaddress gives the interface the old MAC address".into(),
        );
    }
}

// ---- netplan ----

/// One line of a YAML block mapping, as far as netplan needs it.
#[derive(Debug)]
struct YLine {
    /// Line index.
    line: usize,
    /// Indentation (spaces; a list item's key counts from after `- `).
    indent: usize,
    /// Key (`None` for a bare list item or a continuation).
    key: Option<String>,
    /// Inline value (possibly a flow mapping `{...}`), comment removed.
    value: String,
    /// Parent line (index into the vector).
    parent: Option<usize>,
}

/// Removes a comment (`#` at the start or after white space, outside quotes).
fn strip_comment(l: &str) -> &str {
    let b = l.as_bytes();
    let mut q: Option<u8> = None;
    for (i, &c) in b.iter().enumerate() {
        match q {
            Some(x) if c == x => q = None,
            Some(_) => {}
            None if c == b'"' || c == b'\'' => q = Some(c),
            None if c == b'#' && (i == 0 || b[i - 1].is_ascii_whitespace()) => return &l[..i],
            None => {}
        }
    }
    l
}

/// `key: value` at the top of `s` (the colon followed by white space or the end).
fn yaml_key(s: &str) -> Option<(String, String)> {
    let b = s.as_bytes();
    let mut q: Option<u8> = None;
    for (i, &c) in b.iter().enumerate() {
        match q {
            Some(x) if c == x => q = None,
            Some(_) => {}
            None if (c == b'"' || c == b'\'') && i == 0 => q = Some(c),
            None if c == b'{' || c == b'[' => return None,
            None if c == b':' && (i + 1 == b.len() || b[i + 1] == b' ' || b[i + 1] == b'\t') => {
                let k = unquote(s[..i].trim()).to_string();
                return Some((k, s[i + 1..].trim().to_string()));
            }
            None => {}
        }
    }
    None
}

/// The block structure of a YAML text.
fn yaml_lines(text: &str) -> Vec<YLine> {
    let mut out: Vec<YLine> = Vec::new();
    for (i, (l, _)) in lines(text).enumerate() {
        let body = strip_comment(l).trim_end();
        let t = body.trim_start();
        if t.is_empty() || t == "---" || t == "..." {
            continue;
        }
        let mut indent = body.len() - t.len();
        let mut rest = t;
        if let Some(r) = rest
            .strip_prefix("- ")
            .or(if rest == "-" { Some("") } else { None })
        {
            let r2 = r.trim_start();
            indent += rest.len() - r2.len();
            rest = r2;
        }
        let (key, value) = match yaml_key(rest) {
            Some((k, v)) => (Some(k), v),
            None => (None, rest.to_string()),
        };
        // The parent: the nearest line above with a smaller indentation (the keys of a list
        // item count from after its dash, so they are children of the list's key).
        let mut parent = out.len().checked_sub(1);
        while let Some(pi) = parent {
            if out[pi].indent < indent {
                break;
            }
            parent = out[pi].parent;
        }
        out.push(YLine {
            line: i,
            indent,
            key,
            value,
            parent,
        });
    }
    out
}

/// The children of node `of` (`None`: the top level).
fn children(y: &[YLine], of: Option<usize>) -> impl Iterator<Item = (usize, &YLine)> {
    y.iter().enumerate().filter(move |(_, n)| n.parent == of)
}

fn has_children(y: &[YLine], of: usize) -> bool {
    children(y, Some(of)).next().is_some()
}

fn child(y: &[YLine], of: usize, key: &str) -> Option<usize> {
    children(y, Some(of))
        .find(|(_, n)| n.key.as_deref() == Some(key))
        .map(|(i, _)| i)
}

/// The items of a flow mapping `{a: 1, b: 2}` as (key, value); `None` when `v` is not one.
fn flow_items(v: &str) -> Option<Vec<(String, String)>> {
    let inner = v.trim().strip_prefix('{')?.strip_suffix('}')?;
    Some(
        inner
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| match s.split_once(':') {
                Some((k, v)) => (unquote(k.trim()).to_string(), v.trim().to_string()),
                None => (s.trim().to_string(), String::new()),
            })
            .collect(),
    )
}

/// One ethernet of a netplan file.
struct NetplanEth {
    id: String,
    /// Its `match:` line.
    match_line: Option<usize>,
    /// The flow mapping of `match:` when written inline.
    match_flow: Option<Vec<(String, String)>>,
    /// The `macaddress:` line inside a block `match:`, and whether it has siblings.
    match_mac: Option<(usize, bool)>,
    /// A `macaddress:` line right under the ethernet (sets the MAC).
    set_mac: Option<usize>,
    set_name: Option<String>,
    macs: Vec<String>,
    method: AddrMethod,
}

fn netplan_ethernets(text: &str) -> Vec<NetplanEth> {
    let y = yaml_lines(text);
    let mut out = Vec::new();
    let Some((net, _)) = children(&y, None).find(|(_, n)| n.key.as_deref() == Some("network"))
    else {
        return out;
    };
    for group in ["ethernets", "wifis"] {
        let Some(eths) = child(&y, net, group) else {
            continue;
        };
        for (ei, e) in children(&y, Some(eths)) {
            let Some(id) = e.key.clone() else { continue };
            let mut eth = NetplanEth {
                id,
                match_line: None,
                match_flow: None,
                match_mac: None,
                set_mac: None,
                set_name: None,
                macs: Vec::new(),
                method: AddrMethod::Unknown,
            };
            let truthy = |v: &str| matches!(unquote(v), "true" | "yes" | "on" | "True" | "TRUE");
            let mut addresses = false;
            for (ci, c) in children(&y, Some(ei)) {
                match c.key.as_deref() {
                    Some("match") => {
                        eth.match_line = Some(c.line);
                        if let Some(items) = flow_items(&c.value) {
                            let macs: Vec<String> = items
                                .iter()
                                .filter(|(k, _)| k == "macaddress")
                                .filter_map(|(_, v)| mac(v))
                                .collect();
                            if !macs.is_empty() {
                                eth.macs.extend(macs);
                                eth.match_flow = Some(items);
                            }
                        }
                        let kids: Vec<(usize, &YLine)> = children(&y, Some(ci)).collect();
                        for (ki, k) in &kids {
                            // Only a scalar MAC (a line with lines under it is not one).
                            if k.key.as_deref() == Some("macaddress") && !has_children(&y, *ki) {
                                if let Some(m) = mac(&k.value) {
                                    eth.macs.push(m);
                                    eth.match_mac = Some((k.line, kids.len() > 1));
                                }
                            }
                        }
                    }
                    Some("macaddress") if !has_children(&y, ci) => {
                        if let Some(m) = mac(&c.value) {
                            eth.macs.push(m);
                            eth.set_mac = Some(c.line);
                        }
                    }
                    Some("set-name") => eth.set_name = Some(unquote(&c.value).to_string()),
                    Some("dhcp4") | Some("dhcp6") if truthy(&c.value) => {
                        eth.method = AddrMethod::Dhcp
                    }
                    Some("addresses") => addresses = true,
                    _ => {}
                }
            }
            if eth.method == AddrMethod::Unknown && addresses {
                eth.method = AddrMethod::Static;
            }
            out.push(eth);
        }
    }
    out
}

fn parse_netplan(path: &str, text: &str) -> Vec<NetConfig> {
    netplan_ethernets(text)
        .into_iter()
        .map(|e| NetConfig {
            source: NetSource::Netplan,
            path: path.to_string(),
            interface: Some(e.set_name.unwrap_or(e.id)),
            macs: e.macs,
            method: e.method,
        })
        .collect()
}

fn plan_netplan(p: &mut Planner<'_>, path: &str) {
    let Some(text) = p.text(FsRole::Root, path) else {
        return;
    };
    let eths = netplan_ethernets(&text);
    let with_mac = eths
        .iter()
        .filter(|e| e.match_mac.is_some() || e.match_flow.is_some())
        .count();
    // The name an ethernet is matched by instead: any Ethernet-looking name when it is the
    // only one matched by MAC, else the name it is given (or its id).
    let glob = |e: &NetplanEth| -> String {
        if with_mac == 1 {
            "\"e*\"".to_string()
        } else {
            format!("\"{}\"", e.set_name.clone().unwrap_or_else(|| e.id.clone()))
        }
    };
    let mut replace: Vec<(usize, Option<String>)> = Vec::new();
    let mut what = Vec::new();
    for e in &eths {
        if let Some((line, siblings)) = e.match_mac {
            what.push(format!("{}: match by MAC address", e.id));
            if siblings {
                replace.push((line, None));
            } else {
                replace.push((line, Some(format!("name: {}", glob(e)))));
            }
        }
        if let (Some(line), Some(items)) = (e.match_line, &e.match_flow) {
            if items
                .iter()
                .any(|(k, v)| k == "macaddress" && mac(v).is_some())
            {
                what.push(format!("{}: match by MAC address", e.id));
                let mut kept: Vec<String> = items
                    .iter()
                    .filter(|(k, v)| !(k == "macaddress" && mac(v).is_some()))
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                if kept.is_empty() {
                    kept.push(format!("name: {}", glob(e)));
                }
                replace.push((line, Some(format!("match: {{{}}}", kept.join(", ")))));
            }
        }
        if let Some(line) = e.set_mac {
            what.push(format!("{}: sets the old MAC address", e.id));
            replace.push((line, None));
        }
    }
    if replace.is_empty() {
        return;
    }
    let after = edit_lines(&text, |i, l| match replace.iter().find(|(n, _)| *n == i) {
        None => LineEdit::Keep,
        Some((_, None)) => LineEdit::Drop,
        Some((_, Some(new))) => {
            let lead = &l[..l.len() - l.trim_start().len()];
            // Keep a comment at the end of the line.
            let body = strip_comment(l);
            let comment = &l[body.len()..];
            if new.starts_with("match:") {
                let t = l.trim_start();
                let dash = if t.starts_with("- ") { "- " } else { "" };
                LineEdit::Replace(format!("{lead}{dash}{new}{}", spaced(comment)))
            } else {
                LineEdit::Replace(format!("{lead}{new}{}", spaced(comment)))
            }
        }
    });
    p.replace(
        FsRole::Root,
        path,
        after,
        format!(
            "netplan binds interfaces to old MAC addresses ({}): matched by name instead",
            what.join(", ")
        ),
    );
}

/// A trailing comment with one space before it, or nothing.
fn spaced(comment: &str) -> String {
    if comment.is_empty() {
        String::new()
    } else {
        format!(" {}", comment.trim_start())
    }
}

pub(crate) fn plan(p: &mut Planner<'_>) {
    let items: Vec<(NetSource, String)> = p
        .cfg
        .network
        .iter()
        .map(|n| (n.source, n.path.clone()))
        .collect();
    let mut done: Vec<String> = Vec::new();
    for (source, path) in items {
        if done.contains(&path) {
            continue;
        }
        done.push(path.clone());
        match source {
            NetSource::UdevRule => {
                if path.ends_with("/70-persistent-net.rules") {
                    p.remove(
                        FsRole::Root,
                        &path,
                        "persistent-net rules name interfaces by the old MAC addresses (the \
                         new interfaces would get new names)"
                            .into(),
                    );
                } else {
                    p.unresolved.push(format!(
                        "{path}: a udev rule names an interface by its old MAC address: \
                         left as it is"
                    ));
                }
            }
            NetSource::Ifcfg | NetSource::SuseIfcfg => plan_ifcfg(p, &path),
            NetSource::NmKeyfile => plan_keyfile(p, &path),
            NetSource::NetworkdNetwork => plan_networkd(p, &path, false),
            NetSource::NetworkdLink => plan_networkd(p, &path, true),
            NetSource::Interfaces => plan_interfaces(p, &path),
            NetSource::Netplan => plan_netplan(p, &path),
        }
    }
    if p.opts.dhcp_first_interface {
        plan_dhcp(p);
    }
}

/// The file name netplan reads last, holding the DHCP setting of the first interface.
const NETPLAN_DHCP: &str = "/etc/netplan/99-diskconv-dhcp.yaml";

/// DHCP on the first interface of each configuration system found.
fn plan_dhcp(p: &mut Planner<'_>) {
    let mut firsts: Vec<NetConfig> = Vec::new();
    for n in &p.cfg.network {
        if matches!(n.source, NetSource::UdevRule | NetSource::NetworkdLink) {
            continue;
        }
        if !firsts.iter().any(|f| f.source == n.source) {
            firsts.push(n.clone());
        }
    }
    if firsts.is_empty() {
        p.unresolved
            .push("DHCP on the first interface: no network configuration found to change".into());
        return;
    }
    for n in firsts {
        if n.method == AddrMethod::Dhcp {
            continue;
        }
        let iface = n.interface.clone().unwrap_or_default();
        let reason = format!("DHCP on the first interface ({iface}) asked for");
        let Some(text) = p.text(FsRole::Root, &n.path) else {
            continue;
        };
        let after = match n.source {
            NetSource::Ifcfg | NetSource::SuseIfcfg => dhcp_ifcfg(&text),
            NetSource::NmKeyfile => dhcp_keyfile(&text),
            NetSource::NetworkdNetwork => dhcp_networkd(&text),
            NetSource::Interfaces => dhcp_interfaces(&text, &iface),
            NetSource::Netplan => {
                let id = netplan_ethernets(&text)
                    .into_iter()
                    .map(|e| e.id)
                    .next()
                    .unwrap_or(iface);
                p.add(
                    FsRole::Root,
                    NETPLAN_DHCP,
                    format!(
                        "# Written by diskconv: DHCP on the first interface.\n\
                         network:\n  version: 2\n  ethernets:\n    \"{id}\":\n      \
                         dhcp4: true\n"
                    ),
                    reason,
                );
                continue;
            }
            NetSource::UdevRule | NetSource::NetworkdLink => continue,
        };
        p.replace(FsRole::Root, &n.path, after, reason);
    }
}

/// An ifcfg file with `BOOTPROTO=dhcp` and no static address keys.
fn dhcp_ifcfg(text: &str) -> String {
    let mut proto = false;
    let mut out = edit_lines(text, |_, l| match shell_kv(l) {
        Some(("BOOTPROTO", _)) if !proto => {
            proto = true;
            LineEdit::Replace("BOOTPROTO=dhcp".into())
        }
        Some(("BOOTPROTO", _)) => LineEdit::Drop,
        Some((k, _))
            if [
                "IPADDR",
                "NETMASK",
                "PREFIX",
                "GATEWAY",
                "BROADCAST",
                "NETWORK",
            ]
            .iter()
            .any(|s| k.starts_with(s)) =>
        {
            LineEdit::Drop
        }
        _ => LineEdit::Keep,
    });
    if !proto {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("BOOTPROTO=dhcp\n");
    }
    out
}

/// A keyfile whose `[ipv4]` says `method=auto`, without static addresses.
fn dhcp_keyfile(text: &str) -> String {
    let mut sec = String::new();
    edit_lines(text, |_, l| {
        if let Some(s) = section(l) {
            sec = s.to_string();
            return LineEdit::Keep;
        }
        if sec != "ipv4" {
            return LineEdit::Keep;
        }
        match ini_kv(l) {
            Some(("method", _)) => LineEdit::Replace("method=auto".into()),
            Some((k, _)) if k.starts_with("address") || k == "gateway" => LineEdit::Drop,
            _ => LineEdit::Keep,
        }
    })
}

/// A `.network` file with `DHCP=yes` in `[Network]` instead of `Address=` and `Gateway=`.
fn dhcp_networkd(text: &str) -> String {
    let mut sec = String::new();
    let mut done = false;
    edit_lines(text, |_, l| {
        if let Some(s) = section(l) {
            sec = s.to_string();
            return LineEdit::Keep;
        }
        if sec != "Network" {
            return LineEdit::Keep;
        }
        match ini_kv(l) {
            Some(("DHCP", _)) | Some(("Address", _)) if !done => {
                done = true;
                LineEdit::Replace("DHCP=yes".into())
            }
            Some(("DHCP", _)) | Some(("Address", _)) | Some(("Gateway", _)) => LineEdit::Drop,
            _ => LineEdit::Keep,
        }
    })
}

/// `/etc/network/interfaces` with `iface IFACE inet dhcp` and no address lines in its stanza.
fn dhcp_interfaces(text: &str, iface: &str) -> String {
    let mut inside = false;
    edit_lines(text, |_, l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        let Some(first) = w.first() else {
            return LineEdit::Keep;
        };
        if stanza_start(first) {
            inside = w.len() >= 4 && w[0] == "iface" && w[1] == iface && w[2] == "inet";
            if inside && w[3] != "dhcp" {
                let lead = &l[..l.len() - l.trim_start().len()];
                let rest = w[4..].join(" ");
                let sep = if rest.is_empty() { "" } else { " " };
                return LineEdit::Replace(format!("{lead}iface {iface} inet dhcp{sep}{rest}"));
            }
            return LineEdit::Keep;
        }
        if inside && ["address", "netmask", "gateway", "broadcast", "network"].contains(first) {
            LineEdit::Drop
        } else {
            LineEdit::Keep
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::linuxcfg::ApplyChanges;
    use crate::guest::linuxcfg::{
        ChangeAction, FixOptions, MemFs, VolumeMap, plan_fixes, read_config,
    };

    /// CentOS 6 with VMware NICs.
    const UDEV: &str = "# This file was automatically generated by the /lib/udev/write_net_rules\n\
# program, run by the persistent-net-generator.rules rules file.\n\
\n\
# PCI device 0x15ad:0x07b0 (vmxnet3)\n\
SUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{address}==\"00:0c:29:3e:5f:01\", ATTR{type}==\"1\", KERNEL==\"eth*\", NAME=\"eth0\"\n\
\n\
# PCI device 0x15ad:0x07b0 (vmxnet3)\n\
SUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{address}==\"00:0C:29:3E:5F:0B\", ATTR{type}==\"1\", KERNEL==\"eth*\", NAME=\"eth1\"\n";

    const IFCFG_ETH0: &str = "DEVICE=eth0\nHWADDR=00:0C:29:3E:5F:01\nTYPE=Ethernet\n\
UUID=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03\nONBOOT=yes\nNM_CONTROLLED=yes\nBOOTPROTO=none\n\
IPADDR=192.168.10.21\nPREFIX=24\nGATEWAY=192.168.10.1\n";

    const IFCFG_ETH1: &str = "# Intel Corporation 82545EM\nDEVICE=\"eth1\"\nBOOTPROTO=\"dhcp\"\n\
HWADDR=\"00:0c:29:3e:5f:0b\"\nMACADDR=\"00:0c:29:3e:5f:0b\"\nONBOOT=\"yes\"\n";

    const SUSE: &str = "BOOTPROTO='static'\nSTARTMODE='auto'\nIPADDR='10.0.0.5/24'\n\
LLADDR='00:50:56:aa:bb:cc'\nNAME='VMXNET3 Ethernet Controller'\n";

    /// Ubuntu 18.04 cloud-init netplan.
    const NETPLAN: &str = r#"# This file is generated from information provided by
# the datasource.  Changes to it will not persist across an instance.
network:
    ethernets:
        ens160:
            dhcp4: true
            match:
                macaddress: 00:50:56:9a:01:02 # the vmxnet3
            set-name: ens160
    version: 2
"#;

    const NETPLAN_TWO: &str = r#"network:
  version: 2
  renderer: networkd
  ethernets:
    "lan":
      match: {macaddress: "52:54:00:12:34:56", driver: virtio_net}
      addresses: [192.168.1.5/24]
      macaddress: 52:54:00:12:34:56
    wan:
      match:
        macaddress: '52:54:00:ab:cd:ef'
      set-name: wan0
      dhcp4: yes
    eth9:
      match: {macaddress: 52:54:00:00:00:09}
"#;

    const KEYFILE: &str = "[connection]\nid=Wired connection 1\n\
uuid=4e1f8e1e-3f2c-3d8a-9a0e-8d2f9ec1a2b3\ntype=ethernet\ninterface-name=ens192\n\n\
[ethernet]\nmac-address=00:50:56:B1:22:33\ncloned-mac-address=preserve\n\n[ipv4]\n\
address1=10.1.1.10/24,10.1.1.1\nmethod=manual\n\n[ipv6]\nmethod=auto\n";

    const NETWORKD: &str = "[Match]\nMACAddress=00:15:5d:01:02:03\n\n[Network]\nDHCP=ipv4\n";
    const NETWORKD_LINK: &str =
        "[Match]\nMACAddress=00:15:5d:01:02:03\nDriver=hv_netvsc\n\n[Link]\nName=lan0\n";

    const INTERFACES_TEXT: &str = r#"# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
allow-hotplug eth0
iface eth0 inet static
    address 192.0.2.7/24
    gateway 192.0.2.254
    hwaddress ether 08:00:27:aa:bb:cc

auto eth1
iface eth1 inet dhcp
"#;

    fn guest() -> MemFs {
        let mut fs = MemFs::new();
        fs.file("/etc/udev/rules.d/70-persistent-net.rules", UDEV)
            .file(
                "/etc/udev/rules.d/99-local.rules",
                "KERNEL==\"sda\", RUN+=\"/bin/true\"\n",
            )
            .file("/etc/sysconfig/network-scripts/ifcfg-eth0", IFCFG_ETH0)
            .file("/etc/sysconfig/network-scripts/ifcfg-eth1", IFCFG_ETH1)
            .file(
                "/etc/sysconfig/network-scripts/ifcfg-lo",
                "DEVICE=lo\nIPADDR=127.0.0.1\n",
            )
            .file("/etc/sysconfig/network/ifcfg-eth0", SUSE)
            .file("/etc/netplan/50-cloud-init.yaml", NETPLAN)
            .file("/etc/netplan/60-two.yaml", NETPLAN_TWO)
            .file(
                "/etc/NetworkManager/system-connections/Wired.nmconnection",
                KEYFILE,
            )
            .file("/etc/systemd/network/10-lan.network", NETWORKD)
            .file("/etc/systemd/network/10-lan.link", NETWORKD_LINK)
            .file("/etc/network/interfaces", INTERFACES_TEXT);
        fs
    }

    #[test]
    fn reports_interfaces_macs_and_methods() {
        let cfg = read_config(&guest(), None).unwrap();
        let got: Vec<(NetSource, Option<&str>, Vec<&str>, AddrMethod)> = cfg
            .network
            .iter()
            .map(|n| {
                (
                    n.source,
                    n.interface.as_deref(),
                    n.macs.iter().map(|s| s.as_str()).collect(),
                    n.method,
                )
            })
            .collect();
        use AddrMethod::*;
        use NetSource::*;
        assert_eq!(
            got,
            vec![
                (UdevRule, Some("eth0"), vec!["00:0c:29:3e:5f:01"], Unknown),
                (UdevRule, Some("eth1"), vec!["00:0c:29:3e:5f:0b"], Unknown),
                (Ifcfg, Some("eth0"), vec!["00:0c:29:3e:5f:01"], Static),
                (
                    Ifcfg,
                    Some("eth1"),
                    vec!["00:0c:29:3e:5f:0b", "00:0c:29:3e:5f:0b"],
                    Dhcp
                ),
                (SuseIfcfg, Some("eth0"), vec!["00:50:56:aa:bb:cc"], Static),
                (Netplan, Some("ens160"), vec!["00:50:56:9a:01:02"], Dhcp),
                (
                    Netplan,
                    Some("lan"),
                    vec!["52:54:00:12:34:56", "52:54:00:12:34:56"],
                    Static
                ),
                (Netplan, Some("wan0"), vec!["52:54:00:ab:cd:ef"], Dhcp),
                (Netplan, Some("eth9"), vec!["52:54:00:00:00:09"], Unknown),
                (NmKeyfile, Some("ens192"), vec!["00:50:56:b1:22:33"], Static),
                (
                    NetworkdLink,
                    Some("lan0"),
                    vec!["00:15:5d:01:02:03"],
                    Unknown
                ),
                (NetworkdNetwork, None, vec!["00:15:5d:01:02:03"], Dhcp),
                (Interfaces, Some("eth0"), vec!["08:00:27:aa:bb:cc"], Static),
                (Interfaces, Some("eth1"), vec![], Dhcp),
            ]
        );
    }

    #[test]
    fn plans_minimal_idempotent_changes() {
        let mut fs = guest();
        let cfg = read_config(&fs, None).unwrap();
        let plan = plan_fixes(&cfg, &VolumeMap::new(), "azure", &FixOptions::default()).unwrap();
        let by = |p: &str| {
            plan.changes
                .iter()
                .find(|c| c.path == p)
                .unwrap_or_else(|| panic!("no change of {p}: {:?}", plan.changes))
                .action
                .clone()
        };
        let after = |p: &str| match by(p) {
            ChangeAction::Replace { after, .. } => after,
            a => panic!("{p}: {a:?}"),
        };
        assert!(matches!(
            by("/etc/udev/rules.d/70-persistent-net.rules"),
            ChangeAction::Remove { .. }
        ));
        assert_eq!(
            after("/etc/sysconfig/network-scripts/ifcfg-eth0"),
            IFCFG_ETH0.replace("HWADDR=00:0C:29:3E:5F:01\n", "")
        );
        assert_eq!(
            after("/etc/sysconfig/network-scripts/ifcfg-eth1"),
            IFCFG_ETH1
                .replace("HWADDR=\"00:0c:29:3e:5f:0b\"\n", "")
                .replace("MACADDR=\"00:0c:29:3e:5f:0b\"\n", "")
        );
        assert_eq!(
            after("/etc/sysconfig/network/ifcfg-eth0"),
            SUSE.replace("LLADDR='00:50:56:aa:bb:cc'\n", "")
        );
        assert_eq!(
            after("/etc/netplan/50-cloud-init.yaml"),
            NETPLAN.replace(
                "macaddress: 00:50:56:9a:01:02 # the vmxnet3",
                "name: \"e*\" # the vmxnet3"
            )
        );
        assert_eq!(
            after("/etc/netplan/60-two.yaml"),
            NETPLAN_TWO
                .replace(
                    "match: {macaddress: \"52:54:00:12:34:56\", driver: virtio_net}",
                    "match: {driver: virtio_net}"
                )
                .replace("      macaddress: 52:54:00:12:34:56\n", "")
                .replace("macaddress: '52:54:00:ab:cd:ef'", "name: \"wan0\"")
                .replace(
                    "match: {macaddress: 52:54:00:00:00:09}",
                    "match: {name: \"eth9\"}"
                )
        );
        assert_eq!(
            after("/etc/NetworkManager/system-connections/Wired.nmconnection"),
            KEYFILE.replace("mac-address=00:50:56:B1:22:33\n", "")
        );
        assert_eq!(
            after("/etc/systemd/network/10-lan.network"),
            NETWORKD.replace("MACAddress=00:15:5d:01:02:03", "Name=en* eth*")
        );
        assert_eq!(
            after("/etc/systemd/network/10-lan.link"),
            NETWORKD_LINK.replace("MACAddress=00:15:5d:01:02:03\n", "")
        );
        assert_eq!(
            after("/etc/network/interfaces"),
            INTERFACES_TEXT.replace("    hwaddress ether 08:00:27:aa:bb:cc\n", "")
        );
        assert_eq!(plan.changes.len(), 10);
        fs.apply(FsRole::Root, &plan.changes).unwrap();
        let cfg = read_config(&fs, None).unwrap();
        assert!(
            cfg.network.iter().all(|n| n.macs.is_empty()),
            "{:?}",
            cfg.network
        );
        let again = plan_fixes(&cfg, &VolumeMap::new(), "azure", &FixOptions::default()).unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
    }

    #[test]
    fn dhcp_on_the_first_interface() {
        let mut fs = guest();
        let opts = FixOptions {
            dhcp_first_interface: true,
            ..Default::default()
        };
        let cfg = read_config(&fs, None).unwrap();
        let plan = plan_fixes(&cfg, &VolumeMap::new(), "gcp", &opts).unwrap();
        let after = |p: &str| match &plan.changes.iter().find(|c| c.path == p).unwrap().action {
            ChangeAction::Replace { after, .. } | ChangeAction::Add { content: after } => {
                after.clone()
            }
            a => panic!("{p}: {a:?}"),
        };
        assert_eq!(
            after("/etc/sysconfig/network-scripts/ifcfg-eth0"),
            "DEVICE=eth0\nTYPE=Ethernet\nUUID=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03\nONBOOT=yes\n\
             NM_CONTROLLED=yes\nBOOTPROTO=dhcp\n"
        );
        assert_eq!(
            after("/etc/sysconfig/network/ifcfg-eth0"),
            "BOOTPROTO=dhcp\nSTARTMODE='auto'\nNAME='VMXNET3 Ethernet Controller'\n"
        );
        assert_eq!(
            after("/etc/NetworkManager/system-connections/Wired.nmconnection"),
            KEYFILE
                .replace("mac-address=00:50:56:B1:22:33\n", "")
                .replace(
                    "address1=10.1.1.10/24,10.1.1.1\nmethod=manual",
                    "method=auto"
                )
        );
        assert_eq!(
            after("/etc/network/interfaces"),
            INTERFACES_TEXT
                .replace("iface eth0 inet static", "iface eth0 inet dhcp")
                .replace("    address 192.0.2.7/24\n    gateway 192.0.2.254\n", "")
                .replace("    hwaddress ether 08:00:27:aa:bb:cc\n", "")
        );
        // The first netplan ethernet (ens160) already uses DHCP: nothing added.
        assert!(!plan.changes.iter().any(|c| c.path == NETPLAN_DHCP));
        fs.apply(FsRole::Root, &plan.changes).unwrap();
        let again = plan_fixes(
            &read_config(&fs, None).unwrap(),
            &VolumeMap::new(),
            "gcp",
            &opts,
        )
        .unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        // A static netplan gets a file read after it.
        let mut fs = MemFs::new();
        fs.file(
            "/etc/netplan/01-netcfg.yaml",
            "network:\n  version: 2\n  ethernets:\n    ens3:\n      addresses: [10.0.0.2/24]\n",
        );
        let plan = plan_fixes(
            &read_config(&fs, None).unwrap(),
            &VolumeMap::new(),
            "gcp",
            &opts,
        )
        .unwrap();
        assert_eq!(plan.changes.len(), 1);
        assert_eq!(plan.changes[0].path, NETPLAN_DHCP);
        fs.apply(FsRole::Root, &plan.changes).unwrap();
        let cfg = read_config(&fs, None).unwrap();
        assert_eq!(cfg.network[1].method, AddrMethod::Dhcp);
        let again = plan_fixes(&cfg, &VolumeMap::new(), "gcp", &opts).unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        // Nothing to change: reported.
        let plan = plan_fixes(
            &read_config(&MemFs::new(), None).unwrap(),
            &VolumeMap::new(),
            "gcp",
            &opts,
        )
        .unwrap();
        assert!(plan.unresolved[0].contains("DHCP"));
    }

    #[test]
    fn yaml_structure() {
        let y = yaml_lines("a:\n  - b: 1\n    c: 2\n  - d\n# x\ne: {f: 1} # c\n");
        let keys: Vec<(Option<&str>, Option<usize>)> =
            y.iter().map(|n| (n.key.as_deref(), n.parent)).collect();
        assert_eq!(
            keys,
            vec![
                (Some("a"), None),
                (Some("b"), Some(0)),
                (Some("c"), Some(0)),
                (None, Some(0)),
                (Some("e"), None)
            ]
        );
        assert_eq!(y[4].value, "{f: 1}");
        assert_eq!(
            flow_items(&y[4].value).unwrap(),
            vec![("f".into(), "1".into())]
        );
    }
}
