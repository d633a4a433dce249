//! Channels as the agent's config declares them: a name, a driver with its
//! parameters, a sampling period and a delivery class.
//!
//! ```toml
//! [[channel]]
//! name = "tank_temp"
//! period_ms = 1000
//! delivery = "durable"            # or "best-effort"
//! unit = "degC"                   # optional: each driver has a default
//! driver = { kind = "ds18b20", id = "28-0316a4f2aaff" }
//! ```

use std::path::Path;

use proto::sample::Value;
use serde::{Deserialize, Serialize};

use crate::driver::Driver;
use crate::{iio, linux, modbus, rpi, sim};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub name: String,
    pub driver: DriverSpec,
    #[serde(default = "default_period_ms")]
    pub period_ms: u64,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Report by exception: `report = { deadband = 0.5, max_interval_ms = 60000 }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<edge::ReportConfig>,
    /// Aggregation windows: `aggregate = { window_ms = 60000, stats = ["mean"] }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<edge::AggregateConfig>,
    /// Limit alarms: `alarm = { hi = 80.0, hysteresis = 1.0, delay_ms = 2000 }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<edge::AlarmConfig>,
}

fn default_period_ms() -> u64 {
    1000
}

impl ChannelConfig {
    pub fn new(name: &str, driver: DriverSpec, period_ms: u64, delivery: Delivery) -> Self {
        ChannelConfig {
            name: name.into(),
            driver,
            period_ms,
            delivery,
            unit: None,
            report: None,
            aggregate: None,
            alarm: None,
        }
    }

    /// The configured unit, or the driver's.
    pub fn unit(&self) -> &str {
        self.unit.as_deref().unwrap_or_else(|| self.driver.default_unit())
    }
}

/// How a channel's samples reach the hub.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Written to the outbox first, sent to the hub's ingest, retired when acknowledged.
    #[default]
    Durable,
    /// Published live on the metric bus; lost if nobody is listening.
    BestEffort,
}

/// A value in TOML for a simulated output's initial state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Initial {
    Bool(bool),
    Integer(i64),
    Number(f64),
    Text(String),
}

impl From<&Initial> for Value {
    fn from(i: &Initial) -> Value {
        match i {
            Initial::Bool(b) => Value::Bool(*b),
            Initial::Integer(n) => Value::Integer(*n),
            Initial::Number(n) => Value::Number(*n),
            Initial::Text(t) => Value::Text(t.clone()),
        }
    }
}

macro_rules! defaults {
    ($($name:ident: $ty:ty = $value:expr;)*) => { $(fn $name() -> $ty { $value })* };
}

defaults! {
    one: f64 = 1.0;
    sixty: f64 = 60.0;
    hundred: f64 = 100.0;
    ten: f64 = 10.0;
    five: f64 = 5.0;
    minute: u32 = 1;
    used_percent: String = "used_percent".into();
    slash: String = "/".into();
    temp1: String = "temp1_input".into();
    gpiochip0: String = "gpiochip0".into();
    initial_false: Initial = Initial::Bool(false);
    thousand: u64 = 1000;
}

