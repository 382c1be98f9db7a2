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

/// CPU time of each thread of `pid` whose name starts with `prefix`, by name (sorted).
pub fn threads_cpu_time(pid: u32, prefix: &str) -> Vec<(String, Duration)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut v: Vec<(String, Duration)> = dir
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            let name = comm.trim();
            name.starts_with(prefix)
                .then(|| Some((name.to_owned(), stat_cpu_time(&path.join("stat"))?)))?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_found_by_name_with_their_own_cpu_time() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let busy = std::thread::Builder::new()
            .name("sfu-worker-7".into())
            .spawn(move || {
                let t = Instant::now();
                let mut x = 0u64;
                while t.elapsed() < Duration::from_millis(200) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                std::hint::black_box(x);
                let _ = rx.recv();
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let found = threads_cpu_time(std::process::id(), "sfu-worker-");
        drop(tx);
        busy.join().unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "sfu-worker-7");
        assert!(found[0].1 >= Duration::from_millis(100), "{found:?}");
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
