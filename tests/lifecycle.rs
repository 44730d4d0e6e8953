//! pandad's life: what it changes while running, that SIGTERM/SIGINT undo
//! exactly that, that bad configs change nothing, and what status reports.
mod common;

use std::{
    net::{Ipv6Addr, UdpSocket},
    sync::OnceLock,
};

use common::*;
use std::os::unix::process::ExitStatusExt;

/// The mechanism pandad picks with `mechanism = "auto"` on this kernel
/// (probed once per test binary, in a throwaway netns).
fn auto_mechanism() -> &'static str {
    static AUTO: OnceLock<String> = OnceLock::new();
    AUTO.get_or_init(|| {
        let ns = Netns::new("lc-probe");
        let p = Pandad::start(&ns);
        let m = mechanism(&p.status());
        let (st, err) = p.stop();
        assert!(st.success(), "probe pandad exit {st}; stderr:\n{err}");
        eprintln!("mechanism auto resolves to {m:?} on this kernel");
        m
    })
}

/// Things pandad must leave alone: an address, a route, a foreign nft table.
fn add_bystanders(ns: &Netns) {
    ns.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:5::1/128",
        "dev",
        "lo",
        "nodad",
    ]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "local",
        "2001:db8:6::/64",
        "dev",
        "lo",
    ]);
    ns.exec_ok("nft", &["add", "table", "inet", "bystander"]);
    ns.exec_ok(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "bystander",
            "out",
            "{ type filter hook output priority 0; policy accept; }",
        ],
    );
    ns.exec_ok(
        "nft",
        &[
            "add",
            "rule",
            "inet",
            "bystander",
            "out",
            "ip6",
            "daddr",
            "2001:db8:7::1",
            "drop",
        ],
    );
}

fn teardown_with(sig: libc::c_int, tag: &str) {
    let ns = Netns::new(tag);
    add_bystanders(&ns);
    let before = ns.snapshot();
    ns.in_netns(|| assert_bind_refused(libc::SOCK_STREAM, a6("fd00:1009:bacc::5"), "before start"));

    let pandad = Pandad::start(&ns);
    let during = ns.snapshot();
    let mech = mechanism(&pandad.status());

    assert!(
        during.addrs.contains("inet6 fd00:1009:bacc::1/128"),
        "anchor address missing while running:\n{}",
        during.addrs
    );
    let route = during
        .routes
        .lines()
        .find(|l| l.starts_with("local fd00:1009:bacc::/48 "))
        .unwrap_or_else(|| {
            panic!(
                "no `local fd00:1009:bacc::/48` route while running:\n{}",
                during.routes
            )
        });
    for want in ["dev lo", "table local", "src fd00:1009:bacc::1"] {
        assert!(route.contains(want), "route lacks {want:?}: {route}");
    }
    assert!(
        during.ruleset.contains("table inet panda"),
        "no `table inet panda` while running:\n{}",
        during.ruleset
    );
    assert!(
        during.ruleset.contains("table inet bystander"),
        "foreign table gone while running:\n{}",
        during.ruleset
    );
    match mech.as_str() {
        "guard" => assert_eq!(during.nonlocal_bind, "1", "guard mode: ip_nonlocal_bind"),
        "freebind" => assert_eq!(during.nonlocal_bind, "0", "freebind mode: ip_nonlocal_bind"),
        m => panic!("status.mechanism = {m:?}"),
    }
    ns.in_netns(|| assert_bind_ok(libc::SOCK_STREAM, a6("fd00:1009:bacc::5"), "while running"));

    let (st, err) = pandad.stop_with(sig);
    assert!(
        st.success(),
        "pandad should exit 0 on signal {sig}, got {st}; stderr:\n{err}"
    );
    for bad in ["panicked", "RUST_BACKTRACE"] {
        assert!(!err.contains(bad), "stderr contains {bad:?}:\n{err}");
    }
    let after = ns.snapshot();
    assert_same(&before, &after, &format!("after signal {sig}"));
    ns.in_netns(|| assert_bind_refused(libc::SOCK_STREAM, a6("fd00:1009:bacc::5"), "after stop"));
}

#[test]
fn sigterm_restores_everything() {
    if !require_privileged() {
        return;
    }
    teardown_with(libc::SIGTERM, "lc-sigterm");
}

#[test]
fn sigint_restores_everything() {
    if !require_privileged() {
        return;
    }
    teardown_with(libc::SIGINT, "lc-sigint");
}

