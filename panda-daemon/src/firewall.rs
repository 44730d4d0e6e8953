//! The `inet <table>` nftables table that keeps the prefix on `lo`.
//!
//! The `local PREFIX dev lo` route makes the whole prefix local, which on its
//! own would also make it reachable from the network (a neighbour routing
//! PREFIX at us gets answers) and lets prefix-sourced packets leave through a
//! real interface. This table forbids both, so the prefix stays as private
//! as 127.0.0.0/8 (which the kernel confines to `lo` by itself).
//!
//! `nft list table inet panda` reads, for the default prefix:
//!
//! ```text
//! table inet panda {
//!     chain input {
//!         type filter hook input priority filter; policy accept;
//!         iifname != "lo" ip6 saddr fd00:1009:bacc::/48 drop comment "..."
//!         iifname != "lo" ip6 daddr fd00:1009:bacc::/48 drop comment "..."
//!     }
//!     chain forward { ... ip6 saddr/daddr PREFIX drop }
//!     chain output {
//!         ... oifname != "lo" ip6 saddr/daddr PREFIX drop
//!         meta l4proto ipv6-icmp ip6 saddr != { ::, fe80::/10 }
//!             fib saddr type != { local, anycast } drop comment "..."
//!     }
//! }
//! ```
//!
//! Implementation: the ruleset is built with the `nftables` crate's JSON
//! schema types and fed to `nft -j -f -` by [`run_nft`] here rather than by
//! the crate's `apply_ruleset`, which lets nft's stderr go to ours and so
//! cannot put nft's own explanation into the error. Every change is one nft
//! invocation, i.e. one atomic netfilter transaction. Only the named table
//! is ever touched.
use std::{
    borrow::Cow,
    collections::HashSet,
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{bail, Context};
use nftables::{
    batch::Batch,
    expr::{
        Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
        SetItem,
    },
    schema::{Chain, NfListObject, NfObject, Nftables, Rule, Table},
    stmt::{Match, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};

use crate::config::{valid_table_name, Prefix};

/// The `nft` executable (looked up in PATH).
pub const NFT: &str = "nft";

/// Base-chain priority: nft's named priority `filter` (NF_IP6_PRI_FILTER =
/// 0), the conventional slot for filtering. Drops here are final whatever
/// other tables accept, since a drop in any base chain drops the packet.
pub const FILTER_PRIORITY: i32 = 0;

/// The ICMPv6 backstop's comment; also explains the rule to readers of this
/// source: ping and raw sockets do not go through the cgroup bind/connect
/// hooks, so a process could otherwise send ICMPv6 from an address that is
/// not configured here (e.g. another host's, with IP_FREEBIND or
/// ip_nonlocal_bind on). `::` (DAD) and link-local sources are exempt:
/// neighbour discovery needs them and fib has no route to judge them by.
const ICMP_BACKSTOP_COMMENT: &str =
    "panda: no ICMPv6 from a source address that is not local (ping/raw sockets bypass the bind hooks)";

/// Runs `nft -j -f -` with `payload` as one transaction; `what` describes
/// the change for the error message, which carries nft's stderr.
fn run_nft(payload: &str, what: &str) -> anyhow::Result<String> {
    let mut child = Command::new(NFT)
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: running `{NFT} -j -f -`"))?;
    // nft reads all of its input before it writes anything, so writing
    // first and collecting the output afterwards cannot deadlock.
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(payload.as_bytes()),
        None => Ok(()),
    };
    let out = child
        .wait_with_output()
        .with_context(|| format!("{what}: waiting for `{NFT}`"))?;
    if !out.status.success() {
        bail!(
            "{what}: `{NFT} -j -f -` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    written.with_context(|| format!("{what}: writing the ruleset to `{NFT}`"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check_name(table: &str) -> anyhow::Result<()> {
    if !valid_table_name(table) {
        bail!("{table:?} is not a valid nftables table name for panda");
    }
    Ok(())
}

fn table_obj(table: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::INet,
        name: Cow::Owned(table.to_owned()),
        handle: None,
    })
}

fn base_chain(table: &str, name: &'static str, hook: NfHook) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: Cow::Owned(table.to_owned()),
        name: Cow::Borrowed(name),
        _type: Some(NfChainType::Filter),
        hook: Some(hook),
        prio: Some(FILTER_PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

/// `ip6 saddr` / `ip6 daddr`.
fn ip6(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed("ip6"),
            field: Cow::Borrowed(field),
        },
    )))
}

