//! `panda doctor` and `panda gc` against real kernel state: a healthy
//! namespace, one broken in ways pandad does not repair (a crash, foreign
//! nftables rules, a prefix address on another interface), and pin
//! directories of namespaces that are gone.
mod common;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Duration,
};

use common::*;
use panda::pins::Link;
use serde_json::Value;

/// `panda doctor --config CFG --json` run inside `ns`: exit status and the
/// checks by name.
fn doctor(ns: &Netns, cfg: &Path) -> (ExitStatus, Vec<Value>) {
    let out = run(ns
        .cmd(PANDA)
        .args(["doctor", "--json", "--config"])
        .arg(cfg));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "panda doctor panicked:\n{stderr}"
    );
    let checks: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "panda doctor --json printed no JSON array ({e}):\n{}\nstderr:\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status, checks)
}

/// The check named `name`: (status, detail, fix).
fn check<'a>(checks: &'a [Value], name: &str) -> (&'a str, &'a str, &'a Value) {
    let c = checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("doctor reported no {name:?} check: {checks:#?}"));
    (
        c["status"].as_str().unwrap_or("?"),
        c["detail"].as_str().unwrap_or(""),
        &c["fix"],
    )
}

/// Asserts `name` came out `want`; returns its detail and fix as one text.
fn expect(checks: &[Value], name: &str, want: &str) -> String {
    let (status, detail, fix) = check(checks, name);
    assert_eq!(
        status, want,
        "check {name}: {detail} (fix: {fix}); all checks: {checks:#?}"
    );
    if want != "ok" {
        assert!(
            fix.as_str().is_some_and(|f| !f.is_empty()),
            "check {name} is {want} without a fix: {checks:#?}"
        );
    }
    format!("{detail} {}", fix.as_str().unwrap_or(""))
}

/// The links pinned in `dir`: (name, link id), read and closed again.
fn pinned_links(dir: &Path) -> Vec<(String, u32)> {
    ["bind6", "sendmsg6", "socket_bind"]
        .iter()
        .filter_map(|name| {
            let link = Link::open_pinned(&dir.join(name)).expect("open pin")?;
            Some((name.to_string(), link.info().expect("link info").id))
        })
        .collect()
}

/// The ids of every BPF link the kernel holds.
fn loaded_link_ids() -> HashSet<u32> {
    aya::programs::loaded_links()
        .filter_map(|l| l.ok())
        .map(|l| l.id())
        .collect()
}

#[test]
fn healthy_namespace_passes() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("doc-healthy");
    let p = Pandad::start(&ns);
    let mech = mechanism(&p.status());
    let cfg = config_file(p.dir());
    let (st, checks) = doctor(&ns, &cfg);
    assert_eq!(
        st.code(),
        Some(0),
        "doctor on a healthy namespace: {checks:#?}"
    );
    for name in [
        "bpf",
        "cgroup2",
        "bpffs",
        "nftables",
        "daemon",
        "record",
        "instance",
        "anchor",
        "route",
        "table",
        "sysctl",
        "link-bind6",
        "conflict-route",
        "conflict-nft",
        "conflict-address",
        "stale-pins",
    ] {
        expect(&checks, name, "ok");
    }
    if mech == "guard" {
        expect(&checks, "link-sendmsg6", "ok");
        assert!(expect(&checks, "sysctl", "ok").contains("= 1"));
    }
    // The text form: one line a check, each starting with its verdict.
    let text = ns.exec_ok(PANDA, &["doctor", "--config", cfg.to_str().unwrap()]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), checks.len(), "one line per check:\n{text}");
    for l in &lines {
        assert!(
            l.starts_with("ok ") || l.starts_with("WARN "),
            "healthy: unexpected line {l:?}\n{text}"
        );
    }
    assert!(
        text.contains("route") && text.contains("link-bind6"),
        "{text}"
    );
}

