//! Buckets, access keys and object manifests: what the meta state machine
//! stores. Manifests are versioned (`layout`) so versioning, object lock
//! and lifecycle can add fields later; where the bytes live is a tagged
//! enum ([`ObjectData`]) so small-object packing can be added as a variant.

use crate::{NodeId, StripeId, UnixMillis};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The erasure code of a stripe. `codec` names the implementation
/// (`tessera-erasure` maps ids to codecs) so stripes written by an older
/// codec stay readable after the default changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageClass {
    /// Data shards per stripe.
    pub k: u8,
    /// Parity shards per stripe.
    pub m: u8,
    /// Bytes per shard of a full stripe (a stripe holds k * shard_size
    /// bytes of object data; the last stripe of a part is shorter).
    pub shard_size: u32,
    /// Codec id (see `tessera_erasure::CodecId`).
    pub codec: u8,
}

impl StorageClass {
    /// RS(4,2), 1 MiB shards: the `tessera dev` default.
    pub const fn rs(k: u8, m: u8, shard_size: u32) -> Self {
        StorageClass {
            k,
            m,
            shard_size,
            codec: 1,
        }
    }
    pub fn total_shards(&self) -> usize {
        self.k as usize + self.m as usize
    }
    pub fn stripe_data_size(&self) -> u64 {
        self.k as u64 * self.shard_size as u64
    }
}

/// One shard of a stripe: where it is and what it must hash to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// 0..k are data shards, k..k+m parity.
    pub index: u8,
    pub node: NodeId,
    pub blake3: [u8; 32],
}

/// A stripe: `len` bytes of object data coded into k + m shards of
/// `shard_len` bytes each. Shards that could not be written (a write that
/// met quorum without all k + m nodes) are absent from `shards`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stripe {
    pub id: StripeId,
    /// Object bytes in this stripe.
    pub len: u64,
    /// Bytes per shard (ceil(len / k), padded).
    pub shard_len: u32,
    pub class: StorageClass,
    pub shards: Vec<ShardEntry>,
}

impl Stripe {
    pub fn shard(&self, index: u8) -> Option<&ShardEntry> {
        self.shards.iter().find(|s| s.index == index)
    }
}

/// A part of an object (a plain PUT has exactly one, number 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub number: u32,
    pub size: u64,
    /// Hex MD5 of the part's bytes.
    pub etag: String,
    /// Checksums of the part's bytes by algorithm name (base64): the
    /// default CRC64NVME and the upload's or client's algorithm, if any
    /// (what multipart COMPOSITE and FULL_OBJECT checksums are made of).
    pub checksums: BTreeMap<String, String>,
    pub stripes: Vec<Stripe>,
}

/// Where an object's bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectData {
    /// Small objects live in the manifest itself (replicated by Raft).
    Inline(Bytes),
    /// Erasure-coded stripes on storage nodes.
    Parts(Vec<Part>),
}

/// Current manifest layout version.
pub const MANIFEST_LAYOUT: u16 = 1;

/// Where an object's tag set (canonical, URL-encoded `k1=v1&k2=v2`) lives
/// in [`ObjectManifest::headers`]; never sent back as a response header.
pub const TAGGING_HEADER: &str = "x-amz-tagging";

/// Everything about one object version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectManifest {
    pub layout: u16,
    pub bucket: String,
    pub key: String,
    /// Unique per write; "null" semantics come with versioning.
    pub version_id: String,
    pub size: u64,
    /// The S3 ETag without quotes (hex MD5 for a single PUT).
    pub etag: String,
    pub content_type: Option<String>,
    /// Other standard headers kept verbatim (content-encoding,
    /// content-disposition, cache-control, expires, content-language).
    pub headers: BTreeMap<String, String>,
    /// `x-amz-meta-*` without the prefix, lower-cased names.
    pub user_metadata: BTreeMap<String, String>,
    /// Checksums by algorithm name (e.g. "CRC64NVME" -> base64): always the
    /// full-object CRC64NVME, and the algorithm the client asked for; a
    /// composite multipart value ends in `-N`.
    pub checksums: BTreeMap<String, String>,
    pub created: UnixMillis,
    pub data: ObjectData,
}

impl ObjectManifest {
    /// All stripes of the object, in order.
    pub fn stripes(&self) -> impl Iterator<Item = &Stripe> {
        let parts: &[Part] = match &self.data {
            ObjectData::Inline(_) => &[],
            ObjectData::Parts(p) => p,
        };
        parts.iter().flat_map(|p| p.stripes.iter())
    }
}

/// A bucket. Owned by the access key that created it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub name: String,
    pub owner: String,
    pub created: UnixMillis,
}

/// An S3 access key. The secret is needed in clear to check SigV4 HMACs,
/// so it lives in the replicated state; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
    pub name: String,
    pub created: UnixMillis,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl AccessKey {
    /// A fresh key pair: `TK` + 18 upper-case alphanumerics, and a 40-char
    /// secret, the shapes AWS tools expect.
    pub fn generate(name: &str, now: UnixMillis) -> Self {
        use rand::Rng;
        const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        const ALL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut rng = rand::rngs::OsRng;
        let id: String = (0..18)
            .map(|_| UPPER[rng.gen_range(0..UPPER.len())] as char)
            .collect();
        let secret: String = (0..40)
            .map(|_| ALL[rng.gen_range(0..ALL.len())] as char)
            .collect();
        AccessKey {
            id: format!("TK{id}"),
            secret,
            name: name.to_string(),
            created: now,
        }
    }
}
