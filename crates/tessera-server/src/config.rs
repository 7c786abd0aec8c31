//! Role settings: the service crates' config structs plus the listen
//! address, loaded from an optional TOML file, overridden by flags and
//! `TESSERA_*` variables (clap folds those two together), then validated.
//!
//! A role's TOML file holds `listen` and the keys of that role's config
//! struct (kebab-case) at the top level. Unknown keys are an error, so a
//! typo never silently falls back to a default.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};
use tessera_gateway::GatewayConfig;
use tessera_meta::MetaConfig;
use tessera_proto::auth::MISSING_SECRET_HELP;
use tessera_proto::ClusterSecret;
use tessera_storage::StorageConfig;

use crate::cli::{GatewayArgs, MetaArgs, SecretArgs, StorageArgs};

/// Environment variable holding the cluster secret itself.
pub const SECRET_ENV: &str = "TESSERA_CLUSTER_SECRET";

/// The cluster secret from, first match wins: --cluster-secret-file, a
/// secret set by the caller, $TESSERA_CLUSTER_SECRET, then `from_file`
/// (the config file's `cluster-secret`). Errors never include the value.
pub fn resolve_secret(
    args: &SecretArgs,
    from_file: Option<ClusterSecret>,
) -> Result<Option<ClusterSecret>, ConfigError> {
    if let Some(path) = &args.cluster_secret_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                "cluster-secret-file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        return ClusterSecret::new(&text)
            .map(Some)
            .map_err(|e| invalid("cluster-secret-file", e.to_string()));
    }
    if let Some(s) = &args.cluster_secret {
        return Ok(Some(s.clone()));
    }
    if let Some(text) = std::env::var_os(SECRET_ENV) {
        let text = text.to_string_lossy();
        return ClusterSecret::new(&text)
            .map(Some)
            .map_err(|e| invalid("cluster-secret", format!("${SECRET_ENV}: {e}")));
    }
    Ok(from_file)
}

fn require_secret(s: &Option<ClusterSecret>) -> Result<(), ConfigError> {
    match s {
        Some(_) => Ok(()),
        None => Err(invalid("cluster-secret", MISSING_SECRET_HELP)),
    }
}

/// Default listen address of a meta node.
pub const DEFAULT_META_LISTEN: &str = "127.0.0.1:7001";
/// Default listen address of a storage node.
pub const DEFAULT_STORAGE_LISTEN: &str = "127.0.0.1:7101";
/// Default listen address of a gateway (S3).
pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:9000";

/// Most shards a stripe may have (k + m).
pub const MAX_STRIPE_WIDTH: u32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: unknown key(s): {}", keys.join(", "))]
    UnknownKeys { path: PathBuf, keys: Vec<String> },
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The service crate's own `validate()` refused the config.
    #[error("invalid {role} configuration: {message}")]
    Rejected { role: &'static str, message: String },
}

fn rejected(role: &'static str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Rejected {
        role,
        message: e.to_string(),
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Settings of `tessera meta`.
#[derive(Clone, Debug)]
pub struct MetaSettings {
    pub listen: String,
    pub config: MetaConfig,
}

/// Settings of `tessera storage`.
#[derive(Clone, Debug)]
pub struct StorageSettings {
    pub listen: String,
    pub config: StorageConfig,
}

/// Settings of `tessera gateway`.
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    pub listen: String,
    pub config: GatewayConfig,
}

