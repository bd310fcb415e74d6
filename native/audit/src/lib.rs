//! The audit service's hot paths in native code, each the stand-in for Python code that stays the
//! reference and the fallback, and each answering only "sure" or "in doubt" (a doubt goes to Python):
//!
//! - `walk`: the verifier's walk over PostgreSQL's binary COPY stream (parallel_verify._walk_fast);
//! - `event`: the Append path's check of an incoming event (record.make_event);
//! - `accept`: an Append request's events read, checked, made and encoded in one pass
//!   (servicer.event_from_proto with the store's encoding);
//! - `append`: an append's record encoding (record.record_parts) and its chain and tree hashing under
//!   the append lock (chain.extend_with_leaves, merkle.append_leaves).

use pyo3::prelude::*;

mod accept;
mod append;
mod event;
mod hashes;
mod walk;

#[pymodule]
fn ztmesh_audit_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<walk::BinaryWalk>()?;
    module.add_function(wrap_pyfunction!(walk::canonical_record, module)?)?;
    module.add_function(wrap_pyfunction!(accept::accept_events, module)?)?;
    module.add_function(wrap_pyfunction!(event::check_event, module)?)?;
    module.add_function(wrap_pyfunction!(event::details_sure, module)?)?;
    module.add_function(wrap_pyfunction!(append::encode_records, module)?)?;
    module.add_function(wrap_pyfunction!(append::append_records, module)?)?;
    Ok(())
}
