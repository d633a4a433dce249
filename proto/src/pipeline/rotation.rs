//! When a recorder rotates its file, and which rotated files retention removes.
//! Pure: the recorder passes sizes and ages, these decide.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Rotate when the current file reaches this size.
    pub max_bytes: u64,
    /// Rotate a non-empty file this long after it was opened.
    pub max_age: Option<Duration>,
    /// Rotated files kept, at most.
    pub keep: u32,
    /// Rotated files older than this are removed, whatever `keep` says.
    pub retain: Option<Duration>,
}

impl Policy {
    /// Whether the current file (`size` bytes, opened `age` ago) rotates now.
    pub fn rotate_now(&self, size: u64, age: Duration) -> bool {
        size >= self.max_bytes || (size > 0 && self.max_age.is_some_and(|max| age >= max))
    }

    /// Of rotated files numbered 1 (newest) upwards, with their ages, the
    /// numbers to remove: past `keep`, or older than `retain`.
    pub fn expired(&self, rotated: &[(u32, Duration)]) -> Vec<u32> {
        rotated
            .iter()
            .filter(|(n, age)| *n > self.keep || self.retain.is_some_and(|r| *age > r))
            .map(|(n, _)| *n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn rotates_by_size_or_by_age_and_retains_by_count_and_age() {
        let p = Policy { max_bytes: 100, max_age: Some(10 * S), keep: 2, retain: Some(60 * S) };
        assert!(!p.rotate_now(99, 9 * S));
        assert!(p.rotate_now(100, S), "size");
        assert!(p.rotate_now(1, 10 * S), "age");
        assert!(!p.rotate_now(0, 100 * S), "an empty file never rotates");
        assert_eq!(p.expired(&[(1, S), (2, 61 * S), (3, S)]), [2, 3]);
        let p = Policy { max_age: None, retain: None, ..p };
        assert!(!p.rotate_now(1, 1000 * S));
        assert_eq!(p.expired(&[(1, 1000 * S), (2, S)]), Vec::<u32>::new());
    }
}
