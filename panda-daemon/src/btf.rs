//! Kernel structure offsets from the running kernel's BTF.
//!
//! panda's BPF programs are written in Rust, which cannot emit CO-RE
//! relocations, yet they must read a few kernel fields (a socket's FREEBIND
//! and TRANSPARENT bits, its netns; an `inet6_ifaddr`'s address, flags and
//! device). This module reads those offsets from `/sys/kernel/btf/vmlinux`
//! and the programs receive them in [`panda_common::KernelOffsets`]: CO-RE,
//! done once at start-up by the daemon.
//!
//! Only the BTF kinds needed to walk struct members and enum values are
//! interpreted; the others are skipped by their documented sizes
//! (Documentation/bpf/btf.rst).
use std::{collections::HashMap, path::Path};

use anyhow::{anyhow, bail, Context, Result};
use panda_common::KernelOffsets;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    /// Offset from the start of the enclosing type, in bits.
    bit_offset: u32,
    /// Non-zero for a bitfield.
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
enum Type {
    Composite { members: Vec<Member> },
    Alias { target: u32 },
    Other,
}

/// The parts of a BTF blob panda needs: struct layouts and enum constants,
/// indexed by name.
pub struct Btf {
    types: Vec<Type>,
    structs: HashMap<String, u32>,
    enum_values: HashMap<String, i64>,
}

/// Where a field lives inside its outermost struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldOffset {
    pub bit_offset: u32,
    pub bitfield_size: u32,
}

impl FieldOffset {
    /// Byte offset; only meaningful for non-bitfields.
    pub fn bytes(&self) -> u32 {
        self.bit_offset / 8
    }
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Btf> {
        Btf::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    /// A BTF file on disk (tests; kernels whose BTF lives elsewhere).
    pub fn from_file(path: &Path) -> Result<Btf> {
        let data = std::fs::read(path).with_context(|| {
            format!(
                "reading kernel BTF from {} (the kernel needs CONFIG_DEBUG_INFO_BTF)",
                path.display()
            )
        })?;
        Btf::parse(&data).with_context(|| format!("parsing BTF in {}", path.display()))
    }

    /// Parses raw little-endian BTF (header, type and string sections).
    pub fn parse(data: &[u8]) -> Result<Btf> {
        let r = Reader { data };
        if r.u16(0)? != BTF_MAGIC {
            bail!("bad magic (big-endian BTF is not supported)");
        }
        let hdr_len = r.u32(4)? as usize;
        let type_off = r.u32(8)? as usize;
        let type_len = r.u32(12)? as usize;
        let str_off = r.u32(16)? as usize;
        let str_len = r.u32(20)? as usize;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| anyhow!("string section out of bounds"))?;
        let name = |off: u32| -> String {
            let s = &strings[(off as usize).min(strings.len())..];
            let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };

        let mut btf = Btf {
            types: vec![Type::Other], // type id 0 is void
            structs: HashMap::new(),
            enum_values: HashMap::new(),
        };
        let mut pos = hdr_len + type_off;
        let end = pos + type_len;
        while pos < end {
            let name_off = r.u32(pos)?;
            let info = r.u32(pos + 4)?;
            let size_or_type = r.u32(pos + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            pos += 12;
            let id = btf.types.len() as u32;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        let off = r.u32(m + 8)?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (off & 0xff_ffff, off >> 24)
                        } else {
                            (off, 0)
                        };
                        members.push(Member {
                            name: name(r.u32(m)?),
                            type_id: r.u32(m + 4)?,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    pos += vlen * 12;
                    let n = name(name_off);
                    if kind == KIND_STRUCT && !n.is_empty() {
                        // The first definition wins: later duplicates are rare
                        // and identical in vmlinux.
                        btf.structs.entry(n).or_insert(id);
                    }
                    Type::Composite { members }
                }
                KIND_ENUM => {
                    for i in 0..vlen {
                        let m = pos + i * 8;
                        let v = r.u32(m + 4)? as i32 as i64;
                        btf.enum_values.insert(name(r.u32(m)?), v);
                    }
                    pos += vlen * 8;
                    Type::Other
                }
                KIND_ENUM64 => {
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        let v = (r.u32(m + 4)? as u64 | ((r.u32(m + 8)? as u64) << 32)) as i64;
                        btf.enum_values.insert(name(r.u32(m)?), v);
                    }
                    pos += vlen * 12;
                    Type::Other
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias {
                        target: size_or_type,
                    }
                }
                KIND_FUNC_PROTO => {
                    pos += vlen * 8;
                    Type::Other
                }
                KIND_INT => {
                    pos += 4;
                    Type::Other
                }
                KIND_ARRAY => {
                    pos += 12;
                    Type::Other
                }
                KIND_VAR | KIND_DECL_TAG => {
                    pos += 4;
                    Type::Other
                }
                KIND_DATASEC => {
                    pos += vlen * 12;
                    Type::Other
                }
                KIND_PTR | KIND_FWD | KIND_FLOAT | KIND_FUNC => Type::Other,
                k => bail!("unknown BTF kind {k} at type id {id}"),
            };
            btf.types.push(ty);
        }
        Ok(btf)
    }

    fn resolve(&self, mut id: u32) -> u32 {
        while let Some(Type::Alias { target }) = self.types.get(id as usize) {
            id = *target;
        }
        id
    }

    /// Finds `member` in `struct name`, looking through anonymous structs and
    /// unions the way C does. A dotted path (`__sk_common.skc_net`) walks
    /// named nested members.
    pub fn field(&self, struct_name: &str, path: &str) -> Result<FieldOffset> {
        let mut id = *self
            .structs
            .get(struct_name)
            .ok_or_else(|| anyhow!("struct {struct_name} not in kernel BTF"))?;
        let mut total = 0u32;
        let mut last = FieldOffset {
            bit_offset: 0,
            bitfield_size: 0,
        };
        for part in path.split('.') {
            let (off, m) = self
                .find_member(id, part)
                .ok_or_else(|| anyhow!("struct {struct_name} has no member {path}"))?;
            total += off;
            last = FieldOffset {
                bit_offset: total,
                bitfield_size: m.bitfield_size,
            };
            id = self.resolve(m.type_id);
        }
        Ok(last)
    }

    fn find_member(&self, id: u32, name: &str) -> Option<(u32, Member)> {
        let Type::Composite { members, .. } = self.types.get(self.resolve(id) as usize)? else {
            return None;
        };
        for m in members {
            if m.name == name {
                return Some((m.bit_offset, m.clone()));
            }
            if m.name.is_empty() {
                if let Some((off, inner)) = self.find_member(m.type_id, name) {
                    return Some((m.bit_offset + off, inner));
                }
            }
        }
        None
    }

    /// Value of an enumerator (enum constants share one C namespace).
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        self.enum_values.get(name).copied()
    }
}

struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn u16(&self, at: usize) -> Result<u16> {
        let b = self
            .data
            .get(at..at + 2)
            .ok_or_else(|| anyhow!("truncated at {at}"))?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, at: usize) -> Result<u32> {
        let b = self
            .data
            .get(at..at + 4)
            .ok_or_else(|| anyhow!("truncated at {at}"))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A single bit of `struct inet_sock`, as (byte, mask) for a one-byte read.
fn inet_flag_bit(btf: &Btf, flag: &str, legacy_bitfield: &str) -> Result<(u32, u32)> {
    // Linux >= 6.6: `unsigned long inet_flags` with bits numbered by an enum.
    if let (Ok(flags), Some(bit)) = (
        btf.field("inet_sock", "inet_flags"),
        btf.enum_value(&format!("INET_FLAGS_{flag}")),
    ) {
        let bit = bit as u32;
        return Ok((flags.bytes() + bit / 8, 1 << (bit % 8)));
    }
    // Older kernels: a one-bit bitfield.
    let f = btf
        .field("inet_sock", legacy_bitfield)
        .with_context(|| format!("finding the {flag} bit of struct inet_sock"))?;
    Ok((f.bit_offset / 8, 1 << (f.bit_offset % 8)))
}

/// Everything the BPF programs read from kernel structures, resolved against
/// the running kernel.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets> {
    let (freebind_byte, freebind_mask) = inet_flag_bit(btf, "FREEBIND", "freebind")?;
    let (transparent_byte, transparent_mask) = inet_flag_bit(btf, "TRANSPARENT", "transparent")?;
    let bytes = |s: &str, p: &str| -> Result<u32> {
        let f = btf.field(s, p)?;
        if f.bitfield_size != 0 || f.bit_offset % 8 != 0 {
            bail!("{s}.{p} is a bitfield on this kernel; panda needs a byte-aligned field");
        }
        Ok(f.bytes())
    };
    Ok(KernelOffsets {
        valid: 1,
        freebind_byte,
        freebind_mask,
        transparent_byte,
        transparent_mask,
        sock_net: bytes("sock", "__sk_common.skc_net")?,
        sock_protocol: bytes("sock", "sk_protocol")?,
        sock_type: bytes("sock", "sk_type")?,
        sock_bound_dev_if: bytes("sock", "__sk_common.skc_bound_dev_if")?,
        socket_sk: bytes("socket", "sk")?,
        net_cookie: bytes("net", "net_cookie")?,
        net_hash_mix: bytes("net", "hash_mix")?,
        // Per-netns since Linux 5.18; older kernels have a global table.
        net_addr_lst: bytes("net", "ipv6.inet6_addr_lst").context(
            "this kernel has no per-namespace IPv6 address table (Linux >= 5.18 needed)",
        )?,
        ifa_addr: bytes("inet6_ifaddr", "addr")?,
        ifa_flags: bytes("inet6_ifaddr", "flags")?,
        ifa_scope: bytes("inet6_ifaddr", "scope")?,
        ifa_addr_lst: bytes("inet6_ifaddr", "addr_lst")?,
        ifa_idev: bytes("inet6_ifaddr", "idev")?,
        idev_dev: bytes("inet6_dev", "dev")?,
        dev_ifindex: bytes("net_device", "ifindex")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Option<Btf> {
        Btf::from_sys_fs().ok()
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(&[0u8; 8]).is_err());
        assert!(Btf::parse(&[]).is_err());
    }

    /// Checks the parser against the running kernel where BTF exists: the
    /// first member of `struct sock` is `__sk_common` at offset 0, and
    /// `struct socket` has an `sk` pointer (8 bytes aligned).
    #[test]
    fn host_btf_layouts() {
        let Some(btf) = host() else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux");
            return;
        };
        assert!(btf.structs.contains_key("sock"));
        assert_eq!(btf.field("sock", "__sk_common").unwrap().bit_offset, 0);
        let sk = btf.field("socket", "sk").unwrap();
        assert_eq!(sk.bit_offset % 64, 0);
        let off = kernel_offsets(&btf).unwrap();
        assert_eq!(off.valid, 1);
        assert!(off.freebind_mask.is_power_of_two() && off.freebind_mask < 256);
        assert_ne!(
            (off.freebind_byte, off.freebind_mask),
            (off.transparent_byte, off.transparent_mask)
        );
        assert_eq!(
            off.ifa_addr, 0,
            "struct inet6_ifaddr starts with its address"
        );
        assert!(off.net_addr_lst > 0 && off.ifa_addr_lst > off.ifa_addr);
        assert!(btf.field("sock", "no_such_member").is_err());
    }
}
