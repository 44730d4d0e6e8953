//! The BPF side of pandad: loading panda-ebpf's object, filling its maps and
//! attaching its programs. This module is the only owner of BPF state,
//! including the pins that make it outlive the process ([`crate::pins`]).
//!
//! Kernel contract (what the attach points promise; see panda-ebpf's header
//! for what each program relies on inside):
//!
//! - cgroup/bind6 and cgroup/sendmsg6 are attached with `bpf_link`s to the
//!   configured cgroup, which always stack, so several instances (tests,
//!   other tools) never replace each other.
//! - Every link of a running pandad is pinned on bpffs, so the programs stay
//!   in force when pandad dies or restarts. A new pandad adopts the pins and
//!   swaps its own programs in with `BPF_LINK_UPDATE`: at no moment is a
//!   hook missing, and no link is ever duplicated. Only a real stop
//!   ([`Bpf::remove_pins`]) detaches them.
//! - Programs attached at the cgroup2 root see the sockets of every network
//!   namespace; each program compares `bpf_get_netns_cookie()` with the
//!   cookie in `CONFIG` and leaves other namespaces alone.
//! - The LSM program is global, not per cgroup: it filters by the netns
//!   cookie the same way.
use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, MapData, MapInfo, PerCpuArray},
    programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr, Lsm},
    Btf, Ebpf, EbpfLoader,
};
use panda_common::{counter, Config, Lease};

use crate::pins::{self, Link, PinDir, COUNTERS_PIN};

/// The object built by `cargo xtask build-ebpf`, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PANDA_BPF_OBJECT_PATH"));

/// panda-ebpf's programs and maps, loaded into the kernel.
pub struct Bpf {
    ebpf: Ebpf,
    /// None on kernels built without BTF: cgroup programs load without it;
    /// the LSM program (and guard mode's offsets) need it.
    kernel_btf: Option<Btf>,
    /// The hooks this instance holds, by program name (also the pin name).
    links: BTreeMap<&'static str, Held>,
}

/// A hook in force: its link, and what [`Bpf::check`] compares it with
/// (kept here so that the self-healing's 20-a-second check costs two
/// syscalls per hook: link info and a stat of the pin).
#[derive(Debug)]
struct Held {
    link: Link,
    /// The program we put in the link (0 for the LSM link, whose program
    /// cannot be swapped by anyone).
    prog_id: u32,
    /// Inode of the pin as we made it: a pin replaced or removed by anyone
    /// else has another (or none).
    pin_ino: u64,
}

/// The inode of a pin, None when nothing is pinned there.
fn pin_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// What [`Bpf::install`] found for a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// A predecessor's pinned link was adopted; its program swapped for ours.
    Adopted,
    /// No usable pin: a new link was attached and pinned.
    Attached,
}

/// The state of one held hook, as [`Bpf::check`] sees it in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// The link is no longer attached (e.g. `bpftool link detach`).
    Detached,
    /// The link runs another program than ours.
    WrongProgram,
    /// The link is attached but its pin is gone: it would not survive
    /// pandad's death.
    Unpinned,
}

/// An LSM program is a tracing program: whether it may be loaded and attached
/// says nothing about whether the kernel calls it (that needs `bpf` in the
/// active LSM list). [`crate::probe`] finds out.
pub const LSM_HOOK: &str = "socket_bind";

/// The guard's LSM program (raw/ping binds); its link is global.
pub const LSM_PROGRAM: &str = "socket_bind";

/// `BPF_CGROUP_INET6_BIND` and `BPF_CGROUP_UDP6_SENDMSG` of
/// include/uapi/linux/bpf.h, the attach types of the two cgroup hooks.
fn cgroup_attach_type(name: &str) -> Result<u32> {
    match name {
        "bind6" => Ok(9),
        "sendmsg6" => Ok(15),
        other => bail!("{other} is not one of panda's cgroup hooks"),
    }
}

/// Whether a pinned counters map can serve this build: same size and
/// shape (an upgrade that adds counters starts them afresh).
fn counters_pin_reusable(path: &Path) -> bool {
    MapInfo::from_pin(path).is_ok_and(|i| {
        i.max_entries() == counter::COUNT && i.value_size() == 8 && i.key_size() == 4
    })
}

