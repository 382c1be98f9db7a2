//! `bench`: load-tests the SFU with simulated participants (real ICE, DTLS, SRTP), side by side
//! with the raw UDP relay (the machine's ceiling), and reports throughput, loss, latency, join
//! time, CPU and memory — as a table, JSON and an SVG plot.

use anyhow::Context;
use bench::generator::GeneratorSockets;
use bench::load_run::{RunOptions, TargetKind, run};
use bench::plot::{LoadPoint, draw};
use bench::raw_relay::RawRelay;
use bench::report::{TargetReport, table};
use bench::scenario::{Scenario, ScenarioKind};
use bench::synthetic_media::MediaProfile;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "bench",
    version,
    about = "Load tests: our SFU against the raw UDP relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario against one target.
    Run {
        #[arg(long, env = "BENCH_TARGET", value_enum, default_value = "ours")]
        target: TargetKind,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        deployment: DeploymentArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Run the same scenario against each target in turn and print them side by side.
    Compare {
        #[arg(
            long,
            env = "BENCH_TARGETS",
            value_enum,
            value_delimiter = ',',
            default_value = "ours,relay"
        )]
        targets: Vec<TargetKind>,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Ramp: add load step by step (×factor) until loss > 1 % or p99 latency > 50 ms, or
    /// the generator saturates; report the knee per target.
    Capacity {
        #[arg(
            long,
            env = "BENCH_TARGETS",
            value_enum,
            value_delimiter = ',',
            default_value = "ours"
        )]
        targets: Vec<TargetKind>,
        /// Load multiplier between steps.
        #[arg(long, env = "BENCH_RAMP_FACTOR", default_value_t = 1.5)]
        factor: f64,
        #[arg(long, env = "BENCH_RAMP_STEPS", default_value_t = 8)]
        max_steps: usize,
        /// Keep ramping past the knee (all steps), for the plot.
        #[arg(long, env = "BENCH_FULL_RAMP")]
        full_ramp: bool,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// How long joins take through a running deployment's signaling (WebSocket opened until
    /// the welcome), for the first join of each meeting and later ones.
    Joins {
        #[command(flatten)]
        deployment: DeploymentArgs,
        /// Meetings booked, one after the other.
        #[arg(long, env = "BENCH_MEETINGS", default_value_t = 20)]
        meetings: usize,
        /// Joins measured per meeting.
        #[arg(long, env = "BENCH_JOINS", default_value_t = 10)]
        joins: usize,
        /// A first participant joins each meeting through this address and stays, so the
        /// meeting runs there (another replica: the measured joins are relayed).
        #[arg(long, env = "BENCH_HOLD_VIA")]
        hold_via: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// The raw UDP relay (the harness starts it in its own process).
    Relay {
        #[arg(long, env = "BENCH_RELAY_LISTEN", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Also do SRTP's AES-GCM work: an open's worth per packet in, a seal per copy out.
        #[arg(long, env = "BENCH_RELAY_SRTP")]
        srtp: bool,
    },
}

