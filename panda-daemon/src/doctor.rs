//! `panda doctor`: checks, in the network namespace it runs in, everything
//! the subnet depends on, and says how to fix what is wrong.
//!
//! Three groups of checks, each one line (`ok`, `WARN` or `FAIL`):
//!
//! - **kernel support**: bpf(2), cgroup2, a bpffs at `bpffs`, nftables, BTF,
//!   and the mechanism pandad runs (with raw/ping binds open or closed);
//! - **conflicts** pandad cannot see or repair: other routes for the
//!   prefix, foreign nftables rules that drop loopback traffic, addresses
//!   of the prefix on other interfaces;
//! - **pandad against the kernel**: the API answers, the state record's pid
//!   lives, and anchor, route, table, sysctl and pinned links are in place.
//!
//! Kernel facts relied on:
//!
//! - Routing, addresses, nftables and `ip_nonlocal_bind` are per network
//!   namespace and read in the caller's: doctor must run in pandad's
//!   namespace (`nsenter --net=…`; `ip netns exec` remounts /sys and hides
//!   the cgroup2 mount). It compares its own `SO_NETNS_COOKIE` with the one
//!   pandad reports to catch a wrong namespace.
//! - Table `local` is looked up first: a route for part of the prefix in
//!   any table means someone else routes those addresses, and a shorter one
//!   covering the prefix is shadowed by pandad's `local PREFIX` route.
//! - A drop in any base chain is final whatever other tables accept, so a
//!   foreign `iifname "lo" drop` (or a policy-drop input/output chain with
//!   no accept for `lo`) breaks the subnet whatever pandad's table says.
//! - A pinned `bpf_link` stays attached without any process; a detached
//!   cgroup link reports cgroup id 0 (`BPF_OBJ_GET_INFO_BY_FD`). Links
//!   pinned with no pandad answering are a crashed or handed-over instance:
//!   binds still work, and the next pandad adopts them.
use std::{io, net::Ipv6Addr, path::Path};

use serde::Serialize;
use serde_json::Value;

use crate::{
    api, cgroup,
    config::{Config, MechanismChoice, Prefix},
    firewall,
    netlink::{IfAddr, Netlink, Route, RouteState, RT_TABLE_LOCAL},
    pins::{self, Link, PinDir, LINK_PINS},
    probe,
    state::{self, Record, StateFile},
    sysctl,
};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// Works, but something is worth knowing or fixing.
    Warn,
    /// Something the subnet needs is missing or broken.
    Fail,
}

impl Level {
    /// The word printed at the start of a check's line.
    pub fn label(&self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One check: what `--json` prints (field names are a contract).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Level,
    pub detail: String,
    /// A command or action that fixes a WARN or FAIL.
    pub fix: Option<String>,
}

/// The checks, one line each, and what every one means: `panda doctor
/// --help` prints this.
pub const HELP: &str = "\
Checks, in this order (each prints ok, WARN or FAIL, what it found, and a fix):

kernel support
  bpf              bpf(2) works: a one-entry array map is created and closed
  cgroup2          a cgroup2 hierarchy is mounted (where pandad attaches)
  bpffs            a bpffs is mounted at the config's `bpffs` (pins live there)
  nftables         `nft` runs and nf_tables answers (`nft -j list ruleset`)
  btf              /sys/kernel/btf/vmlinux exists (guard mode reads it)
  mechanism        freebind or guard, from pandad's status
  hookless         raw/ping binds: closed by the bpf LSM, or open (WARN)
conflicts (nothing pandad repairs)
  conflict-route   no other route, in any table, for (part of) the prefix
  conflict-nft     no foreign nftables rule drops or rejects traffic on lo,
                   no input/output chain with policy drop lacks an accept for lo
  conflict-address no address of the prefix on an interface other than lo
                   (pandad's table cuts such an address off)
pandad against the kernel
  daemon           the API socket answers status, for this prefix and netns
  record           the state record's pid is a live pandad
  instance         a subnet in force with no pandad (crashed or handed over)
  anchor           PREFIX::1/128 is on lo
  route            `local PREFIX dev lo src ANCHOR` is in table local
  table            the nftables table exists and holds the prefix's rules
  sysctl           guard mode: net.ipv6.ip_nonlocal_bind = 1 (freebind: 0)
  link-bind6, link-sendmsg6, link-socket_bind
                   each pinned link exists, is attached and runs a program
  stale-pins       no pin directory of a vanished namespace (`panda gc`)

Run it in pandad's network namespace (nsenter --net=/run/netns/NAME panda
doctor …); exit status 0: nothing FAILed (WARNs allowed), 1: something did.";

fn check(name: &str, status: Level, detail: String, fix: Option<String>) -> Check {
    Check {
        check: name.to_owned(),
        status,
        detail,
        fix,
    }
}

fn ok(name: &str, detail: impl Into<String>) -> Check {
    check(name, Level::Ok, detail.into(), None)
}

fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    check(name, Level::Warn, detail.into(), Some(fix.into()))
}

fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    check(name, Level::Fail, detail.into(), Some(fix.into()))
}

/// What the netlink checks read, in one round trip to the kernel.
struct NetView {
    lo: u32,
    addrs: Vec<IfAddr>,
    routes: Vec<Route>,
    route_state: RouteState,
}

fn net_view(prefix: &Prefix) -> anyhow::Result<NetView> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let nl = Netlink::connect().await?;
        Ok(NetView {
            lo: nl.lo_ifindex().await?,
            addrs: nl.addresses().await?,
            routes: nl.routes().await?,
            route_state: nl.local_route_state(prefix).await?,
        })
    })
}

/// Everything doctor learns before judging.
struct Seen<'a> {
    config: &'a Config,
    /// pandad's status, or why there is none.
    status: Result<api::Status, String>,
    record: anyhow::Result<Option<Record>>,
    /// This process's network namespace.
    cookie: Option<u64>,
    net: anyhow::Result<NetView>,
    ruleset: anyhow::Result<Value>,
}

impl Seen<'_> {
    fn up(&self) -> Option<&api::Status> {
        self.status.as_ref().ok()
    }

    /// The fix for a piece of pandad's state that is missing.
    fn restore(&self, what: &str) -> String {
        match self.up() {
            Some(_) => format!(
                "pandad puts {what} back within 100 ms while it runs; it has not: see its log \
                 (journalctl -u pandad) and restart it"
            ),
            None => format!("start pandad (systemctl start pandad): it sets up {what}"),
        }
    }

    /// The mechanism in force: from the status, else from the record (a
    /// guard-mode instance records the sysctl it changed).
    fn mechanism(&self) -> Option<&str> {
        match (self.up(), &self.record) {
            (Some(s), _) => Some(s.mechanism.as_str()),
            (None, Ok(Some(r))) if r.nonlocal_bind_before.is_some() => Some("guard"),
            _ => None,
        }
    }

    /// Where this namespace's instance pins its links.
    fn pin_dir(&self) -> PinDir {
        if let Some(s) = self.up().filter(|s| !s.pin_dir.is_empty()) {
            return PinDir::at(s.pin_dir.clone().into());
        }
        if let Ok(Some(Record {
            pin_dir: Some(d), ..
        })) = &self.record
        {
            return PinDir::at(d.clone());
        }
        PinDir::for_instance(
            &self.config.bpffs,
            self.cookie.unwrap_or(0),
            &self.config.table,
        )
    }
}

/// Runs every check for `config` (its `socket` is where pandad is asked).
pub fn run(config: &Config) -> Vec<Check> {
    let seen = Seen {
        config,
        status: api::request(&config.socket, "status")
            .and_then(|v| Ok(serde_json::from_value::<api::Status>(v)?))
            .map_err(|e| format!("{e:#}")),
        record: StateFile::new(&config.state_dir).read(),
        cookie: probe::netns_cookie().ok(),
        net: net_view(&config.prefix),
        ruleset: firewall::ruleset_json(),
    };
    let mut out = kernel(&seen);
    out.extend(conflicts(&seen));
    out.extend(daemon(&seen));
    out
}

/// Whether any check failed: the exit status.
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Level::Fail)
}

/// The checks as text, one line each.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{:<4}  {:<16}  {}",
            c.status.label(),
            c.check,
            c.detail
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!(" -- fix: {fix}"));
        }
        out.push('\n');
    }
    out
}

// --- kernel support ---------------------------------------------------------

