//! Self-healing: while pandad runs, what it owns stays as it set it up.
//!
//! pandad owns its anchor address, local route, nftables table, the
//! `ip_nonlocal_bind` value (guard mode) and its pinned BPF links. Anyone
//! with CAP_NET_ADMIN can remove or change them (`ip route del`, `nft flush
//! ruleset`, `sysctl -w`, `bpftool link detach`); each would quietly break
//! the subnet or its scope. The reconciler notices and puts them back, and
//! logs one WARN line naming what it repaired.
//!
//! How it notices, fastest first:
//!
//! | state | signal |
//! |---|---|
//! | anchor, route | rtnetlink multicast (links, IPv6 addresses and routes) |
//! | nftables table | nf_tables netlink notifications (what `nft monitor` reads) |
//! | sysctl, BPF links | polled every [`FAST_TICK`]: the kernel has no event for either; each check is one read(2) or bpf(2) |
//! | anchor, route | a full check every [`BACKSTOP`] too, in case an event was lost |
//! | nftables table | the same, only without a notification socket (nf_tables reports an overrun, which counts as a change) |
//!
//! Every event is only a nudge: the reconciler compares the kernel's state
//! with the wanted one and repairs only a difference, so its own repairs
//! (which cause events too) settle at once.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use tracing::warn;

use crate::{
    bpf::{Bpf, Health},
    config::Config,
    daemon::{Applied, Mechanism},
    firewall,
    netlink::{self, Netlink, RouteState},
    pins::{self, PinDir},
    sysctl,
};

/// How often the sysctl and the links are checked. Both checks are a
/// syscall or three, so 20 a second cost nothing measurable while idle,
/// and keep repair latency well under the 100 ms goal.
pub const FAST_TICK: Duration = Duration::from_millis(50);

/// How often everything is checked regardless of events.
pub const BACKSTOP: Duration = Duration::from_secs(5);

/// Repairs made since start, by what was repaired; shown by `panda status`
/// and the metrics.
#[derive(Default)]
pub struct Repairs(Mutex<BTreeMap<String, u64>>);

impl Repairs {
    fn count(&self, what: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(what.to_owned()).or_default() += 1;
    }

    /// The counts so far.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Everything the reconciler compares and repairs.
pub struct Reconciler<'a> {
    config: &'a Config,
    mechanism: Mechanism,
    cgroup: PathBuf,
    pins: PinDir,
    bpf: Arc<Mutex<Bpf>>,
    nl: &'a Netlink,
    applied: &'a mut Applied,
    repairs: Arc<Repairs>,
    /// `nft list table` as installed; None until taken.
    table_listing: Option<String>,
    /// The last failure logged per kind, so a repair that keeps failing
    /// (e.g. `lo` is down) is logged once, not 20 times a second.
    failing: BTreeMap<&'static str, String>,
    cgroup_id: u64,
    /// Route/address events; None if the subscription failed.
    routes: Option<netlink::Events>,
    /// nf_tables notifications; None if the subscription failed.
    nft: Option<firewall::Events>,
    /// Fast ticks left at which to look at the route again after the
    /// anchor was re-added: an `ip addr del` still running clears the
    /// route's source (`rt6_remove_prefsrc`) after its RTM_DELADDR went
    /// out, and sends no notification for that.
    route_rechecks: u8,
}

