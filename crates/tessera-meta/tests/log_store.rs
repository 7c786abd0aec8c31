//! The Raft log in files (`store/log.rs`, `store/logfile.rs`): what a
//! reopen keeps, what a crash mid-write leaves, what damage it refuses,
//! segments, purge, truncate, and the import of a log kept in sled.

use std::path::{Path, PathBuf};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use tessera_meta::store::{LogOptions, LogStore};
use tessera_meta::{MetaNodeError, TypeConfig};
use tessera_types::codec;
use tessera_types::meta::MetaCommand;

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// An entry whose payload names its index and term, `pad` bytes long.
fn entry(term: u64, index: u64, pad: usize) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(MetaCommand::DeleteBucket {
            name: format!("{index}-{term}-{}", "x".repeat(pad)),
        }),
    }
}

/// Checks that `got` are the entries `indexes` of `term` written by
/// [`entry`].
fn check(got: &[Entry<TypeConfig>], indexes: std::ops::RangeInclusive<u64>, term: u64) {
    let want: Vec<u64> = indexes.collect();
    let got_idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(got_idx, want);
    for e in got {
        assert_eq!(e.log_id, log_id(term, e.log_id.index));
        match &e.payload {
            EntryPayload::Normal(MetaCommand::DeleteBucket { name }) => {
                assert!(
                    name.starts_with(&format!("{}-{term}-", e.log_id.index)),
                    "payload of {}",
                    e.log_id.index
                );
            }
            other => panic!("unexpected payload {other:?}"),
        }
    }
}

struct Node {
    dir: tempfile::TempDir,
    db: sled::Db,
    opts: LogOptions,
}

