//! Outside the prefix pandad must be exactly as strict as the kernel
//! (guard mode sets net.ipv6.ip_nonlocal_bind=1 and restores strictness
//! with BPF), and only in its own network namespace.
mod common;

use std::{
    net::{Ipv6Addr, SocketAddrV6, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    process::Command,
    time::{Duration, Instant},
};

use common::*;

const STREAM: i32 = libc::SOCK_STREAM;
const DGRAM: i32 = libc::SOCK_DGRAM;

fn x1() -> Ipv6Addr {
    a6("2001:db8::1")
}

/// pandad's mechanism from `status`, cross-checked with the sysctl it implies.
fn mechanism_of(p: &Pandad, ns: &Netns) -> String {
    let m = mechanism(&p.status());
    let sysctl = ns.sysctl("net.ipv6.ip_nonlocal_bind");
    match m.as_str() {
        "guard" => assert_eq!(sysctl, "1", "guard mode sets ip_nonlocal_bind=1"),
        "freebind" => assert_eq!(sysctl, "0", "freebind mode leaves ip_nonlocal_bind=0"),
        other => panic!("unknown mechanism {other:?}"),
    }
    m
}

// ---------------------------------------------------------------------------

#[test]
fn bind_outside_prefix_follows_kernel() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("guard-bind");
    let pandad = Pandad::start(&ns);
    let mech = mechanism_of(&pandad, &ns);
    eprintln!("mechanism: {mech}");

    ns.in_netns(|| {
        for ty in [STREAM, DGRAM] {
            assert_bind_refused(ty, x1(), "2001:db8::1 not configured");
            // Control: the prefix binds (so the netns is served and the
            // refusal above is not a blanket failure).
            assert_bind_ok(ty, a6("fd00:1009:bacc::4242"), "prefix address");
        }
    });

    // Configure it (no DAD, so the kernel itself treats it as usable at once).
    // No wait between the add and the binds: the daemon must not lag.
    ns.ip(&["-6", "addr", "add", "2001:db8::1/128", "dev", "lo", "nodad"]);
    ns.in_netns(|| {
        for ty in [STREAM, DGRAM] {
            assert_bind_ok(ty, x1(), "after ip addr add 2001:db8::1/128 dev lo");
        }
    });

    // An address on an interface other than lo counts as well.
    // (A veth pair: this kernel has no dummy driver.)
    ns.ip(&["link", "add", "vx0", "type", "veth", "peer", "name", "vx1"]);
    ns.ip(&["link", "set", "vx0", "up"]);
    ns.ip(&["link", "set", "vx1", "up"]);
    ns.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:3::7/64",
        "dev",
        "vx0",
        "nodad",
    ]);
    ns.in_netns(|| {
        for ty in [STREAM, DGRAM] {
            assert_bind_ok(ty, a6("2001:db8:3::7"), "address on vx0");
            // ... but not the rest of its /64: only configured addresses are local.
            assert_bind_refused(ty, a6("2001:db8:3::8"), "unconfigured address of vx0's /64");
        }
    });

    // Kernel parity: once deleted, the address is not bindable again.
    ns.ip(&["-6", "addr", "del", "2001:db8::1/128", "dev", "lo"]);
    ns.ip(&["-6", "addr", "del", "2001:db8:3::7/64", "dev", "vx0"]);
    ns.in_netns(|| {
        for ty in [STREAM, DGRAM] {
            assert_bind_refused(ty, x1(), "after ip addr del 2001:db8::1/128");
            assert_bind_refused(
                ty,
                a6("2001:db8:3::7"),
                "after ip addr del 2001:db8:3::7/64",
            );
        }
    });

    let (st, err) = pandad.stop();
    assert!(st.success(), "pandad exit {st}; stderr:\n{err}");
}

