//! Gateway configuration: a serde struct in kebab-case (every field has a
//! default, so `tessera dev` needs none) and its `validate()`.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tessera_proto::ClusterSecret;
use tessera_types::StorageClass;

use crate::GatewayError;

/// Gateway configuration (TOML, kebab-case).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct GatewayConfig {
    /// Meta node addresses (`host:port`).
    pub meta: Vec<String>,
    /// S3 region name clients sign for.
    pub region: String,
    /// Data shards per stripe.
    pub k: u8,
    /// Parity shards per stripe.
    pub m: u8,
    /// Bytes per shard of a full stripe.
    pub shard_size: u32,
    /// Objects up to this size are stored inline in the manifest. Must be
    /// smaller than one stripe (`k * shard_size`).
    pub inline_threshold: u64,
    /// Stripes being encoded or sent at once per request (bounds memory).
    pub stripes_in_flight: usize,
    /// Shards that must be durable for a write to succeed (default k + 1).
    pub write_quorum: Option<u8>,
    /// Stripe buffers held by all requests of this gateway together
    /// (writes and reads); a request waits for a free one. Bounds the
    /// gateway's data memory to about this many stripes (plus parity).
    pub max_buffered_stripes: usize,
    /// Stripes a GET reads ahead of the one being sent to the client.
    pub read_ahead_stripes: usize,
    /// Base domains for virtual-hosted-style requests: a Host header
    /// `bucket.<domain>` (any port) addresses `bucket`; any other host is
    /// path-style. A string or a list; empty = path-style only.
    #[serde(deserialize_with = "one_or_many")]
    pub s3_domain: Vec<String>,
    /// Largest object a single PutObject may upload, in bytes.
    pub max_object_size: u64,
    /// Time a client has to send a request's headers (slowloris guard).
    pub header_read_timeout_ms: u64,
    /// A request body that sends nothing for this long fails with
    /// RequestTimeout (slow-body guard; the upload's buffers are freed).
    pub body_idle_timeout_ms: u64,
    /// Most concurrent client connections; further ones wait to be accepted.
    pub max_connections: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    pub shutdown_grace_ms: u64,
    /// Timeout of one shard read before it counts as failed.
    pub shard_read_timeout_ms: u64,
    /// A data shard slower than this makes the reader fetch parity too
    /// (hedged read).
    pub hedge_after_ms: u64,
    /// How often the cached cluster map is refreshed from meta.
    pub cluster_refresh_ms: u64,
    /// How long a looked-up access key is cached.
    pub auth_cache_ttl_ms: u64,
    /// How long an unknown access key is remembered as unknown.
    pub auth_negative_ttl_ms: u64,
    /// Delay before the shards of a replaced or deleted object are deleted
    /// (reads that started before the change may still need them).
    pub gc_grace_ms: u64,
    /// Run the repair worker: lease stripes with lost, corrupt or
    /// misplaced shards from meta, rebuild and re-place them. Its rate,
    /// concurrency and pause switch are cluster-wide settings in meta
    /// (`tessera admin repair`), not keys here.
    pub repair_enabled: bool,
    /// How long a leased repair batch is reserved for this gateway; a
    /// stripe not finished by then may be leased by another gateway (the
    /// commit's compare-and-set keeps that safe).
    pub repair_lease_ms: u64,
    /// How often the repair worker reads the repair settings from meta, and
    /// how long it waits when the queue is empty, paused or meta is down.
    pub repair_poll_ms: u64,
    /// Run the GC worker: delete the shards of the meta GC queue once they
    /// are older than `gc-grace-ms`.
    pub gc_enabled: bool,
    /// Pause between two GC passes when the queue is drained.
    pub gc_interval_ms: u64,
    /// GC items (object versions or part sets) leased per pass.
    pub gc_batch: u32,
    /// Address of the admin HTTP port (`/metrics`, `/health/live`,
    /// `/health/ready`); unset = none.
    pub admin_listen: Option<String>,
    /// PEM certificate chain for HTTPS on the S3 port (with `tls-key`):
    /// when both are set the port speaks only HTTPS. Unset = plain HTTP.
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls-cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// The cluster secret that signs every call to meta and storage nodes
    /// (which refuse unsigned calls). `tessera gateway` requires it; never
    /// serialized.
    #[serde(skip_serializing)]
    pub cluster_secret: Option<ClusterSecret>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            meta: vec![],
            region: "us-east-1".into(),
            k: 4,
            m: 2,
            shard_size: 1 << 20,
            inline_threshold: 64 << 10,
            stripes_in_flight: 4,
            write_quorum: None,
            max_buffered_stripes: 64,
            read_ahead_stripes: 2,
            s3_domain: vec![],
            max_object_size: 5 << 30,
            header_read_timeout_ms: 10_000,
            body_idle_timeout_ms: 60_000,
            max_connections: 4096,
            shutdown_grace_ms: 10_000,
            shard_read_timeout_ms: 3_000,
            hedge_after_ms: 1_000,
            cluster_refresh_ms: 2_000,
            auth_cache_ttl_ms: 10_000,
            auth_negative_ttl_ms: 1_000,
            gc_grace_ms: 30_000,
            repair_enabled: true,
            repair_lease_ms: 60_000,
            repair_poll_ms: 3_000,
            gc_enabled: true,
            gc_interval_ms: 10_000,
            gc_batch: 64,
            admin_listen: None,
            tls_cert: None,
            tls_key: None,
            cluster_secret: None,
        }
    }
}

