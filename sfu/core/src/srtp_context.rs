//! SRTP/SRTCP protection for one direction of one session, AEAD_AES_128_GCM (RFC 7714), in place.
//!
//! `rtc-srtp` derives the same keys but returns a freshly allocated buffer per packet; the
//! forwarding path instead opens and seals inside the worker's own buffers. The rollover counter
//! is the caller's (each stream keeps its own), so this type holds only keys.

use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use rtc_crypto::{BlockCipherAlgorithm, RTCCrypto};

pub const SRTP_TAG_LEN: usize = 16;
/// SRTCP trailer: authentication tag then the E flag and 31-bit SRTCP index.
pub const SRTCP_TRAILER_LEN: usize = SRTP_TAG_LEN + 4;
pub const MASTER_KEY_LEN: usize = 16;
pub const MASTER_SALT_LEN: usize = 12;

const LABEL_SRTP_ENCRYPTION: u8 = 0x00;
const LABEL_SRTP_SALT: u8 = 0x02;
const LABEL_SRTCP_ENCRYPTION: u8 = 0x03;
const LABEL_SRTCP_SALT: u8 = 0x05;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SrtpError {
    #[error("SRTP master key must be {MASTER_KEY_LEN} bytes and salt {MASTER_SALT_LEN}")]
    KeyLength,
    #[error("SRTP key derivation failed")]
    KeyDerivation,
    #[error("packet too short for SRTP")]
    TooShort,
    #[error("SRTP authentication failed")]
    Authentication,
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// Master key and salt for one direction, as exported from DTLS (RFC 5764 §4.2).
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    pub key: [u8; MASTER_KEY_LEN],
    pub salt: [u8; MASTER_SALT_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never reach logs.
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Splits DTLS-SRTP keying material (client key, server key, client salt, server salt).
    /// Returns (local, remote) for the side given by `is_client`.
    pub fn pair_from_keying_material(
        material: &[u8],
        is_client: bool,
    ) -> Result<(MasterKey, MasterKey), SrtpError> {
        if material.len() != 2 * (MASTER_KEY_LEN + MASTER_SALT_LEN) {
            return Err(SrtpError::KeyLength);
        }
        let (client_key, rest) = material.split_at(MASTER_KEY_LEN);
        let (server_key, rest) = rest.split_at(MASTER_KEY_LEN);
        let (client_salt, server_salt) = rest.split_at(MASTER_SALT_LEN);
        let mk = |k: &[u8], s: &[u8]| -> Result<MasterKey, SrtpError> {
            Ok(MasterKey {
                key: k.try_into().map_err(|_| SrtpError::KeyLength)?,
                salt: s.try_into().map_err(|_| SrtpError::KeyLength)?,
            })
        };
        let client = mk(client_key, client_salt)?;
        let server = mk(server_key, server_salt)?;
        Ok(if is_client {
            (client, server)
        } else {
            (server, client)
        })
    }
}

/// The SRTCP index of a protected RTCP packet (its clear trailer), if it is long enough.
pub fn srtcp_index(packet: &[u8]) -> Option<u32> {
    let len = packet.len();
    if len < 8 + SRTCP_TRAILER_LEN {
        return None;
    }
    let e_index = u32::from_be_bytes([
        packet[len - 4],
        packet[len - 3],
        packet[len - 2],
        packet[len - 1],
    ]);
    Some(e_index & 0x7fff_ffff)
}

/// Session keys of one direction.
pub struct SrtpContext {
    rtp_key: LessSafeKey,
    rtp_salt: [u8; 12],
    rtcp_key: LessSafeKey,
    rtcp_salt: [u8; 12],
}

impl std::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpContext(..)")
    }
}