#[test]
fn bad_config_rejected_and_nothing_changed() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("lc-badcfg");
    let before = ns.snapshot();
    // (invalid line, text stderr must contain)
    let cases: &[(&str, &str)] = &[
        ("prefix = \"127.0.0.0/8\"", "prefix"),
        ("prefix = \"fe80::/10\"", "prefix"),
        ("prefix = \"::/0\"", "prefix"),
        ("prefix = \"::1/128\"", "prefix"),
        ("prefix = \"ff00::/8\"", "prefix"),
        ("prefix = \"fd00::/130\"", "prefix"),
        ("prefix = \"fd00:1009:bacc::1/48\"", "prefix"),
        ("prefix = \"banana\"", "prefix"),
        ("prefix = 48", "prefix"),
        ("mechanism = \"sometimes\"", "mechanism"),
        ("prefx = \"fd00:1009:bacc::/48\"", "prefx"),
        ("cgroup = \"/nonexistent/panda-cgroup\"", "cgroup"),
        ("table = \"\"", "table"),
        ("lease_mode = \"closed\"", "lease_mode"),
        // Outside the cgroup the hooks attach to (the root, in guard mode).
        ("exec_cgroup = \"/elsewhere/panda.exec\"", "exec_cgroup"),
    ];
    let mut failures = Vec::new();
    for (line, key) in cases {
        let launch = Pandad::launch(&ns, &format!("{line}\n"));
        check_rejection(launch, key, line, &mut failures);
        assert_same(
            &before,
            &ns.snapshot(),
            &format!("after rejected config `{line}`"),
        );
    }
    // Relative paths for socket and state_dir.
    for key in ["socket", "state_dir"] {
        let dir = TempDir::new();
        let abs = base_config(dir.path());
        let text: String = abs
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{key} =")) {
                    format!("{key} = \"relative-{key}\"\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        assert!(text.contains("relative-"), "{text}");
        let launch = Pandad::launch_raw(&ns, dir, &text);
        check_rejection(launch, key, &format!("relative {key}"), &mut failures);
        assert_same(
            &before,
            &ns.snapshot(),
            &format!("after rejected config {text:?}"),
        );
    }
    // Not TOML at all: some message, no panic.
    let launch = Pandad::launch(&ns, "prefix = \n");
    check_rejection(launch, "", "`prefix = ` (syntax error)", &mut failures);
    // No such file: the error names it.
    let launch = Pandad::launch_args(
        &ns,
        TempDir::new(),
        &["--config", "/nonexistent/panda.toml"],
    );
    check_rejection(
        launch,
        "/nonexistent/panda.toml",
        "--config /nonexistent/panda.toml",
        &mut failures,
    );
    assert_same(&before, &ns.snapshot(), "after the last rejected config");
    assert!(
        failures.is_empty(),
        "{} bad config(s) not rejected as required:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The launch must end in a clean refusal: non-zero exit code, no
/// panic/backtrace, a non-empty message naming `key`. Problems are collected
/// so that one run reports every case.
fn check_rejection(launch: Launch, key: &str, what: &str, failures: &mut Vec<String>) {
    let (st, err) = match launch {
        Launch::Exited { status, stderr } => (status, stderr),
        Launch::Ready(p) => {
            let (st, _) = p.stop();
            failures.push(format!("{what}: pandad started (stopped: {st})"));
            return;
        }
    };
    if st.code().is_none_or(|c| c == 0) {
        failures.push(format!(
            "{what}: exit status {st}, expected a non-zero exit code"
        ));
    }
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        if err.contains(bad) {
            failures.push(format!("{what}: stderr contains {bad:?}: {}", err.trim()));
        }
    }
    if err.trim().is_empty() {
        failures.push(format!("{what}: nothing on stderr"));
    } else if !err.contains(key) {
        failures.push(format!(
            "{what}: stderr does not name {key:?}: {}",
            err.trim()
        ));
    } else {
        eprintln!("ok {what} -> {}", err.trim().lines().last().unwrap_or(""));
    }
}

#[test]
fn guard_refuses_a_narrower_cgroup() {
    if !require_privileged() {
        return;
    }
    let auto = auto_mechanism();
    let ns = Netns::new("lc-cgroup");
    let cg = ChildCgroup::new("panda-narrow");
    let before = ns.snapshot();

    let (st, err) = Pandad::launch(
        &ns,
        &format!(
            "mechanism = \"guard\"\ncgroup = \"{}\"\n",
            cg.path().display()
        ),
    )
    .exited();
    assert_failed_cleanly(&st, &err, "guard + narrow cgroup");
    assert!(
        err.contains("cgroup"),
        "guard + narrow cgroup: the error should mention the cgroup:\n{err}"
    );
    eprintln!("guard + narrow cgroup -> {}", err.trim());
    assert_same(&before, &ns.snapshot(), "after guard + narrow cgroup");

    // auto: refused as well where it resolves to guard.
    let launch = Pandad::launch(&ns, &format!("cgroup = \"{}\"\n", cg.path().display()));
    if auto == "guard" {
        let (st, err) = launch.exited();
        assert_failed_cleanly(&st, &err, "auto (= guard) + narrow cgroup");
        assert!(err.contains("cgroup"), "auto + narrow cgroup:\n{err}");
        assert_same(&before, &ns.snapshot(), "after auto + narrow cgroup");
    } else {
        let p = launch.ready();
        assert_eq!(p.status()["mechanism"], "freebind");
        let (st, err) = p.stop();
        assert!(st.success(), "{st}: {err}");
    }

    // Control: guard with the root cgroup, named explicitly, starts
    // (where guard mode can run at all: it needs the kernel's BTF).
    let launch = Pandad::launch(
        &ns,
        &format!(
            "mechanism = \"guard\"\ncgroup = \"{}\"\n",
            cgroup2_root().display()
        ),
    );
    if kernel_has_btf() {
        let p = launch.ready();
        assert_eq!(p.status()["mechanism"], "guard");
        let (st, err) = p.stop();
        assert!(st.success(), "{st}: {err}");
    } else {
        let (st, err) = launch.exited();
        assert_failed_cleanly(&st, &err, "guard + root cgroup, kernel without BTF");
        assert!(
            err.contains("BTF"),
            "guard mode without kernel BTF: the error should say BTF is missing:\n{err}"
        );
        eprintln!("guard without BTF -> {}", err.trim());
    }
    assert_same(&before, &ns.snapshot(), "after guard + root cgroup");
}

#[test]
fn freebind_mechanism_matches_kernel_support() {
    if !require_privileged() {
        return;
    }
    let auto = auto_mechanism();
    let ns = Netns::new("lc-freebind");
    let before = ns.snapshot();
    match Pandad::launch(&ns, "mechanism = \"freebind\"\n") {
        Launch::Exited { status, stderr } => {
            assert_eq!(
                auto, "guard",
                "mechanism=freebind refused although auto resolves to freebind:\n{stderr}"
            );
            assert_failed_cleanly(&status, &stderr, "mechanism = freebind");
            assert!(
                stderr.contains("freebind") || stderr.contains("FREEBIND"),
                "the refusal should say freebind is unavailable:\n{stderr}"
            );
            eprintln!("mechanism=freebind refused: {}", stderr.trim());
            assert_same(&before, &ns.snapshot(), "after refused freebind");
        }
        Launch::Ready(p) => {
            assert_eq!(
                auto, "freebind",
                "mechanism=freebind started although auto resolves to guard (no kernel support)"
            );
            assert_eq!(p.status()["mechanism"], "freebind");
            assert_eq!(ns.sysctl("net.ipv6.ip_nonlocal_bind"), "0");
            ns.in_netns(|| {
                assert_bind_ok(libc::SOCK_STREAM, a6("fd00:1009:bacc::5"), "freebind mode");
                assert_bind_refused(libc::SOCK_STREAM, a6("2001:db8::1"), "freebind mode");
            });
            let (st, err) = p.stop();
            assert!(st.success(), "{st}: {err}");
            assert_same(&before, &ns.snapshot(), "after freebind run");
        }
    }
}

#[test]
fn status_reports_state_and_counters() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("lc-status");
    ns.set_sysctl("net.ipv4.ping_group_range", "0 2147483647");
    let p = Pandad::start(&ns);
    let st = p.status();
    assert_eq!(st["ready"], true, "status.ready: {st}");
    assert_eq!(st["prefix"], PREFIX, "status.prefix: {st}");
    let mech = mechanism(&st);
    match mech.as_str() {
        "guard" => assert_eq!(ns.sysctl("net.ipv6.ip_nonlocal_bind"), "1"),
        "freebind" => assert_eq!(ns.sysctl("net.ipv6.ip_nonlocal_bind"), "0"),
        m => panic!("status.mechanism = {m:?}: {st}"),
    }
    // Checked at the end, so that the assertions below still run.
    let missing = [
        "bind_prefix",
        "bind_denied",
        "sendmsg_denied",
        "freebind_set",
        "freebind_failed",
        "lsm_bind_denied",
        "addr_chain_overflow",
    ]
    .into_iter()
    .filter(|c| !st["counters"][*c].is_u64())
    .collect::<Vec<_>>();
    let raw_ping = st["hookless"]["raw_ping_bind"]
        .as_str()
        .unwrap_or("")
        .to_string();
    match mech.as_str() {
        "freebind" => assert_eq!(raw_ping, "kernel", "status.hookless.raw_ping_bind: {st}"),
        _ => assert!(
            raw_ping == "closed" || raw_ping == "open",
            "status.hookless.raw_ping_bind: {st}"
        ),
    }
    assert_eq!(
        st["hookless"]["icmp_send"], "closed",
        "status.hookless.icmp_send: {st}"
    );

    // A bind in the prefix is counted.
    let c0 = p.status()["counters"].clone();
    ns.in_netns(|| assert_bind_ok(libc::SOCK_STREAM, a6("fd00:1009:bacc::abc"), "prefix"));
    let c1 = p.status()["counters"].clone();
    let grew = |a: &serde_json::Value, b: &serde_json::Value, k: &str| {
        let (x, y) = (a[k].as_u64().unwrap(), b[k].as_u64().unwrap());
        assert!(y > x, "counter {k} did not increase ({x} -> {y})");
    };
    if mech == "guard" {
        grew(&c0, &c1, "bind_prefix");
        // A refused bind, a refused pktinfo source, a refused raw bind.
        ns.in_netns(|| assert_bind_refused(libc::SOCK_STREAM, a6("2001:db8::1"), "denied"));
        let c2 = p.status()["counters"].clone();
        grew(&c1, &c2, "bind_denied");
        ns.in_netns(|| {
            let rx = UdpSocket::bind("[::1]:0").unwrap();
            let r = sendmsg_pktinfo(
                &udp6(),
                v6(rx.local_addr().unwrap()),
                a6("2001:db8::99"),
                b"x",
            );
            assert_eq!(r, Err(libc::EINVAL), "pktinfo from 2001:db8::99");
        });
        let c3 = p.status()["counters"].clone();
        grew(&c2, &c3, "sendmsg_denied");
        if raw_ping == "closed" {
            ns.in_netns(|| {
                let fd = socket6(libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
                assert_eq!(bind6(&fd, a6("2001:db8::5"), 0), Err(libc::EADDRNOTAVAIL));
            });
            let c4 = p.status()["counters"].clone();
            grew(&c3, &c4, "lsm_bind_denied");
        }
    } else {
        grew(&c0, &c1, "bind_prefix");
        grew(&c0, &c1, "freebind_set");
        assert_eq!(
            c1["freebind_failed"], c0["freebind_failed"],
            "freebind mode: bpf_setsockopt(IPV6_FREEBIND) failed for a prefix bind"
        );
    }

    // The human-readable form works and names the prefix.
    let out = p.panda(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "panda status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(PREFIX),
        "panda status does not show the prefix:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("mechanism") && l.split_whitespace().last() == Some(&mech)),
        "panda status does not show mechanism {mech}:\n{text}"
    );

    assert!(
        missing.is_empty(),
        "status.counters lacks {missing:?} (as u64): {st}"
    );
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
}

#[test]
fn custom_prefix_is_served_instead_of_default() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("lc-custom");
    let before = ns.snapshot();
    let p = Pandad::start_with(
        &ns,
        "prefix = \"fd12:3456:789a::/64\"\ntable = \"pandatest\"\n",
    );
    assert_eq!(p.status()["prefix"], "fd12:3456:789a::/64");
    let s = ns.snapshot();
    assert!(
        s.addrs.contains("inet6 fd12:3456:789a::1/128"),
        "anchor:\n{}",
        s.addrs
    );
    assert!(
        s.routes
            .lines()
            .any(|l| l.starts_with("local fd12:3456:789a::/64 ")),
        "route:\n{}",
        s.routes
    );
    assert!(
        s.ruleset.contains("table inet pandatest"),
        "table name:\n{}",
        s.ruleset
    );
    assert!(
        !s.ruleset.contains("table inet panda "),
        "default table present:\n{}",
        s.ruleset
    );
    ns.in_netns(|| {
        let inside: Ipv6Addr = a6("fd12:3456:789a::abcd");
        assert_bind_ok(libc::SOCK_STREAM, inside, "custom prefix");
        assert_bind_ok(libc::SOCK_DGRAM, inside, "custom prefix");
        assert_bind_refused(
            libc::SOCK_STREAM,
            a6("fd12:3456:789a:1::1"),
            "outside the /64",
        );
        assert_bind_refused(
            libc::SOCK_STREAM,
            a6("fd00:1009:bacc::5"),
            "default prefix, not served",
        );
    });
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
    assert_same(&before, &ns.snapshot(), "after custom prefix run");
}

