//! Rendered files kept in memory, so that a phone asking again for a file whose inputs did not
//! change is answered without rendering it again. Never written to disk.
//!
//! An entry is found by what the file is (vendor, template, requested name, and the device
//! for a device file) and is valid for one fingerprint of what it was rendered from (the
//! device's revision, the site's settings, the templates). The cache is bounded in bytes;
//! the least recently used entries go first. A body holds secrets (SIP passwords, the
//! steady URL): its memory is zeroed when the last copy of it is dropped, whether the cache
//! evicted it or a response still being sent was holding it.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use zeroize::Zeroize;

use crate::mac::Mac;

/// Bytes of rendered files the cache holds at most: a few hundred device files, so that a
/// boot storm's repeated fetches and a busy phone's resyncs hit, with little memory.
pub const CACHE_BYTES: usize = 1024 * 1024;

/// What a rendered file is, whatever it was rendered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity<'a> {
    /// The vendor's id.
    pub vendor: &'a str,
    /// The template it is rendered from.
    pub template: &'a str,
    /// The file name as requested (its placeholders are part of the context).
    pub requested: &'a str,
    /// The device shown in it (device files only).
    pub mac: Option<Mac>,
}

impl FileIdentity<'_> {
    /// Where the entry lives: a hash of the identity (an entry keeps the whole identity,
    /// so that two identities of the same hash never answer for each other).
    fn slot(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }

    /// Bytes its names count against the budget.
    fn name_bytes(&self) -> usize {
        self.vendor.len() + self.template.len() + self.requested.len()
    }
}

/// A rendered file and the truncated SHA-256 recorded as "config last served".
#[derive(Debug, Clone)]
pub struct CachedFile {
    /// The file; its memory is zeroed once the last copy is dropped.
    pub body: Bytes,
    /// [`crate::provision::context::config_hash`] of the body.
    pub hash: [u8; 8],
}

/// Owns a body's bytes for [`Bytes`], and zeroes them when dropped.
struct SecretBytes(Vec<u8>);

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
        #[cfg(test)]
        tests::WIPED.with(|wiped| wiped.set(wiped.get() + 1));
    }
}

impl CachedFile {
    /// Wraps a freshly rendered `body`, taking its memory over (no copy).
    pub fn new(body: String) -> CachedFile {
        let hash = super::context::config_hash(&body);
        CachedFile { body: Bytes::from_owner(SecretBytes(body.into_bytes())), hash }
    }
}

struct Entry {
    /// The identity's names, `vendor`, `template` and `requested` end to end, and the
    /// lengths of the first two.
    names: String,
    lengths: (usize, usize),
    mac: Option<Mac>,
    /// The fingerprint of what the body was rendered from.
    inputs: u64,
    file: CachedFile,
    /// When it was last used, on the cache's own clock.
    used: u64,
}

impl Entry {
    fn is(&self, identity: &FileIdentity<'_>) -> bool {
        let (vendor, template) = self.lengths;
        self.mac == identity.mac
            && self.names.get(..vendor) == Some(identity.vendor)
            && self.names.get(vendor..vendor + template) == Some(identity.template)
            && self.names.get(vendor + template..) == Some(identity.requested)
    }

    fn cost(&self) -> usize {
        self.file.body.len() + self.names.len()
    }
}

struct Entries {
    map: HashMap<u64, Entry>,
    bytes: usize,
    clock: u64,
}

/// The bounded cache.
pub struct RenderCache {
    budget: usize,
    entries: Mutex<Entries>,
}

impl RenderCache {
    /// A cache holding at most `budget` bytes of files and their names.
    pub fn new(budget: usize) -> RenderCache {
        RenderCache { budget, entries: Mutex::new(Entries { map: HashMap::new(), bytes: 0, clock: 0 }) }
    }

    /// The file `identity` as rendered from `inputs`, if the cache has it.
    pub fn get(&self, identity: &FileIdentity<'_>, inputs: u64) -> Option<CachedFile> {
        let mut entries = self.lock();
        entries.clock += 1;
        let now = entries.clock;
        let entry =
            entries.map.get_mut(&identity.slot()).filter(|entry| entry.is(identity) && entry.inputs == inputs)?;
        entry.used = now;
        Some(entry.file.clone())
    }

