//! The BPF side of pandad: loading panda-ebpf's object, filling its maps and
//! attaching its programs. This module is the only owner of BPF state.
//!
//! Kernel contract (what the attach points promise; see panda-ebpf's header
//! for what each program relies on inside):
//!
//! - cgroup/bind6 and cgroup/sendmsg6 are attached with `bpf_link`s to the
//!   configured cgroup in multi-attach mode, so several instances (tests,
//!   other tools) stack instead of replacing each other. A link lives as long
//!   as its file descriptor: a crashed pandad leaves nothing attached.
//! - Programs attached at the cgroup2 root see the sockets of every network
//!   namespace; each program compares `bpf_get_netns_cookie()` with the
//!   cookie in `CONFIG` and leaves other namespaces alone.
//! - The LSM program is global, not per cgroup: it filters by the netns
//!   cookie the same way.
use std::os::fd::AsFd;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSockAddr, Lsm},
    Btf, Ebpf, EbpfLoader,
};
use panda_common::{counter, Config};

/// The object built by `cargo xtask build-ebpf`, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PANDA_BPF_OBJECT_PATH"));

/// panda-ebpf's programs and maps, loaded into the kernel.
pub struct Bpf {
    ebpf: Ebpf,
    /// None on kernels built without BTF: cgroup programs load without it;
    /// the LSM program (and guard mode's offsets) need it.
    kernel_btf: Option<Btf>,
}

/// An LSM program is a tracing program: whether it may be loaded and attached
/// says nothing about whether the kernel calls it (that needs `bpf` in the
/// active LSM list). [`crate::probe`] finds out.
pub const LSM_HOOK: &str = "socket_bind";

impl Bpf {
    /// Loads the object (maps are created; programs are loaded on demand).
    pub fn load() -> Result<Bpf> {
        let kernel_btf = Btf::from_sys_fs().ok();
        let ebpf = EbpfLoader::new()
            .btf(kernel_btf.as_ref())
            .load(OBJECT)
            .context("loading panda's BPF object (needs root: CAP_BPF, CAP_PERFMON)")?;
        Ok(Bpf { ebpf, kernel_btf })
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

    /// Attaches a cgroup sock_addr program (`bind6`, `sendmsg6`,
    /// `probe_freebind`) to `cgroup`. It stays attached until [`Bpf::detach`]
    /// or drop.
    pub fn attach_sock_addr(&mut self, name: &str, cgroup: impl AsFd) -> Result<()> {
        let prog = self.sock_addr(name)?;
        // On Linux >= 5.7 aya attaches with bpf_link_create, whose cgroup
        // attachments always stack (multi) and which wants flags == 0: that
        // is what `Single` maps to. (Older kernels are unsupported anyway.)
        prog.attach(cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching BPF program {name} to the cgroup"))?;
        Ok(())
    }

    /// Detaches every link of a sock_addr program.
    pub fn detach_sock_addr(&mut self, name: &str) -> Result<()> {
        let prog = self.sock_addr(name)?;
        prog.unload().with_context(|| format!("unloading {name}"))?;
        Ok(())
    }

    /// Loads and attaches an LSM program on [`LSM_HOOK`].
    pub fn attach_lsm(&mut self, name: &str) -> Result<()> {
        let prog: &mut Lsm = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?;
        let btf = self
            .kernel_btf
            .as_ref()
            .ok_or_else(|| anyhow!("LSM programs need kernel BTF (CONFIG_DEBUG_INFO_BTF)"))?;
        prog.load(LSM_HOOK, btf)
            .with_context(|| format!("loading LSM program {name}"))?;
        prog.attach()
            .with_context(|| format!("attaching LSM program {name}"))?;
        Ok(())
    }

    /// Unloads an LSM program (detaching it).
    pub fn detach_lsm(&mut self, name: &str) -> Result<()> {
        let prog: &mut Lsm = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?;
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

    /// The probe programs' scratch array.
    pub fn probe_map(&mut self) -> Result<Array<&mut MapData, i64>> {
        Ok(Array::try_from(
            self.ebpf
                .map_mut("PROBE")
                .ok_or_else(|| anyhow!("map PROBE missing"))?,
        )?)
    }
}
