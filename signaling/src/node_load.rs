//! How loaded a standalone SFU node is, for placing a new room: its own CPU report per worker
//! (what it can carry grows with its cores), plus an estimate for the participants placed on
//! it since that report (a burst of new visits between two reports must not all land on the
//! node that looked idlest).

use sfu_proto::LoadReport;

/// CPU per participant assumed until the next report shows the real cost: ≈ 165 visits of
/// two publishers per core at 100 % (docs/deployment.md, sizing).
const CPU_PERCENT_PER_PARTICIPANT: f64 = 0.3;

#[derive(Debug, Clone, Default)]
pub struct NodeLoad {
    /// Worker threads (cores) the node said it runs.
    pub workers: u32,
    pub report: LoadReport,
}

impl NodeLoad {
    /// Estimated CPU per worker, % of a core, with `placed` participants placed on the node
    /// now (as signaling counts them).
    pub fn cpu_per_worker(&self, placed: usize) -> f64 {
        let since_report = placed.saturating_sub(self.report.participants as usize);
        let cpu = f64::from(self.report.cpu_percent.max(0.0))
            + since_report as f64 * CPU_PERCENT_PER_PARTICIPANT;
        cpu / f64::from(self.workers.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(workers: u32, cpu: f32, participants: u32) -> NodeLoad {
        NodeLoad {
            workers,
            report: LoadReport {
                cpu_percent: cpu,
                participants,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_bigger_node_takes_more_and_new_placements_count_before_the_next_report() {
        // Four workers at 120 % in all are less loaded than one worker at 40 %.
        let (big, small) = (node(4, 120.0, 100), node(1, 40.0, 30));
        assert!(big.cpu_per_worker(100) < small.cpu_per_worker(30));
        // 200 participants placed on the big node since its report (≈ 60 % more of a core):
        // now it is the busier one per worker.
        assert!(big.cpu_per_worker(300) > small.cpu_per_worker(30));
        assert_eq!(big.cpu_per_worker(300), (120.0 + 200.0 * 0.3) / 4.0);
        // A node that has not reported yet counts what was placed on it.
        assert_eq!(node(2, 0.0, 0).cpu_per_worker(10), 1.5);
        // Participants that left since the report do not make it negative.
        assert_eq!(node(1, 10.0, 8).cpu_per_worker(2), 10.0);
    }
}
