//! pandad's life: check everything that can be checked before touching the
//! kernel, make the changes in an order that never opens a hole, serve until
//! told to stop, and undo exactly what was done, in reverse.
//!
//! Order of set-up, and why:
//! 1. config, cgroup, netns cookie, BPF load, probes: no kernel state changed
//!    yet, so a refusal (bad cgroup, freebind unsupported) leaves no trace;
//! 2. state record (crash safety), anchor address + local route (netlink);
//! 3. nftables table: the prefix is sealed on `lo` before anything binds it;
//! 4. bind6/sendmsg6 (and the LSM guard), and only then
//!    `ip_nonlocal_bind=1`: there is never a moment with the sysctl at 1 and
//!    no guard in place. Teardown restores the sysctl first for the same
//!    reason.
//!
//! The BPF links are pinned ([`crate::pins`]), so they outlive the process.
//! How pandad ends decides what happens to everything it set up:
//!
//! | how it ends | what it leaves | the next pandad |
//! |---|---|---|
//! | SIGTERM/SIGINT (a stop) | nothing: full teardown, in reverse | starts afresh |
//! | SIGTERM during `systemctl restart`, or SIGUSR2 (a hand-over) | everything in force, record kept | adopts it all: no bind fails in between |
//! | a crash, SIGKILL | the same as a hand-over | the same |
//!
//! A new pandad that finds a predecessor's record adopts its pinned links by
//! swapping its own programs into them (`BPF_LINK_UPDATE`), re-installs the
//! nftables table atomically and re-uses the route and anchor, so nothing is
//! duplicated and no hook is ever missing.
use std::{
    fs::File,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    api::{self, Hookless, Status, StatusSource},
    bpf::{Bpf, Installed, LSM_PROGRAM},
    btf, cgroup,
    config::{Config, MechanismChoice},
    firewall, leases,
    netlink::Netlink,
    pins::{PinDir, LINK_PINS},
    probe,
    reconcile::{Reconciler, Repairs},
    state::{Record, StateFile},
    sysctl, systemd,
};

/// The mechanism in force, after probing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// bind6 sets IPV6_FREEBIND on prefix binds; the sysctl stays 0.
    Freebind,
    /// ip_nonlocal_bind=1 in the netns; BPF keeps binds elsewhere strict.
    Guard,
}

impl Mechanism {
    /// The name `panda status` reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mechanism::Freebind => "freebind",
            Mechanism::Guard => "guard",
        }
    }
}

/// Everything this instance changed, so that teardown undoes exactly that.
pub(crate) struct Applied {
    pub(crate) state: StateFile,
    pub(crate) record: Record,
    table: bool,
}

/// How pandad leaves: see the table at the top of this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    /// Undo everything.
    Teardown,
    /// Leave everything in force for the next pandad.
    Handover,
}

/// What start-up decided before changing anything.
struct Plan {
    mechanism: Mechanism,
    /// The LSM guard for raw/ping binds is usable (guard mode only).
    lsm: bool,
    netns_cookie: u64,
    /// The cgroup2 mount point, and the cgroup the hooks attach to.
    cgroup_root: PathBuf,
    cgroup: PathBuf,
    /// Where this instance pins its links.
    pins: PinDir,
}

