//! The hub's own services: what an operator asks the hub about itself
//! (`agents`, `stores`, `bridge`, `pipeline`), and its dead letters, which
//! only operators reach. Only the hub may provide them: the broker refuses
//! any worker's READY for these names.

/// Commands: `agents`, `stores`, `bridge`, `pipeline`, `sparkplug`; one frame of JSON back.
pub const SERVICE: &str = "org.plantd.Hub";

/// `dlq list | show ID | replay ID|--all | purge [SECONDS]`: they change data,
/// so `viewer` (which may call [`SERVICE`]) does not reach them.
pub const DLQ_SERVICE: &str = "org.plantd.Hub.Dlq";

/// A request to [`SERVICE`]: one frame holding the command's word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Every agent ingest has heard from.
    Agents,
    /// The hub's stores: each one writing or why not, damage found at start.
    Stores,
    /// The NATS bridge.
    Bridge,
    /// Each pipeline, per stage.
    Pipeline,
    /// The Sparkplug B edge node.
    Sparkplug,
}

impl Command {
    pub const ALL: [Command; 5] =
        [Command::Agents, Command::Stores, Command::Bridge, Command::Pipeline, Command::Sparkplug];

    pub fn word(self) -> &'static str {
        match self {
            Command::Agents => "agents",
            Command::Stores => "stores",
            Command::Bridge => "bridge",
            Command::Pipeline => "pipeline",
            Command::Sparkplug => "sparkplug",
        }
    }

    /// The command a frame names; the error the hub answers with if none.
    pub fn parse(frame: &str) -> Result<Command, String> {
        Command::ALL.into_iter().find(|c| c.word() == frame).ok_or_else(|| {
            let words: Vec<&str> = Command::ALL.iter().map(|c| c.word()).collect();
            format!("unknown command {frame:?}: use {}", words.join(", "))
        })
    }
}

/// A request to [`DLQ_SERVICE`]: one frame, `dlq list`, `dlq show ID`,
/// `dlq replay ID`, `dlq replay --all` or `dlq purge [SECONDS]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlqCommand {
    List,
    Show(u64),
    Replay(u64),
    ReplayAll,
    /// Letters older than this many seconds; every letter with `None`.
    Purge(Option<u64>),
}

/// What the dead-letter service answers a request it cannot read.
pub const DLQ_USAGE: &str = "use: dlq list | show ID | replay ID|--all | purge [SECONDS]";

impl DlqCommand {
    /// The request frame.
    pub fn encode(self) -> String {
        match self {
            DlqCommand::List => "dlq list".into(),
            DlqCommand::Show(id) => format!("dlq show {id}"),
            DlqCommand::Replay(id) => format!("dlq replay {id}"),
            DlqCommand::ReplayAll => "dlq replay --all".into(),
            DlqCommand::Purge(None) => "dlq purge".into(),
            DlqCommand::Purge(Some(seconds)) => format!("dlq purge {seconds}"),
        }
    }

    /// Reads a request frame; the error the service answers with if it cannot.
    pub fn parse(frame: &str) -> Result<DlqCommand, String> {
        let id = |id: &str| id.parse::<u64>().map_err(|_| format!("'{id}' is not a dead-letter id"));
        let words: Vec<&str> = frame.split_whitespace().collect();
        match words.as_slice() {
            ["dlq", "list"] => Ok(DlqCommand::List),
            ["dlq", "show", n] => id(n).map(DlqCommand::Show),
            ["dlq", "replay", "--all"] => Ok(DlqCommand::ReplayAll),
            ["dlq", "replay", n] => id(n).map(DlqCommand::Replay),
            ["dlq", "purge"] => Ok(DlqCommand::Purge(None)),
            ["dlq", "purge", s] => s
                .parse::<u64>()
                .map(|s| DlqCommand::Purge(Some(s)))
                .map_err(|_| format!("'{s}' is not a number of seconds")),
            _ => Err(DLQ_USAGE.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_back_what_they_write() {
        for c in Command::ALL {
            assert_eq!(Command::parse(c.word()), Ok(c));
        }
        assert!(Command::parse("agent").unwrap_err().contains("use agents, stores, bridge, pipeline"));
        let all = [
            DlqCommand::List,
            DlqCommand::Show(7),
            DlqCommand::Replay(7),
            DlqCommand::ReplayAll,
            DlqCommand::Purge(None),
            DlqCommand::Purge(Some(3600)),
        ];
        for c in all {
            assert_eq!(DlqCommand::parse(&c.encode()), Ok(c), "{}", c.encode());
        }
        assert_eq!(DlqCommand::parse("dlq show x"), Err("'x' is not a dead-letter id".into()));
        assert_eq!(DlqCommand::parse("dlq purge -1"), Err("'-1' is not a number of seconds".into()));
        assert_eq!(DlqCommand::parse("dlq"), Err(DLQ_USAGE.into()));
        assert_eq!(DlqCommand::parse("list"), Err(DLQ_USAGE.into()));
    }
}
