//! Two clocks for the bind loops: wall time, and the calling thread's own
//! CPU time (CLOCK_THREAD_CPUTIME_ID). A bind loop never blocks, so its CPU
//! time is its cost; unlike wall time it does not count the moments another
//! process (a kernel build, a VM) held the CPU, which on a shared machine is
//! most of the noise. The cases compare CPU times and record both.

use std::time::{Duration, Instant};

/// The calling thread's CPU time (user + system).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; this clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Both clocks at one instant.
#[derive(Clone, Copy)]
pub struct Stamp {
    wall: Instant,
    cpu: Duration,
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp {
            wall: Instant::now(),
            cpu: thread_cpu(),
        }
    }

    /// (CPU, wall) elapsed since this stamp, on the same thread.
    pub fn elapsed(&self) -> (Duration, Duration) {
        (thread_cpu() - self.cpu, self.wall.elapsed())
    }
}
