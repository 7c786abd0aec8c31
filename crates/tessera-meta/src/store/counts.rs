//! Entry counts of the state trees that grow with the data: live stripes,
//! the node -> shard index, the GC queue. Kept in memory as writes commit.
//!
//! The metrics loop and the durability query report them. They used to be
//! counted by scanning the trees: every meta node scanned the whole shard
//! index every 10 s, and the GC queue every second: CPU that grew with the
//! data while the cluster was idle (three idle meta nodes holding 89,000
//! shard entries: 41-43 ms/s with the scans, 30-31 ms/s without; about
//! 0.4 us per entry, seconds per scan per million objects).
//!
//! The counts are derived, never replicated: counted once from the trees
//! when the state machine opens (after the redo replay) or a snapshot
//! replaces the state, then moved by every committed write, from the old
//! value sled hands back. Only metrics and queries read them, never the
//! apply path, so a miscount could not make two nodes' states differ.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::dec;
use super::state_machine::GcItem;

/// A tree whose entries are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counted {
    /// `sm_stripes`: one entry per live stripe.
    Stripes,
    /// `sm_node_shards`: `node \0 stripe shard`, counted per node.
    NodeShards,
    /// `sm_gc`: GC items, and the stripes they hold.
    Gc,
}

impl Counted {
    /// The counted tree of that snapshot name, if it is one.
    pub(crate) fn of(name: &str) -> Option<Counted> {
        match name {
            "stripes" => Some(Counted::Stripes),
            "node_shards" => Some(Counted::NodeShards),
            "gc" => Some(Counted::Gc),
            _ => None,
        }
    }
}

/// The counts at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) stripes: u64,
    pub(crate) gc_items: u64,
    pub(crate) gc_stripes: u64,
    /// Shards in the index per node id (bytes of the id); no zero counts.
    pub(crate) node_shards: BTreeMap<Vec<u8>, u64>,
}

impl Tally {
    /// Counts the trees' entries (one scan of each).
    pub(crate) fn scan(
        stripes: &sled::Tree,
        node_shards: &sled::Tree,
        gc: &sled::Tree,
    ) -> Result<Tally, sled::Error> {
        let mut t = Tally::default();
        for (tree, counted) in [
            (stripes, Counted::Stripes),
            (node_shards, Counted::NodeShards),
            (gc, Counted::Gc),
        ] {
            for entry in tree.iter() {
                let (k, v) = entry?;
                t.record(counted, &k, None, Some(&v));
            }
        }
        Ok(t)
    }

    /// Moves the counts by one write: `key` held `old` and now holds `new`
    /// (`None`: absent).
    pub(crate) fn record(
        &mut self,
        tree: Counted,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) {
        let (was, is) = (u64::from(old.is_some()), u64::from(new.is_some()));
        if was == is && tree != Counted::Gc {
            return;
        }
        match tree {
            Counted::Stripes => self.stripes = (self.stripes + is).saturating_sub(was),
            Counted::NodeShards => {
                let node = &key[..key.iter().position(|b| *b == 0).unwrap_or(key.len())];
                // The node's id is copied only the first time it is counted.
                match self.node_shards.get_mut(node) {
                    Some(n) => {
                        *n = (*n + is).saturating_sub(was);
                        if *n == 0 {
                            self.node_shards.remove(node);
                        }
                    }
                    None if is > was => {
                        self.node_shards.insert(node.to_vec(), 1);
                    }
                    None => {}
                }
            }
            Counted::Gc => {
                self.gc_items = (self.gc_items + is).saturating_sub(was);
                self.gc_stripes =
                    (self.gc_stripes + gc_stripes(new)).saturating_sub(gc_stripes(old));
            }
        }
    }
}

/// Stripes held by a GC item's value (0 for none, or one that does not
/// decode: a count is not worth refusing a write over).
fn gc_stripes(v: Option<&[u8]>) -> u64 {
    v.and_then(|v| dec::<GcItem>(v).ok())
        .map_or(0, |item| item.stripes.len() as u64)
}

/// The live counts, shared by every handle on the trees.
#[derive(Debug, Default)]
pub(crate) struct Counts(Mutex<Tally>);

impl Counts {
    /// A copy of the counts now.
    pub(crate) fn get(&self) -> Tally {
        self.lock().clone()
    }

    /// Replaces the counts (a recount).
    pub(crate) fn set(&self, t: Tally) {
        *self.lock() = t;
    }

    pub(crate) fn record(&self, tree: Counted, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) {
        self.lock().record(tree, key, old, new);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        // A panic while counting leaves numbers, not broken invariants.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
