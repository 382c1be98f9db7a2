//! Log setup shared by the `sfu` and `signaling` binaries: to stderr, `RUST_LOG` filtering,
//! plain text or JSON lines.
//!
//! By default the webrtc-rs crates log errors only: their warnings name client addresses.

pub const DEFAULT_FILTER: &str =
    "info,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,rtc_srtp=error,rtc_mdns=error";

pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
