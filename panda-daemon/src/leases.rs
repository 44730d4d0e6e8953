//! Leases: prefix addresses reserved for one cgroup (a systemd unit, a
//! container, a test, a `panda exec` command) and everything below it, so
//! that two workloads can both listen on :8080 and neither can take the
//! other's address.
//!
//! Kernel contract this module relies on:
//!
//! - A cgroup's id is the inode number of its cgroupfs directory; it is what
//!   `bpf_get_current_ancestor_cgroup_id()` gives bind6, and 64-bit kernels
//!   never reuse one while they run. A lease names its holder by path *and*
//!   id: a cgroup removed and made again under the same path (a unit
//!   restarting) is another holder, and the old lease is stale.
//! - bind6 judges the task calling bind(), through its cgroup's ancestors
//!   at the levels that hold leases (panda-common's `lease` module says
//!   how); holders therefore sit at most [`lease::MAX_LEVEL`] levels deep,
//!   while the processes that inherit a lease may sit at any depth.
//! - Holders must be at or below the cgroup the hooks attach to: bind6 never
//!   runs for a socket outside it, so a lease there would not be enforced.
//!
//! One owner: [`Service`], a task that takes requests from the API, applies
//! a batch of them in memory, writes the store once ([`Store::save`]: temp
//! file, fsync, rename, fsync of the directory) and only then updates the
//! BPF maps and answers. So a lease is never answered before it is durable,
//! the maps never hold a lease the store does not, and a pandad started
//! after a crash re-applies exactly what was answered. Leases whose holder
//! is gone are collected at start, once a second, and before a request
//! would be refused because of them.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::Ipv6Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use panda_common::lease;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::{bpf::Bpf, config::Prefix};

/// The most addresses one request may lease.
pub const MAX_PER_REQUEST: u32 = 1024;

/// How often leases of vanished cgroups are looked for.
pub const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// The store's file name in `state_dir`.
pub const STORE_FILE: &str = "leases.json";

/// One leased address. Field names are a contract (`panda leases --json`
/// prints these): add fields, never rename them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub addr: Ipv6Addr,
    /// The holder, as /proc/PID/cgroup names it (`/system.slice/x.service`):
    /// relative to the cgroup2 root.
    pub cgroup: String,
    /// The holder's cgroup id (inode), so a re-made cgroup is not mistaken
    /// for it.
    pub cgroup_id: u64,
    /// The holder's depth below the cgroup2 root.
    pub level: u32,
    /// When the lease was made (seconds since the epoch).
    pub since: u64,
    /// Set when `panda exec` made the cgroup: the client that runs it, so
    /// that the cgroup is removed once that client is gone and it is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecOwner>,
}

/// A `panda exec` client, told from a later process with the same pid by
/// its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOwner {
    pub pid: u32,
    /// Field 22 of /proc/PID/stat (clock ticks since boot).
    pub start_time: u64,
}

/// What the store file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    /// The next address offset (host bits) auto-picking tries first: picks
    /// go round the prefix instead of reusing a just-released address.
    next: u128,
    leases: Vec<Lease>,
}

const STORE_VERSION: u32 = 1;

/// The durable lease table: `state_dir/leases.json`.
pub struct Store {
    path: PathBuf,
    leases: BTreeMap<Ipv6Addr, Lease>,
    next: u128,
}

impl Store {
    /// Reads the store; a missing file is an empty store. A file that does
    /// not parse is an error: dropping leases silently would hand them out
    /// twice.
    pub fn load(state_dir: &Path) -> Result<Store> {
        let path = state_dir.join(STORE_FILE);
        let file: StoreFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "the lease store {} is damaged (fix or remove it; removing it forgets every lease)",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoreFile {
                version: STORE_VERSION,
                ..StoreFile::default()
            },
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if file.version != STORE_VERSION {
            bail!(
                "the lease store {} has version {}; this pandad reads version {STORE_VERSION}",
                path.display(),
                file.version
            );
        }
        Ok(Store {
            path,
            leases: file.leases.into_iter().map(|l| (l.addr, l)).collect(),
            next: file.next,
        })
    }

