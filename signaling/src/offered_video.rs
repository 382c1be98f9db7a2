//! The video lines a client's offer publishes on, as the SFU reads it. The SFU keeps a line an
//! offer leaves out as it was (a valid offer never does; a hostile one may): so a line that
//! published before and is missing from the offer still publishes, and counts.

use sfu_core::remote_description::RemoteDescription;
use sfu_proto::MediaKind;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfferedVideo {
    /// The mids of the video lines the offer publishes on.
    pub sending: Vec<String>,
    /// The mids of all its lines.
    pub lines: Vec<String>,
}

impl OfferedVideo {
    pub fn of(offer: &RemoteDescription) -> Self {
        Self {
            sending: offer
                .media
                .iter()
                .filter(|m| m.kind == Some(MediaKind::Video) && m.publishes())
                .map(|m| m.mid.clone())
                .collect(),
            lines: offer.media.iter().map(|m| m.mid.clone()).collect(),
        }
    }

    /// The video lines published once the offer is applied to a session that published on
    /// `before`: the offer's, and those of `before` it leaves out.
    pub fn publishing_after(&self, before: &[String]) -> Vec<String> {
        let mut after = self.sending.clone();
        after.extend(
            before
                .iter()
                .filter(|mid| !self.lines.contains(mid))
                .cloned(),
        );
        after
    }

    /// An offer of `n` video lines, all publishing (for tests).
    pub fn sending_lines(n: usize) -> Self {
        let mids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        Self {
            sending: mids.clone(),
            lines: mids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_left_out_of_an_offer_still_publishes() {
        let offer = |sending: &[&str], lines: &[&str]| OfferedVideo {
            sending: sending.iter().map(|s| s.to_string()).collect(),
            lines: lines.iter().map(|s| s.to_string()).collect(),
        };
        let before = vec!["1".to_string()];
        // The camera's line again: one.
        assert_eq!(offer(&["1"], &["0", "1"]).publishing_after(&before), ["1"]);
        // The camera's line left out, a new one added: two.
        assert_eq!(
            offer(&["2"], &["0", "2"]).publishing_after(&before),
            ["2", "1"]
        );
        // The camera's line stopped (present, not sending), a new one: one.
        assert_eq!(
            offer(&["2"], &["0", "1", "2"]).publishing_after(&before),
            ["2"]
        );
    }
}