impl Node {
    fn new(opts: LogOptions) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        Node { dir, db, opts }
    }

    fn open(&self) -> Result<LogStore, MetaNodeError> {
        LogStore::open_with(&self.db, self.dir.path(), self.opts)
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("raft-log")
    }

    /// Segment files, oldest first.
    fn segments(&self) -> Vec<PathBuf> {
        segments(&self.log_dir())
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// The index a segment file is named after (its first entry).
fn first_index(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// Small segments (many rolls), a small cache (reads from files) and a
/// little preallocation (each segment is cut back when the next starts).
fn small() -> LogOptions {
    LogOptions {
        segment_bytes: 2048,
        cache_bytes: 512,
        preallocate: 512,
    }
}

/// The two ways a last segment ends: right after its last batch, or in
/// zeros written ahead of it.
fn tails() -> [LogOptions; 2] {
    [
        LogOptions {
            preallocate: 0,
            ..LogOptions::default()
        },
        LogOptions::default(),
    ]
}

/// Where the batches of segment `path` end. Every entry [`entry`] writes
/// ends in a non-zero byte, so that is after the last non-zero byte.
fn data_end(path: &Path) -> u64 {
    let buf = std::fs::read(path).unwrap();
    buf.iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// Appends `indexes` of `term`, `per_batch` entries per append.
async fn append(
    store: &mut LogStore,
    indexes: std::ops::RangeInclusive<u64>,
    term: u64,
    per_batch: usize,
) {
    let all: Vec<u64> = indexes.collect();
    for chunk in all.chunks(per_batch) {
        store
            .blocking_append(chunk.iter().map(|&i| entry(term, i, 40)))
            .await
            .unwrap();
    }
}

async fn all(store: &mut LogStore) -> Vec<Entry<TypeConfig>> {
    store.try_get_log_entries(..).await.unwrap()
}

#[tokio::test]
async fn reopen_keeps_entries_vote_purge_point_and_committed() {
    let node = Node::new(small());
    {
        let mut s = node.open().unwrap();
        append(&mut s, 1..=100, 3, 7).await;
        s.save_vote(&Vote::new(3, 1)).await.unwrap();
        s.purge(log_id(3, 10)).await.unwrap();
        s.save_committed(Some(log_id(3, 90))).await.unwrap();
        // The committed hint is written along with the next write.
        append(&mut s, 101..=101, 3, 1).await;
    }
    let mut s = node.open().unwrap();
    check(&all(&mut s).await, 11..=101, 3);
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(3, 10)));
    assert_eq!(st.last_log_id, Some(log_id(3, 101)));
    assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    assert_eq!(s.read_committed().await.unwrap(), Some(log_id(3, 90)));
    // Reads through a reader and with every kind of bound.
    let mut r = s.get_log_reader().await;
    check(&r.try_get_log_entries(20..30).await.unwrap(), 20..=29, 3);
    check(&r.try_get_log_entries(20..=30).await.unwrap(), 20..=30, 3);
    check(&r.try_get_log_entries(..=12).await.unwrap(), 11..=12, 3);
    check(&r.try_get_log_entries(95..).await.unwrap(), 95..=101, 3);
    assert!(r.try_get_log_entries(30..30).await.unwrap().is_empty());
    let (from, to) = (30, 20);
    assert!(r.try_get_log_entries(from..to).await.unwrap().is_empty());
    assert!(r.try_get_log_entries(102..).await.unwrap().is_empty());
    assert!(r.try_get_log_entries(..=10).await.unwrap().is_empty());
}

#[tokio::test]
async fn vote_is_durable_across_reopen() {
    let node = Node::new(LogOptions::default());
    {
        let mut s = node.open().unwrap();
        assert_eq!(s.read_vote().await.unwrap(), None);
        s.save_vote(&Vote::new(1, 2)).await.unwrap();
    }
    {
        let mut s = node.open().unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(1, 2)));
        let mut v = Vote::new(2, 1);
        v.commit();
        s.save_vote(&v).await.unwrap();
    }
    let mut s = node.open().unwrap();
    let mut want = Vote::new(2, 1);
    want.commit();
    assert_eq!(s.read_vote().await.unwrap(), Some(want));
    // Replaced by rename: no temp file is left behind.
    let names: Vec<String> = std::fs::read_dir(node.log_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_appends_continue() {
    for opts in tails() {
        a_torn_tail_is_cut(opts).await;
    }
}

async fn a_torn_tail_is_cut(opts: LogOptions) {
    let node = Node::new(opts);
    {
        let mut s = node.open().unwrap();
        append(&mut s, 1..=20, 1, 4).await;
    }
    // A crash in the middle of writing the last batch (17..=20).
    let seg = node.segments().pop().unwrap();
    let len = data_end(&seg);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 30).unwrap();
    drop(f);
    {
        let mut s = node.open().unwrap();
        check(&all(&mut s).await, 1..=16, 1);
        assert_eq!(
            s.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 16))
        );
        append(&mut s, 17..=24, 2, 3).await;
    }
    // Garbage after the last batch (a batch that never got its header out,
    // zeros the file system appended): cut too.
    {
        use std::io::Write;
        let seg = node.segments().pop().unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0u8; 100]).unwrap();
        f.write_all(b"TRLB garbage that is not a batch").unwrap();
    }
    let mut s = node.open().unwrap();
    let got = all(&mut s).await;
    check(&got[..16], 1..=16, 1);
    check(&got[16..], 17..=24, 2);
    append(&mut s, 25..=25, 2, 1).await;
    drop(s);
    let mut s = node.open().unwrap();
    assert_eq!(all(&mut s).await.len(), 25);
}

/// Flips one byte at `at` of `path`.
fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

#[tokio::test]
async fn a_flipped_byte_before_valid_batches_refuses_to_open() {
    for opts in tails() {
        a_flipped_byte_refuses(opts).await;
    }
}