/// A driver and its parameters (`kind` selects it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DriverSpec {
    // The simulated board.
    Sine {
        #[serde(default = "one")]
        amplitude: f64,
        #[serde(default = "sixty")]
        period_s: f64,
        #[serde(default)]
        offset: f64,
        #[serde(default)]
        phase_s: f64,
    },
    Ramp {
        #[serde(default = "one")]
        rate_per_s: f64,
        #[serde(default)]
        min: f64,
        #[serde(default = "hundred")]
        max: f64,
    },
    Step {
        levels: Vec<f64>,
        #[serde(default = "ten")]
        every_s: f64,
    },
    Noise {
        #[serde(default)]
        mean: f64,
        #[serde(default = "one")]
        stddev: f64,
        #[serde(default)]
        seed: u64,
    },
    Toggle {
        #[serde(default = "five")]
        every_s: f64,
    },
    SimOutput {
        #[serde(default = "initial_false")]
        initial: Initial,
    },
    /// Blocks `read_ms` per read, like a DS18B20's conversion.
    Slow {
        #[serde(default = "thousand")]
        read_ms: u64,
    },
    // Any Linux.
    ThermalZone {
        #[serde(default)]
        zone: u32,
    },
    Hwmon {
        chip: String,
        #[serde(default = "temp1")]
        input: String,
    },
    LoadAvg {
        #[serde(default = "minute")]
        minutes: u32,
    },
    Memory {
        #[serde(default = "used_percent")]
        metric: String,
    },
    Disk {
        #[serde(default = "slash")]
        path: String,
        #[serde(default = "used_percent")]
        metric: String,
    },
    Net {
        interface: String,
        /// "rx" or "tx".
        direction: String,
    },
    // Raspberry Pi.
    SocTemp {},
    Ds18b20 {
        #[serde(default)]
        id: Option<String>,
    },
    GpioIn {
        #[serde(default = "gpiochip0")]
        chip: String,
        line: u32,
        #[serde(default)]
        active_low: bool,
    },
    GpioOut {
        #[serde(default = "gpiochip0")]
        chip: String,
        line: u32,
        #[serde(default)]
        active_low: bool,
        #[serde(default)]
        initial: bool,
    },
    // Field I/O.
    /// One point of a device behind a `[[modbus]]` link.
    Modbus(modbus::PointSpec),
    /// An IIO ADC input (a 4-20 mA loop through a shunt, or a voltage).
    Iio(iio::IioSpec),
}

impl DriverSpec {
    /// Builds the driver. File paths resolve under `root` (normally `/`);
    /// Modbus points go through their link in `links`.
    pub fn build(&self, root: &Path, links: &modbus::Links) -> Box<dyn Driver> {
        let sub = |p: &str| root.join(p.trim_start_matches('/'));
        match self {
            DriverSpec::Sine { amplitude, period_s, offset, phase_s } => Box::new(sim::Sine {
                amplitude: *amplitude,
                period_s: *period_s,
                offset: *offset,
                phase_s: *phase_s,
            }),
            DriverSpec::Ramp { rate_per_s, min, max } => {
                Box::new(sim::Ramp { rate_per_s: *rate_per_s, min: *min, max: *max })
            }
            DriverSpec::Step { levels, every_s } => {
                Box::new(sim::Step { levels: levels.clone(), every_s: *every_s })
            }
            DriverSpec::Noise { mean, stddev, seed } => {
                Box::new(sim::Noise { mean: *mean, stddev: *stddev, rng: fastrand::Rng::with_seed(*seed) })
            }
            DriverSpec::Toggle { every_s } => Box::new(sim::Toggle { every_s: *every_s }),
            DriverSpec::SimOutput { initial } => Box::new(sim::Output { value: initial.into() }),
            DriverSpec::Slow { read_ms } => Box::new(sim::Slow { read_ms: *read_ms }),
            DriverSpec::ThermalZone { zone } => Box::new(linux::ThermalZone::new(root, *zone)),
            DriverSpec::SocTemp {} => Box::new(linux::ThermalZone::new(root, 0)),
            DriverSpec::Hwmon { chip, input } => {
                Box::new(linux::Hwmon { root: root.into(), chip: chip.clone(), input: input.clone() })
            }
            DriverSpec::LoadAvg { minutes } => {
                Box::new(linux::LoadAvg { path: sub("proc/loadavg"), minutes: *minutes })
            }
            DriverSpec::Memory { metric } => {
                Box::new(linux::Memory { path: sub("proc/meminfo"), metric: metric.clone() })
            }
            DriverSpec::Disk { path, metric } => {
                Box::new(linux::Disk { path: sub(path), metric: metric.clone() })
            }
            DriverSpec::Net { interface, direction } => Box::new(linux::Net {
                path: sub("proc/net/dev"),
                interface: interface.clone(),
                transmit: direction == "tx",
            }),
            DriverSpec::Ds18b20 { id } => Box::new(rpi::Ds18b20::new(root, id.clone())),
            DriverSpec::GpioIn { chip, line, active_low } => {
                Box::new(rpi::Gpio::new(chip, *line, *active_low, None))
            }
            DriverSpec::GpioOut { chip, line, active_low, initial } => {
                Box::new(rpi::Gpio::new(chip, *line, *active_low, Some(*initial)))
            }
            DriverSpec::Modbus(spec) => Box::new(modbus::driver::Modbus::new(spec, links)),
            DriverSpec::Iio(spec) => Box::new(spec.build(root)),
        }
    }

