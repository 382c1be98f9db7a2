//! Named load presets: `visits` (many 1:1 and 3-party care visits: a region's real load),
//! `conference` (10–20 participants all publishing) and `broadcast` (one publisher, many
//! viewers; several broadcasts side by side give a load the CPU figures can resolve), scaled
//! by flags.

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioKind {
    Visits,
    Conference,
    Broadcast,
}

/// One simulated participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub meeting: usize,
    pub name: String,
    pub publish: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Scenario {
    pub kind: ScenarioKind,
    /// Visits, conferences or broadcasts.
    pub meetings: usize,
    /// Participants per conference, or viewers of the broadcast.
    pub size: usize,
}

impl Scenario {
    pub fn new(kind: ScenarioKind, meetings: Option<usize>, size: Option<usize>) -> Self {
        let (m, s) = match kind {
            ScenarioKind::Visits => (20, 0),
            ScenarioKind::Conference => (2, 12),
            ScenarioKind::Broadcast => (1, 50),
        };
        Self {
            kind,
            meetings: meetings.unwrap_or(m).max(1),
            size: size.unwrap_or(s),
        }
    }

    /// The same scenario with its load scaled by `factor` (for ramps and capacity searches).
    pub fn scaled(&self, factor: f64) -> Self {
        let grow = |n: usize| ((n as f64 * factor).round() as usize).max(1);
        match self.kind {
            ScenarioKind::Broadcast => Self {
                size: grow(self.size),
                ..*self
            },
            _ => Self {
                meetings: grow(self.meetings),
                ..*self
            },
        }
    }

    /// Everyone taking part. Visits: every third is 3-party (patient, clinician and a relative
    /// or interpreter), the rest 1:1; all publish.
    pub fn plan(&self) -> Vec<Planned> {
        let mut v = Vec::new();
        let mut add = |meeting: usize, n: usize, publish: bool| {
            v.push(Planned {
                meeting,
                name: format!("m{meeting}-p{n}"),
                publish,
            })
        };
        match self.kind {
            ScenarioKind::Visits => {
                for m in 0..self.meetings {
                    let parties = if m % 3 == 2 { 3 } else { 2 };
                    for n in 0..parties {
                        add(m, n, true);
                    }
                }
            }
            ScenarioKind::Conference => {
                for m in 0..self.meetings {
                    for n in 0..self.size.max(2) {
                        add(m, n, true);
                    }
                }
            }
            ScenarioKind::Broadcast => {
                for m in 0..self.meetings {
                    add(m, 0, true);
                    for n in 1..=self.size.max(1) {
                        add(m, n, false);
                    }
                }
            }
        }
        v
    }

    /// Copies the SFU sends per packet a publisher sends, averaged over publishers.
    pub fn fan_out(&self) -> f64 {
        let plan = self.plan();
        let mut copies = 0usize;
        let mut publishers = 0usize;
        for p in plan.iter().filter(|p| p.publish) {
            publishers += 1;
            copies += plan.iter().filter(|o| o.meeting == p.meeting).count() - 1;
        }
        if publishers == 0 {
            0.0
        } else {
            copies as f64 / publishers as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_promised_shape() {
        let v = Scenario::new(ScenarioKind::Visits, Some(6), None).plan();
        assert_eq!(v.len(), 2 + 2 + 3 + 2 + 2 + 3);
        assert!(v.iter().all(|p| p.publish));
        let c = Scenario::new(ScenarioKind::Conference, Some(1), Some(15));
        assert_eq!(c.plan().len(), 15);
        assert_eq!(c.fan_out(), 14.0);
        let b = Scenario::new(ScenarioKind::Broadcast, None, Some(40));
        let plan = b.plan();
        assert_eq!(plan.iter().filter(|p| p.publish).count(), 1);
        assert_eq!(plan.len(), 41);
        assert_eq!(b.fan_out(), 40.0);
        assert_eq!(b.scaled(1.5).size, 60);
        // Several broadcasts side by side: each its own publisher and viewers.
        let b3 = Scenario::new(ScenarioKind::Broadcast, Some(3), Some(40)).plan();
        assert_eq!(b3.len(), 3 * 41);
        for m in 0..3 {
            let room: Vec<_> = b3.iter().filter(|p| p.meeting == m).collect();
            assert_eq!(room.len(), 41);
            assert_eq!(room.iter().filter(|p| p.publish).count(), 1);
        }
        assert_eq!(
            Scenario::new(ScenarioKind::Visits, Some(10), None)
                .scaled(2.0)
                .meetings,
            20
        );
    }
}
