//! `tessera admin repair` and `tessera admin node`, and the durability
//! part of `admin status`: repair queue by surviving shards, repair rate
//! and ETA, GC backlog.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tessera_proto::MetaClient;
use tessera_types::meta::{MetaCommand, MetaQuery, MetaReply, QueryReply};
use tessera_types::repair::{DurabilityStatus, RepairConfig};
use tessera_types::{now_millis, NodeId, NodeState};

use super::expect_ok;
use crate::cli::{NodeCommand, RepairArgs};
use crate::fsutil::human_bytes;

/// How long `admin status` watches the repaired totals to measure a rate
/// (only while repairs are queued).
const RATE_SAMPLE: Duration = Duration::from_secs(1);

/// The durability figures of `admin status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DurabilityReport {
    #[serde(flatten)]
    pub status: DurabilityStatus,
    /// Rebuilt shard bytes per second over the sample (None: nothing
    /// queued, so not measured).
    pub repair_rate_bytes_per_sec: Option<f64>,
    /// Estimated seconds to full redundancy at that rate.
    pub repair_eta_secs: Option<f64>,
}

pub async fn fetch(client: &MetaClient) -> Result<DurabilityStatus> {
    match client.query(&MetaQuery::Durability).await? {
        QueryReply::Durability(d) => Ok(d),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// The figures, with a rate measured over [`RATE_SAMPLE`] when repairs
/// are pending.
pub async fn report(client: &MetaClient) -> Result<DurabilityReport> {
    let first = fetch(client).await?;
    if first.queued == 0 {
        return Ok(DurabilityReport {
            status: first,
            repair_rate_bytes_per_sec: None,
            repair_eta_secs: None,
        });
    }
    let t0 = Instant::now();
    tokio::time::sleep(RATE_SAMPLE).await;
    let second = fetch(client).await?;
    let rate = second.repaired_bytes.saturating_sub(first.repaired_bytes) as f64
        / t0.elapsed().as_secs_f64();
    let eta = eta_secs(&second, rate);
    Ok(DurabilityReport {
        status: second,
        repair_rate_bytes_per_sec: Some(rate),
        repair_eta_secs: eta,
    })
}

/// Queued stripes times the mean rebuilt bytes per repaired stripe, at
/// `rate`.
fn eta_secs(s: &DurabilityStatus, rate: f64) -> Option<f64> {
    if s.queued == 0 {
        return Some(0.0);
    }
    if rate <= 0.0 || s.repaired_stripes == 0 {
        return None;
    }
    let per_stripe = s.repaired_bytes as f64 / s.repaired_stripes as f64;
    Some(s.queued as f64 * per_stripe / rate)
}

impl DurabilityReport {
    pub fn render(&self) -> String {
        let s = &self.status;
        let mut out = String::new();
        let by: Vec<String> = s
            .queued_by_surviving
            .iter()
            .map(|(surv, n)| format!("{n} with {surv} shards left"))
            .collect();
        out.push_str(&format!(
            "Durability: {} stripes; {} whole, {} queued for repair{}{}\n",
            s.stripes,
            s.stripes.saturating_sub(s.queued),
            s.queued,
            if by.is_empty() {
                String::new()
            } else {
                format!(" ({})", by.join(", "))
            },
            if s.at_risk_unreadable > 0 {
                format!("; {} UNREADABLE until nodes return", s.at_risk_unreadable)
            } else {
                String::new()
            }
        ));
        let rate = match (self.repair_rate_bytes_per_sec, self.repair_eta_secs) {
            (Some(r), Some(eta)) => format!(", now {}/s, ETA {}", human_bytes(r as u64), secs(eta)),
            (Some(r), None) => format!(", now {}/s", human_bytes(r as u64)),
            _ => String::new(),
        };
        out.push_str(&format!(
            "Repair: {} leased, {} stripes / {} rebuilt so far{}; limit {} x{}{}\n",
            s.leased,
            s.repaired_stripes,
            human_bytes(s.repaired_bytes),
            rate,
            rate_text(s.config.rate_bytes_per_sec),
            s.config.concurrency,
            if s.config.paused { " (PAUSED)" } else { "" }
        ));
        out.push_str(&format!(
            "GC backlog: {} items, {} stripes\n",
            s.gc_items, s.gc_stripes
        ));
        out
    }
}

fn secs(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn rate_text(r: u64) -> String {
    if r == 0 {
        "unlimited".into()
    } else {
        format!("{}/s", human_bytes(r))
    }
}

/// Parses `200MiB/s`, `1GB/s`, `500k`, `0` (unlimited) into bytes/s.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("ps"))
        .unwrap_or(t)
        .trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{text}`: expected a rate like 200MiB/s"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("`{text}`: unknown unit `{other}`")),
    };
    let v = n * mult;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("`{text}`: out of range"));
    }
    Ok(v.round() as u64)
}

/// `tessera admin repair`.
pub async fn repair(client: &MetaClient, args: RepairArgs) -> Result<ExitCode> {
    let changes = args.rate.is_some() || args.concurrency.is_some() || args.pause || args.resume;
    if changes {
        let mut cfg = match client.query(&MetaQuery::RepairConfig).await? {
            QueryReply::RepairConfig(c) => c,
            other => bail!("unexpected answer: {other:?}"),
        };
        if let Some(r) = &args.rate {
            cfg.rate_bytes_per_sec = parse_rate(r).map_err(anyhow::Error::msg)?;
        }
        if let Some(c) = args.concurrency {
            if c == 0 {
                bail!("--concurrency must be at least 1 (use --pause to stop repairs)");
            }
            cfg.concurrency = c;
        }
        if args.pause {
            cfg.paused = true;
        }
        if args.resume {
            cfg.paused = false;
        }
        expect_ok(client.write(&MetaCommand::SetRepairConfig(cfg)).await?)?;
        print_config(&cfg);
    }
    if args.wait {
        return wait(client, args.timeout.map(Duration::from_secs)).await;
    }
    if !changes {
        print!("{}", report(client).await?.render());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_config(cfg: &RepairConfig) {
    println!(
        "repair: rate {} per gateway, concurrency {}{}",
        rate_text(cfg.rate_bytes_per_sec),
        cfg.concurrency,
        if cfg.paused { ", PAUSED" } else { "" }
    );
}

/// Polls until nothing is queued, drawing a progress bar on a terminal
/// (a line per few seconds otherwise).
async fn wait(client: &MetaClient, timeout: Option<Duration>) -> Result<ExitCode> {
    let start = Instant::now();
    let first = fetch(client).await?;
    let base = first.repaired_stripes;
    let base_bytes = first.repaired_bytes;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        let s = fetch(client).await?;
        let done = s.repaired_stripes.saturating_sub(base);
        let total = done + s.queued;
        let elapsed = start.elapsed().as_secs_f64().max(0.001);
        let rate = s.repaired_bytes.saturating_sub(base_bytes) as f64 / elapsed;
        let line = progress_line(done, total, rate, eta_secs(&s, rate), &s);
        if s.queued == 0 {
            eprintln!("{}{line}", if tty { "\r" } else { "" });
            eprintln!(
                "full redundancy: {} stripes whole after {:.1}s ({} rebuilt)",
                s.stripes,
                elapsed,
                human_bytes(s.repaired_bytes.saturating_sub(base_bytes))
            );
            return Ok(ExitCode::SUCCESS);
        }
        if tty {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            eprintln!("{line}");
            last_line = Instant::now();
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            eprintln!();
            eprintln!("timed out: {} stripes still queued", s.queued);
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn progress_line(
    done: u64,
    total: u64,
    rate: f64,
    eta: Option<f64>,
    s: &DurabilityStatus,
) -> String {
    const WIDTH: u64 = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    let worst = s
        .queued_by_surviving
        .first()
        .map(|(surv, _)| format!(", worst stripe has {surv} shards"))
        .unwrap_or_default();
    format!(
        "[{bar}] {done}/{total} stripes, {}/s, ETA {}{worst}   ",
        human_bytes(rate as u64),
        eta.map(secs).unwrap_or_else(|| "?".into())
    )
}

/// `tessera admin node ...`.
pub async fn node(client: &MetaClient, cmd: NodeCommand) -> Result<ExitCode> {
    let set = |id: &str, state| MetaCommand::SetNodeState {
        id: NodeId::from(id),
        state,
        at: now_millis(),
    };
    match cmd {
        NodeCommand::Drain { id } => {
            expect_ok(client.write(&set(&id, NodeState::Draining)).await?)
                .with_context(|| format!("drain {id}"))?;
            println!("{id}: draining; follow with `tessera admin repair --wait`, then `tessera admin node remove {id}`");
        }
        NodeCommand::Undrain { id } => {
            expect_ok(client.write(&set(&id, NodeState::Up)).await?)
                .with_context(|| format!("undrain {id}"))?;
            println!("{id}: up");
        }
        NodeCommand::Check { id } => {
            let cmd = MetaCommand::CheckNode {
                id: NodeId::from(id.as_str()),
                at: now_millis(),
            };
            expect_ok(client.write(&cmd).await?).with_context(|| format!("check {id}"))?;
            println!("{id}: every stripe it holds is queued for a check");
        }
        NodeCommand::Remove { id } => {
            let cmd = MetaCommand::RemoveNode {
                id: NodeId::from(id.as_str()),
            };
            match client.write(&cmd).await? {
                MetaReply::Ok => println!("{id}: removed"),
                other => {
                    expect_ok(other).with_context(|| format!("remove {id}"))?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("200MiB/s"), Ok(200 << 20));
        assert_eq!(parse_rate("1GB/s"), Ok(1_000_000_000));
        assert_eq!(parse_rate("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_rate("500k"), Ok(500_000));
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("unlimited"), Ok(0));
        assert_eq!(parse_rate("12345"), Ok(12345));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10 parsecs").is_err());
        assert!(parse_rate("-5MB").is_err());
    }

    #[test]
    fn eta_uses_mean_stripe_size() {
        let s = DurabilityStatus {
            queued: 10,
            repaired_stripes: 5,
            repaired_bytes: 5 << 20,
            ..Default::default()
        };
        assert_eq!(eta_secs(&s, (1 << 20) as f64), Some(10.0));
        assert_eq!(eta_secs(&s, 0.0), None);
        assert_eq!(secs(3725.0), "1h02m");
        assert_eq!(secs(75.0), "1m15s");
    }
}
