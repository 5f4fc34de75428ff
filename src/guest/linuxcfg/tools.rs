//! The guest tools and agents of each platform: found by their programs, unit files and init
//! scripts, enabled by their start links (systemd `*.wants/` and `*.requires/` links under
//! `/etc/systemd/system`, SysV `S??name` links under `/etc/rc?.d` and `/etc/rc.d/rc?.d`).
//! The tools of other platforms than the target are disabled by removing their start links.

use crate::error::Result;
use crate::guest::linuxcfg::{FsRole, LinuxConfig, Planner, Platform, Reader};

/// A guest tool package, as this module knows it.
struct ToolDef {
    id: &'static str,
    name: &'static str,
    /// The platforms it belongs on.
    platforms: &'static [Platform],
    /// Its systemd units.
    units: &'static [&'static str],
    /// Its SysV init script names.
    sysv: &'static [&'static str],
    /// Files or folders whose presence shows it is installed.
    files: &'static [&'static str],
}

const TOOLS: &[ToolDef] = &[
    ToolDef {
        id: "vmware-tools",
        name: "VMware Tools / open-vm-tools",
        platforms: &[Platform::Vmware],
        units: &[
            "vmtoolsd.service",
            "open-vm-tools.service",
            "vmware-tools.service",
            "vgauth.service",
            "vmware-vgauth.service",
            "vgauthd.service",
            "vmware-tools-thinprint.service",
        ],
        sysv: &["vmware-tools", "open-vm-tools", "vmware-tools-thinprint"],
        files: &[
            "/usr/bin/vmtoolsd",
            "/usr/sbin/vmtoolsd",
            "/etc/vmware-tools",
            "/usr/lib/vmware-tools",
        ],
    },
    ToolDef {
        id: "hyperv-daemons",
        name: "Hyper-V daemons (KVP, VSS, file copy)",
        platforms: &[Platform::HyperV, Platform::Azure],
        units: &[
            "hv_kvp_daemon.service",
            "hv-kvp-daemon.service",
            "hypervkvpd.service",
            "hv_vss_daemon.service",
            "hv-vss-daemon.service",
            "hypervvssd.service",
            "hv_fcopy_daemon.service",
            "hv-fcopy-daemon.service",
            "hypervfcopyd.service",
        ],
        sysv: &[
            "hv-kvp-daemon",
            "hv-vss-daemon",
            "hv-fcopy-daemon",
            "hypervkvpd",
            "hypervvssd",
            "hypervfcopyd",
        ],
        files: &[
            "/usr/sbin/hv_kvp_daemon",
            "/usr/sbin/hypervkvpd",
            "/usr/sbin/hv_vss_daemon",
        ],
    },
    ToolDef {
        id: "virtualbox-additions",
        name: "VirtualBox Guest Additions",
        platforms: &[Platform::VirtualBox],
        units: &[
            "vboxadd.service",
            "vboxadd-service.service",
            "vboxadd-x11.service",
            "virtualbox-guest-utils.service",
        ],
        sysv: &[
            "vboxadd",
            "vboxadd-service",
            "vboxadd-x11",
            "virtualbox-guest-utils",
        ],
        files: &["/usr/sbin/VBoxService", "/usr/bin/VBoxService"],
    },
    ToolDef {
        id: "xe-guest-utilities",
        name: "XenServer guest utilities",
        platforms: &[Platform::Xen],
        units: &[
            "xe-linux-distribution.service",
            "xe-daemon.service",
            "xen-guest-agent.service",
        ],
        sysv: &["xe-linux-distribution"],
        files: &["/usr/sbin/xe-daemon", "/usr/sbin/xe-linux-distribution"],
    },
    ToolDef {
        id: "qemu-guest-agent",
        name: "QEMU guest agent",
        platforms: &[Platform::Kvm],
        units: &["qemu-guest-agent.service", "qemu-ga.service"],
        sysv: &["qemu-guest-agent", "qemu-ga"],
        files: &["/usr/bin/qemu-ga", "/usr/sbin/qemu-ga"],
    },
    ToolDef {
        id: "waagent",
        name: "Azure Linux agent (waagent)",
        platforms: &[Platform::Azure],
        units: &["walinuxagent.service", "waagent.service"],
        sysv: &["walinuxagent", "waagent"],
        files: &["/usr/sbin/waagent", "/usr/bin/waagent"],
    },
    ToolDef {
        id: "amazon-ssm-agent",
        name: "Amazon SSM agent",
        platforms: &[Platform::Aws],
        units: &[
            "amazon-ssm-agent.service",
            "snap.amazon-ssm-agent.amazon-ssm-agent.service",
        ],
        sysv: &["amazon-ssm-agent"],
        files: &["/usr/bin/amazon-ssm-agent", "/snap/amazon-ssm-agent"],
    },
    ToolDef {
        id: "google-guest-agent",
        name: "Google guest environment",
        platforms: &[Platform::Gcp],
        units: &[
            "google-guest-agent.service",
            "google-osconfig-agent.service",
            "google-startup-scripts.service",
            "google-shutdown-scripts.service",
            "google-accounts-daemon.service",
            "google-clock-skew-daemon.service",
            "google-network-daemon.service",
        ],
        sysv: &["google-accounts-daemon", "google-startup-scripts"],
        files: &[
            "/usr/bin/google_guest_agent",
            "/usr/bin/google_metadata_script_runner",
        ],
    },
];

