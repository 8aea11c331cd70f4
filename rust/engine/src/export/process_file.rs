//! The profile of one child process, as the child leaves it for its parent to merge
//! (`spprof.start(subprocesses=True)`).
//!
//! An Arrow IPC file: the `frames` table of [`crate::export::arrow`] with two more columns,
//! `thread_name` and `on_cpu`, so that [`read`] gives back the store the child recorded, sample
//! for sample. The schema's metadata says which process it was and when its clock started
//! ([`Process`]). It is written whole or not at all, so a parent never merges half a child.

use crate::export::arrow::{self, dict_column, WEIGHT_NS};
use crate::export::atomic_file;
use crate::store::{Store, EMPTY_STACK};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::{ArrowError, DataType, Field, Schema};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// The `format` entry of the schema metadata.
pub const FORMAT: &str = "spprof-process";

/// What a process file says of its process besides the samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Its command (`python worker.py`) or `multiprocessing` name (`ForkPoolWorker-2`).
    pub name: String,
    /// CLOCK_MONOTONIC at the samples' timestamp 0 (the clock is shared by all processes).
    pub origin_ns: i64,
}

fn err(message: String) -> ArrowError {
    ArrowError::InvalidArgumentError(message)
}

/// Write `store`, recorded by `process`, to `path`.
pub fn write(store: &Arc<Store>, process: &Process, path: &Path) -> Result<(), ArrowError> {
    let table = arrow::frames(store, WEIGHT_NS)?;
    let mut fields: Vec<Field> = table
        .schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(
        "thread_name",
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        false,
    ));
    fields.push(Field::new("on_cpu", DataType::Boolean, false));
    let metadata = HashMap::from([
        ("format".to_owned(), FORMAT.to_owned()),
        ("pid".to_owned(), process.pid.to_string()),
        ("process_name".to_owned(), process.name.clone()),
        ("origin_ns".to_owned(), process.origin_ns.to_string()),
        ("dropped".to_owned(), store.dropped().to_string()),
    ]);
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    let names: ArrayRef = Arc::new(StringArray::from_iter_values(
        store.threads().iter().map(|t| t.name.as_str()),
    ));
    let mut batches = Vec::with_capacity(table.batches.len());
    for batch in &table.batches {
        let ids = batch.column(0).as_primitive::<Int64Type>().values();
        let thread = |id: &i64| store.thread_ids[*id as usize];
        let mut columns = batch.columns().to_vec();
        columns.push(dict_column(
            ids.iter().map(|id| thread(id) as i32).collect(),
            None,
            &names,
        )?);
        columns.push(Arc::new(BooleanArray::from_iter(
            ids.iter().map(|&id| Some(store.on_cpu[id as usize])),
        )));
        batches.push(RecordBatch::try_new(schema.clone(), columns)?);
    }
    atomic_file::write(path, |out| {
        let mut writer = FileWriter::try_new(out, &schema)?;
        for batch in &batches {
            writer.write(batch)?;
        }
        writer.finish()
    })
}

/// The columns [`read`] needs.
const COLUMNS: [&str; 11] = [
    "sample_id",
    "function",
    "filename",
    "lineno",
    "is_native",
    "thread_id",
    "timestamp_ns",
    WEIGHT_NS,
    "pid",
    "thread_name",
    "on_cpu",
];

/// The sample being read: its thread, time, weight and frames so far.
struct Pending {
    id: i64,
    thread: u32,
    timestamp: i64,
    weight: i64,
    on_cpu: bool,
    frames: Vec<u32>,
}

