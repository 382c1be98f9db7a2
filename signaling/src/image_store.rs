//! Shared photos, held in memory only — never on disk — for the people they were shared with,
//! for a few minutes (to be fetched, and fetched again after a reconnect), within a memory
//! budget. A photo is given only to a recipient of it: the same meeting and one of the
//! subjects admitted when it was shared.

use axum::body::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a photo stays fetchable.
pub const IMAGE_TTL: Duration = Duration::from_secs(10 * 60);
/// Largest photo taken.
pub const MAX_IMAGE_BYTES: usize = 8 * 1024 * 1024;
/// Bytes one meeting's photos may hold together (the rest of the budget stays for the others).
pub const MEETING_BUDGET: usize = 24 * 1024 * 1024;
/// Photos one person may have held at once.
pub const PER_SENDER: usize = 6;

#[derive(Debug)]
pub struct StoredImage {
    pub meeting: String,
    /// The drop-in queue the meeting was opened from: its tokens name the queue.
    pub queue: Option<String>,
    pub sender: String,
    pub mime: &'static str,
    pub bytes: Bytes,
    /// Subjects it was shared with.
    pub recipients: Vec<String>,
    /// Recipients who have fetched it (each viewing is audited once, not once per fetch).
    viewed: Vec<String>,
    expires: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreRefusal {
    #[error("too many photos are held right now; try again in a few minutes")]
    Full,
    #[error("you have shared as many photos as can be held at once; try again in a few minutes")]
    SenderLimit,
}

/// Where a photo belongs and who shared it.
#[derive(Debug, Clone)]
pub struct ImageOrigin {
    pub meeting: String,
    pub queue: Option<String>,
    pub sender: String,
}

#[derive(Debug)]
pub struct ImageStore {
    images: Mutex<HashMap<String, StoredImage>>,
    /// Bytes held at most, all photos together.
    budget: usize,
    /// Senders (meeting, subject) with an upload being read: one at a time each, so one
    /// person cannot hold every upload slot with slow bodies.
    uploading: Mutex<std::collections::HashSet<(String, String)>>,
}

/// An upload in progress; the sender may start another once it is dropped.
#[derive(Debug)]
pub struct UploadSlot<'a> {
    store: &'a ImageStore,
    key: (String, String),
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        self.store
            .uploading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl ImageStore {
    pub fn new(budget: usize) -> Self {
        Self {
            images: Mutex::new(HashMap::new()),
            budget,
            uploading: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The sender's one upload slot, if they are not uploading already.
    pub fn begin_upload(&self, meeting: &str, subject: &str) -> Option<UploadSlot<'_>> {
        let key = (meeting.to_owned(), subject.to_owned());
        let fresh = self
            .uploading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        fresh.then_some(UploadSlot { store: self, key })
    }

    /// Whether `subject` has fetched photo `id` before (its viewing is recorded already).
    pub fn viewed_by(&self, id: &str, subject: &str) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|i| i.viewed.iter().any(|v| v == subject))
    }

