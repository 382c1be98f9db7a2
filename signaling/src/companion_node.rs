//! The single node's SFU in a companion process (`--sfu-mode companion`): the same service on
//! one host, but the SFU workers run in a node process of their own — this binary run as
//! `signaling sfu-node` — linked over loopback QUIC like any standalone node. It outlives a
//! restart of signaling (a SIGTERM, a crash): the node keeps its rooms while its link is down,
//! and the signaling started next finds it (its pid file) instead of starting another, and
//! takes its sessions over, so a restart loses no media. A companion whose signaling does not
//! come back ends itself (`--exit-unlinked-secs`).
//!
//! Everything the link needs is kept in one directory, mode 0700: the cluster CA and the
//! certificates for signaling and the node (made once, files 0600) and `companion.pid`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The node's name in its certificate and in signaling's logs.
pub const NODE_NAME: &str = "companion";

/// How long the companion outlives its last link beyond the control grace before it ends.
pub const LINGER_AFTER_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CompanionError {
    #[error("companion directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("companion certificates in {path}: {source}")]
    Certificates {
        path: PathBuf,
        source: sfu_server::cluster_tls::ClusterTlsError,
    },
    #[error("starting the companion SFU node ({exe}): {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
}

/// The directory's files.
#[derive(Debug, Clone)]
pub struct CompanionFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    /// Signaling's side of the link.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The node's side.
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pid: PathBuf,
}

impl CompanionFiles {
    /// The files in `dir`: the directory (0700) and the certificates made when missing.
    pub fn prepare(dir: &Path) -> Result<Self, CompanionError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir_err = |source| CompanionError::Dir {
            path: dir.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        // Absolute: the running companion is recognised by its certificate's path, whatever
        // directory signaling is started from.
        let dir = &std::fs::canonicalize(dir).map_err(dir_err)?;
        let files = Self {
            dir: dir.to_owned(),
            ca: dir.join("ca.pem"),
            cert: dir.join("signaling.pem"),
            key: dir.join("signaling.key"),
            node_cert: dir.join(format!("{NODE_NAME}.pem")),
            node_key: dir.join(format!("{NODE_NAME}.key")),
            pid: dir.join("companion.pid"),
        };
        let complete = [
            &files.ca,
            &files.cert,
            &files.key,
            &files.node_cert,
            &files.node_key,
        ]
        .iter()
        .all(|p| p.exists());
        if !complete {
            sfu_server::cluster_tls::issue_cluster(dir, &[NODE_NAME.to_owned()]).map_err(
                |source| CompanionError::Certificates {
                    path: dir.to_owned(),
                    source,
                },
            )?;
        }
        Ok(files)
    }
}

/// The companion node: found running, or started.
#[derive(Debug)]
pub struct Companion {
    files: CompanionFiles,
    exe: PathBuf,
    /// The node's arguments (after `sfu-node`).
    args: Vec<OsString>,
    pid: u32,
    /// Set when this process started it (and reaps it); `None` for one found running.
    child: Option<Child>,
    /// When this process started it.
    started: Option<std::time::Instant>,
}

impl Companion {
    /// The companion of `files` if one runs (its pid file names a live `sfu-node` process of
    /// this directory), else a new one started as `exe sfu-node <args>`. A companion found
    /// running keeps the settings it was started with: when they differ from `args`, a
    /// warning says so (stop it to apply them).
    pub fn find_or_start(
        files: CompanionFiles,
        exe: PathBuf,
        args: Vec<OsString>,
    ) -> Result<Self, CompanionError> {
        if let Some(found) = running(&files) {
            let pid = found.pid;
            let wanted = command_line(&exe, &args);
            if found.cmdline[1..] != wanted[1..] {
                tracing::warn!(
                    pid,
                    "the companion SFU node found running keeps the settings it was started with; to apply the new ones stop it when no visit runs (kill -TERM {pid}: it finishes its visits first) and this service starts a new one"
                );
            }
            if found.exe.as_deref() != Some(exe.as_path()) {
                tracing::warn!(
                    pid,
                    running = ?found.exe,
                    "the companion SFU node found running is another build of this program (it was upgraded): it goes on with the visits; to run the new build stop it when no visit runs (kill -TERM {pid}: it finishes its visits first) and this service starts a new one"
                );
            }
            tracing::info!(pid, "companion SFU node found running: taking it over");
            return Ok(Self {
                files,
                exe,
                args,
                pid,
                child: None,
                started: None,
            });
        }
        let mut companion = Self {
            files,
            exe,
            args,
            pid: 0,
            child: None,
            started: None,
        };
        companion.start()?;
        Ok(companion)
    }