    /// The file's bytes for the current table.
    fn encode(&self) -> Vec<u8> {
        let file = StoreFile {
            version: STORE_VERSION,
            next: self.next,
            leases: self.leases.values().cloned().collect(),
        };
        let mut out = serde_json::to_vec_pretty(&file).expect("leases always serialise");
        out.push(b'\n');
        out
    }

    /// Writes `bytes` so that a crash at any point leaves the old file or
    /// the new one, whole.
    fn save_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = path.with_extension("json.tmp");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
        Ok(())
    }

    /// Saves synchronously (start-up; the service saves off its thread).
    pub fn save(&self) -> Result<()> {
        Self::save_bytes(&self.path, &self.encode())
    }

    /// Every lease, by address.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }
}

/// The address words bind6 reads from `user_ip6`: each holds four address
/// bytes in network order, i.e. `u32::from_ne_bytes` of them.
pub fn addr_words(addr: &Ipv6Addr) -> [u32; 4] {
    let o = addr.octets();
    let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// A cgroup that may hold leases, resolved and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    /// Relative to the cgroup2 root, with a leading `/`.
    name: String,
    id: u64,
    level: u32,
}

/// Where cgroups are and where the hooks are attached.
#[derive(Clone, Debug)]
pub struct Cgroups {
    /// The cgroup2 mount point.
    pub root: PathBuf,
    /// Where bind6 is attached: holders must be at or below it. (Compared
    /// with canonical paths: [`Service::open`] canonicalizes it once.)
    pub attach: PathBuf,
    /// Where `panda exec` makes its cgroups.
    pub exec_parent: PathBuf,
}

impl Cgroups {
    fn fs_path(&self, name: &str) -> PathBuf {
        self.root.join(name.trim_start_matches('/'))
    }

    /// A cgroup given as a path under the cgroup2 mount
    /// (`/sys/fs/cgroup/a/b`) or as /proc/PID/cgroup names it (`/a/b`).
    fn resolve(&self, given: &str) -> Result<Holder> {
        let p = Path::new(given);
        let fs = if p.starts_with(&self.root) {
            p.to_owned()
        } else {
            self.fs_path(given)
        };
        let fs = fs.canonicalize().map_err(|_| {
            anyhow!(
                "cgroup {given} does not exist (give a path under {} or as /proc/PID/cgroup \
                 names it)",
                self.root.display()
            )
        })?;
        if !fs.join("cgroup.procs").exists() {
            bail!(
                "{given} is not a cgroup (no cgroup.procs in {})",
                fs.display()
            );
        }
        let rel = fs.strip_prefix(&self.root).map_err(|_| {
            anyhow!(
                "{given} is not inside the cgroup2 hierarchy at {}",
                self.root.display()
            )
        })?;
        let level = rel.components().count() as u32;
        if level == 0 {
            bail!("the cgroup2 root cannot hold a lease: it would hold it for every process");
        }
        if level > lease::MAX_LEVEL {
            bail!(
                "cgroup {given} is {level} levels deep; a lease can be held at most {} levels \
                 below the root (its processes may sit deeper)",
                lease::MAX_LEVEL
            );
        }
        if !fs.starts_with(&self.attach) {
            bail!(
                "cgroup {given} is outside {}, where panda's hooks are attached: a lease there \
                 would not be enforced",
                self.attach.display()
            );
        }
        Ok(Holder {
            name: format!("/{}", rel.display()),
            id: crate::pins::cgroup_id(&fs)?,
            level,
        })
    }

