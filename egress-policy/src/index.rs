//! A flat, read-only hash index of host patterns and role names: the lookup
//! structure behind every decision.
//!
//! One open-addressing table holds every key (16-byte slots), one string
//! arena holds every key's bytes, and each pattern list has a 256-bit filter
//! over its entries. A host is hashed once, suffix by suffix
//! ([`HostKey`]), and that work is reused for every list it is looked up in.
//! A decision therefore costs a few probes per label of the host and touches
//! a handful of cache lines, whatever the number of rules or patterns.
//!
//! The index is built once from trusted, validated patterns and never
//! mutated: probe sequences are bounded by the longest one seen at build
//! time, so no query can make a lookup longer. Pure: no I/O.
//!
//! Middle wildcards (`left.*.right`, policy v2) are keyed by a hash mixed
//! from the hashes of `left` and `right`; a host tries each position of the
//! `*` label once (cost grows with its labels, not with patterns), and an
//! index without middle wildcards skips that step entirely, so v1 tables do
//! not pay for it.

use crate::pattern::{HostPattern, PatternMatch};

/// Identifies one pattern list inside an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListId(pub u32);

const KIND_EXACT: u32 = 0;
const KIND_WILDCARD: u32 = 1;
const KIND_NAME: u32 = 2;
const KIND_MIDDLE: u32 = 3;
const KIND_BITS: u32 = 2;
const EMPTY: u32 = u32::MAX;

/// Hosts with more labels than this hash their deeper suffixes on demand.
const INLINE_SUFFIXES: usize = 16;

#[derive(Clone, Copy, Debug)]
struct Slot {
    /// Low 32 bits of the key's hash, compared before any string.
    tag: u32,
    /// `(list or value) << KIND_BITS | kind`, or `EMPTY`.
    meta: u32,
    /// The key's bytes in the arena.
    start: u32,
    len: u32,
}

const EMPTY_SLOT: Slot = Slot { tag: 0, meta: EMPTY, start: 0, len: 0 };

/// A 256-bit filter of one list's pattern strings: most suffixes of a host
/// are ruled out without touching the table.
#[derive(Clone, Copy, Debug, Default)]
struct Filter([u64; 4]);

impl Filter {
    fn bits(hash: u64) -> (usize, u64, usize, u64) {
        let a = (hash >> 40) as usize & 255;
        let b = (hash >> 52) as usize & 255;
        (a >> 6, 1u64 << (a & 63), b >> 6, 1u64 << (b & 63))
    }

    fn insert(&mut self, hash: u64) {
        let (wa, ba, wb, bb) = Self::bits(hash);
        if let Some(w) = self.0.get_mut(wa) {
            *w |= ba;
        }
        if let Some(w) = self.0.get_mut(wb) {
            *w |= bb;
        }
    }

    fn may_contain(&self, hash: u64) -> bool {
        let (wa, ba, wb, bb) = Self::bits(hash);
        self.0.get(wa).is_some_and(|w| w & ba != 0) && self.0.get(wb).is_some_and(|w| w & bb != 0)
    }
}

/// A host prepared for lookups: the hash of every suffix that starts at a
/// label, computed once.
#[derive(Debug)]
pub struct HostKey<'h> {
    text: &'h str,
    is_name: bool,
    /// `(start, hash)` of the suffixes, longest (the whole host) first.
    suffixes: [(u32, u64); INLINE_SUFFIXES],
    count: usize,
    /// Where the suffixes that did not fit inline begin.
    overflow_from: Option<usize>,
}

impl<'h> HostKey<'h> {
    /// Prepares `host` for lookups: hashes the whole host and, for a name, every
    /// suffix that starts at a label (the candidates for `*.suffix` entries).
    pub fn new(host: &'h crate::host::CanonicalHost) -> Self {
        let text = host.as_str();
        let mut key = HostKey {
            text,
            is_name: host.is_name(),
            suffixes: [(0, 0); INLINE_SUFFIXES],
            count: 0,
            overflow_from: None,
        };
        let mut start = 0usize;
        loop {
            if key.count == INLINE_SUFFIXES {
                key.overflow_from = Some(start);
                break;
            }
            if let Some(slot) = key.suffixes.get_mut(key.count) {
                *slot = (start as u32, hash_str(text.get(start..).unwrap_or_default()));
            }
            key.count += 1;
            // Only names have wildcard suffixes; an IP literal is one key.
            if !key.is_name {
                break;
            }
            match text.get(start..).and_then(|rest| rest.find('.')) {
                Some(dot) => start += dot + 1,
                None => break,
            }
        }
        key
    }

