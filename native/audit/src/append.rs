//! An append's encoding and hashing in native code, each held to the Python it stands in for by
//! tests/audit/test_native_append.py:
//!
//! - `encode_records`, before the store's append lock: each record's canonical JSON around the two values
//!   only its place in the chain decides (`record.record_parts`), and its COPY text columns
//!   (`store_postgres._copy_columns`);
//! - `append_records`, under the lock: each record's chain hash and Merkle leaf, and the tree nodes the
//!   leaves complete (`chain.extend_with_leaves` with `merkle.append_leaves`).
//!
//! Why native: this is Python work every event costs, and what runs under the lock is what every other
//! audit process waits for; here it runs without the GIL, so the process's other threads do not slow it.

use crate::event::Texts;
use crate::hashes::{chain_hash, leaf_hash, node_hash, to_hash, Hash};
use crate::walk::push_quoted;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

type Appended<'py> = (
    Vec<Bound<'py, PyBytes>>,
    Vec<((u32, u64), Bound<'py, PyBytes>)>,
    Vec<(u32, Bound<'py, PyBytes>)>,
);

/// The chain hashes of records `sequence + 1`.. (each `before + recorded_at + middle + sequence + after`,
/// linked from `prev`), every tree node their leaves complete as ((level, index), hash), and the tree's
/// new frontier; `frontier` is the tree's right edge at `sequence` leaves, largest subtree first.
#[pyfunction]
pub fn append_records<'py>(
    py: Python<'py>,
    prev: &[u8],
    sequence: u64,
    recorded_at: &str,
    parts: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    frontier: Vec<(u32, Vec<u8>)>,
) -> PyResult<Appended<'py>> {
    let mut prev = to_hash(prev)?;
    let mut edge: Vec<(u32, Hash)> = frontier
        .iter()
        .map(|(l, h)| Ok((*l, to_hash(h)?)))
        .collect::<PyResult<_>>()?;
    let (hashes, nodes) = py.detach(|| {
        let mut hashes = Vec::with_capacity(parts.len());
        let mut nodes = Vec::with_capacity(parts.len() * 2);
        let mut record = Vec::new();
        for (i, (before, middle, after)) in parts.iter().enumerate() {
            let leaf_index = sequence + i as u64; // record n is leaf n - 1
            record.clear();
            record.extend_from_slice(before);
            record.extend_from_slice(recorded_at.as_bytes());
            record.extend_from_slice(middle);
            record.extend_from_slice((leaf_index + 1).to_string().as_bytes());
            record.extend_from_slice(after);
            prev = chain_hash(&prev, &record);
            hashes.push(prev);
            let (mut level, mut current) = (0u32, leaf_hash(&record));
            nodes.push(((0, leaf_index), current));
            while edge.last().is_some_and(|(l, _)| *l == level) {
                let (_, left) = edge.pop().expect("checked");
                level += 1;
                current = node_hash(&left, &current);
                nodes.push(((level, leaf_index >> level), current));
            }
            edge.push((level, current));
        }
        (hashes, nodes)
    });
    Ok((
        hashes.iter().map(|h| PyBytes::new(py, h)).collect(),
        nodes.iter().map(|(id, h)| (*id, PyBytes::new(py, h))).collect(),
        edge.iter().map(|(l, h)| (*l, PyBytes::new(py, h))).collect(),
    ))
}

fn field<'py>(event: &Bound<'py, PyAny>, name: &Bound<'py, PyString>) -> Option<Bound<'py, PyString>> {
    event.getattr(name).ok()?.cast_into::<PyString>().ok()
}

/// COPY text format: a backslash, tab, line feed or carriage return in a column is escaped.
fn push_copy_text(out: &mut String, column: &str) {
    if !column.bytes().any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
        out.push_str(column); // the usual case
        return;
    }
    for c in column.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            _ => out.push(c),
        }
    }
}

/// One record's encodings before its place in the chain is known: `record.record_parts` (canonical JSON
/// before recorded_at, between it and the sequence, after the sequence) and
/// `store_postgres._copy_columns` (COPY text columns event_id..masked).
pub struct Encoding {
    pub before: Vec<u8>,
    pub middle: Vec<u8>,
    pub after: Vec<u8>,
    pub columns: String,
}

