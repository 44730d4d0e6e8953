//! An empty cgroup/bind6 program (`return 1`: allow) attached at the
//! cgroup2 root: what the kernel's hook machinery costs by itself (taking
//! the socket lock, finding the cgroup, running a program array), so the
//! hook case can tell that apart from what panda's own program adds.
//!
//! Two instructions do not justify an object file: the program is loaded
//! with BPF_PROG_LOAD and attached with BPF_LINK_CREATE directly. The link
//! lives as long as its descriptor, so dropping [`EmptyBind6`] (or the
//! process dying) detaches it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET6_BIND: u32 = 9;

/// The attached program; detached on drop.
pub struct EmptyBind6 {
    _link: OwnedFd,
    prog: OwnedFd,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 8],
}

#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 6],
}

impl EmptyBind6 {
    /// Loads the program and attaches it at the cgroup2 root.
    pub fn attach() -> Result<EmptyBind6> {
        // r0 = 1; exit
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0x00, 0, 0, 1, 0, 0, 0]),
            u64::from_le_bytes([0x95, 0x00, 0, 0, 0, 0, 0, 0]),
        ];
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..11].copy_from_slice(b"bench_empty");
        let load = ProgLoad {
            prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            expected_attach_type: BPF_CGROUP_INET6_BIND,
            ..Default::default()
        };
        let prog = bpf(BPF_PROG_LOAD, &load).context("loading the empty bind6 program")?;
        let root = std::fs::File::open(crate::machine::cgroup2_mount()?)
            .context("opening the cgroup2 root")?;
        let link = LinkCreate {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: root.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_INET6_BIND,
            ..Default::default()
        };
        let link = bpf(BPF_LINK_CREATE, &link).context("attaching the empty bind6 program")?;
        Ok(EmptyBind6 { _link: link, prog })
    }

    /// The program's kernel id (for its BPF statistics).
    pub fn prog_id(&self) -> Result<u32> {
        crate::procfs::bpf_prog_id(std::process::id(), &self.prog.as_raw_fd().to_string())
            .context("no prog_id in the empty program's fdinfo")
    }
}

/// bpf(2) with `attr`; the new descriptor.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> Result<OwnedFd> {
    // SAFETY: attr is a properly laid out, zero-padded bpf_attr member of
    // the size passed; the pointers inside outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if fd < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