/// Where unit files are installed.
const UNIT_DIRS: [&str; 4] = [
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/etc/systemd/system",
    "/usr/local/lib/systemd/system",
];
/// Where SysV init scripts are.
const INIT_DIRS: [&str; 2] = ["/etc/init.d", "/etc/rc.d/init.d"];
/// SysV runlevel folders.
const RC_DIRS: [&str; 16] = [
    "/etc/rc0.d",
    "/etc/rc1.d",
    "/etc/rc2.d",
    "/etc/rc3.d",
    "/etc/rc4.d",
    "/etc/rc5.d",
    "/etc/rc6.d",
    "/etc/rcS.d",
    "/etc/rc.d/rc0.d",
    "/etc/rc.d/rc1.d",
    "/etc/rc.d/rc2.d",
    "/etc/rc.d/rc3.d",
    "/etc/rc.d/rc4.d",
    "/etc/rc.d/rc5.d",
    "/etc/rc.d/rc6.d",
    "/etc/rc.d/rcS.d",
];

/// A guest tool found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuestTool {
    /// Short id (`vmware-tools`, `hyperv-daemons`, `qemu-guest-agent`, `waagent`...).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The platforms it belongs on.
    pub platforms: Vec<Platform>,
    /// The programs, unit files and init scripts found.
    pub installed: Vec<String>,
    /// The start links found (systemd `.wants/` links, SysV `S` links): it starts at boot.
    pub start_links: Vec<String>,
}

/// What the plan does with a guest tool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ToolDecision {
    /// The tool's id.
    pub id: String,
    /// Whether its start links are removed.
    pub disabled: bool,
    /// Why (or why not).
    pub reason: String,
}

/// The service name of a SysV start link (`S01vmware-tools` -> `vmware-tools`).
fn sysv_name(link: &str) -> Option<&str> {
    let rest = link.strip_prefix('S')?;
    let name = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    (!name.is_empty()).then_some(name)
}

/// The last part of a link target.
fn base(target: &str) -> &str {
    target.rsplit('/').next().unwrap_or(target)
}

