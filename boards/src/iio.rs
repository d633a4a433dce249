//! One job: read one channel of a Linux IIO ADC (an ADS1015/ADS1115 hat, an
//! MCP3008 and its family) through sysfs and turn it into millivolts, a loop
//! current, or an engineering value.
//!
//! ```toml
//! [[channel]]
//! name = "tank_level"
//! unit = "m"
//! # A 4-20 mA level transmitter across a 250 Ω shunt into an ADS1015:
//! # 4 mA reads as 0 m, 20 mA as 10 m.
//! driver = { kind = "iio", device = "ads1015", channel = "voltage0", map = { in = [4, 20], out = [0, 10] }, shunt_ohms = 250.0 }
//! ```
//!
//! Without `shunt_ohms` the value is in mV (the kernel's voltage unit); with
//! it, in mA. `map` then maps that linearly onto the engineering unit.
//! `device` is the chip's `name` file (`ads1015`, `mcp3008`, ...) or the
//! directory name (`iio:device0`); `channel` is `voltage0`, or
//! `voltage0-voltage1` for a differential input.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::sample::Value;
use serde::{Deserialize, Serialize};

use crate::driver::{parse_error, read_text, Driver, DriverError};

/// Where the kernel lists IIO devices, relative to the root.
const DEVICES: &str = "sys/bus/iio/devices";

/// NAMUR NE 43: a live 4-20 mA loop never leaves 3.6..=21 mA unless the wire
/// broke or the transmitter (or the loop) failed, so such a reading is a
/// fault, not a measurement.
const NAMUR_LOW_MA: f64 = 3.6;
const NAMUR_HIGH_MA: f64 = 21.0;

/// The `driver` table of an IIO channel (`kind = "iio"` is the enum's tag).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IioSpec {
    /// The chip's `name` (`ads1015`) or its directory (`iio:device0`).
    pub device: String,
    /// `voltage0`, or `voltage0-voltage1` for a differential pair.
    pub channel: String,
    /// Maps mV (or mA with a shunt) linearly onto the engineering unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<Map>,
    /// The 4-20 mA loop's shunt resistor: reads mA and applies NAMUR NE 43.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shunt_ohms: Option<f64>,
}

/// A linear map: `input[0]` reads as `out[0]`, `input[1]` as `out[1]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Map {
    #[serde(rename = "in")]
    pub input: [f64; 2],
    pub out: [f64; 2],
}

impl Map {
    /// Extrapolates rather than clamps: a reading beyond the calibrated
    /// span is still information (and NAMUR judges loop faults separately).
    pub fn apply(&self, x: f64) -> f64 {
        let ([i0, i1], [o0, o1]) = (self.input, self.out);
        o0 + (x - i0) * (o1 - o0) / (i1 - i0)
    }
}

impl IioSpec {
    /// Builds the driver. Paths resolve under `root` (normally `/`).
    pub fn build(&self, root: &Path) -> Iio {
        // `build` cannot fail, so a spec that slipped past validation
        // refuses every read instead of reading a path it should not.
        Iio { root: root.into(), spec: self.clone(), dir: None, invalid: self.validate().err() }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.device.trim().is_empty() || self.device.contains('/') || self.device.contains("..") {
            return Err(format!(
                "iio: `device` must be a chip name like \"ads1015\" or a directory like \"iio:device0\", not {:?}",
                self.device
            ));
        }
        if !valid_channel(&self.channel) {
            return Err(format!(
                "iio: `channel` must look like \"voltage0\" or \"voltage0-voltage1\", not {:?}",
                self.channel
            ));
        }
        if let Some(map) = &self.map {
            if map.input.iter().chain(&map.out).any(|v| !v.is_finite()) {
                return Err("iio: `map` values must be finite numbers".into());
            }
            if map.input[0] == map.input[1] {
                return Err(format!("iio: `map.in` needs two different points, not {} twice", map.input[0]));
            }
        }
        match self.shunt_ohms {
            Some(ohms) if !(ohms.is_finite() && ohms > 0.0) => {
                Err(format!("iio: `shunt_ohms` must be a positive resistance, not {ohms}"))
            }
            _ => Ok(()),
        }
    }