fn prefix_expr(addr: String, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(nftables::expr::Prefix {
        addr: Box::new(Expression::String(Cow::Owned(addr))),
        len: u32::from(len),
    }))
}

fn string(s: &'static str) -> Expression<'static> {
    Expression::String(Cow::Borrowed(s))
}

fn set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

fn rule(
    table: &str,
    chain: &'static str,
    mut expr: Vec<Statement<'static>>,
    comment: String,
) -> NfListObject<'static> {
    expr.push(Statement::Drop(None));
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: Cow::Owned(table.to_owned()),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        comment: Some(Cow::Owned(comment)),
        ..Rule::default()
    })
}

/// The transaction [`install`] runs: (re)create the table with its chains
/// and rules. Public so tests and `--dry-run`-style tooling can inspect it.
pub fn ruleset(table: &str, prefix: &Prefix) -> Nftables<'static> {
    let p = || prefix_expr(prefix.network().to_string(), prefix.len());
    let lo = || string("lo");
    let mut b = Batch::new();
    // Replace atomically: `add` makes the table exist (a no-op if it does),
    // so the `delete` cannot fail, and the second `add` starts afresh.
    b.add(table_obj(table));
    b.delete(table_obj(table));
    b.add(table_obj(table));
    b.add(base_chain(table, "input", NfHook::Input));
    b.add(base_chain(table, "forward", NfHook::Forward));
    b.add(base_chain(table, "output", NfHook::Output));

    for (field, dir) in [("saddr", "from"), ("daddr", "to")] {
        b.add(rule(
            table,
            "input",
            vec![
                matches(meta(MetaKey::Iifname), Operator::NEQ, lo()),
                matches(ip6(field), Operator::EQ, p()),
            ],
            format!("panda: {prefix} is node-local; drop packets {dir} it arriving from off-host"),
        ));
    }
    for (field, dir) in [("saddr", "from"), ("daddr", "to")] {
        b.add(rule(
            table,
            "forward",
            vec![matches(ip6(field), Operator::EQ, p())],
            format!("panda: {prefix} is node-local; never route packets {dir} it"),
        ));
    }
    for (field, dir) in [("saddr", "from"), ("daddr", "to")] {
        b.add(rule(
            table,
            "output",
            vec![
                matches(meta(MetaKey::Oifname), Operator::NEQ, lo()),
                matches(ip6(field), Operator::EQ, p()),
            ],
            format!("panda: {prefix} is node-local; keep packets {dir} it off real interfaces"),
        ));
    }
    let mut fib_flags = HashSet::new();
    fib_flags.insert(FibFlag::Saddr);
    b.add(rule(
        table,
        "output",
        vec![
            matches(meta(MetaKey::L4proto), Operator::EQ, string("ipv6-icmp")),
            matches(
                ip6("saddr"),
                Operator::NEQ,
                set(vec![string("::"), prefix_expr("fe80::".to_owned(), 10)]),
            ),
            matches(
                Expression::Named(NamedExpression::Fib(Fib {
                    result: FibResult::Type,
                    flags: fib_flags,
                })),
                Operator::NEQ,
                set(vec![string("local"), string("anycast")]),
            ),
        ],
        ICMP_BACKSTOP_COMMENT.to_owned(),
    ));
    b.to_nftables()
}

/// Creates table `inet <table>` with panda's rules for `prefix`, replacing
/// it if it exists, in one atomic transaction (no moment without rules).
pub fn install(table: &str, prefix: &Prefix) -> anyhow::Result<()> {
    let what = format!("installing nftables table inet {table} for {prefix}");
    check_name(table).context(what.clone())?;
    let json = serde_json::to_string(&ruleset(table, prefix))
        .with_context(|| format!("{what}: serializing the ruleset"))?;
    run_nft(&json, &what)?;
    Ok(())
}

/// Deletes table `inet <table>`; Ok if it does not exist. Atomic and
/// race-free: `add` + `delete` in one transaction.
pub fn remove(table: &str) -> anyhow::Result<()> {
    let what = format!("removing nftables table inet {table}");
    check_name(table).context(what.clone())?;
    let mut b = Batch::new();
    b.add(table_obj(table));
    b.delete(table_obj(table));
    let json = serde_json::to_string(&b.to_nftables())
        .with_context(|| format!("{what}: serializing the request"))?;
    run_nft(&json, &what)?;
    Ok(())
}

