//! What one run against one target measured: the JSON object `--json` writes, and the human
//! table.

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetReport {
    /// `ours`, `relay` or `janus`.
    pub target: String,
    pub scenario: String,
    pub participants: usize,
    pub publishers: usize,
    /// Copies forwarded per published packet (average).
    pub fan_out: f64,
    pub duration_s: f64,
    /// Packets and bytes per second into and out of the server under test.
    pub pps_in: f64,
    pub pps_out: f64,
    /// Of `pps_in`, the streams subscribers receive (audio and the top simulcast layer); the
    /// lower layers, where they still come in (`--ignore-pause-encodings`, or a subscriber
    /// asks for less), are held back.
    pub pps_in_forwarded: f64,
    /// Video layers each publisher sends (3 with simulcast, else 1).
    pub simulcast_layers: usize,
    /// At the window's end, the publishers' video layers being sent, and those paused because
    /// nobody received them (dynacast: `pause_encodings`, or after the same hold toward the
    /// raw relay); none paused with `--ignore-pause-encodings` or toward Janus.
    pub publisher_layers_sent: usize,
    pub publisher_layers_paused: usize,
    pub bytes_in_per_s: f64,
    pub bytes_out_per_s: f64,
    /// Packets per second the generator's participants sent and received.
    pub generator_pps_sent: f64,
    pub generator_pps_received: f64,
    /// Sequence-number loss of the streams that arrived.
    pub loss_pct: f64,
    /// Copies that should have arrived (sent × fan-out) and did not: also catches streams
    /// that never arrived or stopped.
    pub delivery_loss_pct: f64,
    pub reordered_pct: f64,
    pub jitter_ms: f64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    /// Latency samples behind the quantiles (decrypted packets).
    pub latency_samples: u64,
    /// Token → first media packet received.
    pub join_ms_p50: f64,
    pub join_ms_p95: f64,
    pub join_ms_max: f64,
    /// Participants whose media path came up, that received media, and that should have.
    pub connected: usize,
    pub receiving: usize,
    pub receivers_expected: usize,
    /// Our SFU's own counters (all datagrams, incl. RTCP/STUN/DTLS), for comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sfu_metrics_pps_in: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sfu_metrics_pps_out: Option<f64>,
    /// ICE-TCP connections our SFU accepted (`sfu_ice_tcp_accepted_total`): the participants'
    /// links when the target is `ours-tcp`, none otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sfu_ice_tcp_connections: Option<u64>,
    /// How our SFU's workers met the kernel (their own counters): wake-ups a second, and
    /// datagrams per `recvmmsg` and per `sendmmsg` (fuller batches cost less per packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sfu_wakeups_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sfu_datagrams_per_receive: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sfu_datagrams_per_send: Option<f64>,
    /// Datagrams our SFU sent within GSO messages (runs to one destination the kernel
    /// segments), % of all it sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sfu_gso_datagrams_pct: Option<f64>,
    /// Packets our SFU sent through a subscriber's pacer (its bandwidth estimate bound: they
    /// waited to leave at its pace), % of all it sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sfu_paced_pct: Option<f64>,
    pub generator_send_dropped: u64,
    /// Datagrams the generator's shared receive queue dropped (its overload: counted in
    /// the loss above, but not the server's).
    #[serde(default)]
    pub generator_receive_dropped: u64,
    /// CPU time the hypervisor took from this VM during the measurement, % of all CPU time
    /// (`/proc/stat` steal): above 5 % the run is flagged in `notes`.
    pub cpu_steal_pct: f64,
    /// CPU of the server under test, % of one core (all its threads).
    pub server_cpu_pct: f64,
    /// Of that, each SFU worker thread's, % of one core (ours only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker_cpu_pct: Vec<f64>,
    /// CPU per 1,000 forwarded packets/s, % of one core.
    pub server_cpu_pct_per_kpps: f64,
    /// Packets/s out the server would forward with a whole core at this cost per packet (a
    /// projection, for runs where the generator saturated first).
    pub projected_pps_out_per_core: f64,
    pub server_rss_mib: f64,
    /// (RSS under load − RSS before joins) / participants.
    pub memory_per_participant_kib: f64,
    pub generator_cpu_pct: f64,
    /// The generator, not the server, was the limit (its CPU ran out first).
    pub generator_limited: bool,
    /// From a capacity search: the highest load that met the limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pps_out: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_participants: Option<usize>,
    pub notes: Vec<String>,
    /// A soak's figures per interval (`--soak-interval`): drift shows here.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<IntervalReport>,
    /// With shaped downlinks (`--downlink`): what each phase of the schedule did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub downlink_phases: Vec<crate::shaped_downlink::PhaseReport>,
}

/// One interval of a soak.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct IntervalReport {
    /// Seconds into the measurement at the interval's end.
    pub at_s: f64,
    pub pps_out: f64,
    /// Copies that should have arrived in the interval and did not.
    pub delivery_loss_pct: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// 0 when the server's process is not on this machine.
    pub server_rss_mib: f64,
    pub server_cpu_pct: f64,
    /// CPU time stolen from this VM in the interval, % of all.
    pub cpu_steal_pct: f64,
    /// With churn (`--churn-every`): the churn visits that had come and gone by its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn_visits_ended: Option<u64>,
}