/// Runs pandad until a signal; returns after a complete teardown (a stop)
/// or with everything left in force (a hand-over; see the module's table).
pub async fn run(config: Config) -> Result<()> {
    // From here on SIGTERM/SIGINT no longer kill the process: a signal that
    // arrives during set-up is seen once set-up is done, and undone cleanly.
    let mut signals = Signals::install()?;

    // --- 1. Decide everything before changing anything. ---
    let state = StateFile::new(&config.state_dir);
    let previous = state.take_over()?;
    if let Some(p) = &previous {
        warn!(
            "found the record of an instance that stopped without cleaning up (pid {}); taking over its changes",
            p.pid
        );
    } else if firewall::exists(&config.table)? {
        bail!(
            "nftables table inet {} already exists in this network namespace and no state \
             record in {} says it is ours: another pandad is running here (or one ran with a \
             different state_dir). Stop it, or set `table` and `state_dir` for this instance",
            config.table,
            config.state_dir.display()
        );
    }
    // Bound before any change: a socket in use is a refusal that leaves no trace.
    let server = api::Server::bind(&config.socket, config.socket_group.as_deref()).await?;
    let netns_cookie = probe::netns_cookie()?;
    let pins = PinDir::for_instance(&config.bpffs, netns_cookie, &config.table);
    // A predecessor's pinned counters carry on counting.
    let mut bpf = Bpf::load(previous.is_some().then_some(&pins))?;
    let plan = decide(&config, &mut bpf, netns_cookie, pins)?;
    // Leases go into the maps before any program is attached or swapped in.
    let lease_service = leases::Service::open(
        &config.state_dir,
        leases::Cgroups {
            root: plan.cgroup_root.clone(),
            attach: plan.cgroup.clone(),
            exec_parent: config
                .exec_cgroup
                .clone()
                .unwrap_or_else(|| plan.cgroup.join("panda.exec")),
        },
        config.prefix,
        &mut bpf,
    )?;
    let nl = Netlink::connect().await?;
    if !nl.lo_is_up().await? {
        bail!("`lo` is down in this network namespace; bring it up first: ip link set lo up");
    }

    // --- 2..4. Change the kernel, recording each change first. ---
    let mut applied = Applied {
        record: previous.unwrap_or_default(),
        state,
        table: false,
    };
    applied.record.pid = std::process::id();
    let bpf = Arc::new(Mutex::new(bpf));
    let adopted = previous_pins(&applied.record, &plan.pins);
    let outcome = match setup(&config, &nl, &bpf, &plan, &mut applied).await {
        Ok(()) => {
            serve(
                &config,
                &nl,
                server,
                status_base(&config, &plan, adopted),
                bpf.clone(),
                lease_service,
                &plan,
                &mut applied,
                &mut signals,
            )
            .await
        }
        Err(e) => Err(e),
    };
    if let (Err(e), true) = (&outcome, adopted) {
        // The predecessor's hooks are (or our swapped-in ones are) still in
        // force: tearing them down would make binds fail for a failure of
        // ours. Leave everything for the next attempt.
        warn!(
            "set-up failed while adopting the previous pandad's state: leaving it in force \
             for the next start ({e:#})"
        );
        return outcome.map(|_| ());
    }
    if let Ok(Exit::Handover) = outcome {
        info!(
            "handing over: the subnet stays in force (pinned in {}); the next pandad with \
             state_dir {} adopts it",
            plan.pins.path().display(),
            config.state_dir.display()
        );
        return Ok(());
    }
    let undo = teardown(&config, &nl, bpf, &plan, &mut applied).await;
    match (outcome.map(|_| ()), undo) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e.context("tearing down")),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// Whether a predecessor's pins are there to adopt.
fn previous_pins(record: &Record, ours: &PinDir) -> bool {
    record.pin_dir.as_deref() == Some(ours.path()) && ours.exists()
}

