//! The guest's userspace: a `newc` cpio archive (the format the kernel
//! unpacks as initramfs) holding busybox, the host's `ip`/`nft`/`nsenter`/
//! `sysctl` with their shared libraries, pandad, panda, the test binaries
//! (at the absolute paths they were built with: the tests find pandad through
//! `env!("CARGO_BIN_EXE_pandad")`), the kernel modules to load, and `/init`.
//!
//! The archive writer is ours (a few dozen lines) so that no `cpio` binary is
//! needed; files are streamed from the host, never held in memory.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, BufWriter, Write},
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// The guest's `/init`, kept as a file in the repository (xtask/vm/init.sh).
pub const INIT_SCRIPT: &str = include_str!("../../vm/init.sh");

/// Where `/init` reads its instructions (written by [`Layout::instructions`]).
pub const GUEST_CONFIG_DIR: &str = "/panda-vm";

/// Busybox applets `/init` uses, as symlinks in `/bin`. The harness's own
/// tools (`ip`, `nsenter`, `nft`, `sysctl`) are the host's real ones, not
/// busybox's, which lack options the tests use (`ip netns`, `nsenter --net`).
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "mount", "umount", "mkdir", "cat", "echo", "poweroff", "reboot", "insmod", "ls", "dmesg",
    "uname", "sleep", "date", "ps", "rm", "ln", "sync", "env", "grep", "head", "tr",
];

/// Programs the integration tests (and pandad) run by name, copied from the
/// host with their libraries. Keep in step with tests/ (grep for
/// `Command::new`, `.cmd(`, `exec_ok(`) and pandad's own `Command::new`.
pub const HOST_TOOLS: &[&str] = &["ip", "nsenter", "nft", "sysctl"];

/// Host directories the guest mounts over (proc, sysfs, devtmpfs, tmpfs):
/// a payload file below one of them would be hidden in the guest.
const MOUNTED_IN_GUEST: &[&str] = &["/proc", "/sys", "/dev", "/run", "/var/run"];

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory (mode 0755).
    Dir,
    /// A regular file copied from the host (contents read at write time,
    /// symlinks followed), with this permission mode.
    HostFile { src: PathBuf, mode: u32 },
    /// A regular file with these contents and mode.
    Data { bytes: Vec<u8>, mode: u32 },
    /// A symbolic link to this target.
    Symlink(String),
    /// A character device node (major, minor).
    CharDev(u32, u32),
}

/// The archive being assembled: guest path → entry. Parents are added
/// automatically, and a `BTreeMap` writes every directory before what it
/// contains (the kernel does not create missing parents).
#[derive(Debug, Default)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Adds `entry` at absolute guest path `path` (and its parents as
    /// directories). A second, different entry at the same path is an error:
    /// two payload files claiming one path would silently shadow each other.
    pub fn add(&mut self, path: &str, entry: Entry) -> Result<()> {
        let name = archive_name(path)?;
        let mut parent = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(parent.clone(), Entry::Dir);
                }
                Some(Entry::Dir) => {}
                Some(other) => bail!("/{parent} is already {other:?}, cannot hold {path}"),
            }
        }
        match self.entries.get(&name) {
            Some(old) if *old != entry => {
                bail!("{path} is added twice, differently: {old:?} and {entry:?}")
            }
            _ => {
                self.entries.insert(name, entry);
            }
        }
        Ok(())
    }

    /// Copies host file `src` to the same absolute path in the guest.
    pub fn add_host_file(&mut self, src: &Path) -> Result<()> {
        let guest = src
            .to_str()
            .with_context(|| format!("{} is not UTF-8", src.display()))?
            .to_string();
        self.add_host_file_at(src, &guest)
    }

    /// Copies host file `src` (its permission bits included) to `guest`.
    pub fn add_host_file_at(&mut self, src: &Path, guest: &str) -> Result<()> {
        let meta = fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", src.display());
        }
        let mode = meta.permissions().mode() & 0o7777;
        self.add(
            guest,
            Entry::HostFile {
                src: src.to_path_buf(),
                mode,
            },
        )
    }

    /// Paths in the archive, in writing order.
    #[cfg(test)]
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Writes the archive to `out` (plain newc, uncompressed: the kernel
    /// unpacks it directly and QEMU loads it without a decompressor).
    pub fn write_to(&self, out: &Path) -> Result<u64> {
        let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
        let mut w = Newc::new(BufWriter::with_capacity(1 << 20, file));
        for (name, entry) in &self.entries {
            match entry {
                Entry::Dir => w.dir(name, 0o755)?,
                Entry::Symlink(target) => w.symlink(name, target)?,
                Entry::CharDev(major, minor) => w.char_dev(name, 0o600, *major, *minor)?,
                Entry::Data { bytes, mode } => {
                    w.file(name, *mode, bytes.len() as u64, &mut &bytes[..])?
                }
                Entry::HostFile { src, mode } => {
                    let mut f = File::open(src)
                        .with_context(|| format!("cannot open {}", src.display()))?;
                    let len = f.metadata()?.len();
                    w.file(name, *mode, len, &mut f)
                        .with_context(|| format!("archiving {}", src.display()))?;
                }
            }
        }
        let written = w.finish()?;
        Ok(written)
    }
}