impl MetaSettings {
    /// File, then flags/env, then derived defaults, then validation.
    pub fn load(args: &MetaArgs) -> Result<Self, ConfigError> {
        let (listen, config) = load_file::<MetaConfig>(args.config.as_deref())?;
        let mut s = MetaSettings {
            listen: listen.unwrap_or_else(|| DEFAULT_META_LISTEN.to_string()),
            config,
        };
        let c = &mut s.config;
        if let Some(v) = &args.listen {
            s.listen = v.clone();
        }
        if let Some(v) = args.id {
            c.id = v;
        }
        if let Some(v) = &args.advertise {
            c.advertise = Some(v.clone());
        }
        if let Some(v) = &args.data_dir {
            c.data_dir = v.clone();
        }
        if !args.peers.is_empty() {
            c.peers.clear();
            for (id, addr) in &args.peers {
                if c.peers.insert(*id, addr.clone()).is_some() {
                    return Err(invalid("peers", format!("id {id} is listed twice")));
                }
            }
        }
        if let Some(v) = args.bootstrap {
            c.bootstrap = v;
        }
        if let Some(v) = args.suspect_after_ms {
            c.suspect_after_ms = v;
        }
        if let Some(v) = args.down_after_ms {
            c.down_after_ms = v;
        }
        if let Some(v) = args.snapshot_every {
            c.snapshot_every = v;
        }
        if let Some(v) = args.raft_heartbeat_ms {
            c.raft_heartbeat_ms = v;
        }
        if let Some(v) = args.election_timeout_ms {
            c.election_timeout_ms = v;
        }
        if let Some(v) = args.min_free_bytes {
            c.min_free_bytes = v;
        }
        c.cluster_secret = resolve_secret(&args.secret, c.cluster_secret.take())?;
        if let Some(v) = &args.admin_listen {
            c.admin_listen = Some(v.clone());
        }
        // A lone node needs no --peers: it is its own group.
        if c.peers.is_empty() {
            let me = c.advertise.clone().unwrap_or_else(|| s.listen.clone());
            c.peers.insert(c.id, me);
        }
        if c.advertise.is_none() {
            c.advertise = c.peers.get(&c.id).cloned();
        }
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        check_listen(&self.listen)?;
        if c.id == 0 {
            return Err(invalid("id", "must be at least 1"));
        }
        if c.peers.is_empty() {
            return Err(invalid("peers", "at least one member is required"));
        }
        let Some(own) = c.peers.get(&c.id) else {
            return Err(invalid(
                "peers",
                format!("must contain this node's id {}", c.id),
            ));
        };
        for (id, addr) in &c.peers {
            if *id == 0 {
                return Err(invalid("peers", "ids start at 1"));
            }
            check_addr("peers", addr)?;
            if is_wildcard(addr) {
                return Err(invalid(
                    "peers",
                    format!("{id}={addr}: peers need a reachable address, not a wildcard"),
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for addr in c.peers.values() {
            if !seen.insert(addr) {
                return Err(invalid("peers", format!("address {addr} is listed twice")));
            }
        }
        if let Some(adv) = &c.advertise {
            check_addr("advertise", adv)?;
            if adv != own {
                return Err(invalid(
                    "advertise",
                    format!("{adv} differs from this node's peer address {own}"),
                ));
            }
        }
        check_dir("data-dir", &c.data_dir)?;
        if c.suspect_after_ms == 0 {
            return Err(invalid("suspect-after-ms", "must be positive"));
        }
        if c.down_after_ms < c.suspect_after_ms {
            return Err(invalid(
                "down-after-ms",
                format!(
                    "{} is less than suspect-after-ms {}",
                    c.down_after_ms, c.suspect_after_ms
                ),
            ));
        }
        if c.snapshot_every == 0 {
            return Err(invalid("snapshot-every", "must be positive"));
        }
        if let Some(a) = &c.admin_listen {
            check_addr("admin-listen", a)?;
        }
        require_secret(&c.cluster_secret)?;
        c.validate().map_err(|e| rejected("meta", e))
    }
}

impl StorageSettings {
    /// File, then flags/env, then validation.
    pub fn load(args: &StorageArgs) -> Result<Self, ConfigError> {
        let (listen, config) = load_file::<StorageConfig>(args.config.as_deref())?;
        let mut s = StorageSettings {
            listen: listen.unwrap_or_else(|| DEFAULT_STORAGE_LISTEN.to_string()),
            config,
        };
        let c = &mut s.config;
        if let Some(v) = &args.listen {
            s.listen = v.clone();
        }
        if let Some(v) = &args.advertise {
            c.advertise = Some(v.clone());
        }
        if !args.data_dirs.is_empty() {
            c.data_dirs = args.data_dirs.clone();
        }
        if let Some(v) = &args.zone {
            c.zone = v.clone();
        }
        if let Some(v) = args.weight {
            c.weight = v;
        }
        if !args.meta.is_empty() {
            c.meta = args.meta.clone();
        }
        if let Some(v) = args.heartbeat_ms {
            c.heartbeat_ms = v;
        }
        if let Some(v) = args.max_shard_bytes {
            c.max_shard_bytes = v;
        }
        if let Some(v) = args.scrub_rate {
            c.scrub_rate = v;
        }
        if let Some(v) = args.scrub_period_ms {
            c.scrub_period_ms = v;
        }
        if let Some(v) = args.orphan_scan_interval_ms {
            c.orphan_scan_interval_ms = v;
        }
        if let Some(v) = args.orphan_safety_age_ms {
            c.orphan_safety_age_ms = v;
        }
        if let Some(v) = args.inventory_interval_ms {
            c.inventory_interval_ms = v;
        }
        if args.capacity_bytes.is_some() {
            c.capacity_bytes = args.capacity_bytes;
        }
        if let Some(v) = args.direct_io {
            c.direct_io = v;
        }
        c.cluster_secret = resolve_secret(&args.secret, c.cluster_secret.take())?;
        if let Some(v) = &args.admin_listen {
            c.admin_listen = Some(v.clone());
        }
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        check_listen(&self.listen)?;
        match &c.advertise {
            Some(adv) => {
                check_addr("advertise", adv)?;
                if is_wildcard(adv) {
                    return Err(invalid("advertise", "must be a reachable address"));
                }
            }
            None if is_wildcard(&self.listen) => {
                return Err(invalid(
                    "advertise",
                    format!(
                        "required when listening on the wildcard address {}",
                        self.listen
                    ),
                ));
            }
            None => {}
        }
        if c.data_dirs.is_empty() {
            return Err(invalid("data-dirs", "at least one directory is required"));
        }
        let mut seen = BTreeSet::new();
        for d in &c.data_dirs {
            check_dir("data-dirs", d)?;
            if !seen.insert(d) {
                return Err(invalid(
                    "data-dirs",
                    format!("{} is listed twice", d.display()),
                ));
            }
        }
        if c.zone.trim().is_empty() {
            return Err(invalid("zone", "must not be empty"));
        }
        if !(c.weight.is_finite() && c.weight > 0.0) {
            return Err(invalid(
                "weight",
                format!("{} is not a positive number", c.weight),
            ));
        }
        check_meta(&c.meta)?;
        if c.heartbeat_ms == 0 {
            return Err(invalid("heartbeat-ms", "must be positive"));
        }
        if let Some(a) = &c.admin_listen {
            check_addr("admin-listen", a)?;
        }
        require_secret(&c.cluster_secret)?;
        c.validate().map_err(|e| rejected("storage", e))
    }
}

impl GatewaySettings {
    /// File, then flags/env, then validation.
    pub fn load(args: &GatewayArgs) -> Result<Self, ConfigError> {
        let (listen, config) = load_file::<GatewayConfig>(args.config.as_deref())?;
        let mut s = GatewaySettings {
            listen: listen.unwrap_or_else(|| DEFAULT_GATEWAY_LISTEN.to_string()),
            config,
        };
        let c = &mut s.config;
        if let Some(v) = &args.listen {
            s.listen = v.clone();
        }
        if !args.meta.is_empty() {
            c.meta = args.meta.clone();
        }
        if let Some(v) = &args.region {
            c.region = v.clone();
        }
        if let Some(v) = args.k {
            c.k = v;
        }
        if let Some(v) = args.m {
            c.m = v;
        }
        if let Some(v) = args.shard_size {
            c.shard_size = v;
        }
        if let Some(v) = args.inline_threshold {
            c.inline_threshold = v;
        }
        if let Some(v) = args.stripes_in_flight {
            c.stripes_in_flight = v;
        }
        if let Some(v) = args.write_quorum {
            c.write_quorum = Some(v);
        }
        if let Some(v) = args.max_buffered_stripes {
            c.max_buffered_stripes = v;
        }
        if let Some(v) = args.max_object_size {
            c.max_object_size = v;
        }
        if let Some(v) = args.max_connections {
            c.max_connections = v;
        }
        if !args.s3_domain.is_empty() {
            c.s3_domain = args.s3_domain.clone();
        }
        if let Some(v) = &args.tls_cert {
            c.tls_cert = Some(v.clone());
        }
        if let Some(v) = &args.tls_key {
            c.tls_key = Some(v.clone());
        }
        c.cluster_secret = resolve_secret(&args.secret, c.cluster_secret.take())?;
        if let Some(v) = &args.admin_listen {
            c.admin_listen = Some(v.clone());
        }
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        check_listen(&self.listen)?;
        check_meta(&c.meta)?;
        check_erasure(c.k, c.m)?;
        if let Some(q) = c.write_quorum {
            let width = u32::from(c.k) + u32::from(c.m);
            if u32::from(q) < u32::from(c.k) || u32::from(q) > width {
                return Err(invalid(
                    "write-quorum",
                    format!("{q} is outside k..=k+m ({}..={width})", c.k),
                ));
            }
        }
        if c.region.trim().is_empty() {
            return Err(invalid("region", "must not be empty"));
        }
        if let Some(a) = &c.admin_listen {
            check_addr("admin-listen", a)?;
        }
        require_secret(&c.cluster_secret)?;
        // Sizes, buffers and timeouts: the gateway knows its limits best.
        c.validate().map_err(|e| rejected("gateway", e))
    }
}

/// The effective settings of a role as a TOML config file (`listen` plus
/// the role's keys), which `--config` reads back unchanged.
pub fn render_toml<C: Serialize>(listen: &str, config: &C) -> Result<String, ConfigError> {
    let fail = |message: String| ConfigError::Parse {
        path: PathBuf::from("<effective config>"),
        message,
    };
    // Through JSON: TOML has no null (unset options are left out) and no
    // integer keys (`[peers]` keys become strings, as in a file).
    let mut value = serde_json::to_value(config).map_err(|e| fail(e.to_string()))?;
    if let serde_json::Value::Object(map) = &mut value {
        map.retain(|_, v| !v.is_null());
        map.insert("listen".into(), serde_json::Value::String(listen.into()));
    }
    toml::to_string(&value).map_err(|e| fail(e.to_string()))
}

/// k data + m parity shards: both at least 1, at most 32 in all.
pub fn check_erasure(k: u8, m: u8) -> Result<(), ConfigError> {
    if k == 0 {
        return Err(invalid("k", "must be at least 1"));
    }
    if m == 0 {
        return Err(invalid("m", "must be at least 1"));
    }
    if u32::from(k) + u32::from(m) > MAX_STRIPE_WIDTH {
        return Err(invalid(
            "m",
            format!(
                "k + m = {} exceeds {MAX_STRIPE_WIDTH}",
                u32::from(k) + u32::from(m)
            ),
        ));
    }
    Ok(())
}

/// Reads `path` (if any) into `listen` and the role config `C`.
fn load_file<C>(path: Option<&Path>) -> Result<(Option<String>, C), ConfigError>
where
    C: DeserializeOwned + Serialize + Default,
{
    let Some(path) = path else {
        return Ok((None, C::default()));
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(path, &text)
}

/// Parses a role config file's text; `path` is for messages.
pub fn parse_toml<C>(path: &Path, text: &str) -> Result<(Option<String>, C), ConfigError>
where
    C: DeserializeOwned + Serialize + Default,
{
    let parse_err = |message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
    let listen = match table.remove("listen") {
        None => None,
        Some(toml::Value::String(s)) => Some(s),
        Some(other) => {
            return Err(parse_err(format!(
                "`listen` must be a string, found {}",
                other.type_str()
            )))
        }
    };
    let keys: Vec<String> = table.keys().cloned().collect();
    // TOML tables only have string keys, so maps keyed by numbers (the
    // meta `[peers]` table) go through serde_json, whose map keys parse
    // into integers. TOML's own error is kept for its line numbers.
    let config: C = match toml::Value::Table(table.clone()).try_into::<C>() {
        Ok(c) => c,
        Err(toml_err) => serde_json::to_value(&table)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| parse_err(toml_err.message().to_string()))?,
    };
    // Every key that was read shows up when the struct is written back;
    // whatever does not was ignored by serde, i.e. is unknown.
    let mut known: BTreeSet<String> = match serde_json::to_value(&config) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => BTreeSet::new(),
    };
    // Read but never written back.
    known.insert("cluster-secret".into());
    let unknown: Vec<String> = keys.into_iter().filter(|k| !known.contains(k)).collect();
    if !unknown.is_empty() {
        return Err(ConfigError::UnknownKeys {
            path: path.to_path_buf(),
            keys: unknown,
        });
    }
    Ok((listen, config))
}

fn check_listen(listen: &str) -> Result<(), ConfigError> {
    check_addr("listen", listen)
}

/// `host:port` with a numeric port (host may be a name, IPv4 or `[IPv6]`).
fn check_addr(field: &'static str, addr: &str) -> Result<(), ConfigError> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let ok = addr
        .rsplit_once(':')
        .map(|(host, port)| !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format!("`{addr}` is not HOST:PORT")))
    }
}

fn is_wildcard(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .map(|a| a.ip().is_unspecified())
        .unwrap_or(false)
}

fn check_meta(meta: &[String]) -> Result<(), ConfigError> {
    if meta.is_empty() {
        return Err(invalid(
            "meta",
            "at least one meta node address is required (--meta HOST:PORT,...)",
        ));
    }
    for a in meta {
        check_addr("meta", a)?;
    }
    Ok(())
}

fn check_dir(field: &'static str, dir: &Path) -> Result<(), ConfigError> {
    if dir.as_os_str().is_empty() {
        return Err(invalid(field, "empty path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("test.toml")
    }

    #[test]
    fn meta_file_with_peers_parses() {
        let text = r#"
            listen = "0.0.0.0:7001"
            id = 2
            data-dir = "/var/lib/tessera/meta"
            down-after-ms = 60000
            [peers]
            1 = "10.0.0.1:7001"
            2 = "10.0.0.2:7001"
            3 = "10.0.0.3:7001"
        "#;
        let (listen, c) = parse_toml::<MetaConfig>(p(), text).unwrap();
        assert_eq!(listen.as_deref(), Some("0.0.0.0:7001"));
        assert_eq!(c.id, 2);
        assert_eq!(c.peers.len(), 3);
        assert_eq!(c.peers.get(&2).map(String::as_str), Some("10.0.0.2:7001"));
        assert_eq!(c.down_after_ms, 60000);
        // Unset keys keep their defaults.
        assert_eq!(c.suspect_after_ms, MetaConfig::default().suspect_after_ms);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse_toml::<GatewayConfig>(p(), "regoin = \"eu\"\nk = 3\n").unwrap_err();
        match err {
            ConfigError::UnknownKeys { keys, .. } => assert_eq!(keys, vec!["regoin".to_string()]),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn optional_keys_are_known_when_set() {
        let (_, c) =
            parse_toml::<GatewayConfig>(p(), "write-quorum = 5\nmeta = [\"a:1\"]\n").unwrap();
        assert_eq!(c.write_quorum, Some(5));
        let (_, s) = parse_toml::<StorageConfig>(p(), "advertise = \"h:1\"\n").unwrap();
        assert_eq!(s.advertise.as_deref(), Some("h:1"));
    }

    #[test]
    fn wrong_types_are_parse_errors() {
        assert!(matches!(
            parse_toml::<GatewayConfig>(p(), "k = \"four\"\n"),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            parse_toml::<GatewayConfig>(p(), "listen = 9000\n"),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            parse_toml::<GatewayConfig>(p(), "k = 300\n"),
            Err(ConfigError::Parse { .. })
        ));
    }

    fn secret() -> SecretArgs {
        SecretArgs {
            cluster_secret: Some(ClusterSecret::new("test-secret-0123456789").unwrap()),
            ..SecretArgs::default()
        }
    }

    fn field_of(e: ConfigError) -> &'static str {
        match e {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other}"),
        }
    }

    fn gateway(k: u8, m: u8) -> GatewaySettings {
        GatewaySettings {
            listen: DEFAULT_GATEWAY_LISTEN.into(),
            config: GatewayConfig {
                k,
                m,
                meta: vec!["127.0.0.1:7001".into()],
                cluster_secret: secret().cluster_secret,
                ..GatewayConfig::default()
            },
        }
    }

    #[test]
    fn erasure_parameters_are_bounded() {
        gateway(4, 2).validate().unwrap();
        gateway(1, 1).validate().unwrap();
        gateway(16, 16).validate().unwrap();
        assert_eq!(field_of(gateway(0, 2).validate().unwrap_err()), "k");
        assert_eq!(field_of(gateway(4, 0).validate().unwrap_err()), "m");
        assert_eq!(field_of(gateway(20, 13).validate().unwrap_err()), "m");
    }

    #[test]
    fn gateway_checks_quorum_meta_and_sizes() {
        let mut g = gateway(4, 2);
        g.config.write_quorum = Some(3);
        assert_eq!(field_of(g.validate().unwrap_err()), "write-quorum");
        g.config.write_quorum = Some(7);
        assert_eq!(field_of(g.validate().unwrap_err()), "write-quorum");
        g.config.write_quorum = Some(6);
        g.validate().unwrap();

        let mut g = gateway(4, 2);
        g.config.meta.clear();
        assert_eq!(field_of(g.validate().unwrap_err()), "meta");
        let mut g = gateway(4, 2);
        g.config.meta = vec!["no-port".into()];
        assert_eq!(field_of(g.validate().unwrap_err()), "meta");
        let mut g = gateway(4, 2);
        g.config.shard_size = 100;
        assert!(matches!(
            g.validate(),
            Err(ConfigError::Rejected {
                role: "gateway",
                ..
            })
        ));
        let mut g = gateway(4, 2);
        g.listen = "nowhere".into();
        assert_eq!(field_of(g.validate().unwrap_err()), "listen");
    }

    fn meta_args(id: u64, peers: &[(u64, &str)]) -> MetaArgs {
        MetaArgs {
            id: Some(id),
            peers: peers.iter().map(|(i, a)| (*i, a.to_string())).collect(),
            secret: secret(),
            ..MetaArgs::default()
        }
    }

    #[test]
    fn meta_peers_must_contain_own_id() {
        let peers = [(1, "127.0.0.1:7001"), (2, "127.0.0.1:7002")];
        let s = MetaSettings::load(&meta_args(2, &peers)).unwrap();
        assert_eq!(s.config.advertise.as_deref(), Some("127.0.0.1:7002"));
        let e = MetaSettings::load(&meta_args(3, &peers)).unwrap_err();
        assert_eq!(field_of(e), "peers");
        let e = MetaSettings::load(&meta_args(0, &[(0, "127.0.0.1:7001")])).unwrap_err();
        assert_eq!(field_of(e), "id");
    }

    #[test]
    fn meta_rejects_duplicates_and_mismatched_advertise() {
        let e = MetaSettings::load(&meta_args(1, &[(1, "h:1"), (1, "h:2")])).unwrap_err();
        assert_eq!(field_of(e), "peers");
        let e = MetaSettings::load(&meta_args(1, &[(1, "h:1"), (2, "h:1")])).unwrap_err();
        assert_eq!(field_of(e), "peers");
        let mut a = meta_args(1, &[(1, "h:1"), (2, "h:2")]);
        a.advertise = Some("h:9".into());
        assert_eq!(field_of(MetaSettings::load(&a).unwrap_err()), "advertise");
        let mut a = meta_args(1, &[(1, "h:1")]);
        a.down_after_ms = Some(10);
        assert_eq!(
            field_of(MetaSettings::load(&a).unwrap_err()),
            "down-after-ms"
        );
    }

    #[test]
    fn lone_meta_node_is_its_own_group() {
        let lone = MetaArgs {
            secret: secret(),
            ..MetaArgs::default()
        };
        let s = MetaSettings::load(&lone).unwrap();
        assert_eq!(s.listen, DEFAULT_META_LISTEN);
        assert_eq!(
            s.config.peers.get(&1).map(String::as_str),
            Some(DEFAULT_META_LISTEN)
        );
        // A wildcard listen address cannot be a peer address.
        let a = MetaArgs {
            listen: Some("0.0.0.0:7001".into()),
            secret: secret(),
            ..MetaArgs::default()
        };
        assert_eq!(field_of(MetaSettings::load(&a).unwrap_err()), "peers");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9100\"\nregion = \"eu-west-1\"\nk = 6\nm = 3\nmeta = [\"a:1\"]\n",
        )
        .unwrap();
        let args = GatewayArgs {
            config: Some(file),
            k: Some(8),
            meta: vec!["b:2".into(), "c:3".into()],
            secret: secret(),
            ..GatewayArgs::default()
        };
        let s = GatewaySettings::load(&args).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9100");
        assert_eq!(s.config.region, "eu-west-1");
        assert_eq!((s.config.k, s.config.m), (8, 3));
        assert_eq!(s.config.meta, vec!["b:2".to_string(), "c:3".to_string()]);
    }

    #[test]
    fn rendered_config_reads_back() {
        let peers = [(1, "10.0.0.1:7001"), (2, "10.0.0.2:7001")];
        let mut args = meta_args(2, &peers);
        args.down_after_ms = Some(12345);
        let s = MetaSettings::load(&args).unwrap();
        let text = render_toml(&s.listen, &s.config).unwrap();
        let (listen, back) = parse_toml::<MetaConfig>(p(), &text).unwrap();
        assert_eq!(listen.as_deref(), Some(s.listen.as_str()));
        assert_eq!(back.peers, s.config.peers);
        assert_eq!(back.down_after_ms, 12345);
        assert_eq!(back.advertise, s.config.advertise);

        let g = gateway(6, 3);
        let text = render_toml(&g.listen, &g.config).unwrap();
        let (_, back) = parse_toml::<GatewayConfig>(p(), &text).unwrap();
        assert_eq!((back.k, back.m), (6, 3));
        assert!(back.s3_domain.is_empty());
        let mut g = gateway(6, 3);
        g.config.s3_domain = vec!["s3.example.com".into(), "localhost".into()];
        let text = render_toml(&g.listen, &g.config).unwrap();
        let (_, back) = parse_toml::<GatewayConfig>(p(), &text).unwrap();
        assert_eq!(back.s3_domain, g.config.s3_domain);
    }

    #[test]
    fn s3_domain_is_one_or_many() {
        for (text, want) in [
            ("s3-domain = \"s3.example.com\"\n", vec!["s3.example.com"]),
            (
                "s3-domain = [\"a.com\", \"b.com\"]\n",
                vec!["a.com", "b.com"],
            ),
            ("region = \"us-east-1\"\n", vec![]),
        ] {
            let (_, c) = parse_toml::<GatewayConfig>(p(), text).unwrap();
            assert_eq!(c.s3_domain, want, "{text}");
        }
    }

    #[test]
    fn every_role_requires_a_cluster_secret() {
        if std::env::var_os(SECRET_ENV).is_some() {
            return;
        }
        let mut g = gateway(4, 2);
        g.config.cluster_secret = None;
        let e = g.validate().unwrap_err();
        assert!(e.to_string().contains("TESSERA_CLUSTER_SECRET"), "{e}");
        assert_eq!(field_of(e), "cluster-secret");
        let e = MetaSettings::load(&MetaArgs::default()).unwrap_err();
        assert_eq!(field_of(e), "cluster-secret");
        let a = StorageArgs {
            meta: vec!["127.0.0.1:7001".into()],
            ..StorageArgs::default()
        };
        assert_eq!(
            field_of(StorageSettings::load(&a).unwrap_err()),
            "cluster-secret"
        );
    }

    #[test]
    fn secret_comes_from_file_or_config_and_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-the-secret-file-1234\n").unwrap();
        let args = SecretArgs {
            cluster_secret_file: Some(file.clone()),
            ..SecretArgs::default()
        };
        let got = resolve_secret(&args, None).unwrap().unwrap();
        assert_eq!(
            got,
            ClusterSecret::new("from-the-secret-file-1234").unwrap()
        );
        std::fs::write(&file, "short").unwrap();
        assert_eq!(
            field_of(resolve_secret(&args, None).unwrap_err()),
            "cluster-secret-file"
        );

        let toml_file = dir.path().join("meta.toml");
        std::fs::write(&toml_file, "cluster-secret = \"from-the-config-file-99\"\n").unwrap();
        let a = MetaArgs {
            config: Some(toml_file),
            ..MetaArgs::default()
        };
        if std::env::var_os(SECRET_ENV).is_none() {
            let s = MetaSettings::load(&a).unwrap();
            assert!(s.config.cluster_secret.is_some());
            let text = render_toml(&s.listen, &s.config).unwrap();
            assert!(!text.contains("from-the-config"), "{text}");
            assert!(!format!("{s:?}").contains("from-the-config"));
        }
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let args = StorageArgs {
            config: Some("/nonexistent/tessera.toml".into()),
            ..StorageArgs::default()
        };
        assert!(matches!(
            StorageSettings::load(&args),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn storage_background_flags_reach_the_config() {
        let base = StorageArgs {
            meta: vec!["127.0.0.1:7001".into()],
            secret: secret(),
            ..StorageArgs::default()
        };
        let a = StorageArgs {
            scrub_rate: Some(1 << 20),
            scrub_period_ms: Some(600_000),
            orphan_scan_interval_ms: Some(60_000),
            orphan_safety_age_ms: Some(600_000),
            capacity_bytes: Some(1 << 30),
            ..base.clone()
        };
        let c = StorageSettings::load(&a).unwrap().config;
        assert_eq!(c.scrub_rate, 1 << 20);
        assert_eq!(c.scrub_period_ms, 600_000);
        assert_eq!(c.orphan_scan_interval_ms, 60_000);
        assert_eq!(c.orphan_safety_age_ms, 600_000);
        assert_eq!(c.capacity_bytes, Some(1 << 30));
        let a = StorageArgs {
            scrub_rate: Some(0),
            ..base
        };
        assert!(StorageSettings::load(&a).is_err());
    }

    #[test]
    fn storage_validation() {
        let base = StorageArgs {
            meta: vec!["127.0.0.1:7001".into()],
            data_dirs: vec!["/d1".into(), "/d2".into()],
            zone: Some("z1".into()),
            secret: secret(),
            ..StorageArgs::default()
        };
        let s = StorageSettings::load(&base).unwrap();
        assert_eq!(s.config.data_dirs.len(), 2);
        assert_eq!(s.config.zone, "z1");

        let mut a = base.clone();
        a.data_dirs = vec!["/d1".into(), "/d1".into()];
        assert_eq!(
            field_of(StorageSettings::load(&a).unwrap_err()),
            "data-dirs"
        );
        let mut a = base.clone();
        a.listen = Some("0.0.0.0:7101".into());
        assert_eq!(
            field_of(StorageSettings::load(&a).unwrap_err()),
            "advertise"
        );
        a.advertise = Some("10.0.0.5:7101".into());
        StorageSettings::load(&a).unwrap();
        let mut a = base.clone();
        a.weight = Some(f64::NAN);
        assert_eq!(field_of(StorageSettings::load(&a).unwrap_err()), "weight");
        let mut a = base.clone();
        a.meta.clear();
        assert_eq!(field_of(StorageSettings::load(&a).unwrap_err()), "meta");
        let mut a = base;
        a.zone = Some(" ".into());
        assert_eq!(field_of(StorageSettings::load(&a).unwrap_err()), "zone");
    }
}
