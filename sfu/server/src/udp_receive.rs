//! How a worker receives from its UDP socket.

use serde::Deserialize;

/// `sfu.udp_receive` (`[udp] receive` on a standalone node): `recvmmsg` by default;
/// `io-uring` is an experiment that needs a build with the `io-uring` feature (ADR 0006).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UdpReceive {
    /// `poll`, then `recvmmsg` of up to 32 datagrams at a time.
    #[default]
    Recvmmsg,
    /// One multishot `recvmsg` on an io_uring, into a ring of registered buffers.
    IoUring,
}

impl UdpReceive {
    pub fn name(self) -> &'static str {
        match self {
            UdpReceive::Recvmmsg => "recvmmsg",
            UdpReceive::IoUring => "io-uring",
        }
    }

    /// Whether this build can receive this way.
    pub fn built_in(self) -> bool {
        match self {
            UdpReceive::Recvmmsg => true,
            UdpReceive::IoUring => cfg!(feature = "io-uring"),
        }
    }

    /// Checks the value of `key` (from `source`, a file's section or a flag) against this
    /// build.
    pub fn checked(mode: Option<Self>, source: &str, key: &str) -> anyhow::Result<Self> {
        let mode = mode.unwrap_or_default();
        anyhow::ensure!(
            mode.built_in(),
            "{source}: {key} = \"{}\" needs a build with the io-uring feature (cargo build --release --features io-uring)",
            mode.name()
        );
        Ok(mode)
    }
}

impl std::fmt::Display for UdpReceive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uring_is_refused_by_a_build_without_it_naming_the_source() {
        assert_eq!(
            UdpReceive::checked(None, "x.toml [sfu]", "udp_receive").unwrap(),
            UdpReceive::Recvmmsg
        );
        let chosen = UdpReceive::checked(Some(UdpReceive::IoUring), "x.toml [udp]", "receive");
        if cfg!(feature = "io-uring") {
            assert_eq!(chosen.unwrap(), UdpReceive::IoUring);
        } else {
            let e = chosen.unwrap_err().to_string();
            assert!(
                e.starts_with("x.toml [udp]: receive = \"io-uring\" needs"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_config_names_are_those_of_the_flag() {
        #[derive(Deserialize)]
        struct S {
            udp_receive: UdpReceive,
        }
        let s: S = toml::from_str("udp_receive = \"io-uring\"").unwrap();
        assert_eq!(s.udp_receive, UdpReceive::IoUring);
        use clap::ValueEnum;
        assert_eq!(
            UdpReceive::from_str("io-uring", false).unwrap(),
            UdpReceive::IoUring
        );
        assert!(toml::from_str::<S>("udp_receive = \"uring\"").is_err());
    }
}