    /// The cgroup of process `pid`.
    fn of_pid(&self, pid: u32) -> Result<Holder> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| anyhow!("process {pid} is in no cgroup v2 cgroup"))?;
        self.resolve(name)
            .with_context(|| format!("the requesting process's own cgroup {name}"))
    }

    /// The cgroup of a systemd unit, from `systemctl show`.
    fn of_unit(&self, unit: &str) -> Result<Holder> {
        if unit.is_empty() || unit.starts_with('-') || unit.contains(char::is_whitespace) {
            bail!("{unit:?} is not a unit name");
        }
        let out = std::process::Command::new("systemctl")
            .args(["show", "--property=ControlGroup", "--value", "--", unit])
            .output()
            .map_err(|e| {
                anyhow!("--unit needs systemd, but systemctl did not run ({e}); use --cgroup")
            })?;
        let cg = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || cg.is_empty() {
            bail!("unit {unit} has no cgroup: it is not running (or not loaded)");
        }
        self.resolve(&cg).with_context(|| format!("unit {unit}"))
    }

    /// Whether `holder` still exists: same path, same id.
    fn alive(&self, lease: &Lease) -> bool {
        crate::pins::cgroup_id(&self.fs_path(&lease.cgroup)).ok() == Some(lease.cgroup_id)
    }
}

/// Who sent a request (SO_PEERCRED).
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub pid: u32,
}

/// Requests the API passes on. The JSON spelling (`{"op": "lease", ...}`) is
/// the API's contract with `panda` and any other client.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Lease `addrs`, or `count` auto-picked addresses (default 1), to a
    /// cgroup (`cgroup`, `unit`, or else the requester's own).
    Lease {
        #[serde(default)]
        cgroup: Option<String>,
        #[serde(default)]
        unit: Option<String>,
        #[serde(default)]
        addrs: Vec<Ipv6Addr>,
        #[serde(default)]
        count: Option<u32>,
    },
    /// Release `addrs`, or every lease of a cgroup.
    Release {
        #[serde(default)]
        cgroup: Option<String>,
        #[serde(default)]
        unit: Option<String>,
        #[serde(default)]
        addrs: Vec<Ipv6Addr>,
    },
    /// List every lease.
    Leases,
    /// `panda exec`: make a cgroup, lease `addr` (None: auto) to it and move
    /// `pid`, the requester's child waiting to exec the command, into it.
    Exec {
        #[serde(default)]
        addr: Option<Ipv6Addr>,
        pid: u32,
    },
    /// `panda exec`'s command has exited: kill what is left in its cgroup,
    /// remove the cgroup and release its lease.
    ExecDone { cgroup: String },
}

/// A request on its way to the service, with where to send the answer.
struct Job {
    req: Request,
    peer: Peer,
    reply: oneshot::Sender<Result<serde_json::Value, String>>,
}

/// The API's end of the service.
#[derive(Clone)]
pub struct Handle(mpsc::Sender<Job>);

impl Handle {
    /// Sends a request and waits for its answer (the error text is the
    /// user's to read).
    pub async fn call(&self, req: Request, peer: Peer) -> Result<serde_json::Value, String> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(Job {
                req,
                peer,
                reply: tx,
            })
            .await
            .map_err(|_| "pandad is stopping".to_owned())?;
        rx.await.map_err(|_| "pandad is stopping".to_owned())?
    }
}

/// The lease table's only owner while pandad runs.
pub struct Service {
    store: Store,
    cgroups: Cgroups,
    prefix: Prefix,
    /// What the BPF maps hold, to update them by difference.
    in_maps: BTreeMap<Ipv6Addr, (u64, u32)>,
    holders_in_maps: BTreeMap<u64, u32>,
    levels_in_maps: u64,
    /// Names of exec cgroups made so far (unique per pandad).
    exec_serial: u64,
    /// The number of leases, for `panda status` and the metrics.
    count: Arc<std::sync::atomic::AtomicU64>,
}

/// Seconds since the epoch.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Field 22 (start time) and field 4 (parent pid) of /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(u64, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3: state, ppid (4), ..., starttime (22).
    Some((f.get(19)?.parse().ok()?, f.get(1)?.parse().ok()?))
}

/// Whether the exec client that made a cgroup still runs.
fn owner_alive(o: &ExecOwner) -> bool {
    proc_stat(o.pid).is_some_and(|(start, _)| start == o.start_time)
}

/// Whether a cgroup has no process left in it or below it.
fn unpopulated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 0"))
        .unwrap_or(true)
}

