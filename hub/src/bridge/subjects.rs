//! Bus topics as NATS subjects, and the message id JetStream deduplicates on.
//!
//! `org.plantd.Metric.<agent>.<channel>` → `plantd.<site>.metric.<agent>.<channel>`,
//! `org.plantd.State.<scope>` → `plantd.<site>.state.<scope>`, and any other
//! `org.plantd.<Kind>.<rest>` → `plantd.<site>.<kind>.<rest>`. A topic that
//! makes no valid subject (a space, a wildcard, an empty token) is not
//! exported, and counted.

/// The subject for `topic` at `site`, if it makes a valid one.
pub fn subject(site: &str, topic: &str) -> Option<String> {
    let rest = topic.strip_prefix("org.plantd.")?;
    let (kind, rest) = rest.split_once('.')?;
    let subject = format!("plantd.{site}.{}.{rest}", kind.to_ascii_lowercase());
    valid(&subject).then_some(subject)
}

/// The subject kind an export prefix names: `org.plantd.Metric.` → `metric`.
/// `None` for a prefix that names no kind, or names `rpc` (the subjects
/// requests arrive on, which must never be captured by a stream).
pub fn kind_of_prefix(prefix: &str) -> Option<String> {
    let (kind, _) = prefix.strip_prefix("org.plantd.")?.split_once('.')?;
    let kind = kind.to_ascii_lowercase();
    (valid(&kind) && !kind.contains('.') && kind != "rpc").then_some(kind)
}

/// The subjects a stream must take for `prefixes` to be exported from `site`
/// (`"*"` for a stream shared by every site): `plantd.<site>.<kind>.>`.
pub fn stream_subjects(site: &str, prefixes: &[String]) -> Vec<String> {
    let mut subjects: Vec<String> =
        prefixes.iter().filter_map(|p| kind_of_prefix(p)).map(|k| format!("plantd.{site}.{k}.>")).collect();
    subjects.sort();
    subjects.dedup();
    subjects
}

/// Whether a stream subject filter (`plantd.>`, `plantd.*.metric.>`)
/// takes every subject `wanted` (itself a filter) matches.
pub fn covers(filter: &str, wanted: &str) -> bool {
    let (mut f, mut w) = (filter.split('.'), wanted.split('.'));
    loop {
        match (f.next(), w.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Where central systems send requests for `site`'s services.
pub fn rpc_prefix(site: &str) -> String {
    format!("plantd.{site}.rpc.")
}

/// JetStream's deduplication id for a durable sample: one per sample, for ever.
pub fn message_id(site: &str, agent: &str, epoch: u64, seq: u64) -> String {
    format!("{site}/{agent}/{epoch}/{seq}")
}

/// A NATS subject: dot-separated tokens, none empty, no spaces or wildcards.
pub fn valid(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|t| !t.is_empty() && !t.contains(['*', '>', ' ', '\t', '\r', '\n']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_map_to_subjects_or_are_left_out() {
        assert_eq!(
            subject("plant-a", "org.plantd.Metric.pump-1.temp").as_deref(),
            Some("plantd.plant-a.metric.pump-1.temp")
        );
        assert_eq!(
            subject("plant-a", "org.plantd.State.plant").as_deref(),
            Some("plantd.plant-a.state.plant")
        );
        assert_eq!(
            subject("plant-a", "org.plantd.Event.alarm.high").as_deref(),
            Some("plantd.plant-a.event.alarm.high")
        );
        for bad in [
            "org.plantd.Metric.a b.t",
            "org.plantd.Metric.>",
            "org.plantd.State.",
            "other.topic",
            "org.plantd.Metric",
        ] {
            assert_eq!(subject("plant-a", bad), None, "{bad}");
        }
        assert_eq!(message_id("plant-a", "pump-1", 7, 42), "plant-a/pump-1/7/42");
    }

    #[test]
    fn streams_take_the_exported_kinds_and_never_requests() {
        let prefixes = [
            "org.plantd.Metric.".to_string(),
            "org.plantd.State.plant".into(),
            "org.plantd.Metric.pump".into(),
        ];
        assert_eq!(stream_subjects("*", &prefixes), ["plantd.*.metric.>", "plantd.*.state.>"]);
        for bad in ["org.plantd.", "org.plantd.Rpc.", "org.plantd.Metric", "other.Metric."] {
            assert_eq!(kind_of_prefix(bad), None, "{bad}");
        }
        assert!(covers("plantd.>", "plantd.plant-a.metric.>"));
        assert!(covers("plantd.*.metric.>", "plantd.plant-a.metric.>"));
        assert!(covers("plantd.plant-a.>", "plantd.plant-a.metric.>"));
        assert!(!covers("plantd.plant-b.>", "plantd.plant-a.metric.>"));
        assert!(!covers("plantd.*.state.>", "plantd.plant-a.metric.>"));
        assert!(!covers("plantd.*.metric.*", "plantd.plant-a.metric.>"));
    }
}
