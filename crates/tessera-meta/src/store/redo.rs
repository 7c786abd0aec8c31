//! Writes to the state trees, and the redo record that makes a group of
//! them atomic without a sled transaction.
//!
//! A sled 0.34 transaction (or `apply_batch`) pins its log: it seals and
//! writes sled's log buffer before and after the writes, each time with a
//! `pwrite` and a `sync_file_range` that waits for the device, on sled's
//! thread pool. Under 4 KiB PUTs that was 880 `sync_file_range` calls a
//! second on each meta node (strace: 6.6 per appended Raft batch) and the
//! thread wake-ups that go with them.
//!
//! A group of writes (one entry, or a run of commands of a batch entry)
//! is applied instead as plain sled writes, after one more: the whole
//! group, encoded by [`encode`], as a single value under [`REDO_KEY`] in its
//! own tree. sled recovers a prefix of its log (recovery stops at the first
//! torn or missing segment: sled `pagecache/segment.rs`), so after a crash
//! the trees hold every group before the last redo record recovered, and a
//! prefix of that record's writes. Every write in the record is absolute
//! (this value for this key, or no key), so applying the record again on
//! open ([`replay`]) completes the group, and is harmless if it was
//! complete: the recovered state is exactly the state after some group,
//! as it was with transactions. A single value is recovered wholly or not
//! at all, like any sled write.
//!
//! Readers never relied on transactions for isolation: sled's point reads
//! see one key, and its iterators take its lock one step at a time.

use sled::IVec;

/// Key of the redo record in its tree.
pub(crate) const REDO_KEY: &[u8] = b"redo";

/// Format of a redo record: this byte, then the number of trees, then
/// `(tree u8, op u8 (0 remove, 1 insert), key len u32, key[, value len u32,
/// value])` per write, integers little-endian.
const VERSION: u8 = 1;

/// The writes of a group to one tree, in order (the last write to a key
/// wins).
#[derive(Debug, Default, Clone)]
pub(crate) struct TreeWrites(Vec<(IVec, Option<IVec>)>);

impl TreeWrites {
    pub(crate) fn insert<K: Into<IVec>, V: Into<IVec>>(&mut self, key: K, value: V) {
        self.0.push((key.into(), Some(value.into())));
    }

