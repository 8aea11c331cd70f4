//! Raw records to stacks (GIL held): the frames of a CPU or memory record, Python and native,
//! resolved and merged into one interned stack.

use super::merge::merge;
use super::resolver::Resolver;
use pyo3::prelude::*;
use spprof_engine::capture::raw::{RawSample, FLAG_TRUNCATED};
use spprof_engine::store::Store;

/// Resolve the frames of a raw record (CPU or memory), consumed at ring position `at`, into an
/// interned stack, root first; `None` when the store's budget is spent. GIL held; a code
/// pointer in `raw` is alive or retired (see [`super::resolver`]). Native frames are merged with the Python
/// frames as [`super::merge`] says.
pub fn resolve_stack(
    py: Python<'_>,
    raw: &RawSample<'_>,
    at: u64,
    store: &mut Store,
    resolver: &mut Resolver,
    scratch: &mut Vec<u32>,
) -> Option<u32> {
    let natives = raw
        .native_pcs()
        .iter()
        .map(|&pc| resolver.native_frame(store, pc))
        .collect::<Option<Vec<_>>>()?;
    let python = raw
        .frames_leaf_first()
        .map(|(code, offset, entry)| {
            Some((
                resolver.frame(py, store, code as usize, offset as i64, at)?,
                entry,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    let truncated = raw.flags & FLAG_TRUNCATED != 0;
    scratch.clear();
    scratch.extend(merge(&natives, &python, !truncated));
    if truncated {
        scratch.push(store.intern_frame("<truncated>", "<spprof>", 0, false)?);
    }
    scratch.reverse();
    store.intern_stack(scratch.iter().copied())
}