#[test]
fn second_instance_refused_and_crash_taken_over() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("lc-crash");
    let before = ns.snapshot();
    // The state directory (and the bpffs) outlive the first daemon, as
    // /run/panda and /sys/fs/bpf do.
    let state = TempDir::new();
    let config = |run: &TempDir| {
        format!(
            "socket = \"{}\"\nstate_dir = \"{}\"\nbpffs = \"{}\"\n",
            run.path().join("pandad.sock").display(),
            state.path().display(),
            state.path().join("bpffs").display()
        )
    };
    let run1 = TempDir::new();
    let text = config(&run1);
    let first = Pandad::launch_raw(&ns, run1, &text).ready();

    // A second pandad in the same namespace (own socket and state) refuses:
    // on stop it would tear down the first one's table.
    let (st, err) = Pandad::launch(&ns, "").exited();
    assert_failed_cleanly(&st, &err, "second instance in one netns");
    assert!(
        err.contains("already exists"),
        "second instance: the error should say the table exists:\n{err}"
    );
    assert_eq!(
        first.status()["ready"],
        true,
        "the first instance is unharmed"
    );

    // Crash the first: its changes stay behind, its links too (pinned).
    let mech = mechanism(&first.status());
    let (st, _) = first.stop_with(libc::SIGKILL);
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    let crashed = ns.snapshot();
    assert_ne!(before, crashed, "SIGKILL must leave the changes behind");
    if mech == "guard" {
        assert_eq!(ns.sysctl("net.ipv6.ip_nonlocal_bind"), "1");
    }

    // A new instance with the same state_dir takes over, and its stop
    // restores what was there before the first one: nothing is lost.
    let run2 = TempDir::new();
    let text = config(&run2);
    let second = Pandad::launch_raw(&ns, run2, &text).ready();
    assert!(
        second.stderr_text().contains("taking over"),
        "the new instance should say it takes over:\n{}",
        second.stderr_text()
    );
    let (st, err) = second.stop();
    assert!(st.success(), "{st}: {err}");
    assert_same(&before, &ns.snapshot(), "after crash, take-over and stop");
}

