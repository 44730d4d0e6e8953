//! Ctrl-C and SIGTERM stop the suite *between* measurements.
//!
//! The default action would kill panda-bench on the spot and skip every
//! RAII guard, leaving namespaces, temp directories and (until their parent
//! death signal) pandads behind. Instead the handler only raises a flag; the
//! suite checks it between samples and returns an error, which unwinds
//! through the guards like any other failure.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP. No SA_RESTART: a
/// blocking wait returns EINTR, so the waiter sees the flag promptly.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an
        // atomic (async-signal-safe) and an empty mask is valid.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Fails once a stop was requested.
pub fn check() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
