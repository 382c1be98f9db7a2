//! Shared photos, held in memory only — never on disk — for the people they were shared with,
//! for a few minutes (to be fetched, and fetched again after a reconnect), within a memory
//! budget. A photo is given only to a recipient of it: the same meeting and one of the
//! subjects admitted when it was shared.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a photo stays fetchable.
pub const IMAGE_TTL: Duration = Duration::from_secs(10 * 60);
/// Largest photo taken.
pub const MAX_IMAGE_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug)]
pub struct StoredImage {
    pub meeting: String,
    pub mime: &'static str,
    pub bytes: Arc<Vec<u8>>,
    /// Subjects it was shared with.
    pub recipients: Vec<String>,
    expires: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreRefusal {
    #[error("too many photos are held right now; try again in a few minutes")]
    Full,
}

#[derive(Debug)]
pub struct ImageStore {
    images: Mutex<HashMap<String, StoredImage>>,
    /// Bytes held at most, all photos together.
    budget: usize,
}

impl ImageStore {
    pub fn new(budget: usize) -> Self {
        Self {
            images: Mutex::new(HashMap::new()),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, StoredImage>> {
        self.images.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a photo for `recipients`; its id (128 random bits: not guessable).
    pub fn put(
        &self,
        meeting: &str,
        mime: &'static str,
        bytes: Vec<u8>,
        recipients: Vec<String>,
        now: Instant,
    ) -> Result<String, StoreRefusal> {
        let mut images = self.lock();
        images.retain(|_, i| i.expires > now);
        let held: usize = images.values().map(|i| i.bytes.len()).sum();
        if held + bytes.len() > self.budget {
            return Err(StoreRefusal::Full);
        }
        let id = format!("{:032x}", rand::random::<u128>());
        images.insert(
            id.clone(),
            StoredImage {
                meeting: meeting.to_owned(),
                mime,
                bytes: Arc::new(bytes),
                recipients,
                expires: now + IMAGE_TTL,
            },
        );
        metrics::gauge!("signaling_images_held_bytes").set((held + images[&id].bytes.len()) as f64);
        Ok(id)
    }

    /// The photo `id` for `subject` of `meeting`, if it was shared with them and is still held.
    pub fn get(
        &self,
        id: &str,
        meeting: &str,
        subject: &str,
        now: Instant,
    ) -> Option<(&'static str, Arc<Vec<u8>>)> {
        let mut images = self.lock();
        images.retain(|_, i| i.expires > now);
        let image = images.get(id)?;
        (image.meeting == meeting && image.recipients.iter().any(|r| r == subject))
            .then(|| (image.mime, image.bytes.clone()))
    }

    /// Forgets a meeting's photos (it ended).
    pub fn forget_meeting(&self, meeting: &str) {
        self.lock().retain(|_, i| i.meeting != meeting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_photo_goes_to_its_recipients_only_and_not_for_long() {
        let store = ImageStore::new(100);
        let t0 = Instant::now();
        let id = store
            .put("m1", "image/jpeg", vec![1; 40], vec!["doc".into()], t0)
            .unwrap();
        assert!(store.get(&id, "m1", "doc", t0).is_some());
        assert!(
            store.get(&id, "m1", "pat-2", t0).is_none(),
            "not a recipient"
        );
        assert!(store.get(&id, "m2", "doc", t0).is_none(), "another meeting");
        assert!(store.get("guess", "m1", "doc", t0).is_none());
        assert!(
            store.get(&id, "m1", "doc", t0 + IMAGE_TTL).is_none(),
            "expired"
        );
    }

    #[test]
    fn the_memory_budget_holds() {
        let store = ImageStore::new(100);
        let t0 = Instant::now();
        store
            .put("m1", "image/png", vec![0; 60], vec![], t0)
            .unwrap();
        assert_eq!(
            store.put("m1", "image/png", vec![0; 60], vec![], t0),
            Err(StoreRefusal::Full)
        );
        // Expired photos make room.
        assert!(
            store
                .put("m1", "image/png", vec![0; 60], vec![], t0 + IMAGE_TTL)
                .is_ok()
        );
        store.forget_meeting("m1");
        assert!(
            store
                .put("m2", "image/png", vec![0; 90], vec![], t0 + IMAGE_TTL)
                .is_ok()
        );
    }
}