/// `/a/b` → `a/b`: archive names are relative; `..`, `.` and empty names are
/// refused.
fn archive_name(path: &str) -> Result<String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        bail!("guest path {path} is not absolute");
    }
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => parts.push(
                s.to_str()
                    .with_context(|| format!("{path} is not UTF-8"))?
                    .to_string(),
            ),
            _ => bail!("guest path {path} must not contain . or .."),
        }
    }
    if parts.is_empty() {
        bail!("guest path {path} names the root");
    }
    Ok(parts.join("/"))
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// A writer of the "new ASCII" cpio format (magic 070701), the one the
/// kernel's initramfs unpacker reads: a 110-byte header of hex fields, the
/// NUL-terminated name, padding to 4 bytes, the data, padding to 4 bytes; a
/// `TRAILER!!!` entry ends the archive.
pub struct Newc<W: Write> {
    out: W,
    written: u64,
    ino: u32,
}

impl<W: Write> Newc<W> {
    pub fn new(out: W) -> Newc<W> {
        Newc {
            out,
            written: 0,
            ino: 0,
        }
    }

    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.raw(&[0u8; 3][..n])
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        size: u64,
        rdev: (u32, u32),
    ) -> Result<()> {
        if size > u64::from(u32::MAX) {
            bail!("{name} is larger than newc's 4 GiB limit");
        }
        self.ino += 1;
        let fields = [
            self.ino,              // c_ino
            mode,                  // c_mode
            0,                     // c_uid
            0,                     // c_gid
            nlink,                 // c_nlink
            0,                     // c_mtime (fixed: reproducible archives)
            size as u32,           // c_filesize
            0,                     // c_devmajor
            0,                     // c_devminor
            rdev.0,                // c_rdevmajor
            rdev.1,                // c_rdevminor
            name.len() as u32 + 1, // c_namesize, with the NUL
            0,                     // c_check
        ];
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.raw(h.as_bytes())?;
        self.raw(name.as_bytes())?;
        self.raw(&[0])?;
        self.pad()?;
        Ok(())
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> Result<()> {
        self.header(name, S_IFDIR | perm, 2, 0, (0, 0))
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> Result<()> {
        self.header(name, S_IFLNK | 0o777, 1, target.len() as u64, (0, 0))?;
        self.raw(target.as_bytes())?;
        self.pad()?;
        Ok(())
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.header(name, S_IFCHR | perm, 1, 0, (major, minor))
    }

    /// A regular file of exactly `len` bytes read from `data`.
    pub fn file(&mut self, name: &str, perm: u32, len: u64, data: impl io::Read) -> Result<()> {
        self.header(name, S_IFREG | perm, 1, len, (0, 0))?;
        let copied = io::copy(&mut io::Read::take(data, len), &mut self.out)?;
        if copied != len {
            bail!("{name}: expected {len} bytes, read {copied} (file changed while archiving?)");
        }
        self.written += copied;
        self.pad()?;
        Ok(())
    }

    /// Writes the trailer and flushes; returns the archive's size.
    pub fn finish(mut self) -> Result<u64> {
        self.header("TRAILER!!!", 0, 1, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.written)
    }
}

/// The shared libraries (and ELF interpreter) `ldd` lists for `exe`, as
/// host paths; empty for a static executable.
pub fn shared_libs(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = cmd::output(Command::new("ldd").arg(exe))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // glibc's ldd says so (exit 1) for static binaries.
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("`ldd {}` failed: {stderr}{stdout}", exe.display());
    }
    parse_ldd(&stdout).with_context(|| format!("resolving the libraries of {}", exe.display()))
}

/// Parses `ldd` output: `name => /path (addr)`, `/path (addr)` (the
/// interpreter), `linux-vdso.so.1 (addr)` (no file), `name => not found`.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.contains("statically linked") {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("shared library {} not found", name.trim());
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Fails if `path` lies below a directory the guest mounts over.
pub fn check_not_hidden(path: &Path) -> Result<()> {
    for dir in MOUNTED_IN_GUEST {
        if path.starts_with(dir) {
            bail!(
                "{} is below {dir}, which the guest mounts over, so the guest would not see it; \
                 use a target directory elsewhere (CARGO_TARGET_DIR)",
                path.display()
            );
        }
    }
    Ok(())
}