impl Service {
    /// Loads the store, collects leases whose cgroup vanished while no
    /// pandad ran, and fills the (fresh) BPF maps. Runs before any hook is
    /// attached or swapped, so the programs start with every lease.
    pub fn open(
        state_dir: &Path,
        mut cgroups: Cgroups,
        prefix: Prefix,
        bpf: &mut Bpf,
    ) -> Result<Service> {
        if !cgroups.exec_parent.starts_with(&cgroups.attach) {
            bail!(
                "config key `exec_cgroup`: {} is outside {}, where panda's hooks are attached; \
                 `panda exec`'s leases there would not be enforced",
                cgroups.exec_parent.display(),
                cgroups.attach.display()
            );
        }
        // It exists: start-up validated it.
        cgroups.attach = cgroups
            .attach
            .canonicalize()
            .with_context(|| format!("resolving cgroup {}", cgroups.attach.display()))?;
        let store = Store::load(state_dir)?;
        let mut s = Service {
            store,
            cgroups,
            prefix,
            in_maps: BTreeMap::new(),
            holders_in_maps: BTreeMap::new(),
            levels_in_maps: 0,
            exec_serial: 0,
            count: Arc::default(),
        };
        let outside: Vec<Ipv6Addr> = s
            .store
            .leases
            .keys()
            .filter(|a| !s.prefix.contains(a))
            .copied()
            .collect();
        for a in &outside {
            warn!(
                "dropping the lease of {a}: it is outside the prefix {}",
                s.prefix
            );
            s.store.leases.remove(a);
        }
        let collected = s.collect();
        if !collected.is_empty() || !outside.is_empty() {
            s.store.save()?;
        }
        s.sync_maps(bpf)?;
        if !s.store.leases.is_empty() {
            info!("{} lease(s) in force", s.store.leases.len());
        }
        Ok(s)
    }

    /// Removes leases whose holder is gone (and exec cgroups whose client
    /// is gone and whose processes have all exited); returns what went.
    fn collect(&mut self) -> Vec<Lease> {
        let cg = &self.cgroups;
        let mut gone = Vec::new();
        let mut removed_dirs = BTreeSet::new();
        self.store.leases.retain(|_, l| {
            let alive = cg.alive(l);
            let exec_over = alive
                && l.exec.is_some_and(|o| !owner_alive(&o))
                && unpopulated(&cg.fs_path(&l.cgroup));
            if exec_over && !removed_dirs.contains(&l.cgroup) {
                let dir = cg.fs_path(&l.cgroup);
                if let Err(e) = std::fs::remove_dir(&dir) {
                    warn!("removing the exec cgroup {}: {e}", dir.display());
                    return true;
                }
                removed_dirs.insert(l.cgroup.clone());
            }
            if alive && !exec_over && !removed_dirs.contains(&l.cgroup) {
                return true;
            }
            gone.push(l.clone());
            false
        });
        for l in &gone {
            info!(
                "collected the lease of {} (cgroup {} is gone)",
                l.addr, l.cgroup
            );
        }
        gone
    }

