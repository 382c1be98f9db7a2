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

#[cfg(test)]
mod tests {
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
        read.wait();
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
