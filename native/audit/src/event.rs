//! The Append path's event check, in native code: `record.make_event`'s answer for an event it can be
//! sure of without Python — the common case, an event a ztmesh emitter validated and sanitized before
//! sending it — and a doubt for every other.
//!
//! Like the walk, it only ever says "sure" or "in doubt". Sure means make_event would accept the event
//! and change nothing but the event id's case and the time's spelling, which it returns. In doubt
//! (anything not spelled exactly as below, a refusal, something sanitization might change) means
//! `make_event` decides, names the problem, and sanitizes. So what is stored is the same either way;
//! tests/audit/test_native_event.py holds the two to that on random and hostile events.
//!
//! Why native: make_event costs ~50 us an event in Python, most of it in asking whether the details
//! need sanitizing (`sanitize.unchanged`); this answers in ~1-2 us.

use std::sync::OnceLock;

use aho_corasick::AhoCorasick;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use crate::walk::civil_date;

// record.py's patterns, over ASCII only (Python's \w also takes other scripts' letters: a doubt here).
const SERVICE_MAX: usize = 63; // ^[a-z][a-z0-9-]{0,62}$
const ACTION_MAX: usize = 128; // ^[A-Za-z/][\w./:-]{0,127}$
const OUTCOME_MAX: usize = 32; // ^[A-Z][A-Z0-9_]{0,31}$
const LAST_SECOND: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z, record._LATEST
const MAX_CONTAINERS: usize = 32; // sanitize.MAX_DEPTH: `_nothing_to_change` counts every { and [
                                  // sanitize.SECRET_KEY_HINTS and SECRET_VALUE_HINTS: a string holding one goes to Python, which looks closer.
const KEY_HINTS: [&[u8]; 16] = [
    b"author",
    b"cookie",
    b"token",
    b"pass",
    b"pwd",
    b"secret",
    b"credential",
    b"jwt",
    b"otp",
    b"key",
    b"bearer",
    b"session",
    b"csrf",
    b"xsrf",
    b"pin",
    b"cvv",
];
const VALUE_HINTS: [&[u8]; 6] = [b"bearer", b"basic", b"digest", b"negotiate", b"eyj", b"-----begin"];

fn text<'a>(value: &'a Bound<'_, PyAny>) -> Option<&'a str> {
    value.cast::<PyString>().ok()?.to_str().ok() // not a str, or one with a lone surrogate: a doubt
}

/// normalize_event_id for the 8-4-4-4-12 hex form without surrounding space: its lowercase spelling.
fn lowercase_event_id(id: &str) -> Option<String> {
    let bytes = id.as_bytes();
    let well_formed = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    well_formed.then(|| id.to_ascii_lowercase())
}

fn name(value: &str, max: usize, first: fn(u8) -> bool, rest: fn(u8) -> bool) -> bool {
    let b = value.as_bytes();
    !b.is_empty() && b.len() <= max && first(b[0]) && b[1..].iter().all(|c| rest(*c))
}

fn is_lower(b: u8) -> bool {
    b.is_ascii_lowercase()
}

fn is_upper(b: u8) -> bool {
    b.is_ascii_uppercase()
}

fn service_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

fn action_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'/'
}

fn action_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_./:-".contains(&b)
}

fn outcome_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
}

/// record._text: no control character, at most `limit` characters.
fn plain(value: &str, limit: usize) -> bool {
    let short = if value.is_ascii() {
        value.len() <= limit
    } else {
        value.chars().count() <= limit
    };
    short && !value.bytes().any(|b| b < 0x20 || b == 0x7f)
}

/// normalize_time of a protobuf Timestamp (ToDatetime truncates nanoseconds to microseconds) from 1970 to
/// the last second of 9999 but one: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn time(seconds: i64, nanos: i64) -> Option<String> {
    if !(0..LAST_SECOND).contains(&seconds) || !(0..1_000_000_000).contains(&nanos) {
        return None;
    }
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_date(days);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        nanos / 1000
    ))
}

/// Whether a string of the details would pass `sanitize._nothing_to_change` untouched, or may not.
fn string_is_plain(s: &[u8], key: bool) -> bool {
    // is_secret_key also joins a key's words ("to-ken" is a token): the key hints are looked for in its
    // letters and digits alone.
    let letters: Vec<u8> = if key {
        s.iter().copied().filter(u8::is_ascii_alphanumeric).collect()
    } else {
        Vec::new()
    };
    let keys = KEY_FINDER.get_or_init(|| hint_finder(&KEY_HINTS));
    let values = VALUE_FINDER.get_or_init(|| hint_finder(&VALUE_HINTS));
    if (key && keys.is_match(&letters)) || values.is_match(s) {
        return false;
    }
    // An IPv6 candidate (sanitize._IPV6) holds two colons with at most four hex digits between them.
    let mut colon: Option<usize> = None;
    for (i, b) in s.iter().enumerate() {
        if *b == b':' {
            if colon.is_some_and(|c| s[c + 1..i].iter().all(u8::is_ascii_hexdigit) && i - c <= 5) {
                return false;
            }
            colon = Some(i);
        }
    }
    // An IPv4 address masking would change: four dotted numbers, the last not 0. Checked from the start of
    // every run of digits (a superset of where the regex finds them).
    if s.iter().filter(|b| **b == b'.').count() >= 3 {
        for start in 0..s.len() {
            if s[start].is_ascii_digit() && (start == 0 || !s[start - 1].is_ascii_digit()) {
                if let Some(last) = dotted_quad_last(&s[start..]) {
                    if last != b"0" {
                        return false;
                    }
                }
            }
        }
    }
    true
}