fn counters_info(map: &aya::maps::Map) -> Result<MapInfo> {
    let aya::maps::Map::PerCpuArray(data) = map else {
        bail!("map COUNTERS is not a per-CPU array");
    };
    Ok(data.info()?)
}

impl Bpf {
    /// Loads the object (maps are created; programs are loaded on demand).
    /// With `pins`, a predecessor's pinned counters map of the same shape
    /// is reused, so counts survive restarts; nothing is pinned yet.
    pub fn load(pins: Option<&PinDir>) -> Result<Bpf> {
        let kernel_btf = Btf::from_sys_fs().ok();
        let mut loader = EbpfLoader::new();
        loader.btf(kernel_btf.as_ref());
        let counters_pin: Option<PathBuf> = pins
            .map(|p| p.entry(COUNTERS_PIN))
            .filter(|p| counters_pin_reusable(p));
        if let Some(p) = &counters_pin {
            loader.map_pin_path("COUNTERS", p.as_path());
        }
        let ebpf = loader
            .load(OBJECT)
            .context("loading panda's BPF object (needs root: CAP_BPF, CAP_PERFMON)")?;
        Ok(Bpf {
            ebpf,
            kernel_btf,
            links: BTreeMap::new(),
        })
    }

    /// Pins the counters map in `pins` (a no-op if it is the pinned one).
    pub fn pin_counters(&self, pins: &PinDir) -> Result<()> {
        let path = pins.entry(COUNTERS_PIN);
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or_else(|| anyhow!("map COUNTERS missing"))?;
        let ours = counters_info(map)?.id();
        if let Ok(pinned) = MapInfo::from_pin(&path) {
            if pinned.id() == ours {
                return Ok(());
            }
            std::fs::remove_file(&path)
                .with_context(|| format!("replacing the stale pin {}", path.display()))?;
        }
        let aya::maps::Map::PerCpuArray(data) = map else {
            bail!("map COUNTERS is not a per-CPU array");
        };
        data.pin(&path)
            .with_context(|| format!("pinning the counters map at {}", path.display()))?;
        Ok(())
    }