    /// With a `map` the user's `unit` names the engineering unit, so there
    /// is no default to give.
    pub fn default_unit(&self) -> &'static str {
        match (&self.map, self.shunt_ohms) {
            (Some(_), _) => "",
            (None, Some(_)) => "mA",
            (None, None) => "mV",
        }
    }
}

/// `voltage0` or `voltage0-voltage1`: letters then an index, once or as a
/// pair. Anything else (a '/', "..") could point outside the device.
fn valid_channel(channel: &str) -> bool {
    let part = |p: &str| {
        let digits = p.trim_start_matches(|c: char| c.is_ascii_lowercase());
        digits.len() < p.len() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    let mut parts = channel.split('-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), None, _) => part(a),
        (Some(a), Some(b), None) => part(a) && part(b),
        _ => false,
    }
}

/// Reads one IIO channel; see the module docs.
pub struct Iio {
    root: PathBuf,
    spec: IioSpec,
    /// The device's directory once found: scanning every device's `name`
    /// each period is wasted work, but the number can change after a reboot
    /// or a hot plug, so a missing file sends us looking again.
    dir: Option<PathBuf>,
    invalid: Option<String>,
}

impl Driver for Iio {
    fn read(&mut self, _t: Duration) -> Result<Value, DriverError> {
        if let Some(reason) = &self.invalid {
            return Err(DriverError::Invalid(reason.clone()));
        }
        let millivolts = match self.dir.clone() {
            Some(dir) => match self.millivolts(&dir) {
                Err(e) if vanished(&e) => {
                    self.dir = None;
                    self.resolve_and_read()?
                }
                other => other?,
            },
            None => self.resolve_and_read()?,
        };
        self.convert(millivolts)
    }
}

/// A file that is not there (any more): the device may have renumbered.
fn vanished(e: &DriverError) -> bool {
    match e {
        DriverError::Io { source, .. } => source.kind() == ErrorKind::NotFound,
        DriverError::NotFound { .. } => true,
        _ => false,
    }
}

impl Iio {
    fn resolve_and_read(&mut self) -> Result<f64, DriverError> {
        let dir = self.resolve()?;
        self.dir = Some(dir.clone());
        self.millivolts(&dir)
    }

    /// The `iio:device*` directory whose `name` is the device (or which is
    /// named so itself).
    fn resolve(&self) -> Result<PathBuf, DriverError> {
        let base = self.root.join(DEVICES);
        let not_found = |why: &str| DriverError::NotFound {
            what: format!("iio device '{}'", self.spec.device),
            hint: format!(" under {}{why}", base.display()),
        };
        let entries = match std::fs::read_dir(&base) {
            Ok(entries) => entries,
            // No IIO device at all: most often the ADC's overlay is not loaded.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(not_found(" (it does not exist: is the ADC's dtoverlay loaded?)"))
            }
            Err(source) => return Err(DriverError::Io { path: base.clone(), source }),
        };
        // Sorted so two chips with the same name resolve the same way every time.
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("iio:device"))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        for dir in dirs {
            let name = std::fs::read_to_string(dir.join("name")).unwrap_or_default();
            if name.trim() == self.spec.device || dir.file_name().is_some_and(|f| *f == *self.spec.device) {
                return Ok(dir);
            }
        }
        Err(not_found(" (see the `name` files there)"))
    }

    /// `(raw + offset) * scale`, the sysfs ABI's formula; the kernel's
    /// voltages are in millivolts.
    fn millivolts(&self, dir: &Path) -> Result<f64, DriverError> {
        let channel = &self.spec.channel;
        let raw_path = dir.join(format!("in_{channel}_raw"));
        let (path, text) = match read_text(raw_path) {
            Err(DriverError::Io { path, source }) if source.kind() == ErrorKind::NotFound => {
                return Err(DriverError::NotFound {
                    what: format!("iio channel '{channel}' of '{}'", self.spec.device),
                    hint: format!(" ({} does not exist; {})", path.display(), channels(dir)),
                })
            }
            other => other?,
        };
        let raw: i64 =
            text.trim().parse().map_err(|e| parse_error(path, &text, format!("not an integer ({e})")))?;
        // Read every time, not cached: the scale is how a user switches the
        // ADS1x15's gain, and it can change while we run.
        let scale = self.attribute(dir, "scale")?.unwrap_or(1.0);
        let offset = self.attribute(dir, "offset")?.unwrap_or(0.0);
        Ok((raw as f64 + offset) * scale)
    }

    /// `in_<channel>_<attr>`, else the type's shared `in_<type>_<attr>`
    /// (`in_voltage_scale` when all channels share one gain), else None.
    fn attribute(&self, dir: &Path, attr: &str) -> Result<Option<f64>, DriverError> {
        let channel = &self.spec.channel;
        // The type is the channel's leading letters: `voltage` for both
        // `voltage0` and `voltage0-voltage1`.
        let kind = channel.split(|c: char| c.is_ascii_digit()).next().unwrap_or(channel);
        for name in [format!("in_{channel}_{attr}"), format!("in_{kind}_{attr}")] {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => return parse_number(path, &text).map(Some),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(source) => return Err(DriverError::Io { path, source }),
            }
        }
        Ok(None)
    }

    /// mV → mA (NAMUR-checked) → the mapped value.
    fn convert(&self, millivolts: f64) -> Result<Value, DriverError> {
        let map = |x: f64| self.spec.map.as_ref().map_or(x, |m| m.apply(x));
        let Some(ohms) = self.spec.shunt_ohms else { return Ok(Value::Number(map(millivolts))) };
        let milliamps = millivolts / ohms;
        let value = map(milliamps);
        let fault = if milliamps < NAMUR_LOW_MA {
            "below 3.6 mA, NAMUR NE 43 says the wire is broken or the transmitter failed"
        } else if milliamps > NAMUR_HIGH_MA {
            "above 21 mA, NAMUR NE 43 says a short circuit or the transmitter failed"
        } else {
            return Ok(Value::Number(value));
        };
        // The value still goes along: it tells a broken wire (0 mA) from a
        // transmitter signalling its own fault (3.6 mA or 21 mA and up).
        Err(DriverError::Bad {
            value: Some(Value::Number(value)),
            reason: format!("4-20 mA loop at {milliamps:.2} mA: {fault}"),
        })
    }
}

