//! The README's command on a fresh checkout: `signaling serve --dev` in a directory with no
//! `.dev/` yet starts, makes its development keys there (directory 0700, keys 0600) and prints
//! join URLs that open the web client.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

/// Ends the service however the test ends (a failed assertion too).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serve_dev_starts_in_an_empty_directory_and_prints_working_urls() {
    let dir = std::env::temp_dir().join(format!("hc-fresh-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_signaling"))
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let _child = KillOnDrop(child);
    let mut urls = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        for who in ["clinician: ", "patient:   "] {
            if let Some(url) = line.trim_start().strip_prefix(who.trim_start()) {
                urls.push(url.trim().to_owned());
            }
        }
        if urls.len() == 2 {
            break;
        }
    }
    if urls.len() < 2 {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
        panic!("no join URLs printed; stderr:\n{err}");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    for url in &urls {
        let page = reqwest::get(url).await.unwrap();
        assert_eq!(page.status(), 200, "{url}");
        assert!(page.text().await.unwrap().contains("<html"), "{url}");
    }
    let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(".dev"), 0o700);
    assert_eq!(mode(".dev/api.key"), 0o600);
    std::fs::remove_dir_all(&dir).unwrap();
}