async fn a_flipped_byte_refuses(opts: LogOptions) {
    let node = Node::new(opts);
    {
        let mut s = node.open().unwrap();
        append(&mut s, 1..=30, 1, 5).await;
    }
    let seg = node.segments().pop().unwrap();
    let len = data_end(&seg);
    flip(&seg, len / 3);
    match node.open() {
        Err(MetaNodeError::Corrupt { what, message }) => {
            assert_eq!(what, "raft log");
            assert!(message.contains("followed by a valid batch"), "{message}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a damaged log"),
    }
    // Nothing was cut: flipping the byte back opens it whole.
    flip(&seg, len / 3);
    let mut s = node.open().unwrap();
    check(&all(&mut s).await, 1..=30, 1);
}

#[tokio::test]
async fn damage_in_a_last_batch_known_committed_refuses_to_open() {
    for opts in tails() {
        damage_known_committed_refuses(opts).await;
    }
}

async fn damage_known_committed_refuses(opts: LogOptions) {
    let node = Node::new(opts);
    {
        let mut s = node.open().unwrap();
        append(&mut s, 1..=20, 1, 4).await;
        s.save_committed(Some(log_id(1, 20))).await.unwrap();
        // The hint goes out with the next write (here, a vote).
        s.save_vote(&Vote::new(1, 1)).await.unwrap();
    }
    // The last batch (17..=20) is damaged, nothing follows it: it looks
    // torn, but the committed hint says it had been synced.
    let seg = node.segments().pop().unwrap();
    let len = data_end(&seg);
    flip(&seg, len - 3);
    match node.open() {
        Err(MetaNodeError::Corrupt { message, .. }) => {
            assert!(message.contains("were synced"), "{message}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("cut a committed batch as torn"),
    }
    flip(&seg, len - 3);
    let mut s = node.open().unwrap();
    check(&all(&mut s).await, 1..=20, 1);
}

#[tokio::test]
async fn damage_in_an_older_segment_refuses_to_open() {
    let node = Node::new(small());
    {
        let mut s = node.open().unwrap();
        append(&mut s, 1..=100, 1, 3).await;
    }
    let segs = node.segments();
    assert!(segs.len() > 2, "{segs:?}");
    // The last batch of an older segment: nothing valid follows it in its
    // own file, but later segments do.
    let len = std::fs::metadata(&segs[0]).unwrap().len();
    flip(&segs[0], len - 3);
    assert!(matches!(node.open(), Err(MetaNodeError::Corrupt { .. })));
}

#[tokio::test]
async fn segments_roll_and_purge_removes_whole_old_ones() {
    let node = Node::new(small());
    let mut s = node.open().unwrap();
    append(&mut s, 1..=200, 1, 2).await;
    let before = node.segments();
    assert!(before.len() > 5, "{before:?}");
    check(&all(&mut s).await, 1..=200, 1);

    s.purge(log_id(1, 150)).await.unwrap();
    let after = node.segments();
    assert!(after.len() < before.len());
    // Each remaining segment is named by its first index; only the first
    // may start at or below the purge point.
    let firsts: Vec<u64> = after.iter().map(|p| first_index(p)).collect();
    assert!(firsts[0] <= 151, "{firsts:?}");
    assert!(firsts[1..].iter().all(|&f| f > 151), "{firsts:?}");

    check(&all(&mut s).await, 151..=200, 1);
    check(
        &s.try_get_log_entries(100..=160).await.unwrap(),
        151..=160,
        1,
    );
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 150)));
    assert_eq!(st.last_log_id, Some(log_id(1, 200)));
    append(&mut s, 201..=210, 1, 4).await;
    drop(s);

    let mut s = node.open().unwrap();
    check(&all(&mut s).await, 151..=210, 1);
    // Purging everything: no entries, the last log id is the purge point,
    // appends go on after it.
    s.purge(log_id(1, 210)).await.unwrap();
    assert!(node.segments().is_empty());
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id, Some(log_id(1, 210)));
    assert!(all(&mut s).await.is_empty());
    append(&mut s, 211..=215, 2, 5).await;
    drop(s);
    let mut s = node.open().unwrap();
    check(&all(&mut s).await, 211..=215, 2);
}

#[tokio::test]
async fn appends_overwrite_zeros_written_ahead_and_only_the_last_segment_has_them() {
    // One segment: the file runs ahead of its batches, a reopen takes the
    // zeros for the end of the log (nothing cut), appends go on over them.
    let node = Node::new(LogOptions::default());
    {
        let mut s = node.open().unwrap();
        append(&mut s, 1..=20, 1, 4).await;
    }
    let seg = node.segments().pop().unwrap();
    let (end, len) = (data_end(&seg), std::fs::metadata(&seg).unwrap().len());
    assert!(
        len >= end + LogOptions::default().preallocate,
        "{len} {end}"
    );
    {
        let mut s = node.open().unwrap();
        check(&all(&mut s).await, 1..=20, 1);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len, "zeros cut");
        append(&mut s, 21..=30, 1, 5).await;
    }
    // Appended within the zeros: the file did not grow.
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
    assert!(data_end(&seg) > end);
    let mut s = node.open().unwrap();
    check(&all(&mut s).await, 1..=30, 1);
    drop(s);

    // Many segments: each is cut back to its batches when the next one
    // starts, so older segments end in their last entry.
    let node = Node::new(small());
    let mut s = node.open().unwrap();
    append(&mut s, 1..=99, 1, 3).await;
    let segs = node.segments();
    assert!(segs.len() > 2, "{segs:?}");
    for seg in &segs[..segs.len() - 1] {
        let len = std::fs::metadata(seg).unwrap().len();
        assert_eq!(data_end(seg), len, "{} ends in zeros", seg.display());
    }
    let last = segs.last().unwrap();
    assert!(std::fs::metadata(last).unwrap().len() > data_end(last));
    // A cut inside the last batch (97..=99): its marker goes right after
    // that batch, not after the zeros.
    s.truncate(log_id(1, 98)).await.unwrap();
    append(&mut s, 98..=120, 2, 4).await;
    drop(s);
    let mut s = node.open().unwrap();
    let got = all(&mut s).await;
    check(&got[..97], 1..=97, 1);
    check(&got[97..], 98..=120, 2);
}

