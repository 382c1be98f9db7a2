//! Recognising Swedish personal identity numbers (personnummer, samordningsnummer) where only
//! pseudonymous ids belong, so they never reach a token's subject or a log.

use regex_lite::Regex;
use std::sync::LazyLock;

/// Date-shaped digits: YYMMDD with a day of 01–31, or 61–91 for a coordination number
/// (samordningsnummer), then the four last digits; 12 digits with the century 19 or 20.
/// Digits around the match end it (a longer number, a UUID's 12-digit group, is not one).
static PATTERN: LazyLock<Regex> = LazyLock::new(|| {
    let date = r"\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]|6[1-9]|[78]\d|9[01])";
    Regex::new(&format!(
        r"(?:^|[^0-9])(?:(?:19|20){date}[-+]?\d{{4}}|{date}[-+]?\d{{4}})(?:$|[^0-9])"
    ))
    .expect("identity number pattern")
});

/// Whether `s` holds something shaped like a Swedish personal identity number
/// (personnummer or samordningsnummer), with or without century and separator.
pub fn looks_like_identity_number(s: &str) -> bool {
    PATTERN.is_match(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_numbers_are_recognised() {
        for pnr in [
            "197001011234",
            "19700101-1234",
            "20121212+1212",
            "7001011234",
            "x-197001011234",
        ] {
            assert!(looks_like_identity_number(pnr), "{pnr}");
        }
        for ok in [
            "patient-7f3a",
            "a1b2c3",
            "visit-2030-05-02",
            "p-123456",
            "12345678901",
        ] {
            assert!(!looks_like_identity_number(ok), "{ok}");
        }
    }
}