/// RFC 3711 §4.3.1 key derivation with the AES-CM PRF, key derivation rate 0 (RFC 7714 §11).
fn derive(
    crypto: &dyn RTCCrypto,
    master: &MasterKey,
    label: u8,
    out: &mut [u8],
) -> Result<(), SrtpError> {
    let mut block = [0u8; 16];
    block[..MASTER_SALT_LEN].copy_from_slice(&master.salt);
    block[7] ^= label;
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut b = block;
        b[14] = (i >> 8) as u8;
        b[15] = i as u8;
        crypto
            .block_encrypt(BlockCipherAlgorithm::Aes128, &master.key, &mut b)
            .map_err(|_| SrtpError::KeyDerivation)?;
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    Ok(())
}

impl SrtpContext {
    pub fn new(crypto: &dyn RTCCrypto, master: &MasterKey) -> Result<Self, SrtpError> {
        let mut rtp_key = [0u8; 16];
        let mut rtp_salt = [0u8; 12];
        let mut rtcp_key = [0u8; 16];
        let mut rtcp_salt = [0u8; 12];
        derive(crypto, master, LABEL_SRTP_ENCRYPTION, &mut rtp_key)?;
        derive(crypto, master, LABEL_SRTP_SALT, &mut rtp_salt)?;
        derive(crypto, master, LABEL_SRTCP_ENCRYPTION, &mut rtcp_key)?;
        derive(crypto, master, LABEL_SRTCP_SALT, &mut rtcp_salt)?;
        let key = |k: &[u8]| -> Result<LessSafeKey, SrtpError> {
            Ok(LessSafeKey::new(
                UnboundKey::new(&AES_128_GCM, k).map_err(|_| SrtpError::KeyLength)?,
            ))
        };
        Ok(Self {
            rtp_key: key(&rtp_key)?,
            rtp_salt,
            rtcp_key: key(&rtcp_key)?,
            rtcp_salt,
        })
    }