pub(crate) fn read(r: &mut Reader<'_>) -> Result<()> {
    let mut found: Vec<GuestTool> = TOOLS
        .iter()
        .map(|t| GuestTool {
            id: t.id.into(),
            name: t.name.into(),
            platforms: t.platforms.to_vec(),
            installed: Vec::new(),
            start_links: Vec::new(),
        })
        .collect();
    for (t, g) in TOOLS.iter().zip(found.iter_mut()) {
        for f in t.files {
            if r.exists(FsRole::Root, f)? {
                g.installed.push(f.to_string());
            }
        }
        for d in UNIT_DIRS {
            for u in t.units {
                let p = format!("{d}/{u}");
                if r.exists(FsRole::Root, &p)? {
                    g.installed.push(p);
                }
            }
        }
        for d in INIT_DIRS {
            for s in t.sysv {
                let p = format!("{d}/{s}");
                if r.exists(FsRole::Root, &p)? {
                    g.installed.push(p);
                }
            }
        }
    }
    if let Some(vbox) = found.iter_mut().find(|g| g.id == "virtualbox-additions") {
        if vbox.installed.is_empty() {
            for name in r.list(FsRole::Root, "/opt")? {
                if name.starts_with("VBoxGuestAdditions") {
                    vbox.installed.push(format!("/opt/{name}"));
                }
            }
        }
    }
    // systemd start links.
    for w in r.list(FsRole::Root, "/etc/systemd/system")? {
        if !(w.ends_with(".wants") || w.ends_with(".requires")) {
            continue;
        }
        let dir = format!("/etc/systemd/system/{w}");
        for name in r.list(FsRole::Root, &dir)? {
            let path = format!("{dir}/{name}");
            let Some(i) = TOOLS.iter().position(|t| t.units.contains(&name.as_str())) else {
                // A link named after an alias: judge by its target.
                let Some(target) = r
                    .fs(FsRole::Root)
                    .map(|fs| fs.read_link(&path))
                    .transpose()?
                    .flatten()
                else {
                    continue;
                };
                if let Some(i) = TOOLS.iter().position(|t| t.units.contains(&base(&target))) {
                    r.link(FsRole::Root, &path)?;
                    found[i].start_links.push(path);
                }
                continue;
            };
            if r.link(FsRole::Root, &path)?.is_some() {
                found[i].start_links.push(path);
            }
        }
    }
    // SysV start links.
    for d in RC_DIRS {
        for name in r.list(FsRole::Root, d)? {
            let Some(svc) = sysv_name(&name) else {
                continue;
            };
            let Some(i) = TOOLS.iter().position(|t| t.sysv.contains(&svc)) else {
                continue;
            };
            let path = format!("{d}/{name}");
            if r.exists_l(FsRole::Root, &path)? && r.link(FsRole::Root, &path)?.is_some() {
                found[i].start_links.push(path);
            }
        }
    }
    r.cfg.tools = found
        .into_iter()
        .filter(|g| !g.installed.is_empty() || !g.start_links.is_empty())
        .collect();
    Ok(())
}

/// The platform the guest probably comes from (see [`LinuxConfig::source_platform`]).
pub(crate) fn guess_platform(cfg: &LinuxConfig) -> Option<Platform> {
    let has = |id: &str| cfg.tools.iter().any(|t| t.id == id);
    if has("vmware-tools") {
        return Some(Platform::Vmware);
    }
    if has("hyperv-daemons") {
        return Some(if has("waagent") {
            Platform::Azure
        } else {
            Platform::HyperV
        });
    }
    for (id, p) in [
        ("virtualbox-additions", Platform::VirtualBox),
        ("xe-guest-utilities", Platform::Xen),
        ("waagent", Platform::Azure),
        ("amazon-ssm-agent", Platform::Aws),
        ("google-guest-agent", Platform::Gcp),
        ("qemu-guest-agent", Platform::Kvm),
    ] {
        if has(id) {
            return Some(p);
        }
    }
    // The makers of the MAC addresses (their OUIs).
    for n in &cfg.network {
        for m in &n.macs {
            let p = match m.get(..8) {
                Some("00:0c:29" | "00:50:56" | "00:05:69" | "00:1c:14") => Platform::Vmware,
                Some("00:15:5d") => Platform::HyperV,
                Some("08:00:27") => Platform::VirtualBox,
                Some("00:16:3e") => Platform::Xen,
                Some("52:54:00") => Platform::Kvm,
                _ => continue,
            };
            return Some(p);
        }
    }
    None
}