#[test]
fn freebind_and_transparent_sockets_may_bind() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("guard-freebind");
    let _pandad = Pandad::start(&ns);
    ns.in_netns(|| {
        for ty in [STREAM, DGRAM] {
            // Control: without the option the bind is refused.
            assert_bind_refused(ty, x1(), "plain socket");
            for (level, opt, name) in [
                (libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, "IPV6_FREEBIND"),
                (libc::SOL_IP, libc::IP_FREEBIND, "IP_FREEBIND"),
                (
                    libc::IPPROTO_IPV6,
                    libc::IPV6_TRANSPARENT,
                    "IPV6_TRANSPARENT",
                ),
            ] {
                let fd = try_bind(ty, Some((level, opt)), x1()).unwrap_or_else(|e| {
                    panic!(
                        "{} socket with {name} could not bind 2001:db8::1: {}",
                        ty_name(ty),
                        errname(e)
                    )
                });
                assert_eq!(*local6(&fd).ip(), x1());
            }
        }
    });
}

#[test]
fn wildcard_loopback_mapped_multicast_still_bind() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("guard-special");
    let _pandad = Pandad::start(&ns);
    ns.in_netns(|| {
        for ty in [STREAM, DGRAM] {
            for a in ["::", "::1", "::ffff:127.0.0.1", "::ffff:127.3.4.5"] {
                assert_bind_ok(ty, a6(a), a);
            }
            // Kernel parity: a v4-mapped address is checked by IPv4's rules
            // (ipv4 ip_nonlocal_bind is 0), so a non-local one fails.
            assert_bind_refused(ty, a6("::ffff:192.0.2.1"), "non-local v4-mapped");
            // Control: a non-local IPv6 address is refused in this very netns.
            assert_bind_refused(ty, x1(), "control");
        }
        // Multicast (non-link-scope, so no interface is needed).
        let fd = assert_bind_ok(DGRAM, a6("ff05::1:3"), "multicast ff05::1:3");
        assert_eq!(*local6(&fd).ip(), a6("ff05::1:3"));
    });
}

#[test]
fn sendmsg_pktinfo_source_outside_prefix_refused() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("guard-pktinfo");
    let pandad = Pandad::start(&ns);
    let mech = mechanism_of(&pandad, &ns);
    ns.in_netns(|| {
        let rx = UdpSocket::bind("[::1]:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dst = v6(rx.local_addr().unwrap());
        let tx = udp6();
        let spoof = a6("2001:db8::99");

        // Not local, outside the prefix: EINVAL, the kernel's own errno.
        match sendmsg_pktinfo(&tx, dst, spoof, b"spoofed") {
            Ok(n) => panic!("sendmsg with IPV6_PKTINFO source {spoof} succeeded ({n} bytes)"),
            Err(e) => assert_eq!(
                e,
                libc::EINVAL,
                "sendmsg with IPV6_PKTINFO source {spoof}: {}, expected EINVAL",
                errname(e)
            ),
        }
        // Controls: ::1 and a prefix address are fine sources.
        sendmsg_pktinfo(&tx, dst, Ipv6Addr::LOCALHOST, b"from-lo")
            .unwrap_or_else(|e| panic!("pktinfo source ::1: {}", errname(e)));
        let prefix_src = a6("fd00:1009:bacc::42");
        // Guard mode: any socket may (ip_nonlocal_bind=1, sendmsg6 allows
        // the prefix). Freebind mode: only a socket that bound a prefix
        // address, which gave it IPV6_FREEBIND; an unbound socket gets the
        // kernel's own EINVAL (sends do not pass the bind hook).
        let prefix_tx = if mech == "freebind" {
            assert_eq!(
                sendmsg_pktinfo(&tx, dst, prefix_src, b"unbound"),
                Err(libc::EINVAL),
                "freebind mode: an unbound socket's pktinfo source {prefix_src}"
            );
            let bound = udp6();
            bind6(&bound, a6("fd00:1009:bacc::43"), 0)
                .unwrap_or_else(|e| panic!("bind fd00:1009:bacc::43: {}", errname(e)));
            bound
        } else {
            udp6()
        };
        sendmsg_pktinfo(&prefix_tx, dst, prefix_src, b"from-prefix")
            .unwrap_or_else(|e| panic!("pktinfo source {prefix_src}: {}", errname(e)));
        // Kernel parity: a socket that set IPV6_FREEBIND may use any source.
        let fb = udp6();
        setsockopt_int(&fb, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 1);
        sendmsg_pktinfo(&fb, dst, spoof, b"from-freebind").unwrap_or_else(|e| {
            panic!(
                "IPV6_FREEBIND socket, pktinfo source {spoof}: {} (the kernel allows this)",
                errname(e)
            )
        });

        // Datagrams arrive in order: the refused one would be first.
        let mut buf = [0u8; 64];
        let mut want_all = vec![
            (&b"from-lo"[..], Ipv6Addr::LOCALHOST),
            (&b"from-prefix"[..], prefix_src),
            (&b"from-freebind"[..], spoof),
        ];
        if mech == "freebind" {
            // The IPV6_FREEBIND a prefix bind sets stays on the socket, and
            // the kernel lets such a socket use any source (as if the
            // application had set it). Shown, not required.
            let r = sendmsg_pktinfo(&prefix_tx, dst, spoof, b"prefix-bound-spoof");
            eprintln!(
                "freebind mode: a socket bound in the prefix, pktinfo source {spoof}: {:?}",
                r.map_err(errname)
            );
            if r.is_ok() {
                want_all.push((&b"prefix-bound-spoof"[..], spoof));
            }
        }
        for (want, from) in want_all {
            let (n, peer) = rx.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "receiver: expected {:?}: {e}",
                    String::from_utf8_lossy(want)
                )
            });
            assert_eq!(&buf[..n], want, "datagram order/content");
            assert_eq!(
                *v6(peer).ip(),
                from,
                "source of {:?}",
                String::from_utf8_lossy(want)
            );
        }
    });
}

