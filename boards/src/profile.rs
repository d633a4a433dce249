//! Board profiles: what a kind of controller samples by default and the
//! resources the agent may use on it, sized for its RAM.

use crate::spec::{ChannelConfig, Delivery, DriverSpec, Initial};

/// Bounds the agent applies unless its config overrides them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    /// Outbox bound in records; past it the oldest telemetry is dropped and counted.
    pub outbox_records: u64,
    /// Outbox bound in bytes (encoded records).
    pub outbox_bytes: u64,
    /// sled's page cache. sled's RSS runs several times above it.
    pub cache_bytes: u64,
}

pub struct Profile {
    pub name: &'static str,
    pub description: &'static str,
    pub resources: Resources,
    /// Channels sampled when the config lists none.
    pub default_channels: fn() -> Vec<ChannelConfig>,
}

const MIB: u64 = 1 << 20;

/// 512 MB boards: a small outbox and cache.
const SMALL: Resources = Resources { outbox_records: 100_000, outbox_bytes: 16 * MIB, cache_bytes: 2 * MIB };
/// 1 GB boards.
const MEDIUM: Resources = Resources { outbox_records: 500_000, outbox_bytes: 64 * MIB, cache_bytes: 4 * MIB };
/// 2 GB and more.
const LARGE: Resources =
    Resources { outbox_records: 1_000_000, outbox_bytes: 128 * MIB, cache_bytes: 8 * MIB };

pub static PROFILES: &[Profile] = &[
    Profile {
        name: "sim",
        description: "simulated board: seeded sine, ramp, step, noise and toggle inputs, and an output",
        resources: MEDIUM,
        default_channels: sim_channels,
    },
    Profile {
        name: "linux",
        description: "any Linux machine: CPU temperature, load, memory, disk",
        resources: LARGE,
        default_channels: linux_channels,
    },
    Profile {
        name: "rpi-zero2w",
        description: "Raspberry Pi Zero 2 W (512 MB): SoC temperature, load, memory",
        resources: SMALL,
        default_channels: pi_channels,
    },
    Profile {
        name: "rpi3",
        description: "Raspberry Pi 3 (1 GB): SoC temperature, load, memory",
        resources: MEDIUM,
        default_channels: pi_channels,
    },
    Profile {
        name: "rpi4",
        description: "Raspberry Pi 4 (2 GB and up): SoC temperature, load, memory",
        resources: LARGE,
        default_channels: pi_channels,
    },
    Profile {
        name: "rpi5",
        description: "Raspberry Pi 5 (4 GB and up): SoC temperature, load, memory",
        resources: LARGE,
        default_channels: pi_channels,
    },
];

impl Profile {
    pub fn find(name: &str) -> Option<&'static Profile> {
        PROFILES.iter().find(|p| p.name == name)
    }

    pub fn names() -> Vec<&'static str> {
        PROFILES.iter().map(|p| p.name).collect()
    }
}

fn sim_channels() -> Vec<ChannelConfig> {
    use Delivery::*;
    let mut temp = ChannelConfig::new(
        "temperature",
        DriverSpec::Sine { amplitude: 5.0, period_s: 60.0, offset: 20.0, phase_s: 0.0 },
        1000,
        Durable,
    );
    temp.unit = Some("degC".into());
    let mut pressure = ChannelConfig::new(
        "pressure",
        DriverSpec::Ramp { rate_per_s: 0.1, min: 1.0, max: 3.0 },
        1000,
        Durable,
    );
    pressure.unit = Some("bar".into());
    vec![
        temp,
        pressure,
        ChannelConfig::new(
            "vibration",
            DriverSpec::Noise { mean: 0.0, stddev: 0.2, seed: 1 },
            250,
            BestEffort,
        ),
        ChannelConfig::new("pump_running", DriverSpec::Toggle { every_s: 30.0 }, 5000, Durable),
        ChannelConfig::new("valve", DriverSpec::SimOutput { initial: Initial::Bool(false) }, 5000, Durable),
    ]
}

fn linux_channels() -> Vec<ChannelConfig> {
    use Delivery::*;
    vec![
        ChannelConfig::new("cpu_temp", DriverSpec::ThermalZone { zone: 0 }, 5000, Durable),
        ChannelConfig::new("load1", DriverSpec::LoadAvg { minutes: 1 }, 5000, BestEffort),
        ChannelConfig::new(
            "memory_used",
            DriverSpec::Memory { metric: "used_percent".into() },
            10_000,
            BestEffort,
        ),
        ChannelConfig::new(
            "disk_used",
            DriverSpec::Disk { path: "/".into(), metric: "used_percent".into() },
            60_000,
            Durable,
        ),
    ]
}

fn pi_channels() -> Vec<ChannelConfig> {
    use Delivery::*;
    vec![
        ChannelConfig::new("soc_temp", DriverSpec::SocTemp {}, 5000, Durable),
        ChannelConfig::new("load1", DriverSpec::LoadAvg { minutes: 1 }, 5000, BestEffort),
        ChannelConfig::new(
            "memory_used",
            DriverSpec::Memory { metric: "used_percent".into() },
            10_000,
            BestEffort,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_has_valid_defaults_that_fit_its_ram() {
        for p in PROFILES {
            let channels = (p.default_channels)();
            assert!(!channels.is_empty(), "{}", p.name);
            for c in &channels {
                c.driver.validate().unwrap_or_else(|e| panic!("{}: {}: {e}", p.name, c.name));
            }
            assert!(p.resources.cache_bytes * 10 < 512 * MIB, "{}: sled's RSS runs ~10x its cache", p.name);
        }
        assert_eq!(Profile::find("rpi-zero2w").unwrap().resources, SMALL);
        assert!(Profile::find("rpi1").is_none());
    }
}