    fn rtp_nonce(&self, ssrc: u32, roc: u32, seq: u16) -> Nonce {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..10].copy_from_slice(&roc.to_be_bytes());
        iv[10..12].copy_from_slice(&seq.to_be_bytes());
        for (v, s) in iv.iter_mut().zip(self.rtp_salt.iter()) {
            *v ^= s;
        }
        Nonce::assume_unique_for_key(iv)
    }

    fn rtcp_nonce(&self, ssrc: u32, index: u32) -> Nonce {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[8..12].copy_from_slice(&(index & 0x7fff_ffff).to_be_bytes());
        for (v, s) in iv.iter_mut().zip(self.rtcp_salt.iter()) {
            *v ^= s;
        }
        Nonce::assume_unique_for_key(iv)
    }

    /// Encrypts `buf[header_len..len]` in place and appends the tag. `buf` must have room for
    /// `len + SRTP_TAG_LEN` bytes. Returns the protected length.
    pub fn seal_rtp(
        &self,
        buf: &mut [u8],
        len: usize,
        header_len: usize,
        ssrc: u32,
        roc: u32,
        seq: u16,
    ) -> Result<usize, SrtpError> {
        if buf.len() < len + SRTP_TAG_LEN {
            return Err(SrtpError::BufferTooSmall);
        }
        if header_len > len {
            return Err(SrtpError::TooShort);
        }
        let nonce = self.rtp_nonce(ssrc, roc, seq);
        let (header, rest) = buf.split_at_mut(header_len);
        let payload_len = len - header_len;
        let tag: Tag = self
            .rtp_key
            .seal_in_place_separate_tag(nonce, Aad::from(&*header), &mut rest[..payload_len])
            .map_err(|_| SrtpError::Authentication)?;
        rest[payload_len..payload_len + SRTP_TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(len + SRTP_TAG_LEN)
    }

    /// Authenticates and decrypts `buf[header_len..]` in place. Returns the plaintext length
    /// (header included, tag removed).
    pub fn open_rtp(
        &self,
        buf: &mut [u8],
        header_len: usize,
        ssrc: u32,
        roc: u32,
        seq: u16,
    ) -> Result<usize, SrtpError> {
        if buf.len() < header_len + SRTP_TAG_LEN {
            return Err(SrtpError::TooShort);
        }
        let nonce = self.rtp_nonce(ssrc, roc, seq);
        let (header, rest) = buf.split_at_mut(header_len);
        let plain = self
            .rtp_key
            .open_in_place(nonce, Aad::from(&*header), rest)
            .map_err(|_| SrtpError::Authentication)?;
        Ok(header_len + plain.len())
    }

    /// Protects a compound RTCP packet `buf[..len]` in place with SRTCP index `index`; `buf` must
    /// have room for `len + SRTCP_TRAILER_LEN`. Returns the protected length.
    pub fn seal_rtcp(&self, buf: &mut [u8], len: usize, index: u32) -> Result<usize, SrtpError> {
        if len < 8 {
            return Err(SrtpError::TooShort);
        }
        if buf.len() < len + SRTCP_TRAILER_LEN {
            return Err(SrtpError::BufferTooSmall);
        }
        let ssrc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let e_index = (index & 0x7fff_ffff) | 0x8000_0000;
        let mut aad = [0u8; 12];
        aad[..8].copy_from_slice(&buf[..8]);
        aad[8..].copy_from_slice(&e_index.to_be_bytes());
        let nonce = self.rtcp_nonce(ssrc, index);
        let (_, rest) = buf.split_at_mut(8);
        let body_len = len - 8;
        let tag = self
            .rtcp_key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut rest[..body_len])
            .map_err(|_| SrtpError::Authentication)?;
        rest[body_len..body_len + SRTP_TAG_LEN].copy_from_slice(tag.as_ref());
        rest[body_len + SRTP_TAG_LEN..body_len + SRTCP_TRAILER_LEN]
            .copy_from_slice(&e_index.to_be_bytes());
        Ok(len + SRTCP_TRAILER_LEN)
    }

    /// Authenticates and decrypts an SRTCP packet in place. Returns the plain RTCP length and
    /// the SRTCP index.
    pub fn open_rtcp(&self, buf: &mut [u8]) -> Result<(usize, u32), SrtpError> {
        let len = buf.len();
        if len < 8 + SRTCP_TRAILER_LEN {
            return Err(SrtpError::TooShort);
        }
        let e_index = u32::from_be_bytes([buf[len - 4], buf[len - 3], buf[len - 2], buf[len - 1]]);
        let index = e_index & 0x7fff_ffff;
        let ssrc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let nonce = self.rtcp_nonce(ssrc, index);
        let mut aad = [0u8; 12];
        aad[..8].copy_from_slice(&buf[..8]);
        aad[8..].copy_from_slice(&e_index.to_be_bytes());
        if e_index & 0x8000_0000 == 0 {
            // Unencrypted SRTCP: the body is only authenticated. Browsers always encrypt; we
            // refuse rather than carry a second code path no peer uses.
            return Err(SrtpError::Authentication);
        }
        let (_, rest) = buf.split_at_mut(8);
        let body = &mut rest[..len - 8 - 4];
        let plain = self
            .rtcp_key
            .open_in_place(nonce, Aad::from(aad), body)
            .map_err(|_| SrtpError::Authentication)?;
        Ok((8 + plain.len(), index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_srtp::context::Context;
    use rtc_srtp::protection_profile::ProtectionProfile;

    fn crypto() -> std::sync::Arc<dyn rtc_crypto::RTCCryptoProvider> {
        rtc_crypto::default_provider().expect("ring provider")
    }

    fn master() -> MasterKey {
        MasterKey {
            key: [7u8; 16],
            salt: [9u8; 12],
        }
    }

    fn rtp_packet(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x80,
            96,
            (seq >> 8) as u8,
            seq as u8,
            0,
            0,
            0,
            1,
            0xde,
            0xad,
            0xbe,
            0xef,
        ];
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn sealed_rtp_opens_with_rtc_srtp_and_back() {
        let provider = crypto();
        let ours = SrtpContext::new(provider.crypto(), &master()).unwrap();
        let mut theirs = Context::new(
            &master().key,
            &master().salt,
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
            provider.crypto(),
        )
        .unwrap();
        let plain = rtp_packet(1000, b"hello opus frame");
        let mut buf = plain.clone();
        buf.resize(plain.len() + SRTP_TAG_LEN, 0);
        let n = ours
            .seal_rtp(&mut buf, plain.len(), 12, 0xdeadbeef, 0, 1000)
            .unwrap();
        assert_eq!(n, plain.len() + SRTP_TAG_LEN);
        let opened = theirs.decrypt_rtp(&buf[..n]).expect("rtc-srtp opens ours");
        assert_eq!(&opened[..], &plain[..]);

        let sealed = theirs.encrypt_rtp(&rtp_packet(1001, b"next")).unwrap();
        let mut buf = sealed.to_vec();
        let n = ours.open_rtp(&mut buf, 12, 0xdeadbeef, 0, 1001).unwrap();
        assert_eq!(&buf[..n], &rtp_packet(1001, b"next")[..]);
    }

    #[test]
    fn tampered_rtp_is_refused() {
        let provider = crypto();
        let ours = SrtpContext::new(provider.crypto(), &master()).unwrap();
        let plain = rtp_packet(5, b"payload");
        let mut buf = plain.clone();
        buf.resize(plain.len() + SRTP_TAG_LEN, 0);
        let n = ours
            .seal_rtp(&mut buf, plain.len(), 12, 0xdeadbeef, 0, 5)
            .unwrap();
        buf[14] ^= 1;
        assert_eq!(
            ours.open_rtp(&mut buf[..n], 12, 0xdeadbeef, 0, 5),
            Err(SrtpError::Authentication)
        );
        // Wrong rollover counter is an authentication failure too.
        let mut buf = plain.clone();
        buf.resize(plain.len() + SRTP_TAG_LEN, 0);
        let n = ours
            .seal_rtp(&mut buf, plain.len(), 12, 0xdeadbeef, 0, 5)
            .unwrap();
        assert!(ours.open_rtp(&mut buf[..n], 12, 0xdeadbeef, 1, 5).is_err());
    }

    #[test]
    fn sealed_rtcp_opens_with_rtc_srtp_and_back() {
        let provider = crypto();
        let ours = SrtpContext::new(provider.crypto(), &master()).unwrap();
        let mut theirs = Context::new(
            &master().key,
            &master().salt,
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
            provider.crypto(),
        )
        .unwrap();
        // A PLI: V=2 FMT=1 PT=206 len=2, sender ssrc, media ssrc.
        let pli = [0x81, 206, 0, 2, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
        let mut buf = pli.to_vec();
        buf.resize(pli.len() + SRTCP_TRAILER_LEN, 0);
        let n = ours.seal_rtcp(&mut buf, pli.len(), 0).unwrap();
        let opened = theirs.decrypt_rtcp(&buf[..n]).expect("rtc-srtp opens ours");
        assert_eq!(&opened[..], &pli[..]);

        let sealed = theirs.encrypt_rtcp(&pli).unwrap();
        let mut buf = sealed.to_vec();
        let (n, _index) = ours.open_rtcp(&mut buf).unwrap();
        assert_eq!(&buf[..n], &pli[..]);
    }

    #[test]
    fn keying_material_is_split_by_role() {
        let material: Vec<u8> = (0..56u8).collect();
        let (local, remote) = MasterKey::pair_from_keying_material(&material, false).unwrap();
        assert_eq!(
            local.key[0], 16,
            "server's local key is the server write key"
        );
        assert_eq!(remote.key[0], 0);
        assert_eq!(local.salt[0], 44);
        assert_eq!(remote.salt[0], 32);
        assert!(MasterKey::pair_from_keying_material(&material[..10], false).is_err());
    }
}