#[test]
fn crashed_daemon_fails_but_orphan_is_a_warning() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("doc-crash");
    let p = Pandad::start(&ns);
    let (dir, _, _) = p.end_keep_dir(libc::SIGKILL);
    let cfg = config_file(dir.path());
    let (st, checks) = doctor(&ns, &cfg);
    assert_eq!(st.code(), Some(1), "doctor after SIGKILL: {checks:#?}");
    assert!(expect(&checks, "daemon", "fail").contains("not answering"));
    let orphan = expect(&checks, "instance", "warn");
    assert!(orphan.contains("binds still work"), "{orphan}");
    expect(&checks, "record", "warn");
    // What the crash left is still in force, and doctor sees it so.
    for name in ["anchor", "route", "table", "link-bind6"] {
        expect(&checks, name, "ok");
    }
    ns.in_netns(|| assert_bind_ok(libc::SOCK_STREAM, a6("fd00:1009:bacc::5"), "after SIGKILL"));

    // The suggested fix: a new pandad adopts it, and all is well again.
    let p = Pandad::relaunch(&ns, dir).ready();
    let (st, checks) = doctor(&ns, &cfg);
    assert_eq!(st.code(), Some(0), "after adoption: {checks:#?}");
    expect(&checks, "instance", "ok");
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
}

#[test]
fn foreign_conflicts_are_named() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("doc-conflict");
    let p = Pandad::start(&ns);
    // Things pandad neither owns nor repairs: an address of the prefix on
    // another interface, and another table's rules that drop loopback
    // traffic.
    ns.ip(&[
        "link", "add", "pdx0", "type", "veth", "peer", "name", "pdx1",
    ]);
    ns.ip(&["link", "set", "pdx0", "up"]);
    ns.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:1009:bacc:5::1/64",
        "dev",
        "pdx0",
        "nodad",
    ]);
    for cmd in [
        "add table inet foreign",
        "add chain inet foreign in { type filter hook input priority 0; policy accept; }",
        "add rule inet foreign in iifname lo drop",
        "add table ip6 strict",
        "add chain ip6 strict out { type filter hook output priority 0; policy drop; }",
    ] {
        ns.exec_ok("nft", &[cmd]);
    }
    let (st, checks) = doctor(&ns, &config_file(p.dir()));
    assert_eq!(st.code(), Some(1), "doctor with conflicts: {checks:#?}");
    let nft = expect(&checks, "conflict-nft", "fail");
    for want in [
        "inet foreign in",
        "handle",
        "ip6 strict out",
        "policy drop",
        "nft delete rule inet foreign in handle",
        "nft insert rule ip6 strict out oifname lo accept",
    ] {
        assert!(nft.contains(want), "conflict-nft lacks {want:?}: {nft}");
    }
    let addr = expect(&checks, "conflict-address", "fail");
    assert!(
        addr.contains("fd00:1009:bacc:5::1/64 on pdx0")
            && addr.contains("ip -6 addr del fd00:1009:bacc:5::1/64 dev pdx0"),
        "{addr}"
    );
    let route = expect(&checks, "conflict-route", "fail");
    assert!(route.contains("fd00:1009:bacc:5::/64"), "{route}");
    // pandad itself is fine: the problems are not its own.
    for name in ["daemon", "route", "table", "link-bind6"] {
        expect(&checks, name, "ok");
    }
}