#[tokio::test]
async fn a_purge_interrupted_before_removing_files_is_finished_at_open() {
    let node = Node::new(small());
    {
        let mut s = node.open().unwrap();
        append(&mut s, 1..=100, 1, 2).await;
    }
    let segs = node.segments();
    // Record a purge point as `purge` does first, by purging in a copy
    // and taking its meta file: the segment files all stay.
    let copy = Node::new(small());
    {
        let mut s = copy.open().unwrap();
        append(&mut s, 1..=100, 1, 2).await;
        s.purge(log_id(1, 60)).await.unwrap();
    }
    std::fs::copy(copy.log_dir().join("meta"), node.log_dir().join("meta")).unwrap();
    let mut s = node.open().unwrap();
    check(&all(&mut s).await, 61..=100, 1);
    assert!(node.segments().len() < segs.len());
    assert_eq!(
        s.get_log_state().await.unwrap().last_purged_log_id,
        Some(log_id(1, 60))
    );
}

#[tokio::test]
async fn truncate_across_segments() {
    let node = Node::new(small());
    let mut s = node.open().unwrap();
    append(&mut s, 1..=200, 1, 3).await;
    let before = node.segments().len();
    // 50 is in the middle of the batch 49..=51: the file is cut after the
    // batch and a truncation marker follows.
    s.truncate(log_id(1, 50)).await.unwrap();
    assert!(node.segments().len() < before);
    check(&all(&mut s).await, 1..=49, 1);
    drop(s);
    let mut s = node.open().unwrap();
    check(&all(&mut s).await, 1..=49, 1);
    assert_eq!(
        s.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 49))
    );
    // A new leader's entries from 50 on.
    append(&mut s, 50..=80, 2, 4).await;
    drop(s);
    let mut s = node.open().unwrap();
    let got = all(&mut s).await;
    check(&got[..49], 1..=49, 1);
    check(&got[49..], 50..=80, 2);
    // Truncating at the first entry of a segment removes the file.
    let first_of_last = first_index(node.segments().last().unwrap());
    let n = node.segments().len();
    s.truncate(log_id(2, first_of_last)).await.unwrap();
    assert_eq!(node.segments().len(), n - 1);
    assert_eq!(all(&mut s).await.len() as u64, first_of_last - 1);
    // Truncating everything.
    s.truncate(log_id(1, 1)).await.unwrap();
    assert!(all(&mut s).await.is_empty());
    assert_eq!(s.get_log_state().await.unwrap().last_log_id, None);
    append(&mut s, 1..=3, 3, 3).await;
    drop(s);
    let mut s = node.open().unwrap();
    check(&all(&mut s).await, 1..=3, 3);
}

#[tokio::test]
async fn truncating_in_the_last_batch_of_a_segment_keeps_what_is_before_it() {
    // A follower drops a conflicting tail that starts inside the last
    // batch of one segment and goes on in the next: the entries before
    // the cut stay, in the files too.
    let node = Node::new(small());
    let mut s = node.open().unwrap();
    append(&mut s, 1..=100, 1, 3).await;
    let segs = node.segments();
    assert!(segs.len() > 2, "{segs:?}");
    let next = first_index(&segs[2]);
    // Batches are 1..=3, 4..=6, ...: `next - 1` ends a batch, so the cut
    // at it is inside that batch.
    s.truncate(log_id(1, next - 1)).await.unwrap();
    check(&all(&mut s).await, 1..=next - 2, 1);
    append(&mut s, next - 1..=next + 20, 2, 4).await;
    drop(s);
    let mut s = node.open().unwrap();
    let got = all(&mut s).await;
    let kept = (next - 2) as usize;
    check(&got[..kept], 1..=next - 2, 1);
    check(&got[kept..], next - 1..=next + 20, 2);
}