/// Finds any of `hints` in either case (Aho-Corasick: one pass over the string for all of them; the
/// details check asks this of every string in the document).
fn hint_finder(hints: &[&[u8]]) -> AhoCorasick {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(hints)
        .expect("a handful of short literal hints")
}

static KEY_FINDER: OnceLock<AhoCorasick> = OnceLock::new();
static VALUE_FINDER: OnceLock<AhoCorasick> = OnceLock::new();

/// The last number of `\d+\.\d+\.\d+\.\d+` at the start of `s` (greedy, as the regex takes it), if it is there.
fn dotted_quad_last(s: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    for part in 0..4 {
        if part > 0 {
            if s.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
        let start = at;
        while s.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        if part == 3 {
            return Some(&s[start..at]);
        }
    }
    None
}

/// A strict reader of canonical JSON as `sanitize.unchanged` accepts it: ASCII, no escapes, no space, keys
/// in ascending order, numbers as JCS and orjson both spell them, nothing sanitization would change.
struct Details<'a> {
    b: &'a [u8],
    at: usize,
    containers: usize,
}

impl<'a> Details<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.at += usize::from(found);
        found
    }

    fn value(&mut self) -> bool {
        match self.peek() {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => self.string(false).is_some(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let found = self.b[self.at..].starts_with(word);
        self.at += if found { word.len() } else { 0 };
        found
    }

    fn open(&mut self) -> bool {
        self.containers += 1;
        self.at += 1;
        self.containers < MAX_CONTAINERS
    }

    fn object(&mut self) -> bool {
        if !self.open() {
            return false;
        }
        if self.eat(b'}') {
            return true;
        }
        let mut previous: Option<&[u8]> = None;
        loop {
            let Some(key) = self.string(true) else { return false };
            if previous.is_some_and(|p| p >= key) || !self.eat(b':') || !self.value() {
                return false; // out of order or repeated (orjson's sorted output differs), or not JSON
            }
            previous = Some(key);
            if self.eat(b'}') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    fn array(&mut self) -> bool {
        if !self.open() {
            return false;
        }
        if self.eat(b']') {
            return true;
        }
        loop {
            if !self.value() {
                return false;
            }
            if self.eat(b']') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    fn string(&mut self, key: bool) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.at;
        let length = self.b[start..].iter().position(|b| *b == b'"')?;
        let s: &'a [u8] = &self.b[start..start + length];
        self.at = start + length + 1;
        // JSON needs control characters escaped; DEL, which it does not, is left to Python too.
        let clean = s.iter().all(|b| (0x20..0x7f).contains(b)) && string_is_plain(s, key);
        clean.then_some(s)
    }

    /// A number spelled as orjson writes it and as `sanitize._plain_numbers` lets through: no exponent, no
    /// `-0`, no integral float, no `.0000`, no run of 16 digits; a fraction must be the shortest spelling
    /// that reads back as the same double (what both CPython's repr and orjson write).
    fn number(&mut self) -> bool {
        let start = self.at;
        self.eat(b'-');
        let whole = self.digits();
        if whole == 0 || whole >= 16 || (whole > 1 && self.b[self.at - whole] == b'0') {
            return false;
        }
        let mut fraction = 0;
        if self.eat(b'.') {
            fraction = self.digits();
            if fraction == 0 || fraction >= 16 {
                return false;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            return false;
        }
        let token = &self.b[start..self.at];
        if fraction == 0 {
            return token != b"-0";
        }
        if token.ends_with(b".0") || token.windows(5).any(|w| w == b".0000") {
            return false;
        }
        if token.ends_with(b"0") {
            return false; // a trailing zero: never the shortest spelling
        }
        // Up to 15 significant digits, every decimal reads as a double no other decimal of as few digits
        // reads as, so it is that double's shortest spelling; beyond, ask the formatter.
        let significant = token.iter().filter(|b| b.is_ascii_digit()).count()
            - token
                .iter()
                .filter(|b| b.is_ascii_digit())
                .take_while(|b| **b == b'0')
                .count();
        if significant <= 15 {
            return true;
        }
        let spelled = std::str::from_utf8(token).expect("ASCII");
        spelled
            .parse::<f64>()
            .is_ok_and(|v| v.is_finite() && v.to_string() == spelled)
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }
}

/// Whether `sanitize` would keep the details text as it is, decided without Python; false is a doubt.
pub fn details_unchanged(text: &str, max_bytes: usize) -> bool {
    let b = text.as_bytes();
    if b.len() > max_bytes || !text.is_ascii() || b.contains(&b'\\') || b.first() != Some(&b'{') {
        return false;
    }
    let mut reader = Details {
        b,
        at: 0,
        containers: 0,
    };
    reader.object() && reader.at == b.len()
}

/// make_event's masked paths from the ones the emitter reports it masked: each a JSON Pointer or empty
/// (dropped), sorted and without repeats; None for anything else.
fn masked_paths(masked: &[&str], limit: usize, most: usize) -> Option<Vec<String>> {
    if masked.len() > most {
        return None;
    }
    let mut paths = Vec::with_capacity(masked.len());
    for path in masked {
        if !plain(path, limit) || !(path.is_empty() || path.starts_with('/')) {
            return None;
        }
        if !path.is_empty() {
            paths.push((*path).to_owned());
        }
    }
    paths.sort_unstable(); // UTF-8 byte order is code point order: Python's sorted()
    paths.dedup();
    Some(paths)
}

/// An event's texts that are stored as they are sent: what the check reads and the record holds.
pub struct Texts<'a> {
    pub service: &'a str,
    pub action: &'a str,
    pub outcome: &'a str,
    pub caller: &'a str,
    pub subject: &'a str,
    pub resource: &'a str,
    pub details: &'a str,
    pub decision_id: &'a str,
    pub trace_id: &'a str,
}

/// An AuditEvent as sent: its id, time (a protobuf Timestamp's seconds and nanos) and masked paths as
/// the emitter wrote them, which make_event normalizes, and the texts it keeps.
pub struct Sent<'a> {
    pub event_id: &'a str,
    pub seconds: i64,
    pub nanos: i64,
    pub texts: Texts<'a>,
    pub masked: Vec<&'a str>,
}

/// record.Limits: what the audit service is configured to accept.
#[derive(Clone, Copy)]
pub struct Limits {
    pub details_bytes: usize,
    pub text_chars: usize,
    pub id_chars: usize,
    pub masked: usize,
}

/// `record.make_event`'s event id, time and masked paths for an event it would accept as sent, or None
/// (a doubt: make_event decides).
pub fn check(sent: &Sent<'_>, limits: Limits) -> Option<(String, String, Vec<String>)> {
    let id = lowercase_event_id(sent.event_id)?;
    let when = time(sent.seconds, sent.nanos)?;
    let names = name(sent.texts.service, SERVICE_MAX, is_lower, service_char)
        && name(sent.texts.action, ACTION_MAX, action_start, action_char)
        && name(sent.texts.outcome, OUTCOME_MAX, is_upper, outcome_char);
    let texts = (sent.texts.caller.is_empty() || sent.texts.caller.starts_with("spiffe://"))
        && plain(sent.texts.caller, limits.text_chars)
        && plain(sent.texts.subject, limits.text_chars)
        && plain(sent.texts.resource, limits.text_chars)
        && plain(sent.texts.decision_id, limits.id_chars)
        && plain(sent.texts.trace_id, limits.id_chars);
    if !(names && texts && details_unchanged(sent.texts.details, limits.details_bytes)) {
        return None;
    }
    Some((id, when, masked_paths(&sent.masked, limits.text_chars, limits.masked)?))
}

/// `check` of one event's fields passed one by one (record.checked_event).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (event_id, seconds, nanos, service, action, outcome, caller, subject, resource, details,
                    masked, decision_id, trace_id, max_details_bytes, max_text_chars, max_id_chars, max_masked))]
