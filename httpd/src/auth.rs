//! Who may read: the token, only ever in `Authorization: Bearer`, and
//! tickets for live streams. A browser's `EventSource` cannot set a header,
//! and a token in an address ends up in logs, history and `Referer`s; so a
//! page that holds the token asks [`TICKET_PATH`] (with the header) for a
//! ticket, and opens the stream with `?ticket=`: random, good once, for a
//! few seconds, and for nothing but a stream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hyper::header::{HeaderMap, AUTHORIZATION};

/// Where a token holder gets a ticket: `{"ticket": "<hex>", "expires_in_s": n}`
/// (`{"ticket": null}` when the server needs no token).
pub const TICKET_PATH: &str = "/api/ticket";

/// What a request shows to be let in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    /// The token, in the header.
    Token,
    /// A ticket that was good (and is now used up).
    Ticket,
    /// `?token=` in the address: refused whatever it holds.
    TokenInQuery,
    /// A ticket unknown, used or expired.
    BadTicket,
    /// Nothing, or a wrong token.
    Nothing,
}

impl Presented {
    /// Why a request showing this is refused (its 401's text); None if it may go on.
    pub(crate) fn refusal(&self, ticket_ttl: Duration) -> Option<String> {
        let why = match self {
            Presented::Token | Presented::Ticket => return None,
            Presented::TokenInQuery => "refused: the token goes in the header `Authorization: Bearer <token>`, \
                never in the address (addresses end up in logs and browser history: if this token was sent in \
                one, replace it). The web view asks for the token on its page.\n"
                .to_string(),
            Presented::BadTicket => format!(
                "this ticket is unknown, used or expired (a ticket opens one live stream, once, within {} s): \
                 ask {TICKET_PATH} for another, with `Authorization: Bearer <token>`\n",
                ticket_ttl.as_secs_f64()
            ),
            Presented::Nothing => "this endpoint needs the HTTP token (the file in [http] token_file), in the \
                header `Authorization: Bearer <token>`; a live stream also takes a ticket from /api/ticket. The \
                web view asks for the token on its page.\n"
                .to_string(),
        };
        Some(why)
    }
}

/// The token's check, from the request's headers and query.
pub(crate) fn presented(
    token: &str,
    headers: &HeaderMap,
    param: impl Fn(&str) -> Option<String>,
    tickets: &mut Tickets,
) -> Presented {
    if param("token").is_some() {
        return Presented::TokenInQuery;
    }
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(given) = bearer {
        return if same(given.as_bytes(), token.as_bytes()) { Presented::Token } else { Presented::Nothing };
    }
    match param("ticket") {
        Some(ticket) if tickets.redeem(&ticket, Instant::now()) => Presented::Ticket,
        Some(_) => Presented::BadTicket,
        None => Presented::Nothing,
    }
}

/// Compares without stopping at the first difference (no timing hint about the token).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Tickets issued and not yet used, with when each expires; at most `max`.
#[derive(Debug)]
pub(crate) struct Tickets {
    open: HashMap<String, Instant>,
    max: usize,
    ttl: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IssueError {
    /// `max` tickets are outstanding.
    Full,
    /// The OS gave no randomness.
    Random(String),
}

impl Tickets {
    pub(crate) fn new(max: usize, ttl: Duration) -> Tickets {
        Tickets { open: HashMap::new(), max, ttl }
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new ticket, good until `now + ttl`.
    pub(crate) fn issue(&mut self, now: Instant) -> Result<String, IssueError> {
        self.purge(now);
        if self.open.len() >= self.max {
            return Err(IssueError::Full);
        }
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes).map_err(|e| IssueError::Random(e.to_string()))?;
        let ticket: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.open.insert(ticket.clone(), now + self.ttl);
        Ok(ticket)
    }

    /// Uses `ticket` up; whether it was good.
    pub(crate) fn redeem(&mut self, ticket: &str, now: Instant) -> bool {
        self.open.remove(ticket).is_some_and(|expires| now < expires)
    }

    /// Tickets outstanding (expired ones forgotten first).
    pub(crate) fn outstanding(&mut self, now: Instant) -> usize {
        self.purge(now);
        self.open.len()
    }

    fn purge(&mut self, now: Instant) {
        self.open.retain(|_, expires| now < *expires);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_good_once_until_it_expires_and_tickets_are_bounded() {
        let mut tickets = Tickets::new(2, Duration::from_secs(30));
        let t0 = Instant::now();
        let a = tickets.issue(t0).unwrap();
        let b = tickets.issue(t0).unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b, "tickets are random");
        assert_eq!(tickets.issue(t0), Err(IssueError::Full));
        assert!(tickets.redeem(&a, t0 + Duration::from_secs(1)));
        assert!(!tickets.redeem(&a, t0 + Duration::from_secs(1)), "used up");
        assert!(!tickets.redeem(&b, t0 + Duration::from_secs(30)), "expired");
        assert!(!tickets.redeem("nonsense", t0));
        let c = tickets.issue(t0 + Duration::from_secs(31)).unwrap();
        assert_eq!(tickets.outstanding(t0 + Duration::from_secs(31)), 1);
        assert_eq!(tickets.outstanding(t0 + Duration::from_secs(62)), 0, "expired ones are forgotten");
        assert!(!tickets.redeem(&c, t0 + Duration::from_secs(62)));
    }

    #[test]
    fn the_token_counts_only_in_the_header() {
        let mut tickets = Tickets::new(4, Duration::from_secs(30));
        let ticket = tickets.issue(Instant::now()).unwrap();
        let mut headers = HeaderMap::new();
        let none = |_: &str| None;
        assert_eq!(presented("s3cret", &headers, none, &mut tickets), Presented::Nothing);
        headers.insert(AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(presented("s3cret", &headers, none, &mut tickets), Presented::Token);
        let in_query = |name: &str| (name == "token").then(|| "s3cret".to_string());
        assert_eq!(presented("s3cret", &headers, in_query, &mut tickets), Presented::TokenInQuery);
        headers.insert(AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert_eq!(presented("s3cret", &headers, none, &mut tickets), Presented::Nothing);
        let with_ticket = |name: &str| (name == "ticket").then(|| ticket.clone());
        let headers = HeaderMap::new();
        assert_eq!(presented("s3cret", &headers, with_ticket, &mut tickets), Presented::Ticket);
        assert_eq!(presented("s3cret", &headers, with_ticket, &mut tickets), Presented::BadTicket);
    }
}
