//! Shared photos, held in memory only — never on disk — for the people they were shared with,
//! for a few minutes (to be fetched, and fetched again after a reconnect), within a memory
//! budget. A photo is given only to a recipient of it: the same meeting and one of the
//! subjects admitted when it was shared.

use axum::body::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a photo stays fetchable.
pub const IMAGE_TTL: Duration = Duration::from_secs(10 * 60);
/// Largest photo taken.
pub const MAX_IMAGE_BYTES: usize = 8 * 1024 * 1024;
/// Bytes one meeting's photos may hold together (the rest of the budget stays for the others).
pub const MEETING_BUDGET: usize = 24 * 1024 * 1024;
/// Photos one person may have held at once.
pub const PER_SENDER: usize = 6;

/// Whether a recipient's viewing of a photo is recorded in the audit log.
pub type Viewing = Arc<tokio::sync::Mutex<bool>>;

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
    /// Per recipient who has fetched it: whether their viewing is recorded (each viewing is
    /// audited once, not once per fetch).
    viewed: HashMap<String, Viewing>,
    expires: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreRefusal {
    #[error("too many photos are held right now; try again in a few minutes")]
    Full,
    #[error("you have shared as many photos as can be held at once; try again in a few minutes")]
    SenderLimit,
    #[error("one photo at a time: wait for the one being sent")]
    Uploading,
}

impl StoreRefusal {
    /// The HTTP status it is answered with.
    pub fn status(self) -> u16 {
        match self {
            StoreRefusal::Full => 503,
            StoreRefusal::SenderLimit | StoreRefusal::Uploading => 429,
        }
    }

    /// The error code clients see.
    pub fn code(self) -> &'static str {
        match self {
            StoreRefusal::Full => "images_busy",
            StoreRefusal::SenderLimit | StoreRefusal::Uploading => "images_per_sender",
        }
    }
}