/// Adds an executable at its own host path and every library it needs at
/// theirs (ldd's paths, which are the dynamic loader's search paths).
pub fn add_executable(tree: &mut Tree, exe: &Path) -> Result<()> {
    add_executable_from(tree, exe, exe)
}

/// Like [`add_executable`], with the file's contents taken from `src` (a
/// stripped copy of `exe`).
pub fn add_executable_from(tree: &mut Tree, src: &Path, exe: &Path) -> Result<()> {
    check_not_hidden(exe)?;
    let guest = exe
        .to_str()
        .with_context(|| format!("{} is not UTF-8", exe.display()))?;
    tree.add_host_file_at(src, guest)?;
    for lib in shared_libs(src)? {
        tree.add_host_file(&lib)?;
    }
    Ok(())
}

/// A copy of `exe` without debug information in `dir` (a fifth of the size
/// for Rust debug builds: the guest unpacks the initramfs under emulation,
/// so every MiB costs boot time). Panic messages keep their file:line, which
/// are not debug information. Falls back to `exe` itself when `objcopy`
/// (binutils) fails.
pub fn stripped(exe: &Path, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = exe.file_name().context("executable path without a name")?;
    let out = dir.join(name);
    let ok = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(exe)
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(out)
    } else {
        eprintln!(
            "note: `objcopy --strip-debug {}` failed; the guest gets it with its debug info",
            exe.display()
        );
        Ok(exe.to_path_buf())
    }
}

/// The user space every guest gets, whatever its kernel.
pub struct Userspace<'a> {
    /// Executables as (file to copy, absolute path in the guest): pandad,
    /// panda and the test binaries, each at the path it was built at.
    pub payload: &'a [(PathBuf, PathBuf)],
    /// Test binaries `/init` runs, in order (a subset of `payload`).
    pub tests: &'a [PathBuf],
    /// Kernel modules as (host file, already decompressed), in load order.
    pub modules: &'a [PathBuf],
    /// Variables `/init` exports before running the tests.
    pub env: &'a [(String, String)],
    /// Arguments for every test binary (libtest's: filters, --test-threads).
    pub test_args: &'a [String],
}

/// Assembles the whole guest file system.
pub fn guest_tree(u: &Userspace) -> Result<Tree> {
    let mut t = Tree::new();
    for dir in [
        "/dev",
        "/proc",
        "/sys",
        "/run",
        "/tmp",
        "/root",
        "/etc",
        "/lib/modules",
    ] {
        t.add(dir, Entry::Dir)?;
    }
    t.add("/dev/console", Entry::CharDev(5, 1))?;
    t.add("/var/run", Entry::Symlink("../run".into()))?;

    let busybox = cmd::which("busybox").context(
        "busybox is not installed (Debian: busybox-static; `cargo xtask setup` installs it)",
    )?;
    t.add_host_file_at(&busybox, "/bin/busybox")?;
    for lib in shared_libs(&busybox)? {
        t.add_host_file(&lib)?;
    }
    for applet in BUSYBOX_APPLETS {
        t.add(&format!("/bin/{applet}"), Entry::Symlink("busybox".into()))?;
    }
    for tool in HOST_TOOLS {
        let path = cmd::which(tool).with_context(|| {
            format!("`{tool}` is not on PATH (`cargo xtask setup` installs it)")
        })?;
        add_executable(&mut t, &path)?;
    }
    for (src, exe) in u.payload {
        add_executable_from(&mut t, src, exe)?;
    }

    // Name services for nft (protocol names such as "ipv6-icmp") and the
    // loader cache; absent files only cost a fallback, so copy what exists.
    for f in ["/etc/protocols", "/etc/services", "/etc/ld.so.cache"] {
        if Path::new(f).is_file() {
            t.add_host_file(Path::new(f))?;
        }
    }
    t.add(
        "/etc/nsswitch.conf",
        Entry::Data {
            bytes:
                b"passwd: files\ngroup: files\nhosts: files\nprotocols: files\nservices: files\n"
                    .to_vec(),
            mode: 0o644,
        },
    )?;
    t.add(
        "/etc/passwd",
        Entry::Data {
            bytes: b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            mode: 0o644,
        },
    )?;
    t.add(
        "/etc/group",
        Entry::Data {
            bytes: b"root:x:0:\n".to_vec(),
            mode: 0o644,
        },
    )?;

    let mut module_list = String::new();
    for m in u.modules {
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("bad module path {}", m.display()))?;
        let guest = format!("/lib/modules/{name}");
        t.add_host_file_at(m, &guest)?;
        module_list.push_str(&guest);
        module_list.push('\n');
    }
    let mut test_list = String::new();
    for exe in u.tests {
        test_list.push_str(exe.to_str().context("test path is not UTF-8")?);
        test_list.push('\n');
    }
    let mut env = String::new();
    for (k, v) in u.env {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("bad environment variable name {k:?}");
        }
        env.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    let args: Vec<String> = u.test_args.iter().map(|a| shell_quote(a)).collect();
    let data = |s: String| Entry::Data {
        bytes: s.into_bytes(),
        mode: 0o644,
    };
    t.add(&format!("{GUEST_CONFIG_DIR}/modules"), data(module_list))?;
    t.add(&format!("{GUEST_CONFIG_DIR}/tests"), data(test_list))?;
    t.add(&format!("{GUEST_CONFIG_DIR}/env"), data(env))?;
    t.add(
        &format!("{GUEST_CONFIG_DIR}/args"),
        data(args.join(" ") + "\n"),
    )?;
    t.add(
        "/init",
        Entry::Data {
            bytes: INIT_SCRIPT.as_bytes().to_vec(),
            mode: 0o755,
        },
    )?;
    Ok(t)
}

