//! Self-healing: while pandad runs, whatever removes or changes what it owns
//! (route, anchor, nftables table, sysctl, BPF links and their pins) is put
//! back, with one WARN line naming the repair and a count in `panda status`.
mod common;

use std::{path::PathBuf, time::Duration};

use common::*;

/// How long a repair may take here: the goal is well under 100 ms (measured
/// by `cargo xtask bench`); the deadline only has to outlast a slow
/// emulated kernel (the VM matrix runs these tests under TCG).
const REPAIR_DEADLINE: Duration = Duration::from_secs(10);

/// Tampers with `tamper`, waits until `restored` holds again, and checks the
/// WARN line and the status count for `kind`.
fn heals(
    tag: &str,
    kind: &str,
    tamper: impl FnOnce(&Netns, &Pandad),
    restored: impl Fn(&Netns, &Pandad) -> bool,
) {
    let ns = Netns::new(tag);
    let p = Pandad::start(&ns);
    assert!(restored(&ns, &p), "{kind}: not in place before tampering");
    tamper(&ns, &p);
    assert!(
        wait_until(REPAIR_DEADLINE, || restored(&ns, &p)),
        "{kind}: not repaired within {REPAIR_DEADLINE:?}; pandad stderr:\n{}",
        p.stderr_text()
    );
    assert!(
        wait_until(REPAIR_DEADLINE, || p
            .stderr_text()
            .contains(&format!("repaired {kind}: "))),
        "{kind}: no WARN line for the repair:\n{}",
        p.stderr_text()
    );
    // One tampering, one repair: pandad's own repair (which causes events
    // too) must not look like another tampering.
    let s = p.status();
    assert_eq!(
        s["repairs"][kind].as_u64(),
        Some(1),
        "{kind}: status should count exactly one repair: {s}\n{}",
        p.stderr_text()
    );
    // The subnet works after the repair.
    ns.in_netns(|| {
        assert_bind_ok(
            libc::SOCK_STREAM,
            a6("fd00:1009:bacc:42::1"),
            "after repair",
        )
    });
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
}

fn has_route(ns: &Netns) -> bool {
    ns.ip(&["-6", "route", "show", "table", "local"])
        .lines()
        .any(|l| {
            l.starts_with(&format!("local {PREFIX} dev lo")) && l.contains("src fd00:1009:bacc::1")
        })
}

fn has_anchor(ns: &Netns) -> bool {
    ns.ip(&["-6", "addr", "show", "dev", "lo"])
        .contains("inet6 fd00:1009:bacc::1/128")
}

/// The number of panda's rules in its table (0 when there is no table).
fn table_rules(ns: &Netns) -> usize {
    let out = ns.exec("nft", &["list", "table", "inet", "panda"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" drop comment \"panda: "))
        .count()
}

fn pin_dir(p: &Pandad) -> PathBuf {
    PathBuf::from(p.status()["pin_dir"].as_str().expect("pin_dir"))
}

#[test]
fn route_removed_is_restored() {
    if !require_privileged() {
        return;
    }
    heals(
        "hl-route",
        "route",
        |ns, _| {
            ns.ip(&[
                "-6", "route", "del", "local", PREFIX, "dev", "lo", "table", "local",
            ]);
        },
        |ns, _| has_route(ns),
    );
}

#[test]
fn anchor_removed_is_restored_with_the_route_source() {
    if !require_privileged() {
        return;
    }
    // Removing the anchor also strips the route of its source: both must
    // come back.
    heals(
        "hl-anchor",
        "anchor",
        |ns, _| {
            ns.ip(&["-6", "addr", "del", "fd00:1009:bacc::1/128", "dev", "lo"]);
        },
        |ns, _| has_anchor(ns) && has_route(ns),
    );
}

#[test]
fn flushed_ruleset_is_restored() {
    if !require_privileged() {
        return;
    }
    heals(
        "hl-flush",
        "table",
        |ns, _| {
            ns.exec_ok("nft", &["flush", "ruleset"]);
        },
        |ns, _| table_rules(ns) == 7,
    );
}

#[test]
fn deleted_rule_is_restored() {
    if !require_privileged() {
        return;
    }
    heals(
        "hl-rule",
        "table",
        |ns, _| {
            let listing = ns.exec_ok("nft", &["-a", "list", "chain", "inet", "panda", "input"]);
            let handle = listing
                .lines()
                .find(|l| l.contains(" drop comment ") && l.contains("# handle "))
                .and_then(|l| l.rsplit("# handle ").next())
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|| panic!("no rule handle in:\n{listing}"));
            // (pandad may have put it back before this returns.)
            ns.exec_ok(
                "nft",
                &[
                    "delete", "rule", "inet", "panda", "input", "handle", &handle,
                ],
            );
        },
        |ns, _| table_rules(ns) == 7,
    );
}

#[test]
fn reset_sysctl_is_restored_in_guard_mode() {
    if !require_privileged() {
        return;
    }
    if expected_mechanism().as_deref() == Some("freebind") {
        eprintln!("freebind mode owns no sysctl; nothing to test");
        return;
    }
    heals(
        "hl-sysctl",
        "sysctl",
        |ns, p| {
            assert_eq!(mechanism(&p.status()), "guard");
            ns.set_sysctl("net.ipv6.ip_nonlocal_bind", "0");
        },
        |ns, _| ns.sysctl("net.ipv6.ip_nonlocal_bind") == "1",
    );
}

/// The bind6 link runs (attached) and is pinned: a prefix bind works and,
/// in guard mode, a bind outside the prefix is refused.
fn bind6_in_force(ns: &Netns, p: &Pandad) -> bool {
    let links = instance_links(&pin_dir(p));
    let pinned = panda::pins::Link::open_pinned(&pin_dir(p).join("bind6"))
        .ok()
        .flatten()
        .and_then(|l| l.info().ok());
    let attached = pinned.is_some_and(|i| i.cgroup_id != 0)
        && links
            .iter()
            .any(|l| Some(l.link_id) == pinned.map(|i| i.id));
    attached
        && ns.in_netns(|| {
            try_bind(libc::SOCK_STREAM, None, a6("fd00:1009:bacc:43::1")).is_ok()
                && try_bind(libc::SOCK_DGRAM, None, a6("2001:db8::43")).is_err()
        })
}

#[test]
fn detached_link_is_reattached() {
    if !require_privileged() {
        return;
    }
    heals(
        "hl-detach",
        "link_bind6",
        |_, p| detach_pinned_link(&pin_dir(p).join("bind6")),
        bind6_in_force,
    );
}

#[test]
fn removed_pin_is_restored() {
    if !require_privileged() {
        return;
    }
    heals(
        "hl-unpin",
        "link_bind6",
        |_, p| std::fs::remove_file(pin_dir(p).join("bind6")).expect("unpin"),
        bind6_in_force,
    );
}
