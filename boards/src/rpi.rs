//! Raspberry Pi: DS18B20 temperature sensors on the 1-Wire bus, and GPIO
//! lines through the Linux GPIO character device (the SoC temperature is
//! thermal zone 0, see `linux::ThermalZone`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::sample::Value;

use crate::driver::{parse_error, read_text, Driver, DriverError};

/// A DS18B20 under `/sys/bus/w1/devices/28-*/w1_slave`.
pub struct Ds18b20 {
    devices: PathBuf,
    id: Option<String>,
}

impl Ds18b20 {
    /// `id` is the sensor's directory name (`28-0316a4f2aaff`); `None` takes the first one found.
    pub fn new(root: &Path, id: Option<String>) -> Self {
        Ds18b20 { devices: root.join("sys/bus/w1/devices"), id }
    }

    fn sensor_dir(&self) -> Result<PathBuf, DriverError> {
        if let Some(id) = &self.id {
            return Ok(self.devices.join(id));
        }
        let mut ids: Vec<String> = std::fs::read_dir(&self.devices)
            .map_err(|source| DriverError::Io { path: self.devices.clone(), source })?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.starts_with("28-"))
            .collect();
        ids.sort();
        ids.first().map(|id| self.devices.join(id)).ok_or_else(|| DriverError::NotFound {
            what: "DS18B20 sensor (28-*)".into(),
            hint: format!(
                " in {}: is the w1-gpio overlay enabled (dtoverlay=w1-gpio)?",
                self.devices.display()
            ),
        })
    }
}

impl Driver for Ds18b20 {
    fn read(&mut self, _t: Duration) -> Result<Value, DriverError> {
        let (path, text) = read_text(self.sensor_dir()?.join("w1_slave"))?;
        // "xx xx ... : crc=57 YES\nxx xx ... t=23125\n"
        let mut lines = text.lines();
        let crc_line = lines.next().unwrap_or("");
        if !crc_line.trim_end().ends_with("YES") {
            return Err(parse_error(path, crc_line, "CRC check failed (noise on the bus or a loose wire)"));
        }
        let reading = lines
            .next()
            .and_then(|l| l.split("t=").nth(1))
            .ok_or_else(|| parse_error(path.clone(), &text, "no t= field"))?;
        let milli: i64 =
            reading.trim().parse().map_err(|e| parse_error(path.clone(), reading, format!("{e}")))?;
        // 85 °C is the power-on value of the scratchpad: a read before any conversion.
        if milli == 85_000 {
            return Err(parse_error(
                path,
                reading,
                "85 °C is the sensor's power-on value, not a reading (check its supply)",
            ));
        }
        Ok(Value::Number(milli as f64 / 1000.0))
    }
}

/// One GPIO line, input or output. The line is requested on first use and
/// again after a failure, so a missing chip is a channel fault, not a crash.
pub struct Gpio {
    chip: String,
    line: u32,
    active_low: bool,
    /// `Some(initial)` for an output.
    output: Option<bool>,
    request: Option<gpiocdev::Request>,
}

impl Gpio {
    /// `chip` is a path (`/dev/gpiochip0`) or a chip name (`gpiochip0`).
    pub fn new(chip: &str, line: u32, active_low: bool, output: Option<bool>) -> Self {
        let chip = if chip.contains('/') { chip.to_string() } else { format!("/dev/{chip}") };
        Gpio { chip, line, active_low, output, request: None }
    }

    fn error(&self, message: impl std::fmt::Display) -> DriverError {
        DriverError::Gpio { chip: self.chip.clone(), line: self.line, message: message.to_string() }
    }

    fn request(&mut self) -> Result<&gpiocdev::Request, DriverError> {
        if self.request.is_none() {
            let mut builder = gpiocdev::Request::builder();
            builder.on_chip(&self.chip).with_consumer("plantd-agent").with_line(self.line);
            if self.active_low {
                builder.as_active_low();
            }
            match self.output {
                Some(initial) => builder.as_output(level(initial)),
                None => builder.as_input(),
            };
            let request = builder
                .request()
                .map_err(|e| self.error(format!("{e} (does the chip exist, and may we open it?)")))?;
            self.request = Some(request);
        }
        Ok(self.request.as_ref().expect("just set"))
    }
}

fn level(on: bool) -> gpiocdev::line::Value {
    if on {
        gpiocdev::line::Value::Active
    } else {
        gpiocdev::line::Value::Inactive
    }
}

impl Driver for Gpio {
    fn read(&mut self, _t: Duration) -> Result<Value, DriverError> {
        let result = self.request()?.lone_value();
        match result {
            Ok(v) => Ok(Value::Bool(v == gpiocdev::line::Value::Active)),
            Err(e) => {
                self.request = None; // ask again next time
                Err(self.error(e))
            }
        }
    }

    fn write(&mut self, value: &Value) -> Result<(), DriverError> {
        if self.output.is_none() {
            return Err(DriverError::ReadOnly);
        }
        let on = match value {
            Value::Bool(b) => *b,
            Value::Integer(i) => *i != 0,
            other => {
                return Err(DriverError::Invalid(format!(
                    "a GPIO output takes true/false or 1/0, not {other:?}"
                )))
            }
        };
        let result = self.request()?.set_lone_value(level(on));
        result.map_err(|e| {
            self.request = None;
            self.error(e)
        })
    }

    fn writable(&self) -> bool {
        self.output.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensor(root: &Path, id: &str, content: &str) {
        let dir = root.join("sys/bus/w1/devices").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("w1_slave"), content).unwrap();
    }

    const T: Duration = Duration::ZERO;

    #[test]
    fn ds18b20_readings_and_faults() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        sensor(
            r,
            "28-0316a4f2aaff",
            "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
        );
        sensor(r, "28-bad", "72 01 4b 46 7f ff 0e 10 57 : crc=00 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n");
        sensor(
            r,
            "28-reset",
            "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n",
        );
        sensor(r, "28-garbled", "ff ff : crc=ff YES\nno reading here\n");
        assert_eq!(Ds18b20::new(r, None).read(T).unwrap(), Value::Number(23.125), "first sensor by name");
        let err = |id: &str| Ds18b20::new(r, Some(id.into())).read(T).unwrap_err().to_string();
        assert!(err("28-bad").contains("CRC check failed"));
        assert!(err("28-reset").contains("power-on value"));
        assert!(err("28-garbled").contains("no t= field"));
        assert!(err("28-absent").contains("28-absent/w1_slave"));
        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(empty.path().join("sys/bus/w1/devices")).unwrap();
        assert!(Ds18b20::new(empty.path(), None).read(T).unwrap_err().to_string().contains("w1-gpio"));
    }

    #[test]
    fn a_missing_gpio_chip_is_a_clear_fault_not_a_crash() {
        let mut input = Gpio::new("gpiochip99", 17, false, None);
        let err = input.read(T).unwrap_err().to_string();
        assert!(err.contains("/dev/gpiochip99") && err.contains("line 17"), "{err}");
        assert!(matches!(input.write(&Value::Bool(true)), Err(DriverError::ReadOnly)));
        let mut output = Gpio::new("/dev/gpiochip99", 4, false, Some(false));
        assert!(output.writable());
        assert!(output.write(&Value::Text("maybe".into())).unwrap_err().to_string().contains("true/false"));
        assert!(output.write(&Value::Bool(true)).is_err());
    }
}