    /// The hash of the whole host (the decision's filter of internal
    /// destination hosts uses it).
    pub fn whole_hash(&self) -> u64 {
        self.whole().1
    }

    /// The whole host.
    fn whole(&self) -> (u32, u64) {
        self.suffixes.first().copied().unwrap_or((0, 0))
    }

    /// Proper suffixes (after the first label), longest first.
    fn proper_suffixes(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        let inline = self.suffixes.iter().take(self.count).skip(1).copied();
        let overflow = self.overflow_from.into_iter().flat_map(move |from| {
            let mut next = Some(from);
            std::iter::from_fn(move || {
                let start = next?;
                let rest = self.text.get(start..)?;
                next = rest.find('.').map(|dot| start + dot + 1);
                Some((start as u32, hash_str(rest)))
            })
        });
        inline.chain(overflow)
    }
}

/// Builds an index. Lists are numbered in the order they are added.
#[derive(Debug, Default)]
pub struct IndexBuilder {
    /// `(meta, text, text hash)`.
    keys: Vec<(u32, Box<str>, u64)>,
    filters: Vec<Filter>,
}

impl IndexBuilder {
    /// Adds a pattern list and returns its id.
    pub fn add_list<'p>(&mut self, patterns: impl IntoIterator<Item = &'p HostPattern>) -> ListId {
        let id = self.filters.len() as u32;
        let mut filter = Filter::default();
        for pattern in patterns {
            let (kind, text, hash): (u32, Box<str>, u64) = match pattern {
                HostPattern::Exact(host) => (KIND_EXACT, host.as_str().into(), hash_str(host.as_str())),
                HostPattern::Wildcard(suffix) => (KIND_WILDCARD, suffix.clone(), hash_str(suffix)),
                HostPattern::Middle { left, right } => {
                    (KIND_MIDDLE, pattern.to_string().into(), middle_hash(hash_str(left), hash_str(right)))
                }
            };
            filter.insert(hash);
            self.keys.push((id << KIND_BITS | kind, text, hash));
        }
        self.filters.push(filter);
        ListId(id)
    }

    /// Adds a name (a role) that maps to `value`.
    pub fn add_name(&mut self, name: &str, value: u32) {
        self.keys.push((value << KIND_BITS | KIND_NAME, name.into(), hash_str(name)));
    }

    /// Freezes the keys into a read-only [`Index`]; duplicate keys are stored once.
    pub fn build(self) -> Index {
        // Load factor at most 1/2 keeps probe sequences short.
        let capacity = (self.keys.len() * 2).next_power_of_two().max(16);
        let shift = 64 - capacity.trailing_zeros();
        let mut slots = vec![EMPTY_SLOT; capacity].into_boxed_slice();
        let mut arena = String::with_capacity(self.keys.iter().map(|(_, k, _)| k.len()).sum());
        let mut max_probe = 0;
        let has_middle = self.keys.iter().any(|(meta, _, _)| meta & ((1 << KIND_BITS) - 1) == KIND_MIDDLE);
        for (meta, text, text_hash) in &self.keys {
            let hash = slot_hash(*text_hash, *meta);
            let mut i = home(hash, shift);
            let mut probe = 0;
            while let Some(slot) = slots.get_mut(i) {
                if slot.meta == EMPTY {
                    *slot = Slot { tag: hash as u32, meta: *meta, start: arena.len() as u32, len: text.len() as u32 };
                    arena.push_str(text);
                    break;
                }
                if slot.meta == *meta
                    && arena.get(slot.start as usize..(slot.start + slot.len) as usize) == Some(&**text)
                {
                    break; // duplicate key: already present
                }
                i = (i + 1) & (capacity - 1);
                probe += 1;
            }
            max_probe = max_probe.max(probe);
        }
        Index {
            slots,
            shift,
            max_probe,
            arena: arena.into_boxed_str(),
            filters: self.filters.into_boxed_slice(),
            has_middle,
        }
    }
}

/// The built index: see the module documentation.
#[derive(Clone, Debug)]
pub struct Index {
    slots: Box<[Slot]>,
    shift: u32,
    max_probe: usize,
    arena: Box<str>,
    filters: Box<[Filter]>,
    /// Whether any list has a middle wildcard (v1 indexes never do).
    has_middle: bool,
}

