//! Parsers for the bench flags: sizes (`64KiB`), size distributions
//! (`4KiB:70,1MiB:30`), durations (`30s`, `500ms`, `2m`) and the mixed
//! workload's operation weights (`get=45,stat=30,put=15,delete=10`).

use std::fmt;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;

/// Object sizes to write: one size, or a weighted choice of sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SizeSpec {
    /// (bytes, weight), weights > 0.
    pub choices: Vec<SizeChoice>,
}

/// One size of a [`SizeSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SizeChoice {
    pub bytes: u64,
    pub weight: u32,
}

impl SizeSpec {
    /// Parses `SIZE` or `SIZE:WEIGHT,SIZE:WEIGHT,...`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut choices = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (size, weight) = match part.split_once(':') {
                Some((size, w)) => {
                    let w: u32 = w
                        .trim()
                        .parse()
                        .map_err(|_| format!("`{part}`: weight `{w}` is not a whole number"))?;
                    (size, w)
                }
                None => (part, 1),
            };
            if weight == 0 {
                return Err(format!("`{part}`: weight must be positive"));
            }
            choices.push(SizeChoice {
                bytes: parse_size(size)?,
                weight,
            });
        }
        if choices.is_empty() {
            return Err("empty size".into());
        }
        Ok(SizeSpec { choices })
    }

    /// The largest size (the payload buffer is cut from one of this size).
    pub fn max(&self) -> u64 {
        self.choices.iter().map(|c| c.bytes).max().unwrap_or(0)
    }

    /// A size drawn with the weights.
    pub fn pick(&self, rng: &mut impl Rng) -> u64 {
        if let [only] = self.choices.as_slice() {
            return only.bytes;
        }
        let total: u32 = self.choices.iter().map(|c| c.weight).sum();
        let mut x = rng.gen_range(0..total);
        for c in &self.choices {
            if x < c.weight {
                return c.bytes;
            }
            x -= c.weight;
        }
        self.max()
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .choices
            .iter()
            .map(|c| {
                if self.choices.len() == 1 {
                    human_size(c.bytes)
                } else {
                    format!("{}:{}", human_size(c.bytes), c.weight)
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Parses `123`, `4KiB`, `1MiB`, `1GiB` (binary) or `4KB`, `1MB` (decimal);
/// units are case-insensitive, `K`/`M`/`G` alone are binary.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("`{s}`: unknown size unit `{other}`")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: `{num}` is not a number"))?;
    let bytes = n * mult as f64;
    if !(bytes.is_finite() && bytes >= 0.0 && bytes <= (1u64 << 40) as f64) {
        return Err(format!("`{s}`: size out of range"));
    }
    Ok(bytes.round() as u64)
}

/// `1536` -> `1.5KiB`, `1048576` -> `1MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (scale, unit) in UNITS {
        if bytes >= scale {
            let v = bytes as f64 / scale as f64;
            return if bytes.is_multiple_of(scale) {
                format!("{}{unit}", bytes / scale)
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    format!("{bytes}B")
}

/// Parses `30s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: `{num}` is not a number"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("`{s}`: unknown duration unit `{other}`")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}`: duration out of range"))
}

/// An operation of the mixed workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Put,
    Get,
    Stat,
    Delete,
    List,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Get => "get",
            OpKind::Stat => "stat",
            OpKind::Delete => "delete",
            OpKind::List => "list",
        }
    }
}

/// Weights of the operations of the mixed workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    pub weights: Vec<(OpKind, u32)>,
}

impl Mix {
    /// Parses `get=45,stat=30,put=15,delete=10` (any subset; weights are
    /// relative).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut weights = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (op, w) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected OP=WEIGHT"))?;
            let op = match op.trim() {
                "put" => OpKind::Put,
                "get" => OpKind::Get,
                "stat" => OpKind::Stat,
                "delete" => OpKind::Delete,
                other => {
                    return Err(format!(
                        "`{other}`: mixed operations are put, get, stat and delete"
                    ))
                }
            };
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: weight is not a whole number"))?;
            if w > 0 {
                weights.push((op, w));
            }
        }
        if weights.is_empty() {
            return Err("the mix needs at least one positive weight".into());
        }
        Ok(Mix { weights })
    }

    pub fn pick(&self, rng: &mut impl Rng) -> OpKind {
        let total: u32 = self.weights.iter().map(|(_, w)| w).sum();
        let mut x = rng.gen_range(0..total);
        for (op, w) in &self.weights {
            if x < *w {
                return *op;
            }
            x -= w;
        }
        self.weights[0].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1mb"), Ok(1_000_000));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("KiB").is_err());
        assert_eq!(human_size(1536), "1.5KiB");
        assert_eq!(human_size(4 << 20), "4MiB");
        assert_eq!(human_size(10), "10B");
    }

    #[test]
    fn distributions() {
        let one = SizeSpec::parse("1MiB").unwrap();
        assert_eq!(one.to_string(), "1MiB");
        let d = SizeSpec::parse("4KiB:70,1MiB:30").unwrap();
        assert_eq!(d.max(), 1 << 20);
        assert_eq!(d.to_string(), "4KiB:70,1MiB:30");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let small = (0..10_000).filter(|_| d.pick(&mut rng) == 4096).count();
        assert!((6_500..7_500).contains(&small), "{small}");
        assert!(SizeSpec::parse("4KiB:0").is_err());
        assert!(SizeSpec::parse("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn mixes() {
        let m = Mix::parse("get=45,stat=30,put=15,delete=10").unwrap();
        assert_eq!(m.weights.len(), 4);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let gets = (0..10_000)
            .filter(|_| m.pick(&mut rng) == OpKind::Get)
            .count();
        assert!((4_000..5_000).contains(&gets), "{gets}");
        assert!(Mix::parse("list=3").is_err());
        assert!(Mix::parse("get=0").is_err());
    }
}