    pub(crate) fn remove<K: Into<IVec>>(&mut self, key: K) {
        self.0.push((key.into(), None));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &(IVec, Option<IVec>)> {
        self.0.iter()
    }

    /// The same writes as a sled batch (for a transaction).
    pub(crate) fn to_batch(&self) -> sled::Batch {
        let mut b = sled::Batch::default();
        for (k, v) in &self.0 {
            match v {
                Some(v) => b.insert(k.clone(), v.clone()),
                None => b.remove(k.clone()),
            }
        }
        b
    }
}

/// Encodes the writes of a group: for each of its parts, the writes to
/// each of `trees` trees, in tree order.
pub(crate) fn encode<'a, P: AsRef<[&'a TreeWrites]>>(trees: usize, parts: &[P]) -> Vec<u8> {
    let all = || parts.iter().flat_map(|p| p.as_ref().iter().enumerate());
    let len: usize = all()
        .flat_map(|(_, w)| w.iter())
        .map(|(k, v)| 10 + k.len() + v.as_ref().map_or(0, |v| 4 + v.len()))
        .sum();
    let mut out = Vec::with_capacity(2 + len);
    out.push(VERSION);
    out.push(trees as u8);
    for (tree, writes) in all() {
        for (k, v) in writes.iter() {
            out.push(tree as u8);
            out.push(v.is_some() as u8);
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            if let Some(v) = v {
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

/// One write of a decoded record: tree index, key, value (`None`: remove).
pub(crate) type Write<'a> = (usize, &'a [u8], Option<&'a [u8]>);

/// Decodes a record written by [`encode`] for `trees` trees.
pub(crate) fn decode(trees: usize, rec: &[u8]) -> Result<Vec<Write<'_>>, String> {
    match rec {
        [VERSION, n, ..] if *n as usize == trees => {}
        [VERSION, n, ..] => return Err(format!("redo record for {n} trees, not {trees}")),
        [v, ..] => return Err(format!("redo record of unknown version {v}")),
        [] => return Err("empty redo record".into()),
    }
    let mut rest = &rec[2..];
    let mut out = Vec::new();
    fn take<'b>(rest: &mut &'b [u8], n: usize) -> Result<&'b [u8], String> {
        if rest.len() < n {
            return Err("redo record cut short".into());
        }
        let (a, b) = rest.split_at(n);
        *rest = b;
        Ok(a)
    }
    fn len(rest: &mut &[u8]) -> Result<usize, String> {
        let b = take(rest, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    while !rest.is_empty() {
        let head = take(&mut rest, 2)?;
        let (tree, op) = (head[0] as usize, head[1]);
        if tree >= trees || op > 1 {
            return Err(format!("redo record names tree {tree}, op {op}"));
        }
        let klen = len(&mut rest)?;
        let key = take(&mut rest, klen)?;
        let value = if op == 1 {
            let vlen = len(&mut rest)?;
            Some(take(&mut rest, vlen)?)
        } else {
            None
        };
        out.push((tree, key, value));
    }
    Ok(out)
}

/// Applies the redo record found in `redo_tree`, if any, to `trees`.
pub(crate) fn replay(redo_tree: &sled::Tree, trees: &[&sled::Tree]) -> Result<usize, sled::Error> {
    let Some(rec) = redo_tree.get(REDO_KEY)? else {
        return Ok(0);
    };
    let writes = decode(trees.len(), &rec)
        .map_err(|e| sled::Error::Unsupported(format!("the state machine's redo record: {e}")))?;
    for (tree, key, value) in &writes {
        match value {
            Some(v) => trees[*tree].insert(key, *v)?,
            None => trees[*tree].remove(key)?,
        };
    }
    Ok(writes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_writes(seed: u64, trees: usize) -> Vec<TreeWrites> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..trees)
            .map(|_| {
                let mut w = TreeWrites::default();
                for _ in 0..(next() % 5) {
                    let key: Vec<u8> = (0..next() % 40).map(|_| next() as u8).collect();
                    if next() % 3 == 0 {
                        w.remove(key);
                    } else {
                        let value: Vec<u8> = (0..next() % 300).map(|_| next() as u8).collect();
                        w.insert(key, value);
                    }
                }
                w
            })
            .collect()
    }

    /// Encoding then decoding gives back every write, in order, for any
    /// writes; every cut-short or damaged head is an error, not a panic.
    #[test]
    fn records_round_trip_and_refuse_junk() {
        for seed in 0..100u64 {
            let a = random_writes(seed, 13);
            let b = random_writes(seed + 1000, 13);
            let parts: Vec<Vec<&TreeWrites>> = vec![a.iter().collect(), b.iter().collect()];
            let rec = encode(13, &parts);
            let got = decode(13, &rec).unwrap();
            let want: Vec<Write<'_>> = [&a, &b]
                .iter()
                .flat_map(|part| {
                    part.iter()
                        .enumerate()
                        .flat_map(|(t, w)| w.iter().map(move |(k, v)| (t, &k[..], v.as_deref())))
                })
                .collect();
            assert_eq!(got, want, "seed {seed}");
            for cut in 0..rec.len() {
                let r = decode(13, &rec[..cut]);
                // A cut at a write boundary is a valid shorter record.
                if let Ok(w) = r {
                    assert!(w.len() <= want.len());
                    assert_eq!(&w[..], &want[..w.len()]);
                }
            }
        }
        assert!(decode(13, &[]).is_err());
        assert!(decode(13, &[VERSION, 12]).is_err());
        assert!(decode(13, &[VERSION + 1, 13]).is_err());
        assert!(decode(13, &[VERSION, 13, 13, 1, 0, 0, 0, 0]).is_err());
        assert!(decode(13, &[VERSION, 13, 0, 2, 0, 0, 0, 0]).is_err());
        assert!(decode(13, &[VERSION, 13, 0, 0, 9, 0, 0, 0]).is_err());
    }
}