/// Whether table `inet <table>` exists (e.g. left over by a crashed pandad).
pub fn exists(table: &str) -> anyhow::Result<bool> {
    let what = format!("checking whether nftables table inet {table} exists");
    check_name(table).context(what.clone())?;
    let listing: Nftables = list_json(&["tables", "inet"], &what)?;
    Ok(listing.objects.iter().any(|o| {
        matches!(o, NfObject::ListObject(NfListObject::Table(t))
            if t.family == NfFamily::INet && t.name == table)
    }))
}

/// `nft list table inet <table>` as text (no handles), or None when the
/// table does not exist: what [`crate::reconcile`] compares against the
/// listing taken right after [`install`] to notice any change to the table.
pub fn listing(table: &str) -> anyhow::Result<Option<String>> {
    let what = format!("listing nftables table inet {table}");
    check_name(table).context(what.clone())?;
    let out = Command::new(NFT)
        .args(["list", "table", "inet", table])
        .output()
        .with_context(|| format!("{what}: running `{NFT} list table inet {table}`"))?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        return Ok(None);
    }
    bail!("{what}: {} ({})", err.trim(), out.status)
}

/// The whole ruleset of this namespace, `nft -j list ruleset`, as JSON
/// (untyped: `panda doctor` reads other tools' rules, whose expressions the
/// typed schema may not know).
pub fn ruleset_json() -> anyhow::Result<serde_json::Value> {
    list_json(&["ruleset"], "listing the nftables ruleset")
}

