//! Ids this service makes (participants, meetings, private drop-in visits).

/// `prefix-` and 60 random bits in base32 letters and the digits 2–7. Never a run of digits,
/// so no id looks like a personal identity number to whoever searches logs for one
/// (hexadecimal ids did, now and then).
pub fn generated_id(prefix: &str, random: u64) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let id: String = (0..12)
        .map(|i| ALPHABET[((random >> (5 * i)) & 31) as usize] as char)
        .collect();
    format!("{prefix}-{id}")
}