/// Uploads being read at once, all senders together: a photo is held in memory while read.
pub const UPLOADS_AT_ONCE: usize = 8;
/// …of which one meeting's senders together.
pub const UPLOADS_PER_MEETING: usize = 2;

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

    /// The sender's one upload slot — refused before a byte of the body is read when they
    /// are uploading already, when all upload slots are taken, when they hold as many photos
    /// as they may, or when `declared` bytes (the request's length, if it says) would not
    /// fit the meeting's or the store's budget.
    pub fn begin_upload(
        &self,
        meeting: &str,
        subject: &str,
        declared: usize,
        now: Instant,
    ) -> Result<UploadSlot<'_>, StoreRefusal> {
        {
            let mut images = self.lock();
            images.retain(|_, i| i.expires > now);
            self.room_for(&images, meeting, subject, declared)?;
            self.publish(&images);
        }
        let key = (meeting.to_owned(), subject.to_owned());
        let mut uploading = self.uploading.lock().unwrap_or_else(|e| e.into_inner());
        if uploading.contains(&key) {
            return Err(StoreRefusal::Uploading);
        }
        // (A meeting's people together hold at most a few of the slots: slow bodies in one
        // visit do not stop photos in every other.)
        let in_meeting = uploading.iter().filter(|(m, _)| m == meeting).count();
        if uploading.len() >= UPLOADS_AT_ONCE || in_meeting >= UPLOADS_PER_MEETING {
            return Err(StoreRefusal::Full);
        }
        uploading.insert(key.clone());
        Ok(UploadSlot { store: self, key })
    }

    /// Whether a photo of `size` bytes from `sender` fits: the sender's count, the meeting's
    /// and the store's budgets.
    fn room_for(
        &self,
        images: &HashMap<String, StoredImage>,
        meeting: &str,
        sender: &str,
        size: usize,
    ) -> Result<(), StoreRefusal> {
        let held: usize = images.values().map(|i| i.bytes.len()).sum();
        let in_meeting: usize = images
            .values()
            .filter(|i| i.meeting == meeting)
            .map(|i| i.bytes.len())
            .sum();
        let by_sender = images
            .values()
            .filter(|i| i.meeting == meeting && i.sender == sender)
            .count();
        if by_sender >= PER_SENDER {
            return Err(StoreRefusal::SenderLimit);
        }
        if held + size > self.budget || in_meeting + size > MEETING_BUDGET {
            return Err(StoreRefusal::Full);
        }
        // The last quarter of the budget is for meetings holding less than half of that: the
        // photos of three visits once took all of it, and every other visit got
        // `images_busy` for the ten minutes they were held.
        let reserve = self.budget / 4;
        if in_meeting >= reserve / 2 && held + size > self.budget - reserve {
            return Err(StoreRefusal::Full);
        }
        Ok(())
    }

    /// Keeps `signaling_images_held_bytes` true to what is held.
    fn publish(&self, images: &HashMap<String, StoredImage>) {
        let held: usize = images.values().map(|i| i.bytes.len()).sum();
        metrics::gauge!("signaling_images_held_bytes").set(held as f64);
    }

    /// `subject`'s viewing of photo `id`, if they are one of its recipients. Its lock is held
    /// while the viewing is recorded, so that none of a burst of fetches is answered before the
    /// line is written, and the line is written once.
    pub fn viewing(&self, id: &str, subject: &str) -> Option<Viewing> {
        let mut images = self.lock();
        let image = images.get_mut(id)?;
        if !image.recipients.iter().any(|r| r == subject) {
            return None;
        }
        Some(image.viewed.entry(subject.to_owned()).or_default().clone())
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
        self.room_for(&images, &origin.meeting, &origin.sender, bytes.len())?;
        let id = format!("{:032x}", rand::random::<u128>());
        images.insert(
            id.clone(),
            StoredImage {
                meeting: origin.meeting,
                queue: origin.queue,
                sender: origin.sender,
                mime,
                bytes,
                recipients,
                viewed: HashMap::new(),
                expires: now + IMAGE_TTL,
            },
        );
        self.publish(&images);
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

    /// Whether photo `id` is held now, for whomever (a refused fetch records the id only then:
    /// one the client made up is the client's text, and may be anything).
    pub fn holds(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Forgets one photo (its sharing could not be recorded).
    pub fn remove(&self, id: &str) {
        let mut images = self.lock();
        images.remove(id);
        self.publish(&images);
    }

    /// Forgets a meeting's photos (it ended).
    pub fn forget_meeting(&self, meeting: &str) {
        let mut images = self.lock();
        images.retain(|_, i| i.meeting != meeting);
        self.publish(&images);
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

    /// Three visits sharing the largest photos (3, 3 and 2 of them) filled the 64 MB and every
    /// other visit got `images_busy` for ten minutes; a quarter now stays for meetings that
    /// hold less. And one visit's slow uploads hold at most two of the eight upload slots.
    #[test]
    fn a_few_visits_photos_leave_room_for_the_others() {
        let store = ImageStore::new(64 * 1024 * 1024);
        let t0 = Instant::now();
        let put = |m: &str, sender: &str, n: usize| {
            store.put(origin(m, sender), "image/jpeg", bytes(n), vec![], t0)
        };
        for (m, photos) in [("v1", 3), ("v2", 3), ("v3", 2)] {
            for k in 0..photos {
                let sent = put(m, &format!("s{k}"), MAX_IMAGE_BYTES);
                // (The third visit's second no longer fits: 16 MB stay for the others.)
                assert_eq!(sent.is_ok(), !(m == "v3" && k == 1), "{m} photo {k}");
            }
        }
        assert!(put("v4", "pat", 20 * 1024).is_ok(), "another visit's photo");
        let slots: Vec<_> = ["a", "b"]
            .iter()
            .map(|s| store.begin_upload("v5", s, 0, t0).unwrap())
            .collect();
        assert_eq!(
            store.begin_upload("v5", "c", 0, t0).err(),
            Some(StoreRefusal::Full),
            "a third upload of one visit"
        );
        assert!(
            store.begin_upload("v6", "a", 0, t0).is_ok(),
            "another visit's"
        );
        drop(slots);
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
        let viewing = store.viewing(&id, "doc").unwrap();
        let recording = viewing.try_lock().unwrap();
        assert!(!*recording, "the first viewing is to be recorded");
        assert!(
            store.viewing(&id, "doc").unwrap().try_lock().is_err(),
            "a second fetch waits while the first is recorded"
        );
        // The record failed: the next fetch records it.
        drop(recording);
        let mut recording = store.viewing(&id, "doc").unwrap().try_lock_owned().unwrap();
        assert!(!*recording, "a viewing whose record failed counts again");
        *recording = true;
        drop(recording);
        assert!(
            *store.viewing(&id, "doc").unwrap().try_lock().unwrap(),
            "fetched again: not a new viewing"
        );
        assert!(store.viewing(&id, "pat").is_none(), "not a recipient");
        assert!(store.viewing("unknown", "doc").is_none());
        let slot = store.begin_upload("m1", "pat", 0, t0).unwrap();
        assert_eq!(
            store.begin_upload("m1", "pat", 0, t0).unwrap_err(),
            StoreRefusal::Uploading,
            "one at a time"
        );
        assert!(
            store.begin_upload("m1", "doc", 0, t0).is_ok(),
            "others are not held up"
        );
        drop(slot);
        assert!(store.begin_upload("m1", "pat", 0, t0).is_ok());
    }

    #[test]
    fn an_upload_that_cannot_be_kept_is_refused_before_its_body_is_read() {
        let store = ImageStore::new(1000);
        let t0 = Instant::now();
        for _ in 0..PER_SENDER {
            store
                .put(origin("m1", "pat"), "image/png", bytes(1), vec![], t0)
                .unwrap();
        }
        // A sender holding as many photos as they may: refused at once.
        assert_eq!(
            store.begin_upload("m1", "pat", 0, t0).unwrap_err(),
            StoreRefusal::SenderLimit
        );
        // A body declared larger than what is left: refused at once.
        assert_eq!(
            store.begin_upload("m1", "doc", 995, t0).unwrap_err(),
            StoreRefusal::Full
        );
        assert!(store.begin_upload("m1", "doc", 994, t0).is_ok());
        // And a few uploads at once in all, whoever sends them.
        let slots: Vec<_> = (0..UPLOADS_AT_ONCE)
            .map(|i| {
                let meeting = format!("m{}", 10 + i / UPLOADS_PER_MEETING);
                store
                    .begin_upload(&meeting, &format!("s{i}"), 0, t0)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            store.begin_upload("m3", "late", 0, t0).unwrap_err(),
            StoreRefusal::Full
        );
        drop(slots);
        assert!(store.begin_upload("m3", "late", 0, t0).is_ok());
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