/// What the host says of an interval: the server's memory and CPU, and the VM's stolen CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostReading {
    /// 0 when the server's process is not on this machine.
    pub server_rss_bytes: u64,
    pub server_cpu_pct: f64,
    pub cpu_steal_pct: f64,
}

impl IntervalReport {
    /// The interval between two cumulative generator reports.
    pub fn between(
        before: &crate::generator::GeneratorReport,
        after: &crate::generator::GeneratorReport,
        at: std::time::Duration,
        length: std::time::Duration,
        fan_out: f64,
        host: HostReading,
    ) -> Self {
        let secs = length.as_secs_f64().max(1e-3);
        let received = after.rx.packets.saturating_sub(before.rx.packets) as f64;
        let expected = after.rx.expected.saturating_sub(before.rx.expected) as f64;
        let should = after.sent_forwarded.saturating_sub(before.sent_forwarded) as f64 * fan_out;
        let mut latency = after.rx.latency_us.clone();
        let latency_ms = |h: &hdrhistogram::Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        // The interval's own samples: the later totals less the earlier.
        if latency.subtract(&before.rx.latency_us).is_err() {
            latency = after.rx.latency_us.clone();
        }
        Self {
            at_s: at.as_secs_f64(),
            pps_out: expected.max(received) / secs,
            delivery_loss_pct: if should > 0.0 {
                (100.0 * (1.0 - received / should)).max(0.0)
            } else {
                0.0
            },
            latency_p50_ms: latency_ms(&latency, 0.5),
            latency_p99_ms: latency_ms(&latency, 0.99),
            server_rss_mib: host.server_rss_bytes as f64 / (1024.0 * 1024.0),
            server_cpu_pct: host.server_cpu_pct,
            cpu_steal_pct: host.cpu_steal_pct,
            churn_visits_ended: None,
        }
    }

