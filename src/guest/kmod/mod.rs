//! Kernel modules for early boot: making a target's storage and network drivers available to
//! a Linux guest's initramfs without running anything of the guest.
//!
//! - [`index`]: parsers for the index files of `/lib/modules/<version>/` (`modules.dep`,
//!   `modules.alias`, `modules.builtin`, `modules.builtin.modinfo`, `modules.softdep`,
//!   `modules.order`) and kmod's name rules ([`module_name`], `-` equal to `_`).
//! - [`elf`]: the `.modinfo` section of a module and its `vermagic`.
//! - [`need`]: which modules each target needs ([`boot_drivers`]).
//! - [`resolve`]: a kernel's index read from a guest ([`KernelModules`]) and kmod's resolution
//!   on it: names and aliases to modules, and the modules `modprobe` loads for one
//!   (dependencies and soft dependencies).
//! - [`status`]: where each driver stands (built in, in the initramfs, on disk only, absent,
//!   built for another kernel).
//! - [`plan`]: the extra initramfs archive ([`plan_early_modules`]), the guest configuration
//!   that keeps the modules across rebuilds, and what is missing with the source-side fix.
//!
//! ```no_run
//! # fn demo(guest: &dyn diskconv::guest::fs::GuestFs) -> diskconv::Result<()> {
//! use diskconv::guest::kmod::{ExistingInitramfs, ModuleTarget, boot_drivers, plan_early_modules};
//! let need = boot_drivers(ModuleTarget::Kvm);
//! let plan = plan_early_modules("6.1.0-18-amd64", &need, guest, &ExistingInitramfs::default(), None)?;
//! for m in &plan.missing {
//!     println!("{}: {} (fix on the source: {})", m.name, m.message, m.fix);
//! }
//! # Ok(()) }
//! ```

pub mod elf;
pub mod index;
pub mod need;
pub mod plan;
pub mod resolve;
pub mod status;

pub use index::{
    Alias, BuiltinModinfo, DepEntry, ModuleList, ModulesDep, SoftDep, glob_match, module_name,
    normalize_alias, normalize_name, parse_modules_alias, parse_modules_builtin,
    parse_modules_builtin_modinfo, parse_modules_dep, parse_modules_order, parse_modules_softdep,
};
pub use need::{DriverGroup, DriverNeed, DriverRole, ModuleTarget, Need, boot_drivers};
pub use plan::{
    ArchiveFile, EarlyModulesPlan, ExistingInitramfs, InitramfsFlavour, MissingModule,
    MissingReason, plan_early_modules,
};
pub use resolve::{KernelModules, MAX_SOFTDEP_DEPTH, ProbeList, Resolved};
pub use status::{
    Decompress, ModuleState, ModuleStatus, VermagicCheck, check_vermagic, compression,
    driver_status, guest_status,
};
