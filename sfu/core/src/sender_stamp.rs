//! The sender of a relayed data-channel message, named by the SFU rather than by the sender.
//!
//! A participant's own claim of who it is (a `from` it writes into its message) would let a
//! patient raise a hand as the clinician. The SFU knows which session a message came in on, so
//! a text message that is a JSON object is relayed with `from` set to that participant's id,
//! whatever the sender put there. Other text and binary messages are relayed as they are, and
//! say nothing the receiver may trust about their sender.

/// What becomes of a text message.
#[derive(Debug, PartialEq, Eq)]
pub enum Stamped {
    /// A JSON object, with `"from": sender` as its last member.
    Object(Vec<u8>),
    /// Not meant as a JSON object (plain text, an array): relayed as it is.
    AsItIs,
    /// Written as an object but not one this parser takes: dropped. A browser's `JSON.parse`
    /// takes some of these (a lone surrogate escape, `1e400`, deep nesting), and would read
    /// the sender's own `from` in them.
    Refused,
}

/// `data` with the sender named. The object is not rewritten: `"from"` is added as its last
/// member, which wins over any earlier one in both `JSON.parse` and serde, and everything the
/// sender wrote (key order, numbers) reaches the receiver as it was.
pub fn stamp_sender(data: &[u8], sender: &str) -> Stamped {
    let text = data.trim_ascii();
    if text.first() != Some(&b'{') {
        // (A byte-order mark before an object: JSON.parse refuses it today, but a decoder
        // that strips it would hand over the object with the sender's own `from`.)
        return match text.strip_prefix(b"\xEF\xBB\xBF") {
            Some(rest) if rest.trim_ascii().first() == Some(&b'{') => Stamped::Refused,
            _ => Stamped::AsItIs,
        };
    }
    let Ok(object) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(text)
    else {
        return Stamped::Refused;
    };
    let Ok(sender) = serde_json::to_string(sender) else {
        return Stamped::Refused;
    };
    // (Parsed as an object, so the text ends in its closing brace.)
    let body = &text[..text.len() - 1];
    let mut out = Vec::with_capacity(text.len() + sender.len() + 9);
    out.extend_from_slice(body);
    if !object.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(b"\"from\":");
    out.extend_from_slice(sender.as_bytes());
    out.push(b'}');
    Stamped::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn stamped(data: &str) -> Value {
        match stamp_sender(data.as_bytes(), "p-anna") {
            Stamped::Object(v) => serde_json::from_slice(&v).unwrap(),
            other => panic!("{data}: {other:?}"),
        }
    }

    #[test]
    fn a_json_object_is_relayed_with_its_real_sender_as_written() {
        assert_eq!(
            stamped(r#"{"type":"hand","raised":true}"#),
            json!({"type": "hand", "raised": true, "from": "p-anna"})
        );
        // A claim to be someone else loses to the last member, however it is written.
        assert_eq!(
            stamped(r#" {"type":"hand","from":"p-doctor"} "#)["from"],
            "p-anna"
        );
        let out = |d: &str| match stamp_sender(d.as_bytes(), "p-anna") {
            Stamped::Object(v) => String::from_utf8(v).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            out(r#"{"from":"p-doctor","from":"p-nurse"}"#),
            r#"{"from":"p-doctor","from":"p-nurse","from":"p-anna"}"#
        );
        assert_eq!(out("{ }"), r#"{ "from":"p-anna"}"#);
        // What the sender wrote is kept as it was: order, numbers, nesting.
        assert_eq!(
            out(r#"{"z":1e2,"a":[1,{"from":"x"}]}"#),
            r#"{"z":1e2,"a":[1,{"from":"x"}],"from":"p-anna"}"#
        );
        // (An id that needs escaping stays one string.)
        let Stamped::Object(v) = stamp_sender(b"{}", "p-\"x") else {
            panic!()
        };
        assert_eq!(
            serde_json::from_slice::<Value>(&v).unwrap()["from"],
            "p-\"x"
        );
    }

    #[test]
    fn an_object_the_parser_does_not_take_is_dropped_not_passed_on() {
        // Each of these JSON.parse reads, with the sender's own `from`.
        for data in [
            r#"{"type":"hand","from":"p-doctor","x":"\ud800"}"#,
            r#"{"type":"hand","from":"p-doctor","x":1e400}"#,
            &format!(
                r#"{{"from":"p-doctor","x":{}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
            r#"{"from":"p-doctor""#,
            r#"{"from":"p-doctor"} trailing"#,
            "\u{feff}{\"from\":\"p-doctor\"}",
        ] {
            assert_eq!(
                stamp_sender(data.as_bytes(), "p-anna"),
                Stamped::Refused,
                "{data:.60}"
            );
        }
    }

    #[test]
    fn text_that_is_not_an_object_is_left_as_it_is() {
        for data in ["", "hello", "[1,2]", "\"text\"", "12", "  "] {
            assert_eq!(
                stamp_sender(data.as_bytes(), "p-anna"),
                Stamped::AsItIs,
                "{data}"
            );
        }
    }
}