#[test]
fn gc_removes_only_dead_namespaces() {
    if !require_privileged() {
        return;
    }
    // Two instances on one bpffs, as on a real host.
    let shared = TempDir::new();
    let bpffs = shared.path().join("bpffs");
    let start = |ns: &Netns| {
        let dir = TempDir::new();
        let text = config_with_bpffs(dir.path(), &bpffs);
        let p = Pandad::launch_raw(ns, dir, &text).ready();
        let pins = PathBuf::from(p.status()["pin_dir"].as_str().expect("status.pin_dir"));
        (p, pins)
    };
    let live_ns = Netns::new("gc-live");
    let (live, live_pins) = start(&live_ns);
    let dead_ns = Netns::new("gc-dead");
    let (dead, dead_pins) = start(&dead_ns);
    assert_ne!(live_pins, dead_pins);
    let dead_links = pinned_links(&dead_pins);
    assert!(
        dead_links.iter().any(|(n, _)| n == "bind6"),
        "{dead_links:?}"
    );
    let cfg = config_file(live.dir());

    // SIGKILL leaves the pins; deleting the namespace leaves them orphaned.
    let (_dead_dir, _, _) = dead.end_keep_dir(libc::SIGKILL);
    drop(dead_ns);
    let ids = loaded_link_ids();
    assert!(
        dead_links.iter().all(|(_, id)| ids.contains(id)),
        "the dead namespace's links should still be attached: {dead_links:?}"
    );

    let gc = |args: &[&str]| {
        run_ok(
            Command::new(PANDA)
                .arg("gc")
                .arg("--config")
                .arg(&cfg)
                .args(args),
        )
    };
    let dry = gc(&["--dry-run"]);
    assert!(
        dry.contains(&format!("would remove {}", dead_pins.display())),
        "{dry}"
    );
    assert!(
        dead_pins.is_dir(),
        "--dry-run removed {}",
        dead_pins.display()
    );

    let out = gc(&[]);
    assert!(
        out.contains(&format!("removed {}", dead_pins.display())),
        "{out}"
    );
    assert!(!out.contains(&live_pins.display().to_string()), "{out}");
    assert!(
        !dead_pins.exists(),
        "{} is still there",
        dead_pins.display()
    );
    // Unpinned, the links are released (the kernel does it from a work
    // queue, so wait for it, with a deadline).
    let gone = retry_until(Duration::from_secs(10), || {
        let ids = loaded_link_ids();
        dead_links
            .iter()
            .all(|(_, id)| !ids.contains(id))
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "links of the removed instance are still loaded: {dead_links:?}"
    );

    // The live namespace's instance is untouched and still works.
    assert!(live_pins.is_dir());
    let live_links = pinned_links(&live_pins);
    let ids = loaded_link_ids();
    assert!(
        !live_links.is_empty() && live_links.iter().all(|(_, id)| ids.contains(id)),
        "{live_links:?}"
    );
    live_ns.in_netns(|| assert_bind_ok(libc::SOCK_STREAM, a6("fd00:1009:bacc::5"), "after gc"));
    let again = gc(&[]);
    assert!(again.contains("nothing to remove"), "{again}");
    let (st, err) = live.stop();
    assert!(st.success(), "{st}: {err}");
}

#[test]
fn usage_errors_exit_2_and_help_explains_the_checks() {
    let cases: &[&[&str]] = &[
        &["doctor", "--bogus"],
        &["doctor", "--config", "/nonexistent/panda.toml"],
        &["gc", "--config", "/nonexistent/panda.toml"],
    ];
    for args in cases {
        let out = run(Command::new(PANDA).args(*args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "panda {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "panda {args:?}: {stderr}");
    }
    let bad = TempDir::new();
    let cfg = bad.path().join("bad.toml");
    std::fs::write(&cfg, "prefix = \"banana\"\n").unwrap();
    let out = run(Command::new(PANDA).arg("doctor").arg("--config").arg(&cfg));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("panda: ") && stderr.contains("prefix"),
        "{stderr}"
    );

    let help = run_ok(Command::new(PANDA).args(["doctor", "--help"]));
    for want in [
        "conflict-nft",
        "link-bind6",
        "stale-pins",
        "--json",
        "exit status",
    ] {
        assert!(help.contains(want), "doctor --help lacks {want:?}:\n{help}");
    }
    let help = run_ok(Command::new(PANDA).args(["gc", "--help"]));
    for want in ["--dry-run", "/run/netns", "cgroup2 root"] {
        assert!(help.contains(want), "gc --help lacks {want:?}:\n{help}");
    }
}
