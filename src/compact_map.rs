//! A small sorted map in one allocation of exactly its size: the shape of
//! an instance's config and devices, kept for every registered instance.
//!
//! A `BTreeMap` allocates a whole node (eleven slots, about 540 bytes for
//! string pairs) for its first entry; an instance has a handful of keys,
//! and a dense host has 65,536 instances. A sorted `Vec` costs exactly its
//! entries, looks up by binary search, and iterates in key order like the
//! map it replaces, so serialization, events and listings are unchanged.
//! It does not suit large maps (an insert moves the entries after it);
//! the instance limits keep these small.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Index;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// Keys to values, sorted by key, each key once.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct CompactMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> CompactMap<V> {
    /// An empty map (no allocation).
    pub const fn new() -> CompactMap<V> {
        CompactMap {
            entries: Vec::new(),
        }
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The value of `key`.
    pub fn get<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> Option<&V> {
        let at = self.position(key.borrow()).ok()?;
        Some(&self.entries[at].1)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q: Borrow<str> + ?Sized>(&self, key: &Q) -> bool {
        self.position(key.borrow()).is_ok()
    }

    /// Sets `key`; returns its previous value. The allocation grows by one
    /// entry, not by doubling: maps here are written rarely and kept long.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        match self.position(&key) {
            Ok(at) => Some(std::mem::replace(&mut self.entries[at].1, value)),
            Err(at) => {
                self.entries.reserve_exact(1);
                self.entries.insert(at, (key, value));
                None
            }
        }
    }

    /// Unsets `key`; returns its value.
    pub fn remove<Q: Borrow<str> + ?Sized>(&mut self, key: &Q) -> Option<V> {
        let at = self.position(key.borrow()).ok()?;
        let (_, value) = self.entries.remove(at);
        self.entries.shrink_to_fit();
        Some(value)
    }

    /// The value of `key`, inserted as `V::default()` if it had none.
    pub fn get_or_insert_default(&mut self, key: &str) -> &mut V
    where
        V: Default,
    {
        let at = match self.position(key) {
            Ok(at) => at,
            Err(at) => {
                self.entries.reserve_exact(1);
                self.entries.insert(at, (key.to_owned(), V::default()));
                at
            }
        };
        &mut self.entries[at].1
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// How many keys have values.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key has a value.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<V: fmt::Debug> fmt::Debug for CompactMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V, Q: Borrow<str> + ?Sized> Index<&Q> for CompactMap<V> {
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for the key")
    }
}

impl<'a, V> IntoIterator for &'a CompactMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, V)>,
        fn(&'a (String, V)) -> (&'a String, &'a V),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<V> IntoIterator for CompactMap<V> {
    type Item = (String, V);
    type IntoIter = std::vec::IntoIter<(String, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<V> FromIterator<(String, V)> for CompactMap<V> {
    /// Later entries of a key win, as in a `BTreeMap`.
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> CompactMap<V> {
        let mut entries: Vec<(String, V)> = iter.into_iter().collect();
        // Stable: of equal keys, the last one is kept below.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(String, V)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match kept.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => kept.push(entry),
            }
        }
        kept.shrink_to_fit();
        CompactMap { entries: kept }
    }
}

impl<V: Serialize> Serialize for CompactMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for CompactMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
            type Value = CompactMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = access.next_entry::<String, V>()? {
                    entries.push(entry);
                }
                Ok(entries.into_iter().collect())
            }
        }
        deserializer.deserialize_map(Entries(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_sorted_map() {
        let mut map = CompactMap::new();
        assert_eq!(map.insert("b".to_string(), 2), None);
        assert_eq!(map.insert("a".to_string(), 1), None);
        assert_eq!(map.insert("c".to_string(), 3), None);
        assert_eq!(map.insert("b".to_string(), 20), Some(2));
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(map["b"], 20);
        assert_eq!(map.get("d"), None);
        assert_eq!(map.remove("a"), Some(1));
        assert_eq!(map.remove("a"), None);
        assert!(map.contains_key("c") && !map.contains_key("a"));
        *map.get_or_insert_default("d") += 4;
        assert_eq!(map.values().copied().collect::<Vec<_>>(), [20, 3, 4]);
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn json_round_trip_is_a_sorted_object_and_the_last_duplicate_wins() {
        let map: CompactMap<String> = serde_json::from_str(r#"{"z":"1","a":"2","z":"3"}"#).unwrap();
        assert_eq!(serde_json::to_string(&map).unwrap(), r#"{"a":"2","z":"3"}"#);
        let btree: std::collections::BTreeMap<String, String> =
            serde_json::from_str(r#"{"z":"1","a":"2","z":"3"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            serde_json::to_string(&btree).unwrap()
        );
        assert!(serde_json::from_str::<CompactMap<String>>("[]").is_err());
    }

    #[test]
    fn costs_exactly_its_entries() {
        let map: CompactMap<String> = (0..3).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(map.entries.capacity(), 3);
        let mut map = map;
        map.insert("k9".into(), String::new());
        assert_eq!(map.entries.capacity(), 4);
    }
}
