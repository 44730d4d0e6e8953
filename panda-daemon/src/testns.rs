//! Test-only: run a test body in a brand-new, private network namespace.
//!
//! [`run`] starts a fresh thread that calls `unshare(CLONE_NEWNET)`, so that
//! thread (and every process it spawns, e.g. `ip` or `nft`: a child inherits
//! the namespace of the thread that forked it) lives in a namespace nobody
//! else can see. The namespace has no name and nothing refers to it once the
//! thread and its children are gone, so the kernel frees it, with every
//! address, route, nftables table and sysctl the test left behind. The
//! host's namespace, and the test runner's other threads, are never touched.
//!
//! Creating a network namespace needs root (CAP_SYS_ADMIN). Without it the
//! test prints `skipped: needs root` and passes, unless
//! `PANDA_REQUIRE_PRIVILEGED=1` is set (as CI does), in which case it fails:
//! a privileged test that silently did not run would prove nothing.
use std::future::Future;
use std::process::Command;

use nix::sched::{unshare, CloneFlags};

/// Environment variable that turns "skipped: needs root" into a failure.
pub(crate) const REQUIRE_PRIVILEGED: &str = "PANDA_REQUIRE_PRIVILEGED";

/// Runs `f` on a new thread in a new network namespace whose `lo` is up,
/// and returns its result; a panic in `f` is re-raised here. Returns `None`
/// (after printing `skipped: needs root`) if not running as root, or panics
/// instead if `PANDA_REQUIRE_PRIVILEGED=1`.
pub(crate) fn run<R, F>(f: F) -> Option<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if !nix::unistd::geteuid().is_root() {
        if std::env::var_os(REQUIRE_PRIVILEGED).is_some_and(|v| v == "1") {
            panic!("this test needs root and {REQUIRE_PRIVILEGED}=1 forbids skipping it");
        }
        eprintln!("skipped: needs root");
        return None;
    }
    let thread = std::thread::Builder::new()
        .name("testns".into())
        .spawn(move || {
            // Only this thread moves; the runner's other threads stay put.
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            let out = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .output()
                .expect("running `ip link set lo up`");
            assert!(out.status.success(), "ip link set lo up: {out:?}");
            f()
        })
        .expect("spawning the test namespace thread");
    match thread.join() {
        Ok(r) => Some(r),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// [`run`] for async test bodies: `f` builds the future on the namespace's
/// thread, which drives it on a current-thread tokio runtime (so every task
/// it spawns, e.g. the netlink connection, stays in the namespace too).
pub(crate) fn run_async<R, F, Fut>(f: F) -> Option<R>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R>,
    R: Send + 'static,
{
    run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a tokio runtime")
            .block_on(f())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn netns_id() -> (u64, u64) {
        let m = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn runs_in_a_fresh_namespace_with_lo_up() {
        let host = netns_id();
        let Some((inner, link)) = run(|| {
            let out = Command::new("ip")
                .args(["-o", "link", "show"])
                .output()
                .unwrap();
            (
                netns_id(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }) else {
            return;
        };
        assert_ne!(inner, host, "the closure ran in the caller's namespace");
        assert_eq!(netns_id(), host, "the caller's namespace changed");
        // A new namespace has only lo, and run() brought it up.
        assert_eq!(link.lines().count(), 1, "{link}");
        assert!(link.starts_with("1: lo: <LOOPBACK,UP,LOWER_UP>"), "{link}");
    }

    #[test]
    fn each_run_gets_its_own_namespace() {
        // Compared while both are alive: a freed namespace's inode may be
        // reused. The inner thread starts in the outer one's namespace.
        let Some((outer, inner)) = run(|| (netns_id(), run(netns_id).unwrap())) else {
            return;
        };
        assert_ne!(outer, inner);
    }

    #[test]
    fn panics_propagate() {
        if run(|| ()).is_none() {
            return;
        }
        let r = std::panic::catch_unwind(|| run(|| panic!("inner boom")));
        let msg = r.unwrap_err();
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"inner boom"));
    }

    #[test]
    fn async_bodies_run_inside() {
        let host = netns_id();
        let Some(inner) = run_async(|| async { netns_id() }) else {
            return;
        };
        assert_ne!(inner, host);
    }
}
