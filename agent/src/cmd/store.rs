use std::process::ExitCode;

use agent::outbox::Outbox;
use agent::store::Store;
use argh::FromArgs;
use serde_json::json;

use super::{config_flags, CmdResult};

config_flags! {
    /// Inspect or repair a stopped agent's store: the outbox log and the local
    /// state (the running agent holds the data directory locked).
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
        action: [Action],
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

/// records, bytes, drops, quarantine, last epoch, disk use
#[derive(FromArgs)]
#[argh(subcommand, name = "status")]
pub struct Status {}

/// check every outbox record's checksum (exit 1 on damage)
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
    let dir = config.outbox_dir();
    let state_path = config.data_dir.join("store");
    if !dir.exists() && !state_path.exists() {
        return Err(format!("no store in {} (is --data-dir right?)", config.data_dir.display()).into());
    }
    // The running agent holds this lock; a store is looked at or repaired only when it is stopped.
    let _lock = agent::lock::lock(&config.data_dir)?;
    let state = || {
        Store::open_as_is(&state_path, limits.cache_bytes)
            .map_err(|e| format!("cannot open the local state at {}: {e}", state_path.display()))
    };
    match args.action {
        Action::Status(_) => {
            let outbox = Outbox::<proto::sample::Sample>::inspect(&dir)?;
            let s = outbox.stats();
            let age = outbox.oldest_wall_ns().map(|w| (agent::clock::wall_ns() - w) as f64 / 1e9);
            let store = state().ok();
            println!(
                "{}",
                json!({
                    "outbox_path": dir,
                    "outbox": s,
                    "oldest_age_s": age,
                    "recovery_needed": outbox.recovery(),
                    // The agent id each stretch of records was made under (none: not recorded).
                    "made_as": outbox.made_as().iter().map(|(first, id)| json!({"from": first, "id": &**id})).collect::<Vec<_>>(),
                    "state_path": state_path,
                    "last_epoch": store.as_ref().and_then(|s| s.get_u64("epoch").ok().flatten()),
                    "local_state_keys": store.as_ref().map(|s| s.state.len()),
                    "unsynced_state_keys": store.as_ref().map(|s| s.state_dirty.len()),
                    "state_disk_bytes": store.as_ref().map(|s| s.disk_bytes()),
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        Action::Verify(_) => {
            let outbox = Outbox::<proto::sample::Sample>::inspect(&dir)?;
            let (ok, damaged) = outbox.verify()?;
            let torn = outbox.recovery().torn_bytes;
            println!(
                "{}",
                json!({"intact": ok, "damaged": damaged, "torn_tail_bytes": torn, "quarantined": outbox.stats().quarantined})
            );
            Ok(if damaged == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Action::Dump(d) => {
            // Each record under the id it was made with; the configured one where none was recorded.
            let configured = config.agent_id();
            for (id, sample) in Outbox::<proto::sample::Sample>::inspect(&dir)?.dump(d.limit)? {
                println!("{}", sample.to_json(id.as_deref().unwrap_or(&configured), true, false));
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Repair(_) => {
            // Opening repairs: torn tails cut, damage quarantined and the segments rewritten.
            let outbox =
                Outbox::<proto::sample::Sample>::open(&dir, config.outbox_options()?, &config.agent_id())?;
            let at_open = outbox.recovery();
            let now = outbox.repair()?;
            outbox.flush()?;
            println!(
                "{}",
                json!({
                    "quarantined_now": at_open.damaged + now,
                    "torn_tail_bytes_cut": at_open.torn_bytes,
                    "quarantined_total": outbox.stats().quarantined,
                    "quarantine_file": dir.join("quarantine"),
                })
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
