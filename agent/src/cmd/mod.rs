//! One module per subcommand; `ConfigArgs` are the flags they share.

pub mod check;
pub mod keygen;
pub mod modbus;
pub mod once;
pub mod run;
pub mod status;
pub mod store;

use std::path::PathBuf;

use agent::config::Config;

pub use plumbing::CmdResult;

/// Builds the effective config from the shared flags.
pub fn load(
    config: &Option<PathBuf>,
    hub_broker: &Option<String>,
    hub_bus: &Option<String>,
    id: &Option<String>,
    board: &Option<String>,
    data_dir: &Option<PathBuf>,
) -> Result<Config, Box<dyn std::error::Error>> {
    let mut c = match config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(v) = hub_broker {
        c.hub.broker = v.clone();
    }
    if let Some(v) = hub_bus {
        c.hub.bus = v.clone();
    }
    if let Some(v) = id {
        c.id = Some(v.clone());
    }
    if let Some(v) = board {
        c.board = v.clone();
    }
    if let Some(v) = data_dir {
        c.data_dir = v.clone();
    }
    Ok(c)
}

/// Declares the shared config flags on a subcommand's arguments. A field of
/// its own is written `name: [Type],` (its type in brackets, passed on as
/// written so argh sees `Option<...>` for what it is).
macro_rules! config_flags {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* $field:ident : [$($ty:tt)+],)* }) => {
        $(#[$meta])*
        pub struct $name {
            /// TOML config file
            #[argh(option)]
            pub config: Option<std::path::PathBuf>,
            /// the hub's broker endpoint (default tcp://127.0.0.1:9797)
            #[argh(option)]
            pub hub_broker: Option<String>,
            /// the hub's metric bus frontend (default tcp://127.0.0.1:13000)
            #[argh(option)]
            pub hub_bus: Option<String>,
            /// agent id (default: the hostname and a hardware serial suffix)
            #[argh(option)]
            pub id: Option<String>,
            /// board profile: sim, linux, rpi-zero2w, rpi3, rpi4, rpi5 (default sim)
            #[argh(option)]
            pub board: Option<String>,
            /// data directory (default ./data/agent)
            #[argh(option)]
            pub data_dir: Option<std::path::PathBuf>,
            $($(#[$fmeta])* pub $field: $($ty)+,)*
        }

        impl $name {
            pub fn load(&self) -> Result<agent::config::Config, Box<dyn std::error::Error>> {
                super::load(&self.config, &self.hub_broker, &self.hub_bus, &self.id, &self.board, &self.data_dir)
            }
        }
    };
}
pub(crate) use config_flags;