/// An integer or a fraction ("0.125000000", "-1.5"), as the sysfs ABI allows.
fn parse_number(path: PathBuf, text: &str) -> Result<f64, DriverError> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(parse_error(path, text, "not a finite number")),
        Err(e) => Err(parse_error(path, text, format!("not a number ({e})"))),
    }
}

/// The channels a device has, for the hint when the configured one is missing.
fn channels(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some(name.strip_prefix("in_")?.strip_suffix("_raw")?.to_owned())
        })
        .collect();
    names.sort();
    if names.is_empty() {
        "it has no in_*_raw files".into()
    } else {
        format!("it has {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = dir.path().join(DEVICES).join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        dir
    }

    fn spec(device: &str, channel: &str) -> IioSpec {
        IioSpec { device: device.into(), channel: channel.into(), map: None, shunt_ohms: None }
    }

    const T: Duration = Duration::ZERO;

    #[test]
    fn ads1115_with_a_shared_scale_reads_millivolts() {
        let root = tree(&[
            ("iio:device0/name", "mcp3008\n"),
            ("iio:device1/name", "ads1115\n"),
            ("iio:device1/in_voltage_scale", "0.125000000\n"),
            ("iio:device1/in_voltage0_raw", "16000\n"),
        ]);
        let s = spec("ads1115", "voltage0");
        assert_eq!(s.build(root.path()).read(T).unwrap(), Value::Number(2000.0));
        assert_eq!(s.default_unit(), "mV");
        // The directory name works too.
        assert_eq!(
            spec("iio:device1", "voltage0").build(root.path()).read(T).unwrap(),
            Value::Number(2000.0)
        );
    }

    #[test]
    fn a_channels_own_scale_and_offset_win_over_the_shared_ones() {
        let root = tree(&[
            ("iio:device0/name", "ads1015\n"),
            ("iio:device0/in_voltage_scale", "3\n"),
            ("iio:device0/in_voltage1_scale", "0.5\n"),
            ("iio:device0/in_voltage1_raw", "100\n"),
            ("iio:device0/in_voltage0-voltage1_raw", "-40\n"),
            ("iio:device0/in_voltage_offset", "-1.5\n"),
            ("iio:device0/in_voltage1_offset", "10\n"),
        ]);
        // (100 + 10) * 0.5
        assert_eq!(spec("ads1015", "voltage1").build(root.path()).read(T).unwrap(), Value::Number(55.0));
        // Differential: the shared `voltage` scale and offset, (-40 - 1.5) * 3
        assert_eq!(
            spec("ads1015", "voltage0-voltage1").build(root.path()).read(T).unwrap(),
            Value::Number(-124.5)
        );
    }

    fn loop_at(raw: &str) -> (tempfile::TempDir, IioSpec) {
        let root = tree(&[
            ("iio:device0/name", "ads1015\n"),
            ("iio:device0/in_voltage_scale", "0.125000000\n"),
            ("iio:device0/in_voltage0_raw", raw),
        ]);
        let mut s = spec("ads1015", "voltage0");
        s.shunt_ohms = Some(250.0);
        (root, s)
    }

    #[test]
    fn a_4_20_ma_loop_through_a_shunt_maps_to_the_engineering_unit() {
        let (root, mut s) = loop_at("24000\n"); // 3000 mV
        assert_eq!(s.default_unit(), "mA");
        assert_eq!(s.build(root.path()).read(T).unwrap(), Value::Number(12.0));
        s.map = Some(Map { input: [4.0, 20.0], out: [0.0, 10.0] });
        assert_eq!(s.default_unit(), "");
        assert_eq!(s.build(root.path()).read(T).unwrap(), Value::Number(5.0));
    }

    #[test]
    fn namur_ne_43_faults_are_bad_readings_with_their_value() {
        let map = Some(Map { input: [4.0, 20.0], out: [0.0, 10.0] });
        let (root, mut s) = loop_at("4000\n"); // 500 mV, 2 mA
        s.map = map.clone();
        match s.build(root.path()).read(T).unwrap_err() {
            DriverError::Bad { value, reason } => {
                assert_eq!(value, Some(Value::Number(-1.25)));
                assert!(reason.contains("3.6") && reason.contains("2.00 mA"), "{reason}");
                assert!(reason.contains("wire is broken"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let (root, mut s) = loop_at("44000\n"); // 5500 mV, 22 mA
        s.map = map;
        match s.build(root.path()).read(T).unwrap_err() {
            DriverError::Bad { value, reason } => {
                assert_eq!(value, Some(Value::Number(11.25)));
                assert!(reason.contains("above 21 mA") && reason.contains("short circuit"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_devices_and_channels_say_where_they_looked() {
        let root = tree(&[("iio:device0/name", "ads1015\n"), ("iio:device0/in_voltage0_raw", "1\n")]);
        let err = spec("mcp3008", "voltage0").build(root.path()).read(T).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DriverError::NotFound { .. }), "{err:?}");
        assert!(text.contains("'mcp3008'") && text.contains("sys/bus/iio/devices"), "{text}");
        let err = spec("ads1015", "voltage3").build(root.path()).read(T).unwrap_err().to_string();
        assert!(err.contains("in_voltage3_raw") && err.contains("it has voltage0"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = spec("ads1015", "voltage0").build(empty.path()).read(T).unwrap_err().to_string();
        assert!(err.contains("dtoverlay"), "{err}");
    }

    #[test]
    fn malformed_files_are_parse_errors() {
        let root = tree(&[("iio:device0/name", "ads1015\n"), ("iio:device0/in_voltage0_raw", "1.5\n")]);
        let err = spec("ads1015", "voltage0").build(root.path()).read(T).unwrap_err();
        assert!(matches!(err, DriverError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains("not an integer"), "{err}");
        let root = tree(&[
            ("iio:device0/name", "ads1015\n"),
            ("iio:device0/in_voltage0_raw", "1\n"),
            ("iio:device0/in_voltage_scale", "lots\n"),
        ]);
        let err = spec("ads1015", "voltage0").build(root.path()).read(T).unwrap_err().to_string();
        assert!(err.contains("in_voltage_scale") && err.contains("not a number"), "{err}");
    }

    #[test]
    fn a_renumbered_device_is_found_again() {
        let root = tree(&[("iio:device0/name", "ads1015\n"), ("iio:device0/in_voltage0_raw", "7\n")]);
        let mut driver = spec("ads1015", "voltage0").build(root.path());
        assert_eq!(driver.read(T).unwrap(), Value::Number(7.0));
        let base = root.path().join(DEVICES);
        std::fs::rename(base.join("iio:device0"), base.join("iio:device2")).unwrap();
        assert_eq!(driver.read(T).unwrap(), Value::Number(7.0));
        assert_eq!(driver.dir.as_deref(), Some(base.join("iio:device2").as_path()));
    }

    #[test]
    fn validate_names_the_field() {
        let ok = IioSpec {
            device: "ads1015".into(),
            channel: "voltage0-voltage1".into(),
            map: Some(Map { input: [4.0, 20.0], out: [0.0, 10.0] }),
            shunt_ohms: Some(250.0),
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = |f: &dyn Fn(&mut IioSpec)| {
            let mut s = ok.clone();
            f(&mut s);
            s.validate().unwrap_err()
        };
        for channel in ["../x", "voltage", "voltage0/../x", "0", "voltage0-", "a1-b2-c3", ""] {
            let err = bad(&|s| s.channel = channel.into());
            assert!(err.starts_with("iio: `channel`"), "{channel}: {err}");
        }
        assert!(bad(&|s| s.device = "a/b".into()).starts_with("iio: `device`"));
        assert!(bad(&|s| s.device = "".into()).starts_with("iio: `device`"));
        let err = bad(&|s| s.map = Some(Map { input: [4.0, 4.0], out: [0.0, 10.0] }));
        assert!(err.starts_with("iio: `map.in`"), "{err}");
        let err = bad(&|s| s.map = Some(Map { input: [4.0, 20.0], out: [0.0, f64::NAN] }));
        assert!(err.starts_with("iio: `map`"), "{err}");
        assert!(bad(&|s| s.shunt_ohms = Some(0.0)).starts_with("iio: `shunt_ohms`"));
        assert!(bad(&|s| s.shunt_ohms = Some(f64::INFINITY)).starts_with("iio: `shunt_ohms`"));
        // An invalid spec that reaches `build` refuses to read.
        let err = spec("ads1015", "../x").build(Path::new("/")).read(T).unwrap_err();
        assert!(matches!(err, DriverError::Invalid(_)), "{err:?}");
    }

    const TOML: &str = "device = \"ads1015\"\nchannel = \"voltage0\"\nmap = { in = [4, 20], out = [0, 10] }\nshunt_ohms = 250.0\n";

    #[test]
    fn the_spec_round_trips_through_toml() {
        let s: IioSpec = toml::from_str(TOML).unwrap();
        assert_eq!(
            s,
            IioSpec {
                device: "ads1015".into(),
                channel: "voltage0".into(),
                map: Some(Map { input: [4.0, 20.0], out: [0.0, 10.0] }),
                shunt_ohms: Some(250.0),
            }
        );
        let back: IioSpec = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let bare: IioSpec = toml::from_str("device = \"mcp3008\"\nchannel = \"voltage7\"\n").unwrap();
        assert_eq!(bare, spec("mcp3008", "voltage7"));
        assert!(toml::from_str::<IioSpec>(&format!("{TOML}gain = 2\n")).is_err());
    }

    /// How `DriverSpec` will carry it: a newtype variant of an internally
    /// tagged enum, which hands the struct every field but `kind`.
    #[test]
    fn the_spec_parses_as_a_newtype_variant_of_a_tagged_enum() {
        #[derive(Debug, Deserialize)]
        #[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
        enum Spec {
            Iio(IioSpec),
        }
        #[derive(Debug, Deserialize)]
        struct Channel {
            driver: Spec,
        }
        let c: Channel = toml::from_str(
            "driver = { kind = \"iio\", device = \"ads1015\", channel = \"voltage0\", map = { in = [4, 20], out = [0, 10] }, shunt_ohms = 250.0 }",
        )
        .unwrap();
        let Spec::Iio(s) = c.driver;
        assert_eq!(s, toml::from_str::<IioSpec>(TOML).unwrap());
        let err = toml::from_str::<Channel>(
            "driver = { kind = \"iio\", device = \"ads1015\", channel = \"voltage0\", gain = 2 }",
        )
        .unwrap_err();
        assert!(err.to_string().contains("gain"), "{err}");
    }
}