#[derive(Args, Clone)]
struct LoadArgs {
    #[arg(long, env = "BENCH_SCENARIO", value_enum, default_value = "visits")]
    scenario: ScenarioKind,
    /// Visits, conferences or broadcasts (default 20 visits, 2 conferences, 1 broadcast).
    #[arg(long, env = "BENCH_MEETINGS")]
    meetings: Option<usize>,
    /// Participants per conference (12) or viewers of the broadcast (50).
    #[arg(long, env = "BENCH_SIZE")]
    size: Option<usize>,
    /// Seconds measured once media flows.
    #[arg(long, env = "BENCH_DURATION", default_value_t = 20.0)]
    duration: f64,
    /// Longest wait, in seconds, for every participant's media before measuring.
    #[arg(long, env = "BENCH_SETTLE_TIMEOUT", default_value_t = 30.0)]
    settle_timeout: f64,
    /// Bitrate of the top video layer (the lower simulcast layers add 15 % and 40 % of it).
    #[arg(long, env = "BENCH_VIDEO_KBPS", default_value_t = 600)]
    video_kbps: u32,
    /// Publish one video stream instead of three simulcast layers.
    #[arg(long, env = "BENCH_NO_SIMULCAST")]
    no_simulcast: bool,
    /// Publishers go on sending every simulcast layer when the SFU says nobody receives some
    /// (`pause_encodings`), as a client that ignores it would; by default they stop them, as
    /// the web client does (and, toward the raw relay and Janus, which never say so, stop the
    /// lower layers after the same hold), and the measurement starts once they have.
    #[arg(long, env = "BENCH_IGNORE_PAUSE_ENCODINGS")]
    ignore_pause_encodings: bool,
    #[arg(long, env = "BENCH_FPS", default_value_t = 30)]
    fps: u32,
    #[arg(long, env = "BENCH_KEYFRAME_SECS", default_value_t = 3.0)]
    keyframe_secs: f64,
    #[arg(long, env = "BENCH_NO_AUDIO")]
    no_audio: bool,
    /// Every n-th receiver decrypts and authenticates all it receives (for latency).
    #[arg(long, env = "BENCH_SAMPLE_EVERY", default_value_t = 4)]
    sample_every: usize,
    /// Core the server under test is pinned to.
    #[arg(long, env = "BENCH_SERVER_CORE", default_value_t = 0)]
    server_core: usize,
    /// Core the generator's media thread is pinned to.
    #[arg(long, env = "BENCH_GENERATOR_CORE", default_value_t = 1)]
    generator_core: usize,
    /// How the generator's UDP participants meet the network: on loopback one socket for all,
    /// each participant at an address of its own (127.1.x.y), or a socket each.
    #[arg(long, env = "BENCH_GENERATOR_SOCKETS", value_enum, default_value_t = GeneratorSockets::Shared)]
    generator_sockets: GeneratorSockets,
    /// Hold each SFU worker thread to this fraction of a core (a cgroup v1 CPU quota; root):
    /// its knee is then within reach of a generator on one core, and knee ÷ fraction is its
    /// capacity per core.
    #[arg(long, env = "BENCH_WORKER_CPU_QUOTA")]
    worker_cpu_quota: Option<f64>,
    /// Cores for our SFU's worker threads, worker N on the N-th listed (round robin), instead
    /// of the server's core: e.g. `0,1` puts two workers on two cores (the generator's core
    /// among them, so hold the workers to a quota).
    #[arg(long, env = "BENCH_WORKER_CORES", value_delimiter = ',')]
    worker_cores: Vec<usize>,
    /// Our SFU's workers without ICE-TCP (`ice_tcp = false`): each waits on its UDP socket
    /// alone, as the io_uring receive can in one system call (ADR 0006).
    #[arg(long, env = "BENCH_NO_ICE_TCP")]
    no_ice_tcp: bool,
    /// Pin nothing (short smoke runs beside other work).
    #[arg(long, env = "BENCH_NO_PIN")]
    no_pin: bool,
    /// SFU worker threads.
    #[arg(long, env = "BENCH_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Joins started per second.
    #[arg(long, env = "BENCH_JOIN_RATE", default_value_t = 50.0)]
    join_rate: f64,
    /// The `signaling` binary (default: beside this one).
    #[arg(long, env = "BENCH_SIGNALING_BIN")]
    signaling_bin: Option<PathBuf>,
    /// No live progress line.
    #[arg(long, env = "BENCH_QUIET")]
    quiet: bool,
    /// Sign joins with this Ed25519 key (PKCS#8, as `signaling token jwks --key` creates);
    /// the SFU under test trusts it. Default: a fresh development key per run.
    #[arg(long, env = "BENCH_ISSUER_KEY")]
    issuer_key: Option<PathBuf>,
    /// Shape every receiver's downlink in the generator through this schedule of capacity
    /// steps, kbit/s:seconds (e.g. `3000:10,400:20,250:20,3000:20`; the first phase is taken
    /// as unconstrained), a token bucket draining a drop-tail queue as `tc tbf` does; the
    /// measurement then lasts the schedule and reports each phase: time to adapt,
    /// utilisation, loss (audio and video), p95 queueing delay, video stalled. For a few
    /// receivers (each decrypts and keeps all it receives, as a browser).
    #[arg(long, env = "BENCH_DOWNLINK")]
    downlink: Option<bench::shaped_downlink::LinkSchedule>,
    /// The shaped downlinks' queue, in milliseconds at the current capacity.
    #[arg(long, env = "BENCH_DOWNLINK_QUEUE_MS", default_value_t = 250)]
    downlink_queue_ms: u64,
}

