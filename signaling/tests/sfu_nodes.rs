//! SFU nodes on the control link, with real `sfu` processes and certificates from
//! `signaling cluster-certs`: signaling accepts a node only under a name its certificate
//! carries, and a node stopped with SIGTERM drains — no new rooms, its visits go on until they
//! end (or the drain deadline, when they move to another node), then it exits; a killed node's
//! visits have media again on another node within seconds. A node keeps its rooms while its
//! link to signaling is down, so a signaling restart loses no media.

mod support;

use support::{Kill, until};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Stops a node as Kubernetes and systemd do.
fn sigterm(node: &std::process::Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Status and body of a GET; (0, "") while nothing listens there yet.
async fn get(base: &str, path: &str) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match reqwest::get(format!("{base}{path}")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Signaling in remote mode (with `--api-key`), certificates from `cluster-certs` for
/// `nodes`, and real `sfu` processes started on demand.
struct Cluster {
    server: support::Server,
    dir: std::path::PathBuf,
    control: String,
    sfu_bin: std::path::PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    fn start(nodes: &[&str]) -> Self {
        Self::start_on(nodes, &free_addr())
    }

    /// The same, signaling's control listener at `control`.
    fn start_on(nodes: &[&str], control: &str) -> Self {
        let sfu_bin = std::path::Path::new(env!("CARGO_BIN_EXE_signaling")).with_file_name("sfu");
        assert!(
            sfu_bin.exists(),
            "build the sfu binary first (cargo build --workspace --bins)"
        );
        let dir = std::env::temp_dir().join(format!("hc-nodes-{}", rand::random::<u64>()));
        let mut certs = Command::new(env!("CARGO_BIN_EXE_signaling"));
        certs.arg("cluster-certs").arg("--out").arg(&dir);
        for n in nodes {
            certs.args(["--node", n]);
        }
        let out = certs.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = |name: &str| dir.join(name).display().to_string();
        // A fixed control address and a meeting store: the service can be restarted with the
        // nodes finding it again.
        let server = support::start_with(&[
            "--meeting-store",
            &file("meetings.json"),
            "--sfu-mode",
            "remote",
            "--sfu-listen",
            control,
            "--cluster-ca",
            &file("ca.pem"),
            "--cluster-cert",
            &file("signaling.pem"),
            "--cluster-key",
            &file("signaling.key"),
        ]);
        let control = server
            .printed("SFU control listening on ")
            .expect("the control address printed");
        Self {
            server,
            dir,
            control,
            sfu_bin,
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Node `name` (its own certificate) with its metrics on a free address, linked: the
    /// node, and that address.
    async fn linked_node(&self, name: &str) -> (Kill, String) {
        let metrics = free_addr();
        let node = Kill(self.node(name, name, &["--metrics-listen", &metrics]));
        until("the node linked", 20, async || {
            get(&self.server.http_base, "/readyz").await.0 == 200
        })
        .await;
        (node, metrics)
    }

    /// An `sfu` node saying it is `node_id`, presenting the certificate issued to `cert`.
    fn node(&self, node_id: &str, cert: &str, extra: &[&str]) -> std::process::Child {
        // By name: the node resolves signaling's address at each dial (a Kubernetes Service).
        let signaling = self.control.replace("127.0.0.1", "localhost");
        Command::new(&self.sfu_bin)
            .args(["--signaling", &signaling, "--node-id", node_id])
            .args(["--cluster-ca", &self.file("ca.pem")])
            .args(["--cluster-cert", &self.file(&format!("{cert}.pem"))])
            .args(["--cluster-key", &self.file(&format!("{cert}.key"))])
            .args([
                "--bind-ip",
                "127.0.0.1",
                "--advertise-ip",
                "127.0.0.1",
                "--workers",
                "1",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.file(&format!("{node_id}.log"))).unwrap())
            .spawn()
            .unwrap()
    }
}

#[tokio::test]
async fn a_node_is_accepted_only_under_its_certificates_name() {
    let cluster = Cluster::start(&["sfu-a"]);
    let server = &cluster.server;
    let node = |node_id: &str| Kill(cluster.node(node_id, "sfu-a", &[]));

    // The certificate of sfu-a presented as "sfu-b": refused, and counted.
    let impostor = node("sfu-b");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = get(&server.http_base, "/metrics").await;
        if metrics
            .lines()
            .any(|l| l.starts_with("signaling_sfu_nodes_refused_total") && !l.ends_with(" 0"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the impostor was never refused");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get(&server.http_base, "/readyz").await.0,
        503,
        "no node is up"
    );
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains("certificate does not carry that name"),
        "{log}"
    );
    // The node is told why: its own log says so (it had only "connection lost" before).
    until("the node's log to say why it was refused", 10, async || {
        std::fs::read_to_string(cluster.file("sfu-b.log"))
            .unwrap()
            .contains("certificate does not carry that name")
    })
    .await;
    // Refused right after each hello, it dials again with a backoff (200 ms, 400, 800, 1.6 s,
    // …), not every 200 ms: over 3 s at most 5 more refusals, not 15.
    let refusals = || {
        std::fs::read_to_string(cluster.file("sfu-b.log"))
            .unwrap()
            .matches("certificate does not carry that name")
            .count()
    };
    let before = refusals();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let more = refusals() - before;
    assert!(more <= 5, "{more} refusals in 3 s: no backoff");
    drop(impostor);

    // Under its own name: accepted.
    let _node = node("sfu-a");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&server.http_base, "/readyz").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the node was not accepted under its own name"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node's certificate renewed in place (as cert-manager's CSI driver renews each pod's own)
/// is read again at its next dial, with no restart: here the files are swapped for another
/// node's while signaling restarts, so the redial is refused for that name; swapped back, the
/// next redial is accepted.
#[tokio::test]
async fn a_nodes_certificate_files_are_read_again_at_each_dial() {
    let mut cluster = Cluster::start(&["sfu-a", "sfu-b"]);
    let dir = cluster.dir.clone();
    let install = |from: &str| {
        for ext in ["pem", "key"] {
            let tmp = dir.join(format!("live.{ext}.tmp"));
            std::fs::copy(dir.join(format!("{from}.{ext}")), &tmp).unwrap();
            std::fs::rename(&tmp, dir.join(format!("live.{ext}"))).unwrap();
        }
    };
    install("sfu-a");
    let _node = Kill(cluster.node("sfu-a", "live", &[]));
    let ready = async |cluster: &Cluster| get(&cluster.server.http_base, "/readyz").await.0 == 200;
    until("the node linked", 20, async || ready(&cluster).await).await;

    // Another name's certificate in its files, and a redial (signaling restarts): refused.
    install("sfu-b");
    let refused_before = std::fs::read_to_string(cluster.file("sfu-a.log"))
        .unwrap()
        .matches("certificate does not carry that name")
        .count();
    assert_eq!(refused_before, 0);
    cluster.server.restart();
    until(
        "the node's redial refused for the new file's name",
        20,
        async || {
            std::fs::read_to_string(cluster.file("sfu-a.log"))
                .unwrap()
                .contains("certificate does not carry that name")
        },
    )
    .await;
    assert!(!ready(&cluster).await, "not linked with another's name");

    // Its own again: the next redial is accepted.
    install("sfu-a");
    until("the node linked again", 20, async || ready(&cluster).await).await;
}

/// Signaling's control listener at `[::]` (the chart's setting) takes nodes over IPv4 and over
/// IPv6 on one port, so one setting fits a cluster of either family or both (the chart bound
/// `0.0.0.0` before, where an IPv6-only cluster's nodes never link).
#[tokio::test]
async fn a_control_listener_on_every_address_takes_nodes_of_both_families() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: this host has no IPv6 loopback");
        return;
    }
    let port = free_addr().rsplit_once(':').unwrap().1.to_owned();
    let mut cluster = Cluster::start_on(&["sfu-a", "sfu-b"], &format!("[::]:{port}"));
    let serving = async |cluster: &Cluster| {
        let (_, text) = get(&cluster.server.http_base, "/metrics").await;
        text.lines()
            .find(|l| l.starts_with("signaling_sfu_nodes{state=\"serving\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0) as u32
    };
    cluster.control = format!("127.0.0.1:{port}");
    let _four = Kill(cluster.node("sfu-a", "sfu-a", &[]));
    until("the node dialling over IPv4 linked", 20, async || {
        serving(&cluster).await == 1
    })
    .await;
    cluster.control = format!("[::1]:{port}");
    let _six = Kill(cluster.node("sfu-b", "sfu-b", &[]));
    until("the node dialling over IPv6 linked too", 20, async || {
        serving(&cluster).await == 2
    })
    .await;
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Sum of a counter over its labels on a node's metrics listener.
async fn node_counter(metrics: &str, name: &str) -> u64 {
    let (_, text) = get(&format!("http://{metrics}"), "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_finishes_its_visits_and_takes_no_new_ones() {
    use support::media::{FrameSender, visit};
    let cluster = Cluster::start(&["sfu-a", "sfu-b"]);
    let server = &cluster.server;
    // Load reports every 0.5 s (2 s by default), so a start-up leaves them soon (below).
    let node = |name: &str, metrics: &str| {
        cluster.node(
            name,
            name,
            &["--metrics-listen", metrics, "--load-interval-ms", "500"],
        )
    };
    let (metrics_a, metrics_b) = (free_addr(), free_addr());
    let mut a = node("sfu-a", &metrics_a);
    until("node a linked", 20, async || {
        get(&server.http_base, "/readyz").await.0 == 200
    })
    .await;

    // A visit on node a, media flowing.
    let (doctor_media, patient_media, doctor, patient) = visit(server, "visit-1").await;
    let _doctor_events = doctor.negotiate_in_background(&doctor_media);
    let _patient_events = patient.negotiate_in_background(&patient_media);
    let frames = |m: &support::media::MediaPeer| m.video_frames().len();
    let sender = FrameSender::start(doctor_media, patient_media);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flowing = node_counter(&metrics_a, "sfu_packets_in_total").await;
    assert!(
        flowing > 30,
        "visit-1 runs on node a ({flowing} packets in)"
    );

    // Node b joins; node a is told to stop.
    let b = Kill(node("sfu-b", &metrics_b));
    // Linked as signaling sees it (the node's own readiness turns before signaling has read
    // its hello): only then can a new room be placed there.
    until("node b linked", 20, async || {
        let text = get(&server.http_base, "/metrics").await.1;
        text.contains("signaling_sfu_nodes{state=\"serving\"} 2")
    })
    .await;
    // Rooms go to the node with the least CPU in its last load report, and node b's first
    // reports carry its start-up (a debug build's, beside the other tests, which on a loaded
    // CI machine takes seconds): past them, the idle node b is the one with less, and takes the
    // next room.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    // Node b gets a visit of three, so it carries more than node a: without the drain, the
    // next room would go to node a.
    let (db, pb, mut doctor_b, patient_b) = visit(server, "visit-b").await;
    let companion = server.token("visit-b", "rel-1", "Bo", "companion");
    let mut companion = server.connect(&companion).await;
    companion.next_of("welcome").await;
    let waiting = doctor_b.first_waiting().await;
    doctor_b
        .send(serde_json::json!({"type": "admit", "participant": waiting}))
        .await;
    companion.next_of("admitted").await;
    let cm = support::media::MediaPeer::new("companion").await;
    companion.start_media(&cm).await;
    let _b_events = [
        doctor_b.negotiate_in_background(&db),
        patient_b.negotiate_in_background(&pb),
        companion.negotiate_in_background(&cm),
    ];
    sigterm(&a);
    until("node a reporting its drain", 10, async || {
        get(&format!("http://{metrics_a}"), "/readyz").await.0 == 503
    })
    .await;
    // Operators see it: signaling counts one node serving and one draining, and every metric
    // of a node is named and explained.
    until("signaling counting the draining node", 10, async || {
        let text = get(&server.http_base, "/metrics").await.1;
        text.contains("signaling_sfu_nodes{state=\"draining\"} 1")
            && text.contains("signaling_sfu_nodes{state=\"serving\"} 1")
    })
    .await;
    // The node's gauges are exported about once a second: waited for, not read once (up to
    // 10 s: this test shares two cores with the others of its binary).
    let counted = std::time::Instant::now() + Duration::from_secs(10);
    let node_metrics = loop {
        let node_metrics = get(&format!("http://{metrics_a}"), "/metrics").await.1;
        if node_metrics.contains("sfu_participants{worker=\"0\"} 2") {
            break node_metrics;
        }
        let seen: Vec<&str> = node_metrics
            .lines()
            .filter(|l| l.starts_with("sfu_participants") || l.starts_with("sfu_rooms"))
            .collect();
        assert!(
            std::time::Instant::now() < counted,
            "the draining node never counted visit-1's two participants; it exports {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        support::convention_problems(&node_metrics),
        Vec::<String>::new()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        a.try_wait().unwrap().is_none(),
        "node a stays while its visit runs"
    );
    // Packets into node a per second (its counters are exported about once a second: over
    // 6 s, an export early or late on a loaded machine moves the rate by a sixth, not the
    // half it did over 3 s — which once read visit-1 alone as 91/s).
    let rate_a = async || {
        let before = node_counter(&metrics_a, "sfu_packets_in_total").await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        (node_counter(&metrics_a, "sfu_packets_in_total").await - before) / 6
    };
    let visit_1_only = rate_a().await;
    assert!(
        visit_1_only > 20,
        "visit-1's media still flows through draining node a ({visit_1_only}/s)"
    );

    // A new visit goes to node b.
    let (d2, p2, doctor2, patient2) = visit(server, "visit-2").await;
    let _d2_events = doctor2.negotiate_in_background(&d2);
    let _p2_events = patient2.negotiate_in_background(&p2);
    let sender2 = FrameSender::start(d2, p2);
    until("visit-2's media on node b", 15, async || {
        node_counter(&metrics_b, "sfu_packets_in_total").await > 30
    })
    .await;
    // …and none of it to node a (which has fewer participants than node b).
    let with_visit_2 = rate_a().await;
    assert!(
        with_visit_2 < visit_1_only * 3 / 2,
        "node a took visit-2 too ({visit_1_only}/s before, {with_visit_2}/s after)"
    );

    // visit-1 ends (cancelled through the API): node a has nothing left and exits, cleanly.
    let (status, _) = server
        .api(
            "POST",
            "/api/v1/meetings/visit-1/cancel",
            Some(support::API_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(status) = a.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "node a did not exit after its last visit ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(exit.success(), "node a exited with {exit}");
    // visit-2 goes on, on node b.
    let (d2, p2) = sender2.stop().await;
    let was = frames(&d2) + frames(&p2);
    let sender2 = FrameSender::start(d2, p2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (d2, p2) = sender2.stop().await;
    assert!(
        frames(&d2) + frames(&p2) > was + 20,
        "visit-2 still flowing on node b"
    );
    let _ = sender.stop().await;
    drop(b);
}

/// Node a's process and metrics listener, node b's, and a visit on node a whose participants
/// recover as clients do. (Bind `_b` to a name: a pattern's `..` drops it, ending node b.)
struct VisitOnNodeA {
    a: std::process::Child,
    metrics_a: String,
    _b: Kill,
    metrics_b: String,
    doctor: support::media::Recovering,
    patient: support::media::Recovering,
}

/// A visit on node a, both participants recovering as clients do; node b linked too.
async fn visit_on_node_a(cluster: &Cluster, a_extra: &[&str]) -> VisitOnNodeA {
    use support::media::visit;
    let server = &cluster.server;
    let (metrics_a, metrics_b) = (free_addr(), free_addr());
    let mut extra = vec!["--metrics-listen", &metrics_a];
    extra.extend_from_slice(a_extra);
    let a = cluster.node("sfu-a", "sfu-a", &extra);
    until("node a linked", 20, async || {
        get(&server.http_base, "/readyz").await.0 == 200
    })
    .await;
    let (doctor_media, patient_media, doctor, patient) = visit(server, "visit-1").await;
    let doctor = doctor.recover_on_loss(doctor_media);
    let patient = patient.recover_on_loss(patient_media);
    let b = Kill(cluster.node("sfu-b", "sfu-b", &["--metrics-listen", &metrics_b]));
    until("node b linked", 20, async || {
        get(&format!("http://{metrics_b}"), "/readyz").await.0 == 200
    })
    .await;
    until("media both ways through node a", 15, async || {
        doctor.frames().len() > 30 && patient.frames().len() > 30
    })
    .await;
    assert_eq!(
        node_counter(&metrics_b, "sfu_packets_in_total").await,
        0,
        "the visit is on node a"
    );
    VisitOnNodeA {
        a,
        metrics_a,
        _b: b,
        metrics_b,
        doctor,
        patient,
    }
}

/// Media back through the other node: both receive frames again from a new session, and node
/// b forwards them. Returns each one's longest gap since `from`.
async fn media_back_on_node_b(
    metrics_b: &str,
    doctor: &support::media::Recovering,
    patient: &support::media::Recovering,
    from: Instant,
) -> (Duration, Duration) {
    // Frames in the new sessions, not only frames after `from`: a draining node's visit
    // flows on in the old ones until the deadline, and those frames once let this wait end
    // before the new sessions carried anything (node b then had forwarded nothing 2 s on).
    until("media back for both", 20, async || {
        doctor.sessions() > 1
            && patient.sessions() > 1
            && doctor.frames_in_newest_session() > 0
            && patient.frames_in_newest_session() > 0
            && doctor
                .frames()
                .last()
                .is_some_and(|t| *t > from + Duration::from_secs(1))
            && patient
                .frames()
                .last()
                .is_some_and(|t| *t > from + Duration::from_secs(1))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = Instant::now();
    assert!(
        node_counter(metrics_b, "sfu_packets_in_total").await > 30,
        "the visit's media goes through node b"
    );
    (
        doctor.longest_gap(from, now),
        patient.longest_gap(from, now),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_visit_has_media_again_on_another_node_within_5_s() {
    let cluster = Cluster::start(&["sfu-a", "sfu-b"]);
    let VisitOnNodeA {
        mut a,
        metrics_b,
        mut doctor,
        mut patient,
        _b: _node_b,
        ..
    } = visit_on_node_a(&cluster, &[]).await;
    let killed = Instant::now();
    a.kill().unwrap();
    let _ = a.wait();
    let (doctor_gap, patient_gap) =
        media_back_on_node_b(&metrics_b, &doctor, &patient, killed).await;
    eprintln!(
        "media gap after kill -9 of the node: clinician {doctor_gap:?}, patient {patient_gap:?}"
    );
    assert!(
        doctor_gap < Duration::from_secs(5) && patient_gap < Duration::from_secs(5),
        "media back within 5 s (clinician {doctor_gap:?}, patient {patient_gap:?})"
    );
    assert_admission_kept(&mut doctor, &mut patient);
}

/// A node that stalls past its link's idle timeout: its visit moves to node b meanwhile. When
/// it comes back it still runs the old sessions; they are ended at its return, and what it
/// then reports of their end is expected — not counted as a node speaking of what it does not
/// run (`signaling_sfu_events_refused_total`, an operator's alarm).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_nodes_kept_sessions_end_at_its_return_with_no_event_refused() {
    use support::node_participants;
    let cluster = Cluster::start(&["sfu-a", "sfu-b"]);
    let VisitOnNodeA {
        a,
        metrics_a,
        metrics_b,
        doctor,
        patient,
        _b: _node_b,
        ..
    } = visit_on_node_a(&cluster, &[]).await;
    let a = Kill(a);
    let signal = |sig: &str| {
        let sent = Command::new("kill")
            .args([sig, &a.0.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    signal("-STOP");
    let stopped = Instant::now();
    media_back_on_node_b(&metrics_b, &doctor, &patient, stopped).await;
    signal("-CONT");
    until(
        "node a's kept sessions ended at its return",
        20,
        async || node_participants(&metrics_a).await == Some(0),
    )
    .await;
    // Its reports of those ends have come in by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let text = get(&cluster.server.http_base, "/metrics").await.1;
    let refused: f64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("signaling_sfu_events_refused_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        refused,
        0.0,
        "events refused from the returning node: {}",
        std::fs::read_to_string(&cluster.server.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("does not run"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The visit goes on through node b.
    let now = Instant::now();
    until("media still flowing through node b", 5, async || {
        doctor.frames().last().is_some_and(|t| *t > now)
            && patient.frames().last().is_some_and(|t| *t > now)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_drain_deadline_a_nodes_visit_moves_with_under_3_s_of_media_lost() {
    let cluster = Cluster::start(&["sfu-a", "sfu-b"]);
    let VisitOnNodeA {
        mut a,
        metrics_b,
        mut doctor,
        mut patient,
        _b: _node_b,
        ..
    } = visit_on_node_a(&cluster, &["--drain-timeout-secs", "3"]).await;
    let term = Instant::now();
    sigterm(&a);
    // The visit goes on through the draining node until the deadline...
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(doctor.sessions(), 1, "no move before the deadline");
    assert!(
        doctor.longest_gap(term, Instant::now()) < Duration::from_millis(500),
        "media flows on while the node drains"
    );
    // ...then the node ends and its participants move.
    let exit = a.wait().unwrap();
    assert!(exit.success(), "node a exited with {exit}");
    let (doctor_gap, patient_gap) = media_back_on_node_b(&metrics_b, &doctor, &patient, term).await;
    eprintln!("media gap at the drain deadline: clinician {doctor_gap:?}, patient {patient_gap:?}");
    assert!(
        doctor_gap < Duration::from_secs(3) && patient_gap < Duration::from_secs(3),
        "media moved within 3 s (clinician {doctor_gap:?}, patient {patient_gap:?})"
    );
    assert_admission_kept(&mut doctor, &mut patient);
}

/// Neither participant was sent to the waiting room or refused by the SFU along the way.
fn assert_admission_kept(
    doctor: &mut support::media::Recovering,
    patient: &mut support::media::Recovering,
) {
    for (who, r) in [("clinician", doctor), ("patient", patient)] {
        while let Ok(v) = r.events.try_recv() {
            let kind = v["type"].as_str().unwrap_or("");
            assert!(
                !matches!(
                    kind,
                    "returned_to_lobby" | "lobby" | "lobby_position" | "closing"
                ),
                "{who} got {v}"
            );
            assert!(v["type"] != "error", "{who} got {v}");
        }
    }
}

/// Signaling stopped (SIGTERM, as a rollout does) and started again in remote mode: the node
/// keeps its rooms while the control link is down, the clients come back with their resume
/// keys as the same participants with their media sessions kept, admission kept — and the
/// media never stops. Seen failing with the node closing its rooms at a lost link (media
/// stopped ~0.2 s after the SIGTERM) and with the sessions not carried (every client got a
/// fresh session: a new peer connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signaling_restart_loses_no_media_on_a_node() {
    let mut cluster = Cluster::start(&["sfu-a"]);
    let (_a, metrics_a) = cluster.linked_node("sfu-a").await;
    restart_loses_no_media(
        &mut cluster.server,
        &metrics_a,
        "visit-r",
        &[Stop::Terminate],
    )
    .await;
}

/// Killed (a crash, an OOM kill): no hand-over runs, but the store already carries each
/// connected media session under its client's resume key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signaling_crash_loses_no_media_on_a_node() {
    let mut cluster = Cluster::start(&["sfu-a"]);
    let (_a, metrics_a) = cluster.linked_node("sfu-a").await;
    restart_loses_no_media(&mut cluster.server, &metrics_a, "visit-r", &[Stop::Kill]).await;
}

/// The companion node's pid, from its pid file.
fn companion_pid(dir: &std::path::Path) -> u32 {
    std::fs::read_to_string(dir.join("companion.pid"))
        .expect("the companion's pid file")
        .trim()
        .parse()
        .unwrap()
}

/// Ends the companion node a test started (it outlives signaling by design), then removes
/// the test's directory.
struct EndCompanion {
    companion_dir: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Drop for EndCompanion {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.companion_dir.join("companion.pid")) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The single node with its SFU in a companion process (`--sfu-mode companion`): restarted
/// with SIGTERM, then killed and started again, the visit's media never stops — the same
/// companion runs throughout and the new service takes its sessions over. A companion that
/// dies is started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_restart_or_crash_loses_no_media_with_the_companion_node() {
    use support::node_participants;
    let dir = std::env::temp_dir().join(format!("hc-companion-{}", rand::random::<u64>()));
    let companion_dir = dir.join("companion");
    let _end = EndCompanion {
        companion_dir: companion_dir.clone(),
        dir: dir.clone(),
    };
    let (control, metrics) = (free_addr(), free_addr());
    let store = dir.join("meetings.json").display().to_string();
    let mut server = support::start_with(&[
        "--sfu-mode",
        "companion",
        "--companion-dir",
        &companion_dir.display().to_string(),
        "--sfu-listen",
        &control,
        "--companion-metrics-listen",
        &metrics,
        "--meeting-store",
        &store,
    ]);
    until("the companion linked", 20, async || {
        get(&server.http_base, "/readyz").await.0 == 200
    })
    .await;
    let pid = companion_pid(&companion_dir);
    // A restart, then a crash, of the same visit: the sessions kept through the first are
    // carried through the second.
    restart_loses_no_media(
        &mut server,
        &metrics,
        "visit-c",
        &[Stop::Terminate, Stop::Kill],
    )
    .await;
    assert_eq!(
        companion_pid(&companion_dir),
        pid,
        "the same companion process ran through both restarts"
    );
    // Its workers are the service's: killed, it is started again and the service is ready.
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    until("a new companion linked", 20, async || {
        let now = companion_pid(&companion_dir);
        now != pid
            && get(&server.http_base, "/readyz").await.0 == 200
            && node_participants(&metrics).await.is_some()
    })
    .await;
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Stop {
    Terminate,
    Kill,
}

/// A visit on `server` with its media on the node whose metrics are at `metrics_a`: each of
/// `stops` stops the service and starts it again; each time the clients come back with their
/// latest keys and keep their media (a second stop carries the sessions kept at the first).
async fn restart_loses_no_media(
    server: &mut support::Server,
    metrics_a: &str,
    meeting: &str,
    stops: &[Stop],
) {
    use serde_json::json;
    use std::sync::Arc;
    use support::media::{assert_media_flowed, send_frames};
    use support::{joined, node_participants};
    let doctor_token = server.token(meeting, "doc-4411", "Dr Berg", "clinician");
    let patient_token = server.token(meeting, "pat-7f3a", "Anna", "patient");
    let (mut doctor, doctor_welcome, doctor_key) = joined(server, &doctor_token, "").await;
    let (mut patient, patient_welcome, patient_key) = joined(server, &patient_token, "").await;
    let patient_id = doctor.first_waiting().await;
    doctor
        .send(json!({"type": "admit", "participant": patient_id}))
        .await;
    patient.next_of("admitted").await;
    let doctor_media = Arc::new(support::media::MediaPeer::new("doctor").await);
    let patient_media = Arc::new(support::media::MediaPeer::new("patient").await);
    doctor.start_media(&doctor_media).await;
    patient.start_media(&patient_media).await;
    let mut events = vec![
        doctor.negotiate_in_background(&doctor_media),
        patient.negotiate_in_background(&patient_media),
    ];
    let _sending = send_frames([doctor_media.clone(), patient_media.clone()]);
    until("media both ways through node a", 15, async || {
        doctor_media.video_frames().len() > 30 && patient_media.video_frames().len() > 30
    })
    .await;

    let mut keys = (doctor_key, patient_key);
    for &stop in stops {
        let stopped = Instant::now();
        if stop == Stop::Terminate {
            let (status, took) = server.terminate();
            assert!(status.success(), "signaling exited with {status}");
            eprintln!("signaling stopped in {took:?}");
        }
        server.restart(); // (kills it first, if it still runs)
        until("node a linked again", 20, async || {
            get(&server.http_base, "/readyz").await.0 == 200
        })
        .await;

        // A first try the audit log refuses (503) spends nothing: the carry waits for the
        // next (it was lost with the refusal).
        support::chattr("+i", &server.audit);
        let (status, body) = server
            .refused(&format!("token={doctor_token}&resume={}", keys.0))
            .await;
        support::chattr("-i", &server.audit);
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "audit_unavailable", "{body}");
        // Both come back with their keys: the same participants, media kept, admission kept.
        let (mut doctor2, welcome, doctor_key) =
            joined(server, &doctor_token, &format!("&resume={}", keys.0)).await;
        assert_eq!(welcome["participant"], doctor_welcome["participant"]);
        assert_eq!(welcome["media"], "kept", "{stop:?}: {welcome}");
        let (patient2, welcome, patient_key) =
            joined(server, &patient_token, &format!("&resume={}", keys.1)).await;
        assert_eq!(welcome["participant"], patient_welcome["participant"]);
        assert_eq!(welcome["state"], "admitted", "admission kept: {welcome}");
        assert_eq!(welcome["media"], "kept", "{stop:?}: {welcome}");
        keys = (doctor_key, patient_key);
        eprintln!("clients back {:?} after the {stop:?}", stopped.elapsed());
        // The clinician still manages the visit: a chat reaches the patient.
        doctor2
            .send(json!({"type": "chat", "text": "hör du mig?"}))
            .await;
        events.push(patient2.negotiate_in_background(&patient_media));
        events.push(doctor2.negotiate_in_background(&doctor_media));
        let what = format!("the restart ({stop:?})");
        assert_media_flowed(&doctor_media, &patient_media, stopped, &what).await;
        assert_eq!(
            node_participants(metrics_a).await,
            Some(2),
            "the node runs the same two sessions, no new ones"
        );
    }
    // Nobody was told their media ended, sent to the lobby or refused.
    support::assert_undisturbed(events, "hör du mig?");
}

/// A signaling killed while a visit's media ran: the node keeps the sessions the store
/// carried, for their clients to come back to. Nobody comes back here: once the take-over
/// window has passed, they are ended, not left running unmanaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_sessions_nobody_comes_back_for_are_ended_after_the_takeover_window() {
    use support::media::running_visit;
    use support::node_participants;
    let mut cluster = Cluster::start(&["sfu-a"]);
    let (_a, metrics_a) = cluster.linked_node("sfu-a").await;
    let _visit = running_visit(&cluster.server, "visit-k").await;
    assert_eq!(node_participants(&metrics_a).await, Some(2));
    // Their clients' sockets close with the process, and nobody reconnects.
    cluster.server.restart();
    let restarted = Instant::now();
    until("node a linked again", 20, async || {
        get(&cluster.server.http_base, "/readyz").await.0 == 200
    })
    .await;
    // Kept for the clients meanwhile (their peers still send: only signaling ends them).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        node_participants(&metrics_a).await,
        Some(2),
        "the carried sessions are kept for their clients"
    );
    until("the unclaimed sessions ended on the node", 45, async || {
        node_participants(&metrics_a).await == Some(0)
    })
    .await;
    let took = restarted.elapsed();
    eprintln!("unclaimed sessions ended {took:?} after the restart");
    assert!(
        took >= Duration::from_secs(25),
        "ended only once the take-over window (30 s) had passed, not at {took:?}"
    );
}

/// After a restart, a patient whose client comes back without its resume key (a hostile
/// client keeping its old peer connection, or another device) is a new connection of the same
/// person: the media session carried for them ends at once, as a second connection replaces
/// the first — kept, it went on with the admitted permissions it had for the rest of the
/// take-over window (30 s), out of reach of a move to the lobby or a removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_of_the_same_person_ends_their_unclaimed_carried_session() {
    use support::media::running_visit;
    use support::node_participants;
    let mut cluster = Cluster::start(&["sfu-a"]);
    let (_a, metrics_a) = cluster.linked_node("sfu-a").await;
    let _visit = running_visit(&cluster.server, "visit-n").await;
    assert_eq!(node_participants(&metrics_a).await, Some(2));
    cluster.server.restart();
    until("node a linked again", 20, async || {
        get(&cluster.server.http_base, "/readyz").await.0 == 200
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(node_participants(&metrics_a).await, Some(2), "both carried");
    let patient_token = cluster
        .server
        .token("visit-n", "pat-7f3a", "Anna", "patient");
    let mut patient = cluster.server.connect(&patient_token).await;
    patient.next_of("welcome").await;
    let back = Instant::now();
    until("the patient's carried session ended", 5, async || {
        node_participants(&metrics_a).await == Some(1)
    })
    .await;
    eprintln!(
        "the carried session ended {:?} after the new connection",
        back.elapsed()
    );
}