#[test]
fn metrics_in_prometheus_format_on_the_socket_and_over_http() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("lc-metrics");
    // The namespace's own loopback: a fixed port cannot collide.
    let p = Pandad::start_with(
        &ns,
        "socket_group = \"4242\"\nmetrics_listen = \"127.0.0.1:9464\"\n",
    );
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p.socket()).expect("stat the API socket");
        assert_eq!(m.gid(), 4242, "socket_group: the socket's group");
        assert_eq!(m.mode() & 0o777, 0o660, "the socket's mode");
    }
    ns.in_netns(|| assert_bind_ok(libc::SOCK_STREAM, a6("fd00:1009:bacc::e1"), "prefix"));

    let out = p.panda(&["metrics"]);
    assert!(out.status.success(), "panda metrics: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Every sample line is NAME{LABELS} VALUE with a numeric value, and
    // every metric has HELP and TYPE lines.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = l
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {l:?}"));
        assert!(value.parse::<f64>().is_ok(), "not a number in {l:?}");
        let metric = name.split('{').next().unwrap();
        assert!(
            text.contains(&format!("# TYPE {metric} ")),
            "no TYPE for {metric}:\n{text}"
        );
    }
    let sample = |t: &str, key: &str| -> u64 {
        t.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no sample {key}:\n{t}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(sample(&text, "panda_events_total{event=\"bind_prefix\"}") >= 1);
    assert_eq!(sample(&text, "panda_repairs_total{kind=\"route\"}"), 0);
    let mech = mechanism(&p.status());
    assert_eq!(
        sample(
            &text,
            &format!("panda_info{{prefix=\"{PREFIX}\",mechanism=\"{mech}\"}}")
        ),
        1
    );

    // The same over HTTP, from inside the namespace.
    let body = ns.in_netns(|| {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect("127.0.0.1:9464").expect("connect metrics");
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        reply
    });
    assert!(body.starts_with("HTTP/1.0 200 OK\r\n"), "{body}");
    let (_, http_text) = body.split_once("\r\n\r\n").expect("HTTP head and body");
    assert!(sample(http_text, "panda_events_total{event=\"bind_prefix\"}") >= 1);
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
}