#[test]
fn add_then_bind_race_1000() {
    if !require_privileged() {
        return;
    }
    const ROUNDS: u32 = 1000;
    let ns = Netns::new("guard-race");
    let pandad = Pandad::start(&ns);
    let t0 = Instant::now();
    let (add_fail, del_fail) = ns.in_netns(|| {
        let mut nl = Rtnl::open();
        let lo = ifindex("lo");
        let mut add_fail = Vec::new();
        let mut del_fail = Vec::new();
        for n in 1..=ROUNDS {
            let a = a6(&format!("2001:db8:2::{n:x}"));
            let ty = if n % 2 == 0 { STREAM } else { DGRAM };
            nl.add_addr(lo, a, 128)
                .unwrap_or_else(|e| panic!("RTM_NEWADDR {a}: {}", errname(e)));
            // Immediately, same thread: must bind.
            if let Err(e) = try_bind(ty, None, a) {
                add_fail.push(format!("{} {a}: {}", ty_name(ty), errname(e)));
            }
            nl.del_addr(lo, a, 128)
                .unwrap_or_else(|e| panic!("RTM_DELADDR {a}: {}", errname(e)));
            // Immediately after deletion: the kernel would refuse.
            match try_bind(ty, None, a) {
                Err(libc::EADDRNOTAVAIL) => {}
                Err(e) => del_fail.push(format!("{} {a}: {}", ty_name(ty), errname(e))),
                Ok(_) => del_fail.push(format!("{} {a}: bind succeeded", ty_name(ty))),
            }
        }
        (add_fail, del_fail)
    });
    eprintln!(
        "{ROUNDS} add/bind/del/bind rounds in {:?}; counters: {}",
        t0.elapsed(),
        pandad.status()["counters"]
    );
    assert!(
        add_fail.is_empty(),
        "{} of {ROUNDS} binds right after RTM_NEWADDR failed, e.g. {:?}",
        add_fail.len(),
        &add_fail[..add_fail.len().min(5)]
    );
    assert!(
        del_fail.is_empty(),
        "{} of {ROUNDS} binds right after RTM_DELADDR did not fail with EADDRNOTAVAIL, e.g. {:?}",
        del_fail.len(),
        &del_fail[..del_fail.len().min(5)]
    );
}

// ---------------------------------------------------------------------------
// Paths that skip the cgroup hooks: raw ICMPv6 and ping sockets.

const ICMP6_FILTER: i32 = 1;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;

fn raw_icmp6() -> OwnedFd {
    socket6(libc::SOCK_RAW, libc::IPPROTO_ICMPV6)
}

fn ping6() -> OwnedFd {
    socket6(libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6)
}

