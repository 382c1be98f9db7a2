//! CPU time of a process from `/proc/<pid>/stat` (user + system; the load harness reads the
//! server under test that way), and this process's own, to the nanosecond, for the node's
//! load reports (`load_sampler.rs`).

use std::time::Duration;

/// User + system CPU time from a `/proc/.../stat` file (a process's, or one of its
/// threads' under `task/`); none where it cannot be read.
pub fn stat_cpu_time(path: &std::path::Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// User + system CPU time of process `pid` so far (all its threads).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    stat_cpu_time(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

/// This process's CPU time, to the nanosecond: `/proc`'s clock ticks (10 ms) would make a
/// half-second load report of a nearly idle node read 0, 2 or 4 % at random, and rooms are
/// placed by those reports.
pub fn own_cpu_time() -> Option<Duration> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &raw mut t) };
    (rc == 0).then(|| Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn own_cpu_time_resolves_finer_than_a_clock_tick() {
        // /proc counts in ticks of 10 ms: every change it shows is a whole tick. The smallest
        // of many changes, so that other tests' threads in this process running while this
        // one waits for a core do not decide it.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut smallest = Duration::MAX;
        let mut last = own_cpu_time().expect("own CPU time");
        let mut changes = 0;
        while changes < 100 && Instant::now() < deadline {
            let now = own_cpu_time().expect("own CPU time");
            if now > last {
                smallest = smallest.min(now - last);
                changes += 1;
            }
            last = now;
        }
        assert!(changes > 0, "own CPU time never moved");
        assert!(
            smallest < Duration::from_millis(2),
            "smallest change {smallest:?}"
        );
    }
}
