//! The prefix is node-local: nothing in it crosses a non-lo interface.
//! A "host" netns runs pandad; a "peer" netns is joined to it by veth
//! (2001:db8:1::1/64 host side, 2001:db8:1::2/64 peer side) and routes the
//! prefix via the host, as a neighbour on the LAN could.
mod common;

use std::{
    io::ErrorKind,
    net::{Ipv6Addr, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use common::*;

const CONNECTIVITY: Duration = Duration::from_secs(10);

/// Field order is drop order: pandad first, then the namespaces.
struct Scope {
    pandad: Pandad,
    peer: Netns,
    host: Netns,
}

fn host_addr() -> Ipv6Addr {
    a6("2001:db8:1::1")
}

fn peer_addr() -> Ipv6Addr {
    a6("2001:db8:1::2")
}

/// Builds host + peer. `pandad_first`: start pandad before the veth exists,
/// so interfaces created later must be covered too.
fn setup(tag: &str, pandad_first: bool) -> Scope {
    let host = Netns::new(&format!("{tag}-h"));
    let peer = Netns::new(&format!("{tag}-p"));
    let early = pandad_first.then(|| Pandad::start(&host));
    veth(
        &host,
        "vh",
        "2001:db8:1::1/64",
        &peer,
        "vp",
        "2001:db8:1::2/64",
    );
    peer.ip(&[
        "-6",
        "route",
        "add",
        "fd00:1009:bacc::/48",
        "via",
        "2001:db8:1::1",
    ]);
    let pandad = early.unwrap_or_else(|| Pandad::start(&host));
    Scope { pandad, peer, host }
}

fn udp_bound(a: Ipv6Addr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddrV6::new(a, 0, 0, 0))
        .unwrap_or_else(|e| panic!("UDP bind {a}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Sends `ctl-N` from `good` to `dst` until `rx` gets one (the path works).
fn prove_path(good: &UdpSocket, rx: &UdpSocket, dst: SocketAddrV6, what: &str) {
    let mut n = 0;
    let mut buf = [0u8; 64];
    let got = retry_until(CONNECTIVITY, || {
        n += 1;
        good.send_to(format!("ctl-{n}").as_bytes(), dst).ok()?;
        let (len, from) = rx.recv_from(&mut buf).ok()?;
        buf[..len].starts_with(b"ctl-").then_some(from)
    });
    let from =
        got.unwrap_or_else(|| panic!("control: {what}: nothing arrived within {CONNECTIVITY:?}"));
    assert_eq!(
        v6(from).ip(),
        v6(good.local_addr().unwrap()).ip(),
        "control: {what}: source"
    );
}

/// Sends a final marker from `good`, then reads `rx` until it arrives and a
/// little longer; panics if anything starting with `bad` shows up.
fn assert_never_arrives(
    good: &UdpSocket,
    rx: &UdpSocket,
    dst: SocketAddrV6,
    bad: &[u8],
    what: &str,
) {
    good.send_to(b"ctl-final", dst).unwrap();
    let mut buf = [0u8; 64];
    let mut seen_final = false;
    // Until the marker (5 s at most), then a 1 s straggler window.
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        match rx.recv_from(&mut buf) {
            Ok((len, from)) => {
                assert!(
                    !buf[..len].starts_with(bad),
                    "{what}: a datagram from {from} arrived: {:?}",
                    String::from_utf8_lossy(&buf[..len])
                );
                if &buf[..len] == b"ctl-final" {
                    seen_final = true;
                    rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("recv: {e}"),
        }
    }
    assert!(
        seen_final,
        "control: the final marker after the {what} probe did not arrive"
    );
}

#[test]
fn peer_cannot_connect_to_prefix_listener() {
    if !require_privileged() {
        return;
    }
    let s = setup("scope-tcp", false);
    let dead = SocketAddrV6::new(a6("fd00:1009:bacc::dead"), 8080, 0, 0);
    let on_veth = SocketAddrV6::new(host_addr(), 8081, 0, 0);
    let (l_prefix, l_veth) = s.host.in_netns(|| {
        (
            TcpListener::bind(dead).expect("listen on fd00:1009:bacc::dead"),
            TcpListener::bind(on_veth).expect("listen on 2001:db8:1::1"),
        )
    });

    // Control 1: the prefix listener works from inside the host.
    s.host.in_netns(|| {
        TcpStream::connect_timeout(&dead.into(), Duration::from_secs(5))
            .expect("host-local connect to the prefix listener");
    });
    let (c, _) = l_prefix.accept().unwrap();
    drop(c);

    // Control 2: the peer reaches the host over the veth.
    let peer_seen = s.peer.in_netns(|| {
        retry_until(CONNECTIVITY, || {
            TcpStream::connect_timeout(&on_veth.into(), Duration::from_secs(1)).ok()
        })
        .map(|c| v6(c.local_addr().unwrap()))
    });
    let peer_seen = peer_seen.expect("control: peer could not connect to [2001:db8:1::1]:8081");
    let (c, from) = l_veth.accept().unwrap();
    assert_eq!(v6(from), peer_seen);
    drop(c);

    // The peer's connect to the prefix listener must never complete.
    let r = s
        .peer
        .in_netns(|| TcpStream::connect_timeout(&dead.into(), Duration::from_secs(3)));
    match r {
        Ok(c) => panic!(
            "peer connected to {dead} from {:?}: the prefix is reachable from outside",
            c.local_addr()
        ),
        Err(e) => eprintln!("peer connect to {dead}: {e} (kind {:?})", e.kind()),
    }
    l_prefix.set_nonblocking(true).unwrap();
    match l_prefix.accept() {
        Ok((_, from)) => panic!("prefix listener accepted a connection from {from}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock),
    }

    // Control 3: the veth path still works after the probe.
    s.peer.in_netns(|| {
        TcpStream::connect_timeout(&on_veth.into(), Duration::from_secs(5))
            .expect("control after probe");
    });
    let (st, err) = s.pandad.stop();
    assert!(st.success(), "pandad exit {st}; stderr:\n{err}");
}

#[test]
fn packet_from_peer_with_prefix_source_dropped() {
    if !require_privileged() {
        return;
    }
    // pandad first: the veth appears after pandad set up its rules.
    let s = setup("scope-in", true);
    let spoof = a6("fd00:1009:bacc::66");
    s.peer.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:1009:bacc::66/128",
        "dev",
        "lo",
        "nodad",
    ]);
    let rx = s.host.in_netns(|| udp_bound(host_addr()));
    let dst = v6(rx.local_addr().unwrap());
    let (good, bad) = s
        .peer
        .in_netns(|| (udp_bound(peer_addr()), udp_bound(spoof)));

    prove_path(&good, &rx, dst, "peer 2001:db8:1::2 -> host 2001:db8:1::1");
    for i in 0..3 {
        // The peer has no pandad: its stack sends these.
        bad.send_to(format!("bad-{i}").as_bytes(), dst)
            .unwrap_or_else(|e| panic!("peer send from {spoof}: {e}"));
    }
    assert_never_arrives(
        &good,
        &rx,
        dst,
        b"bad-",
        "peer -> host, source fd00:1009:bacc::66",
    );
    let (st, err) = s.pandad.stop();
    assert!(st.success(), "pandad exit {st}; stderr:\n{err}");
}

#[test]
fn host_cannot_send_from_prefix_out_of_veth() {
    if !require_privileged() {
        return;
    }
    let s = setup("scope-out", false);
    let rx = s.peer.in_netns(|| udp_bound(peer_addr()));
    let dst = v6(rx.local_addr().unwrap());
    let (good, bad) = s
        .host
        .in_netns(|| (udp_bound(host_addr()), udp_bound(a6("fd00:1009:bacc::77"))));

    prove_path(&good, &rx, dst, "host 2001:db8:1::1 -> peer 2001:db8:1::2");
    for i in 0..3 {
        match bad.send_to(format!("bad-{i}").as_bytes(), dst) {
            Ok(_) => {}
            Err(e) => eprintln!("host send from fd00:1009:bacc::77 refused at send time: {e}"),
        }
    }
    assert_never_arrives(
        &good,
        &rx,
        dst,
        b"bad-",
        "host -> peer, source fd00:1009:bacc::77",
    );
    let (st, err) = s.pandad.stop();
    assert!(st.success(), "pandad exit {st}; stderr:\n{err}");
}
