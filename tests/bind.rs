//! 1,000 random addresses of the prefix, one port: each address gets its own
//! TCP listener / UDP socket, each serves one client that checks the echo and
//! that the server saw the client's own address.
mod common;

use std::{
    collections::HashSet,
    io::{Read, Write},
    net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use common::*;
use rand::Rng;

const N: usize = 1000;
const PORT: u16 = 4242;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// N distinct random prefix addresses, plus the prefix's last address.
fn addresses(rng: &mut impl Rng, avoid: &HashSet<Ipv6Addr>) -> Vec<Ipv6Addr> {
    let mut set: HashSet<Ipv6Addr> = HashSet::new();
    let mut v = vec![a6("fd00:1009:bacc:ffff:ffff:ffff:ffff:ffff")];
    set.insert(v[0]);
    while v.len() < N {
        let a = random_prefix_addr(rng);
        if !avoid.contains(&a) && set.insert(a) {
            v.push(a);
        }
    }
    v
}

/// Before pandad runs, the prefix is not local: a bind there must fail.
/// (Shows the test could fail: the binds below depend on pandad.)
fn assert_prefix_unbindable_without_pandad(ns: &Netns) {
    ns.in_netns(|| {
        assert_bind_refused(
            libc::SOCK_STREAM,
            a6("fd00:1009:bacc::1234"),
            "before pandad",
        );
        assert_bind_refused(
            libc::SOCK_DGRAM,
            a6("fd00:1009:bacc::1234"),
            "before pandad",
        );
    });
}

#[test]
fn tcp_1000_prefix_addresses_echo() {
    if !require_privileged() {
        return;
    }
    let t0 = Instant::now();
    let ns = Netns::new("bind-tcp");
    assert_prefix_unbindable_without_pandad(&ns);
    let pandad = Pandad::start(&ns);
    let before = pandad.counter("bind_prefix");

    let mut rng = rand::rng();
    let servers = addresses(&mut rng, &HashSet::new());
    let avoid: HashSet<Ipv6Addr> = servers.iter().copied().collect();
    let clients = addresses(&mut rng, &avoid);

    let prefix_binds = ns.in_netns(|| {
        let mut prefix_binds = 0u64;
        let listeners: Vec<TcpListener> = servers
            .iter()
            .map(|a| {
                let l = TcpListener::bind(SocketAddrV6::new(*a, PORT, 0, 0))
                    .unwrap_or_else(|e| panic!("TCP bind [{a}]:{PORT}: {e}"));
                prefix_binds += 1;
                l
            })
            .collect();
        for (i, (l, a)) in listeners.iter().zip(&servers).enumerate() {
            let dst = SocketAddrV6::new(*a, PORT, 0, 0);
            // Even clients bind a prefix address of their own first; odd
            // ones let the kernel choose the source.
            let mut c = if i % 2 == 0 {
                let fd = tcp6();
                bind6(&fd, clients[i], 0)
                    .unwrap_or_else(|e| panic!("client bind {}: {}", clients[i], errname(e)));
                prefix_binds += 1;
                let s = TcpStream::from(fd);
                connect_std(&s, dst);
                s
            } else {
                TcpStream::connect_timeout(&SocketAddr::V6(dst), IO_TIMEOUT)
                    .unwrap_or_else(|e| panic!("connect {dst}: {e}"))
            };
            c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let client_addr = v6(c.local_addr().unwrap());
            if i % 2 == 0 {
                assert_eq!(*client_addr.ip(), clients[i], "client source address");
            }
            let msg = format!("hello {i} from {client_addr} to {dst}");
            c.write_all(msg.as_bytes()).unwrap();

            let (mut s, peer) = l
                .accept()
                .unwrap_or_else(|e| panic!("accept on {dst}: {e}"));
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            assert_eq!(v6(peer), client_addr, "peer seen by server {dst}");
            assert_eq!(v6(s.local_addr().unwrap()), dst, "server socket address");
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf)
                .unwrap_or_else(|e| panic!("server {dst} read: {e}"));
            assert_eq!(buf, msg.as_bytes());
            s.write_all(&buf).unwrap();

            let mut echo = vec![0u8; msg.len()];
            c.read_exact(&mut echo)
                .unwrap_or_else(|e| panic!("client read echo from {dst}: {e}"));
            assert_eq!(echo, msg.as_bytes(), "echo from {dst}");
        }
        assert_eq!(listeners.len(), N);
        prefix_binds
    });

    let after = pandad.counter("bind_prefix");
    assert!(
        after >= before + prefix_binds,
        "bind_prefix counter went from {before} to {after}, expected at least +{prefix_binds}"
    );
    let (st, err) = pandad.stop();
    assert!(st.success(), "pandad exit {st}; stderr:\n{err}");
    eprintln!(
        "tcp: {N} listeners on [prefix]:{PORT}, echo ok, {:?}",
        t0.elapsed()
    );
}

