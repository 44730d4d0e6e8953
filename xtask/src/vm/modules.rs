//! Kernel modules for the guest: which of the modules the suite needs a
//! kernel has as loadable modules (rather than built in), their dependencies
//! (from each module's own `.modinfo` `depends=`, since Debian's package has
//! no `modules.dep`), and the order to `insmod` them in.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// What the integration suite needs from the kernel beyond the core BPF and
/// IPv6 options, named by module. Their dependencies come along.
///
/// - `nf_tables`: pandad's scope table, and the tests' own `nft` rules;
/// - `nft_fib_inet` (with `nft_fib_ipv6`/`_ipv4`): the ICMPv6 backstop's
///   `fib saddr type` in an `inet` table;
/// - `veth`: the scope tests' peer namespace, and the guard's device tests.
pub const SUITE_MODULES: &[&str] = &["nf_tables", "nft_fib_inet", "nft_fib_ipv6", "veth"];

/// A kernel's module tree (`lib/modules/VERSION`), indexed by module name.
pub struct ModuleTree {
    dir: PathBuf,
    /// Module name (`-` read as `_`, as the kernel does) → file.
    files: HashMap<String, PathBuf>,
    /// Names listed in `modules.builtin`.
    builtin: HashSet<String>,
}

/// Where a module comes from in a given kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dep {
    /// Built into the kernel image: nothing to load.
    BuiltIn,
    /// A loadable module needing these modules first.
    Module(Vec<String>),
}

/// The kernel's spelling of a module name: `-` and `_` are the same.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `nf_tables.ko.xz` → `nf_tables`.
fn module_name(file: &str) -> Option<String> {
    let stem = file.split(".ko").next()?;
    (file.len() > stem.len() && file[stem.len()..].starts_with(".ko")).then(|| normalize(stem))
}

impl ModuleTree {
    /// Indexes `dir` (`.../lib/modules/VERSION`).
    pub fn open(dir: &Path) -> Result<ModuleTree> {
        let mut files = HashMap::new();
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if d == dir.join("kernel") => {
                    return Err(e).with_context(|| format!("{} has no kernel/", dir.display()))
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", d.display())),
            };
            for e in rd {
                let e = e?;
                let path = e.path();
                if e.file_type()?.is_dir() {
                    stack.push(path);
                } else if let Some(name) = e.file_name().to_str().and_then(module_name) {
                    files.insert(name, path);
                }
            }
        }
        let builtin = match fs::read_to_string(dir.join("modules.builtin")) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.rsplit('/').next().and_then(module_name))
                .collect(),
            Err(_) => HashSet::new(),
        };
        Ok(ModuleTree {
            dir: dir.to_path_buf(),
            files,
            builtin,
        })
    }

    /// How `name` exists in this kernel, reading its `.modinfo` if it is a
    /// loadable module.
    fn dep(&self, name: &str) -> Result<Dep> {
        if let Some(file) = self.files.get(name) {
            let bytes = read_module(file)?;
            let info = modinfo(&bytes).with_context(|| format!("reading {}", file.display()))?;
            let deps = info
                .iter()
                .find(|(k, _)| k == "depends")
                .map(|(_, v)| {
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(normalize)
                        .collect()
                })
                .unwrap_or_default();
            return Ok(Dep::Module(deps));
        }
        if self.builtin.contains(name) {
            return Ok(Dep::BuiltIn);
        }
        bail!(
            "this kernel has no module {name}, neither loadable (under {}) nor built in \
             (modules.builtin)",
            self.dir.display()
        )
    }

    /// The loadable modules `roots` need, dependencies first.
    pub fn load_order(&self, roots: &[&str]) -> Result<Vec<String>> {
        load_order(roots, |name| self.dep(name))
    }

    /// Decompresses (if needed) the modules `roots` need into `out_dir`;
    /// returns the `.ko` files in load order.
    pub fn stage(&self, roots: &[&str], out_dir: &Path) -> Result<Vec<PathBuf>> {
        let order = self.load_order(roots)?;
        fs::create_dir_all(out_dir)
            .with_context(|| format!("cannot create {}", out_dir.display()))?;
        let mut staged = Vec::new();
        for name in order {
            let src = &self.files[&name];
            let dest = out_dir.join(format!("{name}.ko"));
            fs::write(&dest, read_module(src)?)
                .with_context(|| format!("cannot write {}", dest.display()))?;
            staged.push(dest);
        }
        Ok(staged)
    }
}