pub(crate) fn plan(p: &mut Planner<'_>) {
    let tools = p.cfg.tools.clone();
    for t in tools {
        let (disabled, reason) = if t.platforms.contains(&p.target) {
            (false, format!("belongs on {}: kept", p.target.name()))
        } else if t.start_links.is_empty() {
            (
                false,
                "installed, but does not start at boot: nothing to disable".to_string(),
            )
        } else if !p.opts.disable_foreign_tools {
            (
                false,
                format!(
                    "starts at boot and does not belong on {}, but disabling tools is off",
                    p.target.name()
                ),
            )
        } else {
            let why = format!(
                "{} does not belong on {}: its start link is removed",
                t.name,
                p.target.name()
            );
            for l in &t.start_links {
                p.remove_link(FsRole::Root, l, why.clone());
            }
            (
                true,
                format!(
                    "does not belong on {}: {} start link(s) removed",
                    p.target.name(),
                    t.start_links.len()
                ),
            )
        };
        p.tools.push(ToolDecision {
            id: t.id,
            disabled,
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::linuxcfg::ApplyChanges;
    use crate::guest::linuxcfg::{
        ChangeAction, FixOptions, MemFs, VolumeMap, plan_fixes, read_config,
    };

    fn guest() -> MemFs {
        let mut fs = MemFs::new();
        fs.file("/usr/bin/vmtoolsd", "ELF")
            .file("/lib/systemd/system/open-vm-tools.service", "[Unit]\n")
            .symlink(
                "/etc/systemd/system/multi-user.target.wants/open-vm-tools.service",
                "/lib/systemd/system/open-vm-tools.service",
            )
            .symlink(
                "/etc/systemd/system/vmtoolsd.service",
                "/lib/systemd/system/open-vm-tools.service",
            )
            .file("/lib/systemd/system/hv-kvp-daemon.service", "[Unit]\n")
            .file(
                "/usr/lib/systemd/system/qemu-guest-agent.service",
                "[Unit]\n",
            )
            .symlink(
                "/etc/systemd/system/multi-user.target.wants/qemu-guest-agent.service",
                "/usr/lib/systemd/system/qemu-guest-agent.service",
            )
            .symlink(
                "/etc/systemd/system/multi-user.target.wants/ssh.service",
                "/lib/systemd/system/ssh.service",
            )
            .file("/etc/init.d/vmware-tools", "#!/bin/sh\n")
            .symlink("/etc/rc2.d/S01vmware-tools", "../init.d/vmware-tools")
            .symlink("/etc/rc2.d/K01vmware-tools", "../init.d/vmware-tools")
            .symlink("/etc/rc.d/rc3.d/S19vboxadd", "../init.d/vboxadd");
        fs
    }

    #[test]
    fn finds_tools_and_links() {
        assert_eq!(sysv_name("S01vmware-tools"), Some("vmware-tools"));
        assert_eq!(sysv_name("K01x"), None);
        assert_eq!(sysv_name("S99"), None);
        let cfg = read_config(&guest(), None).unwrap();
        let ids: Vec<&str> = cfg.tools.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            ids,
            vec![
                "vmware-tools",
                "hyperv-daemons",
                "virtualbox-additions",
                "qemu-guest-agent"
            ]
        );
        assert_eq!(
            cfg.tools[0].start_links,
            vec![
                "/etc/systemd/system/multi-user.target.wants/open-vm-tools.service",
                "/etc/rc2.d/S01vmware-tools"
            ]
        );
        assert!(cfg.tools[1].start_links.is_empty());
        assert_eq!(cfg.tools[2].start_links, vec!["/etc/rc.d/rc3.d/S19vboxadd"]);
        assert_eq!(cfg.source_platform, Some(Platform::Vmware));
    }

    #[test]
    fn disables_foreign_tools_only() {
        let mut fs = guest();
        let cfg = read_config(&fs, None).unwrap();
        let plan = plan_fixes(&cfg, &VolumeMap::new(), "kvm", &FixOptions::default()).unwrap();
        let removed: Vec<&str> = plan
            .changes
            .iter()
            .map(|c| {
                assert!(matches!(c.action, ChangeAction::RemoveLink { .. }));
                c.path.as_str()
            })
            .collect();
        assert_eq!(
            removed,
            vec![
                "/etc/systemd/system/multi-user.target.wants/open-vm-tools.service",
                "/etc/rc2.d/S01vmware-tools",
                "/etc/rc.d/rc3.d/S19vboxadd"
            ]
        );
        let d: Vec<(&str, bool)> = plan
            .tools
            .iter()
            .map(|t| (t.id.as_str(), t.disabled))
            .collect();
        assert_eq!(
            d,
            vec![
                ("vmware-tools", true),
                ("hyperv-daemons", false),
                ("virtualbox-additions", true),
                ("qemu-guest-agent", false)
            ]
        );
        fs.apply(FsRole::Root, &plan.changes).unwrap();
        let again = plan_fixes(
            &read_config(&fs, None).unwrap(),
            &VolumeMap::new(),
            "kvm",
            &Default::default(),
        )
        .unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        // Towards VMware the VMware tools stay and the QEMU agent goes.
        let fs = guest();
        let plan = plan_fixes(
            &read_config(&fs, None).unwrap(),
            &VolumeMap::new(),
            "vmware",
            &Default::default(),
        )
        .unwrap();
        assert!(
            plan.changes
                .iter()
                .any(|c| c.path.ends_with("qemu-guest-agent.service"))
        );
        assert!(!plan.changes.iter().any(|c| c.path.contains("vm-tools")));
        let off = FixOptions {
            disable_foreign_tools: false,
            ..Default::default()
        };
        let plan = plan_fixes(
            &read_config(&fs, None).unwrap(),
            &VolumeMap::new(),
            "aws",
            &off,
        )
        .unwrap();
        assert!(plan.changes.is_empty());
    }
}
