use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

use super::CmdResult;

/// Make this agent's CURVE key pair: NAME.key (public: goes into the hub's
/// allow-list under this agent's id) and NAME.key_secret (stays here, mode
/// 0600; name it in [hub] client_cert). Existing files are never overwritten.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "keygen",
    example = "sudo agent keygen                      # /etc/plantd/keys/agent.key and agent.key_secret",
    example = "agent keygen --dir ./keys --name pi-7",
    note = "Then, on the hub: hub keys add agent.key --name <this agent's id>; and here, in [hub]: server_cert = the hub's hub.key, client_cert = the .key_secret."
)]
pub struct KeygenArgs {
    /// directory to write into (default /etc/plantd/keys)
    #[argh(option, default = "PathBuf::from(\"/etc/plantd/keys\")")]
    dir: PathBuf,
    /// the pair's file name (default agent)
    #[argh(option, default = "String::from(\"agent\")")]
    name: String,
}

pub fn run(args: KeygenArgs) -> CmdResult {
    if !agent::config::valid_name(&args.name) {
        return Err(format!("'{}' is not a usable name: use letters, digits, '-' and '_'", args.name).into());
    }
    let (public, secret) = transport::curve::write_new_pair(&args.dir, &args.name, "agent keygen")?;
    println!("{}\n{}", public.display(), secret.display());
    Ok(ExitCode::SUCCESS)
}