    fn start(&mut self) -> Result<(), CompanionError> {
        use std::os::unix::process::CommandExt;
        let child = Command::new(&self.exe)
            .arg("sfu-node")
            .args(&self.args)
            .stdin(Stdio::null())
            // Its own process group: a Ctrl-C or a signal to signaling's group is not its.
            .process_group(0)
            .spawn()
            .map_err(|source| CompanionError::Spawn {
                exe: self.exe.clone(),
                source,
            })?;
        self.pid = child.id();
        self.child = Some(child);
        self.started = Some(std::time::Instant::now());
        if let Err(e) = crate::private_file::write(&self.files.pid, self.pid.to_string().as_bytes())
        {
            tracing::warn!(error = %e, path = %self.files.pid.display(), "writing the companion's pid file failed: a restart will start another");
        }
        tracing::info!(pid = self.pid, "companion SFU node started");
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the companion still runs (reaping it when this process started it).
    fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => running(&self.files).is_some_and(|found| found.pid == self.pid),
        }
    }

    /// Starts the companion again whenever it has ended (checked every second) while this
    /// service runs; its clients' media sessions were lost with it, and signaling moves them
    /// as it does a lost node's.
    pub async fn supervise(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut backoff = Duration::from_secs(1);
        loop {
            tick.tick().await;
            if self.alive() {
                continue;
            }
            // One that ended soon after its start (a taken port, a bad setting) is not
            // started again every second: the wait doubles, up to 30 s.
            let early = self
                .started
                .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
            if early {
                tracing::error!(pid = self.pid, wait = ?backoff, "the companion SFU node ended soon after its start: starting it again after a wait");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            } else {
                tracing::error!(
                    pid = self.pid,
                    "the companion SFU node ended: starting it again"
                );
                backoff = Duration::from_secs(1);
            }
            if let Err(e) = self.start() {
                tracing::error!(error = %e, "starting the companion SFU node failed");
                self.started = Some(std::time::Instant::now());
            }
        }
    }
}

/// The command line a companion is started with.
fn command_line(exe: &Path, args: &[OsString]) -> Vec<OsString> {
    let mut v = vec![exe.as_os_str().to_owned(), OsString::from("sfu-node")];
    v.extend(args.iter().cloned());
    v
}

/// A companion found running.
struct Found {
    pid: u32,
    cmdline: Vec<OsString>,
    /// Its executable (`None` when it was replaced on disk since: an upgrade).
    exe: Option<PathBuf>,
}

/// The companion of `files`, if its pid file names a live `sfu-node` process of this user
/// linked with this directory's certificates (a reused pid, or another user's process made to
/// look like one, is not it).
fn running(files: &CompanionFiles) -> Option<Found> {
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::MetadataExt;
    let pid: u32 = std::fs::read_to_string(&files.pid)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let owner = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
    if owner != std::fs::metadata("/proc/self").ok()?.uid() {
        return None;
    }
    // A zombie's (or a gone process's) command line is empty.
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline: Vec<OsString> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    let ours = cmdline.get(1).is_some_and(|a| a == "sfu-node")
        && cmdline
            .iter()
            .any(|a| Path::new(a) == files.node_cert.as_path());
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .filter(|p| !p.to_string_lossy().ends_with(" (deleted)"));
    ours.then_some(Found { pid, cmdline, exe })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_gets_its_certificates_once_and_stays_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hc-companion-{}", rand::random::<u64>()));
        let files = CompanionFiles::prepare(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        for key in [&files.key, &files.node_key, &dir.join("ca.key")] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        // Prepared again (a restart): the same certificates, which a running companion holds.
        let ca = std::fs::read(&files.ca).unwrap();
        let cert = std::fs::read(&files.node_cert).unwrap();
        let again = CompanionFiles::prepare(&dir).unwrap();
        assert_eq!(std::fs::read(&again.ca).unwrap(), ca);
        assert_eq!(std::fs::read(&again.node_cert).unwrap(), cert);
        // No companion runs: a stale pid file (this test's own pid, not an sfu-node) names none.
        std::fs::write(&files.pid, std::process::id().to_string()).unwrap();
        assert!(running(&files).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
