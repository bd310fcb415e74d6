//! The audit verifier's hot loop, in native code: `parallel_verify._walk_fast` over PostgreSQL's binary
//! COPY stream of `store_postgres.BINARY_VERIFY_COLUMNS`.
//!
//! It answers one question — are these records intact (sequence, chain link, content hash, signed head
//! hashes) — and builds the Merkle subtrees their leaves close. Records that come before their turn wait
//! for it, up to a bound: the stream is read as the rows lie on disk, and an insert can land in free space
//! of an earlier page (autovacuum records it in the free-space map), so a few rows of a later append
//! often lie before an earlier one. It never explains a failure: on the first doubt it stops; the caller reads on in sequence order from there (`restart`), and if the doubt stands
//! the Python walk (`chain._walk`) redoes the stretch and names the record and problem.
//! So anything this code does not handle exactly (a NULL, a year outside 1000..9999, bytes that are not
//! UTF-8) is a doubt, never a guess. The canonical record it hashes is the one `record.assemble` builds;
//! tests/audit/test_native_walk.py holds the two to the same bytes.
//!
//! Why native: the data comes from a database an attacker may have written to, so it is parsed in a
//! memory-safe language, and per record Python spends ~8 us decoding and hashing where this spends ~2.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::hashes::{chain_hash, leaf_hash, node_hash, to_hash, Hash};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
const HEADER_LEN: usize = SIGNATURE.len() + 8; // signature, flags, header-extension length
const FIELDS: usize = 17; // store_postgres.BINARY_VERIFY_COLUMNS
const MICROS_PER_DAY: i64 = 86_400_000_000;
const PG_EPOCH_UNIX_DAYS: i64 = 10_957; // timestamptz counts microseconds from 2000-01-01 00:00 UTC

/// One record's columns, borrowed from the stream, in BINARY_VERIFY_COLUMNS order.
type Row<'a> = [&'a [u8]; FIELDS];

enum Parsed<'a> {
    Row(Row<'a>, usize), // the columns and the bytes the tuple took
    Incomplete,          // the tuple continues in the next chunk
    Trailer,
    Malformed,
}

fn be_i16(b: &[u8]) -> i16 {
    i16::from_be_bytes([b[0], b[1]])
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_i64(b: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(b.try_into().ok()?))
}

fn parse_tuple(data: &[u8]) -> Parsed<'_> {
    if data.len() < 2 {
        return Parsed::Incomplete;
    }
    match be_i16(data) {
        -1 => return Parsed::Trailer,
        n if n as usize != FIELDS => return Parsed::Malformed,
        _ => {}
    }
    let mut row: Row = [&[]; FIELDS];
    let mut at = 2;
    for field in row.iter_mut() {
        if data.len() < at + 4 {
            return Parsed::Incomplete;
        }
        let len = be_i32(&data[at..]);
        at += 4;
        if len < 0 {
            return Parsed::Malformed; // NULL: every column is NOT NULL
        }
        let end = at + len as usize;
        if data.len() < end {
            return Parsed::Incomplete;
        }
        *field = &data[at..end];
        at = end;
    }
    Parsed::Row(row, at)
}

fn push_digits(out: &mut Vec<u8>, value: i64, width: usize) {
    let start = out.len();
    let mut v = value;
    for _ in 0..width {
        out.push(b'0' + (v % 10) as u8);
        v /= 10;
    }
    out[start..].reverse();
}

/// (year, month, day) of a count of days since 1970-01-01 (H. Hinnant, "chrono-Compatible Low-Level Date
/// Algorithms": civil_from_days).
pub(crate) fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (canonical.format_time) in quotes; false for years it does not spell so.
fn push_time(out: &mut Vec<u8>, column: &[u8]) -> bool {
    let Some(micros) = be_i64(column) else { return false };
    let days = micros.div_euclid(MICROS_PER_DAY);
    let in_day = micros.rem_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_date(days + PG_EPOCH_UNIX_DAYS);
    if !(1000..=9999).contains(&year) {
        return false;
    }
    let seconds = in_day / 1_000_000;
    out.push(b'"');
    push_digits(out, year, 4);
    out.push(b'-');
    push_digits(out, month, 2);
    out.push(b'-');
    push_digits(out, day, 2);
    out.push(b'T');
    push_digits(out, seconds / 3600, 2);
    out.push(b':');
    push_digits(out, seconds / 60 % 60, 2);
    out.push(b':');
    push_digits(out, seconds % 60, 2);
    out.push(b'.');
    push_digits(out, in_day % 1_000_000, 6);
    out.extend_from_slice(b"Z\"");
    true
}

