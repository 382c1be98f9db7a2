//! SFU nodes on the control link: signaling accepts a node only under a name its certificate
//! carries, so one node cannot pass for another (a real `sfu` process, certificates from
//! `signaling cluster-certs`).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn get(base: &str, path: &str) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::get(format!("{base}{path}"))
        .await
        .expect("signaling answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_node_is_accepted_only_under_its_certificates_name() {
    let sfu_bin = std::path::Path::new(env!("CARGO_BIN_EXE_signaling")).with_file_name("sfu");
    assert!(
        sfu_bin.exists(),
        "build the sfu binary first (cargo build --workspace --bins)"
    );
    let dir = std::env::temp_dir().join(format!("hc-nodes-{}", rand::random::<u64>()));
    let out = Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args(["cluster-certs", "--node", "sfu-a", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = |name: &str| dir.join(name).display().to_string();
    let server = support::start_command(
        &[],
        &[
            "--sfu-mode",
            "remote",
            "--sfu-listen",
            "127.0.0.1:0",
            "--cluster-ca",
            &file("ca.pem"),
            "--cluster-cert",
            &file("signaling.pem"),
            "--cluster-key",
            &file("signaling.key"),
        ],
    );
    let control = server
        .stdout
        .lock()
        .unwrap()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("SFU control listening on ")
                .map(str::to_owned)
        })
        .expect("the control address printed");
    let node = |node_id: &str| {
        Kill(
            Command::new(&sfu_bin)
                .args(["--signaling", &control, "--node-id", node_id])
                .args(["--cluster-ca", &file("ca.pem")])
                .args([
                    "--cluster-cert",
                    &file("sfu-a.pem"),
                    "--cluster-key",
                    &file("sfu-a.key"),
                ])
                .args([
                    "--bind-ip",
                    "127.0.0.1",
                    "--advertise-ip",
                    "127.0.0.1",
                    "--workers",
                    "1",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };

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
    std::fs::remove_dir_all(&dir).unwrap();
}
