//! A short run of each scenario against our SFU (and one against the raw relay): media
//! flowed, and the JSON report has every field with a plausible value. Needs the workspace's
//! binaries built (`cargo build --workspace --bins`, as `scripts/test` does).

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// One load run at a time: two at once on a 2-core machine would measure each other.
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bench(args: &[&str]) -> Value {
    let _alone = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let signaling = exe.with_file_name("signaling");
    assert!(
        signaling.exists(),
        "{} is missing: build the workspace's binaries first (scripts/test does)",
        signaling.display()
    );
    let json = std::env::temp_dir().join(format!("bench-smoke-{}.json", rand::random::<u64>()));
    let out = Command::new(&exe)
        .args(args)
        .args([
            "--duration",
            "2",
            "--settle-timeout",
            "20",
            "--no-pin",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("bench runs");
    assert!(
        out.status.success(),
        "bench {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    doc
}

fn check(r: &Value, participants: u64, receivers: u64) {
    let f = |k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("field {k} missing in {r}"))
    };
    assert_eq!(r["participants"].as_u64(), Some(participants), "{r}");
    assert_eq!(
        r["receiving"].as_u64(),
        Some(receivers),
        "every receiver got media: {r}"
    );
    assert!(
        f("pps_out") > 50.0 && f("pps_in") > 50.0,
        "packets flowed: {r}"
    );
    assert!(f("generator_pps_received") > 50.0, "{r}");
    assert!(f("loss_pct") < 5.0, "{r}");
    assert!(
        f("delivery_loss_pct") < 5.0,
        "every copy sent reached its receivers: {r}"
    );
    assert_eq!(r["receivers_expected"].as_u64(), Some(receivers), "{r}");
    assert_eq!(r["generator_send_dropped"].as_u64(), Some(0), "{r}");
    assert_eq!(r["generator_receive_dropped"].as_u64(), Some(0), "{r}");
    assert!(
        f("latency_p99_ms") > 0.0 && f("latency_p99_ms") < 1000.0,
        "{r}"
    );
    assert!(f("latency_p50_ms") <= f("latency_p99_ms"), "{r}");
    assert!(r["latency_samples"].as_u64().unwrap() > 10, "{r}");
    assert!(f("join_ms_p50") > 0.0 && f("join_ms_p50") < 10_000.0, "{r}");
    // CPU time is counted in 10 ms ticks: a relay forwarding a few hundred packets for 2 s
    // may use less than one (ours is checked for more below).
    assert!(
        f("server_cpu_pct") >= 0.0 && f("server_cpu_pct") < 400.0,
        "{r}"
    );
    if r["target"] != "relay" {
        assert!(f("server_cpu_pct") > 0.0, "{r}");
    }
    assert!(f("server_rss_mib") > 1.0, "{r}");
    assert!(f("generator_cpu_pct") > 0.0, "{r}");
    for k in [
        "jitter_ms",
        "bytes_in_per_s",
        "bytes_out_per_s",
        "memory_per_participant_kib",
        "server_cpu_pct_per_kpps",
        "fan_out",
    ] {
        assert!(f(k) >= 0.0, "{k}: {r}");
    }
    // The projection is consistent with the measured cost per packet.
    if f("server_cpu_pct") > 0.0 {
        let projected = f("projected_pps_out_per_core");
        let from_cost = 100_000.0 / f("server_cpu_pct_per_kpps");
        assert!(
            (projected - from_cost).abs() / from_cost < 0.01,
            "{projected} vs {from_cost}: {r}"
        );
    }
    assert!((0.0..=100.0).contains(&f("reordered_pct")), "{r}");
    assert!(r["generator_limited"].is_boolean());
}

#[test]
fn each_scenario_runs_against_our_sfu_and_the_relay() {
    let doc = bench(&[
        "run",
        "--target",
        "ours",
        "--scenario",
        "visits",
        "--meetings",
        "3",
    ]);
    assert!(doc["machine"]["cores"].as_u64().unwrap() >= 1);
    check(&doc["targets"][0], 7, 7);
    // Each of the 7 publishers' two lower layers goes unreceived (everyone gets the top one):
    // our SFU asked for them to stop, the publishers did, and the window measured the load
    // without them — what the web client would send.
    let r = &doc["targets"][0];
    assert_eq!(
        (
            r["publisher_layers_sent"].as_u64(),
            r["publisher_layers_paused"].as_u64()
        ),
        (Some(7), Some(14)),
        "{r}"
    );
    let (pps_in, forwarded) = (
        r["pps_in"].as_f64().unwrap(),
        r["pps_in_forwarded"].as_f64().unwrap(),
    );
    assert!(
        pps_in < forwarded * 1.05,
        "only the received layers came in: {pps_in} in, {forwarded} of them forwarded streams"
    );
    assert!(
        !r["notes"].to_string().contains("changed in the window"),
        "the layers had stopped before the window: {r}"
    );
    assert_eq!(
        doc["targets"][0]["sfu_ice_tcp_connections"].as_u64(),
        Some(0),
        "UDP participants"
    );

    // The same visits with every participant over ICE-TCP: one connection each.
    let doc = bench(&[
        "run",
        "--target",
        "ours-tcp",
        "--scenario",
        "visits",
        "--meetings",
        "3",
    ]);
    let r = &doc["targets"][0];
    check(r, 7, 7);
    assert_eq!(r["target"], "ours-tcp");
    assert_eq!(r["sfu_ice_tcp_connections"].as_u64(), Some(7), "{r}");

    // A socket per participant (the others here share one).
    let doc = bench(&[
        "run",
        "--target",
        "ours",
        "--scenario",
        "conference",
        "--meetings",
        "1",
        "--size",
        "4",
        "--generator-sockets",
        "per-participant",
        // As a client that ignores `pause_encodings`: every layer goes on coming in.
        "--ignore-pause-encodings",
    ]);
    let r = &doc["targets"][0];
    check(r, 4, 4);
    assert_eq!(r["fan_out"].as_f64(), Some(3.0));
    // Three simulcast layers come in; each subscriber gets one (the top) and the audio: each
    // such packet is forwarded to the three others, the lower layers to nobody.
    assert_eq!(r["simulcast_layers"].as_u64(), Some(3));
    assert_eq!(r["publisher_layers_paused"].as_u64(), Some(0), "{r}");
    let (pps_in, forwarded) = (
        r["pps_in"].as_f64().unwrap(),
        r["pps_in_forwarded"].as_f64().unwrap(),
    );
    assert!(pps_in > forwarded * 1.2, "lower layers were sent: {r}");
    let ratio = r["pps_out"].as_f64().unwrap() / forwarded;
    assert!(
        (2.5..3.5).contains(&ratio),
        "fan-out 3 of one layer at the SFU: {ratio}"
    );
    // The SFU's own count agrees: it sent about three copies of the forwarded streams, not
    // of every layer.
    let sfu_out = r["sfu_metrics_pps_out"].as_f64().unwrap();
    assert!(
        sfu_out < forwarded * 3.0 * 1.25,
        "{sfu_out} packets/s out: {r}"
    );

    let doc = bench(&[
        "compare",
        "--targets",
        "ours,relay",
        "--scenario",
        "broadcast",
        "--size",
        "5",
    ]);
    let targets = doc["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    for (r, name) in targets.iter().zip(["ours", "relay"]) {
        assert_eq!(r["target"], name);
        check(r, 6, 5);
        // The publisher's lower layers stopped toward both: the relay is given what our SFU is.
        assert_eq!(r["publisher_layers_paused"].as_u64(), Some(2), "{r}");
    }
    let pps_in = |r: &Value| r["pps_in"].as_f64().unwrap();
    let (ours, relay) = (pps_in(&targets[0]), pps_in(&targets[1]));
    assert!(
        (ours - relay).abs() / relay < 0.1,
        "the same packets in: {ours} and {relay} a second"
    );
}

#[test]
fn janus_runs_as_the_peer_sfu_where_installed() {
    if !std::path::Path::new("/usr/bin/janus").exists() {
        eprintln!("janus is not installed (apt-get install janus): skipped");
        return;
    }
    let doc = bench(&[
        "run",
        "--target",
        "janus",
        "--scenario",
        "visits",
        "--meetings",
        "2",
    ]);
    let r = &doc["targets"][0];
    assert_eq!(r["target"], "janus");
    check(r, 4, 4);
    // Janus never says `pause_encodings`: the lower layers stopped after our SFU's hold, so it
    // is given the packets ours is, and its subscribers went on receiving the top layer.
    assert_eq!(r["publisher_layers_paused"].as_u64(), Some(8), "{r}");
}

/// `bench run --url`: a running service (started here as an operator would, its API key the
/// tester's) is measured from outside — meetings booked and tokens minted through its API,
/// media through it, its process's memory per interval of a soak — and the run's meetings
/// are cancelled afterwards.
#[test]
fn a_running_deployment_is_measured_through_its_api_with_a_soak() {
    use std::io::{BufRead, BufReader};
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let dir = std::env::temp_dir().join(format!("bench-deployment-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = "bench-tester-key-0123456789";
    let mut server = Command::new(exe.with_file_name("signaling"))
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .arg("--dev-key")
        .arg(dir.join("issuer.key"))
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"))
        .args(["--api-key", key])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let pid = server.id().to_string();
    // Ends the service however the test ends.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = KillOnDrop(server);
    let base = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.trim()
                .strip_prefix("clinician: ")
                .and_then(|u| u.find("/m/").map(|i| u[..i].to_owned()))
        })
        .expect("the service printed its address");
    let doc = bench(&[
        "run",
        "--url",
        &base,
        "--api-key",
        key,
        "--server-pid",
        &pid,
        "--scenario",
        "visits",
        "--meetings",
        "2",
        "--soak-interval",
        "1",
    ]);
    let r = &doc["targets"][0];
    assert_eq!(r["participants"].as_u64(), Some(4), "{r}");
    assert_eq!(
        r["receiving"].as_u64(),
        Some(4),
        "every receiver got media: {r}"
    );
    assert!(r["delivery_loss_pct"].as_f64().unwrap() < 5.0, "{r}");
    assert!(r["server_rss_mib"].as_f64().unwrap() > 1.0, "{r}");
    let intervals = r["intervals"].as_array().expect("a soak's intervals");
    assert!(!intervals.is_empty(), "{r}");
    for i in intervals {
        assert!(i["pps_out"].as_f64().unwrap() > 50.0, "{i}");
        assert!(i["server_rss_mib"].as_f64().unwrap() > 1.0, "{i}");
        assert!(i["latency_p99_ms"].as_f64().unwrap() > 0.0, "{i}");
    }
    // The run's meetings were booked through the API and are cancelled now.
    let listed: Value = {
        let out = Command::new("curl")
            .args(["-s", "-H", &format!("Authorization: Bearer {key}")])
            .arg(format!("{base}/api/v1/meetings"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let meetings = listed["meetings"].as_array().expect("meetings listed");
    let bench_meetings: Vec<&Value> = meetings
        .iter()
        .filter(|m| m["id"].as_str().is_some_and(|id| id.starts_with("bench-")))
        .collect();
    assert_eq!(bench_meetings.len(), 2, "{listed}");
    assert!(
        bench_meetings.iter().all(|m| m["status"] == "cancelled"),
        "{listed}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
