//! Restart, crash and hand-over: a pandad that ends without a real stop must
//! leave everything in force, the next one must adopt it without a single
//! failed bind and without duplicating anything, and a real stop must still
//! leave the namespace as it was.
mod common;

use std::{
    net::Ipv6Addr,
    os::unix::process::ExitStatusExt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use common::*;

/// What a client binding one random prefix address every millisecond saw.
#[derive(Debug, Default)]
struct BindLog {
    prefix_ok: AtomicU64,
    prefix_failed: AtomicU64,
    /// Binds outside the prefix that succeeded: the guard's strictness lost.
    outside_ok: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

/// Binds a random prefix address (must work) and an unconfigured address
/// outside the prefix (must fail) every millisecond until `stop`.
fn binder(ns: &Netns, stop: Arc<AtomicBool>, log: Arc<BindLog>) -> thread::JoinHandle<()> {
    ns.spawn_in(move || {
        let mut rng = rand::rng();
        let outside: Ipv6Addr = a6("2001:db8::77");
        while !stop.load(Ordering::SeqCst) {
            let addr = random_prefix_addr(&mut rng);
            match try_bind(libc::SOCK_STREAM, None, addr) {
                Ok(_) => log.prefix_ok.fetch_add(1, Ordering::SeqCst),
                Err(e) => {
                    log.first_error
                        .lock()
                        .unwrap()
                        .get_or_insert_with(|| format!("bind [{addr}]: {}", errname(e)));
                    log.prefix_failed.fetch_add(1, Ordering::SeqCst)
                }
            };
            if try_bind(libc::SOCK_DGRAM, None, outside).is_ok() {
                log.outside_ok.fetch_add(1, Ordering::SeqCst);
            }
            // The pace the issue asks for; nothing waits on it.
            thread::sleep(Duration::from_millis(1));
        }
    })
}

/// The links of the instance whose status is `status`.
fn links_of(status: &serde_json::Value) -> Vec<InstanceLink> {
    let dir = status["pin_dir"].as_str().expect("status has pin_dir");
    instance_links(std::path::Path::new(dir))
}

/// SIGKILL restarts per run: 20, as the issue asks; the VM matrix
/// (`cargo xtask vm-test`, emulated CPUs) sets 0 (see xtask/src/vm/mod.rs):
/// the binder then runs against one instance only.
fn restart_rounds() -> usize {
    std::env::var("PANDA_RESTART_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[test]
fn sigkill_and_restart_20_times_never_fails_a_bind() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("rs-kill");
    let before = ns.snapshot();
    let first = Pandad::start(&ns);
    let status = first.status();
    let links = links_of(&status);
    let table = ns.exec_ok("nft", &["list", "table", "inet", "panda"]);
    let routes = ns.ip(&["-6", "route", "show", "table", "all"]);
    assert!(
        links.iter().any(|l| l.prog == "bind6"),
        "no bind6 link: {links:?}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(BindLog::default());
    let client = binder(&ns, stop.clone(), log.clone());
    // Let the client run against the first instance before the first kill.
    assert!(wait_until(DAEMON_DEADLINE, || log
        .prefix_ok
        .load(Ordering::SeqCst)
        >= 20));

    let mut p = first;
    let mut prog_ids = vec![links.clone()];
    let rounds = restart_rounds();
    for round in 1..=rounds {
        let (dir, st, _) = p.end_keep_dir(libc::SIGKILL);
        assert_eq!(st.signal(), Some(libc::SIGKILL), "round {round}");
        let seen = log.prefix_ok.load(Ordering::SeqCst);
        p = Pandad::relaunch(&ns, dir).ready();
        let s = p.status();
        assert_eq!(s["adopted"], true, "round {round}: not adopted: {s}");
        prog_ids.push(links_of(&s));
        // Keep binding a while against each instance.
        assert!(wait_until(DAEMON_DEADLINE, || log
            .prefix_ok
            .load(Ordering::SeqCst)
            >= seen + 10));
    }
    stop.store(true, Ordering::SeqCst);
    client.join().expect("binder thread");

    let ok = log.prefix_ok.load(Ordering::SeqCst);
    let failed = log.prefix_failed.load(Ordering::SeqCst);
    assert_eq!(
        failed,
        0,
        "{failed} of {} prefix binds failed across {rounds} SIGKILL restarts; first: {:?}\npandad stderr:\n{}",
        ok + failed,
        log.first_error.lock().unwrap(),
        p.stderr_text()
    );
    assert_eq!(
        log.outside_ok.load(Ordering::SeqCst),
        0,
        "a bind outside the prefix succeeded during the restarts"
    );
    assert!(
        ok >= 10 * rounds as u64,
        "only {ok} binds: the client did not run"
    );

    // Nothing duplicated: the same cgroup links (adopted in place, each
    // with the program of the instance of its round), one LSM link where
    // there is one (a tracing link cannot be updated: each instance
    // replaces it), the same rules, the same routes.
    let last = links_of(&p.status());
    let cgroup_ids = |l: &[InstanceLink]| {
        l.iter()
            .filter(|l| l.prog != "socket_bind")
            .map(|l| (l.prog.clone(), l.link_id))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cgroup_ids(&last),
        cgroup_ids(&links),
        "cgroup links were re-created or duplicated"
    );
    for prog in ["bind6", "sendmsg6", "socket_bind"] {
        let n = last.iter().filter(|l| l.prog == prog).count();
        assert!(n <= 1, "{n} {prog} links after the restarts: {last:?}");
    }
    let mut progs: Vec<u32> = prog_ids
        .iter()
        .flat_map(|l| l.iter().filter(|l| l.prog == "bind6").map(|l| l.prog_id))
        .collect();
    progs.dedup();
    assert_eq!(
        progs.len(),
        rounds + 1,
        "each instance swaps its own program in: {progs:?}"
    );
    assert_eq!(
        ns.exec_ok("nft", &["list", "table", "inet", "panda"]),
        table,
        "the nftables table changed across restarts"
    );
    assert_eq!(
        ns.ip(&["-6", "route", "show", "table", "all"]),
        routes,
        "routes changed across restarts"
    );

    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
    assert_same(&before, &ns.snapshot(), "after the restarts and a stop");
}

#[test]
fn handover_keeps_everything_and_a_stop_after_it_cleans_up() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("rs-usr2");
    let before = ns.snapshot();
    let p = Pandad::start(&ns);
    let s = p.status();
    let pin_dir = std::path::PathBuf::from(s["pin_dir"].as_str().unwrap());
    let links = instance_links(&pin_dir);
    // Count something, to see the counters survive.
    ns.in_netns(|| assert_bind_ok(libc::SOCK_STREAM, a6("fd00:1009:bacc::77"), "prefix"));
    let counted = p.counter("bind_prefix");
    assert!(counted >= 1);

    let (dir, st, err) = p.end_keep_dir(libc::SIGUSR2);
    assert!(st.success(), "a hand-over exits 0: {st}\n{err}");
    assert!(err.contains("handing over"), "{err}");
    // Everything is still in force with no pandad at all.
    assert_eq!(instance_links(&pin_dir), links, "links after the hand-over");
    ns.in_netns(|| {
        assert_bind_ok(
            libc::SOCK_STREAM,
            a6("fd00:1009:bacc:5::1"),
            "prefix, no pandad",
        );
        if ns_mechanism_is_guard(&s) {
            assert_bind_refused(libc::SOCK_STREAM, a6("2001:db8::5"), "outside, no pandad");
        }
    });

    let p = Pandad::relaunch(&ns, dir).ready();
    let s2 = p.status();
    assert_eq!(s2["adopted"], true, "{s2}");
    assert!(
        p.counter("bind_prefix") > counted,
        "counters are kept across a restart: {s2}"
    );
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
    assert!(!pin_dir.exists(), "a stop removes the pins");
    assert_same(&before, &ns.snapshot(), "after hand-over and stop");
}

fn ns_mechanism_is_guard(status: &serde_json::Value) -> bool {
    mechanism(status) == "guard"
}

/// A `systemctl` that answers `list-jobs` with a job of type `job` on
/// whatever unit it is asked about, as systemd does while restarting
/// (`restart`) or stopping (`stop`) the unit.
fn fake_systemctl(dir: &std::path::Path, job: &str) -> std::path::PathBuf {
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("systemctl");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# argv: list-jobs --no-legend --no-pager --full UNIT\n\
             for u; do :; done\necho \"4242 $u {job} running\"\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Runs pandad as a systemd service would be (INVOCATION_ID, a `.service`
/// cgroup) with a `systemctl` that reports `job`, sends SIGTERM, and
/// returns the directory and stderr.
fn sigterm_under_systemd(ns: &Netns, job: &str) -> (TempDir, String) {
    let dir = TempDir::new();
    let cfg = dir.path().join("pandad.toml");
    std::fs::write(&cfg, base_config(dir.path())).unwrap();
    let bin = fake_systemctl(dir.path(), job);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let unit = ChildCgroup::service("rs-sd");
    let p = Pandad::launch_args_env(
        ns,
        dir,
        &["--config", cfg.to_str().unwrap()],
        &[("PATH", path), ("INVOCATION_ID", "0123456789abcdef".into())],
    )
    .ready();
    unit.adopt(p.pid());
    let (dir, st, err) = p.end_keep_dir(libc::SIGTERM);
    assert!(st.success(), "{st}: {err}");
    (dir, err)
}

#[test]
fn systemd_restart_hands_over_and_systemd_stop_tears_down() {
    if !require_privileged() {
        return;
    }
    let ns = Netns::new("rs-sd");
    let before = ns.snapshot();

    let (dir, err) = sigterm_under_systemd(&ns, "restart");
    assert!(
        err.contains("systemd is restarting") && err.contains(".service; handing over"),
        "SIGTERM during a restart job must hand over:\n{err}"
    );
    assert_ne!(
        before,
        ns.snapshot(),
        "a hand-over leaves the subnet in force"
    );
    ns.in_netns(|| {
        assert_bind_ok(
            libc::SOCK_STREAM,
            a6("fd00:1009:bacc::9"),
            "after restart's stop half",
        )
    });
    // The start half of the restart adopts, then a stop job ends it all.
    let p = Pandad::relaunch(&ns, dir).ready();
    assert_eq!(p.status()["adopted"], true);
    let (st, err) = p.stop();
    assert!(st.success(), "{st}: {err}");
    assert_same(&before, &ns.snapshot(), "after restart + stop");

    let (_dir, err) = sigterm_under_systemd(&ns, "stop");
    assert!(
        err.contains("systemd is stopping") && err.contains("torn down"),
        "SIGTERM during a stop job must tear down:\n{err}"
    );
    assert_same(&before, &ns.snapshot(), "after a systemd stop");
}