pub fn check_event(
    event_id: &Bound<'_, PyAny>,
    seconds: i64,
    nanos: i64,
    service: &Bound<'_, PyAny>,
    action: &Bound<'_, PyAny>,
    outcome: &Bound<'_, PyAny>,
    caller: &Bound<'_, PyAny>,
    subject: &Bound<'_, PyAny>,
    resource: &Bound<'_, PyAny>,
    details: &Bound<'_, PyAny>,
    masked: &Bound<'_, PyList>,
    decision_id: &Bound<'_, PyAny>,
    trace_id: &Bound<'_, PyAny>,
    max_details_bytes: usize,
    max_text_chars: usize,
    max_id_chars: usize,
    max_masked: usize,
) -> Option<(String, String, Vec<String>)> {
    let masked_items: Vec<Bound<'_, PyAny>> = masked.iter().collect();
    let sent = Sent {
        event_id: text(event_id)?,
        seconds,
        nanos,
        texts: Texts {
            service: text(service)?,
            action: text(action)?,
            outcome: text(outcome)?,
            caller: text(caller)?,
            subject: text(subject)?,
            resource: text(resource)?,
            details: text(details)?,
            decision_id: text(decision_id)?,
            trace_id: text(trace_id)?,
        },
        masked: masked_items.iter().map(text).collect::<Option<_>>()?,
    };
    let limits = Limits {
        details_bytes: max_details_bytes,
        text_chars: max_text_chars,
        id_chars: max_id_chars,
        masked: max_masked,
    };
    check(&sent, limits)
}

/// `details_unchanged` on its own: for the differential tests.
#[pyfunction]
pub fn details_sure(text: &str, max_bytes: usize) -> bool {
    details_unchanged(text, max_bytes)
}