    /// Makes the maps say what the store says.
    fn sync_maps(&mut self, bpf: &mut Bpf) -> Result<()> {
        let wanted: BTreeMap<Ipv6Addr, (u64, u32)> = self
            .store
            .leases
            .values()
            .map(|l| (l.addr, (l.cgroup_id, l.level)))
            .collect();
        let mut holders: BTreeMap<u64, u32> = BTreeMap::new();
        let mut levels = 0u64;
        for (id, level) in wanted.values() {
            *holders.entry(*id).or_default() += 1;
            levels |= 1 << level;
        }
        // Additions first, removals last, the level mask in between: a
        // holder is never without its marks while it holds an address.
        for (addr, v) in &wanted {
            if self.in_maps.get(addr) != Some(v) {
                let l = panda_common::Lease {
                    cgroup_id: v.0,
                    level: v.1,
                    _reserved: 0,
                };
                bpf.lease_put(addr_words(addr), l)?;
            }
        }
        for (id, n) in &holders {
            if self.holders_in_maps.get(id) != Some(n) {
                bpf.holder_set(*id, *n)?;
            }
        }
        if levels | self.levels_in_maps != self.levels_in_maps {
            bpf.set_lease_levels(levels | self.levels_in_maps)?;
        }
        for addr in self.in_maps.keys().filter(|a| !wanted.contains_key(a)) {
            bpf.lease_delete(addr_words(addr))?;
        }
        for id in self
            .holders_in_maps
            .keys()
            .filter(|i| !holders.contains_key(i))
        {
            bpf.holder_set(*id, 0)?;
        }
        if levels != self.levels_in_maps {
            bpf.set_lease_levels(levels)?;
        }
        self.count
            .store(wanted.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.in_maps = wanted;
        self.holders_in_maps = holders;
        self.levels_in_maps = levels;
        Ok(())
    }

    /// The number of leases in force, kept current by the service.
    pub fn count(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.count.clone()
    }

    /// Serves requests until the future is dropped. The handle goes to the
    /// API server.
    pub fn start(self, bpf: Arc<Mutex<Bpf>>) -> (Handle, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(4096);
        (Handle(tx), self.run(bpf, rx))
    }

    async fn run(mut self, bpf: Arc<Mutex<Bpf>>, mut rx: mpsc::Receiver<Job>) {
        let mut tick = tokio::time::interval(COLLECT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut batch = Vec::new();
            tokio::select! {
                job = rx.recv() => match job {
                    Some(j) => batch.push(j),
                    None => return std::future::pending().await,
                },
                _ = tick.tick() => {
                    if !self.collect().is_empty() {
                        if let Err(e) = self.commit(&bpf).await {
                            warn!("saving the leases after collecting: {e:#}");
                        }
                    }
                    continue;
                }
            }
            // Everything already queued joins the batch: one write for all.
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.serve_batch(batch, &bpf).await;
        }
    }

    async fn serve_batch(&mut self, batch: Vec<Job>, bpf: &Arc<Mutex<Bpf>>) {
        let before_leases = self.store.leases.clone();
        let before_next = self.store.next;
        let mut answers = Vec::with_capacity(batch.len());
        let mut changed = false;
        for job in batch {
            let mut undo = Undo::default();
            let answer = self.apply(&job.req, job.peer, &mut undo);
            if answer.is_err() {
                std::mem::take(&mut undo).run(&mut self.store);
            }
            changed |= answer.as_ref().is_ok_and(|(c, _)| *c);
            answers.push((job.reply, answer.map(|(_, v)| v), undo));
        }
        let committed = if changed {
            self.commit(bpf).await
        } else {
            Ok(())
        };
        if let Err(e) = &committed {
            self.store.leases = before_leases;
            self.store.next = before_next;
            warn!("saving the leases: {e:#}");
        }
        for (reply, answer, undo) in answers {
            let answer = match (&committed, answer) {
                (Ok(()), a) => a.map_err(|e| format!("{e:#}")),
                (Err(e), Ok(_)) => {
                    undo.run(&mut self.store);
                    Err(format!("the lease store could not be saved: {e:#}"))
                }
                (Err(_), Err(e)) => Err(format!("{e:#}")),
            };
            let _ = reply.send(answer);
        }
    }

    /// Saves the store (off the async thread), then updates the maps.
    async fn commit(&mut self, bpf: &Arc<Mutex<Bpf>>) -> Result<()> {
        let bytes = self.store.encode();
        let path = self.store.path.clone();
        tokio::task::spawn_blocking(move || Store::save_bytes(&path, &bytes))
            .await
            .map_err(|e| anyhow!("the saving thread failed: {e}"))??;
        let mut bpf = bpf.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_maps(&mut bpf)
    }

    /// One request against the in-memory table: (whether it changed the
    /// table, the answer). Filesystem changes it makes are noted in `undo`.
    fn apply(
        &mut self,
        req: &Request,
        peer: Peer,
        undo: &mut Undo,
    ) -> Result<(bool, serde_json::Value)> {
        match req {
            Request::Leases => {
                let all: Vec<&Lease> = self.store.leases.values().collect();
                Ok((false, serde_json::json!({ "leases": all })))
            }
            Request::Lease {
                cgroup,
                unit,
                addrs,
                count,
            } => {
                let holder = self.holder(cgroup.as_deref(), unit.as_deref(), peer)?;
                let got = self.lease(&holder, addrs, *count, None)?;
                Ok((
                    true,
                    serde_json::json!({ "cgroup": holder.name, "addrs": got }),
                ))
            }
            Request::Release {
                cgroup,
                unit,
                addrs,
            } => {
                let holder = if cgroup.is_some() || unit.is_some() || addrs.is_empty() {
                    Some(self.holder_name(cgroup.as_deref(), unit.as_deref(), peer)?)
                } else {
                    None
                };
                let gone = self.release(holder.as_deref(), addrs)?;
                Ok((true, serde_json::json!({ "addrs": gone })))
            }
            Request::Exec { addr, pid } => {
                let (name, got) = self.exec(*addr, *pid, peer, undo)?;
                Ok((true, serde_json::json!({ "cgroup": name, "addrs": got })))
            }
            Request::ExecDone { cgroup } => {
                let gone = self.exec_done(cgroup, peer)?;
                Ok((true, serde_json::json!({ "addrs": gone })))
            }
        }
    }

    fn holder(&self, cgroup: Option<&str>, unit: Option<&str>, peer: Peer) -> Result<Holder> {
        match (cgroup, unit) {
            (Some(_), Some(_)) => bail!("give --cgroup or --unit, not both"),
            (Some(c), None) => self.cgroups.resolve(c),
            (None, Some(u)) => self.cgroups.of_unit(u),
            (None, None) => self.cgroups.of_pid(peer.pid),
        }
    }

    /// The holder a release names; a cgroup that no longer exists can still
    /// be named by its path (its leases are released).
    fn holder_name(&self, cgroup: Option<&str>, unit: Option<&str>, peer: Peer) -> Result<String> {
        if let (Some(c), None) = (cgroup, unit) {
            let rel = Path::new(c)
                .strip_prefix(&self.cgroups.root)
                .map(|r| format!("/{}", r.display()))
                .unwrap_or_else(|_| format!("/{}", c.trim_start_matches('/')));
            if self.store.leases.values().any(|l| l.cgroup == rel) {
                return Ok(rel);
            }
        }
        Ok(self.holder(cgroup, unit, peer)?.name)
    }

    /// Whether `addr` may ever be leased: inside the prefix, neither the
    /// anchor (pandad's own) nor the subnet-router anycast address.
    fn leasable(&self, addr: &Ipv6Addr) -> Result<()> {
        if !self.prefix.contains(addr) {
            bail!("{addr} is outside the prefix {}", self.prefix);
        }
        if *addr == self.prefix.anchor() {
            bail!("{addr} is the prefix's anchor address, which pandad keeps on lo");
        }
        if *addr == self.prefix.network() {
            bail!("{addr} is the prefix's subnet-router anycast address");
        }
        Ok(())
    }

    /// The number of leasable addresses in the prefix (saturating).
    fn capacity(&self) -> u128 {
        let host_bits = 128 - self.prefix.len() as u32;
        if host_bits >= 127 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 2
        }
    }

