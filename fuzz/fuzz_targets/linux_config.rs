//! Fuzzes the Linux configuration readers and the fix planner: the input, cut at 0xFF bytes,
//! becomes the text of fstab, the boot loader files, the network configurations and SELinux's
//! configuration of an in-memory guest; the configuration is read, fixes are planned (with
//! DHCP on the first interface), applied, and planning again on the result must change
//! nothing. Any panic is a bug; errors are fine.
#![no_main]

use diskconv::guest::linuxcfg::{ApplyChanges, FixOptions, FsRole, MemFs, VolumeMap, plan_fixes, read_config};
use libfuzzer_sys::fuzz_target;

const PATHS: [&str; 15] = [
    "/etc/fstab",
    "/boot/grub/grub.cfg",
    "/etc/default/grub",
    "/boot/grub2/grubenv",
    "/boot/loader/entries/a.conf",
    "/boot/grub/device.map",
    "/etc/udev/rules.d/70-persistent-net.rules",
    "/etc/sysconfig/network-scripts/ifcfg-eth0",
    "/etc/netplan/01-netcfg.yaml",
    "/etc/NetworkManager/system-connections/a.nmconnection",
    "/etc/systemd/network/10-a.network",
    "/etc/systemd/network/10-a.link",
    "/etc/network/interfaces",
    "/etc/selinux/config",
    "/etc/kernel/cmdline",
];

fuzz_target!(|data: &[u8]| {
    let mut fs = MemFs::new();
    for (path, text) in PATHS.iter().zip(data.split(|&b| b == 0xFF)) {
        fs.file(path, text);
    }
    let mut volumes = VolumeMap::new();
    volumes.add_partition(0, 1, "11111111-2222-3333-4444-555555555555");
    volumes.add_partition(0, 2, "66666666-7777-8888-9999-000000000000");
    let opts = FixOptions {
        dhcp_first_interface: true,
        ..Default::default()
    };
    let Ok(cfg) = read_config(&fs, None) else {
        return;
    };
    let Ok(plan) = plan_fixes(&cfg, &volumes, "kvm", &opts) else {
        return;
    };
    fs.apply(FsRole::Root, &plan.changes).expect("the plan applies to what it read");
    let cfg = read_config(&fs, None).expect("the fixed guest reads");
    let again = plan_fixes(&cfg, &volumes, "kvm", &opts).expect("plans again");
    assert!(again.changes.is_empty(), "not idempotent: {:?}", again.changes);
});