/// ICMP6_FILTER: let only `ty` through.
fn pass_only(fd: &OwnedFd, ty: u8) {
    let mut data = [u32::MAX; 8];
    data[(ty >> 5) as usize] &= !(1u32 << (ty & 31));
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            ICMP6_FILTER,
            data.as_ptr() as *const libc::c_void,
            32,
        )
    };
    assert_eq!(rc, 0, "ICMP6_FILTER: {}", errname(errno()));
}

fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![ECHO_REQUEST, 0, 0, 0];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Waits up to `within` for an ICMPv6 message of type `ty` carrying
/// `payload`; returns its source address.
fn wait_icmp(fd: &OwnedFd, ty: u8, payload: &[u8], within: Duration) -> Option<Ipv6Addr> {
    let end = Instant::now() + within;
    let mut buf = [0u8; 2048];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        set_recv_timeout(fd, left.max(Duration::from_millis(1)));
        let (n, from) = recv_from6(fd, &mut buf)?;
        if n >= 8 && buf[0] == ty && &buf[8..n] == payload {
            return Some(*from.ip());
        }
    }
}

/// Bind checks for raw and ping sockets (only when the LSM closes them).
fn check_hookless_binds() {
    let bad = a6("2001:db8::5");
    for (kind, mk) in [
        ("raw ICMPv6", raw_icmp6 as fn() -> OwnedFd),
        ("ping", ping6),
    ] {
        let fd = mk();
        match bind6(&fd, bad, 0) {
            Ok(()) => panic!("{kind} socket bound {bad}, expected EADDRNOTAVAIL"),
            Err(e) => assert_eq!(
                e,
                libc::EADDRNOTAVAIL,
                "{kind} socket bind {bad}: {}, expected EADDRNOTAVAIL",
                errname(e)
            ),
        }
        // Controls: ::1 and a prefix address bind.
        let fd = mk();
        bind6(&fd, Ipv6Addr::LOCALHOST, 0)
            .unwrap_or_else(|e| panic!("{kind} socket bind ::1: {}", errname(e)));
        let fd = mk();
        bind6(&fd, a6("fd00:1009:bacc::5"), 0)
            .unwrap_or_else(|e| panic!("{kind} socket bind fd00:1009:bacc::5: {}", errname(e)));
    }
}

/// Freebind mode: raw and ping sockets never pass the bind hook that sets
/// IPV6_FREEBIND, so they get the kernel's own check with ip_nonlocal_bind
/// at 0: no unconfigured address binds, not even one of the prefix.
fn check_hookless_binds_kernel() {
    for (kind, mk) in [
        ("raw ICMPv6", raw_icmp6 as fn() -> OwnedFd),
        ("ping", ping6),
    ] {
        for addr in ["2001:db8::5", "fd00:1009:bacc::5"] {
            assert_eq!(
                bind6(&mk(), a6(addr), 0).map_err(errname),
                Err(errname(libc::EADDRNOTAVAIL)),
                "freebind mode: {kind} socket bind {addr}"
            );
        }
        // Control: a configured address binds.
        bind6(&mk(), Ipv6Addr::LOCALHOST, 0)
            .unwrap_or_else(|e| panic!("{kind} socket bind ::1: {}", errname(e)));
    }
}