    /// Puts program `name` (`bind6`, `sendmsg6` on `cgroup`; `socket_bind`,
    /// the LSM program, globally) in force and pinned in `pins`, adopting a
    /// predecessor's pinned link where there is one: its program is swapped
    /// for ours atomically (cgroup links) or the new link is attached before
    /// the old one is dropped (LSM): never a moment without the hook.
    pub fn install(
        &mut self,
        name: &'static str,
        cgroup: &Path,
        pins: &PinDir,
    ) -> Result<Installed> {
        let path = pins.entry(name);
        let prev = Link::open_pinned(&path)?;
        if name == LSM_PROGRAM {
            // Tracing links cannot swap programs: attach ours, then let the
            // rename drop the predecessor's (they overlap, never a gap).
            let tmp = pins::staging_path(&path);
            let link = self.attach_lsm_pinned(name, &tmp)?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("moving the pin {} into place", path.display()))?;
            self.hold(name, link, 0, &path);
            return Ok(if prev.is_some() {
                Installed::Adopted
            } else {
                Installed::Attached
            });
        }
        let attach_type = cgroup_attach_type(name)?;
        let cgroup_id = pins::cgroup_id(cgroup)?;
        let prog = self.sock_addr(name)?;
        let prog_id = prog.info()?.id();
        let prog_fd = prog.fd()?.as_fd();
        if let Some(link) = prev {
            let info = link.info()?;
            if info.link_type == pins::LINK_TYPE_CGROUP && info.cgroup_id == cgroup_id {
                link.update(prog_fd)
                    .with_context(|| format!("swapping program {name} into the pinned link"))?;
                self.hold(name, link, prog_id, &path);
                return Ok(Installed::Adopted);
            }
            // Detached, or on another cgroup: a new link replaces the pin;
            // the old one goes with its last reference.
        }
        let dir =
            File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        let link = Link::create_cgroup(prog_fd, dir.as_fd(), attach_type)
            .with_context(|| format!("attaching BPF program {name} to {}", cgroup.display()))?;
        link.pin_replacing(&path)?;
        self.hold(name, link, prog_id, &path);
        Ok(Installed::Attached)
    }

    fn hold(&mut self, name: &'static str, link: Link, prog_id: u32, pin: &Path) {
        let pin_ino = pin_inode(pin).unwrap_or(0);
        self.links.insert(
            name,
            Held {
                link,
                prog_id,
                pin_ino,
            },
        );
    }

    /// Drops hook `name` and its pin (a program this instance does not use,
    /// e.g. a predecessor's sendmsg6 after a switch to freebind).
    pub fn uninstall(&mut self, name: &str, pins: &PinDir) -> Result<()> {
        self.links.remove(name);
        match std::fs::remove_file(pins.entry(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("unpinning {name}")),
        }
    }

    /// The hooks this instance holds, by name.
    pub fn held(&self) -> Vec<&'static str> {
        self.links.keys().copied().collect()
    }

    /// Whether hook `name` is still as [`Bpf::install`] left it.
    pub fn check(&mut self, name: &'static str, cgroup_id: u64, pins: &PinDir) -> Result<Health> {
        let Some(held) = self.links.get(name) else {
            bail!("hook {name} is not held");
        };
        if name != LSM_PROGRAM {
            let info = held.link.info()?;
            if info.cgroup_id != cgroup_id {
                return Ok(Health::Detached);
            }
            if info.prog_id != held.prog_id {
                return Ok(Health::WrongProgram);
            }
        }
        if pin_inode(&pins.entry(name)) == Some(held.pin_ino) {
            Ok(Health::Ok)
        } else {
            Ok(Health::Unpinned)
        }
    }

    /// Puts hook `name` right after [`Bpf::check`] found it broken.
    pub fn repair(
        &mut self,
        name: &'static str,
        health: Health,
        cgroup: &Path,
        pins: &PinDir,
    ) -> Result<()> {
        match health {
            Health::Ok => Ok(()),
            Health::Unpinned => {
                std::fs::create_dir_all(pins.path())
                    .with_context(|| format!("creating {}", pins.path().display()))?;
                let path = pins.entry(name);
                let held = self
                    .links
                    .get_mut(name)
                    .ok_or_else(|| anyhow!("hook {name} is not held"))?;
                held.link.pin_replacing(&path)?;
                held.pin_ino = pin_inode(&path).unwrap_or(0);
                Ok(())
            }
            Health::Detached | Health::WrongProgram => {
                if health == Health::Detached {
                    // Forget the dead link so install() attaches afresh.
                    self.uninstall(name, pins)?;
                }
                self.install(name, cgroup, pins).map(|_| ())
            }
        }
    }

    /// A real stop: unpins every hook and the counters and closes the links,
    /// which detaches the programs.
    pub fn remove_pins(&mut self, pins: &PinDir) -> Result<()> {
        self.links.clear();
        pins.remove()
    }

    /// Publishes the programs' configuration. Call before attaching anything.
    pub fn write_config(&mut self, cfg: &Config) -> Result<()> {
        let mut map: Array<&mut MapData, Config> = Array::try_from(
            self.ebpf
                .map_mut("CONFIG")
                .ok_or_else(|| anyhow!("map CONFIG missing"))?,
        )?;
        map.set(0, cfg, 0).context("writing the CONFIG map")?;
        Ok(())
    }

    /// Loads one program of the object by name (idempotent).
    fn sock_addr(&mut self, name: &str) -> Result<&mut CgroupSockAddr> {
        let prog: &mut CgroupSockAddr = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the BPF object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("loading BPF program {name}"))?;
        }
        Ok(prog)
    }

    /// Attaches a cgroup sock_addr program to `cgroup` for as long as this
    /// [`Bpf`] lives, unpinned (the start-up probes; hooks use
    /// [`Bpf::install`]).
    pub fn attach_sock_addr(&mut self, name: &str, cgroup: impl AsFd) -> Result<()> {
        let prog = self.sock_addr(name)?;
        // On Linux >= 5.7 aya attaches with bpf_link_create, whose cgroup
        // attachments always stack (multi) and which wants flags == 0: that
        // is what `Single` maps to. (Older kernels are unsupported anyway.)
        prog.attach(cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching BPF program {name} to the cgroup"))?;
        Ok(())
    }

    /// Detaches every unpinned link of a sock_addr program.
    pub fn detach_sock_addr(&mut self, name: &str) -> Result<()> {
        let prog = self.sock_addr(name)?;
        prog.unload().with_context(|| format!("unloading {name}"))?;
        Ok(())
    }

    fn lsm_program(&mut self, name: &str) -> Result<&mut Lsm> {
        let prog: &mut Lsm = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?;
        if prog.fd().is_err() {
            let btf = self
                .kernel_btf
                .as_ref()
                .ok_or_else(|| anyhow!("LSM programs need kernel BTF (CONFIG_DEBUG_INFO_BTF)"))?;
            prog.load(LSM_HOOK, btf)
                .with_context(|| format!("loading LSM program {name}"))?;
        }
        Ok(prog)
    }

    /// Loads and attaches an LSM program on [`LSM_HOOK`], unpinned, until
    /// [`Bpf::detach_lsm`] (the start-up probe).
    pub fn attach_lsm(&mut self, name: &str) -> Result<()> {
        self.lsm_program(name)?
            .attach()
            .with_context(|| format!("attaching LSM program {name}"))?;
        Ok(())
    }

    /// Attaches an LSM program with its link pinned at `at`.
    fn attach_lsm_pinned(&mut self, name: &str, at: &Path) -> Result<Link> {
        let prog = self.lsm_program(name)?;
        let id = prog
            .attach()
            .with_context(|| format!("attaching LSM program {name}"))?;
        let link: FdLink = prog.take_link(id)?.into();
        // aya's FdLink does not lend its fd: pin it, then reopen the pin.
        let _ = std::fs::remove_file(at);
        drop(
            link.pin(at)
                .with_context(|| format!("pinning {name} at {}", at.display()))?,
        );
        Link::open_pinned(at)?.ok_or_else(|| anyhow!("{} vanished after pinning", at.display()))
    }

    /// Unloads an LSM program (detaching its unpinned links).
    pub fn detach_lsm(&mut self, name: &str) -> Result<()> {
        let prog = self.lsm_program(name)?;
        prog.unload().with_context(|| format!("unloading {name}"))?;
        Ok(())
    }

    /// Counter totals over all CPUs, in [`counter`] index order.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize]> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("COUNTERS")
                .ok_or_else(|| anyhow!("map COUNTERS missing"))?,
        )?;
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Sets or replaces the holder of a leased address (given as the words
    /// bind6 sees, [`crate::leases::addr_words`]).
    pub fn lease_put(&mut self, words: [u32; 4], lease: Lease) -> Result<()> {
        let mut map: aya::maps::HashMap<&mut MapData, [u32; 4], Lease> =
            aya::maps::HashMap::try_from(self.map_mut("LEASES")?)?;
        map.insert(words, lease, 0)
            .context("writing the LEASES map (is it full?)")?;
        Ok(())
    }

    /// Forgets a leased address (a no-op if it is not there).
    pub fn lease_delete(&mut self, words: [u32; 4]) -> Result<()> {
        let mut map: aya::maps::HashMap<&mut MapData, [u32; 4], Lease> =
            aya::maps::HashMap::try_from(self.map_mut("LEASES")?)?;
        match map.remove(&words) {
            Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
            Err(e) => Err(e).context("deleting from the LEASES map"),
        }
    }

    /// Sets how many addresses cgroup `id` holds; 0 removes it.
    pub fn holder_set(&mut self, id: u64, count: u32) -> Result<()> {
        let mut map: aya::maps::HashMap<&mut MapData, u64, u32> =
            aya::maps::HashMap::try_from(self.map_mut("HOLDERS")?)?;
        if count > 0 {
            return map
                .insert(id, count, 0)
                .context("writing the HOLDERS map (is it full?)");
        }
        match map.remove(&id) {
            Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
            Err(e) => Err(e).context("deleting from the HOLDERS map"),
        }
    }

    /// Sets the mask of cgroup levels that have holders (0: no leases).
    pub fn set_lease_levels(&mut self, mask: u64) -> Result<()> {
        let mut map: Array<&mut MapData, u64> = Array::try_from(self.map_mut("LEASE_LEVELS")?)?;
        map.set(0, mask, 0)
            .context("writing the LEASE_LEVELS map")?;
        Ok(())
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
    }

    /// The probe programs' scratch array.
    pub fn probe_map(&mut self) -> Result<Array<&mut MapData, i64>> {
        Ok(Array::try_from(
            self.ebpf
                .map_mut("PROBE")
                .ok_or_else(|| anyhow!("map PROBE missing"))?,
        )?)
    }
}
