//! The versioned bincode encoding of meta RPC payloads, Raft entries and
//! sled values (`tessera_types::codec::decode`): meta nodes decode request
//! envelopes from the network, and values from disk. Properties: never
//! panics, never allocates without bound (libFuzzer's -rss_limit_mb and
//! -malloc_limit_mb catch that); a decoded value re-encodes and decodes to
//! the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_types::codec::{decode, encode};
use tessera_types::manifest::ObjectManifest;
use tessera_types::meta::{MetaCommand, MetaQuery, QueryReply};

fn stable<T: serde::Serialize + serde::de::DeserializeOwned>(data: &[u8]) {
    if let Ok(v) = decode::<T>(data) {
        let bytes = encode(&v);
        let back: T = decode(&bytes).expect("re-decoding an encoded value");
        assert_eq!(encode(&back), bytes, "encoding not stable");
    }
}

fuzz_target!(|data: &[u8]| {
    stable::<MetaCommand>(data);
    stable::<MetaQuery>(data);
    stable::<QueryReply>(data);
    stable::<ObjectManifest>(data);
    if let Ok(m) = decode::<ObjectManifest>(data) {
        assert_eq!(decode::<ObjectManifest>(&encode(&m)).ok(), Some(m));
    }
});