    pub fn default_unit(&self) -> &'static str {
        match self {
            DriverSpec::ThermalZone { .. } | DriverSpec::SocTemp {} | DriverSpec::Ds18b20 { .. } => "degC",
            DriverSpec::Hwmon { input, .. } if input.starts_with("temp") => "degC",
            DriverSpec::Hwmon { input, .. } if input.starts_with("in") => "V",
            DriverSpec::Hwmon { input, .. } if input.starts_with("fan") => "rpm",
            DriverSpec::Memory { metric, .. } | DriverSpec::Disk { metric, .. }
                if metric.ends_with("percent") =>
            {
                "%"
            }
            DriverSpec::Memory { .. } | DriverSpec::Disk { .. } | DriverSpec::Net { .. } => "bytes",
            DriverSpec::Iio(spec) => spec.default_unit(),
            _ => "",
        }
    }

    /// What a Modbus point's `ref` became, for the log.
    pub fn modbus_reference(&self) -> Option<String> {
        match self {
            DriverSpec::Modbus(point) => point.describe_reference(),
            _ => None,
        }
    }

    /// Checks parameters serde cannot (called when the config is validated).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            DriverSpec::Step { levels, .. } if levels.is_empty() => {
                Err("step: `levels` needs at least one value".into())
            }
            DriverSpec::LoadAvg { minutes } if ![1, 5, 15].contains(minutes) => {
                Err(format!("load-avg: `minutes` must be 1, 5 or 15, not {minutes}"))
            }
            DriverSpec::Net { direction, .. } if direction != "rx" && direction != "tx" => {
                Err(format!("net: `direction` must be \"rx\" or \"tx\", not {direction:?}"))
            }
            DriverSpec::Sine { period_s, .. } if *period_s <= 0.0 => {
                Err("sine: `period_s` must be positive".into())
            }
            DriverSpec::Modbus(spec) => spec.validate(),
            DriverSpec::Iio(spec) => spec.validate(),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct File {
        channel: Vec<ChannelConfig>,
    }

    #[test]
    fn channels_parse_from_toml_with_defaults() {
        let file: File = toml::from_str(
            r#"
            [[channel]]
            name = "tank"
            driver = { kind = "ds18b20", id = "28-01" }

            [[channel]]
            name = "wave"
            period_ms = 200
            delivery = "best-effort"
            unit = "bar"
            driver = { kind = "sine", amplitude = 2.0 }

            [[channel]]
            name = "valve"
            driver = { kind = "sim-output", initial = 3 }
            "#,
        )
        .unwrap();
        let [tank, wave, valve] = &file.channel[..] else { panic!() };
        assert_eq!((tank.period_ms, tank.delivery, tank.unit()), (1000, Delivery::Durable, "degC"));
        assert_eq!(
            wave.driver,
            DriverSpec::Sine { amplitude: 2.0, period_s: 60.0, offset: 0.0, phase_s: 0.0 }
        );
        assert_eq!((wave.delivery, wave.unit()), (Delivery::BestEffort, "bar"));
        assert_eq!(
            valve.driver.build(Path::new("/"), &Default::default()).read(std::time::Duration::ZERO).unwrap(),
            Value::Integer(3)
        );
    }

    #[test]
    fn bad_channels_name_the_problem() {
        let err =
            toml::from_str::<File>("[[channel]]\nname = \"x\"\ndriver = { kind = \"laser\" }\n").unwrap_err();
        assert!(err.to_string().contains("laser"), "{err}");
        let err =
            toml::from_str::<File>("[[channel]]\nname = \"x\"\ndriver = { kind = \"sine\", amplitud = 1 }\n")
                .unwrap_err();
        assert!(err.to_string().contains("amplitud"), "{err}");
        let step = DriverSpec::Step { levels: vec![], every_s: 1.0 };
        assert!(step.validate().unwrap_err().contains("levels"));
        assert!(DriverSpec::Net { interface: "eth0".into(), direction: "up".into() }.validate().is_err());
    }
}