/// The store and process a file written by [`write`] holds.
pub fn read(path: &Path) -> Result<(Store, Process), ArrowError> {
    let reader = FileReader::try_new(File::open(path)?, None)?;
    let schema = reader.schema();
    let meta = schema.metadata();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(err(format!(
            "{} is not an spprof process file",
            path.display()
        )));
    }
    let number = |key: &str| -> Result<i64, ArrowError> {
        meta.get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| err(format!("{}: no {key} in its metadata", path.display())))
    };
    let process = Process {
        pid: u32::try_from(number("pid")?).map_err(|e| err(e.to_string()))?,
        name: meta.get("process_name").cloned().unwrap_or_default(),
        origin_ns: number("origin_ns")?,
    };
    let mut at = [0usize; COLUMNS.len()];
    for (slot, name) in at.iter_mut().zip(COLUMNS) {
        *slot = schema
            .index_of(name)
            .map_err(|_| err(format!("{}: no {name} column", path.display())))?;
    }
    let [sample, function, file, line, native, tid, time, weight, pid, thread_name, on_cpu] = at;

    let mut store = Store::new(usize::MAX);
    store.add_dropped(number("dropped")? as u64);
    store.set_process_name(process.pid, &process.name);
    let mut pending: Option<Pending> = None;
    let flush = |store: &mut Store, p: Pending| {
        let stack = if p.frames.is_empty() {
            EMPTY_STACK
        } else {
            store.intern_stack(p.frames).expect("unbounded store")
        };
        store.add_sample(p.timestamp, p.weight, p.thread, stack, p.on_cpu);
    };
    for batch in reader {
        let batch = batch?;
        let ints = |i: usize| batch.column(i).as_primitive::<Int64Type>();
        let (ids, tids, times, weights, pids) =
            (ints(sample), ints(tid), ints(time), ints(weight), ints(pid));
        let lines = batch.column(line).as_primitive::<Int32Type>();
        let natives = batch.column(native).as_boolean();
        let cpu = batch.column(on_cpu).as_boolean();
        let strings = |i: usize| {
            let d = batch.column(i).as_dictionary::<Int32Type>();
            (d.keys().clone(), d.values().as_string::<i32>().clone())
        };
        let (fn_keys, fn_names) = strings(function);
        let (file_keys, file_names) = strings(file);
        let (thread_keys, thread_names) = strings(thread_name);
        for r in 0..batch.num_rows() {
            let id = ids.value(r);
            if pending.as_ref().is_none_or(|p| p.id != id) {
                if let Some(p) = pending.take() {
                    flush(&mut store, p);
                }
                let name = thread_names.value(thread_keys.value(r) as usize);
                let pid = u32::try_from(pids.value(r)).map_err(|e| err(e.to_string()))?;
                pending = Some(Pending {
                    id,
                    thread: store.add_process_thread(pid, tids.value(r) as u64, name),
                    timestamp: times.value(r),
                    weight: weights.value(r),
                    on_cpu: cpu.value(r),
                    frames: Vec::new(),
                });
            }
            if fn_keys.is_valid(r) {
                let frame = store
                    .intern_frame(
                        fn_names.value(fn_keys.value(r) as usize),
                        file_names.value(file_keys.value(r) as usize),
                        lines.value(r) as u32,
                        natives.value(r),
                    )
                    .expect("unbounded store");
                pending.as_mut().expect("set above").frames.push(frame);
            }
        }
    }
    if let Some(p) = pending {
        flush(&mut store, p);
    }
    Ok((store, process))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_file_reads_back_sample_for_sample() {
        let mut s = Store::new(1 << 20);
        let main = s.add_thread(101, "MainThread");
        let worker = s.add_thread(202, "worker");
        let a = s.intern_frame("a", "x.py", 1, false).unwrap();
        let b = s.intern_frame("b", "y.py", 2, false).unwrap();
        let c = s.intern_frame("c", "x.py", 3, true).unwrap();
        let abc = s.intern_stack([a, b, c]).unwrap();
        let ab = s.intern_stack([a, b]).unwrap();
        s.add_sample(10, 1000, main, abc, true);
        s.add_sample(20, 2000, worker, ab, false);
        s.add_sample(30, 4000, main, EMPTY_STACK, true);
        s.add_sample(40, 8000, worker, abc, true);
        s.add_dropped(3);
        let s = Arc::new(s);
        let process = Process {
            pid: std::process::id(),
            name: "ForkPoolWorker-1".to_owned(),
            origin_ns: 123_456,
        };
        let dir = std::env::temp_dir().join(format!("spprof-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("child.arrow");
        write(&s, &process, &path).unwrap();
        let (back, read_process) = read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read_process, process);
        assert_eq!(back.dropped(), 3);
        assert_eq!(back.timestamps_ns, s.timestamps_ns);
        assert_eq!(back.weights, s.weights);
        assert_eq!(back.on_cpu, s.on_cpu);
        assert_eq!(
            back.process_label(process.pid),
            format!("ForkPoolWorker-1 (pid {})", process.pid)
        );
        let frames = |st: &Store, i: usize| -> Vec<(String, u32, bool)> {
            st.stack_frames(st.stacks[i])
                .iter()
                .map(|&f| {
                    let fr = st.frames()[f as usize];
                    (st.string(fr.function).to_owned(), fr.line, fr.is_native)
                })
                .collect()
        };
        for i in 0..s.len() {
            assert_eq!(frames(&back, i), frames(&s, i));
            let (t0, t1) = (
                &s.threads()[s.thread_ids[i] as usize],
                &back.threads()[back.thread_ids[i] as usize],
            );
            assert_eq!(t0, t1);
        }
    }

    #[test]
    fn other_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("spprof-not-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.arrow");
        std::fs::write(&path, b"not arrow").unwrap();
        assert!(read(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