#[derive(Args, Clone)]
struct OutputArgs {
    /// Write the results as JSON.
    #[arg(long, env = "BENCH_JSON")]
    json: Option<PathBuf>,
    /// Draw load against CPU, loss and p99 latency (SVG).
    #[arg(long, env = "BENCH_PLOT")]
    plot: Option<PathBuf>,
}

/// Measuring a running deployment instead of a server the harness starts.
#[derive(Args, Clone)]
struct DeploymentArgs {
    /// The deployment's public address (what browsers open), e.g. https://video.region.example.
    /// Its meetings are booked, and join tokens minted, through its meetings API with
    /// --api-key (the deployment needs tokens.signing_key).
    #[arg(long, env = "BENCH_URL")]
    url: Option<String>,
    /// The meetings API's base, when it is on an internal listener (default: --url).
    #[arg(long, env = "BENCH_API_URL")]
    api_url: Option<String>,
    /// The tester's API key (an [[api.clients]] entry allowed --unit).
    #[arg(long, env = "BENCH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The care unit (HSA-id) the run's meetings are booked for.
    #[arg(long, env = "BENCH_UNIT", default_value = "SE2321000016-BNCH")]
    unit: String,
    /// A CA to trust besides the public roots (PEM), for a region's internal certificates.
    #[arg(long, env = "BENCH_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// The server's process id, when it runs on this machine: its CPU and memory are reported.
    #[arg(long, env = "BENCH_SERVER_PID")]
    server_pid: Option<u32>,
    /// A soak: report delivery, latency and the server's memory every this many seconds of
    /// the measurement (give a long --duration), so drift shows.
    #[arg(long, env = "BENCH_SOAK_INTERVAL")]
    soak_interval: Option<f64>,
    /// Churn (with --url): start a short 1:1 visit this often, seconds, through the whole
    /// measurement — booked, joined, media both ways, left and cancelled — so a soak shows
    /// what joins and leaves leave behind. Its media is not counted in the report.
    #[arg(long, env = "BENCH_CHURN_EVERY")]
    churn_every: Option<f64>,
    /// How long each churn visit lasts, seconds.
    #[arg(long, env = "BENCH_CHURN_VISIT_SECS", default_value_t = 30.0)]
    churn_visit_secs: f64,
}

impl DeploymentArgs {
    /// The deployment `--url` names, if any.
    fn deployment(&self) -> anyhow::Result<Option<bench::deployment::Deployment>> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        anyhow::ensure!(
            url.starts_with("https://") || url.starts_with("http://"),
            "--url {url}: an http(s) address"
        );
        Ok(Some(bench::deployment::Deployment {
            url: url.clone(),
            api_url: self.api_url.clone().unwrap_or_else(|| url.clone()),
            api_key: self
                .api_key
                .clone()
                .context("--url needs --api-key (BENCH_API_KEY): the tester's key")?,
            unit: self.unit.clone(),
            ca_file: self.ca_file.clone(),
        }))
    }

    fn apply(&self, opts: &mut RunOptions) -> anyhow::Result<()> {
        if let Some(d) = self.deployment()? {
            opts.deployment = Some(d);
        }
        opts.server_pid = self.server_pid;
        opts.soak_interval = self
            .soak_interval
            .map(|s| Duration::from_secs_f64(s.max(1.0)));
        if let Some(every) = self.churn_every {
            anyhow::ensure!(
                opts.deployment.is_some(),
                "--churn-every needs a deployment (--url): its visits are booked through the meetings API"
            );
            opts.churn = Some(bench::churn_visits::ChurnOptions {
                every: Duration::from_secs_f64(every.max(1.0)),
                visit: Duration::from_secs_f64(self.churn_visit_secs.max(1.0)),
            });
        }
        Ok(())
    }
}

