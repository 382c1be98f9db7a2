//! Recognising Swedish personal identity numbers (personnummer, samordningsnummer) where only
//! pseudonymous ids belong, so they never reach a token's subject or a log.

/// A Swedish personal identity (or coordination) number — 10 or 12 digits, a `-` or `+`
/// allowed inside — in a value that must be pseudonymous.
pub fn looks_like_identity_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut run = 0;
    for (i, &c) in b.iter().enumerate() {
        if c.is_ascii_digit() {
            run += 1;
        } else if matches!(c, b'-' | b'+')
            && run > 0
            && b.get(i + 1).is_some_and(u8::is_ascii_digit)
        {
            // A separator inside a number.
        } else {
            if run == 10 || run == 12 {
                return true;
            }
            run = 0;
        }
    }
    run == 10 || run == 12
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
