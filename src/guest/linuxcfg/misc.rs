//! cloud-init (installed, disabled, the data sources it is limited to) and SELinux (its mode
//! and policy: files written offline need their labels, which an enforcing guest checks).

use crate::error::Result;
use crate::guest::linuxcfg::device::unquote;
use crate::guest::linuxcfg::{FsRole, Reader, lines};

/// What shows that cloud-init is installed.
const CLOUD_INIT_FILES: [&str; 6] = [
    "/etc/cloud/cloud.cfg",
    "/usr/bin/cloud-init",
    "/lib/systemd/system/cloud-init.service",
    "/usr/lib/systemd/system/cloud-init.service",
    "/etc/init.d/cloud-init",
    "/etc/rc.d/init.d/cloud-init",
];
/// The marker that disables cloud-init.
const CLOUD_INIT_DISABLED: &str = "/etc/cloud/cloud-init.disabled";
/// SELinux's configuration.
const SELINUX_CONFIG: &str = "/etc/selinux/config";

/// cloud-init as found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CloudInit {
    /// The files that show it is installed (empty: not installed).
    pub installed: Vec<String>,
    /// Whether `/etc/cloud/cloud-init.disabled` exists.
    pub disabled: bool,
    /// The `datasource_list:` lines of `/etc/cloud/cloud.cfg` and `cloud.cfg.d/*.cfg`, with
    /// their file (`/etc/cloud/cloud.cfg.d/90_dpkg.cfg: [ NoCloud, ConfigDrive, None ]`).
    pub datasource_lists: Vec<String>,
}

/// SELinux as configured in `/etc/selinux/config`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Selinux {
    /// `SELINUX=`: `enforcing`, `permissive` or `disabled` (`None` when not set).
    pub mode: Option<String>,
    /// `SELINUXTYPE=`: `targeted`, `mls`... (`None` when not set).
    pub policy: Option<String>,
    /// Whether `/.autorelabel` exists (a full relabel at the next boot).
    pub autorelabel: bool,
}

/// The value of `datasource_list:` in a cloud-init configuration line.
fn datasource_list(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.starts_with('#') {
        return None;
    }
    t.strip_prefix("datasource_list:").map(str::trim)
}

/// Parses `/etc/selinux/config`.
pub fn parse_selinux(text: &str, autorelabel: bool) -> Selinux {
    let mut s = Selinux {
        mode: None,
        policy: None,
        autorelabel,
    };
    for (l, _) in lines(text) {
        let t = l.trim();
        if t.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = t.split_once('=') {
            let v = unquote(v.trim()).to_string();
            match k.trim() {
                "SELINUX" => s.mode = Some(v),
                "SELINUXTYPE" => s.policy = Some(v),
                _ => {}
            }
        }
    }
    s
}

pub(crate) fn read(r: &mut Reader<'_>) -> Result<()> {
    for f in CLOUD_INIT_FILES {
        if r.exists(FsRole::Root, f)? {
            r.cfg.cloud_init.installed.push(f.to_string());
        }
    }
    r.cfg.cloud_init.disabled = r.exists_l(FsRole::Root, CLOUD_INIT_DISABLED)?;
    if !r.cfg.cloud_init.installed.is_empty() {
        let mut files = vec!["/etc/cloud/cloud.cfg".to_string()];
        for n in r.list(FsRole::Root, "/etc/cloud/cloud.cfg.d")? {
            if n.ends_with(".cfg") {
                files.push(format!("/etc/cloud/cloud.cfg.d/{n}"));
            }
        }
        for f in files {
            if let Some(t) = r.text(FsRole::Root, &f)? {
                for (l, _) in lines(&t) {
                    if let Some(v) = datasource_list(l) {
                        r.cfg.cloud_init.datasource_lists.push(format!("{f}: {v}"));
                    }
                }
            }
        }
    }
    if let Some(t) = r.text(FsRole::Root, SELINUX_CONFIG)? {
        let relabel = r.exists_l(FsRole::Root, "/.autorelabel")?;
        r.cfg.selinux = Some(parse_selinux(&t, relabel));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::guest::linuxcfg::{MemFs, read_config};

    const RHEL_SELINUX: &str = "\n# This file controls the state of SELinux on the system.\n\
# SELINUX= can take one of these three values:\n#     enforcing - SELinux security policy is enforced.\n\
SELINUX=enforcing\n# SELINUXTYPE= can take one of three values:\nSELINUXTYPE=targeted\n";

    #[test]
    fn selinux_and_cloud_init() {
        let mut fs = MemFs::new();
        fs.file("/etc/selinux/config", RHEL_SELINUX)
            .file(
                "/etc/cloud/cloud.cfg",
                "users:\n - default\n# datasource_list: [ Ec2 ]\n",
            )
            .file(
                "/etc/cloud/cloud.cfg.d/90_dpkg.cfg",
                "# to update this file, run dpkg-reconfigure cloud-init\n\
                 datasource_list: [ NoCloud, ConfigDrive, OpenStack, Ec2, None ]\n",
            )
            .file("/etc/cloud/cloud-init.disabled", "");
        let cfg = read_config(&fs, None).unwrap();
        let s = cfg.selinux.unwrap();
        assert_eq!(s.mode.as_deref(), Some("enforcing"));
        assert_eq!(s.policy.as_deref(), Some("targeted"));
        assert!(!s.autorelabel);
        assert_eq!(cfg.cloud_init.installed, vec!["/etc/cloud/cloud.cfg"]);
        assert!(cfg.cloud_init.disabled);
        assert_eq!(
            cfg.cloud_init.datasource_lists,
            vec![
                "/etc/cloud/cloud.cfg.d/90_dpkg.cfg: [ NoCloud, ConfigDrive, OpenStack, Ec2, None ]"
            ]
        );
        let cfg = read_config(&MemFs::new(), None).unwrap();
        assert!(cfg.selinux.is_none());
        assert!(cfg.cloud_init.installed.is_empty());
        assert!(!cfg.cloud_init.disabled);
    }
}