    fn lease(
        &mut self,
        holder: &Holder,
        addrs: &[Ipv6Addr],
        count: Option<u32>,
        exec: Option<ExecOwner>,
    ) -> Result<Vec<Ipv6Addr>> {
        if !addrs.is_empty() && count.is_some() {
            bail!("give addresses or a count, not both");
        }
        let count = match count {
            Some(0) => bail!("a count of 0 leases nothing; give 1 or more"),
            Some(n) if n > MAX_PER_REQUEST => {
                bail!("a count of {n} is too many: at most {MAX_PER_REQUEST} addresses per request")
            }
            Some(n) => n as usize,
            None if addrs.is_empty() => 1,
            None => 0,
        };
        if addrs.len() > MAX_PER_REQUEST as usize {
            bail!(
                "{} addresses are too many: at most {MAX_PER_REQUEST} per request",
                addrs.len()
            );
        }
        let wanted = addrs.len() + count;
        let total = self.store.leases.len() + wanted;
        if total > lease::MAX_LEASES as usize {
            bail!(
                "the lease table is full: {} leases, at most {}",
                self.store.leases.len(),
                lease::MAX_LEASES
            );
        }
        // Check every given address before leasing any: all or nothing.
        let mut seen = BTreeSet::new();
        for a in addrs {
            self.leasable(a)?;
            if !seen.insert(*a) {
                bail!("{a} is given twice");
            }
            if let Some(l) = self.store.leases.get(a) {
                if l.cgroup_id != holder.id && self.cgroups.alive(l) {
                    bail!("{a} is leased to cgroup {}", l.cgroup);
                }
            }
        }
        if (self.store.leases.len() + count) as u128 > self.capacity() {
            bail!(
                "the prefix {} has no {count} free address(es) left ({} leased)",
                self.prefix,
                self.store.leases.len()
            );
        }
        let mut got = Vec::with_capacity(wanted);
        let since = now();
        let mut put = |store: &mut Store, addr: Ipv6Addr| {
            store.leases.insert(
                addr,
                Lease {
                    addr,
                    cgroup: holder.name.clone(),
                    cgroup_id: holder.id,
                    level: holder.level,
                    since,
                    exec,
                },
            );
            got.push(addr);
        };
        for a in addrs {
            put(&mut self.store, *a);
        }
        for _ in 0..count {
            let a = self.pick()?;
            put(&mut self.store, a);
        }
        Ok(got)
    }