#[test]
fn hookless_raw_and_ping_sockets() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("guard-hookless");
    ns.set_sysctl("net.ipv4.ping_group_range", "0 2147483647");
    let pandad = Pandad::start(&ns);
    let mech = mechanism_of(&pandad, &ns);
    let st = pandad.status();
    let raw_ping_bind = st["hookless"]["raw_ping_bind"]
        .as_str()
        .unwrap_or_else(|| panic!("status lacks hookless.raw_ping_bind: {st}"))
        .to_string();
    assert_eq!(
        st["hookless"]["icmp_send"].as_str(),
        Some("closed"),
        "status hookless.icmp_send: {st}"
    );
    if mech == "freebind" {
        // Nothing in freebind mode touches these sockets: the kernel's own
        // check applies to them, with ip_nonlocal_bind at 0.
        assert_eq!(
            raw_ping_bind, "kernel",
            "freebind mode: hookless.raw_ping_bind"
        );
    } else {
        assert!(
            raw_ping_bind == "closed" || raw_ping_bind == "open",
            "hookless.raw_ping_bind = {raw_ping_bind:?}"
        );
    }
    let lsm_listed = std::fs::read_to_string("/sys/kernel/security/lsm")
        .map(|s| s.split(',').any(|l| l.trim() == "bpf"))
        .ok();
    eprintln!(
        "hookless.raw_ping_bind = {raw_ping_bind}; bpf in /sys/kernel/security/lsm: {lsm_listed:?}"
    );
    if mech == "guard" && lsm_listed == Some(false) {
        assert_eq!(
            raw_ping_bind, "open",
            "the bpf LSM is not active, yet status claims raw/ping binds are closed"
        );
    }

    if raw_ping_bind == "kernel" {
        ns.in_netns(check_hookless_binds_kernel);
    } else if raw_ping_bind == "closed" {
        ns.in_netns(check_hookless_binds);
    } else {
        eprintln!(
            "note: status says raw/ping binds are open on this kernel (no usable bpf LSM); \
             the bind part is skipped, the send part below still must hold"
        );
        // Status must be honest: the path really is open here...
        ns.in_netns(|| {
            bind6(&raw_icmp6(), a6("2001:db8::5"), 0).unwrap_or_else(|e| {
                panic!(
                    "status says raw_ping_bind=open but a raw socket cannot bind 2001:db8::5: {}",
                    errname(e)
                )
            });
        });
        // ...and what such sockets send from there must still not get out.
        ns.in_netns(|| {
            let sniffer = raw_icmp6();
            pass_only(&sniffer, ECHO_REQUEST);
            let dst = SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0);
            for (kind, fd) in [("ping", ping6()), ("raw ICMPv6", raw_icmp6())] {
                bind6(&fd, a6("2001:db8::5"), 0).unwrap();
                let payload = format!("panda-bound-{kind}").into_bytes();
                if let Err(e) = send_to6(&fd, &echo_request(0, 9, &payload), dst) {
                    eprintln!(
                        "{kind} socket bound to 2001:db8::5: send refused: {}",
                        errname(e)
                    );
                }
                assert_eq!(
                    wait_icmp(&sniffer, ECHO_REQUEST, &payload, Duration::from_secs(1)),
                    None,
                    "{kind} socket bound to 2001:db8::5 got an echo request to ::1"
                );
                // Control, same socket kind, bound to ::1.
                let ok = if kind == "ping" { ping6() } else { raw_icmp6() };
                bind6(&ok, Ipv6Addr::LOCALHOST, 0).unwrap();
                let payload = format!("panda-bound-{kind}-control").into_bytes();
                send_to6(&ok, &echo_request(0, 10, &payload), dst)
                    .unwrap_or_else(|e| panic!("{kind} control send: {}", errname(e)));
                assert_eq!(
                    wait_icmp(&sniffer, ECHO_REQUEST, &payload, Duration::from_secs(5)),
                    Some(Ipv6Addr::LOCALHOST),
                    "control: {kind} socket bound to ::1"
                );
            }
        });
    }

    // Sends: a raw ICMPv6 socket may pick any source with IPV6_PKTINFO.
    // A sniffer (raw socket, echo requests only) sees every request that
    // reaches the stack; the sender sees the replies.
    ns.in_netns(|| {
        let sniffer = raw_icmp6();
        pass_only(&sniffer, ECHO_REQUEST);
        let sender = raw_icmp6();
        pass_only(&sender, ECHO_REPLY);
        let dst = SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0);
        let id = std::process::id() as u16;
        let within = Duration::from_secs(5);
        let mut seq = 0u16;
        let mut probe = |src: Ipv6Addr, expect: bool| {
            seq += 1;
            let payload = format!("panda-icmp-{seq}-{src}").into_bytes();
            let sent = sendmsg_pktinfo(&sender, dst, src, &echo_request(id, seq, &payload));
            if expect {
                sent.unwrap_or_else(|e| panic!("raw send from {src}: {}", errname(e)));
                let seen = wait_icmp(&sniffer, ECHO_REQUEST, &payload, within);
                assert_eq!(
                    seen,
                    Some(src),
                    "echo request from {src} to ::1 not delivered"
                );
                let reply = wait_icmp(&sender, ECHO_REPLY, &payload, within);
                assert_eq!(
                    reply,
                    Some(Ipv6Addr::LOCALHOST),
                    "no echo reply for source {src}"
                );
            } else {
                if let Err(e) = sent {
                    eprintln!("raw send from {src} refused at send time: {}", errname(e));
                }
                // Must not arrive. The positive controls before and after
                // prove the same path delivers within this window.
                let seen = wait_icmp(&sniffer, ECHO_REQUEST, &payload, Duration::from_secs(1));
                assert_eq!(seen, None, "echo request sourced from {src} reached ::1");
                let reply = wait_icmp(&sender, ECHO_REPLY, &payload, Duration::from_millis(200));
                assert_eq!(reply, None, "echo reply for spoofed source {src}");
            }
        };
        probe(Ipv6Addr::LOCALHOST, true);
        probe(a6("2001:db8::5"), false);
        // Freebind mode: a raw socket never bound in the prefix has no
        // IPV6_FREEBIND, so the kernel refuses the unconfigured source.
        probe(a6("fd00:1009:bacc::9"), mech == "guard");
        probe(Ipv6Addr::LOCALHOST, true);
        if mech == "freebind" {
            let r = sendmsg_pktinfo(
                &sender,
                dst,
                a6("fd00:1009:bacc::9"),
                &echo_request(id, 999, b"panda-einval"),
            );
            assert_eq!(
                r,
                Err(libc::EINVAL),
                "freebind mode: raw send from fd00:1009:bacc::9 (the kernel's answer is EINVAL)"
            );
        }
    });

    // A ping socket ignores IPV6_PKTINFO; its source comes from bind, which
    // is covered above. Check it still works from ::1 (control).
    ns.in_netns(|| {
        let sniffer = raw_icmp6();
        pass_only(&sniffer, ECHO_REQUEST);
        let p = ping6();
        bind6(&p, Ipv6Addr::LOCALHOST, 0).unwrap();
        let payload = b"panda-ping-control";
        send_to6(
            &p,
            &echo_request(0, 1, payload),
            SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0),
        )
        .unwrap_or_else(|e| panic!("ping send: {}", errname(e)));
        assert_eq!(
            wait_icmp(&sniffer, ECHO_REQUEST, payload, Duration::from_secs(5)),
            Some(Ipv6Addr::LOCALHOST)
        );
        assert_eq!(
            wait_icmp(&p, ECHO_REPLY, payload, Duration::from_secs(5)),
            Some(Ipv6Addr::LOCALHOST),
            "ping socket got no reply"
        );
    });
}

