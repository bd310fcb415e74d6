//! An Append request's events accepted in one native pass: read from the request's protobuf bytes, checked
//! as `event::check` checks one, made into the EventV1s `servicer.event_from_proto` would make, and encoded
//! as `append::encode` encodes them for the store. The servicer's per-event Python (reading ~13 fields off
//! each protobuf message, the check's arguments, a frozen dataclass's __init__, then reading the fields
//! again to encode them) is what this replaces: the audit service went from ~70-80 to ~61-65 us of CPU an
//! event under the bench's Append load.
//!
//! Like the rest of the module it only says "sure" or "in doubt". The reader is strict on purpose: a field
//! it does not know, a singular field sent twice, a wrong wire type, an event without a time, a service
//! other than the caller's — each is a doubt for that event, which the servicer then reads from the parsed
//! message as before (and refuses with its own message where it must). A generated decoder (prost) would
//! skip unknown fields silently, which is exactly what must not pass unnoticed here; the request arrives
//! already parsed and re-serialized by protobuf, so this reader only ever sees well-formed bytes.

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::append::{encode, Encoding};
use crate::event::{check, Limits, Sent, Texts};

/// A protobuf wire-format reader over one message's bytes.
struct Wire<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Wire<'a> {
    fn done(&self) -> bool {
        self.at >= self.b.len()
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None // longer than ten bytes
    }

    /// (field number, wire type) of the next field.
    fn key(&mut self) -> Option<(u64, u8)> {
        let key = self.varint()?;
        Some((key >> 3, (key & 7) as u8))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let length = usize::try_from(self.varint()?).ok()?;
        let end = self.at.checked_add(length).filter(|end| *end <= self.b.len())?;
        let out = &self.b[self.at..end];
        self.at = end;
        Some(out)
    }

    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

const VARINT: u8 = 0;
const LEN: u8 = 2;

/// google.protobuf.Timestamp's seconds and nanos (int64, int32: a negative int32 is sign-extended).
fn timestamp(bytes: &[u8]) -> Option<(i64, i64)> {
    let (mut wire, mut seconds, mut nanos) = (Wire { b: bytes, at: 0 }, None, None);
    while !wire.done() {
        match wire.key()? {
            (1, VARINT) if seconds.is_none() => seconds = Some(wire.varint()? as i64),
            (2, VARINT) if nanos.is_none() => nanos = Some(i64::from(wire.varint()? as i32)),
            _ => return None,
        }
    }
    Some((seconds.unwrap_or(0), nanos.unwrap_or(0)))
}

/// One AuditEvent's fields, or None (a doubt) for anything but each known field at most once with its
/// declared wire type, a time, and schema version 0 or 1 (servicer.event_from_proto's rules).
fn sent_event(bytes: &[u8]) -> Option<Sent<'_>> {
    let mut wire = Wire { b: bytes, at: 0 };
    let mut texts: [Option<&str>; 12] = [None; 12]; // by field number - 1; 2 (time) and 12 (version) unused
    let (mut time, mut version, mut masked) = (None, None, Vec::new());
    while !wire.done() {
        match wire.key()? {
            (2, LEN) if time.is_none() => time = Some(timestamp(wire.bytes()?)?),
            (12, VARINT) if version.is_none() => version = Some(wire.varint()?),
            (13, LEN) => masked.push(wire.text()?),
            (n @ (1 | 3..=11), LEN) if texts[n as usize - 1].is_none() => texts[n as usize - 1] = Some(wire.text()?),
            _ => return None,
        }
    }
    if !matches!(version, None | Some(0 | 1)) {
        return None;
    }
    let (seconds, nanos) = time?;
    let field = |n: usize| texts[n - 1].unwrap_or("");
    Some(Sent {
        event_id: field(1),
        seconds,
        nanos,
        texts: Texts {
            service: field(3),
            caller: field(4),
            subject: field(5),
            action: field(6),
            resource: field(7),
            outcome: field(8),
            details: texts[8].filter(|d| !d.is_empty()).unwrap_or("{}"), // unset details are "{}"
            decision_id: field(10),
            trace_id: field(11),
        },
        masked,
    })
}

/// What the pass makes of one event it is sure of: make_event's id, time and masked paths, and the
/// record's encodings.
struct Accepted<'a> {
    sent: Sent<'a>,
    event_id: String,
    time: String,
    masked: Vec<String>,
    encoding: Encoding,
}