impl<'a> Reconciler<'a> {
    /// Subscribes to the kernel's events, then takes the reference listing
    /// of the table just installed. Both happen here, before pandad says it
    /// is ready, so that a change made the moment it is ready is already
    /// seen: a subscription taken later would miss it, and nothing but the
    /// next event (or the backstop) would bring it to light.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &'a Config,
        mechanism: Mechanism,
        cgroup: PathBuf,
        pins: PinDir,
        bpf: Arc<Mutex<Bpf>>,
        nl: &'a Netlink,
        applied: &'a mut Applied,
        repairs: Arc<Repairs>,
    ) -> Result<Reconciler<'a>> {
        let cgroup_id = pins::cgroup_id(&cgroup)?;
        // Without an event source the periodic checks still repair, only
        // later: a degraded pandad beats none.
        let routes = netlink::Events::subscribe()
            .map_err(|e| {
                warn!("self-healing: no route/address events ({e:#}); checking every {BACKSTOP:?}")
            })
            .ok();
        let nft = firewall::Events::subscribe()
            .map_err(|e| {
                warn!("self-healing: no nftables events ({e:#}); checking every {BACKSTOP:?}")
            })
            .ok();
        let table_listing = firewall::listing(&config.table)?;
        Ok(Reconciler {
            config,
            mechanism,
            cgroup,
            pins,
            bpf,
            nl,
            applied,
            repairs,
            table_listing,
            failing: BTreeMap::new(),
            cgroup_id,
            routes,
            nft,
            route_rechecks: 0,
        })
    }

    /// Runs until the future is dropped (pandad stopping); never returns.
    pub async fn run(mut self) {
        let mut routes = self.routes.take();
        let mut nft = self.nft.take();
        let config = self.config;
        let mut fast = tokio::time::interval(FAST_TICK);
        let mut backstop = tokio::time::interval(BACKSTOP);
        fast.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = next_route_event(&mut routes) => self.check_route().await,
                change = next_table_change(&mut nft, &config.table) => {
                    if change.deleted {
                        self.reinstall_table(format!("table inet {} was deleted; reinstalled it", config.table));
                    } else {
                        self.check_table();
                    }
                }
                _ = fast.tick() => {
                    self.check_sysctl();
                    self.check_links();
                    if self.route_rechecks > 0 {
                        self.route_rechecks -= 1;
                        self.check_route().await;
                    }
                }
                _ = backstop.tick() => {
                    self.check_route().await;
                    // nf_tables notifications are reliable (an overrun is
                    // reported, and counts as a change): listing the table
                    // (one nft process) is only the backstop without them.
                    if nft.is_none() {
                        self.check_table();
                    }
                }
            }
        }
    }

    /// Logs a repair (WARN, once per repair) and counts it.
    fn repaired(&mut self, kind: &'static str, what: String) {
        self.failing.remove(kind);
        warn!("repaired {kind}: {what}");
        self.repairs.count(kind);
    }

    /// Logs a failed check or repair once per distinct error.
    fn failed(&mut self, kind: &'static str, e: anyhow::Error) {
        let msg = format!("{e:#}");
        if self.failing.get(kind) != Some(&msg) {
            warn!("cannot repair {kind}: {msg}");
            self.failing.insert(kind, msg);
        }
    }

    async fn check_route(&mut self) {
        let anchor = self.config.prefix.anchor();
        match self.nl.add_anchor(anchor).await {
            Ok(true) => {
                self.route_rechecks = 3;
                self.own(|r| r.owns_anchor = true);
                self.repaired(
                    "anchor",
                    format!("{anchor}/128 was removed from lo; added it back"),
                );
            }
            Ok(false) => {}
            Err(e) => return self.failed("anchor", e),
        }
        let prefix = self.config.prefix;
        let fixed =
            match self.nl.local_route_state(&prefix).await {
                Ok(RouteState::Ok) => return,
                Ok(RouteState::Missing) => self
                    .nl
                    .add_local_route(&prefix)
                    .await
                    .map(|_| format!("local {prefix} dev lo was removed; added it back")),
                Ok(RouteState::NoSource) => self.nl.replace_local_route(&prefix).await.map(|()| {
                    format!("local {prefix} dev lo had lost its source {anchor}; restored")
                }),
                Err(e) => Err(e),
            };
        match fixed {
            Ok(what) => {
                self.own(|r| r.owns_route = true);
                self.repaired("route", what);
            }
            Err(e) => self.failed("route", e),
        }
    }

    /// What pandad re-created is its own to remove at stop.
    fn own(&mut self, f: impl FnOnce(&mut crate::state::Record)) {
        f(&mut self.applied.record);
        if let Err(e) = self.applied.state.write(&self.applied.record) {
            warn!("updating the state record: {e:#}");
        }
    }

    fn check_table(&mut self) {
        let table = &self.config.table;
        let now = match firewall::listing(table) {
            Ok(l) => l,
            Err(e) => return self.failed("table", e),
        };
        if now.is_some() && now == self.table_listing {
            return;
        }
        self.reinstall_table(if now.is_none() {
            format!("table inet {table} was deleted; reinstalled it")
        } else {
            format!("table inet {table} was changed; reinstalled it")
        });
    }

    /// Re-installs the table (one atomic transaction), then takes the new
    /// reference listing.
    fn reinstall_table(&mut self, what: String) {
        let table = &self.config.table;
        match firewall::install(table, &self.config.prefix) {
            Ok(()) => self.repaired("table", what),
            Err(e) => return self.failed("table", e),
        }
        match firewall::listing(table) {
            Ok(l) => self.table_listing = l,
            Err(e) => self.failed("table", e),
        }
    }

    fn check_sysctl(&mut self) {
        if self.mechanism != Mechanism::Guard {
            return;
        }
        match sysctl::read_nonlocal_bind() {
            Ok(1) => {}
            Ok(v) => match sysctl::write_nonlocal_bind(1) {
                Ok(()) => self.repaired(
                    "sysctl",
                    format!("net.ipv6.ip_nonlocal_bind was set to {v}; set it back to 1"),
                ),
                Err(e) => self.failed("sysctl", e),
            },
            Err(e) => self.failed("sysctl", e),
        }
    }

    fn check_links(&mut self) {
        let bpf = self.bpf.clone();
        let mut bpf = bpf.lock().unwrap_or_else(|p| p.into_inner());
        for name in bpf.held() {
            let health = match bpf.check(name, self.cgroup_id, &self.pins) {
                Ok(Health::Ok) => continue,
                Ok(h) => h,
                Err(e) => {
                    self.failed(link_kind(name), e);
                    continue;
                }
            };
            let what = match health {
                Health::Detached => "was detached; attached it again",
                Health::WrongProgram => "ran another program; swapped panda's back in",
                Health::Unpinned => "lost its pin; pinned it again",
                Health::Ok => unreachable!(),
            };
            match bpf.repair(name, health, &self.cgroup, &self.pins) {
                Ok(()) => self.repaired(link_kind(name), format!("BPF link {name} {what}")),
                Err(e) => self.failed(link_kind(name), e),
            }
        }
    }
}

/// The next burst of route/address events; never, without a subscription.
async fn next_route_event(events: &mut Option<netlink::Events>) {
    match events {
        Some(e) => e.next_burst().await,
        None => std::future::pending().await,
    }
}

/// The next change to `table`; never, without a subscription.
async fn next_table_change(events: &mut Option<firewall::Events>, table: &str) -> firewall::Change {
    match events {
        Some(e) => e.next_change(table).await,
        None => std::future::pending().await,
    }
}

/// The repair kind of a hook's link, as status and metrics name it.
fn link_kind(name: &str) -> &'static str {
    match name {
        "bind6" => "link_bind6",
        "sendmsg6" => "link_sendmsg6",
        _ => "link_socket_bind",
    }
}