    /// The next free leasable address at or after the store's cursor, going
    /// round the prefix (a stale lease found on the way is collected).
    fn pick(&mut self) -> Result<Ipv6Addr> {
        let host_bits = 128 - self.prefix.len() as u32;
        let mask: u128 = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let base = u128::from(self.prefix.network());
        let mut stale_checked = false;
        let limit = self.store.leases.len() as u128 + 3;
        let mut off = self.store.next & mask;
        let mut tried: u128 = 0;
        loop {
            if tried > limit && stale_checked {
                bail!("the prefix {} has no free address left", self.prefix);
            }
            if tried > limit {
                // Every address tried is taken: free the stale ones, retry.
                self.collect();
                stale_checked = true;
                tried = 0;
            }
            let addr = Ipv6Addr::from(base | off);
            off = (off + 1) & mask;
            tried += 1;
            if self.leasable(&addr).is_err() || self.store.leases.contains_key(&addr) {
                continue;
            }
            self.store.next = off;
            return Ok(addr);
        }
    }

    fn release(&mut self, holder: Option<&str>, addrs: &[Ipv6Addr]) -> Result<Vec<Ipv6Addr>> {
        for a in addrs {
            match self.store.leases.get(a) {
                None => bail!("{a} is not leased"),
                Some(l) if holder.is_some_and(|h| h != l.cgroup) => {
                    bail!(
                        "{a} is leased to cgroup {}, not {}",
                        l.cgroup,
                        holder.unwrap_or("")
                    )
                }
                Some(_) => {}
            }
        }
        if !addrs.is_empty() {
            for a in addrs {
                self.store.leases.remove(a);
            }
            return Ok(addrs.to_vec());
        }
        let holder = holder.unwrap_or("");
        let gone: Vec<Ipv6Addr> = self
            .store
            .leases
            .values()
            .filter(|l| l.cgroup == holder)
            .map(|l| l.addr)
            .collect();
        if gone.is_empty() {
            bail!("cgroup {holder} holds no lease");
        }
        for a in &gone {
            self.store.leases.remove(a);
        }
        Ok(gone)
    }

    fn exec(
        &mut self,
        addr: Option<Ipv6Addr>,
        pid: u32,
        peer: Peer,
        undo: &mut Undo,
    ) -> Result<(String, Vec<Ipv6Addr>)> {
        match proc_stat(pid) {
            Some((_, ppid)) if ppid == peer.pid => {}
            Some(_) => bail!("process {pid} is not a child of the requesting process"),
            None => bail!("process {pid} does not exist"),
        }
        let (start_time, _) =
            proc_stat(peer.pid).ok_or_else(|| anyhow!("the requesting process is gone"))?;
        let parent = &self.cgroups.exec_parent;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the exec cgroup parent {}", parent.display()))?;
        self.exec_serial += 1;
        let dir = parent.join(format!("exec-{}-{}", peer.pid, self.exec_serial));
        std::fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        undo.rmdir = Some(dir.clone());
        let holder = self.cgroups.resolve(&dir.display().to_string())?;
        let addrs: Vec<Ipv6Addr> = addr.into_iter().collect();
        let count = addrs.is_empty().then_some(1);
        let owner = ExecOwner {
            pid: peer.pid,
            start_time,
        };
        let got = self.lease(&holder, &addrs, count, Some(owner))?;
        undo.unlease = got.clone();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving process {pid} into {}", dir.display()))?;
        Ok((holder.name, got))
    }

