//! A state machine on a temporary sled database, fed entries by hand.

#![allow(dead_code)]

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use tessera_meta::store::{open_db, query::query, StateMachineStore};
use tessera_meta::TypeConfig;
use tessera_types::meta::{MetaCommand, MetaQuery, MetaReply, QueryReply};

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub sm: StateMachineStore,
    pub index: u64,
}

pub fn open(dir: &std::path::Path) -> StateMachineStore {
    let db = sled::Config::new().path(dir).open().unwrap();
    open_db(db, dir).unwrap().1
}

impl Harness {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sm = open(dir.path());
        Harness { dir, sm, index: 0 }
    }

    /// Applies one command as the next log entry.
    pub async fn cmd(&mut self, c: MetaCommand) -> MetaReply {
        self.index += 1;
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(c),
        };
        let mut r = self.sm.apply(vec![entry]).await.unwrap();
        r.pop().unwrap()
    }

    pub fn q(&self, q: MetaQuery) -> QueryReply {
        query(&self.sm.trees(), &q).unwrap()
    }
}