fn kernel(seen: &Seen) -> Vec<Check> {
    let config = seen.config;
    let mut out = Vec::new();
    out.push(match probe::bpf_syscall() {
        Ok(()) => ok("bpf", "bpf(2) works (created and closed an array map)"),
        Err(e) => {
            let fix = match e.raw_os_error() {
                Some(libc::ENOSYS) => "use a kernel built with CONFIG_BPF_SYSCALL=y",
                Some(libc::EPERM) => {
                    "run as root (pandad needs CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_PERFMON)"
                }
                _ => "see dmesg for why the kernel refuses BPF maps",
            };
            fail("bpf", format!("bpf(BPF_MAP_CREATE) failed: {e}"), fix)
        }
    });
    out.push(match cgroup::cgroup2_root() {
        Ok(p) => ok("cgroup2", format!("mounted at {}", p.display())),
        Err(e) => fail(
            "cgroup2",
            format!("{e:#}"),
            "mount -t cgroup2 none /sys/fs/cgroup; inside a namespace use nsenter --net=… \
             (ip netns exec remounts /sys and hides it)",
        ),
    });
    let bpffs = config.bpffs.display();
    out.push(match pins::is_bpffs(&config.bpffs) {
        Ok(true) => ok("bpffs", format!("a bpffs is mounted at {bpffs}")),
        found => {
            let why = match found {
                Err(e) => format!("{e:#}"),
                _ => format!("{bpffs} is not a bpffs"),
            };
            match seen.up() {
                Some(_) => fail(
                    "bpffs",
                    format!("{why}, yet pandad runs: its pinned links are not visible here"),
                    format!(
                        "mount -t bpf bpf {bpffs} and restart pandad (or run doctor in \
                         pandad's mount namespace)"
                    ),
                ),
                None => warn(
                    "bpffs",
                    format!("{why} (pandad mounts one there when it starts)"),
                    format!("mount -t bpf bpf {bpffs}, or let pandad mount it"),
                ),
            }
        }
    });
    out.push(match &seen.ruleset {
        Ok(v) => {
            let tables = objects(v, "table").count();
            ok(
                "nftables",
                format!("nft works ({tables} table(s) in this namespace)"),
            )
        }
        Err(e) => {
            let missing = e
                .chain()
                .filter_map(|c| c.downcast_ref::<io::Error>())
                .any(|e| e.kind() == io::ErrorKind::NotFound);
            let fix = if missing {
                "install nftables (Debian: apt-get install nftables)"
            } else {
                "run as root and make nf_tables available (modprobe nf_tables)"
            };
            fail("nftables", format!("{e:#}"), fix)
        }
    });
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    out.push(if btf.exists() {
        ok(
            "btf",
            format!("{} exists (guard mode can run)", btf.display()),
        )
    } else {
        let fix = "use a kernel built with CONFIG_DEBUG_INFO_BTF=y";
        let detail = format!(
            "{} is missing: guard mode cannot resolve kernel offsets",
            btf.display()
        );
        match config.mechanism {
            MechanismChoice::Guard => fail("btf", detail + " (the config asks for guard)", fix),
            _ => warn(
                "btf",
                detail + " (only a freebind kernel can run panda)",
                fix,
            ),
        }
    });
    match seen.up() {
        Some(s) => {
            out.push(ok(
                "mechanism",
                match s.mechanism.as_str() {
                    "freebind" => {
                        "freebind: bind6 sets IPV6_FREEBIND on prefix binds; the sysctl stays 0"
                            .to_owned()
                    }
                    "guard" => {
                        "guard: ip_nonlocal_bind=1, BPF keeps binds outside the prefix strict"
                            .to_owned()
                    }
                    m => format!("{m} (from pandad's status)"),
                },
            ));
            out.push(match s.hookless.raw_ping_bind.as_str() {
                "open" => warn(
                    "hookless",
                    "raw_ping_bind open: raw and ping sockets can bind unconfigured addresses \
                     outside the prefix (the bpf LSM is not usable); ICMPv6 sent from them is \
                     still dropped (nftables backstop)",
                    "boot with `bpf` in the lsm= kernel parameter (e.g. \
                     lsm=landlock,lockdown,yama,apparmor,bpf), then restart pandad",
                ),
                v => ok(
                    "hookless",
                    format!("raw_ping_bind {v}, icmp_send {}", s.hookless.icmp_send),
                ),
            });
        }
        None => out.push(warn(
            "mechanism",
            "unknown: pandad is not answering",
            "see the `daemon` check",
        )),
    }
    out
}

// --- conflicts ----------------------------------------------------------------

/// The name of interface `ifindex` in this namespace.
fn ifname(ifindex: u32) -> String {
    nix::net::if_::if_indextoname(ifindex)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("if{ifindex}"))
}

fn table_name(t: u32) -> String {
    match t {
        255 => "local".into(),
        254 => "main".into(),
        253 => "default".into(),
        t => t.to_string(),
    }
}

/// Whether `a/alen` and `b/blen` share an address.
fn overlaps(a: Ipv6Addr, alen: u8, b: Ipv6Addr, blen: u8) -> bool {
    let len = alen.min(blen).min(128);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    u128::from(a) & mask == u128::from(b) & mask
}

