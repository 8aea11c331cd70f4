//! Speedscope JSON (https://www.speedscope.app/file-format-schema.json): one sampled profile per
//! thread (per process and thread in a profile merged from several processes), stacks root → leaf
//! as indices into the shared frame table, weights in `unit`.

use crate::store::{Store, EMPTY_STACK};
use std::collections::HashMap;
use std::io::{self, Write};

pub struct Options<'a> {
    /// Name of the whole file (shown by speedscope as the title).
    pub name: &'a str,
    /// A speedscope `ValueUnit`: "nanoseconds" for CPU/wall time, "bytes" for memory.
    pub unit: &'a str,
    pub exporter: &'a str,
}

fn json_str(out: &mut impl Write, s: &str) -> io::Result<()> {
    serde_json::to_writer(&mut *out, s).map_err(io::Error::from)
}

pub fn write(store: &Store, opts: &Options, out: &mut impl Write) -> io::Result<()> {
    out.write_all(br#"{"$schema":"https://www.speedscope.app/file-format-schema.json","name":"#)?;
    json_str(out, opts.name)?;
    out.write_all(br#","exporter":"#)?;
    json_str(out, opts.exporter)?;
    out.write_all(br#","activeProfileIndex":0,"shared":{"frames":["#)?;
    for (i, f) in store.frames().iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        out.write_all(br#"{"name":"#)?;
        json_str(out, store.string(f.function))?;
        out.write_all(br#","file":"#)?;
        json_str(out, store.string(f.file))?;
        if f.line > 0 {
            write!(out, r#","line":{}"#, f.line)?;
        }
        out.write_all(b"}")?;
    }
    out.write_all(br#"]},"profiles":["#)?;

    // Samples grouped by thread, in time order within each thread.
    let mut by_thread: Vec<Vec<usize>> = vec![Vec::new(); store.threads().len()];
    for (i, &t) in store.thread_ids.iter().enumerate() {
        by_thread[t as usize].push(i);
    }
    let mut stack_text: HashMap<u32, String> = HashMap::new();
    let by_process = store.is_multi_process();
    let mut first = true;
    for (t, rows) in by_thread.iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        if !first {
            out.write_all(b",")?;
        }
        first = false;
        let info = &store.threads()[t];
        let total: i64 = rows.iter().map(|&i| store.weights[i]).sum();
        out.write_all(br#"{"type":"sampled","name":"#)?;
        let thread = match &info.task {
            Some(task) => format!("{} {task} (tid {})", info.name, info.tid),
            None => format!("{} (tid {})", info.name, info.tid),
        };
        let name = if by_process {
            format!("{}: {thread}", store.process_label(info.pid))
        } else {
            thread
        };
        json_str(out, &name)?;
        write!(
            out,
            r#","unit":"{}","startValue":0,"endValue":{},"samples":["#,
            opts.unit, total
        )?;
        for (k, &i) in rows.iter().enumerate() {
            if k > 0 {
                out.write_all(b",")?;
            }
            let stack = store.stacks[i];
            let text = stack_text.entry(stack).or_insert_with(|| {
                if stack == EMPTY_STACK {
                    return "[]".to_owned();
                }
                let ids: Vec<String> = store
                    .stack_frames(stack)
                    .iter()
                    .map(|f| f.to_string())
                    .collect();
                format!("[{}]", ids.join(","))
            });
            out.write_all(text.as_bytes())?;
        }
        out.write_all(br#"],"weights":["#)?;
        for (k, &i) in rows.iter().enumerate() {
            if k > 0 {
                out.write_all(b",")?;
            }
            write!(out, "{}", store.weights[i])?;
        }
        out.write_all(b"]}")?;
    }
    if first {
        // No samples: one empty profile keeps the file valid and openable.
        write!(
            out,
            r#"{{"type":"sampled","name":"no samples","unit":"{}","startValue":0,"endValue":0,"samples":[],"weights":[]}}"#,
            opts.unit
        )?;
    }
    out.write_all(b"]}")?;
    Ok(())
}