/// A module file's ELF bytes, decompressed with the matching host tool.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko") {
        return fs::read(path).with_context(|| format!("cannot read {name}"));
    } else if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        bail!("{name}: unknown module compression");
    };
    let out = cmd::output(Command::new(tool).arg("-dc").arg(path))
        .with_context(|| format!("decompressing {name} needs `{tool}`"))?;
    if !out.status.success() {
        bail!(
            "`{tool} -dc {name}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Orders the modules `roots` need so that each comes after everything it
/// depends on. `dep` says how a module exists (built in, or loadable with
/// dependencies); built-in modules are left out, and so are their
/// dependencies (built-in code cannot depend on a module).
pub fn load_order(roots: &[&str], mut dep: impl FnMut(&str) -> Result<Dep>) -> Result<Vec<String>> {
    #[derive(PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        dep: &mut dyn FnMut(&str) -> Result<Dep>,
        marks: &mut HashMap<String, Mark>,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                bail!("module dependency cycle: {} -> {name}", path.join(" -> "))
            }
            None => {}
        }
        marks.insert(name.to_string(), Mark::Visiting);
        path.push(name.to_string());
        if let Dep::Module(deps) = dep(name)? {
            for d in &deps {
                visit(d, dep, marks, path, order)
                    .with_context(|| format!("{name} depends on {d}"))?;
            }
            order.push(name.to_string());
        }
        path.pop();
        marks.insert(name.to_string(), Mark::Done);
        Ok(())
    }
    let mut marks = HashMap::new();
    let mut order = Vec::new();
    for root in roots {
        visit(
            &normalize(root),
            &mut dep,
            &mut marks,
            &mut Vec::new(),
            &mut order,
        )?;
    }
    Ok(order)
}