/// Routes other than pandad's own whose destination overlaps `prefix`,
/// split into (inside or equal to the prefix, covering it). The default
/// route (`::/0`) covers everything and is not a conflict.
pub fn route_conflicts(prefix: &Prefix, lo: u32, routes: &[Route]) -> (Vec<Route>, Vec<Route>) {
    use netlink_packet_route::route::RouteType;
    let own = |r: &Route| {
        r.table == u32::from(RT_TABLE_LOCAL)
            && r.kind == RouteType::Local
            && r.oif == Some(lo)
            && ((r.dst == prefix.network() && r.dst_len == prefix.len())
                || (r.dst == prefix.anchor() && r.dst_len == 128))
    };
    let (mut inside, mut covering) = (Vec::new(), Vec::new());
    for r in routes {
        if r.dst_len == 0 || own(r) || !overlaps(r.dst, r.dst_len, prefix.network(), prefix.len()) {
            continue;
        }
        if r.dst_len >= prefix.len() {
            inside.push(r.clone());
        } else {
            covering.push(r.clone());
        }
    }
    (inside, covering)
}

/// A route as `ip -6 route` would name it, and the command deleting it.
fn describe_route(r: &Route) -> (String, String) {
    use netlink_packet_route::route::RouteType;
    let kind = match r.kind {
        RouteType::Unicast => String::new(),
        k => format!("{} ", format!("{k:?}").to_lowercase()),
    };
    let dev = r
        .oif
        .map(|i| format!(" dev {}", ifname(i)))
        .unwrap_or_default();
    let spec = format!(
        "{kind}{}/{} table {}{dev}",
        r.dst,
        r.dst_len,
        table_name(r.table)
    );
    let proto = format!("{:?}", r.protocol).to_lowercase();
    (
        format!("{spec} proto {proto}"),
        format!("ip -6 route del {spec}"),
    )
}

/// The `nftables` array's objects of one kind (`table`, `chain`, `rule`).
fn objects<'a>(ruleset: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    ruleset["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(move |o| o.get(kind))
}

/// Whether a rule expression matches packets on `lo` (`iifname "lo"`,
/// `oif lo`, or a set containing "lo").
fn matches_lo(e: &Value) -> bool {
    let Some(m) = e.get("match") else {
        return false;
    };
    if !matches!(m["op"].as_str(), Some("==" | "in")) {
        return false;
    }
    if !matches!(
        m["left"]["meta"]["key"].as_str(),
        Some("iifname" | "oifname" | "iif" | "oif")
    ) {
        return false;
    }
    match &m["right"] {
        Value::String(s) => s == "lo",
        v => v["set"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "lo")),
    }
}

/// The rule's verdict among drop, reject and accept, if any.
fn verdict(rule: &Value) -> Option<&'static str> {
    let exprs = rule["expr"].as_array()?;
    ["drop", "reject", "accept"]
        .into_iter()
        .find(|v| exprs.iter().any(|e| e.get(*v).is_some()))
}

/// One foreign nftables rule or chain that stops loopback traffic, and
/// the nft command that fixes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftConflict {
    pub what: String,
    pub fix: String,
}

/// Rules (in tables other than pandad's `inet <own>`, families inet and
/// ip6, which see IPv6) that match `lo` and drop or reject, and input or
/// output base chains with policy drop and no rule accepting `lo`.
pub fn nft_conflicts(own: &str, ruleset: &Value) -> Vec<NftConflict> {
    let foreign = |o: &Value| {
        let family = o["family"].as_str().unwrap_or("");
        matches!(family, "inet" | "ip6") && !(family == "inet" && o["table"] == own)
    };
    let place = |o: &Value, chain: &Value| {
        format!(
            "{} {} {}",
            o["family"].as_str().unwrap_or("?"),
            o["table"].as_str().unwrap_or("?"),
            chain.as_str().unwrap_or("?")
        )
    };
    let lo_rules = || {
        objects(ruleset, "rule").filter(move |r| {
            foreign(r)
                && r["expr"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(matches_lo))
        })
    };
    let mut out = Vec::new();
    for r in lo_rules() {
        if let Some(v @ ("drop" | "reject")) = verdict(r) {
            let at = place(r, &r["chain"]);
            let handle = &r["handle"];
            out.push(NftConflict {
                what: format!("table {at}: a rule matching lo does {v} (handle {handle})"),
                fix: format!("nft delete rule {at} handle {handle}"),
            });
        }
    }
    for c in objects(ruleset, "chain") {
        let hook = c["hook"].as_str().unwrap_or("");
        if !foreign(c) || c["policy"] != "drop" || !matches!(hook, "input" | "output") {
            continue;
        }
        let accepts_lo = lo_rules().any(|r| {
            r["family"] == c["family"]
                && r["table"] == c["table"]
                && r["chain"] == c["name"]
                && verdict(r) == Some("accept")
        });
        if !accepts_lo {
            let at = place(c, &c["name"]);
            let key = if hook == "input" {
                "iifname"
            } else {
                "oifname"
            };
            out.push(NftConflict {
                what: format!("table {at}: {hook} hook with policy drop and no accept for lo"),
                fix: format!("nft insert rule {at} {key} lo accept"),
            });
        }
    }
    out
}

