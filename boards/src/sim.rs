//! The simulated board's signals: deterministic functions of time (and of a
//! seed, for noise), so a test can predict every value.

use std::f64::consts::TAU;
use std::time::Duration;

use proto::sample::Value;

use crate::driver::{Driver, DriverError};

/// `offset + amplitude × sin(2π (t + phase) / period)`.
pub struct Sine {
    pub amplitude: f64,
    pub period_s: f64,
    pub offset: f64,
    pub phase_s: f64,
}

impl Driver for Sine {
    fn read(&mut self, t: Duration) -> Result<Value, DriverError> {
        let x = (t.as_secs_f64() + self.phase_s) / self.period_s.max(f64::MIN_POSITIVE);
        Ok(Value::Number(self.offset + self.amplitude * (TAU * x).sin()))
    }
}

/// A sawtooth rising `rate_per_s` from `min`, wrapping at `max`.
pub struct Ramp {
    pub rate_per_s: f64,
    pub min: f64,
    pub max: f64,
}

impl Driver for Ramp {
    fn read(&mut self, t: Duration) -> Result<Value, DriverError> {
        let span = (self.max - self.min).abs().max(f64::MIN_POSITIVE);
        Ok(Value::Number(self.min + (self.rate_per_s * t.as_secs_f64()).rem_euclid(span)))
    }
}

/// Cycles through `levels`, holding each for `every_s`.
pub struct Step {
    pub levels: Vec<f64>,
    pub every_s: f64,
}

impl Driver for Step {
    fn read(&mut self, t: Duration) -> Result<Value, DriverError> {
        if self.levels.is_empty() {
            return Err(DriverError::Invalid("step driver needs at least one level".into()));
        }
        let i = (t.as_secs_f64() / self.every_s.max(f64::MIN_POSITIVE)) as usize % self.levels.len();
        Ok(Value::Number(self.levels[i]))
    }
}

/// Gaussian noise around `mean`, from a seeded generator: the n-th reading
/// of a given seed is always the same.
pub struct Noise {
    pub mean: f64,
    pub stddev: f64,
    pub rng: fastrand::Rng,
}

impl Driver for Noise {
    fn read(&mut self, _t: Duration) -> Result<Value, DriverError> {
        // Box–Muller.
        let u1 = self.rng.f64().max(f64::MIN_POSITIVE);
        let u2 = self.rng.f64();
        let z = (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos();
        Ok(Value::Number(self.mean + self.stddev * z))
    }
}

/// A digital input that flips every `every_s`.
pub struct Toggle {
    pub every_s: f64,
}

impl Driver for Toggle {
    fn read(&mut self, t: Duration) -> Result<Value, DriverError> {
        Ok(Value::Bool((t.as_secs_f64() / self.every_s.max(f64::MIN_POSITIVE)) as u64 % 2 == 1))
    }
}

/// An output: reads back what was last written.
pub struct Output {
    pub value: Value,
}

impl Driver for Output {
    fn read(&mut self, _t: Duration) -> Result<Value, DriverError> {
        Ok(self.value.clone())
    }

    fn write(&mut self, value: &Value) -> Result<(), DriverError> {
        self.value = value.clone();
        Ok(())
    }

    fn writable(&self) -> bool {
        true
    }
}

/// A sensor that takes `read_ms` to read, as a DS18B20 blocks ~750 ms in the
/// kernel for each conversion: the value is the time the read finished.
/// For testing that a slow sensor stalls nothing else.
pub struct Slow {
    pub read_ms: u64,
}

impl Driver for Slow {
    fn read(&mut self, t: Duration) -> Result<Value, DriverError> {
        std::thread::sleep(Duration::from_millis(self.read_ms));
        Ok(Value::Number((t + Duration::from_millis(self.read_ms)).as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(v: Value) -> f64 {
        match v {
            Value::Number(n) => n,
            other => panic!("{other:?}"),
        }
    }

    const S: fn(f64) -> Duration = Duration::from_secs_f64;

    #[test]
    fn signals_are_functions_of_time() {
        let mut sine = Sine { amplitude: 2.0, period_s: 4.0, offset: 10.0, phase_s: 0.0 };
        assert!((num(sine.read(S(0.0)).unwrap()) - 10.0).abs() < 1e-9);
        assert!((num(sine.read(S(1.0)).unwrap()) - 12.0).abs() < 1e-9);
        let mut ramp = Ramp { rate_per_s: 1.0, min: 0.0, max: 10.0 };
        assert_eq!(num(ramp.read(S(3.5)).unwrap()), 3.5);
        assert_eq!(num(ramp.read(S(13.5)).unwrap()), 3.5);
        let mut step = Step { levels: vec![1.0, 2.0, 3.0], every_s: 2.0 };
        assert_eq!(num(step.read(S(4.1)).unwrap()), 3.0);
        assert!(Step { levels: vec![], every_s: 1.0 }.read(S(0.0)).is_err());
        let mut toggle = Toggle { every_s: 1.0 };
        assert_eq!(
            (toggle.read(S(0.5)).unwrap(), toggle.read(S(1.5)).unwrap()),
            (Value::Bool(false), Value::Bool(true))
        );
    }

    #[test]
    fn noise_is_repeatable_per_seed_and_roughly_gaussian() {
        let draw = |seed| {
            let mut n = Noise { mean: 5.0, stddev: 2.0, rng: fastrand::Rng::with_seed(seed) };
            (0..2000).map(|_| num(n.read(Duration::ZERO).unwrap())).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let xs = draw(7);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
        assert!((mean - 5.0).abs() < 0.2 && (sd - 2.0).abs() < 0.2, "mean {mean}, sd {sd}");
    }

    #[test]
    fn outputs_read_back_what_was_written() {
        let mut out = Output { value: Value::Bool(false) };
        out.write(&Value::Bool(true)).unwrap();
        assert_eq!(out.read(Duration::ZERO).unwrap(), Value::Bool(true));
        assert!(Sine { amplitude: 1.0, period_s: 1.0, offset: 0.0, phase_s: 0.0 }
            .write(&Value::Bool(true))
            .is_err());
    }
}