/// A uuid column as PostgreSQL (and the stored event id) spells it, in quotes.
fn push_uuid(out: &mut Vec<u8>, column: &[u8]) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if column.len() != 16 {
        return false;
    }
    out.push(b'"');
    for (i, byte) in column.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        out.push(HEX[(byte >> 4) as usize]);
        out.push(HEX[(byte & 15) as usize]);
    }
    out.push(b'"');
    true
}

/// A text column as a JSON string literal, escaped as CPython's `json.encoder.encode_basestring` does
/// (canonical.quote): `"` and `\`, \b \f \n \r \t, other controls as \u00xx; everything else as UTF-8.
pub(crate) fn push_quoted(out: &mut Vec<u8>, column: &[u8]) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if std::str::from_utf8(column).is_err() {
        return false;
    }
    out.push(b'"');
    if !column.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(column); // the usual case: nothing to escape
        out.push(b'"');
        return true;
    }
    for &byte in column {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(byte >> 4) as usize],
                HEX[(byte & 15) as usize],
            ]),
            _ => out.push(byte),
        }
    }
    out.push(b'"');
    true
}

/// How one column is spelled in the canonical record.
enum Value<'a> {
    Text(&'a [u8]), // a JSON string (push_quoted)
    Json(&'a [u8]), // stored canonical JSON, as it is (details, masked)
    Uuid(&'a [u8]),
    Time(&'a [u8]),
    Number(i64),
}

/// The canonical record (record.assemble: keys in sorted order) from one row; None if it cannot be spelled.
fn assemble(out: &mut Vec<u8>, row: &Row, schema: &[u8]) -> Option<i64> {
    use Value::{Json, Number, Text, Time, Uuid};
    let [sequence, recorded_at, event_id, time, service, emitter, caller, subject, action, resource, outcome, decision_id, trace_id, _prev, _hash, masked, details] =
        *row;
    let sequence = be_i64(sequence)?;
    let fields: [(&[u8], Value); 15] = [
        (b"{\"action\":", Text(action)),
        (b",\"caller\":", Text(caller)),
        (b",\"decision_id\":", Text(decision_id)),
        (b",\"details\":", Json(details)),
        (b",\"emitter\":", Text(emitter)),
        (b",\"event_id\":", Uuid(event_id)),
        (b",\"masked\":", Json(masked)),
        (b",\"outcome\":", Text(outcome)),
        (b",\"recorded_at\":", Time(recorded_at)),
        (b",\"resource\":", Text(resource)),
        (b",\"sequence\":", Number(sequence)),
        (b",\"service\":", Text(service)),
        (b",\"subject\":", Text(subject)),
        (b",\"time\":", Time(time)),
        (b",\"trace_id\":", Text(trace_id)),
    ];
    out.clear();
    for (key, value) in fields {
        out.extend_from_slice(key);
        let spelled = match value {
            Text(text) => push_quoted(out, text),
            Json(json) => {
                out.extend_from_slice(json);
                true
            }
            Uuid(id) => push_uuid(out, id),
            Time(moment) => push_time(out, moment),
            Number(n) => {
                out.extend_from_slice(n.to_string().as_bytes());
                true
            }
        };
        if !spelled {
            return None;
        }
    }
    out.extend_from_slice(b",\"v\":");
    out.extend_from_slice(schema);
    out.push(b'}');
    Some(sequence)
}

/// A walk over records first.. of one stretch, fed the binary COPY stream in chunks of whole messages.
#[pyclass(module = "ztmesh_audit_native")]
pub struct BinaryWalk {
    first: i64,
    expected: i64,
    prev: Vec<u8>,
    heads: HashMap<i64, Vec<Vec<u8>>>, // sequence -> the head hashes checkpoints sign for it
    schema: Vec<u8>,
    build: bool,
    levels: Vec<u32>, // the frontier inside the current 2^bits subtree, lowest level last
    hashes: Vec<Hash>,
    wanted: HashSet<i64>,
    bits: u32,
    roots: Vec<Hash>,
    tails: HashMap<i64, Vec<Hash>>,
    pending: Vec<u8>,              // the start of a tuple the last chunk cut
    early: BTreeMap<i64, Vec<u8>>, // tuples that came before their turn, by sequence
    early_limit: usize,
    header_done: bool,
    ended: bool,
    intact: bool,
    body: Vec<u8>,
}

impl BinaryWalk {
    fn header(&mut self, data: &[u8]) -> Option<usize> {
        if data.len() < HEADER_LEN {
            return Some(0);
        }
        let flags = be_i32(&data[SIGNATURE.len()..]);
        let extension = be_i32(&data[SIGNATURE.len() + 4..]);
        if &data[..SIGNATURE.len()] != SIGNATURE || flags & (1 << 16) != 0 || extension < 0 {
            return None; // not binary COPY, or rows with OIDs
        }
        let end = HEADER_LEN + extension as usize;
        if data.len() < end {
            return Some(0);
        }
        self.header_done = true;
        Some(end)
    }

    fn check(&mut self, row: &Row) -> bool {
        let Some(sequence) = assemble(&mut self.body, row, &self.schema) else {
            return false;
        };
        let (prev_hash, digest) = (row[13], row[14]);
        if sequence != self.expected || prev_hash != self.prev.as_slice() {
            return false;
        }
        if chain_hash(&self.prev, &self.body).as_slice() != digest {
            return false;
        }
        if let Some(signed) = self.heads.get(&sequence) {
            if signed.iter().any(|h| h.as_slice() != digest) {
                return false;
            }
        }
        if self.build {
            let mut current = leaf_hash(&self.body);
            let mut level = 0;
            while self.levels.last() == Some(&level) {
                self.levels.pop();
                let left = self.hashes.pop().expect("levels and hashes move together");
                current = node_hash(&left, &current);
                level += 1;
            }
            if level == self.bits {
                self.roots.push(current);
            } else {
                self.levels.push(level);
                self.hashes.push(current);
                if self.wanted.contains(&sequence) {
                    self.tails.insert(sequence, self.hashes.clone());
                }
            }
        }
        self.prev.clear();
        self.prev.extend_from_slice(digest);
        self.expected += 1;
        true
    }

    fn feed_chunk(&mut self, data: &[u8]) -> bool {
        if !self.intact || self.ended {
            self.intact &= data.is_empty(); // bytes after the trailer are not binary COPY
            return self.intact;
        }
        if self.pending.is_empty() {
            let used = self.walk(data);
            self.pending.extend_from_slice(&data[used..]);
        } else {
            let mut joined = std::mem::take(&mut self.pending);
            joined.extend_from_slice(data);
            let used = self.walk(&joined);
            joined.drain(..used);
            self.pending = joined;
        }
        self.intact
    }

    /// The records that came early and whose turn it now is.
    fn check_early(&mut self) {
        while self.intact {
            let Some(tuple) = self.early.remove(&self.expected) else {
                break;
            };
            self.intact = matches!(parse_tuple(&tuple), Parsed::Row(row, _) if self.check(&row));
        }
    }

    fn walk(&mut self, data: &[u8]) -> usize {
        let mut at = 0;
        if !self.header_done {
            match self.header(data) {
                None => {
                    self.intact = false;
                    return data.len();
                }
                Some(0) => return 0,
                Some(end) => at = end,
            }
        }
        while self.intact && !self.ended {
            match parse_tuple(&data[at..]) {
                Parsed::Incomplete => break,
                Parsed::Trailer => {
                    self.ended = true;
                    at += 2;
                }
                Parsed::Malformed => self.intact = false,
                Parsed::Row(row, used) => match be_i64(row[0]) {
                    Some(sequence) if sequence > self.expected && self.early.len() < self.early_limit => {
                        let tuple = data[at..at + used].to_vec();
                        if self.early.insert(sequence, tuple).is_some() {
                            self.intact = false; // the same sequence twice
                        } else {
                            at += used;
                        }
                    }
                    _ => {
                        if self.check(&row) {
                            at += used;
                            self.check_early();
                        } else {
                            self.intact = false;
                        }
                    }
                },
            }
        }
        at
    }
}

#[pymethods]
impl BinaryWalk {
    /// As `_walk_fast`: `anchor` the stored hash before `first`, `heads` sequence -> signed head hashes,
    /// `seed` the frontier inside the first subtree (None: build no tree), `sizes` the sizes whose
    /// frontier to keep, `schema` the record's "v" as text.
    #[new]
    /// `early_limit`: how many records may come before their turn and wait for it (more is a doubt).
    #[pyo3(signature = (first, anchor, heads, seed, sizes, bits, schema, early_limit=16384))]
    #[allow(clippy::too_many_arguments)] // the Python constructor's parameters
    fn new(
        first: i64,
        anchor: Vec<u8>,
        heads: HashMap<i64, Vec<Vec<u8>>>,
        seed: Option<Vec<(u32, Vec<u8>)>>,
        sizes: Vec<i64>,
        bits: u32,
        schema: Vec<u8>,
        early_limit: usize,
    ) -> PyResult<Self> {
        let build = seed.is_some();
        let seed = seed.unwrap_or_default();
        let hashes = seed.iter().map(|(_, h)| to_hash(h)).collect::<PyResult<Vec<_>>>()?;
        Ok(BinaryWalk {
            first,
            expected: first,
            prev: anchor,
            heads,
            schema,
            build,
            levels: seed.iter().map(|(level, _)| *level).collect(),
            hashes,
            wanted: sizes.into_iter().collect(),
            bits,
            roots: Vec::new(),
            tails: HashMap::new(),
            pending: Vec::new(),
            early: BTreeMap::new(),
            early_limit,
            header_done: false,
            ended: false,
            intact: true,
            body: Vec::with_capacity(1024),
        })
    }

    /// Walk the next chunk of the stream (whole messages or not); false once a record is in doubt.
    /// The GIL is released meanwhile, so threads can walk stretches side by side.
    fn feed(&mut self, py: Python<'_>, data: &[u8]) -> bool {
        py.detach(|| self.feed_chunk(data))
    }

    /// The sequence of the next record the walk expects (the one in doubt, once it stopped).
    #[getter]
    fn next_sequence(&self) -> i64 {
        self.expected
    }

    /// Read on from `next_sequence` in a new stream, keeping the chain and tree state proven so far.
    fn restart(&mut self) {
        self.pending.clear();
        self.early.clear(); // the ordered stream brings them again
        self.header_done = false;
        self.ended = false;
        self.intact = true;
    }

    /// (records proven, the last proven hash, intact, complete subtree roots, frontier per wanted size).
    /// Intact only if the stream ended with its trailer and no record still waits for one that never
    /// came: a stream cut short, or with a gap, is a doubt.
    fn finish<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let intact = self.intact && self.ended && self.pending.is_empty() && self.early.is_empty();
        let roots = PyList::new(py, self.roots.iter().map(|h| PyBytes::new(py, h)))?;
        let tails = PyDict::new(py);
        for (size, frontier) in &self.tails {
            tails.set_item(size, PyList::new(py, frontier.iter().map(|h| PyBytes::new(py, h)))?)?;
        }
        let count = self.expected - self.first;
        (count, PyBytes::new(py, &self.prev), intact, roots, tails).into_pyobject(py)
    }
}

/// The canonical record of one binary COPY tuple (no header), or None: for the differential tests.
#[pyfunction]
pub fn canonical_record<'py>(py: Python<'py>, tuple: &[u8], schema: &[u8]) -> Option<Bound<'py, PyBytes>> {
    match parse_tuple(tuple) {
        Parsed::Row(row, used) if used == tuple.len() => {
            let mut body = Vec::new();
            assemble(&mut body, &row, schema).map(|_| PyBytes::new(py, &body))
        }
        _ => None,
    }
}