#[tokio::test]
async fn a_log_in_sled_trees_is_imported_once() {
    let node = Node::new(small());
    // What the sled log store wrote: big-endian index keys, codec values.
    {
        let log = node.db.open_tree("raft_log").unwrap();
        let meta = node.db.open_tree("raft_meta").unwrap();
        for i in 8..=120u64 {
            log.insert(i.to_be_bytes(), codec::encode(&entry(4, i, 40)))
                .unwrap();
        }
        meta.insert("vote", codec::encode(&Vote::<u64>::new(4, 1)))
            .unwrap();
        meta.insert("committed", codec::encode(&Some(log_id(4, 110))))
            .unwrap();
        meta.insert("last_purged", codec::encode(&log_id(4, 9)))
            .unwrap();
        node.db.flush().unwrap();
    }
    {
        let mut s = node.open().unwrap();
        check(&all(&mut s).await, 10..=120, 4);
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(4, 1)));
        assert_eq!(s.read_committed().await.unwrap(), Some(log_id(4, 110)));
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(4, 9)));
        assert_eq!(st.last_log_id, Some(log_id(4, 120)));
        let names: Vec<Vec<u8>> = node.db.tree_names().iter().map(|n| n.to_vec()).collect();
        assert!(!names.contains(&b"raft_log".to_vec()), "sled log left");
        assert!(!names.contains(&b"raft_meta".to_vec()), "sled meta left");
        append(&mut s, 121..=125, 5, 5).await;
    }
    // Reopening does not import again (the trees are gone; had a crash
    // left them, they would be dropped, not imported).
    node.db
        .open_tree("raft_log")
        .unwrap()
        .insert(1u64.to_be_bytes(), codec::encode(&entry(9, 1, 1)))
        .unwrap();
    let mut s = node.open().unwrap();
    let got = all(&mut s).await;
    check(&got[..111], 10..=120, 4);
    check(&got[111..], 121..=125, 5);
    assert!(!node
        .db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == b"raft_log"));
}

#[tokio::test]
async fn a_fresh_node_has_an_empty_log() {
    let node = Node::new(LogOptions::default());
    let mut s = node.open().unwrap();
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id, None);
    assert_eq!(st.last_purged_log_id, None);
    assert_eq!(s.read_vote().await.unwrap(), None);
    assert_eq!(s.read_committed().await.unwrap(), None);
    assert!(node.log_dir().is_dir());
    assert!(!node.dir.path().join("raft-log.tmp").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_consistent_entries_while_the_log_is_appended_truncated_and_purged() {
    let node = Node::new(small());
    let mut s = node.open().unwrap();
    append(&mut s, 1..=50, 1, 3).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut r = s.get_log_reader().await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let got = r.try_get_log_entries(..).await.unwrap();
                // Whatever the moment: increasing indexes, each payload
                // the one written with its log id.
                for w in got.windows(2) {
                    assert!(w[0].log_id.index < w[1].log_id.index);
                }
                for e in &got {
                    match &e.payload {
                        EntryPayload::Normal(MetaCommand::DeleteBucket { name }) => {
                            let want = format!("{}-{}-", e.log_id.index, e.log_id.leader_id.term);
                            assert!(name.starts_with(&want), "{name} for {:?}", e.log_id);
                        }
                        other => panic!("unexpected payload {other:?}"),
                    }
                }
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    let mut last = 50;
    for round in 0..30u64 {
        let term = round + 2;
        append(&mut s, last + 1..=last + 20, term, 4).await;
        last += 20;
        // Cut into the middle of what was just written, re-append.
        s.truncate(log_id(term, last - 7)).await.unwrap();
        append(&mut s, last - 7..=last, term + 100, 3).await;
        if round % 5 == 4 {
            s.purge(log_id(term + 100, last - 30)).await.unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    drop(s);
    let mut s = node.open().unwrap();
    let got = all(&mut s).await;
    // The last round purged up to last - 30.
    let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(idx, (last - 29..=last).collect::<Vec<_>>());
}
