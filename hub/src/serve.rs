//! `hub serve`: start every component on its own thread and stop them all
//! together on shutdown.

use std::thread::JoinHandle;

use transport::Shutdown;

use crate::broker::{BrokerError, BrokerServer};
use crate::config::{Config, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the data directory {path}: {source} (choose another with --data-dir)")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("{0} thread panicked")]
    Panicked(&'static str),
}

/// A running hub. Dropping it does not stop it: call [`Hub::stop`] or
/// trigger the shutdown it was started with.
pub struct Hub {
    shutdown: Shutdown,
    broker_endpoint: String,
    threads: Vec<(&'static str, JoinHandle<Result<(), ServeError>>)>,
}

impl Hub {
    /// Validates the config, binds every endpoint (so errors surface here, not
    /// in a thread) and starts the components.
    pub fn start(ctx: &zmq::Context, config: &Config, shutdown: Shutdown) -> Result<Hub, ServeError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| ServeError::DataDir { path: config.data_dir.clone(), source })?;

        let broker = BrokerServer::bind(ctx, &config.broker)?;
        let broker_endpoint = broker.endpoint();
        let mut hub = Hub { shutdown, broker_endpoint, threads: Vec::new() };
        hub.spawn("broker", move |signal| broker.run(&signal).map(|_| ()).map_err(ServeError::from))?;
        Ok(hub)
    }

    /// Runs `component` on its own thread with its own shutdown signal. A
    /// component that fails stops the whole hub: half a hub is worse than none.
    fn spawn<F>(&mut self, name: &'static str, component: F) -> Result<(), ServeError>
    where
        F: FnOnce(transport::Signal) -> Result<(), ServeError> + Send + 'static,
    {
        let signal = self.shutdown.signal().map_err(ServeError::Thread)?;
        let shutdown = self.shutdown.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let result = component(signal);
                if let Err(e) = &result {
                    log::error!("{name} failed: {e}");
                    shutdown.trigger();
                }
                result
            })
            .map_err(ServeError::Thread)?;
        self.threads.push((name, thread));
        Ok(())
    }

    /// The broker's bound endpoint.
    pub fn broker_endpoint(&self) -> &str {
        &self.broker_endpoint
    }

    /// Waits for every component to stop (after shutdown is triggered); the
    /// first error wins.
    pub fn wait(self) -> Result<(), ServeError> {
        let mut result = Ok(());
        for (name, thread) in self.threads {
            let outcome = thread.join().unwrap_or(Err(ServeError::Panicked(name)));
            if let Err(e) = outcome {
                self.shutdown.trigger();
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }

    pub fn stop(self) -> Result<(), ServeError> {
        self.shutdown.trigger();
        self.wait()
    }
}