/// POSIX shell single-quoting.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(h: &[u8], i: usize) -> u32 {
        let start = 6 + i * 8;
        u32::from_str_radix(std::str::from_utf8(&h[start..start + 8]).unwrap(), 16).unwrap()
    }

    /// Reads a newc archive back: (name, mode, data) per entry.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 0usize;
        loop {
            assert_eq!(&b[..6], b"070701", "magic at offset {off}");
            let mode = field(b, 1);
            let size = field(b, 6) as usize;
            let namesize = field(b, 11) as usize;
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(b[110 + namesize - 1], 0, "name is NUL-terminated");
            let head = (110 + namesize).div_ceil(4) * 4;
            let data = b[head..head + size].to_vec();
            let total = head + size.div_ceil(4) * 4;
            assert_eq!((off + head) % 4, 0, "data of {name} is aligned");
            off += total;
            b = &b[total..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn newc_round_trip() {
        let mut buf = Vec::new();
        let mut w = Newc::new(&mut buf);
        w.dir("bin", 0o755).unwrap();
        w.file("bin/x", 0o755, 5, &mut &b"hello"[..]).unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_dev("console", 0o600, 5, 1).unwrap();
        w.file("empty", 0o644, 0, &mut &b""[..]).unwrap();
        let n = w.finish().unwrap();
        assert_eq!(n as usize, buf.len());
        assert_eq!(buf.len() % 4, 0);
        let entries = parse(&buf);
        assert_eq!(
            entries,
            vec![
                ("bin".into(), S_IFDIR | 0o755, vec![]),
                ("bin/x".into(), S_IFREG | 0o755, b"hello".to_vec()),
                ("bin/sh".into(), S_IFLNK | 0o777, b"busybox".to_vec()),
                ("console".into(), S_IFCHR | 0o600, vec![]),
                ("empty".into(), S_IFREG | 0o644, vec![]),
            ]
        );
        // The device numbers of the console node.
        let console = buf.windows(8).position(|w| w == b"console\0").unwrap() - 110;
        assert_eq!(field(&buf[console..], 9), 5);
        assert_eq!(field(&buf[console..], 10), 1);
    }

    #[test]
    fn newc_refuses_short_reads() {
        let mut buf = Vec::new();
        let mut w = Newc::new(&mut buf);
        assert!(w.file("x", 0o644, 10, &mut &b"short"[..]).is_err());
    }

    #[test]
    fn tree_adds_parents_first() {
        let mut t = Tree::new();
        t.add("/a/b/c", Entry::Symlink("x".into())).unwrap();
        t.add("/a-b", Entry::Dir).unwrap();
        t.add("/a/b/c", Entry::Symlink("x".into())).unwrap(); // same again: fine
        assert!(t.add("/a/b/c", Entry::Symlink("y".into())).is_err());
        assert!(t.add("/a/b/c/d", Entry::Dir).is_err(), "c is a symlink");
        assert!(t.add("relative", Entry::Dir).is_err());
        assert!(t.add("/a/../b", Entry::Dir).is_err());
        let paths: Vec<&str> = t.paths().collect();
        assert_eq!(paths, ["a", "a-b", "a/b", "a/b/c"]);
        // Every path comes after its parent.
        for (i, p) in paths.iter().enumerate() {
            if let Some((parent, _)) = p.rsplit_once('/') {
                assert!(paths[..i].contains(&parent), "{p} before {parent}");
            }
        }
    }

    #[test]
    fn parses_ldd() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd1a5f2000)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f14da6cc000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f14d941e000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f14da700000)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        let e = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(e.to_string().contains("libfoo.so.1"), "{e}");
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn refuses_paths_the_guest_hides() {
        assert!(check_not_hidden(Path::new("/run/target/debug/pandad")).is_err());
        assert!(check_not_hidden(Path::new("/tmp/ci/target/debug/pandad")).is_ok());
        assert!(check_not_hidden(Path::new("/srv/panda/target/debug/pandad")).is_ok());
    }
}
