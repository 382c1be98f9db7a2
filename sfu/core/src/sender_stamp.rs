//! The sender of a relayed data-channel message, named by the SFU rather than by the sender.
//!
//! A participant's own claim of who it is (a `from` it writes into its message) would let a
//! patient raise a hand as the clinician. The SFU knows which session a message came in on, so
//! a text message that is a JSON object is relayed with `from` set to that participant's id,
//! whatever the sender put there. Other messages (binary, text that is not a JSON object) are
//! relayed as they are, and say nothing the receiver may trust about their sender.

/// `data` with `"from": sender` set, when it is a JSON object; `None` otherwise.
pub fn stamp_sender(data: &[u8], sender: &str) -> Option<Vec<u8>> {
    let serde_json::Value::Object(mut object) = serde_json::from_slice(data).ok()? else {
        return None;
    };
    object.insert("from".into(), serde_json::Value::String(sender.into()));
    serde_json::to_vec(&object).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn stamped(data: &str) -> Option<Value> {
        stamp_sender(data.as_bytes(), "p-anna").map(|v| serde_json::from_slice(&v).unwrap())
    }

    #[test]
    fn a_json_object_is_relayed_with_its_real_sender() {
        assert_eq!(
            stamped(r#"{"type":"hand","raised":true}"#),
            Some(json!({"type": "hand", "raised": true, "from": "p-anna"}))
        );
        // A claim to be someone else is replaced, however it is written.
        assert_eq!(
            stamped(r#"{"type":"hand","from":"p-doctor"}"#),
            Some(json!({"type": "hand", "from": "p-anna"}))
        );
        let twice = stamp_sender(br#"{"from":"p-doctor","from":"p-nurse"}"#, "p-anna").unwrap();
        assert_eq!(String::from_utf8(twice).unwrap(), r#"{"from":"p-anna"}"#);
        // (Only the top level is the envelope.)
        assert_eq!(
            stamped(r#"{"note":{"from":"x"}}"#),
            Some(json!({"note": {"from": "x"}, "from": "p-anna"}))
        );
    }

    #[test]
    fn anything_but_a_json_object_is_left_as_it_is() {
        for data in ["", "hello", "[1,2]", "\"text\"", "{broken", "12"] {
            assert_eq!(stamped(data), None, "{data}");
        }
    }
}
