//! Everything a run measured, as raw samples (one per repeat, in repeat
//! order, so that ratios can be paired by repeat). `panda-bench run` writes
//! it as JSON; the report (tables, BENCHMARKS.md, plots) is rendered from it.
//! A case that failed is `None`, and the report refuses to render a run
//! with a missing case.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub run: RunInfo,
    pub hook: Option<Hook>,
    pub scale: Option<Scale>,
    pub setup: Option<Setup>,
    pub churn: Option<Churn>,
    pub daemon: Option<Daemon>,
    /// Case 6 (absent from runs made before it existed).
    #[serde(default)]
    pub leases: Option<Leases>,
    /// One line per case that failed.
    pub failures: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub nproc: usize,
    pub kernel: String,
    pub mem_total_mb: u64,
    pub load_start: String,
    pub load_end: String,
    /// cgroup/bind6 programs in effect for our binds before we started any
    /// pandad (other pandads on the host; they run on our binds too).
    pub bind6_programs_at_start: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub quick: bool,
    pub command: String,
    pub repeats: usize,
    /// UTC, RFC 3339.
    pub started: String,
    pub wall_s: f64,
}

/// Case 1: socket+bind+listen+close.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hook {
    pub ops_per_batch: u32,
    pub batches_per_repeat: usize,
    pub outside_addresses: u32,
    pub variants: Vec<HookVariant>,
    /// Why panda's freebind mechanism was not measured, if it was not.
    pub freebind_skipped: Option<String>,
    pub bpf: Vec<BpfRunTime>,
    /// Effective cgroup/bind6 programs during the no-program phases (should
    /// be those of other pandads only) and the guard phases (ours + those).
    pub bind6_programs_without_pandad: Vec<u32>,
    pub bind6_programs_with_pandad: Vec<u32>,
    /// Batches timed again because another pandad's bind6 program came or
    /// went while they ran.
    #[serde(default)]
    pub batches_retaken: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HookVariant {
    pub key: String,
    pub label: String,
    /// The variant this one is compared with (same repeat).
    pub baseline: Option<String>,
    /// Thread CPU time per operation, µs (what the ratios use).
    pub us_per_op: Vec<f64>,
    /// Wall time per operation, µs.
    pub wall_us_per_op: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BpfRunTime {
    /// Which path of the program (prefix / outside).
    pub label: String,
    /// The hook variant whose binds took this path (for its µs/op).
    pub variant: String,
    pub ns_per_run: Vec<f64>,
    pub runs: Vec<u64>,
    /// The empty bind6 program's ns per run over the same binds: what the
    /// statistics report for a program that does nothing.
    #[serde(default)]
    pub empty_ns_per_run: Vec<f64>,
}

impl BpfRunTime {
    /// bind6's own ns per run, per repeat: its figure less the empty
    /// program's over the same binds (the statistics' own cost).
    pub fn own_ns_per_run(&self) -> Vec<f64> {
        self.ns_per_run
            .iter()
            .zip(&self.empty_ns_per_run)
            .map(|(x, y)| x - y)
            .collect()
    }
}

/// Case 2: N listeners on one port.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scale {
    pub port: u16,
    pub per_process: u32,
    pub variants: Vec<ScaleVariant>,
    /// Fills taken again because another pandad's bind6 program came or
    /// went while they ran.
    #[serde(default)]
    pub fills_retaken: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleVariant {
    pub key: String,
    pub label: String,
    pub points: Vec<ScalePoint>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScalePoint {
    pub n: u32,
    pub processes: u32,
    /// Mean socket+bind+listen CPU time over all N, µs.
    pub mean_us: Vec<f64>,
    /// Mean over the last 1,000 (with N-1,000 listeners already there), µs.
    pub marginal_us: Vec<f64>,
    /// Mean wall time over all N, µs.
    pub wall_mean_us: Vec<f64>,
}

/// Case 3: making N addresses bindable.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Setup {
    /// The longest one `ip -batch` of /128s was allowed to run, s.
    pub cap_s: f64,
    /// `ip -batch`: anchor /128 + `local PREFIX` route (panda's kernel state).
    pub route: Cost,
    /// pandad, spawn to READY=1 (route, anchor, nftables, BPF, sysctl).
    pub pandad: Cost,
    pub points: Vec<SetupPoint>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetupPoint {
    pub n: u32,
    /// `ip -batch` with one `address add …/128 dev lo` per address.
    pub per_address: Cost,
    /// Addresses present when each sample ended: N, or fewer when the
    /// sample was stopped at the plan's cap.
    pub added: Vec<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Cost {
    pub seconds: Vec<f64>,
    pub slab_kb: Vec<f64>,
    pub sunreclaim_kb: Vec<f64>,
}

/// Case 4: connect+close churn.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Churn {
    pub seconds: f64,
    pub spread_sources: u32,
    pub variants: Vec<ChurnVariant>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChurnVariant {
    pub key: String,
    /// "::1" or "spread".
    pub source: String,
    /// The ephemeral port range, as written to ip_local_port_range.
    pub range: String,
    pub conns_per_s: Vec<f64>,
    pub eaddrnotavail: Vec<u64>,
    pub other_errors: Vec<u64>,
    /// TIME-WAIT sockets in the namespace at the end.
    pub time_wait: Vec<u64>,
}

/// Case 5: the daemon itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Daemon {
    pub start_ready_s: Vec<f64>,
    /// spawn to exit of `pandad --version` in the same namespace: the cost
    /// of starting the process at all.
    pub exec_baseline_s: Vec<f64>,
    pub vm_hwm_kb: Vec<f64>,
    pub idle_window_s: f64,
    /// utime+stime over the idle window, ms.
    pub idle_cpu_ms: Vec<f64>,
    /// On-CPU time of all threads (schedstat) over the idle window, ms.
    pub idle_sched_ms: Vec<f64>,
    pub stop_s: Vec<f64>,
    /// Repair latency, per kind of tampering.
    pub repair: Vec<Repair>,
}

/// Case 5: how long the self-healing took to repair one kind of tampering.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Repair {
    /// `route`, `anchor`, `table`, `sysctl`, `link_bind6`.
    pub kind: String,
    /// Damage (as the kernel reports it) to repair, ms, one per tampering.
    pub samples_ms: Vec<f64>,
    /// `repaired KIND:` lines pandad logged (one per repair expected).
    pub warn_lines: usize,
}

/// Case 6: what leases add to a prefix bind (socket+bind+listen+close),
/// each variant's binds made by a process in its own cgroup.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Leases {
    pub ops_per_batch: u32,
    pub batches_per_repeat: usize,
    /// Leases in force during the leased phases, and the cgroups holding
    /// them (an equal share each).
    pub leases: u32,
    pub holders: u32,
    /// The holders' depth below the cgroup2 root (the one level bind6's
    /// walk looks at); the outside binder sits at the same depth.
    pub holder_level: u32,
    /// Same shape as case 1's; baselines are the no-lease variants.
    pub variants: Vec<HookVariant>,
    /// bind6's run time per path, as in case 1.
    pub bpf: Vec<BpfRunTime>,
    /// Batches timed again because another pandad's bind6 program came or
    /// went while they ran.
    pub batches_retaken: u32,
}