    fn exec_done(&mut self, cgroup: &str, peer: Peer) -> Result<Vec<Ipv6Addr>> {
        let leases: Vec<Lease> = self
            .store
            .leases
            .values()
            .filter(|l| l.cgroup == cgroup && l.exec.is_some())
            .cloned()
            .collect();
        let Some(first) = leases.first() else {
            bail!("{cgroup} is not a cgroup of `panda exec`");
        };
        if first.exec.is_some_and(|o| o.pid != peer.pid) {
            bail!(
                "{cgroup} belongs to another `panda exec` (pid {})",
                first.exec.map_or(0, |o| o.pid)
            );
        }
        let dir = self.cgroups.fs_path(cgroup);
        kill_all(&dir)?;
        std::fs::remove_dir(&dir).with_context(|| format!("removing cgroup {}", dir.display()))?;
        let gone: Vec<Ipv6Addr> = leases.iter().map(|l| l.addr).collect();
        for a in &gone {
            self.store.leases.remove(a);
        }
        Ok(gone)
    }
}

/// What a failed request must take back outside the table (the table itself
/// is restored from its copy).
#[derive(Default)]
struct Undo {
    rmdir: Option<PathBuf>,
    unlease: Vec<Ipv6Addr>,
}

impl Undo {
    fn run(self, store: &mut Store) {
        for a in &self.unlease {
            store.leases.remove(a);
        }
        if let Some(d) = self.rmdir {
            let _ = kill_all(&d);
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// Kills every process left in a cgroup and waits until it is empty
/// (bounded: a process stuck in the kernel is reported, not waited for).
fn kill_all(dir: &Path) -> Result<()> {
    if unpopulated(dir) {
        return Ok(());
    }
    let kill = dir.join("cgroup.kill");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if kill.exists() {
            let _ = std::fs::write(&kill, "1");
        } else if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if unpopulated(dir) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("processes in {} did not exit after SIGKILL", dir.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_match_bind6s_view() {
        let a: Ipv6Addr = "fd00:1009:bacc::2".parse().unwrap();
        let w = addr_words(&a);
        assert_eq!(w[0].to_ne_bytes(), [0xfd, 0x00, 0x10, 0x09]);
        assert_eq!(w[3].to_ne_bytes(), [0, 0, 0, 2]);
    }

    #[test]
    fn proc_stat_reads_self() {
        let (start, ppid) = proc_stat(std::process::id()).expect("own stat");
        assert!(start > 0);
        assert_eq!(ppid, std::os::unix::process::parent_id());
    }

    #[test]
    fn store_round_trip_and_damage() {
        let dir = std::env::temp_dir().join(format!("panda-leases-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Store::load(&dir).unwrap();
        assert_eq!(s.leases().count(), 0);
        let a: Ipv6Addr = "fd00:1009:bacc::7".parse().unwrap();
        s.leases.insert(
            a,
            Lease {
                addr: a,
                cgroup: "/x".into(),
                cgroup_id: 42,
                level: 1,
                since: 1,
                exec: None,
            },
        );
        s.next = 8;
        s.save().unwrap();
        let t = Store::load(&dir).unwrap();
        assert_eq!(t.leases, s.leases);
        assert_eq!(t.next, 8);
        std::fs::write(dir.join(STORE_FILE), b"{not json").unwrap();
        let e = Store::load(&dir).err().expect("damaged store accepted");
        assert!(format!("{e:#}").contains("is damaged"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