    /// Keeps `file`, rendered from `inputs`, replacing what `identity` held; evicts the least
    /// recently used entries beyond the budget. A file larger than a quarter of the budget
    /// is not kept.
    pub fn insert(&self, identity: &FileIdentity<'_>, inputs: u64, file: CachedFile) {
        let size = file.body.len() + identity.name_bytes();
        let slot = identity.slot();
        let mut entries = self.lock();
        if size > self.budget / 4 {
            // Not kept; nor is what the slot held, now out of date.
            if let Some(old) = entries.map.remove(&slot) {
                entries.bytes -= old.cost();
            }
            return;
        }
        entries.clock += 1;
        let used = entries.clock;
        if let Some(old) = entries.map.remove(&slot) {
            entries.bytes -= old.cost();
        }
        // Bounded: every round removes one entry.
        while entries.bytes + size > self.budget {
            let Some(oldest) = entries.map.iter().min_by_key(|(_, entry)| entry.used).map(|(slot, _)| *slot) else {
                break;
            };
            if let Some(evicted) = entries.map.remove(&oldest) {
                entries.bytes -= evicted.cost();
            }
        }
        let names = [identity.vendor, identity.template, identity.requested].concat();
        let lengths = (identity.vendor.len(), identity.template.len());
        entries.bytes += size;
        entries.map.insert(slot, Entry { names, lengths, mac: identity.mac, inputs, file, used });
    }

    /// Drops every entry (a restore replaced what they were rendered from).
    pub fn clear(&self) {
        let mut entries = self.lock();
        entries.map.clear();
        entries.bytes = 0;
    }

    /// Drops every file of the device `mac`.
    pub fn forget_device(&self, mac: &Mac) {
        let mut entries = self.lock();
        let mut freed = 0;
        entries.map.retain(|_, entry| {
            let keep = entry.mac != Some(*mac);
            if !keep {
                freed += entry.cost();
            }
            keep
        });
        entries.bytes -= freed;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Entries are replaced whole under the lock; a panic elsewhere leaves them usable.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// Bodies wiped on this thread so far.
        pub(super) static WIPED: Cell<usize> = const { Cell::new(0) };
    }

    fn identity(name: &str) -> FileIdentity<'_> {
        FileIdentity { vendor: "v", template: "t", requested: name, mac: None }
    }

    #[test]
    fn a_hit_needs_the_same_inputs() {
        let cache = RenderCache::new(1024);
        cache.insert(&identity("a"), 1, CachedFile::new("one".into()));
        assert_eq!(cache.get(&identity("a"), 1).map(|f| f.body), Some(Bytes::from_static(b"one")));
        assert!(cache.get(&identity("a"), 2).is_none(), "other inputs: rendered again");
        assert!(cache.get(&identity("b"), 1).is_none());
        cache.insert(&identity("a"), 2, CachedFile::new("two".into()));
        assert!(cache.get(&identity("a"), 1).is_none(), "the new revision replaced the old");
        assert_eq!(cache.lock().bytes, 3 + 3, "one entry: body and names");
        let device = FileIdentity { mac: Some(Mac([1; 6])), ..identity("d") };
        cache.insert(&device, 0, CachedFile::new("secret".into()));
        cache.forget_device(&Mac([2; 6]));
        assert!(cache.get(&device, 0).is_some(), "another device's files stay");
        cache.forget_device(&Mac([1; 6]));
        assert!(cache.get(&device, 0).is_none(), "the device's files are gone");
        assert_eq!(cache.lock().bytes, 3 + 3);
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_budget_holds() {
        // Each entry costs 100 + 3 bytes; 4 fit in 420.
        let cache = RenderCache::new(420);
        for name in ["a", "b", "c", "d"] {
            cache.insert(&identity(name), 0, CachedFile::new("x".repeat(100)));
        }
        assert!(cache.get(&identity("a"), 0).is_some(), "a is now the most recent");
        cache.insert(&identity("e"), 0, CachedFile::new("x".repeat(100)));
        assert!(cache.get(&identity("b"), 0).is_none(), "b was the least recently used");
        for name in ["a", "c", "d", "e"] {
            assert!(cache.get(&identity(name), 0).is_some(), "{name} stays");
        }
        assert!(cache.lock().bytes <= 420);
        cache.insert(&identity("big"), 0, CachedFile::new("x".repeat(200)));
        assert!(cache.get(&identity("big"), 0).is_none(), "over a quarter of the budget: not kept");
        cache.insert(&identity("a"), 1, CachedFile::new("x".repeat(200)));
        assert!(cache.get(&identity("a"), 0).is_none(), "nor what its slot held before");
        cache.clear();
        assert_eq!(cache.lock().bytes, 0);
        assert!(cache.get(&identity("a"), 0).is_none());
    }

    #[test]
    fn a_body_is_wiped_when_its_last_holder_lets_go() {
        let wiped = || WIPED.with(Cell::get);
        let before = wiped();
        let cache = RenderCache::new(1024);
        cache.insert(&identity("a"), 0, CachedFile::new("secret-password".into()));
        let served = cache.get(&identity("a"), 0).expect("cached");
        cache.insert(&identity("a"), 1, CachedFile::new("new-password".into()));
        assert_eq!(&served.body[..], b"secret-password", "a response in flight keeps its body");
        assert_eq!(wiped(), before, "not while a response holds it");
        drop(served);
        assert_eq!(wiped(), before + 1, "the replaced body was wiped once its response went");
        cache.clear();
        assert_eq!(wiped(), before + 2, "cleared bodies are wiped");
    }
}