/// Addresses of `prefix` configured on interfaces other than `lo`.
pub fn misplaced(prefix: &Prefix, lo: u32, addrs: &[IfAddr]) -> Vec<IfAddr> {
    addrs
        .iter()
        .filter(|a| a.ifindex != lo && prefix.contains(&a.addr))
        .copied()
        .collect()
}

fn conflicts(seen: &Seen) -> Vec<Check> {
    let prefix = &seen.config.prefix;
    let mut out = Vec::new();
    match &seen.net {
        Ok(net) => {
            let (inside, covering) = route_conflicts(prefix, net.lo, &net.routes);
            out.push(if !inside.is_empty() {
                let (what, fix): (Vec<_>, Vec<_>) = inside.iter().map(describe_route).unzip();
                fail(
                    "conflict-route",
                    format!(
                        "other routes for addresses of {prefix}: {}",
                        what.join("; ")
                    ),
                    format!("{} (or choose another `prefix`)", fix.join("; ")),
                )
            } else if !covering.is_empty() {
                let what: Vec<_> = covering.iter().map(|r| describe_route(r).0).collect();
                warn(
                    "conflict-route",
                    format!(
                        "routes covering {prefix}, shadowed for its addresses by pandad's local \
                         route: {}",
                        what.join("; ")
                    ),
                    "make sure nothing expects to reach the prefix through them, or choose \
                     another `prefix`",
                )
            } else {
                ok(
                    "conflict-route",
                    format!("no other route for {prefix} in any table"),
                )
            });
            let wrong = misplaced(prefix, net.lo, &net.addrs);
            out.push(if wrong.is_empty() {
                ok(
                    "conflict-address",
                    format!("no address of {prefix} outside lo"),
                )
            } else {
                let what: Vec<_> = wrong
                    .iter()
                    .map(|a| format!("{}/{} on {}", a.addr, a.prefix_len, ifname(a.ifindex)))
                    .collect();
                let fix: Vec<_> = wrong
                    .iter()
                    .map(|a| {
                        format!(
                            "ip -6 addr del {}/{} dev {}",
                            a.addr,
                            a.prefix_len,
                            ifname(a.ifindex)
                        )
                    })
                    .collect();
                fail(
                    "conflict-address",
                    format!(
                        "{}: pandad's nftables table drops traffic to and from the prefix on \
                         every interface but lo",
                        what.join(", ")
                    ),
                    format!("{} (or choose another `prefix`)", fix.join("; ")),
                )
            });
        }
        Err(e) => {
            let detail = format!("netlink: {e:#}");
            let fix = "run as root in pandad's network namespace";
            out.push(fail("conflict-route", detail.clone(), fix));
            out.push(fail("conflict-address", detail, fix));
        }
    }
    out.insert(
        1,
        match &seen.ruleset {
            Ok(rs) => {
                let found = nft_conflicts(&seen.config.table, rs);
                if found.is_empty() {
                    ok(
                        "conflict-nft",
                        "no foreign nftables rule or policy drops traffic on lo",
                    )
                } else {
                    let (what, fix): (Vec<_>, Vec<_>) =
                        found.into_iter().map(|c| (c.what, c.fix)).unzip();
                    fail("conflict-nft", what.join("; "), fix.join("; "))
                }
            }
            Err(_) => warn(
                "conflict-nft",
                "not checked: the ruleset could not be listed",
                "see the `nftables` check",
            ),
        },
    );
    out
}

// --- pandad against the kernel --------------------------------------------------

