//! A CPU quota for each SFU worker thread (the cgroup `cpu` controller's bandwidth limit):
//! a worker given a fraction of a core reaches its knee at that fraction of its load, which a
//! generator on the other core of a small machine can feed. The knee divided by the fraction
//! is the worker's capacity per core, and workers each held to the same fraction show whether
//! the load splits without loss of efficiency, on a machine with too few cores to give each
//! worker and the generator one of their own.
//!
//! Uses the cgroup v1 `cpu` hierarchy (`/sys/fs/cgroup/cpu`), where single threads can be
//! placed; needs root.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// Where the cgroup v1 `cpu` controller is mounted.
const CPU_HIERARCHY: &str = "/sys/fs/cgroup/cpu";
/// The quota's period: short, so a throttled worker waits at most a few milliseconds.
pub const PERIOD_US: u64 = 10_000;

/// Each worker thread in a cgroup of its own with the quota; undone when dropped (a `bench`
/// killed before then leaves the groups, named `hc-bench-<pid>-<thread>`, behind).
pub struct WorkerQuota {
    /// Each group made, with the thread put in it and the group the thread came from.
    groups: Vec<(PathBuf, u32, PathBuf)>,
}

/// The group of `tid` in the `cpu` hierarchy (from `/proc/<tid>/cgroup`).
fn cpu_group_of(tid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/cgroup")).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "cpu")
            .then(|| Path::new(CPU_HIERARCHY).join(path.trim_start_matches('/')))
    })
}

impl WorkerQuota {
    /// Holds each thread of `pid` named `prefix` + a number to `fraction` of a core.
    pub fn apply(pid: u32, prefix: &str, fraction: f64) -> anyhow::Result<Self> {
        // The kernel takes no quota under 1 ms: a tenth of the 10 ms period.
        if !(0.1..=1.0).contains(&fraction) {
            bail!("--worker-cpu-quota {fraction}: a fraction of a core, 0.1 to 1");
        }
        let root = Path::new(CPU_HIERARCHY);
        if !root.join("cpu.cfs_quota_us").exists() {
            bail!(
                "--worker-cpu-quota needs the cgroup v1 cpu controller at {CPU_HIERARCHY} (per-thread quotas), and root"
            );
        }
        let threads = crate::proc_stats::thread_ids(pid, prefix);
        if threads.is_empty() {
            bail!("no {prefix}N thread in process {pid} to hold to a quota");
        }
        let mut quota = Self { groups: Vec::new() };
        for (name, tid) in threads {
            let group = root.join(format!("hc-bench-{pid}-{name}"));
            let origin = cpu_group_of(tid).unwrap_or_else(|| root.to_path_buf());
            std::fs::create_dir_all(&group)
                .with_context(|| format!("creating {}", group.display()))?;
            quota.groups.push((group.clone(), tid, origin));
            let write = |file: &str, value: String| {
                std::fs::write(group.join(file), value)
                    .with_context(|| format!("writing {}", group.join(file).display()))
            };
            write("cpu.cfs_period_us", PERIOD_US.to_string())?;
            write(
                "cpu.cfs_quota_us",
                ((fraction * PERIOD_US as f64).round() as u64).to_string(),
            )?;
            write("tasks", tid.to_string())?;
        }
        Ok(quota)
    }

    /// Worker threads held.
    pub fn workers(&self) -> usize {
        self.groups.len()
    }

    /// Periods in which a worker ran out of its quota, summed over the workers.
    pub fn throttled_periods(&self) -> u64 {
        self.groups
            .iter()
            .filter_map(|(g, _, _)| std::fs::read_to_string(g.join("cpu.stat")).ok())
            .filter_map(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("nr_throttled "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum()
    }
}

impl Drop for WorkerQuota {
    fn drop(&mut self) {
        for (group, tid, origin) in &self.groups {
            // A thread still alive (a running service's, given by --server-pid) goes back
            // to the group it came from, unlimited again.
            let _ = std::fs::write(origin.join("tasks"), tid.to_string());
            let _ = std::fs::remove_dir(group);
        }
    }
}