/// `nft -j list ARGS…`, parsed; errors say `what` was being done.
fn list_json<T: serde::de::DeserializeOwned>(args: &[&str], what: &str) -> anyhow::Result<T> {
    let shown = format!("{NFT} -j list {}", args.join(" "));
    let out = Command::new(NFT)
        .args(["-j", "list"])
        .args(args)
        .output()
        .with_context(|| format!("{what}: running `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "{what}: `{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{what}: parsing the output of `{shown}`"))
}

/// A subscription to nf_tables change notifications of this namespace
/// (`NFNLGRP_NFTABLES`, what `nft monitor` listens to): any table, chain,
/// rule or set added or removed, by anyone. Each is only a nudge to compare
/// [`listing`] with what it should be.
pub struct Events {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    /// What the notifications read so far say, until their transaction's
    /// NEWGEN: kept here, not in [`Events::next_change`]'s future, because
    /// the reconciler drops that future whenever another of its timers
    /// fires first, and a transaction's notifications can span reads.
    pending: Change,
}

impl Events {
    /// Opens a NETLINK_NETFILTER socket in the calling thread's namespace
    /// and joins the nf_tables group.
    pub fn subscribe() -> anyhow::Result<Events> {
        use std::os::fd::FromRawFd;
        const NFNLGRP_NFTABLES: libc::c_int = 7;
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error())
                .context("opening a NETLINK_NETFILTER socket");
        }
        // SAFETY: raw is a fresh fd that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // Only a bound netlink socket is on the kernel's multicast lists.
        // SAFETY: a zeroed sockaddr_nl (pid 0: the kernel picks one).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sa is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                raw,
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .context("binding the NETLINK_NETFILTER socket");
        }
        let group = NFNLGRP_NFTABLES;
        // SAFETY: a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                &group as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .context("joining the nf_tables netlink group");
        }
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the
        // same file for the AsyncFd's whole life.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }
            .map_err(std::io::Error::from)
            .context("registering the nf_tables socket")?;
        Ok(Events {
            fd,
            pending: Change::default(),
        })
    }

    /// Waits for a transaction that concerns table `inet <table>` to end
    /// (its `NFT_MSG_NEWGEN`, so that one change is seen whole, however the
    /// kernel split its notifications between reads), and says what it did
    /// to the table. Changes to other tables are read and ignored. An
    /// overrun (ENOBUFS: notifications were lost) counts as a change of
    /// ours.
    pub async fn next_change(&mut self, table: &str) -> Change {
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; 1 << 16];
        // Cancellation-safe: the only await is `readable()`; everything read
        // is absorbed into `self.pending` before the next one.
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                std::future::pending::<()>().await;
                return std::mem::take(&mut self.pending);
            };
            loop {
                // SAFETY: buf is a valid writable buffer of its length.
                let n = unsafe {
                    libc::recv(
                        self.fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n >= 0 {
                    self.pending.absorb(&buf[..n as usize], table);
                    continue;
                }
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    _ => {
                        self.pending.touched = true;
                        self.pending.complete = true;
                        break;
                    }
                }
            }
            guard.clear_ready();
            if self.pending.touched && self.pending.complete {
                return std::mem::take(&mut self.pending);
            }
        }
    }
}

/// What a burst of nf_tables notifications did to pandad's table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Something in the table (or the table itself) changed, or may have.
    pub touched: bool,
    /// The table's last notification in the burst was its deletion (`nft
    /// flush ruleset`, `nft delete table`): no need to list it to know it
    /// must be re-installed. (pandad's own re-install deletes and re-adds
    /// it in one transaction: that ends with the addition.)
    pub deleted: bool,
    /// A transaction that touched the table has ended (NFT_MSG_NEWGEN).
    complete: bool,
}

impl Change {
    /// Reads the netlink messages in `buf`: nfnetlink messages of the
    /// nf_tables subsystem (type `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*`)
    /// start with a `nfgenmsg` (family first) and carry the table's name
    /// as attribute 1 (`NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`,
    /// `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`, `NFTA_SET_ELEM_LIST_TABLE`).
    fn absorb(&mut self, mut buf: &[u8], table: &str) {
        const NFNL_SUBSYS_NFTABLES: u16 = 10;
        const NFT_MSG_NEWTABLE: u16 = 0;
        const NFT_MSG_DELTABLE: u16 = 2;
        const NFT_MSG_NEWGEN: u16 = 15;
        const NFPROTO_INET: u8 = 1;
        while buf.len() >= 16 {
            let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len < 16 || len > buf.len() {
                return;
            }
            let ty = u16::from_ne_bytes([buf[4], buf[5]]);
            let body = &buf[16..len];
            if ty == (NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN) {
                self.complete |= self.touched;
            } else if ty >> 8 == NFNL_SUBSYS_NFTABLES
                && body.first() == Some(&NFPROTO_INET)
                && attr(body.get(4..).unwrap_or(&[]), 1) == Some(table.as_bytes())
            {
                self.touched = true;
                match ty & 0xff {
                    NFT_MSG_DELTABLE => self.deleted = true,
                    NFT_MSG_NEWTABLE => self.deleted = false,
                    _ => {}
                }
            }
            buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
        }
    }
}

/// The value of netlink attribute `want` among `attrs`, without the NUL
/// of a string.
fn attr(mut attrs: &[u8], want: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == want {
            let v = &attrs[4..len];
            return Some(v.strip_suffix(&[0]).unwrap_or(v));
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    //! Tests that run `nft` for real do so in their own fresh network
    //! namespace ([`crate::testns`]), so they need root and never see or
    //! change the host's ruleset.
    use super::*;
    use crate::testns;

    fn nft(args: &[&str]) -> String {
        let out = Command::new(NFT).args(args).output().expect("running nft");
        assert!(out.status.success(), "nft {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An nf_tables notification as the kernel sends it: nlmsghdr,
    /// nfgenmsg, then one string attribute (type 1: the table's name).
    fn notification(msg: u16, family: u8, table: &str) -> Vec<u8> {
        let mut name = table.as_bytes().to_vec();
        name.push(0);
        let alen = 4 + name.len();
        let mut attr = (alen as u16).to_ne_bytes().to_vec();
        attr.extend(1u16.to_ne_bytes());
        attr.extend(&name);
        attr.resize((alen + 3) & !3, 0);
        let len = 16 + 4 + attr.len();
        let mut m = (len as u32).to_ne_bytes().to_vec();
        m.extend(((10u16 << 8) | msg).to_ne_bytes());
        m.extend([0u8; 10]); // flags, seq, pid
        m.extend([family, 0, 0, 0]);
        m.extend(attr);
        m
    }

    #[test]
    fn notifications_are_matched_to_the_table() {
        let newgen = || notification(15, 0, "");
        let seen = |c: &Change| (c.touched, c.deleted, c.complete);
        let mut c = Change::default();
        c.absorb(&notification(6, 1, "other"), "panda"); // a rule elsewhere
        c.absorb(&notification(2, 2, "panda"), "panda"); // ip (not inet) panda
        c.absorb(&newgen(), "panda");
        assert_eq!(seen(&c), (false, false, false), "not ours");
        // A rule of ours deleted: complete only at the end of the transaction.
        let mut burst = notification(8, 1, "panda");
        burst.extend(notification(6, 1, "pandas"));
        c.absorb(&burst, "panda");
        assert_eq!(seen(&c), (true, false, false));
        c.absorb(&newgen(), "panda");
        assert_eq!(seen(&c), (true, false, true));
        // `nft flush ruleset`, split between two reads.
        let mut c = Change::default();
        c.absorb(&notification(8, 1, "panda"), "panda");
        let mut rest = notification(2, 1, "panda");
        rest.extend(newgen());
        c.absorb(&rest, "panda");
        assert_eq!(seen(&c), (true, true, true));
        // pandad's own re-install: delete and add in one transaction.
        let mut replace = notification(2, 1, "panda");
        replace.extend(notification(0, 1, "panda"));
        replace.extend(notification(6, 1, "panda"));
        replace.extend(newgen());
        let mut c = Change::default();
        c.absorb(&replace, "panda");
        assert_eq!(seen(&c), (true, false, true));
    }

    #[test]
    fn ruleset_json_shape() {
        let p: Prefix = "fd00:1009:bacc::/48".parse().unwrap();
        let json = serde_json::to_value(ruleset("panda", &p)).unwrap();
        let cmds = json["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 3 + 3 + 7);
        assert_eq!(cmds[0]["add"]["table"]["name"], "panda");
        assert_eq!(cmds[1]["delete"]["table"]["family"], "inet");
        assert_eq!(cmds[4]["add"]["chain"]["hook"], "forward");
        assert_eq!(cmds[4]["add"]["chain"]["prio"], 0);
        let text = json.to_string();
        assert!(
            text.contains(r#"{"prefix":{"addr":"fd00:1009:bacc::","len":48}}"#),
            "{text}"
        );
        for c in &cmds[6..] {
            assert!(c["add"]["rule"]["comment"]
                .as_str()
                .unwrap()
                .starts_with("panda: "));
            assert!(c["add"]["rule"]["comment"].as_str().unwrap().len() <= 128);
        }
        // nft caps comments at 128 bytes: check with the longest prefix text.
        let long: Prefix = "fd00:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"
            .parse()
            .unwrap();
        let json = serde_json::to_value(ruleset("panda", &long)).unwrap();
        for c in &json["nftables"].as_array().unwrap()[6..] {
            let comment = c["add"]["rule"]["comment"].as_str().unwrap();
            assert!(comment.len() <= 128, "{} bytes: {comment}", comment.len());
        }
    }

    #[test]
    fn bad_table_name_is_refused_before_nft() {
        let p: Prefix = "fd00::/16".parse().unwrap();
        let e = install("no-such table", &p).unwrap_err();
        assert!(format!("{e:#}").contains("installing nftables table inet no-such table"));
        assert!(remove("1x").is_err());
        assert!(exists("").is_err());
    }

    #[test]
    fn install_replace_remove_in_scratch_netns() {
        testns::run(|| {
            let t = "pandatest";
            let p: Prefix = "fd00:1009:bacc::/48".parse().unwrap();
            remove(t).unwrap(); // absent: Ok
            assert!(!exists(t).unwrap());
            install(t, &p).unwrap();
            assert!(exists(t).unwrap());
            let first = nft(&["list", "table", "inet", t]);
            println!("{first}");
            // Replacing gives the same table, not a second copy of every rule.
            install(t, &p).unwrap();
            assert_eq!(nft(&["list", "table", "inet", t]), first);
            assert_eq!(first.matches(" drop comment ").count(), 7, "{first}");
            assert!(first.contains("type filter hook input priority filter; policy accept;"));
            assert!(first.contains(
                "meta l4proto ipv6-icmp ip6 saddr != { ::, fe80::/10 } fib saddr type != { local, anycast } drop"
            ));
            // Another prefix replaces the old rules.
            let q: Prefix = "fd12::/16".parse().unwrap();
            install(t, &q).unwrap();
            let second = nft(&["list", "table", "inet", t]);
            assert!(second.contains("fd12::/16") && !second.contains("fd00:1009:bacc::/48"));
            remove(t).unwrap();
            assert!(!exists(t).unwrap());
            remove(t).unwrap();
        });
    }
}