    /// Notes that `subject`'s viewing of photo `id` is recorded.
    pub fn note_viewed(&self, id: &str, subject: &str) {
        if let Some(image) = self.lock().get_mut(id)
            && !image.viewed.iter().any(|v| v == subject)
        {
            image.viewed.push(subject.to_owned());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, StoredImage>> {
        self.images.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a photo for `recipients`; its id (128 random bits: not guessable).
    pub fn put(
        &self,
        origin: ImageOrigin,
        mime: &'static str,
        bytes: Bytes,
        recipients: Vec<String>,
        now: Instant,
    ) -> Result<String, StoreRefusal> {
        let mut images = self.lock();
        images.retain(|_, i| i.expires > now);
        let held: usize = images.values().map(|i| i.bytes.len()).sum();
        let in_meeting: usize = images
            .values()
            .filter(|i| i.meeting == origin.meeting)
            .map(|i| i.bytes.len())
            .sum();
        let by_sender = images
            .values()
            .filter(|i| i.meeting == origin.meeting && i.sender == origin.sender)
            .count();
        if by_sender >= PER_SENDER {
            return Err(StoreRefusal::SenderLimit);
        }
        if held + bytes.len() > self.budget || in_meeting + bytes.len() > MEETING_BUDGET {
            return Err(StoreRefusal::Full);
        }
        let id = format!("{:032x}", rand::random::<u128>());
        let size = bytes.len();
        images.insert(
            id.clone(),
            StoredImage {
                meeting: origin.meeting,
                queue: origin.queue,
                sender: origin.sender,
                mime,
                bytes,
                recipients,
                viewed: Vec::new(),
                expires: now + IMAGE_TTL,
            },
        );
        metrics::gauge!("signaling_images_held_bytes").set((held + size) as f64);
        Ok(id)
    }

    /// The photo `id` for `subject`, whose token names `token_meeting` (the meeting, or the
    /// drop-in queue it came from), if it was shared with them and is still held; with the
    /// meeting it belongs to.
    pub fn get(
        &self,
        id: &str,
        token_meeting: &str,
        subject: &str,
        now: Instant,
    ) -> Option<(String, &'static str, Bytes)> {
        let mut images = self.lock();
        images.retain(|_, i| i.expires > now);
        let image = images.get(id)?;
        let meeting_ok =
            image.meeting == token_meeting || image.queue.as_deref() == Some(token_meeting);
        (meeting_ok && image.recipients.iter().any(|r| r == subject))
            .then(|| (image.meeting.clone(), image.mime, image.bytes.clone()))
    }

    /// Forgets one photo (its sharing could not be recorded).
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Forgets a meeting's photos (it ended).
    pub fn forget_meeting(&self, meeting: &str) {
        self.lock().retain(|_, i| i.meeting != meeting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(meeting: &str, sender: &str) -> ImageOrigin {
        ImageOrigin {
            meeting: meeting.into(),
            queue: Some("queue-1".into()),
            sender: sender.into(),
        }
    }

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![0; n])
    }

    #[test]
    fn a_photo_goes_to_its_recipients_only_and_not_for_long() {
        let store = ImageStore::new(100);
        let t0 = Instant::now();
        let id = store
            .put(
                origin("m1", "pat"),
                "image/jpeg",
                bytes(40),
                vec!["doc".into()],
                t0,
            )
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
        let put = |m: &str, n: usize, t: Instant| {
            store.put(origin(m, "pat"), "image/png", bytes(n), vec![], t)
        };
        put("m1", 60, t0).unwrap();
        assert_eq!(put("m1", 60, t0), Err(StoreRefusal::Full));
        // Expired photos make room.
        assert!(put("m1", 60, t0 + IMAGE_TTL).is_ok());
        store.forget_meeting("m1");
        assert!(put("m2", 90, t0 + IMAGE_TTL).is_ok());
    }

    #[test]
    fn one_sender_or_one_meeting_cannot_fill_the_store() {
        let store = ImageStore::new(usize::MAX);
        let t0 = Instant::now();
        for _ in 0..PER_SENDER {
            store
                .put(origin("m1", "pat"), "image/png", bytes(1), vec![], t0)
                .unwrap();
        }
        assert_eq!(
            store.put(origin("m1", "pat"), "image/png", bytes(1), vec![], t0),
            Err(StoreRefusal::SenderLimit)
        );
        assert!(
            store
                .put(origin("m1", "doc"), "image/png", bytes(1), vec![], t0)
                .is_ok()
        );
        let half = MEETING_BUDGET / 2 + 1;
        store
            .put(origin("m2", "a"), "image/png", bytes(half), vec![], t0)
            .unwrap();
        assert_eq!(
            store.put(origin("m2", "b"), "image/png", bytes(half), vec![], t0),
            Err(StoreRefusal::Full)
        );
        assert!(
            store
                .put(origin("m3", "b"), "image/png", bytes(half), vec![], t0)
                .is_ok()
        );
    }

    #[test]
    fn a_viewing_is_noted_once_and_a_sender_uploads_one_at_a_time() {
        let store = ImageStore::new(1000);
        let t0 = Instant::now();
        let id = store
            .put(
                origin("m1", "pat"),
                "image/jpeg",
                bytes(1),
                vec!["doc".into()],
                t0,
            )
            .unwrap();
        assert!(!store.viewed_by(&id, "doc"));
        store.note_viewed(&id, "doc");
        assert!(
            store.viewed_by(&id, "doc"),
            "fetched again: not a new viewing"
        );
        assert!(!store.viewed_by(&id, "pat"));
        assert!(!store.viewed_by("unknown", "doc"));
        let slot = store.begin_upload("m1", "pat").unwrap();
        assert!(store.begin_upload("m1", "pat").is_none(), "one at a time");
        assert!(
            store.begin_upload("m1", "doc").is_some(),
            "others are not held up"
        );
        drop(slot);
        assert!(store.begin_upload("m1", "pat").is_some());
    }

    #[test]
    fn a_queue_token_reaches_the_photos_of_the_visit_it_led_to() {
        let store = ImageStore::new(1000);
        let t0 = Instant::now();
        let id = store
            .put(
                origin("visit-7", "pat"),
                "image/jpeg",
                bytes(1),
                vec!["doc".into()],
                t0,
            )
            .unwrap();
        assert_eq!(
            store.get(&id, "queue-1", "doc", t0).map(|g| g.0),
            Some("visit-7".to_owned())
        );
        assert!(store.get(&id, "queue-2", "doc", t0).is_none());
    }
}
