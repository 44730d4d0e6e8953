//! pandad's local API: one request line in, one JSON line out, over a unix
//! stream socket (mode 0660, root's group). `panda status` is its client.
//!
//! Requests: `status`. Anything else gets `{"error": "..."}`.
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

use crate::bpf::Bpf;

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
    /// [`panda_common::counter::NAMES`] → total over all CPUs.
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// Everything `status` answers with: the fixed part decided at start-up plus
/// counters read from the BPF maps per request.
pub struct StatusSource {
    pub base: Status,
    pub started: Instant,
    pub bpf: Arc<Mutex<Bpf>>,
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
        Ok(s)
    }
}

/// The listening socket; removed from the filesystem on drop.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds `path`, replacing a stale socket file but never a live server.
    pub async fn bind(path: &Path) -> Result<Server> {
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
        Ok(Server {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serves requests until the task is dropped.
    pub async fn serve(&self, source: Arc<StatusSource>) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            let source = source.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &source).await {
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

async fn answer(stream: UnixStream, source: &StatusSource) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let reply = match line.trim() {
        "status" => match source.snapshot() {
            Ok(s) => serde_json::to_string(&s)?,
            Err(e) => serde_json::json!({ "error": format!("{e:#}") }).to_string(),
        },
        other => serde_json::json!({ "error": format!("unknown request {other:?}") }).to_string(),
    };
    w.write_all(reply.as_bytes()).await?;
    w.write_all(b"\n").await?;
    Ok(())
}

/// Client side: one request, one reply.
pub fn request(path: &Path, what: &str) -> Result<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to pandad at {} (is it running? is this the right --socket?)",
            path.display()
        )
    })?;
    s.write_all(format!("{what}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line)?;
    let v: serde_json::Value =
        serde_json::from_str(&line).context("pandad sent a reply that is not JSON")?;
    if let Some(e) = v.get("error") {
        bail!("pandad: {}", e.as_str().unwrap_or("error"));
    }
    Ok(v)
}