// ---------------------------------------------------------------------------
// Other namespaces: pandad's programs sit at the cgroup2 root, so they see
// every socket of the host; they must act only on pandad's own netns.

/// What the kernel does in a netns with ip_nonlocal_bind = `nonlocal`:
/// (case, result) for TCP/UDP/raw/ping binds of 2001:db8::1 and a UDP
/// pktinfo send from 2001:db8::99 (to ::1, must arrive when allowed).
fn kernel_view() -> Vec<(String, Result<(), i32>)> {
    let mut v = Vec::new();
    let x = x1();
    for (name, fd) in [
        ("tcp bind", tcp6()),
        ("udp bind", udp6()),
        ("raw bind", raw_icmp6()),
        ("ping bind", ping6()),
        ("prefix tcp bind", tcp6()),
    ] {
        let a = if name.starts_with("prefix") {
            a6("fd00:1009:bacc::77")
        } else {
            x
        };
        v.push((name.to_string(), bind6(&fd, a, 0)));
    }
    let rx = UdpSocket::bind("[::1]:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let dst = v6(rx.local_addr().unwrap());
    let tx = udp6();
    let r = sendmsg_pktinfo(&tx, dst, a6("2001:db8::99"), b"x").map(|_| ());
    if r.is_ok() {
        let mut b = [0u8; 8];
        let (_, from) = rx
            .recv_from(&mut b)
            .expect("pktinfo datagram sent but not received");
        assert_eq!(*v6(from).ip(), a6("2001:db8::99"));
    }
    v.push(("pktinfo send".to_string(), r));
    v
}

fn check_kernel_view(view: &[(String, Result<(), i32>)], nonlocal: bool, who: &str) {
    for (case, r) in view {
        let want = if nonlocal {
            Ok(())
        } else if case == "pktinfo send" {
            Err(libc::EINVAL)
        } else {
            Err(libc::EADDRNOTAVAIL)
        };
        assert_eq!(
            r,
            &want,
            "{who}: {case} with ip_nonlocal_bind={} gave {:?}, the kernel's answer is {:?}",
            nonlocal as u8,
            r.map_err(errname),
            want.map_err(errname)
        );
    }
}

/// Runs [`kernel_view`] in a child process placed in a cgroup of its own
/// (see `helper_kernel_view_in_cgroup`); returns its report.
fn kernel_view_in_child_cgroup(other: &Netns) -> Vec<(String, Result<(), i32>)> {
    let cg = ChildCgroup::new("panda-other");
    let out = run(Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_kernel_view_in_cgroup",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PANDA_HELPER_NETNS", other.path())
        .env("PANDA_HELPER_CGROUP", cg.path()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helper failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("HELPER-RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("helper printed no result:\n{stdout}"));
    let v: Vec<(String, i32)> = serde_json::from_str(line).unwrap();
    v.into_iter()
        .map(|(c, e)| (c, if e == 0 { Ok(()) } else { Err(e) }))
        .collect()
}

/// Not a test by itself: run by `other_netns_sees_kernel_behaviour` as a
/// child process that moves into a cgroup of its own first.
#[test]
#[ignore]
fn helper_kernel_view_in_cgroup() {
    let (Some(ns), Some(cg)) = (
        std::env::var_os("PANDA_HELPER_NETNS"),
        std::env::var_os("PANDA_HELPER_CGROUP"),
    ) else {
        return;
    };
    let cg = std::path::PathBuf::from(cg);
    std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
        .expect("join helper cgroup");
    let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let name = cg.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        mine.lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&name)),
        "helper not in its cgroup: {mine}"
    );
    let ns = std::path::PathBuf::from(ns);
    let view = std::thread::spawn(move || {
        enter_netns(&ns);
        kernel_view()
    })
    .join()
    .unwrap();
    let v: Vec<(String, i32)> = view
        .into_iter()
        .map(|(c, r)| (c, r.err().unwrap_or(0)))
        .collect();
    println!("HELPER-RESULT {}", serde_json::to_string(&v).unwrap());
    // Leave the cgroup so it can be removed as soon as we exit.
    let root = cgroup2_root();
    let _ = std::fs::write(root.join("cgroup.procs"), std::process::id().to_string());
}

