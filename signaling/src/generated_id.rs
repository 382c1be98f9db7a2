//! Ids this service makes (participants, meetings, private drop-in visits).

/// The longest id the meetings API takes (and routes between replicas): a made id is never
/// longer.
pub const MAX_ID: usize = 64;

/// `prefix-` and 60 random bits in base32 letters and the digits 2–7. Never a run of digits,
/// so no id looks like a personal identity number to whoever searches logs for one
/// (hexadecimal ids did, now and then). A long prefix (a drop-in queue's id, for its private
/// visits) is cut so the id fits [`MAX_ID`] bytes.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Whether `id` is one [`generated_id`] made with `prefix` (uncut): what a client sends back
/// as such an id may be written in the audit log only if it is one — anything else could
/// carry a personal identity number into it.
pub fn is_generated(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|rest| rest.len() == 12 && rest.bytes().all(|b| ALPHABET.contains(&b)))
}

pub fn generated_id(prefix: &str, random: u64) -> String {
    let id: String = (0..12)
        .map(|i| ALPHABET[((random >> (5 * i)) & 31) as usize] as char)
        .collect();
    let room = MAX_ID - id.len() - 1;
    let cut: String = prefix
        .char_indices()
        .take_while(|(at, c)| at + c.len_utf8() <= room)
        .map(|(_, c)| c)
        .collect();
    format!("{cut}-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_made_id_is_taken_for_one() {
        let id = generated_id("p", 0x0123_4567_89ab_cdef);
        assert!(is_generated("p", &id));
        for not in [
            "p-19121212121",
            "p-191212121212",
            "q-aaaaaaaaaaaa",
            "p-aaaaaaaaaaaaa",
            "",
        ] {
            assert!(!is_generated("p", not), "{not}");
        }
    }

    #[test]
    fn an_id_made_from_a_long_prefix_still_fits() {
        assert_eq!(generated_id("p", 0).len(), 14);
        for prefix in [
            "q".repeat(51),
            "q".repeat(52),
            "q".repeat(64),
            "å".repeat(40),
        ] {
            let id = generated_id(&prefix, u64::MAX);
            assert!(id.len() <= MAX_ID, "{id}");
            assert!(id.ends_with("-777777777777"), "{id}");
        }
        assert_eq!(
            generated_id(&"q".repeat(51), 0),
            format!("{}-aaaaaaaaaaaa", "q".repeat(51))
        );
    }
}
