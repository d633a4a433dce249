use std::process::ExitCode;

use agent::outbox::Outbox;
use agent::store::Store;
use argh::FromArgs;
use serde_json::json;

use super::{config_flags, CmdResult};

config_flags! {
    /// Inspect or repair a stopped agent's store (the running agent holds it locked).
    #[derive(FromArgs)]
    #[argh(
        subcommand,
        name = "store",
        example = "agent store status",
        example = "agent store verify            # exit 1 if any record is damaged",
        example = "agent store dump --limit 20",
        example = "agent store repair            # move damaged records to the quarantine"
    )]
    pub struct StoreArgs {
        #[argh(subcommand)]
        action: Action,
    }
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum Action {
    Status(Status),
    Verify(Verify),
    Dump(Dump),
    Repair(Repair),
}

/// records, bytes, drops, quarantine, epoch, disk use
#[derive(FromArgs)]
#[argh(subcommand, name = "status")]
pub struct Status {}

/// check every outbox record's checksum
#[derive(FromArgs)]
#[argh(subcommand, name = "verify")]
pub struct Verify {}

/// print the oldest outbox records as JSON lines
#[derive(FromArgs)]
#[argh(subcommand, name = "dump")]
pub struct Dump {
    /// how many records (default 100)
    #[argh(option, default = "100")]
    limit: usize,
}

/// move damaged records to the quarantine
#[derive(FromArgs)]
#[argh(subcommand, name = "repair")]
pub struct Repair {}

pub fn run(args: StoreArgs) -> CmdResult {
    let config = args.load()?;
    let limits = config.limits()?;
    let path = config.data_dir.join("store");
    if !path.exists() {
        return Err(format!("no store at {} (is --data-dir right?)", path.display()).into());
    }
    let store = Store::open_as_is(&path, limits.cache_bytes).map_err(|e| {
        format!("cannot open the store at {}: {e} (if the agent is running, stop it first: it holds the store locked)", path.display())
    })?;
    let outbox = Outbox::open(&store, limits.outbox_records, limits.outbox_bytes)?;
    match args.action {
        Action::Status(_) => {
            let s = outbox.stats();
            let age = outbox.oldest_wall_ns().map(|w| (agent::clock::wall_ns() - w) as f64 / 1e9);
            println!(
                "{}",
                json!({
                    "path": path,
                    "epoch": store.get_u64("epoch")?,
                    "outbox": s,
                    "oldest_age_s": age,
                    "quarantine": store.quarantine.len(),
                    "local_state_keys": store.state.len(),
                    "unsynced_state_keys": store.state_dirty.len(),
                    "disk_bytes": store.disk_bytes(),
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        Action::Verify(_) => {
            let (ok, damaged) = outbox.verify()?;
            println!("{}", json!({"intact": ok, "damaged": damaged, "quarantined": store.quarantine.len()}));
            Ok(if damaged == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Action::Dump(d) => {
            for sample in outbox.dump(d.limit)? {
                println!("{}", sample.to_json(&config.agent_id(), true, false));
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Repair(_) => {
            let moved = outbox.repair()?;
            store.flush()?;
            println!("{}", json!({"quarantined_now": moved, "quarantined_total": store.quarantine.len()}));
            Ok(ExitCode::SUCCESS)
        }
    }
}
