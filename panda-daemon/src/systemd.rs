//! Telling `systemctl restart` from `systemctl stop`.
//!
//! Both send SIGTERM, but they want opposite things: a stop must leave the
//! host clean, a restart must not let a single bind fail, so it must leave
//! everything in place for the next pandad to adopt. systemd's own word on
//! it is the job in progress on the unit: while a restart stops the old
//! process, the unit's job has type `restart` (systemd runs a restart as a
//! stop whose job is patched into a start once the unit is down; see
//! `JOB_RESTART` in systemd's src/core/job.h), and `stop` for a stop.
//!
//! pandad asks for it with `systemctl list-jobs UNIT`, where UNIT is the
//! service whose cgroup pandad runs in. Outside systemd (no
//! `INVOCATION_ID`), or if the question cannot be answered, SIGTERM means
//! stop: the host is never left changed by accident. SIGUSR2 asks for a
//! hand-over explicitly, whoever the supervisor is.
use std::process::Command;

/// What a SIGTERM should do, according to systemd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not started by systemd.
    NotSystemd,
    /// systemd is restarting the unit: hand over.
    Restart { unit: String },
    /// Any other job (stop, shutdown) or none: tear down.
    Stop { unit: String },
    /// Under systemd, but the job could not be read: tear down, with a
    /// warning saying why.
    Unknown { why: String },
}

/// Asks systemd what the SIGTERM just received is for.
pub fn sigterm_verdict() -> Verdict {
    if std::env::var_os("INVOCATION_ID").is_none() {
        return Verdict::NotSystemd;
    }
    let cgroup = match std::fs::read_to_string("/proc/self/cgroup") {
        Ok(c) => c,
        Err(e) => {
            return Verdict::Unknown {
                why: format!("reading /proc/self/cgroup: {e}"),
            }
        }
    };
    let Some(unit) = unit_of_cgroup(&cgroup) else {
        return Verdict::Unknown {
            why: "no .service in /proc/self/cgroup".into(),
        };
    };
    let out = Command::new("systemctl")
        .args(["list-jobs", "--no-legend", "--no-pager", "--full", &unit])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            if restart_job(&String::from_utf8_lossy(&o.stdout), &unit) {
                Verdict::Restart { unit }
            } else {
                Verdict::Stop { unit }
            }
        }
        Ok(o) => Verdict::Unknown {
            why: format!(
                "`systemctl list-jobs {unit}` failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        },
        Err(e) => Verdict::Unknown {
            why: format!("running systemctl: {e}"),
        },
    }
}

/// The service unit of a `/proc/self/cgroup` text: the last path component
/// ending in `.service` of the cgroup2 line (`0::/system.slice/pandad.service`).
pub fn unit_of_cgroup(text: &str) -> Option<String> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    path.rsplit('/')
        .find(|c| c.ends_with(".service"))
        .map(str::to_owned)
}

/// Whether `systemctl list-jobs --no-legend` output (`JOB UNIT TYPE STATE`
/// per line) shows a restart job on `unit`.
pub fn restart_job(list_jobs: &str, unit: &str) -> bool {
    list_jobs.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 3
            && f[1] == unit
            && matches!(f[2], "restart" | "try-restart" | "reload-or-restart")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_from_cgroup() {
        assert_eq!(
            unit_of_cgroup("0::/system.slice/pandad.service\n").as_deref(),
            Some("pandad.service")
        );
        // Hybrid hierarchy: v1 lines first; a delegated subgroup below.
        let hybrid = "12:pids:/system.slice/pandad.service\n0::/system.slice/pandad.service/sub\n";
        assert_eq!(unit_of_cgroup(hybrid).as_deref(), Some("pandad.service"));
        assert_eq!(unit_of_cgroup("0::/user.slice/session-3.scope\n"), None);
        assert_eq!(unit_of_cgroup(""), None);
    }

    #[test]
    fn restart_jobs_are_told_from_stops() {
        let restart = "1234 pandad.service restart running\n";
        assert!(restart_job(restart, "pandad.service"));
        assert!(!restart_job(restart, "other.service"));
        assert!(!restart_job(
            "99 pandad.service stop running\n",
            "pandad.service"
        ));
        assert!(restart_job(
            "7 network.target start waiting\n8 pandad.service try-restart running\n",
            "pandad.service"
        ));
        assert!(!restart_job("", "pandad.service"));
    }
}
