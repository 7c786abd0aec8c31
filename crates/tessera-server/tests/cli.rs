//! Command-line parsing: every subcommand and the flags that feed the role
//! settings.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use tessera_server::cli::{AdminCommand, Cli, Command, KeyCommand};
use tessera_server::config::{GatewaySettings, MetaSettings, StorageSettings};

fn parse(args: &[&str]) -> Cli {
    match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => panic!("{args:?}: {e}"),
    }
}

/// A role command line with a cluster secret file (roles require one).
fn parse_role(args: &[&str]) -> (Cli, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster-secret");
    std::fs::write(&file, "cli-test-secret-0123456789\n").unwrap();
    let mut all: Vec<&str> = args.to_vec();
    let path = file.to_str().unwrap().to_string();
    all.extend(["--cluster-secret-file", &path]);
    (parse(&all), dir)
}

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn version_flag_prints_the_crate_version() {
    let err = Cli::try_parse_from(["tessera", "--version"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
    assert!(err.to_string().contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn meta_flags() {
    let (cli, _dir) = parse_role(&[
        "tessera",
        "meta",
        "--id",
        "2",
        "--listen",
        "127.0.0.1:7002",
        "--data-dir",
        "/tmp/m2",
        "--peers",
        "1=127.0.0.1:7001,2=127.0.0.1:7002",
        "--peers",
        "3=127.0.0.1:7003",
        "--bootstrap",
        "false",
        "--down-after-ms",
        "9000",
    ]);
    let Command::Meta(args) = cli.command else {
        panic!("not meta")
    };
    assert_eq!(args.peers.len(), 3);
    let s = MetaSettings::load(&args).unwrap();
    assert_eq!(s.listen, "127.0.0.1:7002");
    assert_eq!(s.config.id, 2);
    assert_eq!(s.config.data_dir, PathBuf::from("/tmp/m2"));
    assert_eq!(s.config.advertise.as_deref(), Some("127.0.0.1:7002"));
    assert!(!s.config.bootstrap);
    assert_eq!(s.config.down_after_ms, 9000);
    assert_eq!(
        s.config.peers.get(&3).map(String::as_str),
        Some("127.0.0.1:7003")
    );
}

#[test]
fn malformed_peers_are_rejected_by_the_parser() {
    for bad in ["1:127.0.0.1:7001", "x=127.0.0.1:7001", "1="] {
        assert!(
            Cli::try_parse_from(["tessera", "meta", "--peers", bad]).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn storage_data_dir_repeats() {
    let (cli, _dir) = parse_role(&[
        "tessera",
        "storage",
        "--listen",
        "127.0.0.1:7101",
        "--data-dir",
        "/d1",
        "--data-dir",
        "/d2,/d3",
        "--zone",
        "z2",
        "--meta",
        "127.0.0.1:7001,127.0.0.1:7002",
    ]);
    let Command::Storage(args) = cli.command else {
        panic!("not storage")
    };
    let s = StorageSettings::load(&args).unwrap();
    assert_eq!(
        s.config.data_dirs,
        vec![
            PathBuf::from("/d1"),
            PathBuf::from("/d2"),
            PathBuf::from("/d3")
        ]
    );
    assert_eq!(s.config.zone, "z2");
    assert_eq!(s.config.meta.len(), 2);
}

#[test]
fn gateway_flags_and_validation() {
    let (cli, _dir) = parse_role(&[
        "tessera",
        "gateway",
        "--listen",
        "0.0.0.0:9000",
        "--meta",
        "m1:7001",
        "--region",
        "eu-central-1",
        "--k",
        "6",
        "--m",
        "3",
    ]);
    let Command::Gateway(args) = cli.command else {
        panic!("not gateway")
    };
    let s = GatewaySettings::load(&args).unwrap();
    assert_eq!((s.config.k, s.config.m), (6, 3));
    assert_eq!(s.config.region, "eu-central-1");

    let cli = parse(&[
        "tessera", "gateway", "--meta", "m1:7001", "--k", "30", "--m", "3",
    ]);
    let Command::Gateway(args) = cli.command else {
        panic!("not gateway")
    };
    assert!(GatewaySettings::load(&args).is_err());
    // Out of u8 range is a parse error.
    assert!(Cli::try_parse_from(["tessera", "gateway", "--k", "300"]).is_err());
}

#[test]
fn dev_defaults() {
    let cli = parse(&["tessera", "dev"]);
    let Command::Dev(d) = cli.command else {
        panic!("not dev")
    };
    assert_eq!(d.data_dir, PathBuf::from("./tessera-data"));
    assert_eq!(d.port_base, 9000);
    assert_eq!(d.storage_nodes, 6);
    assert_eq!(d.zones, 3);
    assert_eq!((d.k, d.m), (4, 2));
    assert_eq!(d.region, "us-east-1");
    assert_eq!(d.ready_timeout, 60);
}

#[test]
fn dev_flags() {
    let cli = parse(&[
        "tessera",
        "--log-level",
        "debug",
        "dev",
        "--data-dir",
        "/tmp/x",
        "--port-base",
        "19000",
        "--storage-nodes",
        "9",
        "--zones",
        "4",
        "--k",
        "6",
        "--m",
        "3",
    ]);
    assert_eq!(cli.log.log_level.as_deref(), Some("debug"));
    let Command::Dev(d) = cli.command else {
        panic!("not dev")
    };
    assert_eq!(
        (d.port_base, d.storage_nodes, d.zones, d.k, d.m),
        (19000, 9, 4, 6, 3)
    );
}

#[test]
fn global_log_flags_work_after_the_subcommand() {
    let cli = parse(&["tessera", "meta", "--log-level", "warn", "--log-json"]);
    assert_eq!(cli.log.log_level.as_deref(), Some("warn"));
    assert!(cli.log.log_json);
}

#[test]
fn admin_commands() {
    let cli = parse(&["tessera", "admin", "status", "--json", "--meta", "a:1,b:2"]);
    let Command::Admin(a) = cli.command else {
        panic!("not admin")
    };
    assert!(matches!(a.command, AdminCommand::Status { json: true }));
    assert_eq!(a.target.meta, vec!["a:1", "b:2"]);

    let cli = parse(&[
        "tessera",
        "admin",
        "--cluster",
        "/d/cluster.json",
        "key",
        "create",
        "alice",
        "--access-key",
        "AKALICE",
        "--secret-key",
        "alicesecret",
    ]);
    let Command::Admin(a) = cli.command else {
        panic!("not admin")
    };
    assert_eq!(a.target.cluster, Some(PathBuf::from("/d/cluster.json")));
    match a.command {
        AdminCommand::Key(KeyCommand::Create {
            name,
            access_key,
            secret_key,
            if_not_exists,
        }) => {
            assert!(!if_not_exists);
            assert_eq!(name, "alice");
            assert_eq!(access_key.as_deref(), Some("AKALICE"));
            assert_eq!(secret_key.as_deref(), Some("alicesecret"));
        }
        other => panic!("unexpected {other:?}"),
    }

    let cli = parse(&["tessera", "admin", "key", "list", "--json"]);
    let Command::Admin(a) = cli.command else {
        panic!("not admin")
    };
    assert!(matches!(
        a.command,
        AdminCommand::Key(KeyCommand::List { json: true })
    ));

    let cli = parse(&["tessera", "admin", "key", "delete", "TKX"]);
    let Command::Admin(a) = cli.command else {
        panic!("not admin")
    };
    assert!(matches!(a.command, AdminCommand::Key(KeyCommand::Delete { id }) if id == "TKX"));

    // A key needs a name; an unknown subcommand is an error.
    assert!(Cli::try_parse_from(["tessera", "admin", "key", "create"]).is_err());
    assert!(Cli::try_parse_from(["tessera", "admin", "frobnicate"]).is_err());
}

#[test]
fn every_flag_has_help() {
    fn walk(cmd: &clap::Command, path: &str) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                arg.get_help().is_some() || arg.get_long_help().is_some(),
                "{path} --{id} has no help text"
            );
        }
        for sub in cmd.get_subcommands() {
            assert!(
                sub.get_about().is_some(),
                "{path} {} has no about",
                sub.get_name()
            );
            walk(sub, &format!("{path} {}", sub.get_name()));
        }
    }
    walk(&Cli::command(), "tessera");
}
