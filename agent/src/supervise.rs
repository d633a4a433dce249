//! The agent's long-running parts must not vanish quietly: one that fails
//! (an error, or a panic on its thread) is restarted after a backoff, and
//! its restarts and last error show in `status` under `tasks`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::backoff::Backoff;
use serde_json::{json, Value as Json};
use transport::ShutdownWatch;

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A task that ran this long before failing starts its backoff afresh.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default)]
struct TaskStatus {
    restarts: u64,
    last_error: Option<String>,
}

/// Restarts per supervised task, for status.
#[derive(Default)]
pub struct Tasks(Mutex<BTreeMap<&'static str, TaskStatus>>);

impl Tasks {
    fn failed(&self, name: &'static str, error: String, retry_in: Duration) {
        log::error!("{name} failed: {error}; restarting it in {retry_in:?}");
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let task = all.entry(name).or_default();
        task.restarts += 1;
        task.last_error = Some(error);
    }

    pub fn to_json(&self) -> Json {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .map(|(name, t)| (name.to_string(), json!({"restarts": t.restarts, "last_error": t.last_error})))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Runs `task` on this thread until `signal` is set, restarting it after an
/// error, a panic or an early return.
pub fn on_thread<E: std::fmt::Display>(
    name: &'static str,
    tasks: &Tasks,
    signal: &ShutdownWatch,
    mut task: impl FnMut() -> Result<(), E>,
) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut task));
        if signal.is_set() {
            return;
        }
        if started.elapsed() > HEALTHY_AFTER {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        let error = match outcome {
            Ok(Ok(())) => "it stopped".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "it panicked".to_string(),
        };
        tasks.failed(name, error, delay);
        if signal.sleep(delay) {
            return;
        }
    }
}

/// [`on_thread`] for a task on the agent's executor (which ends them all at
/// shutdown). A panic there ends the agent, with a non-zero exit.
pub async fn on_executor<E, F>(name: &'static str, tasks: &Tasks, mut task: impl FnMut() -> F)
where
    E: std::fmt::Display,
    F: Future<Output = Result<(), E>>,
{
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        let started = Instant::now();
        let error = match task().await {
            Ok(()) => "it stopped".to_string(),
            Err(e) => e.to_string(),
        };
        if started.elapsed() > HEALTHY_AFTER {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tasks.failed(name, error, delay);
        smol::Timer::after(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_task_is_restarted_and_counted_until_shutdown() {
        let shutdown = transport::Shutdown::new();
        let signal = shutdown.watch().unwrap();
        let tasks = Tasks::default();
        let mut runs = 0;
        on_thread("flaky", &tasks, &signal, || {
            runs += 1;
            match runs {
                1 => Err("broken socket"),
                2 => panic!("a bug"),
                _ => {
                    shutdown.trigger();
                    Ok(())
                }
            }
        });
        assert_eq!(runs, 3);
        let status = tasks.to_json();
        assert_eq!(status["flaky"]["restarts"], 2);
        assert_eq!(status["flaky"]["last_error"], "it panicked");
    }
}
