//! Leases: one loopback address per workload (cgroup), enforced by bind6.
//! Binds are made by real processes in real cgroups ([`binds_in_cgroup`]),
//! since bind6 judges the binding task's cgroup.
mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    net::Ipv6Addr,
    os::unix::net::UnixStream,
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use common::*;
use serde_json::Value;

const EACCES: i32 = libc::EACCES;
const DEADLINE: Duration = Duration::from_secs(20);

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// `panda ARGS` must succeed; its stdout.
fn panda_ok(p: &Pandad, args: &[&str]) -> String {
    let out = p.panda(args);
    assert!(
        out.status.success(),
        "panda {args:?} failed ({}): {}\npandad:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        p.stderr_text()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `panda leases --json`, parsed.
fn leases(p: &Pandad) -> Vec<Value> {
    serde_json::from_str::<Value>(&panda_ok(p, &["leases", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The lease table as (address, cgroup) pairs.
fn table(p: &Pandad) -> BTreeSet<(String, String)> {
    leases(p)
        .iter()
        .map(|l| {
            (
                l["addr"].as_str().unwrap().to_owned(),
                l["cgroup"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A cgroup's name as leases report it (relative to the cgroup2 root).
fn rel(cg: &Path) -> String {
    format!("/{}", cg.strip_prefix(cgroup2_root()).unwrap().display())
}

/// Leases addresses to `cg`; the addresses printed.
fn lease(p: &Pandad, cg: &Path, extra: &[&str]) -> Vec<Ipv6Addr> {
    let mut args = vec!["lease", "--cgroup", cg.to_str().unwrap()];
    args.extend_from_slice(extra);
    panda_ok(p, &args)
        .lines()
        .map(|l| l.parse().unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// The errno of one TCP bind of `addr:port` by a process in `cg`.
fn bind_errno(ns: &Netns, cg: &Path, addr: Ipv6Addr, port: u16) -> i32 {
    ns.in_netns(|| binds_in_cgroup(cg, &[(addr, port)]).0[0])
}

#[test]
fn two_exec_workloads_share_port_8080_and_keep_their_addresses() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("ls-exec");
    let execs = ChildCgroup::new("ls-exec");
    let p = Pandad::start_with(
        &ns,
        &format!("exec_cgroup = \"{}\"\n", execs.path().display()),
    );
    let dir = TempDir::new();
    // Each workload writes the PANDA_ADDR it was given, then waits.
    let spawn = |name: &str| -> Child {
        let file = dir.path().join(name);
        ns.cmd(PANDA)
            .args(["--socket", p.socket().to_str().unwrap(), "exec", "--"])
            .args([
                "sh",
                "-c",
                &format!(
                    "echo \"$PANDA_ADDR\" > {}.tmp && mv {0}.tmp {0} && exec sleep 600",
                    file.display()
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn panda exec")
    };
    let mut w1 = spawn("w1");
    let mut w2 = spawn("w2");
    let addr_of = |name: &str| -> Ipv6Addr {
        let f = dir.path().join(name);
        assert!(
            wait_until(DEADLINE, || f.exists()),
            "workload {name} never started:\n{}",
            p.stderr_text()
        );
        std::fs::read_to_string(&f).unwrap().trim().parse().unwrap()
    };
    let (a1, a2) = (addr_of("w1"), addr_of("w2"));
    assert_ne!(a1, a2);
    let t = leases(&p);
    assert_eq!(t.len(), 2, "{t:?}");
    let cg_of = |addr: Ipv6Addr| -> std::path::PathBuf {
        let l = t
            .iter()
            .find(|l| l["addr"] == addr.to_string())
            .unwrap_or_else(|| panic!("{addr} not in {t:?}"));
        assert!(l["exec"]["pid"].as_u64().is_some(), "{l}");
        cgroup2_root().join(l["cgroup"].as_str().unwrap().trim_start_matches('/'))
    };
    let (cg1, cg2) = (cg_of(a1), cg_of(a2));
    assert!(cg1.starts_with(execs.path()) && cg2.starts_with(execs.path()));

    // Both listen on :8080 at once, each on its own address; neither can
    // take the other's.
    let (e1, l1) = ns.in_netns(|| binds_in_cgroup(&cg1, &[(a1, 8080), (a2, 8081)]));
    let (e2, l2) = ns.in_netns(|| binds_in_cgroup(&cg2, &[(a2, 8080), (a1, 8081)]));
    assert_eq!(e1, vec![0, EACCES], "workload 1: own, other's");
    assert_eq!(e2, vec![0, EACCES], "workload 2: own, other's");
    // A third process can bind neither, but may bind an unleased address.
    let third = ChildCgroup::new("ls-third");
    let (e3, _l3) = ns.in_netns(|| {
        binds_in_cgroup(
            third.path(),
            &[(a1, 8082), (a2, 8082), (a("fd00:1009:bacc:77::1"), 8080)],
        )
    });
    assert_eq!(e3, vec![EACCES, EACCES, 0], "third: a1, a2, unleased");
    assert_eq!(p.counter("lease_denied"), 4);

    // A signal reaches the command; panda exits with its status and
    // removes the cgroup (with the listener left in it) and the lease.
    unsafe { libc::kill(w1.id() as i32, libc::SIGTERM) };
    let st = w1.wait().unwrap();
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "panda exec's status");
    drop(l1); // already killed with its cgroup: reaped here
    assert!(!cg1.exists(), "{} was not removed", cg1.display());
    assert_eq!(table(&p), BTreeSet::from([(a2.to_string(), rel(&cg2))]));
    assert_eq!(
        bind_errno(&ns, third.path(), a1, 8080),
        0,
        "a1 is free again"
    );

    // A killed panda exec: its lease is collected once the cgroup empties.
    unsafe { libc::kill(w2.id() as i32, libc::SIGKILL) };
    w2.wait().unwrap();
    drop(l2);
    assert_eq!(
        leases(&p).len(),
        1,
        "the command still runs: the lease stays"
    );
    for pid in std::fs::read_to_string(cg2.join("cgroup.procs"))
        .unwrap()
        .lines()
    {
        unsafe { libc::kill(pid.parse().unwrap(), libc::SIGKILL) };
    }
    assert!(
        wait_until(DEADLINE, || leases(&p).is_empty() && !cg2.exists()),
        "the orphaned exec lease was not collected: {:?}",
        leases(&p)
    );
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
}

#[test]
fn exec_reports_the_commands_status_and_environment() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("ls-exst");
    let execs = ChildCgroup::new("ls-exst");
    let p = Pandad::start_with(
        &ns,
        &format!("exec_cgroup = \"{}\"\n", execs.path().display()),
    );
    let out = run(ns
        .cmd(PANDA)
        .args(["--socket", p.socket().to_str().unwrap(), "exec", "--addr"])
        .args([
            "fd00:1009:bacc::8080",
            "--",
            "sh",
            "-c",
            "echo $PANDA_ADDR; exit 7",
        ]));
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "fd00:1009:bacc::8080"
    );
    // `$PANDA_ADDR` in an argument is panda's to replace, no shell needed.
    let out = run(ns
        .cmd(PANDA)
        .args(["--socket", p.socket().to_str().unwrap(), "exec", "--"])
        .args(["echo", "[$PANDA_ADDR]:8080", "${PANDA_ADDR}"]));
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (left, right) = printed.split_once(' ').unwrap();
    assert_eq!(left, format!("[{right}]:8080"), "{printed}");
    assert!(right
        .parse::<Ipv6Addr>()
        .is_ok_and(|a| a.segments()[..3] == [0xfd00, 0x1009, 0xbacc]));
    let out = run(ns
        .cmd(PANDA)
        .args(["--socket", p.socket().to_str().unwrap(), "exec", "--"])
        .arg("/nonexistent/cmd"));
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(leases(&p).is_empty(), "{:?}", leases(&p));
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
}

#[test]
fn descendants_at_any_depth_inherit_the_lease() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("ls-deep");
    let p = Pandad::start(&ns);
    let holder = ChildCgroup::new("ls-deep");
    let other = ChildCgroup::new("ls-other");
    let mut deep = holder.path().to_owned();
    let mut made = Vec::new();
    for i in 0..6 {
        deep = deep.join(format!("l{i}"));
        std::fs::create_dir(&deep).unwrap();
        made.push(deep.clone());
    }
    let x = a("fd00:1009:bacc:1::10");
    assert_eq!(
        lease(&p, holder.path(), &["--addr", &x.to_string()]),
        vec![x]
    );
    let (e, _k) =
        ns.in_netns(|| binds_in_cgroup(&deep, &[(x, 9000), (a("fd00:1009:bacc:1::11"), 9000)]));
    assert_eq!(
        e,
        vec![0, EACCES],
        "6 levels down: own lease, unleased address"
    );
    drop(_k);
    assert_eq!(
        bind_errno(&ns, other.path(), x, 9000),
        EACCES,
        "another cgroup"
    );
    // Released, the address is anybody's again.
    assert_eq!(
        panda_ok(&p, &["release", "--addr", &x.to_string()]).trim(),
        x.to_string()
    );
    assert_eq!(bind_errno(&ns, other.path(), x, 9000), 0);
    for d in made.iter().rev() {
        std::fs::remove_dir(d).unwrap();
    }
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
}

#[test]
fn leased_only_mode_closes_the_rest_of_the_prefix() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("ls-only");
    let p = Pandad::start_with(&ns, "lease_mode = \"leased-only\"\n");
    let holder = ChildCgroup::new("ls-only");
    let other = ChildCgroup::new("ls-only-o");
    let y = a("fd00:1009:bacc::99");
    assert_eq!(
        bind_errno(&ns, other.path(), y, 80),
        EACCES,
        "before any lease"
    );
    let got = lease(&p, holder.path(), &["--count", "2"]);
    assert_eq!(got.len(), 2);
    let (e, _k) =
        ns.in_netns(|| binds_in_cgroup(holder.path(), &[(got[0], 80), (got[1], 80), (y, 80)]));
    assert_eq!(e, vec![0, 0, EACCES]);
    assert_eq!(
        bind_errno(&ns, other.path(), y, 80),
        EACCES,
        "unleased, outside"
    );
    assert_eq!(
        bind_errno(&ns, other.path(), got[0], 81),
        EACCES,
        "someone else's"
    );
    // Outside the prefix nothing changes.
    assert_eq!(bind_errno(&ns, other.path(), Ipv6Addr::UNSPECIFIED, 0), 0);
    drop(_k);
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
}

/// One raw API request (what `panda lease` sends), for the concurrency test.
fn api(socket: &Path, req: &Value) -> Value {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn a_thousand_concurrent_leases_are_all_unique() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("ls-1000");
    let p = Pandad::start(&ns);
    let cgs: Vec<ChildCgroup> = (0..10)
        .map(|i| ChildCgroup::new(&format!("ls-k{i}")))
        .collect();
    let socket = p.socket().to_owned();
    let got: Vec<Ipv6Addr> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|t| {
                let (socket, cg) = (&socket, cgs[t % 10].path().to_owned());
                s.spawn(move || {
                    (0..10)
                        .map(|_| {
                            let v = api(
                                socket,
                                &serde_json::json!({"op": "lease", "cgroup": cg.to_str()}),
                            );
                            assert!(v.get("error").is_none(), "{v}");
                            v["addrs"][0].as_str().unwrap().parse().unwrap()
                        })
                        .collect::<Vec<Ipv6Addr>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let unique: BTreeSet<Ipv6Addr> = got.iter().copied().collect();
    assert_eq!(got.len(), 1000);
    assert_eq!(unique.len(), 1000, "an address was handed out twice");
    let t = table(&p);
    assert_eq!(t.len(), 1000);
    assert_eq!(p.status()["leases"], 1000, "status counts the leases");
    let prefix_anchor = a("fd00:1009:bacc::1");
    assert!(!unique.contains(&prefix_anchor), "the anchor was leased");
    for cg in &cgs {
        assert_eq!(t.iter().filter(|(_, c)| *c == rel(cg.path())).count(), 100);
    }
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
}

#[test]
fn sigkill_between_requests_loses_nothing_and_collects_the_vanished() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("ls-kill");
    let mut p = Pandad::start(&ns);
    let keep = ChildCgroup::new("ls-keep");
    let outsider = ChildCgroup::new("ls-out");
    let doomed = cgroup2_root().join(format!("panda-lease-doomed-{}", std::process::id()));
    std::fs::create_dir(&doomed).unwrap();
    let mut want = BTreeSet::new();
    for round in 0..5 {
        for addr in lease(&p, keep.path(), &["--count", "3"]) {
            assert!(
                want.insert((addr.to_string(), rel(keep.path()))),
                "{addr} twice"
            );
        }
        if round == 2 {
            lease(&p, &doomed, &["--count", "2"]);
        }
        let (dir, st, _) = p.end_keep_dir(libc::SIGKILL);
        assert!(!st.success());
        if round == 2 {
            // The cgroup goes while no pandad runs.
            std::fs::remove_dir(&doomed).unwrap();
        }
        p = Pandad::relaunch(&ns, dir).ready();
        assert_eq!(table(&p), want, "after restart {round}");
    }
    // Still enforced after the restarts.
    let first: Ipv6Addr = want.iter().next().unwrap().0.parse().unwrap();
    assert_eq!(bind_errno(&ns, outsider.path(), first, 7000), EACCES);
    assert_eq!(bind_errno(&ns, keep.path(), first, 7000), 0);
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("ls-bad");
    let p = Pandad::start(&ns);
    let holder = ChildCgroup::new("ls-bad");
    let other = ChildCgroup::new("ls-bad-o");
    let cg = holder.path().to_str().unwrap();
    lease(&p, holder.path(), &["--addr", "fd00:1009:bacc::5"]);
    let before = table(&p);
    for (args, needle) in [
        (
            vec!["lease", "--cgroup", cg, "--addr", "fd00:1::5"],
            "outside the prefix",
        ),
        (
            vec!["lease", "--cgroup", "/no/such/cgroup", "--count", "1"],
            "does not exist",
        ),
        (vec!["lease", "--cgroup", cg, "--count", "0"], "count of 0"),
        (
            vec!["lease", "--cgroup", cg, "--count", "1000000"],
            "too many",
        ),
        (
            vec!["lease", "--cgroup", cg, "--addr", "fd00:1009:bacc::1"],
            "anchor",
        ),
        (
            vec!["lease", "--cgroup", "/", "--count", "1"],
            "root cannot hold",
        ),
        (
            vec![
                "lease",
                "--cgroup",
                other.path().to_str().unwrap(),
                "--addr",
                "fd00:1009:bacc::5",
            ],
            "is leased to cgroup",
        ),
        (
            vec![
                "lease",
                "--cgroup",
                cg,
                "--addr",
                "fd00:1009:bacc::6",
                "--addr",
                "fd00:1009:bacc::6",
            ],
            "given twice",
        ),
        (
            vec!["release", "--addr", "fd00:1009:bacc::7"],
            "is not leased",
        ),
        (
            vec!["lease", "--cgroup", cg, "--addr", "nonsense"],
            "invalid value",
        ),
        (
            vec![
                "lease",
                "--cgroup",
                cg,
                "--addr",
                "fd00:1009:bacc::6",
                "--count",
                "2",
            ],
            "cannot be used with",
        ),
    ] {
        let out = p.panda(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );
        assert_eq!(table(&p), before, "{args:?} changed the leases");
    }
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
}

#[test]
fn unit_leases_follow_the_units_cgroup() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("ls-unit");
    let unit = ChildCgroup::service("ls-unit");
    let other = ChildCgroup::new("ls-unit-o");
    let name = unit
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    // A `systemctl show -p ControlGroup --value -- UNIT` that knows one
    // running unit, as systemd reports it.
    let dir = TempDir::new();
    let bin = dir.path().join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("systemctl");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor u; do :; done\n[ \"$u\" = {name} ] && [ -d {path} ] && echo {rel}\nexit 0\n",
            path = unit.path().display(),
            rel = rel(unit.path())
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.path().join("pandad.toml");
    std::fs::write(&cfg, base_config(dir.path())).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let p = Pandad::launch_args_env(
        &ns,
        dir,
        &["--config", cfg.to_str().unwrap()],
        &[("PATH", path)],
    )
    .ready();

    let got = panda_ok(&p, &["lease", "--unit", &name]);
    let addr: Ipv6Addr = got.trim().parse().unwrap();
    assert_eq!(
        table(&p),
        BTreeSet::from([(addr.to_string(), rel(unit.path()))])
    );
    assert_eq!(
        bind_errno(&ns, unit.path(), addr, 443),
        0,
        "the unit binds its address"
    );
    assert_eq!(
        bind_errno(&ns, other.path(), addr, 443),
        EACCES,
        "nobody else does"
    );
    let out = p.panda(&["lease", "--unit", "nosuch.service"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nosuch.service has no cgroup"),
        "{out:?}"
    );
    // The unit stops: its cgroup goes, and the lease with it.
    drop(unit);
    assert!(
        wait_until(DEADLINE, || leases(&p).is_empty()),
        "the stopped unit's lease was not collected: {:?}",
        leases(&p)
    );
    assert_eq!(bind_errno(&ns, other.path(), addr, 443), 0);
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
}
