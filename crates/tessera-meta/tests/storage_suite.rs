//! Openraft's storage conformance suite against the sled log store and
//! state machine; every case gets a fresh database in a temp dir.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tessera_meta::store::{open_db, LogStore, StateMachineStore};
use tessera_meta::{RaftNodeId, TypeConfig};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
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
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("storage suite failed: {e}");
    }
}
