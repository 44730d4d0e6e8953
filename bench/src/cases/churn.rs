//! Case 4, connection churn (the talk's TIME-WAIT story).
//!
//! A client connects to a listener on [::1] and closes, as fast as it can,
//! for a fixed time, either from ::1 or from 4,096 prefix addresses in turn
//! (IP_BIND_ADDRESS_NO_PORT + bind to [addr]:0, so the port is picked at
//! connect time per source address). The listener accepts, waits for the
//! client's FIN and closes, so the client always closes first and keeps the
//! TIME-WAIT entry, which pins its 4-tuple for a minute (were the server to
//! close first, a race would decide which side's port is pinned). From one
//! source the ephemeral range runs out and connect fails with
//! EADDRNOTAVAIL; from 4,096 sources it does not. Run with the namespace's
//! default range and with a narrow one (60000-60999;
//! net.ipv4.ip_local_port_range applies to IPv6 too). TIME-WAIT state is
//! per namespace and lingers, so every sample gets a fresh namespace (and
//! its own pandad, guard mode). Beyond net.ipv4.tcp_max_tw_buckets the
//! kernel silently skips TIME-WAIT (the port is free at once), which would
//! flatter whichever variant gets there: the namespace raises it out of
//! reach.

use std::{
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use super::{progress, Ctx};
use crate::{
    interrupt,
    netns::Netns,
    pandad::Pandad,
    plan::interleave,
    procfs,
    results::{Churn, ChurnVariant},
    sock::{self, prefix_addr},
};

const PORT: u16 = 9000;
const SOURCES: u32 = 4096;
const SUBNET: u16 = 4;
const NARROW: &str = "60000 60999";
/// TIME-WAIT entries the namespace may hold: above what any run creates.
const MAX_TW: &str = "4000000";

/// key, source, narrow range?
const VARIANTS: &[(&str, &str, bool)] = &[
    ("lo-default", "::1", false),
    ("spread-default", "spread", false),
    ("lo-narrow", "::1", true),
    ("spread-narrow", "spread", true),
];

/// What one run of the client counted.
struct Count {
    conns_per_s: f64,
    eaddrnotavail: u64,
    other_errors: u64,
    time_wait: u64,
}

pub fn run(ctx: &Ctx) -> Result<Churn> {
    let mut variants: Vec<ChurnVariant> = VARIANTS
        .iter()
        .map(|&(key, source, _)| ChurnVariant {
            key: key.into(),
            source: source.into(),
            range: String::new(),
            conns_per_s: Vec::new(),
            eaddrnotavail: Vec::new(),
            other_errors: Vec::new(),
            time_wait: Vec::new(),
        })
        .collect();
    let order: Vec<usize> = (0..VARIANTS.len()).collect();
    for r in 0..ctx.plan.repeats {
        for i in interleave(&order, r) {
            interrupt::check()?;
            let (_, source, narrow) = VARIANTS[i];
            let ns = Netns::new("churn")?;
            ns.set_sysctl("net.ipv4.tcp_max_tw_buckets", MAX_TW)?;
            if narrow {
                ns.set_sysctl("net.ipv4.ip_local_port_range", NARROW)?;
            }
            let range = ns
                .sysctl("net.ipv4.ip_local_port_range")?
                .split_whitespace()
                .collect::<Vec<_>>()
                .join("-");
            let pandad = Pandad::start(&ctx.pandad, &ns, "guard")?;
            let c = churn(&ns, source == "spread", ctx.plan.churn)?;
            pandad.stop()?;
            let v = &mut variants[i];
            v.range = range;
            v.conns_per_s.push(c.conns_per_s);
            v.eaddrnotavail.push(c.eaddrnotavail);
            v.other_errors.push(c.other_errors);
            v.time_wait.push(c.time_wait);
        }
        progress(format!("churn: repeat {}/{} done", r + 1, ctx.plan.repeats));
    }
    Ok(Churn {
        seconds: ctx.plan.churn.as_secs_f64(),
        spread_sources: SOURCES,
        variants,
    })
}

/// Runs the listener (accept, read to EOF, close; on its own thread) and
/// the client for `dur` in `ns`.
fn churn(ns: &Netns, spread: bool, dur: Duration) -> Result<Count> {
    let listener = ns.in_netns(|| sock::listener6(std::net::Ipv6Addr::LOCALHOST, PORT, 4096))?;
    let lfd = listener.as_raw_fd();
    std::thread::scope(|s| {
        let server = s.spawn(move || loop {
            // SAFETY: accept4 on our listener; null address is allowed.
            let c = unsafe {
                libc::accept4(
                    lfd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if c >= 0 {
                // Passive close: wait for the client's FIN (read returns 0,
                // or an error such as a reset), then close.
                let mut buf = [0u8; 64];
                // SAFETY: reads into our buffer from the accepted socket,
                // then closes the descriptor accept4 just gave us.
                unsafe {
                    while libc::read(c, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) > 0 {}
                    libc::close(c);
                }
            } else if !matches!(sock::errno(), libc::EINTR | libc::ECONNABORTED) {
                // shutdown() below: the run is over.
                break;
            }
        });
        let counted = ns.in_netns(|| client(spread, dur));
        // Wakes the blocked accept4 (EINVAL) so the server thread ends.
        // SAFETY: shutdown on our listener.
        unsafe { libc::shutdown(lfd, libc::SHUT_RDWR) };
        let _ = server.join();
        counted
    })
}

/// Connects and closes until `dur` has passed.
fn client(spread: bool, dur: Duration) -> Result<Count> {
    let dst = std::net::Ipv6Addr::LOCALHOST;
    let (mut ok, mut enotavail, mut other) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    let end = t0 + dur;
    let mut i = 0u64;
    while Instant::now() < end {
        let fd = sock::tcp_socket(libc::AF_INET6)
            .map_err(|e| anyhow::anyhow!("socket: {}", std::io::Error::from_raw_os_error(e)))?;
        if spread {
            sock::setsockopt_int(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                1,
            )?;
            let src = prefix_addr(SUBNET, i % SOURCES as u64 + 1);
            if let Err(e) = sock::bind6(fd.as_raw_fd(), src, 0) {
                bail!("bind [{src}]:0: {}", std::io::Error::from_raw_os_error(e));
            }
        }
        match sock::connect6(fd.as_raw_fd(), dst, PORT) {
            Ok(()) => ok += 1,
            Err(libc::EADDRNOTAVAIL) => enotavail += 1,
            Err(_) => other += 1,
        }
        i += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(Count {
        conns_per_s: ok as f64 / secs,
        eaddrnotavail: enotavail,
        other_errors: other,
        time_wait: procfs::time_wait_count()?,
    })
}