/// Picks the mechanism and checks what it needs; writes the programs'
/// configuration. Changes nothing in the namespace.
fn decide(config: &Config, bpf: &mut Bpf, netns_cookie: u64, pins: PinDir) -> Result<Plan> {
    let cgroup_root = cgroup::cgroup2_root()?;
    let target = config.cgroup.clone().unwrap_or_else(|| cgroup_root.clone());
    cgroup::validate(&cgroup_root, &target)?;
    let at_root = target.canonicalize()? == cgroup_root.canonicalize()?;
    if config.mechanism == MechanismChoice::Guard && !at_root {
        bail!(guard_needs_root(&target, &cgroup_root));
    }
    let root_fd = File::open(&cgroup_root)
        .with_context(|| format!("opening cgroup2 root {}", cgroup_root.display()))?;

    let mechanism = match config.mechanism {
        MechanismChoice::Guard => Mechanism::Guard,
        MechanismChoice::Auto | MechanismChoice::Freebind => {
            match probe::freebind(bpf, &root_fd)? {
                probe::Freebind::Works => Mechanism::Freebind,
                probe::Freebind::Refused(errno)
                    if config.mechanism == MechanismChoice::Freebind =>
                {
                    bail!(
                        "config key `mechanism`: \"freebind\" needs a kernel whose bpf_setsockopt \
                         accepts IPV6_FREEBIND from a cgroup/bind6 program; this kernel refused it \
                         (error {errno}). Use mechanism = \"auto\" or \"guard\" (contrib/kernel \
                         has the kernel change)."
                    );
                }
                probe::Freebind::Refused(errno) => {
                    info!("bpf_setsockopt(IPV6_FREEBIND) refused here ({errno}); using guard mode");
                    if !at_root {
                        bail!(guard_needs_root(&target, &cgroup_root));
                    }
                    Mechanism::Guard
                }
            }
        }
    };
    // Guard mode reads kernel structures; freebind mode reads none, so a
    // kernel without BTF can still run it.
    let offsets = match mechanism {
        Mechanism::Guard => btf::kernel_offsets(&btf::Btf::from_sys_fs()?)
            .context("guard mode: resolving the kernel structure offsets its BPF programs read")?,
        Mechanism::Freebind => Default::default(),
    };
    let lsm = mechanism == Mechanism::Guard && lsm_usable(probe::lsm(bpf)?);
    bpf.write_config(&panda_common::Config {
        prefix: config.prefix.network().octets(),
        prefix_len: config.prefix.len() as u32,
        mechanism: match mechanism {
            Mechanism::Freebind => panda_common::mechanism::FREEBIND,
            Mechanism::Guard => panda_common::mechanism::GUARD,
        },
        netns_cookie,
        offsets,
        lease_mode: config.lease_mode.as_bpf(),
        _reserved: 0,
    })?;
    Ok(Plan {
        mechanism,
        lsm,
        netns_cookie,
        cgroup_root,
        cgroup: target,
        pins,
    })
}

/// Logs why raw/ping binds stay open when the LSM guard cannot be used.
fn lsm_usable(lsm: probe::Lsm) -> bool {
    let why = match lsm {
        probe::Lsm::Active => return true,
        probe::Lsm::NotEnabled => {
            "the bpf LSM is not enabled (`bpf` missing from the lsm= boot parameter)".to_string()
        }
        probe::Lsm::Refused(e) => format!("this kernel refuses BPF LSM programs ({e})"),
    };
    warn!(
        "{why}: raw and ping sockets can bind unconfigured addresses outside the prefix; \
         they still cannot send ICMPv6 from them (nftables backstop)"
    );
    false
}

fn guard_needs_root(target: &std::path::Path, root: &std::path::Path) -> String {
    format!(
        "config key `cgroup`: guard mode sets net.ipv6.ip_nonlocal_bind=1 for the whole network \
         namespace, so only programs covering every process in it keep binds outside the prefix \
         strict; {} is narrower than the cgroup2 root {}. Remove `cgroup` (or use a kernel where \
         the freebind mechanism works, where a narrower cgroup is meaningful).",
        target.display(),
        root.display()
    )
}

