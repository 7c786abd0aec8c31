//! Openraft's storage conformance suite against the file log store and
//! the sled state machine; every case gets a fresh data directory.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tessera_meta::store::{open_db, LogStore, StateMachineStore};
use tessera_meta::{RaftNodeId, TypeConfig};

struct DirBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for DirBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<RaftNodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .expect("open sled");
        let (log, sm) = open_db(db, dir.path()).expect("open stores");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(DirBuilder) {
        panic!("storage suite failed: {e}");
    }
}
