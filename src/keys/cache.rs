//! Copies of recently read versions, so key operations and gets do not query SQLite each time.
//! An entry is stamped with the store's write generation read *before* the row was read, and
//! is used only while that generation is current: any committed write makes every entry stale,
//! so a change (disable, delete, new version, new `key_ops`) is seen by the next request.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::{KeyName, VersionId, VersionRecord};

/// Beyond this many entries the cache starts again empty.
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
pub struct VersionCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    /// Newest version by lower-cased name (names compare without case, as in the store).
    latest: HashMap<String, VersionRecord>,
    by_id: HashMap<VersionId, VersionRecord>,
}

impl VersionCache {
    /// The cached version, if it was read at generation `current`.
    pub fn lookup(
        &self,
        current: u64,
        name: &KeyName,
        version: Option<VersionId>,
    ) -> Option<VersionRecord> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.generation != current {
            return None;
        }
        match version {
            None => inner.latest.get(&fold(name)).cloned(),
            Some(v) => inner
                .by_id
                .get(&v)
                .filter(|r| r.name.as_str().eq_ignore_ascii_case(name.as_str()))
                .cloned(),
        }
    }

    /// Remembers a version read at `generation` (as the newest one when `latest`).
    pub fn insert(&self, generation: u64, record: &VersionRecord, latest: bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if generation != inner.generation {
            if generation < inner.generation {
                return;
            }
            *inner = Inner {
                generation,
                ..Inner::default()
            };
        }
        if inner.latest.len() + inner.by_id.len() >= MAX_ENTRIES {
            inner.latest.clear();
            inner.by_id.clear();
        }
        if latest {
            inner.latest.insert(fold(&record.name), record.clone());
        }
        inner.by_id.insert(record.version, record.clone());
    }
}

fn fold(name: &KeyName) -> String {
    name.as_str().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attributes, Curve, KeyFamily, KeyKind, KeyOps, Origin, PublicKey};

    fn record(name: &str) -> VersionRecord {
        VersionRecord {
            name: KeyName::parse(name).expect("valid test name"),
            version: VersionId::random(),
            kind: KeyKind::Ec { curve: Curve::P256 },
            ops: KeyOps::all_for(KeyFamily::Ec),
            attributes: Attributes::default(),
            created: 1,
            updated: 1,
            tags: Default::default(),
            public: PublicKey::Oct,
            origin: Origin::Generated,
        }
    }

    #[test]
    fn an_entry_serves_only_its_generation() {
        let cache = VersionCache::default();
        let rec = record("Alpha");
        let lower = KeyName::parse("alpha").expect("name");
        cache.insert(3, &rec, true);
        assert_eq!(cache.lookup(3, &lower, None), Some(rec.clone()));
        assert_eq!(
            cache.lookup(3, &lower, Some(rec.version)),
            Some(rec.clone())
        );
        // Another key's name does not reach this version.
        let other = KeyName::parse("beta").expect("name");
        assert_eq!(cache.lookup(3, &other, Some(rec.version)), None);
        // A write happened: everything is stale.
        assert_eq!(cache.lookup(4, &lower, None), None);
        // A row read before that write cannot come back in.
        cache.insert(3, &rec, true);
        cache.insert(4, &record("gamma"), true);
        cache.insert(3, &rec, true);
        assert_eq!(cache.lookup(4, &lower, None), None);
        // A version lookup does not make the version the newest.
        let older = record("alpha");
        cache.insert(4, &older, false);
        assert_eq!(cache.lookup(4, &lower, None), None);
        assert_eq!(cache.lookup(4, &lower, Some(older.version)), Some(older));
    }
}
