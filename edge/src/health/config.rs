//! `[health]` of `edge.toml`: how often and how the edge checks the
//! `health_source` of routes, and how quickly a backend that refuses
//! connections is ejected. Plain data with documented defaults. No I/O.

use std::time::Duration;

use serde::Deserialize;

/// `[health]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawHealth")]
pub struct HealthConfig {
    /// One TCP connect probe per `(instance, health port)` per interval.
    pub interval: Duration,
    /// A probe not connected within this counts as a failure.
    pub timeout: Duration,
    /// Consecutive successful probes that bring a down instance back.
    pub rise: u32,
    /// Consecutive failed probes that take an instance out.
    pub fall: u32,
    /// Ceiling on probes started per second, whatever the number of
    /// targets: past it, every target is probed less often.
    pub max_probes_per_second: u32,
    /// Consecutive failed client connects that eject an instance.
    pub eject_after: u32,
    /// The first ejection's length; each further one doubles it.
    pub eject: Duration,
    /// The longest ejection.
    pub max_eject: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        RawHealth::default()
            .try_into()
            .expect("the defaults are valid")
    }
}

/// `[health]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHealth {
    interval_ms: u64,
    timeout_ms: u64,
    rise: u32,
    fall: u32,
    max_probes_per_second: u32,
    eject_after: u32,
    eject_ms: u64,
    max_eject_ms: u64,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            interval_ms: 2_000,
            timeout_ms: 1_000,
            rise: 2,
            fall: 3,
            max_probes_per_second: 1_000,
            eject_after: 3,
            eject_ms: 5_000,
            max_eject_ms: 300_000,
        }
    }
}

impl TryFrom<RawHealth> for HealthConfig {
    type Error = String;

    fn try_from(raw: RawHealth) -> Result<Self, String> {
        let positive = |field: &str, v: u64| {
            if v == 0 {
                Err(format!("health.{field} must be greater than 0"))
            } else {
                Ok(v)
            }
        };
        positive("interval_ms", raw.interval_ms)?;
        positive("timeout_ms", raw.timeout_ms)?;
        positive("rise", raw.rise.into())?;
        positive("fall", raw.fall.into())?;
        positive("max_probes_per_second", raw.max_probes_per_second.into())?;
        positive("eject_after", raw.eject_after.into())?;
        positive("eject_ms", raw.eject_ms)?;
        if raw.max_eject_ms < raw.eject_ms {
            return Err("health.max_eject_ms must be at least health.eject_ms".into());
        }
        Ok(HealthConfig {
            interval: Duration::from_millis(raw.interval_ms),
            timeout: Duration::from_millis(raw.timeout_ms),
            rise: raw.rise,
            fall: raw.fall,
            max_probes_per_second: raw.max_probes_per_second,
            eject_after: raw.eject_after,
            eject: Duration::from_millis(raw.eject_ms),
            max_eject: Duration::from_millis(raw.max_eject_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c: HealthConfig = toml::from_str("").unwrap();
        assert_eq!(c, HealthConfig::default());
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!((c.rise, c.fall), (2, 3));
    }

    #[test]
    fn zeros_and_unknown_keys_are_refused() {
        for bad in [
            "interval_ms = 0",
            "fall = 0",
            "rise = 0",
            "intervall_ms = 5",
        ] {
            assert!(toml::from_str::<HealthConfig>(bad).is_err(), "{bad}");
        }
        let e = toml::from_str::<HealthConfig>("eject_ms = 10\nmax_eject_ms = 5").unwrap_err();
        assert!(e.to_string().contains("max_eject_ms"), "{e}");
    }
}