impl Index {
    /// The value stored for `name` by [`IndexBuilder::add_name`].
    pub fn name(&self, name: &str) -> Option<u32> {
        self.probe(
            hash_str(name),
            KIND_NAME,
            |meta| meta & ((1 << KIND_BITS) - 1) == KIND_NAME,
            |slot| self.key_is(slot, name),
        )
        .map(|slot| slot.meta >> KIND_BITS)
    }

    /// The entry of list `list` that matches the host: the exact entry if
    /// there is one, else the longest wildcard suffix.
    pub fn find(&self, list: ListId, host: &HostKey<'_>) -> Option<PatternMatch<'_>> {
        let filter = self.filters.get(list.0 as usize)?;
        let base = list.0 << KIND_BITS;
        let (_, whole) = host.whole();
        if filter.may_contain(whole)
            && let Some(start) = self.probe_at(whole, base | KIND_EXACT, host.text)
        {
            return Some(PatternMatch::Exact(self.text(start, host.text.len())));
        }
        if !host.is_name {
            return None;
        }
        for (start, hash) in host.proper_suffixes() {
            if !filter.may_contain(hash) {
                continue;
            }
            let suffix = host.text.get(start as usize..).unwrap_or_default();
            if let Some(at) = self.probe_at(hash, base | KIND_WILDCARD, suffix) {
                return Some(PatternMatch::Wildcard(self.text(at, suffix.len())));
            }
        }
        if self.has_middle {
            return self.find_middle(list, filter, host);
        }
        None
    }

    /// A `left.*.right` entry of `list` matching the host: tries the `*` at
    /// every label that has a label to its left and two to its right.
    fn find_middle(&self, list: ListId, filter: &Filter, host: &HostKey<'_>) -> Option<PatternMatch<'_>> {
        let meta = list.0 << KIND_BITS | KIND_MIDDLE;
        let text = host.text;
        // `star` is where the candidate `*` label starts; the suffix after it is `right`.
        let mut star: Option<u32> = None;
        for (start, right_hash) in host.proper_suffixes() {
            let Some(star_start) = star.replace(start) else { continue };
            let right = text.get(start as usize..).unwrap_or_default();
            if !right.contains('.') {
                break; // `right` needs at least two labels
            }
            let left = text.get(..(star_start as usize).saturating_sub(1)).unwrap_or_default();
            let hash = middle_hash(hash_str(left), right_hash);
            if !filter.may_contain(hash) {
                continue;
            }
            let found = self.probe(
                hash,
                meta,
                |m| m == meta,
                |slot| {
                    slot.len as usize == left.len() + 3 + right.len()
                        && self.text(slot.start, left.len()) == left
                        && self.text(slot.start + left.len() as u32, 3) == ".*."
                        && self.text(slot.start + left.len() as u32 + 3, right.len()) == right
                },
            );
            if let Some(slot) = found {
                return Some(PatternMatch::Middle(self.text(slot.start, slot.len as usize)));
            }
        }
        None
    }

    /// Number of keys in the index.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.meta != EMPTY).count()
    }

    /// Whether the index holds no key at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn text(&self, start: u32, len: usize) -> &str {
        self.arena.get(start as usize..start as usize + len).unwrap_or_default()
    }