impl GatewayConfig {
    /// The storage class new objects are written with.
    pub fn storage_class(&self) -> StorageClass {
        StorageClass::rs(self.k, self.m, self.shard_size)
    }

    /// Shards that must be durable per stripe.
    pub fn quorum(&self) -> usize {
        let n = self.k as usize + self.m as usize;
        match self.write_quorum {
            Some(q) => q as usize,
            None => (self.k as usize + 1).min(n),
        }
    }

    /// Checks the values; every error names the offending key.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let err = |msg: String| Err(GatewayError::Config(msg));
        if self.meta.is_empty() {
            return err("meta: at least one meta address is required".into());
        }
        if self.region.is_empty() {
            return err("region must not be empty".into());
        }
        if let Err(e) = tessera_erasure::check_class(&self.storage_class()) {
            return err(format!("k/m/shard-size: {e}"));
        }
        let n = self.k as usize + self.m as usize;
        let q = self.quorum();
        if q < self.k as usize || q > n {
            return err(format!("write-quorum must be in {}..={n}, got {q}", self.k));
        }
        if self.inline_threshold >= self.storage_class().stripe_data_size() {
            return err("inline-threshold must be smaller than k * shard-size".into());
        }
        if self.stripes_in_flight == 0 || self.read_ahead_stripes == 0 {
            return err("stripes-in-flight and read-ahead-stripes must be at least 1".into());
        }
        if self.max_buffered_stripes < self.stripes_in_flight + 1 {
            return err("max-buffered-stripes must exceed stripes-in-flight".into());
        }
        if self.repair_lease_ms < 1_000 || self.repair_poll_ms == 0 {
            return err(
                "repair-lease-ms must be at least 1000 and repair-poll-ms at least 1".into(),
            );
        }
        if self.gc_interval_ms == 0 || self.gc_batch == 0 {
            return err("gc-interval-ms and gc-batch must be at least 1".into());
        }
        if self.max_connections == 0 {
            return err("max-connections must be at least 1".into());
        }
        for d in &self.s3_domain {
            let label_ok = |l: &str| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            };
            if !d.split('.').all(label_ok) {
                return err(format!(
                    "s3-domain: not a host name (no port, no scheme): {d:?}"
                ));
            }
        }
        crate::server::tls_config(self)?;
        Ok(())
    }

    pub(crate) fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

/// A string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_with_meta() {
        let mut c = GatewayConfig::default();
        assert!(c.validate().is_err(), "no meta address");
        c.meta = vec!["127.0.0.1:1".into()];
        c.validate().unwrap();
        assert_eq!(c.quorum(), 5);
        c.write_quorum = Some(3);
        assert!(c.validate().is_err());
        c.write_quorum = None;
        c.inline_threshold = 4 << 20;
        assert!(c.validate().is_err());
    }

    #[test]
    fn s3_domains() {
        let mut c = GatewayConfig {
            meta: vec!["127.0.0.1:1".into()],
            ..GatewayConfig::default()
        };
        for good in ["localhost", "s3.example.com", "s3-1.internal"] {
            c.s3_domain = vec![good.into()];
            c.validate().unwrap();
        }
        for bad in ["", "s3.example.com:9000", "http://x", ".x", "x..y", "a b"] {
            c.s3_domain = vec![bad.into()];
            assert!(c.validate().is_err(), "{bad:?}");
        }
    }
}