impl LoadArgs {
    fn options(&self) -> anyhow::Result<RunOptions> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().context("binary directory")?;
        Ok(RunOptions {
            scenario: Scenario::new(self.scenario, self.meetings, self.size),
            profile: MediaProfile {
                audio: !self.no_audio,
                video_kbps: self.video_kbps,
                fps: self.fps,
                keyframe_interval: Duration::from_secs_f64(self.keyframe_secs.max(0.1)),
                simulcast: !self.no_simulcast,
                dynacast: !self.ignore_pause_encodings,
            },
            duration: Duration::from_secs_f64(self.duration),
            settle_timeout: Duration::from_secs_f64(self.settle_timeout),
            sample_every: self.sample_every,
            server_core: (!self.no_pin).then_some(self.server_core),
            generator_core: (!self.no_pin).then_some(self.generator_core),
            generator_sockets: self.generator_sockets,
            worker_cpu_quota: self.worker_cpu_quota,
            worker_cores: self.worker_cores.clone(),
            ice_tcp: !self.no_ice_tcp,
            workers: self.workers,
            join_rate: self.join_rate,
            signaling_bin: self
                .signaling_bin
                .clone()
                .unwrap_or_else(|| dir.join("signaling")),
            bench_bin: exe.clone(),
            progress: !self.quiet,
            issuer_key: self.issuer_key.clone(),
            deployment: None,
            server_pid: None,
            soak_interval: None,
            churn: None,
            downlink: self
                .downlink
                .clone()
                .map(|s| (s, Duration::from_millis(self.downlink_queue_ms.max(1)))),
        })
    }
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({"cpu": cpu, "cores": cores})
}

