//! Where a publisher's SSRCs go: a small table of the routes found, so a packet is bound to
//! its track and layer without searching every layer of every track it publishes (that
//! search, through the layers' large structs, was 2.4 % of a busy worker's time).
//!
//! A route is dropped with its track, and checked against the track on every use besides:
//! a layer's SSRC binding may change under it.

use crate::arena::TrackIdx;

/// Routes kept per publisher: a browser publishes one audio stream and up to three video
/// layers, each with an RTX stream. Past this the table starts over.
const MAX_ROUTES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsrcRoute {
    pub track: TrackIdx,
    pub layer: usize,
    /// The layer's retransmission (RTX) stream rather than its media.
    pub rtx: bool,
}

#[derive(Debug, Default)]
pub struct SsrcRoutes {
    routes: Vec<(u32, SsrcRoute)>,
}

impl SsrcRoutes {
    pub fn get(&self, ssrc: u32) -> Option<SsrcRoute> {
        self.routes
            .iter()
            .find_map(|&(s, route)| (s == ssrc).then_some(route))
    }

    /// Names the table's entries to `prefetch_line` (a packet is about to be routed).
    pub fn prefetch(&self, prefetch_line: &impl Fn(*const u8)) {
        if let Some(first) = self.routes.first() {
            prefetch_line(std::ptr::from_ref(first).cast());
        }
    }

    /// Records where `ssrc` goes, replacing what was known of it.
    pub fn insert(&mut self, ssrc: u32, route: SsrcRoute) {
        if let Some(slot) = self.routes.iter_mut().find(|(s, _)| *s == ssrc) {
            slot.1 = route;
            return;
        }
        if self.routes.len() == MAX_ROUTES {
            self.routes.clear();
        }
        self.routes.push((ssrc, route));
    }

    /// The track ended: its index may soon name another.
    pub fn forget_track(&mut self, track: TrackIdx) {
        self.routes.retain(|(_, r)| r.track != track);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::ArenaIndex;

    fn route(track: usize, layer: usize, rtx: bool) -> SsrcRoute {
        SsrcRoute {
            track: TrackIdx::from_slot(track),
            layer,
            rtx,
        }
    }

    #[test]
    fn routes_are_found_replaced_and_bounded() {
        let mut r = SsrcRoutes::default();
        assert_eq!(r.get(7), None);
        r.insert(7, route(0, 2, false));
        r.insert(8, route(0, 2, true));
        assert_eq!(r.get(7), Some(route(0, 2, false)));
        assert_eq!(r.get(8), Some(route(0, 2, true)));
        r.insert(7, route(1, 0, false));
        assert_eq!(
            r.get(7),
            Some(route(1, 0, false)),
            "a new binding replaces the old"
        );
        r.forget_track(TrackIdx::from_slot(0));
        assert_eq!(r.get(8), None, "gone with its track");
        assert_eq!(r.get(7), Some(route(1, 0, false)));
        for ssrc in 100..100 + MAX_ROUTES as u32 {
            r.insert(ssrc, route(3, 0, false));
        }
        assert!(
            r.routes.len() <= MAX_ROUTES,
            "a flood of SSRCs cannot grow it"
        );
        assert_eq!(r.get(100 + MAX_ROUTES as u32 - 1), Some(route(3, 0, false)));
    }
}