fn daemon(seen: &Seen) -> Vec<Check> {
    let config = seen.config;
    let prefix = &config.prefix;
    let socket = config.socket.display();
    let mut out = Vec::new();
    out.push(match &seen.status {
        Ok(s) if s.prefix != prefix.to_string() => fail(
            "daemon",
            format!(
                "pandad (pid {}) on {socket} serves {}, but the config says {prefix}",
                s.pid, s.prefix
            ),
            "pass the config pandad runs with (--config FILE)",
        ),
        Ok(s) if seen.cookie.is_some_and(|c| c != s.netns_cookie) => fail(
            "daemon",
            format!(
                "pandad (pid {}) serves another network namespace (cookie {}; doctor runs in {})",
                s.pid,
                s.netns_cookie,
                seen.cookie.unwrap_or(0)
            ),
            "run doctor in pandad's namespace: nsenter --net=/run/netns/NAME panda doctor …",
        ),
        Ok(s) => ok(
            "daemon",
            format!(
                "pandad pid {} answers on {socket} (mechanism {}, up {} s)",
                s.pid, s.mechanism, s.uptime_secs
            ),
        ),
        Err(e) => fail(
            "daemon",
            format!("not answering: {e}"),
            "start pandad (systemctl start pandad, or pandad --config FILE); if it runs, point \
             doctor at it with --socket or --config",
        ),
    });
    let record_path = StateFile::new(&config.state_dir)
        .path()
        .display()
        .to_string();
    let alive = |r: &Record| state::pandad_alive(r.pid);
    out.push(match (&seen.record, seen.up()) {
        (Ok(Some(r)), _) if alive(r) => ok(
            "record",
            format!("{record_path}: pid {} is a live pandad", r.pid),
        ),
        (Ok(Some(r)), _) => warn(
            "record",
            format!(
                "{record_path}: pid {} is not running (it crashed or handed over)",
                r.pid
            ),
            format!(
                "start pandad with state_dir {}: it takes over",
                config.state_dir.display()
            ),
        ),
        (Ok(None), Some(s)) => fail(
            "record",
            format!(
                "no {record_path}, yet pandad {} answers: after a crash nobody would know what \
                 to undo",
                s.pid
            ),
            "check that pandad runs with this config's state_dir",
        ),
        (Ok(None), None) => ok(
            "record",
            format!("no {record_path}: no instance left anything here"),
        ),
        (Err(e), _) => fail(
            "record",
            format!("{e:#}"),
            format!("remove {record_path} once nothing of panda is in force"),
        ),
    });
    let pins = seen.pin_dir();
    let left_behind = matches!(&seen.record, Ok(Some(r)) if !alive(r));
    out.push(match seen.up() {
        Some(s) => ok("instance", format!("in force, held by pandad {}", s.pid)),
        None if left_behind || pins.exists() => warn(
            "instance",
            format!(
                "a subnet is in force with no pandad (pins in {}; a crashed or handed-over \
                 instance): binds still work; start pandad to adopt it, or stop it cleanly",
                pins.path().display()
            ),
            "systemctl start pandad (it adopts everything), or start it and then stop it \
             (systemctl stop pandad) to remove everything",
        ),
        None => ok("instance", "nothing of panda is in force here"),
    });

    match &seen.net {
        Ok(net) => {
            let anchor = prefix.anchor();
            let on_lo = net
                .addrs
                .iter()
                .any(|a| a.addr == anchor && a.ifindex == net.lo);
            out.push(if on_lo {
                ok("anchor", format!("{anchor}/128 is on lo"))
            } else {
                fail(
                    "anchor",
                    format!("{anchor} is not on lo"),
                    seen.restore("the anchor"),
                )
            });
            let route = format!("local {prefix} dev lo src {anchor} (table local)");
            out.push(match net.route_state {
                RouteState::Ok => ok("route", route),
                RouteState::NoSource => fail(
                    "route",
                    format!("local {prefix} dev lo is there, but without src {anchor}"),
                    seen.restore("the route's source"),
                ),
                RouteState::Missing => fail(
                    "route",
                    format!("no {route}"),
                    seen.restore("the local route"),
                ),
            });
        }
        Err(e) => {
            for name in ["anchor", "route"] {
                out.push(fail(
                    name,
                    format!("netlink: {e:#}"),
                    "run as root in pandad's network namespace",
                ));
            }
        }
    }
    let table = &config.table;
    out.push(match firewall::listing(table) {
        Ok(Some(text)) if text.contains(&prefix.to_string()) => ok(
            "table",
            format!("inet {table} holds the rules for {prefix}"),
        ),
        Ok(Some(_)) => fail(
            "table",
            format!("inet {table} exists but has no rules for {prefix} (another prefix's?)"),
            "run doctor with the config of the pandad that owns it, or restart pandad",
        ),
        Ok(None) => fail(
            "table",
            format!("no nftables table inet {table}: the prefix is not sealed on lo"),
            seen.restore("the table"),
        ),
        Err(e) => fail("table", format!("{e:#}"), "see the `nftables` check"),
    });
    out.push(match (seen.mechanism(), sysctl::read_nonlocal_bind()) {
        (_, Err(e)) => fail(
            "sysctl",
            format!("{e:#}"),
            "IPv6 must be enabled in this namespace",
        ),
        (Some("guard"), Ok(1)) => ok(
            "sysctl",
            "net.ipv6.ip_nonlocal_bind = 1 (guard mode needs it)",
        ),
        (Some("guard"), Ok(v)) => fail(
            "sysctl",
            format!("net.ipv6.ip_nonlocal_bind = {v}: guard mode needs 1, prefix binds fail"),
            seen.restore("net.ipv6.ip_nonlocal_bind = 1"),
        ),
        (Some("freebind"), Ok(v)) if v != 0 => warn(
            "sysctl",
            format!(
                "net.ipv6.ip_nonlocal_bind = {v} in freebind mode: binds outside the prefix \
                 are not checked by the kernel"
            ),
            "sysctl -w net.ipv6.ip_nonlocal_bind=0",
        ),
        (_, Ok(v)) => ok(
            "sysctl",
            format!("net.ipv6.ip_nonlocal_bind = {v} (guard mode not in force)"),
        ),
    });
    out.extend(links(seen, &pins));
    out.push(match crate::gc::stale(&config.bpffs) {
        Ok(stale) if stale.is_empty() => ok(
            "stale-pins",
            "no pin directory of a vanished network namespace",
        ),
        Ok(stale) => {
            let dirs: Vec<_> = stale
                .iter()
                .map(|i| i.dir.path().display().to_string())
                .collect();
            warn(
                "stale-pins",
                format!(
                    "{}: their namespaces are gone, yet their programs run on every bind",
                    dirs.join(", ")
                ),
                "panda gc (with this --config)",
            )
        }
        Err(e) => warn(
            "stale-pins",
            format!("could not tell: {e:#}"),
            "run as root",
        ),
    });
    out
}