async fn setup(
    config: &Config,
    nl: &Netlink,
    bpf: &Arc<Mutex<Bpf>>,
    plan: &Plan,
    applied: &mut Applied,
) -> Result<()> {
    let mechanism = plan.mechanism;
    let anchor = config.prefix.anchor();
    match (mechanism, applied.record.nonlocal_bind_before) {
        (Mechanism::Guard, None) => {
            applied.record.nonlocal_bind_before = Some(sysctl::read_nonlocal_bind()?);
        }
        // A crashed guard-mode instance left the sysctl at 1; freebind mode
        // needs the kernel's own strictness back now, not at stop.
        (Mechanism::Freebind, Some(v)) => {
            sysctl::write_nonlocal_bind(v)?;
            applied.record.nonlocal_bind_before = None;
        }
        _ => {}
    }
    // Claim both before adding them (a crash in between must not leak them);
    // after adding, keep a claim only for what we added or what a crashed
    // instance of ours had added.
    let inherited = applied.record.clone();
    applied.record.owns_anchor = true;
    applied.record.owns_route = true;
    applied.state.write(&applied.record)?;
    let anchor_new = nl
        .add_anchor(anchor)
        .await
        .with_context(|| format!("adding the anchor address {anchor} to lo"))?;
    applied.record.owns_anchor = anchor_new || inherited.owns_anchor;
    let route_new = nl
        .add_local_route(&config.prefix)
        .await
        .with_context(|| format!("adding the local route for {} on lo", config.prefix))?;
    applied.record.owns_route = route_new || inherited.owns_route;
    applied.state.write(&applied.record)?;

    applied.table = true;
    firewall::install(&config.table, &config.prefix)
        .with_context(|| format!("installing nftables table inet {}", config.table))?;

    // Pins first on record: a crash from here on leaves links the next
    // instance finds.
    let pins = &plan.pins;
    let stale_pins = applied
        .record
        .pin_dir
        .clone()
        .filter(|d| d != pins.path())
        .map(PinDir::at);
    applied.record.pin_dir = Some(pins.path().to_owned());
    applied.state.write(&applied.record)?;
    pins.ensure(&config.bpffs)?;
    {
        let mut bpf = bpf.lock().unwrap_or_else(|p| p.into_inner());
        bpf.pin_counters(pins)?;
        // sendmsg6 and the LSM guard before bind6, as at a first start.
        let wanted: Vec<&'static str> = match mechanism {
            Mechanism::Guard if plan.lsm => vec!["sendmsg6", LSM_PROGRAM, "bind6"],
            Mechanism::Guard => vec!["sendmsg6", "bind6"],
            Mechanism::Freebind => vec!["bind6"],
        };
        for name in &wanted {
            match bpf.install(name, &plan.cgroup, pins)? {
                Installed::Adopted => {
                    info!("adopted the pinned {name} link: program swapped in place")
                }
                Installed::Attached => {
                    info!("attached {name} (pinned in {})", pins.path().display())
                }
            }
        }
        for name in LINK_PINS.iter().filter(|n| !wanted.contains(n)) {
            bpf.uninstall(name, pins)?;
        }
    }
    if let Some(old) = stale_pins {
        // A predecessor pinned elsewhere (another `bpffs` or `table`): ours
        // are in force now, so its links can go.
        old.remove().with_context(|| {
            format!(
                "removing the predecessor's pins in {}",
                old.path().display()
            )
        })?;
    }
    if mechanism == Mechanism::Guard {
        // Guard mode is always attached at the root, which covers pandad.
        probe::guard_self_check()?;
        sysctl::write_nonlocal_bind(1)?;
    }
    Ok(())
}

/// SIGTERM, SIGINT and SIGUSR2, caught from the start of [`run`].
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            usr2: signal(SignalKind::user_defined2()).context("installing the SIGUSR2 handler")?,
        })
    }
}

/// What a SIGTERM means: a stop, unless systemd says it is restarting us.
fn sigterm_exit() -> Exit {
    match systemd::sigterm_verdict() {
        systemd::Verdict::Restart { unit } => {
            info!("SIGTERM: systemd is restarting {unit}; handing over");
            Exit::Handover
        }
        systemd::Verdict::Stop { unit } => {
            info!("SIGTERM: systemd is stopping {unit}; tearing down");
            Exit::Teardown
        }
        systemd::Verdict::NotSystemd => {
            info!("SIGTERM: tearing down");
            Exit::Teardown
        }
        systemd::Verdict::Unknown { why } => {
            warn!("SIGTERM: could not tell a restart from a stop ({why}); tearing down");
            Exit::Teardown
        }
    }
}

