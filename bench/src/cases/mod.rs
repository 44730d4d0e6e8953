//! The six cases of the suite, one module each, and the namespace set-ups
//! they share.

pub mod churn;
pub mod daemon;
pub mod hook;
pub mod leases;
pub mod repair;
pub mod scale;
pub mod setup;

use std::{io::Write, net::Ipv6Addr, path::PathBuf};

use anyhow::Result;

use crate::{
    netns::{self, Netns},
    plan::Plan,
    sock::{ANCHOR, PREFIX},
    tempdir::TempDir,
};

/// What every case needs to know.
pub struct Ctx {
    pub plan: Plan,
    /// The pandad binary under test.
    pub pandad: PathBuf,
    /// panda-bench itself, for the scale case's workers and the leases
    /// case's binders.
    pub self_exe: PathBuf,
}

/// The prefix made bindable in a namespace by hand, the way guard mode does
/// but without any BPF program: the anchor and the `local` route (what
/// pandad adds) and `ip_nonlocal_bind=1`. Binds there cost what the kernel
/// alone costs: the no-program baseline. Undone on drop, so that pandad can
/// be started in the same namespace afterwards (the baseline and panda then
/// differ in nothing but pandad).
pub struct KernelOnlySubnet<'a>(&'a Netns);

impl<'a> KernelOnlySubnet<'a> {
    pub fn apply(ns: &'a Netns) -> Result<KernelOnlySubnet<'a>> {
        ip_batch(
            ns,
            [
                format!("address add {ANCHOR}/128 dev lo nodad noprefixroute"),
                format!("route add local {PREFIX} dev lo table local src {ANCHOR}"),
            ],
        )?;
        let undo = KernelOnlySubnet(ns);
        ns.set_sysctl("net.ipv6.ip_nonlocal_bind", "1")?;
        Ok(undo)
    }
}

impl Drop for KernelOnlySubnet<'_> {
    fn drop(&mut self) {
        let undo = self
            .0
            .set_sysctl("net.ipv6.ip_nonlocal_bind", "0")
            .and_then(|_| {
                ip_batch(
                    self.0,
                    [
                        format!("route del local {PREFIX} dev lo table local"),
                        format!("address del {ANCHOR}/128 dev lo"),
                    ],
                )
            });
        if let Err(e) = undo {
            eprintln!("warning: undoing the hand-made subnet: {e:#}");
        }
    }
}

/// Adds each address as a /128 on `lo` (nodad), in one `ip -batch`.
pub fn add_addrs(ns: &Netns, addrs: impl IntoIterator<Item = Ipv6Addr>) -> Result<()> {
    ip_batch(
        ns,
        addrs
            .into_iter()
            .map(|a| format!("address add {a}/128 dev lo nodad")),
    )
}

/// Runs `ip -batch` inside `ns` with these lines.
pub fn ip_batch(ns: &Netns, lines: impl IntoIterator<Item = String>) -> Result<()> {
    let dir = TempDir::new()?;
    let file = write_batch(&dir, lines)?;
    netns::run(ns.cmd("ip").arg("-batch").arg(&file))?;
    Ok(())
}

/// Writes an `ip -batch` file into `dir`.
pub fn write_batch(dir: &TempDir, lines: impl IntoIterator<Item = String>) -> Result<PathBuf> {
    let path = dir.path().join("batch");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for l in lines {
        writeln!(f, "{l}")?;
    }
    f.flush()?;
    Ok(path)
}

/// Progress on stderr, so that stdout is only the final table.
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("  {}", msg.as_ref());
}
