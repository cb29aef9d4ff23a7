//! Dashboard sessions: a browser logs in once with an API token and then
//! holds an opaque session cookie, never the token.
//!
//! The server keeps, per session, the token it was opened with (in memory
//! only) and authenticates that token again on every request, so a revoked
//! or expired token ends its sessions at once. Sessions are found by the
//! SHA-256 of their id (the cookie's value is not kept), last at most
//! [`LIFETIME`] and [`IDLE`] without a request, and there are at most
//! [`MAX_SESSIONS`] (the least recently used goes first), at most
//! [`MAX_PER_PRINCIPAL`] of one principal (its own least recently used goes
//! first, so one token cannot log everybody else out), each with at most
//! [`MAX_STREAMS`] event streams open: nothing a caller sends grows this
//! table without bound. The cookie is `__Host-` prefixed: only this origin,
//! over HTTPS, for every path, can set it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// Sessions kept at once.
pub const MAX_SESSIONS: usize = 4096;
/// Sessions of one principal kept at once.
pub const MAX_PER_PRINCIPAL: usize = 16;
/// Event streams of one session open at once (a page holds one or two).
pub const MAX_STREAMS: usize = 8;
/// Longest a session lasts.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(3600);
/// The cookie's name.
pub const COOKIE: &str = "__Host-baton_session";

struct Session {
    token: String,
    principal: String,
    opened: Instant,
    used: Instant,
    streams: usize,
}

/// The open sessions.
#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions { .. }")
    }
}

fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Opens a session for `token` (already authenticated); returns its id,
    /// the cookie's value.
    pub fn open(&self, token: &str, principal: &str, now: Instant) -> Option<String> {
        let mut raw = [0u8; 32];
        SystemRandom::new().fill(&mut raw).ok()?;
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| live(s, now));
        let own: Vec<([u8; 32], Instant)> = map
            .iter()
            .filter(|(_, s)| s.principal == principal)
            .map(|(k, s)| (*k, s.used))
            .collect();
        if own.len() >= MAX_PER_PRINCIPAL
            && let Some((oldest, _)) = own.iter().min_by_key(|(_, used)| *used)
        {
            map.remove(oldest);
        }
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            hash(&id),
            Session {
                token: token.to_string(),
                principal: principal.to_string(),
                opened: now,
                used: now,
                streams: 0,
            },
        );
        Some(id)
    }

    /// The token of a live session, which counts as used now.
    pub fn token(&self, id: &str, now: Instant) -> Option<String> {
        let key = hash(id);
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.get_mut(&key)?;
        if !live(s, now) {
            map.remove(&key);
            return None;
        }
        s.used = now;
        Some(s.token.clone())
    }

    /// Counts one more event stream of a live session; `false` when it has
    /// [`MAX_STREAMS`] open already (or has ended).
    pub fn open_stream(&self, id: &str) -> bool {
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&hash(id)) {
            Some(s) if s.streams < MAX_STREAMS => {
                s.streams += 1;
                true
            }
            _ => false,
        }
    }

    /// An event stream of the session has ended.
    pub fn close_stream(&self, id: &str) {
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(&hash(id)) {
            s.streams = s.streams.saturating_sub(1);
        }
    }

    /// Ends a session (logout, or its token no longer authenticates).
    pub fn close(&self, id: &str) {
        self.by_hash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&hash(id));
    }

    pub fn len(&self) -> usize {
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.saturating_duration_since(s.opened) < LIFETIME
        && now.saturating_duration_since(s.used) < IDLE
}

/// The session id in a `Cookie` header, if any.
pub fn from_cookie(header: &str) -> Option<&str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == COOKIE && v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then_some(v)
    })
}

/// The `Set-Cookie` value of a new session: only over HTTPS, unreadable by
/// scripts, never sent by another site's page.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_gives_its_token_back_until_it_ends() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let id = s.open("btn_api_secret", "alice", t0).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(s.token(&id, t0).as_deref(), Some("btn_api_secret"));
        assert_eq!(s.token("0".repeat(64).as_str(), t0), None);
        // Idle too long.
        assert_eq!(s.token(&id, t0 + IDLE + Duration::from_secs(1)), None);
        assert!(s.is_empty(), "an ended session is forgotten");
        let id = s.open("t", "alice", t0).unwrap();
        s.close(&id);
        assert_eq!(s.token(&id, t0), None);
    }

    #[test]
    fn a_session_ends_after_its_lifetime_even_when_used() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let id = s.open("t", "alice", t0).unwrap();
        let mut t = t0;
        while t < t0 + LIFETIME - IDLE {
            t += IDLE / 2;
            assert!(s.token(&id, t).is_some());
        }
        assert_eq!(s.token(&id, t0 + LIFETIME), None);
    }

    #[test]
    fn the_table_is_bounded_and_drops_the_least_recently_used() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let first = s.open("first", "p0", t0).unwrap();
        for i in 1..MAX_SESSIONS {
            let who = format!("p{i}");
            s.open("x", &who, t0 + Duration::from_millis(i as u64))
                .unwrap();
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        s.open("one more", "q", t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(s.len(), MAX_SESSIONS);
        assert_eq!(s.token(&first, t0 + Duration::from_secs(10)), None);
    }

    #[test]
    fn the_cookie_is_found_among_others_and_malformed_ones_are_ignored() {
        let id = "ab".repeat(32);
        assert_eq!(
            from_cookie(&format!("x=1; {COOKIE}={id}; y=2")),
            Some(id.as_str())
        );
        assert_eq!(from_cookie(&format!("{COOKIE}=short")), None);
        assert_eq!(from_cookie(&format!("{COOKIE}={}", "zz".repeat(32))), None);
        assert!(set_cookie(&id).contains("HttpOnly; Secure; SameSite=Strict"));
    }

    #[test]
    fn one_principal_cannot_push_out_the_sessions_of_others() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let bob = s.open("bob's", "bob", t0).unwrap();
        let mut mallory = Vec::new();
        for i in 0..100 {
            mallory.push(
                s.open("m", "mallory", t0 + Duration::from_millis(i))
                    .unwrap(),
            );
        }
        let later = t0 + Duration::from_secs(1);
        assert_eq!(s.token(&bob, later).as_deref(), Some("bob's"));
        assert_eq!(s.len(), 1 + MAX_PER_PRINCIPAL);
        // Mallory's newest sessions stand, her oldest went.
        assert!(s.token(mallory.last().unwrap(), later).is_some());
        assert!(s.token(&mallory[0], later).is_none());
    }

    #[test]
    fn a_session_holds_a_bounded_number_of_streams() {
        let s = Sessions::default();
        let id = s.open("t", "alice", Instant::now()).unwrap();
        for _ in 0..MAX_STREAMS {
            assert!(s.open_stream(&id));
        }
        assert!(!s.open_stream(&id));
        s.close_stream(&id);
        assert!(s.open_stream(&id));
        assert!(!s.open_stream(&"0".repeat(64)), "no session, no stream");
    }
}