    /// One line of a soak's progress.
    pub fn line(&self, target: &str) -> String {
        format!(
            "[{target}] {:>6.0} s  out {:>8.0} pkt/s  delivery loss {:>6.3} %  latency p50 {:>6.2} ms p99 {:>6.2} ms  server RSS {:>7.1} MiB  CPU {:>5.1} %  steal {:>4.1} %",
            self.at_s,
            self.pps_out,
            self.delivery_loss_pct,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.server_rss_mib,
            self.server_cpu_pct,
            self.cpu_steal_pct
        ) + &self
            .churn_visits_ended
            .map(|n| format!("  churned {n}"))
            .unwrap_or_default()
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl TargetReport {
    pub fn set_join_times(&mut self, mut join_ms: Vec<f64>) {
        join_ms.sort_by(f64::total_cmp);
        self.join_ms_p50 = quantile(&join_ms, 0.5);
        self.join_ms_p95 = quantile(&join_ms, 0.95);
        self.join_ms_max = join_ms.last().copied().unwrap_or(0.0);
    }
}

/// Reports side by side: one column per target.
pub fn table(reports: &[TargetReport]) -> String {
    type Row = (&'static str, Box<dyn Fn(&TargetReport) -> String>);
    let rows: Vec<Row> = vec![
        ("scenario", Box::new(|r| r.scenario.clone())),
        (
            "participants (publishers)",
            Box::new(|r| format!("{} ({})", r.participants, r.publishers)),
        ),
        (
            "connected / receiving (of)",
            Box::new(|r| {
                format!(
                    "{} / {} ({})",
                    r.connected, r.receiving, r.receivers_expected
                )
            }),
        ),
        ("packets/s in", Box::new(|r| format!("{:.0}", r.pps_in))),
        ("packets/s out", Box::new(|r| format!("{:.0}", r.pps_out))),
        (
            "Mbit/s out",
            Box::new(|r| format!("{:.1}", r.bytes_out_per_s * 8.0 / 1e6)),
        ),
        (
            "loss % (seq / delivery)",
            Box::new(|r| format!("{:.3} / {:.3}", r.loss_pct, r.delivery_loss_pct)),
        ),
        (
            "reordered %",
            Box::new(|r| format!("{:.3}", r.reordered_pct)),
        ),
        ("jitter ms", Box::new(|r| format!("{:.2}", r.jitter_ms))),
        (
            "latency p50 / p95 / p99 ms",
            Box::new(|r| {
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    r.latency_p50_ms, r.latency_p95_ms, r.latency_p99_ms
                )
            }),
        ),
        (
            "join → media p50 / p95 ms",
            Box::new(|r| format!("{:.0} / {:.0}", r.join_ms_p50, r.join_ms_p95)),
        ),
        (
            "server CPU % (one core)",
            Box::new(|r| format!("{:.1}", r.server_cpu_pct)),
        ),
        (
            "CPU stolen from the VM %",
            Box::new(|r| format!("{:.1}", r.cpu_steal_pct)),
        ),
        (
            "of which each SFU worker %",
            Box::new(|r| {
                if r.worker_cpu_pct.is_empty() {
                    return "-".to_owned();
                }
                let each: Vec<String> =
                    r.worker_cpu_pct.iter().map(|p| format!("{p:.1}")).collect();
                each.join(" / ")
            }),
        ),
        (
            "publishers' video layers sent / paused",
            Box::new(|r| {
                format!(
                    "{} / {}",
                    r.publisher_layers_sent, r.publisher_layers_paused
                )
            }),
        ),
        (
            "CPU % per 1k packets/s out",
            Box::new(|r| format!("{:.2}", r.server_cpu_pct_per_kpps)),
        ),
        (
            "projected packets/s per core",
            Box::new(|r| format!("{:.0}", r.projected_pps_out_per_core)),
        ),
        (
            "ICE-TCP connections",
            Box::new(|r| {
                r.sfu_ice_tcp_connections
                    .map_or_else(|| "-".to_owned(), |n| n.to_string())
            }),
        ),
        (
            "wake-ups/s (all workers)",
            Box::new(|r| optional(r.sfu_wakeups_per_s, 0)),
        ),
        (
            "datagrams per recvmmsg / sendmmsg",
            Box::new(|r| {
                format!(
                    "{} / {}",
                    optional(r.sfu_datagrams_per_receive, 1),
                    optional(r.sfu_datagrams_per_send, 1)
                )
            }),
        ),
        (
            "datagrams sent in GSO messages %",
            Box::new(|r| optional(r.sfu_gso_datagrams_pct, 1)),
        ),
        (
            "packets sent paced %",
            Box::new(|r| optional(r.sfu_paced_pct, 2)),
        ),
        (
            "server RSS MiB",
            Box::new(|r| format!("{:.1}", r.server_rss_mib)),
        ),
        (
            "memory per participant KiB",
            Box::new(|r| format!("{:.0}", r.memory_per_participant_kib)),
        ),
        (
            "generator CPU %",
            Box::new(|r| {
                format!(
                    "{:.1}{}",
                    r.generator_cpu_pct,
                    if r.generator_limited { " (LIMIT)" } else { "" }
                )
            }),
        ),
        (
            "max packets/s out (search)",
            Box::new(|r| r.max_pps_out.map_or("-".into(), |v| format!("{v:.0}"))),
        ),
        (
            "max participants (search)",
            Box::new(|r| r.max_participants.map_or("-".into(), |v| v.to_string())),
        ),
    ];
    let mut out = format!("{:<30}", "");
    for r in reports {
        out += &format!("{:>26}", r.target);
    }
    out.push('\n');
    for (name, f) in &rows {
        out += &format!("{name:<30}");
        for r in reports {
            out += &format!("{:>26}", f(r));
        }
        out.push('\n');
    }
    for r in reports {
        for n in &r.notes {
            out += &format!("note ({}): {n}\n", r.target);
        }
    }
    out
}

/// The shaped downlinks' phases, target by target: how each adapted to the capacity steps.
pub fn downlink_table(reports: &[TargetReport]) -> String {
    let mut out = String::new();
    if reports.iter().all(|r| r.downlink_phases.is_empty()) {
        return out;
    }
    out += &format!(
        "{:<16}{:>18}{:>10}{:>12}{:>10}{:>10}{:>10}{:>12}{:>16}\n",
        "shaped downlink",
        "capacity kbit/s×s",
        "sent kb/s",
        "utilised %",
        "video %",
        "audio %",
        "p95 ms",
        "stalled s",
        "adapt s (max)"
    );
    out += &format!(
        "{:<16}{:>18}{:>10}{:>12}{:>10}{:>10}{:>10}{:>12}{:>16}\n",
        "", "", "", "", "lost", "lost", "queue", "video", ""
    );
    for r in reports {
        for p in &r.downlink_phases {
            let adapt = match (p.adapt_median_s, p.adapt_max_s) {
                (None, _) if p.adapted == 0 && p.receivers > 0 && p.adapt_max_s.is_none() => {
                    "-".to_owned()
                }
                (Some(m), Some(x)) => format!("{m:.2} ({x:.2})"),
                (Some(m), None) => format!("{m:.2} ({}/{} did)", p.adapted, p.receivers),
                (None, _) => "-".to_owned(),
            };
            out += &format!(
                "{:<16}{:>18}{:>10.0}{:>12.0}{:>10.2}{:>10.2}{:>10.0}{:>12.1}{:>16}\n",
                r.target,
                format!("{}×{:.0}", p.capacity_kbps, p.seconds),
                p.offered_kbps,
                p.utilisation_pct,
                p.video_loss_pct,
                p.audio_loss_pct,
                p.queue_p95_ms,
                p.video_stalled_s,
                adapt
            );
        }
    }
    out
}

/// A figure with `decimals`, or `-` where the target has none.
fn optional(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_quantiles_and_the_table() {
        let mut r = TargetReport {
            target: "ours".into(),
            ..Default::default()
        };
        r.set_join_times(vec![300.0, 100.0, 200.0]);
        assert_eq!((r.join_ms_p50, r.join_ms_max), (200.0, 300.0));
        let t = table(&[r]);
        assert!(t.contains("ours") && t.contains("join → media"), "{t}");
    }
}