fn write_outputs(
    out: &OutputArgs,
    reports: &[TargetReport],
    points: &[LoadPoint],
) -> anyhow::Result<()> {
    println!("{}", table(reports));
    let shaped = bench::report::downlink_table(reports);
    if !shaped.is_empty() {
        println!("{shaped}");
    }
    if let Some(path) = &out.json {
        let doc = serde_json::json!({
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "machine": machine(),
            "targets": reports,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &out.plot
        && reports.iter().any(|r| !r.downlink_phases.is_empty())
    {
        bench::plot::draw_downlinks(path, reports)?;
    } else if let Some(path) = &out.plot {
        let points: Vec<LoadPoint> = if points.is_empty() {
            reports
                .iter()
                .map(|r| LoadPoint {
                    target: r.target.clone(),
                    pps_out: r.pps_out,
                    report: r.clone(),
                })
                .collect()
        } else {
            points.to_vec()
        };
        draw(path, &points)?;
    }
    Ok(())
}

/// Whether a step stayed within the limits of a usable call.
fn within_limits(r: &TargetReport) -> bool {
    r.loss_pct <= 1.0
        && r.delivery_loss_pct <= 1.0
        && r.latency_p99_ms <= 50.0
        && r.receiving >= r.receivers_expected
}

async fn capacity(
    target: TargetKind,
    base: &RunOptions,
    factor: f64,
    max_steps: usize,
    full_ramp: bool,
    points: &mut Vec<LoadPoint>,
) -> anyhow::Result<TargetReport> {
    let mut best: Option<TargetReport> = None;
    let mut scale = 1.0;
    let mut last = None;
    for step in 0..max_steps {
        let mut opts = base.clone();
        opts.scenario = base.scenario.scaled(scale);
        eprintln!(
            "[{}] step {}: {} participants",
            target.name(),
            step + 1,
            opts.scenario.plan().len()
        );
        let r = match run(target, &opts).await {
            Ok(r) => r,
            Err(e) => {
                // A step that cannot even run is past the knee; earlier steps still count.
                if let Some(l) = last.as_mut() {
                    let l: &mut TargetReport = l;
                    l.notes.push(format!("the next step failed: {e:#}"));
                }
                break;
            }
        };
        points.push(LoadPoint {
            target: r.target.clone(),
            pps_out: r.pps_out,
            report: r.clone(),
        });
        let ok = within_limits(&r);
        let generator_limited = r.generator_limited;
        if ok {
            best = Some(r.clone());
        }
        last = Some(r);
        if (!ok || generator_limited) && !full_ramp {
            break;
        }
        scale *= factor;
    }
    let stopped_by_generator = last.as_ref().is_some_and(|l| l.generator_limited);
    let mut report = best.clone().or(last).context("no step ran")?;
    report.max_pps_out = best.as_ref().map(|b| b.pps_out);
    report.max_participants = best.as_ref().map(|b| b.participants);
    if stopped_by_generator {
        report.notes.push(
            "the search stopped because the generator saturated, not the server: the server's capacity is higher".into(),
        );
    }
    Ok(report)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Relay { listen, srtp } = cli.command {
        RawRelay::serve(listen, srtp)?;
        return Ok(());
    }
    // Janus's ICE needs a non-loopback interface: run the whole harness in a private network
    // namespace with 127.0.0.2 on a veth.
    let wants_janus = match &cli.command {
        Cmd::Run { target, .. } => *target == TargetKind::Janus,
        Cmd::Compare { targets, .. } | Cmd::Capacity { targets, .. } => {
            targets.contains(&TargetKind::Janus)
        }
        Cmd::Relay { .. } | Cmd::Joins { .. } => false,
    };
    if wants_janus {
        anyhow::ensure!(
            bench::janus_target::installed(),
            "janus is not installed (apt-get install janus)"
        );
        if let Some(status) = bench::janus_target::in_netns()? {
            std::process::exit(status.code().unwrap_or(1));
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Cmd::Run {
                target,
                load,
                deployment,
                out,
            } => {
                let mut opts = load.options()?;
                deployment.apply(&mut opts)?;
                let r = run(target, &opts).await?;
                write_outputs(&out, &[r], &[])
            }
            Cmd::Compare { targets, load, out } => {
                let opts = load.options()?;
                let mut reports = Vec::new();
                for t in targets {
                    reports.push(run(t, &opts).await?);
                }
                write_outputs(&out, &reports, &[])
            }
            Cmd::Capacity {
                targets,
                factor,
                max_steps,
                full_ramp,
                load,
                out,
            } => {
                let opts = load.options()?;
                let mut reports = Vec::new();
                let mut points = Vec::new();
                for t in targets {
                    reports.push(
                        capacity(
                            t,
                            &opts,
                            factor.max(1.05),
                            max_steps,
                            full_ramp,
                            &mut points,
                        )
                        .await?,
                    );
                }
                write_outputs(&out, &reports, &points)
            }
            Cmd::Joins {
                deployment,
                meetings,
                joins,
                hold_via,
                out,
            } => {
                let dep = deployment.deployment()?.context(
                    "bench joins measures a running deployment: give --url and --api-key",
                )?;
                let run = format!("joins-{:06x}", rand::random::<u32>() & 0xff_ffff);
                let r = bench::join_latency::measure(&dep, hold_via.as_deref(), meetings, joins, &run)
                    .await?;
                println!(
                    "joins through {}: first of a meeting p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms ({}); later p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms ({})",
                    dep.url, r.first_ms[0], r.first_ms[1], r.first_ms[2], r.first_joins,
                    r.later_ms[0], r.later_ms[1], r.later_ms[2], r.later_joins
                );
                if let Some(path) = &out.json {
                    let doc = serde_json::json!({"machine": machine(), "url": dep.url,
                        "hold_via": hold_via, "joins": r});
                    std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
                }
                Ok(())
            }
            Cmd::Relay { .. } => Ok(()),
        }
    })
}
