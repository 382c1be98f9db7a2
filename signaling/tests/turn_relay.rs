//! The TURN credentials the service hands out work on a real coturn (Debian's `turnserver`,
//! `use-auth-secret`): an allocation with fresh credentials succeeds; expired ones, or ones
//! signed with another secret, are refused with 401.

use rtc_stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_REQUESTED_TRANSPORT, ATTR_USERNAME};
use rtc_stun::error_code::ErrorCodeAttribute;
use rtc_stun::integrity::MessageIntegrity;
use rtc_stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, Message,
    MessageType, Setter, TransactionId,
};
use rtc_stun::textattrs::TextAttribute;
use signaling::turn_credentials::TurnConfig;
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "a-secret-shared-with-coturn-0001";
const REALM: &str = "video.region.test";

struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_coturn(port: u16) -> Coturn {
    let dir = std::env::temp_dir().join(format!("hc-coturn-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
            "--listening-port",
            &port.to_string(),
            "--min-port",
            "49160",
            "--max-port",
            "49200",
            "--use-auth-secret",
            "--static-auth-secret",
            SECRET,
            "--realm",
            REALM,
            "--allow-loopback-peers",
            "--simple-log",
            "--log-file",
            "stdout",
            "--pidfile",
            dir.join("turnserver.pid").to_str().unwrap(),
            "--userdb",
            dir.join("turndb").to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Debian's coturn (`turnserver`) is installed (.ci/run installs it)");
    Coturn(child)
}

fn exchange(socket: &UdpSocket, m: &Message) -> Option<Message> {
    socket.send(&m.raw).unwrap();
    let mut buf = [0u8; 1500];
    let n = socket.recv(&mut buf).ok()?;
    let mut r = Message::new();
    r.unmarshal_binary(&buf[..n]).ok()?;
    Some(r)
}

fn allocate(setters: &[Box<dyn Setter + '_>]) -> Message {
    let mut m = Message::new();
    m.build(&[
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        Box::new(TransactionId::new()),
    ])
    .unwrap();
    // UDP relaying (17), as browsers ask.
    m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    for s in setters {
        s.add_to(&mut m).unwrap();
    }
    m
}

/// Allocate as a browser does: unauthenticated first (401 with realm and nonce), then with the
/// long-term credential. Returns the final response's class and error code.
fn try_allocate(port: u16, username: &str, password: &str) -> (bool, Option<u16>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    socket.connect(("127.0.0.1", port)).unwrap();
    // coturn may still be starting: retry the first request for a while.
    let challenge = (0..100)
        .find_map(|_| {
            let r = exchange(&socket, &allocate(&[]));
            if r.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            r
        })
        .expect("coturn answers");
    assert_eq!(challenge.typ.class, CLASS_ERROR_RESPONSE);
    let nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE)
        .unwrap()
        .text;
    let realm = TextAttribute::get_from_as(&challenge, ATTR_REALM)
        .unwrap()
        .text;
    assert_eq!(realm, REALM);
    let provider = rtc_crypto::default_provider().unwrap();
    let integrity = MessageIntegrity::new_long_term_integrity_with_provider(
        username.to_owned(),
        realm.clone(),
        password.to_owned(),
        provider.crypto(),
    )
    .unwrap();
    let request = allocate(&[
        Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
        Box::new(TextAttribute::new(ATTR_REALM, realm)),
        Box::new(TextAttribute::new(ATTR_NONCE, nonce)),
        Box::new(integrity),
    ]);
    let response = exchange(&socket, &request).expect("an answer to the allocation");
    let mut code = ErrorCodeAttribute::default();
    let error = rtc_stun::message::Getter::get_from(&mut code, &response)
        .ok()
        .map(|()| code.code.0);
    (response.typ.class == CLASS_SUCCESS_RESPONSE, error)
}

#[test]
fn coturn_takes_fresh_credentials_and_refuses_expired_or_forged_ones() {
    let port = free_udp_port();
    let _coturn = start_coturn(port);
    let turn = TurnConfig::new(
        vec![format!("turn:127.0.0.1:{port}")],
        SECRET.as_bytes().to_vec(),
        Duration::from_secs(3600),
    )
    .unwrap();

    let fresh = turn.credentials("p-fresh", SystemTime::now());
    assert_eq!(
        try_allocate(port, &fresh.username, &fresh.credential),
        (true, None),
        "fresh credentials allocate a relay"
    );

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = turn.credentials_until("p-old", now - 60);
    assert_eq!(
        try_allocate(port, &expired.username, &expired.credential),
        (false, Some(401)),
        "credentials past their expiry are refused"
    );

    let other = TurnConfig::new(
        vec![format!("turn:127.0.0.1:{port}")],
        b"not-the-secret-coturn-knows-0001".to_vec(),
        Duration::from_secs(3600),
    )
    .unwrap()
    .credentials("p-forged", SystemTime::now());
    assert_eq!(
        try_allocate(port, &other.username, &other.credential),
        (false, Some(401)),
        "credentials made with another secret are refused"
    );
}