#[test]
fn other_netns_sees_kernel_behaviour() {
    if !require_privileged() {
        return;
    }
    let served = Netns::new("guard-served");
    let other = Netns::new("guard-other");
    other.set_sysctl("net.ipv4.ping_group_range", "0 2147483647");
    served.set_sysctl("net.ipv4.ping_group_range", "0 2147483647");
    let pandad = Pandad::start(&served);
    let mech = mechanism_of(&pandad, &served);

    // Control: in the served netns, 2001:db8::1 is refused.
    served.in_netns(|| {
        assert_bind_refused(STREAM, x1(), "served netns");
        assert_bind_refused(DGRAM, x1(), "served netns");
    });

    // The other netns, sysctl at its default 0: the kernel refuses…
    assert_eq!(other.sysctl("net.ipv6.ip_nonlocal_bind"), "0");
    check_kernel_view(&other.in_netns(kernel_view), false, "other netns");
    check_kernel_view(
        &kernel_view_in_child_cgroup(&other),
        false,
        "other netns, child cgroup",
    );

    // …and at 1 it allows everything, pandad's programs notwithstanding.
    other.set_sysctl("net.ipv6.ip_nonlocal_bind", "1");
    check_kernel_view(&other.in_netns(kernel_view), true, "other netns");
    check_kernel_view(
        &kernel_view_in_child_cgroup(&other),
        true,
        "other netns, child cgroup",
    );

    // Still refused in the served netns (the guard was there all along).
    served.in_netns(|| assert_bind_refused(STREAM, x1(), "served netns, after"));
    eprintln!("mechanism {mech}: other netns unaffected");
    let (st, err) = pandad.stop();
    assert!(st.success(), "pandad exit {st}; stderr:\n{err}");
}