/// connect(2) a socket std created from an OwnedFd.
fn connect_std(s: &TcpStream, dst: SocketAddrV6) {
    use std::os::fd::AsRawFd;
    let sa = sockaddr6(*dst.ip(), dst.port());
    let rc = unsafe {
        libc::connect(
            s.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "connect {dst}: {}", errname(errno()));
}

#[test]
fn udp_1000_prefix_addresses_echo() {
    if !require_privileged() {
        return;
    }
    let t0 = Instant::now();
    let ns = Netns::new("bind-udp");
    assert_prefix_unbindable_without_pandad(&ns);
    let pandad = Pandad::start(&ns);
    let before = pandad.counter("bind_prefix");

    let mut rng = rand::rng();
    let servers = addresses(&mut rng, &HashSet::new());
    let avoid: HashSet<Ipv6Addr> = servers.iter().copied().collect();
    let clients = addresses(&mut rng, &avoid);

    let prefix_binds = ns.in_netns(|| {
        let mut prefix_binds = 0u64;
        let socks: Vec<UdpSocket> = servers
            .iter()
            .map(|a| {
                let s = UdpSocket::bind(SocketAddrV6::new(*a, PORT, 0, 0))
                    .unwrap_or_else(|e| panic!("UDP bind [{a}]:{PORT}: {e}"));
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                prefix_binds += 1;
                s
            })
            .collect();
        for (i, (srv, a)) in socks.iter().zip(&servers).enumerate() {
            let dst = SocketAddrV6::new(*a, PORT, 0, 0);
            let c = if i % 2 == 0 {
                prefix_binds += 1;
                UdpSocket::bind(SocketAddrV6::new(clients[i], 0, 0, 0))
                    .unwrap_or_else(|e| panic!("client bind {}: {e}", clients[i]))
            } else {
                UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0)).unwrap()
            };
            c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            // connect() fixes the source address, so local_addr() names it.
            c.connect(dst)
                .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
            let client_addr = v6(c.local_addr().unwrap());
            if i % 2 == 0 {
                assert_eq!(*client_addr.ip(), clients[i], "client source address");
            }
            let msg = format!("datagram {i} from {client_addr} to {dst}");
            c.send(msg.as_bytes()).unwrap();

            let mut buf = [0u8; 512];
            let (n, from) = srv
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("server {dst} recv: {e}"));
            assert_eq!(&buf[..n], msg.as_bytes(), "datagram at {dst}");
            assert_eq!(v6(from), client_addr, "peer seen by server {dst}");
            srv.send_to(&buf[..n], from).unwrap();

            let mut echo = [0u8; 512];
            let n = c
                .recv(&mut echo)
                .unwrap_or_else(|e| panic!("client recv echo from {dst}: {e}"));
            assert_eq!(&echo[..n], msg.as_bytes(), "echo from {dst}");
        }
        assert_eq!(socks.len(), N);
        prefix_binds
    });

    let after = pandad.counter("bind_prefix");
    assert!(
        after >= before + prefix_binds,
        "bind_prefix counter went from {before} to {after}, expected at least +{prefix_binds}"
    );
    let (st, err) = pandad.stop();
    assert!(st.success(), "pandad exit {st}; stderr:\n{err}");
    eprintln!(
        "udp: {N} sockets on [prefix]:{PORT}, echo ok, {:?}",
        t0.elapsed()
    );
}
