//! CPU time and resident memory of a process, read from `/proc/<pid>`.

use std::time::{Duration, Instant};

pub use sfu_server::process_cpu::cpu_time;
use sfu_server::process_cpu::stat_cpu_time;

/// CPU time of the thread of `pid` named `name` (its `comm`), e.g. the generator's.
pub fn thread_cpu_time(pid: u32, name: &str) -> Option<Duration> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return stat_cpu_time(&path.join("stat"));
        }
    }
    None
}

/// CPU time of each thread of `pid` whose name is `prefix` and a number, in the numbers'
/// order (`sfu-worker-2` before `sfu-worker-10`).
pub fn threads_cpu_time(pid: u32, prefix: &str) -> Vec<(String, Duration)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut v: Vec<(u64, String, Duration)> = dir
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            let name = comm.trim();
            let index = name.strip_prefix(prefix)?.parse().ok()?;
            Some((index, name.to_owned(), stat_cpu_time(&path.join("stat"))?))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, name, cpu)| (name, cpu)).collect()
}

/// Thread ids of each thread of `pid` whose name is `prefix` and a number, with its name.
pub fn thread_ids(pid: u32, prefix: &str) -> Vec<(String, u32)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut v: Vec<(String, u32)> = dir
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let tid = path.file_name()?.to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            let name = comm.trim();
            name.strip_prefix(prefix)?.parse::<u64>().ok()?;
            Some((name.to_owned(), tid))
        })
        .collect();
    v.sort();
    v
}

/// Resident set size of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU use of a process over a window, as a percentage of one core.
#[derive(Debug, Clone, Copy)]
pub struct CpuWindow {
    pid: u32,
    start_cpu: Duration,
    start: Instant,
}

impl CpuWindow {
    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            start_cpu: cpu_time(pid).unwrap_or_default(),
            start: Instant::now(),
        }
    }

    pub fn percent(&self) -> f64 {
        let cpu = cpu_time(self.pid)
            .unwrap_or_default()
            .saturating_sub(self.start_cpu);
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        cpu.as_secs_f64() * 100.0 / wall
    }
}

/// The share of the machine's CPU time the hypervisor took away from this VM over a window
/// (`steal` in `/proc/stat`): while it is high the VM's vCPUs sat idle for long stretches, a
/// worker could not read its socket, and figures measured then are not comparable.
#[derive(Debug, Clone, Copy)]
pub struct StealWindow {
    start: Option<(u64, u64)>,
}

/// (steal, all) jiffies of every CPU, from `/proc/stat`'s `cpu` line.
fn steal_and_total() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(stat.lines().next()?)
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`: (steal, the sum of
/// the first eight — guest time is already inside user).
fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if values.len() < 8 {
        return None;
    }
    Some((values[7], values.iter().sum()))
}

impl StealWindow {
    pub fn start() -> Self {
        Self {
            start: steal_and_total(),
        }
    }

    /// Percent of all CPU time stolen since the start (0 when `/proc/stat` cannot say).
    pub fn percent(&self) -> f64 {
        let (Some((steal0, total0)), Some((steal1, total1))) = (self.start, steal_and_total())
        else {
            return 0.0;
        };
        let total = total1.saturating_sub(total0);
        if total == 0 {
            return 0.0;
        }
        steal1.saturating_sub(steal0) as f64 * 100.0 / total as f64
    }
}

/// Above this share of stolen CPU a run's figures are flagged as not comparable.
pub const STEAL_FLAG_PCT: f64 = 5.0;

#[cfg(test)]
mod tests {
    #[test]
    fn the_steal_share_is_read_from_the_cpu_line() {
        let line = "cpu  4705 150 1120 16250 520 0 30 1200 0 0";
        assert_eq!(parse_cpu_line(line), Some((1200, 23975)));
        assert_eq!(
            parse_cpu_line("cpu0 1 2 3 4 5 6 7 8 0 0"),
            None,
            "a core's line"
        );
        assert_eq!(parse_cpu_line("cpu 1 2 3"), None, "too short");
        // This machine's own counters read, and a window's share is a percentage.
        let w = StealWindow::start();
        assert!(w.start.is_some());
        let pct = w.percent();
        assert!((0.0..=100.0).contains(&pct), "{pct}");
    }

    use super::*;

    #[test]
    fn threads_are_found_by_name_in_index_order_with_their_own_cpu_time() {
        use std::sync::{Arc, Barrier};
        let pid = std::process::id();
        // The named threads and this one: ready (spun), then read, then released.
        let (ready, read) = (Arc::new(Barrier::new(4)), Arc::new(Barrier::new(4)));
        let spawn = |name: &str, spin: bool| {
            let (ready, read, own) = (ready.clone(), read.clone(), name.to_owned());
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    // Busy until its own CPU time shows, however loaded the machine is.
                    let t = Instant::now();
                    let mut x = 0u64;
                    while spin
                        && thread_cpu_time(pid, &own).unwrap_or_default()
                            < Duration::from_millis(50)
                        && t.elapsed() < Duration::from_secs(20)
                    {
                        for _ in 0..100_000 {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        }
                    }
                    std::hint::black_box(x);
                    ready.wait();
                    read.wait();
                })
                .unwrap()
        };
        let threads = [
            spawn("sfu-worker-10", true),
            spawn("sfu-worker-2", true),
            spawn("sfu-worker-x", false),
        ];
        ready.wait();
        let found = threads_cpu_time(pid, "sfu-worker-");
        let ids = thread_ids(pid, "sfu-worker-");
        let comms: Vec<(String, String)> = ids
            .iter()
            .map(|(name, tid)| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"));
                (name.clone(), comm.unwrap_or_default().trim().to_owned())
            })
            .collect();
        read.wait();
        // Each id is the thread of that name (what a CPU quota is put on).
        let mut id_names: Vec<&str> = ids.iter().map(|(n, _)| n.as_str()).collect();
        id_names.sort_unstable();
        assert_eq!(id_names, ["sfu-worker-10", "sfu-worker-2"]);
        for (name, comm) in &comms {
            assert_eq!(name, comm);
        }
        for t in threads {
            t.join().unwrap();
        }
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["sfu-worker-2", "sfu-worker-10"],
            "unnumbered ones are not workers"
        );
        assert!(
            found
                .iter()
                .all(|(_, cpu)| *cpu >= Duration::from_millis(50)),
            "{found:?}"
        );
    }

    #[test]
    fn this_process_uses_cpu_and_memory() {
        let pid = std::process::id();
        let w = CpuWindow::start(pid);
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let pct = w.percent();
        assert!(pct > 30.0 && pct < 250.0, "{pct}% while spinning");
        assert!(rss_bytes(pid).unwrap() > 1 << 20);
    }
}
