//! Crash failpoints for crash-consistency tests.
//!
//! `TESSERA_FAILPOINTS=name=action,...` (read once per process) makes
//! [`hit`]`(name)` act at that point of the code: `abort` kills the process
//! on the spot (no destructors, no flushes: a crash), `exit` exits with
//! status 75 (a node asking to be restarted), `panic` panics (a bug's way
//! to fail; see [`crate::crash`]). A few points are
//! switches instead: armed with `on`, [`is_on`] tells the code to take a
//! path that simulates a fault (e.g. a lost answer). Unset, a failpoint costs one atomic load. Names are
//! `<role>.<operation>.<point>`, e.g. `gateway.put.after_commit`; every
//! name is listed in [`NAMES`] so tests can cover them all.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The environment variable that arms failpoints.
pub const ENV: &str = "TESSERA_FAILPOINTS";

/// Every failpoint in the code, in write-path order.
pub const NAMES: &[&str] = &[
    // Storage node, receiving a shard: bytes in the temp file, not fsynced.
    "storage.put.before_fsync",
    // fsynced, not yet renamed to its final name.
    "storage.put.before_rename",
    // Gateway: every shard of the object durable, manifest not committed.
    "gateway.put.after_shards",
    // Manifest committed in meta, the client not yet answered.
    "gateway.put.after_commit",
    // Gateway, multipart: a part's shards durable, the part not recorded.
    "gateway.part.after_shards",
    // Meta node, applying a committed PutObject, before any change.
    "meta.apply.put_object",
    // A switch (`on`): the gateway sends each manifest commit twice and
    // drops the first answer, as the meta client's retry after a lost
    // answer does.
    "gateway.commit.lose_answer",
    // Gateway, a background task: each periodic refresh of its cluster
    // map, after the first (for `panic`: a panic outside any request).
    "gateway.map.refresh",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Abort,
    Exit,
    Panic,
    On,
}

fn armed() -> &'static HashMap<String, Action> {
    static ARMED: OnceLock<HashMap<String, Action>> = OnceLock::new();
    ARMED.get_or_init(|| parse(&std::env::var(ENV).unwrap_or_default()))
}

fn parse(spec: &str) -> HashMap<String, Action> {
    spec.split(',')
        .filter_map(|item| {
            let (name, action) = item.trim().split_once('=')?;
            let action = match action.trim() {
                "abort" => Action::Abort,
                "exit" => Action::Exit,
                "panic" => Action::Panic,
                "on" => Action::On,
                _ => return None,
            };
            Some((name.trim().to_string(), action))
        })
        .collect()
}

/// Acts if `name` is armed in this process.
pub fn hit(name: &str) {
    let armed = armed();
    if armed.is_empty() {
        return;
    }
    // Not eprintln!: the process would unwind instead of stopping.
    let say = |what: &str| crate::stderr_line(format_args!("failpoint {name}: {what}"));
    match armed.get(name) {
        Some(Action::Abort) => {
            say("abort");
            std::process::abort();
        }
        Some(Action::Exit) => {
            say("exit");
            std::process::exit(crate::crash::EXIT_RESTART);
        }
        Some(Action::Panic) => panic!("failpoint {name}: panic"),
        Some(Action::On) | None => {}
    }
}

/// Whether the switch `name` is armed (`name=on`) in this process.
pub fn is_on(name: &str) -> bool {
    let armed = armed();
    !armed.is_empty() && armed.get(name) == Some(&Action::On)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_actions() {
        let m = parse(
            "gateway.put.after_commit=abort, storage.put.before_fsync = exit,bad,x=nope,y=on,z=panic",
        );
        assert_eq!(m.len(), 4);
        assert_eq!(m["z"], Action::Panic);
        assert_eq!(m["y"], Action::On);
        assert_eq!(m["gateway.put.after_commit"], Action::Abort);
        assert_eq!(m["storage.put.before_fsync"], Action::Exit);
        assert!(parse("").is_empty());
    }

    #[test]
    fn unarmed_points_do_nothing() {
        hit("gateway.put.after_commit");
        assert!(!is_on("gateway.commit.lose_answer"));
    }
}