/// The links this namespace's instance should hold, by pin name.
fn wanted_links(seen: &Seen, pins: &PinDir) -> Vec<&'static str> {
    match (seen.up(), seen.mechanism()) {
        (Some(s), Some("guard")) if s.hookless.raw_ping_bind == "closed" => {
            vec!["bind6", "sendmsg6", "socket_bind"]
        }
        (_, Some("guard")) => vec!["bind6", "sendmsg6"],
        (Some(_), _) => vec!["bind6"],
        (None, _) => {
            let mut v: Vec<_> = LINK_PINS
                .into_iter()
                .filter(|n| pins.entry(n).exists())
                .collect();
            if !v.contains(&"bind6") {
                v.insert(0, "bind6");
            }
            v
        }
    }
}

fn links(seen: &Seen, pins: &PinDir) -> Vec<Check> {
    let cgroup_id = seen
        .up()
        .and_then(|s| pins::cgroup_id(Path::new(&s.cgroup)).ok());
    wanted_links(seen, pins)
        .into_iter()
        .map(|name| {
            let check = format!("link-{name}");
            let path = pins.entry(name);
            let shown = path.display();
            let info = match Link::open_pinned(&path).and_then(|l| l.map(|l| l.info()).transpose())
            {
                Ok(Some(info)) => info,
                Ok(None) => {
                    return fail(
                        &check,
                        format!("nothing pinned at {shown}"),
                        seen.restore(&format!("the {name} link")),
                    )
                }
                Err(e) => return fail(&check, format!("{e:#}"), "run as root"),
            };
            let runs = format!("runs program {} (link {})", info.prog_id, info.id);
            if info.prog_id == 0 {
                return fail(
                    &check,
                    format!("{shown} runs no program"),
                    seen.restore(&format!("the {name} link")),
                );
            }
            if info.link_type != pins::LINK_TYPE_CGROUP {
                return ok(&check, format!("{shown} {runs}"));
            }
            match (info.cgroup_id, cgroup_id) {
                (0, _) => fail(
                    &check,
                    format!("{shown} is detached (cgroup id 0): {name} does not run"),
                    seen.restore(&format!("the {name} link")),
                ),
                (id, Some(want)) if id != want => fail(
                    &check,
                    format!("{shown} is attached to cgroup id {id}, not pandad's ({want})"),
                    seen.restore(&format!("the {name} link")),
                ),
                (id, _) => ok(
                    &check,
                    format!("{shown} is attached (cgroup id {id}) and {runs}"),
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::{RouteProtocol, RouteType};

    fn prefix() -> Prefix {
        "fd00:1009:bacc::/48".parse().unwrap()
    }

    fn route(table: u32, kind: RouteType, dst: &str, len: u8, oif: u32) -> Route {
        Route {
            table,
            kind,
            protocol: RouteProtocol::Kernel,
            dst: dst.parse().unwrap(),
            dst_len: len,
            oif: Some(oif),
        }
    }

    #[test]
    fn own_routes_are_no_conflict() {
        let p = prefix();
        let routes = [
            route(255, RouteType::Local, "fd00:1009:bacc::", 48, 1),
            route(255, RouteType::Local, "fd00:1009:bacc::1", 128, 1),
            route(254, RouteType::Unicast, "::", 0, 2),
            route(254, RouteType::Unicast, "2001:db8::", 64, 2),
            route(255, RouteType::Local, "::1", 128, 1),
        ];
        assert_eq!(route_conflicts(&p, 1, &routes), (vec![], vec![]));
    }

    #[test]
    fn foreign_routes_conflict() {
        let p = prefix();
        let inside = route(254, RouteType::Unicast, "fd00:1009:bacc:5::", 64, 3);
        let local_elsewhere = route(255, RouteType::Local, "fd00:1009:bacc:5::1", 128, 3);
        // pandad's own route, but on another device: not pandad's.
        let wrong_dev = route(255, RouteType::Local, "fd00:1009:bacc::", 48, 3);
        let covering = route(100, RouteType::Unicast, "fd00::", 8, 3);
        let routes = [
            inside.clone(),
            local_elsewhere.clone(),
            wrong_dev.clone(),
            covering.clone(),
        ];
        assert_eq!(
            route_conflicts(&p, 1, &routes),
            (vec![inside, local_elsewhere, wrong_dev], vec![covering])
        );
    }

    #[test]
    fn misplaced_addresses() {
        let p = prefix();
        let a = |s: &str, ifindex| IfAddr {
            addr: s.parse().unwrap(),
            prefix_len: 64,
            ifindex,
            flags: 0,
        };
        let addrs = [
            a("fd00:1009:bacc::1", 1),
            a("fd00:1009:bacc:7::1", 4),
            a("2001:db8::1", 4),
        ];
        assert_eq!(misplaced(&p, 1, &addrs), vec![addrs[1]]);
    }

    /// `nft -j list ruleset` output (nft 1.0.6) for a foreign table with a
    /// policy-drop input chain, `iifname "lo" drop`, `iifname { "lo",
    /// "eth0" } reject`, and pandad's own table (never a conflict).
    fn ruleset(accept_lo: bool) -> Value {
        use serde_json::json;
        let chain = |table: &str, name: &str, hook: &str| {
            json!({"chain": {"family": "inet", "table": table, "name": name, "handle": 1,
                "type": "filter", "hook": hook, "prio": 0, "policy": "drop"}})
        };
        let mut objects = vec![
            json!({"metainfo": {"json_schema_version": 1}}),
            json!({"table": {"family": "inet", "name": "foreign", "handle": 1}}),
            chain("foreign", "in", "input"),
            chain("panda", "output", "output"),
        ];
        let mut rules = vec![
            ("foreign", "in", 2, json!("lo"), json!({"drop": null})),
            (
                "foreign",
                "in",
                3,
                json!({"set": ["lo", "eth0"]}),
                json!({"reject": {"type": "icmpx", "expr": "port-unreachable"}}),
            ),
            ("panda", "output", 4, json!("lo"), json!({"drop": null})),
        ];
        if accept_lo {
            rules.push(("foreign", "in", 5, json!("lo"), json!({"accept": null})));
        }
        for (table, chain, handle, right, verdict) in rules {
            objects.push(
                json!({"rule": {"family": "inet", "table": table, "chain": chain,
                "handle": handle, "expr": [
                    {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": right}},
                    verdict]}}),
            );
        }
        json!({ "nftables": objects })
    }

    #[test]
    fn foreign_lo_drops_are_found() {
        let found = nft_conflicts("panda", &ruleset(false));
        let what: Vec<_> = found.iter().map(|c| c.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "table inet foreign in: a rule matching lo does drop (handle 2)",
                "table inet foreign in: a rule matching lo does reject (handle 3)",
                "table inet foreign in: input hook with policy drop and no accept for lo",
            ]
        );
        assert_eq!(found[0].fix, "nft delete rule inet foreign in handle 2");
        assert_eq!(
            found[2].fix,
            "nft insert rule inet foreign in iifname lo accept"
        );
        // An accept for lo settles the policy, not the drops.
        assert_eq!(nft_conflicts("panda", &ruleset(true)).len(), 2);
        assert!(nft_conflicts("panda", &serde_json::json!({"nftables": []})).is_empty());
    }

    #[test]
    fn render_one_line_each() {
        let checks = [
            ok("route", "fine"),
            fail("daemon", "not answering", "start pandad"),
        ];
        assert_eq!(
            render(&checks),
            "ok    route             fine\nFAIL  daemon            not answering -- fix: start pandad\n"
        );
        assert!(failed(&checks) && !failed(&checks[..1]));
        let json = serde_json::to_value(&checks[1]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"check": "daemon", "status": "fail",
                "detail": "not answering", "fix": "start pandad"})
        );
    }
}