fn accept<'a>(bytes: &'a [u8], account: &str, emitter: &str, schema: &[u8], limits: Limits) -> Option<Accepted<'a>> {
    let sent = sent_event(bytes)?;
    if sent.texts.service != account {
        return None; // the servicer refuses it, naming both
    }
    let (event_id, time, masked) = check(&sent, limits)?;
    let paths: Vec<&str> = masked.iter().map(String::as_str).collect();
    let encoding = encode(&event_id, &time, &sent.texts, &paths, emitter, schema);
    Some(Accepted {
        sent,
        event_id,
        time,
        masked,
        encoding,
    })
}

type AcceptedBatch<'py> = (Bound<'py, PyList>, Bound<'py, PyDict>, Bound<'py, PyDict>);

/// The events of a serialized AppendRequest sent by the service `account`, recorded as emitted by
/// `emitter`: a list of EventV1 (`event_class`) with None for each event in doubt, and the record parts
/// (before, middle, after) and COPY text columns of each accepted event, by event id. None when the
/// request itself is not one this reader understands (then every event is in doubt).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn accept_events<'py>(
    py: Python<'py>,
    request: &[u8],
    event_class: &Bound<'py, PyAny>,
    account: &str,
    emitter: &str,
    schema: &[u8],
    max_details_bytes: usize,
    max_text_chars: usize,
    max_id_chars: usize,
    max_masked: usize,
) -> PyResult<Option<AcceptedBatch<'py>>> {
    let limits = Limits {
        details_bytes: max_details_bytes,
        text_chars: max_text_chars,
        id_chars: max_id_chars,
        masked: max_masked,
    };
    let accepted = py.detach(|| {
        let mut wire = Wire { b: request, at: 0 };
        let mut events = Vec::new();
        while !wire.done() {
            match wire.key()? {
                (1, LEN) => events.push(accept(wire.bytes()?, account, emitter, schema, limits)),
                _ => return None,
            }
        }
        Some(events)
    });
    let Some(accepted) = accepted else { return Ok(None) };
    // EventV1 is a frozen dataclass: its fields are set as its own __init__ sets them, by object's
    // __setattr__ (past the frozen one), on an instance made by object.__new__ (a third of __init__'s cost).
    let new = py.get_type::<PyAny>().getattr(intern!(py, "__new__"))?; // PyAny's type is `object`
    let names = [
        intern!(py, "event_id"),
        intern!(py, "time"),
        intern!(py, "service"),
        intern!(py, "action"),
        intern!(py, "outcome"),
        intern!(py, "caller"),
        intern!(py, "subject"),
        intern!(py, "resource"),
        intern!(py, "details"),
        intern!(py, "masked"),
        intern!(py, "decision_id"),
        intern!(py, "trace_id"),
    ];
    let (events, parts, columns) = (PyList::empty(py), PyDict::new(py), PyDict::new(py));
    for one in accepted {
        let Some(a) = one else {
            events.append(py.None())?;
            continue;
        };
        let s = &a.sent.texts;
        let id = PyString::new(py, &a.event_id);
        let values: [Bound<'py, PyAny>; 12] = [
            id.clone().into_any(),
            PyString::new(py, &a.time).into_any(),
            PyString::new(py, s.service).into_any(),
            PyString::new(py, s.action).into_any(),
            PyString::new(py, s.outcome).into_any(),
            PyString::new(py, s.caller).into_any(),
            PyString::new(py, s.subject).into_any(),
            PyString::new(py, s.resource).into_any(),
            PyString::new(py, s.details).into_any(),
            PyTuple::new(py, &a.masked)?.into_any(),
            PyString::new(py, s.decision_id).into_any(),
            PyString::new(py, s.trace_id).into_any(),
        ];
        let event = new.call1((event_class,))?;
        for (name, value) in names.iter().zip(values) {
            // SAFETY: three live objects, borrowed for the call; -1 means an exception is set.
            if unsafe { ffi::PyObject_GenericSetAttr(event.as_ptr(), name.as_ptr(), value.as_ptr()) } < 0 {
                return Err(PyErr::fetch(py));
            }
        }
        events.append(event)?;
        let e = &a.encoding;
        let encoded = (
            PyBytes::new(py, &e.before),
            PyBytes::new(py, &e.middle),
            PyBytes::new(py, &e.after),
        );
        parts.set_item(&id, encoded)?;
        columns.set_item(&id, &e.columns)?;
    }
    Ok(Some((events, parts, columns)))
}
