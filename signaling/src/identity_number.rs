//! Recognising Swedish personal identity numbers (personnummer, samordningsnummer) where only
//! pseudonymous ids and names belong, so they never reach a token's subject, a meeting id, a
//! name or a log. One check for every identifier and free-text field that can reach a log.
//!
//! The text is normalised first, so a number cannot slip through in another shape: full-width
//! digits count as digits, and separators between digit groups (spaces of any kind, `_`, `-`
//! and the other dashes, `.`, `/`, `+`, `,`, and invisible characters) are skipped, so
//! `1990-01-01-1234`, `19900101 1234`, `19900101_1234`, `19900101–1234` and
//! `１９９００１０１１２３４` are all the number they spell. Digits of other scripts are not read
//! as numbers: any of them makes the text suspect.

use regex_lite::Regex;
use std::sync::LazyLock;

/// Date-shaped digits: YYMMDD with a day of 01–31, or 61–91 for a coordination number
/// (samordningsnummer), then the four last digits; 12 digits with the century 19 or 20.
static SHAPE: LazyLock<Regex> = LazyLock::new(|| {
    let date = r"\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]|6[1-9]|[78]\d|9[01])";
    Regex::new(&format!(r"^(?:(?:19|20){date}\d{{4}}|{date}\d{{4}})$"))
        .expect("identity number pattern")
});

/// Characters that may stand between the digit groups of a written number.
fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '_' | '-' | '.' | '/' | '+' | ',' | '\u{00ad}' // soft hyphen
                | '\u{2010}'..='\u{2015}' // hyphen, non-breaking hyphen, figure dash, en/em dash, bar
                | '\u{2212}' // minus sign
                | '\u{fe58}' | '\u{fe63}' | '\u{ff0d}' // small and full-width dashes
                | '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}' // zero-width
        )
}

/// The ASCII digit `c` stands for (full-width digits included).
fn digit(c: char) -> Option<char> {
    match c {
        '0'..='9' => Some(c),
        '\u{ff10}'..='\u{ff19}' => char::from_u32(u32::from(c) - 0xff10 + u32::from('0')),
        _ => None,
    }
}

/// Whether `s` holds something shaped like a Swedish personal identity number
/// (personnummer or samordningsnummer), with or without century and separators.
pub fn looks_like_identity_number(s: &str) -> bool {
    // Digit groups of one run (groups joined by separators only); a run ends at any other
    // character. A run's digits together are the candidate: more digits around a number make
    // it another number (`bv-2030-0517-1430-4411` is a booking id, not a date and four digits),
    // as digits around it did before separators were read.
    //
    // Within a longer run, a number written the way numbers are written still counts: a
    // group of 10 or 12 digits, or a date's groups (8, 6, 4-2-2 or 2-2-2 digits) then 4 —
    // `19900101-1234-1`, `SE2321000016-199001011234`. Groups of other sizes do not make a
    // date (`2030-0517-1430` is not one).
    let mut groups: Vec<String> = Vec::new();
    let mut current = String::new();
    let check = |groups: &[String]| {
        let matches = |parts: &[String]| {
            let joined = parts.concat();
            (joined.len() == 10 || joined.len() == 12) && SHAPE.is_match(&joined)
        };
        const WRITTEN: [&[usize]; 6] =
            [&[10], &[12], &[8, 4], &[6, 4], &[4, 2, 2, 4], &[2, 2, 2, 4]];
        matches(groups)
            || (0..groups.len()).any(|i| {
                WRITTEN.iter().any(|sizes| {
                    groups.get(i..i + sizes.len()).is_some_and(|parts| {
                        parts.iter().zip(sizes.iter()).all(|(g, n)| g.len() == *n) && matches(parts)
                    })
                })
            })
    };
    for c in s.chars() {
        if let Some(d) = digit(c) {
            current.push(d);
        } else if c.is_numeric() {
            // A digit of another script: not read, so not trusted.
            return true;
        } else if is_separator(c) {
            if !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
        } else {
            if !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
            if check(&groups) {
                return true;
            }
            groups.clear();
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    check(&groups)
}

/// A field that may reach a log, refused because it holds an identity number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{field} looks like it holds a personal identity number; use a pseudonymous id")]
pub struct IdentityNumberIn {
    pub field: &'static str,
}

/// The one check for identifiers and names: each `(field, value)` is refused, by name, if its
/// value holds something shaped like an identity number.
pub fn check_fields<'a>(
    fields: impl IntoIterator<Item = (&'static str, &'a str)>,
) -> Result<(), IdentityNumberIn> {
    for (field, value) in fields {
        if looks_like_identity_number(value) {
            return Err(IdentityNumberIn { field });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_numbers_are_recognised_in_every_spelling() {
        for pnr in [
            "197001011234",
            "19700101-1234",
            "20121212+1212",
            "7001011234",
            "x-197001011234",
            // Separator variants that once slipped through.
            "19900101 1234",
            "19900101_1234",
            "1990-01-01-1234",
            "900101-1234",
            "19900101\u{2013}1234",       // en dash
            "19900101\u{2014}1234",       // em dash
            "19900101\u{2212}1234",       // minus sign
            "19900101\u{00a0}1234",       // no-break space
            "19900101\u{200b}1234",       // zero-width space
            "1990 01 01 - 1234",          // spaced groups
            "1990.01.01.1234",            // dotted
            "Anna 19900101-1234",         // inside a name
            "１９９００１０１１２３４",   // full-width digits
            "１９９００１０１－１２３４", // full-width digits and dash
            "19900161-1234",              // samordningsnummer
            // Within longer runs of digit groups, written as numbers are written.
            "19900101-1234-1",
            "SE2321000016-199001011234",
            "1-19900101-1234",
            "2321000016-7001011234",
            "ref 12 1990-01-01-1234 9",
            "12-900101-1234",
            "\u{0661}\u{0669}\u{0669}\u{0660}", // Arabic-Indic digits: not read, suspect
        ] {
            assert!(looks_like_identity_number(pnr), "{pnr}");
        }
        for ok in [
            "patient-7f3a",
            "a1b2c3",
            "visit-2030-05-02",
            "p-123456",
            "12345678901",
            "1199001011234", // a longer number is not one
            "Anna Andersson",
            "Dr Cecilia Berg",
            "SE2321000016-D1",
            "visit-2030-05-02 14:30",
            "room 12-34-56-78-90-12",
            "bv-2030-0517-1430-4411", // the booking id of docs/integration.md
        ] {
            assert!(!looks_like_identity_number(ok), "{ok}");
        }
    }

    #[test]
    fn the_field_is_named_not_its_value() {
        let err = check_fields([("sub", "p-1"), ("name", "Anna 19900101-1234")]).unwrap_err();
        assert_eq!(err.field, "name");
        assert!(!err.to_string().contains("1990"));
        assert!(check_fields([("unit", "unit-1"), ("mtg", "visit-9")]).is_ok());
    }
}