/// The `key=value` strings of an ELF64 little-endian object's `.modinfo`
/// section (what `modinfo FILE` prints), without needing kmod.
pub fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>> {
    let u16_at = |o: usize| -> Result<u16> {
        Ok(u16::from_le_bytes(
            elf.get(o..o + 2).context("truncated ELF")?.try_into()?,
        ))
    };
    let u32_at = |o: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            elf.get(o..o + 4).context("truncated ELF")?.try_into()?,
        ))
    };
    let u64_at = |o: usize| -> Result<usize> {
        Ok(u64::from_le_bytes(elf.get(o..o + 8).context("truncated ELF")?.try_into()?) as usize)
    };
    if elf.get(..4) != Some(b"\x7fELF") {
        bail!("not an ELF file");
    }
    if elf[4] != 2 || elf[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let shoff = u64_at(0x28)?;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    if shentsize < 0x40 {
        bail!("bad ELF section header size {shentsize}");
    }
    let section = |i: usize| -> Result<(u32, usize, usize)> {
        let h = shoff + i * shentsize;
        Ok((u32_at(h)?, u64_at(h + 0x18)?, u64_at(h + 0x20)?))
    };
    let bytes = |off: usize, size: usize| -> Result<&[u8]> {
        elf.get(off..off.checked_add(size).context("bad ELF section")?)
            .context("ELF section out of bounds")
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let strtab = bytes(stroff, strsize)?;
    for i in 0..shnum {
        let (name, off, size) = section(i)?;
        let name = strtab
            .get(name as usize..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            return Ok(bytes(off, size)?
                .split(|&b| b == 0)
                .filter_map(|s| {
                    let s = String::from_utf8_lossy(s);
                    s.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect());
        }
    }
    bail!("no .modinfo section (not a kernel module?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph<'a>(
        edges: &'a [(&'a str, Option<&'a [&'a str]>)],
    ) -> impl FnMut(&str) -> Result<Dep> + 'a {
        move |name| match edges.iter().find(|(n, _)| *n == name) {
            Some((_, Some(deps))) => Ok(Dep::Module(deps.iter().map(|s| s.to_string()).collect())),
            Some((_, None)) => Ok(Dep::BuiltIn),
            None => bail!("no module {name}"),
        }
    }

    #[test]
    fn dependencies_come_first() {
        // The real shape of nft_fib_inet on Debian's 6.12 cloud kernel.
        let edges: &[(&str, Option<&[&str]>)] = &[
            (
                "nft_fib_inet",
                Some(&["nft_fib_ipv6", "nft_fib_ipv4", "nf_tables", "nft_fib"]),
            ),
            ("nft_fib_ipv6", Some(&["nf_tables", "nft_fib"])),
            ("nft_fib_ipv4", Some(&["nf_tables", "nft_fib"])),
            ("nft_fib", Some(&["nf_tables"])),
            ("nf_tables", Some(&["nfnetlink", "libcrc32c"])),
            ("nfnetlink", Some(&[])),
            ("libcrc32c", None),
            ("veth", Some(&[])),
        ];
        let order = load_order(&["nf_tables", "nft_fib_inet", "veth"], graph(edges)).unwrap();
        assert_eq!(
            order,
            [
                "nfnetlink",
                "nf_tables",
                "nft_fib",
                "nft_fib_ipv6",
                "nft_fib_ipv4",
                "nft_fib_inet",
                "veth"
            ]
        );
        // Each module exactly once, after all of its (loadable) dependencies.
        for (i, m) in order.iter().enumerate() {
            let deps = edges.iter().find(|(n, _)| n == m).unwrap().1.unwrap();
            for d in deps {
                if let Some(j) = order.iter().position(|x| x == d) {
                    assert!(j < i, "{d} must load before {m}");
                }
            }
        }
    }

    #[test]
    fn built_in_roots_load_nothing() {
        let edges: &[(&str, Option<&[&str]>)] = &[("veth", None), ("nf_tables", None)];
        assert!(load_order(&["veth", "nf_tables"], graph(edges))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn names_a_missing_dependency() {
        let edges: &[(&str, Option<&[&str]>)] = &[("a", Some(&["b"]))];
        let e = format!("{:#}", load_order(&["a"], graph(edges)).unwrap_err());
        assert!(
            e.contains("a depends on b") && e.contains("no module b"),
            "{e}"
        );
    }

    #[test]
    fn refuses_cycles() {
        let edges: &[(&str, Option<&[&str]>)] = &[
            ("a", Some(&["b"])),
            ("b", Some(&["c"])),
            ("c", Some(&["a"])),
        ];
        let e = format!("{:#}", load_order(&["a"], graph(edges)).unwrap_err());
        assert!(e.contains("cycle: a -> b -> c -> a"), "{e}");
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("nf_tables.ko.xz").as_deref(), Some("nf_tables"));
        assert_eq!(module_name("nft-fib.ko").as_deref(), Some("nft_fib"));
        assert_eq!(module_name("modules.order"), None);
        assert_eq!(module_name("README"), None);
    }

    /// A minimal ELF64 with a section string table and a `.modinfo`.
    fn tiny_elf(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 0x40];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELFCLASS64
        elf[5] = 1; // little-endian
        let str_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let info_off = elf.len();
        elf.extend_from_slice(modinfo);
        elf.resize(elf.len().div_ceil(8) * 8, 0);
        let shoff = elf.len();
        // Section 0 (null), 1 (.shstrtab), 2 (.modinfo).
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, str_off, shstrtab.len()),
            (11, info_off, modinfo.len()),
        ] {
            let mut h = vec![0u8; 0x40];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        }
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_modinfo() {
        let elf =
            tiny_elf(b"license=GPL\0depends=nfnetlink,libcrc32c\0\0intree=Y\0name=nf_tables\0");
        let info = modinfo(&elf).unwrap();
        assert_eq!(
            info,
            [
                ("license".to_string(), "GPL".to_string()),
                ("depends".into(), "nfnetlink,libcrc32c".into()),
                ("intree".into(), "Y".into()),
                ("name".into(), "nf_tables".into()),
            ]
        );
        assert!(modinfo(b"not an elf").is_err());
        assert!(modinfo(&elf[..0x30]).is_err());
    }
}