fn status_base(config: &Config, plan: &Plan, adopted: bool) -> Status {
    let (mechanism, lsm) = (plan.mechanism, plan.lsm);
    Status {
        prefix: config.prefix.to_string(),
        anchor: config.prefix.anchor().to_string(),
        mechanism: mechanism.as_str().into(),
        ready: true,
        pid: std::process::id(),
        uptime_secs: 0,
        cgroup: plan.cgroup.display().to_string(),
        netns_cookie: plan.netns_cookie,
        table: format!("inet {}", config.table),
        hookless: Hookless {
            raw_ping_bind: match (mechanism, lsm) {
                (Mechanism::Freebind, _) => "kernel".into(),
                (Mechanism::Guard, true) => "closed".into(),
                (Mechanism::Guard, false) => "open".into(),
            },
            icmp_send: "closed".into(),
        },
        counters: Default::default(),
        repairs: Default::default(),
        adopted,
        pin_dir: plan.pins.path().display().to_string(),
        leases: 0,
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    config: &Config,
    nl: &Netlink,
    server: api::Server,
    base: Status,
    bpf: Arc<Mutex<Bpf>>,
    lease_service: leases::Service,
    plan: &Plan,
    applied: &mut Applied,
    signals: &mut Signals,
) -> Result<Exit> {
    let repairs = Arc::new(Repairs::default());
    let source = Arc::new(StatusSource {
        base,
        started: Instant::now(),
        bpf: bpf.clone(),
        repairs: repairs.clone(),
        leases: lease_service.count(),
    });
    let (leases, lease_task) = lease_service.start(bpf.clone());
    let reconciler = Reconciler::new(
        config,
        plan.mechanism,
        plan.cgroup.clone(),
        plan.pins.clone(),
        bpf,
        nl,
        applied,
        repairs,
    )?;
    let metrics = match config.metrics_listen {
        Some(addr) => Some(api::MetricsServer::bind(addr).await?),
        None => None,
    };
    info!(
        "ready: {} is a loopback subnet (mechanism {}, table inet {}, API {})",
        config.prefix,
        source.base.mechanism,
        config.table,
        config.socket.display()
    );
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        warn!("sd_notify READY failed: {e}");
    }
    let metrics_source = source.clone();
    let exit = tokio::select! {
        _ = server.serve(source, leases) => Exit::Teardown,
        _ = lease_task => Exit::Teardown,
        _ = async { match &metrics { Some(m) => m.serve(metrics_source).await, None => std::future::pending().await } } => Exit::Teardown,
        _ = reconciler.run() => Exit::Teardown,
        _ = signals.term.recv() => sigterm_exit(),
        _ = signals.int.recv() => {
            info!("SIGINT: tearing down");
            Exit::Teardown
        }
        _ = signals.usr2.recv() => {
            info!("SIGUSR2: handing over");
            Exit::Handover
        }
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    Ok(exit)
}

/// Undoes what `applied` records, in reverse order; keeps going past errors
/// so that one failure does not leave the rest behind.
async fn teardown(
    config: &Config,
    nl: &Netlink,
    bpf: Arc<Mutex<Bpf>>,
    plan: &Plan,
    applied: &mut Applied,
) -> Result<()> {
    let mut errors = Vec::new();
    if let Some(v) = applied.record.nonlocal_bind_before {
        if let Err(e) = sysctl::write_nonlocal_bind(v) {
            errors.push(e.context("restoring net.ipv6.ip_nonlocal_bind"));
        }
    }
    // Unpinning and dropping the last reference detaches every link.
    if applied.record.pin_dir.is_some() {
        let removed = bpf
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove_pins(&plan.pins);
        if let Err(e) = removed {
            errors.push(e.context("unpinning the BPF links"));
        }
    }
    drop(bpf);
    if applied.table {
        if let Err(e) = firewall::remove(&config.table) {
            errors.push(e.context("removing the nftables table"));
        }
    }
    if applied.record.owns_route {
        if let Err(e) = nl.del_local_route(&config.prefix).await {
            errors.push(e.context("removing the local route"));
        }
    }
    if applied.record.owns_anchor {
        if let Err(e) = nl.del_anchor(config.prefix.anchor()).await {
            errors.push(e.context("removing the anchor address"));
        }
    }
    if errors.is_empty() {
        applied.state.remove()?;
        info!("torn down: the namespace is as it was");
        Ok(())
    } else {
        for e in &errors {
            warn!("{e:#}");
        }
        bail!(
            "{} teardown step(s) failed; the record in {} keeps what is left for the next start",
            errors.len(),
            config.state_dir.display()
        )
    }
}
