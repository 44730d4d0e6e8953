//! pandad's local API: one request line in, one reply out, over a unix
//! stream socket (mode 0660, owned by root and `socket_group`, else root's
//! group). `panda status` and `panda metrics` are its clients.
//!
//! Requests: `status` (one JSON line) and `metrics` (Prometheus text
//! exposition format, up to the end of the stream), or one JSON object
//! (`{"op": "lease", ...}`, see [`leases::Request`]) answered with one JSON
//! line. Anything else gets `{"error": "..."}`. With `metrics_listen`, the
//! same metrics are also served over HTTP on a loopback address
//! ([`MetricsServer`]).
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{bpf::Bpf, leases, reconcile::Repairs};

/// Whether binds and sends that bypass the cgroup hooks are held to the
/// kernel's rules (see docs/ARCHITECTURE.md, "Paths that skip the hooks").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hookless {
    /// Raw and ping socket binds: "closed" when the LSM program runs,
    /// "open" when the bpf LSM is not active (or not needed: freebind mode
    /// leaves the kernel's own check in place, reported "kernel").
    pub raw_ping_bind: String,
    /// ICMPv6 sent from a non-local source: "closed" by the nftables backstop.
    pub icmp_send: String,
}

/// What `panda status --json` prints. Field names are a contract with
/// scripts and tests: add fields, never rename them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The served prefix, e.g. "fd00:1009:bacc::/48".
    pub prefix: String,
    /// The address added to `lo`, the local route's source.
    pub anchor: String,
    /// "freebind" or "guard".
    pub mechanism: String,
    /// Set-up is complete (a status answer implies it today).
    pub ready: bool,
    pub pid: u32,
    pub uptime_secs: u64,
    /// Where bind6 is attached.
    pub cgroup: String,
    /// The network namespace served (`SO_NETNS_COOKIE`).
    pub netns_cookie: u64,
    /// The nftables table, e.g. "inet panda".
    pub table: String,
    pub hookless: Hookless,
    /// [`panda_common::counter::NAMES`] → total over all CPUs. Kept across
    /// restarts (the map is pinned).
    pub counters: std::collections::BTreeMap<String, u64>,
    /// What the self-healing put back since this pandad started, by kind
    /// (`anchor`, `route`, `table`, `sysctl`, `link_bind6`, …).
    #[serde(default)]
    pub repairs: std::collections::BTreeMap<String, u64>,
    /// This pandad took over a predecessor's pinned links (a restart or a
    /// crash) instead of attaching afresh.
    #[serde(default)]
    pub adopted: bool,
    /// Where the links are pinned.
    #[serde(default)]
    pub pin_dir: String,
    /// Addresses leased (`panda leases` lists them).
    #[serde(default)]
    pub leases: u64,
}

/// Everything `status` answers with: the fixed part decided at start-up plus
/// counters read from the BPF maps per request.
pub struct StatusSource {
    pub base: Status,
    pub started: Instant,
    pub bpf: Arc<Mutex<Bpf>>,
    pub repairs: Arc<Repairs>,
    pub leases: Arc<std::sync::atomic::AtomicU64>,
}

impl StatusSource {
    fn snapshot(&self) -> Result<Status> {
        let mut s = self.base.clone();
        s.uptime_secs = self.started.elapsed().as_secs();
        let bpf = self
            .bpf
            .lock()
            .map_err(|_| anyhow::anyhow!("BPF state poisoned"))?;
        let values = bpf.counters()?;
        s.counters = panda_common::counter::NAMES
            .iter()
            .zip(values)
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        s.repairs = self.repairs.snapshot();
        s.leases = self.leases.load(std::sync::atomic::Ordering::Relaxed);
        Ok(s)
    }
}

