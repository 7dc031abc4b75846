//! Rendered answers of the read-only endpoints, kept while the store's epoch has not moved.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

/// JSON bodies of read-only answers, each with the store epoch it was rendered at. The
/// WebUI polls the same few URLs over and over; between changes they are served from here.
#[derive(Default)]
pub struct ResponseCache {
    entries: Mutex<HashMap<String, (u64, Bytes)>>,
}

impl ResponseCache {
    /// Distinct answers kept; past that the cache starts over.
    const CAPACITY: usize = 1024;

    pub fn get(&self, key: &str, epoch: u64) -> Option<Bytes> {
        let entries = self.entries.lock().unwrap();
        match entries.get(key) {
            Some((at, body)) if *at == epoch => Some(body.clone()),
            _ => None,
        }
    }

    pub fn put(&self, key: String, epoch: u64, body: Bytes) {
        let mut entries = self.entries.lock().unwrap();
        if entries.len() >= Self::CAPACITY && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, (epoch, body));
    }
}