    /// Walks the probe sequence of `(text, meta)` and returns the slot
    /// holding that key. `same_key` says whether a slot's `meta` is the key's
    /// (names match on their kind alone: their value is not part of the key);
    /// `same_text` confirms the key's bytes.
    fn probe(
        &self,
        text_hash: u64,
        meta: u32,
        same_key: impl Fn(u32) -> bool,
        same_text: impl Fn(&Slot) -> bool,
    ) -> Option<&Slot> {
        let hash = slot_hash(text_hash, meta);
        let mut i = home(hash, self.shift);
        let mask = self.slots.len() - 1;
        for _ in 0..=self.max_probe {
            let slot = self.slots.get(i)?;
            if slot.meta == EMPTY {
                return None;
            }
            if slot.tag == hash as u32 && same_key(slot.meta) && same_text(slot) {
                return Some(slot);
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Probes for an exact `(meta, text)` pattern key; returns its arena offset.
    fn probe_at(&self, text_hash: u64, meta: u32, text: &str) -> Option<u32> {
        self.probe(text_hash, meta, |m| m == meta, |slot| self.key_is(slot, text)).map(|slot| slot.start)
    }

    fn key_is(&self, slot: &Slot, text: &str) -> bool {
        slot.len as usize == text.len() && self.text(slot.start, text.len()) == text
    }
}

/// The slot hash: the string's hash mixed with which list and kind it
/// belongs to, so one string hash serves every list. Names mix in only
/// their kind (their value is not part of the key).
fn slot_hash(text_hash: u64, meta: u32) -> u64 {
    let key = if meta & ((1 << KIND_BITS) - 1) == KIND_NAME { KIND_NAME } else { meta };
    let x = text_hash ^ u64::from(key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let x = (x ^ (x >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

/// The key hash of a middle wildcard: its two sides' hashes, mixed.
fn middle_hash(left: u64, right: u64) -> u64 {
    let x = left.rotate_left(31) ^ right.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Fibonacci hashing: the high bits of a multiply are well mixed.
fn home(hash: u64, shift: u32) -> usize {
    (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

/// A fast word-at-a-time string hash. Not collision-resistant, and it does
/// not need to be: the table's keys come from the compiled policy, never
/// from clients, and every hit is confirmed by comparing the bytes.
fn hash_str(text: &str) -> u64 {
    const K: u64 = 0xF135_7AEA_2E62_A9C5;
    let bytes = text.as_bytes();
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(K).rotate_left(26);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        if let Some(dst) = word.get_mut(..rest.len()) {
            dst.copy_from_slice(rest);
        }
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(K).rotate_left(26);
    }
    let h = (h ^ (h >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use crate::host;
    use crate::pattern;
    use proptest::prelude::*;

    fn patterns(list: &[&str]) -> Vec<HostPattern> {
        list.iter().map(|p| pattern::parse(p).unwrap().pattern).collect()
    }

    #[test]
    fn wildcards_match_any_depth_never_the_apex() {
        let mut b = IndexBuilder::default();
        let list = b.add_list(&patterns(&["a.com", "*.b.com", "*.c.b.com", "1.2.3.4", "::1"]));
        let other = b.add_list(&patterns(&["x.com"]));
        b.add_name("role-a", 7);
        let index = b.build();
        let find = |l, h: &str| {
            let host = host::canonical(h).unwrap();
            index.find(l, &HostKey::new(&host)).map(|m| m.to_string())
        };
        assert_eq!(find(list, "a.com").as_deref(), Some("a.com"));
        assert_eq!(find(list, "x.a.com"), None);
        assert_eq!(find(list, "b.com"), None);
        assert_eq!(find(list, "x.b.com").as_deref(), Some("*.b.com"));
        assert_eq!(find(list, "y.x.b.com").as_deref(), Some("*.b.com"));
        assert_eq!(find(list, "x.c.b.com").as_deref(), Some("*.c.b.com"));
        assert_eq!(find(list, "xb.com"), None);
        assert_eq!(find(list, "1.2.3.4").as_deref(), Some("1.2.3.4"));
        assert_eq!(find(list, "::1").as_deref(), Some("::1"));
        assert_eq!(find(list, "x.com"), None, "lists do not leak into each other");
        assert_eq!(find(other, "x.com").as_deref(), Some("x.com"));
        assert_eq!(index.name("role-a"), Some(7));
        assert_eq!(index.name("role-b"), None);
        assert_eq!(index.name("a.com"), None, "names and patterns are separate keys");
        assert_eq!(index.len(), 7);
    }

    #[test]
    fn deep_hosts_use_the_overflow_path() {
        let mut b = IndexBuilder::default();
        let list = b.add_list(&patterns(&["*.deep.example"]));
        let index = b.build();
        let labels: Vec<String> = (0..40).map(|i| format!("l{i}")).collect();
        let host = host::canonical(&format!("{}.deep.example", labels.join("."))).unwrap();
        assert_eq!(index.find(list, &HostKey::new(&host)).map(|m| m.to_string()).as_deref(), Some("*.deep.example"));
        let host = host::canonical(&format!("{}.other.example", labels.join("."))).unwrap();
        assert_eq!(index.find(list, &HostKey::new(&host)), None);
    }

    #[test]
    fn empty_index_finds_nothing() {
        let mut b = IndexBuilder::default();
        let list = b.add_list(&[]);
        let index = b.build();
        let host = host::canonical("a.com").unwrap();
        assert_eq!(index.find(list, &HostKey::new(&host)), None);
        assert_eq!(index.find(ListId(9), &HostKey::new(&host)), None);
        assert!(index.is_empty());
    }

    #[test]
    fn middle_wildcards_match_exactly_one_label() {
        let mut b = IndexBuilder::default();
        let v2 = |p: &str| pattern::parse_v2(p).unwrap().pattern;
        let list = b.add_list(&[v2("access-analyzer.*.amazonaws.com"), v2("a.b.*.example.co.uk"), v2("*.other.com")]);
        let other = b.add_list(&[v2("x.*.example.com")]);
        let index = b.build();
        let find = |l, h: &str| {
            let host = host::canonical(h).unwrap();
            index.find(l, &HostKey::new(&host)).map(|m| m.to_string())
        };
        let m = Some("access-analyzer.*.amazonaws.com".to_owned());
        assert_eq!(find(list, "access-analyzer.us-east-1.amazonaws.com"), m);
        assert_eq!(find(list, "access-analyzer.amazonaws.com"), None, "not zero labels");
        assert_eq!(find(list, "access-analyzer.a.b.amazonaws.com"), None, "not two labels");
        assert_eq!(find(list, "x.access-analyzer.us-east-1.amazonaws.com"), None);
        assert_eq!(find(list, "access-analyzer.us-east-1.amazonaws.com.evil.com"), None);
        assert_eq!(find(list, "a.b.zz.example.co.uk").as_deref(), Some("a.b.*.example.co.uk"));
        assert_eq!(find(list, "b.zz.example.co.uk"), None);
        assert_eq!(find(list, "q.other.com").as_deref(), Some("*.other.com"));
        assert_eq!(find(other, "access-analyzer.us-east-1.amazonaws.com"), None, "lists stay apart");
        assert_eq!(find(other, "x.y.example.com").as_deref(), Some("x.*.example.com"));
        // Deep hosts go through the overflow suffixes too.
        let deep: Vec<String> = (0..30).map(|i| format!("l{i}")).collect();
        assert_eq!(find(other, &format!("{}.x.y.example.com", deep.join("."))), None);
    }

    proptest! {
        /// Middle wildcards agree with a naive label-by-label comparison.
        #[test]
        fn middle_wildcards_agree_with_a_linear_scan(
            entries in prop::collection::vec(("[a-c]{1,2}", "[a-c]{1,2}\\.[a-c]{1,2}\\.com"), 0..20),
            queries in prop::collection::vec("[a-c]{1,2}(\\.[a-c]{1,2}){1,4}\\.com", 1..40),
        ) {
            let list: Vec<HostPattern> =
                entries.iter().map(|(l, r)| pattern::parse_v2(&format!("{l}.*.{r}")).unwrap().pattern).collect();
            let mut b = IndexBuilder::default();
            let id = b.add_list(&list);
            let index = b.build();
            for q in queries {
                let host = host::canonical(&q).unwrap();
                let labels: Vec<&str> = q.split('.').collect();
                let naive = list.iter().any(|p| match p {
                    HostPattern::Middle { left, right } => {
                        let (l, r) = (left.split('.').count(), right.split('.').count());
                        labels.len() == l + 1 + r
                            && labels[..l].join(".") == **left
                            && labels[l + 1..].join(".") == **right
                    }
                    _ => false,
                });
                prop_assert_eq!(index.find(id, &HostKey::new(&host)).is_some(), naive, "{}", q);
            }
        }

        /// The index agrees with a naive scan of every pattern.
        #[test]
        fn agrees_with_a_linear_scan(
            entries in prop::collection::vec(("[a-c]{1,2}(\\.[a-c]{1,2}){0,2}", any::<bool>()), 0..40),
            queries in prop::collection::vec("[a-c]{1,2}(\\.[a-c]{1,2}){0,3}", 1..40),
        ) {
            let list: Vec<HostPattern> = entries
                .iter()
                .map(|(name, wild)| pattern::parse(&if *wild { format!("*.{name}") } else { name.clone() }).unwrap().pattern)
                .collect();
            let mut b = IndexBuilder::default();
            let id = b.add_list(&list);
            let index = b.build();
            for q in queries {
                let host = host::canonical(&q).unwrap();
                let naive = list.iter().any(|p| match p {
                    HostPattern::Exact(h) => h.as_str() == q,
                    HostPattern::Wildcard(s) => q.ends_with(&format!(".{s}")),
                    HostPattern::Middle { .. } => false,
                });
                prop_assert_eq!(index.find(id, &HostKey::new(&host)).is_some(), naive, "{}", q);
            }
        }
    }
}