/// Prometheus text exposition of a status: counters, repairs, uptime.
/// Metric names are a contract with dashboards: add, never rename.
pub fn prometheus(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let labels = format!("prefix=\"{}\",mechanism=\"{}\"", s.prefix, s.mechanism);
    let _ = writeln!(
        out,
        "# HELP panda_info The subnet served and the mechanism in force (always 1).\n\
         # TYPE panda_info gauge\npanda_info{{{labels}}} 1"
    );
    let _ = writeln!(
        out,
        "# HELP panda_uptime_seconds Seconds since this pandad became ready.\n\
         # TYPE panda_uptime_seconds gauge\npanda_uptime_seconds {}",
        s.uptime_secs
    );
    let _ = writeln!(
        out,
        "# HELP panda_leases Addresses leased to cgroups.\n\
         # TYPE panda_leases gauge\npanda_leases {}",
        s.leases
    );
    let _ = writeln!(
        out,
        "# HELP panda_events_total What the BPF programs counted, by event (kept across restarts).\n\
         # TYPE panda_events_total counter"
    );
    for (k, v) in &s.counters {
        let _ = writeln!(out, "panda_events_total{{event=\"{k}\"}} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP panda_repairs_total Kernel state the self-healing restored, by kind.\n\
         # TYPE panda_repairs_total counter"
    );
    for kind in REPAIR_KINDS {
        let v = s.repairs.get(*kind).copied().unwrap_or(0);
        let _ = writeln!(out, "panda_repairs_total{{kind=\"{kind}\"}} {v}");
    }
    out
}

/// Every kind of repair, so that the metrics show zeros before the first.
pub const REPAIR_KINDS: &[&str] = &[
    "anchor",
    "route",
    "table",
    "sysctl",
    "link_bind6",
    "link_sendmsg6",
    "link_socket_bind",
];

/// The optional HTTP endpoint for Prometheus (`metrics_listen`): answers
/// every request with the metrics; loopback only (config enforces it).
pub struct MetricsServer {
    listener: tokio::net::TcpListener,
}

impl MetricsServer {
    pub async fn bind(addr: std::net::SocketAddr) -> Result<MetricsServer> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("config key `metrics_listen`: binding {addr}"))?;
        Ok(MetricsServer { listener })
    }

    /// Serves until the future is dropped.
    pub async fn serve(&self, source: Arc<StatusSource>) {
        loop {
            let Ok((mut stream, _)) = self.listener.accept().await else {
                continue;
            };
            let source = source.clone();
            tokio::spawn(async move {
                // Read the request head (any path gets the metrics).
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
                let (code, body) = match source.snapshot() {
                    Ok(s) => ("200 OK", prometheus(&s)),
                    Err(e) => ("500 Internal Server Error", format!("{e:#}\n")),
                };
                let reply = format!(
                    "HTTP/1.0 {code}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    }
}

/// The listening socket; removed from the filesystem on drop.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds `path`, replacing a stale socket file but never a live server;
    /// `group` (name or number) may use it besides root.
    pub async fn bind(path: &Path, group: Option<&str>) -> Result<Server> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                bail!(
                    "{} is in use by a running pandad; set `socket` to another path",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("setting permissions of {}", path.display()))?;
        if let Some(g) = group {
            let gid = resolve_group(g)?;
            std::os::unix::fs::chown(path, Some(0), Some(gid)).with_context(|| {
                format!(
                    "config key `socket_group`: giving {} to group {g}",
                    path.display()
                )
            })?;
        }
        Ok(Server {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serves requests until the task is dropped.
    pub async fn serve(&self, source: Arc<StatusSource>, leases: leases::Handle) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            let source = source.clone();
            let leases = leases.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &source, &leases).await {
                    tracing::debug!("API client: {e:#}");
                }
            });
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A group name or number as a gid.
fn resolve_group(g: &str) -> Result<u32> {
    if let Ok(gid) = g.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(grp)) => Ok(grp.gid.as_raw()),
        Ok(None) => bail!("config key `socket_group`: there is no group {g:?} on this host"),
        Err(e) => bail!("config key `socket_group`: looking up group {g:?}: {e}"),
    }
}

async fn answer(stream: UnixStream, source: &StatusSource, leases: &leases::Handle) -> Result<()> {
    // The kernel's word on who is asking: leases default to the caller's
    // cgroup, and `exec` moves only the caller's own child.
    let peer = stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .map(|pid| leases::Peer { pid: pid as u32 });
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let error = |e: String| serde_json::json!({ "error": e }).to_string() + "\n";
    if line.trim_start().starts_with('{') {
        let reply = match (serde_json::from_str::<leases::Request>(line.trim()), peer) {
            (Err(e), _) => error(format!("bad request: {e}")),
            (Ok(_), None) => {
                error("the kernel did not say who is asking (no SO_PEERCRED pid)".into())
            }
            (Ok(req), Some(peer)) => match leases.call(req, peer).await {
                Ok(v) => v.to_string() + "\n",
                Err(e) => error(e),
            },
        };
        w.write_all(reply.as_bytes()).await?;
        return Ok(());
    }
    let reply = match (line.trim(), source.snapshot()) {
        ("status", Ok(s)) => serde_json::to_string(&s)? + "\n",
        ("metrics", Ok(s)) => prometheus(&s),
        ("status" | "metrics", Err(e)) => error(format!("{e:#}")),
        (other, _) => error(format!("unknown request {other:?}")),
    };
    w.write_all(reply.as_bytes()).await?;
    Ok(())
}

/// Client side: one request, the whole reply as text.
pub fn request_text(path: &Path, what: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to pandad at {} (is it running? is this the right --socket?)",
            path.display()
        )
    })?;
    s.write_all(format!("{what}\n").as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    if text.starts_with("{\"error\"") {
        let v: serde_json::Value =
            serde_json::from_str(text.trim()).context("pandad sent an error that is not JSON")?;
        bail!("pandad: {}", v["error"].as_str().unwrap_or("error"));
    }
    Ok(text)
}

/// Client side: one request, one JSON reply.
pub fn request(path: &Path, what: &str) -> Result<serde_json::Value> {
    let line = request_text(path, what)?;
    let v: serde_json::Value =
        serde_json::from_str(&line).context("pandad sent a reply that is not JSON")?;
    if let Some(e) = v.get("error") {
        bail!("pandad: {}", e.as_str().unwrap_or("error"));
    }
    Ok(v)
}