/// `record_parts` and `_copy_columns` of one event as EventV1 holds it: its normalized id, time and masked
/// paths, and its texts (`schema`: the record's "v").
pub fn encode(
    event_id: &str,
    time: &str,
    texts: &Texts<'_>,
    masked: &[&str],
    emitter: &str,
    schema: &[u8],
) -> Encoding {
    let mut masked_json = Vec::from(b"[".as_slice());
    for (i, path) in masked.iter().enumerate() {
        if i > 0 {
            masked_json.push(b',');
        }
        push_quoted(&mut masked_json, path.as_bytes());
    }
    masked_json.push(b']');
    // record.assemble's order, split where recorded_at and sequence go.
    let mut before = Vec::with_capacity(256 + texts.details.len());
    let q = |out: &mut Vec<u8>, key: &[u8], value: &str| {
        out.extend_from_slice(key);
        push_quoted(out, value.as_bytes());
    };
    q(&mut before, b"{\"action\":", texts.action);
    q(&mut before, b",\"caller\":", texts.caller);
    q(&mut before, b",\"decision_id\":", texts.decision_id);
    before.extend_from_slice(b",\"details\":");
    before.extend_from_slice(texts.details.as_bytes());
    q(&mut before, b",\"emitter\":", emitter);
    q(&mut before, b",\"event_id\":", event_id);
    before.extend_from_slice(b",\"masked\":");
    before.extend_from_slice(&masked_json);
    q(&mut before, b",\"outcome\":", texts.outcome);
    before.extend_from_slice(b",\"recorded_at\":\"");
    let mut middle = Vec::from(b"\"".as_slice());
    q(&mut middle, b",\"resource\":", texts.resource);
    middle.extend_from_slice(b",\"sequence\":");
    let mut after = Vec::with_capacity(128);
    q(&mut after, b",\"service\":", texts.service);
    q(&mut after, b",\"subject\":", texts.subject);
    q(&mut after, b",\"time\":", time);
    q(&mut after, b",\"trace_id\":", texts.trace_id);
    after.extend_from_slice(b",\"v\":");
    after.extend_from_slice(schema);
    after.push(b'}');
    let mut columns = String::with_capacity(200 + texts.details.len());
    let masked_text = std::str::from_utf8(&masked_json).expect("built from str");
    for (i, column) in [
        event_id,
        time,
        texts.service,
        emitter,
        texts.caller,
        texts.subject,
        texts.action,
        texts.resource,
        texts.outcome,
        texts.decision_id,
        texts.trace_id,
        texts.details,
        masked_text,
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            columns.push('\t');
        }
        push_copy_text(&mut columns, column);
    }
    Encoding {
        before,
        middle,
        after,
        columns,
    }
}

type Encoded<'py> = Option<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, Bound<'py, PyBytes>, String)>;

/// For each EventV1: `record.record_parts(event, emitter)` and `store_postgres._copy_columns(event,
/// emitter)` (`schema`: the record's "v"), or None where a text is not a plain str (Python encodes it).
#[pyfunction]
pub fn encode_records<'py>(
    py: Python<'py>,
    events: Vec<Bound<'py, PyAny>>,
    emitter: &str,
    schema: &[u8],
) -> Vec<Encoded<'py>> {
    let names = [
        "event_id",
        "time",
        "service",
        "caller",
        "subject",
        "action",
        "resource",
        "outcome",
        "decision_id",
        "trace_id",
        "details",
    ]
    .map(|n| PyString::intern(py, n));
    events
        .iter()
        .map(|event| {
            let [id, time, service, caller, subject, action, resource, outcome, decision, trace, details] =
                names.each_ref().map(|n| field(event, n));
            fn text<'a>(s: &'a Option<Bound<'_, PyString>>) -> Option<&'a str> {
                s.as_ref()?.to_str().ok()
            }
            let masked = event.getattr(intern!(py, "masked")).ok()?;
            let masked = masked.cast::<PyTuple>().ok()?;
            let paths: Vec<Bound<'py, PyString>> = masked
                .iter()
                .map(|p| p.cast_into::<PyString>().ok())
                .collect::<Option<_>>()?;
            let paths: Vec<&str> = paths.iter().map(|p| p.to_str().ok()).collect::<Option<_>>()?;
            let texts = Texts {
                service: text(&service)?,
                action: text(&action)?,
                outcome: text(&outcome)?,
                caller: text(&caller)?,
                subject: text(&subject)?,
                resource: text(&resource)?,
                details: text(&details)?,
                decision_id: text(&decision)?,
                trace_id: text(&trace)?,
            };
            let encoding = encode(text(&id)?, text(&time)?, &texts, &paths, emitter, schema);
            Some((
                PyBytes::new(py, &encoding.before),
                PyBytes::new(py, &encoding.middle),
                PyBytes::new(py, &encoding.after),
                encoding.columns,
            ))
        })
        .collect()
}
