//! pprof: the gzip'd `profile.proto` that Go's `pprof`, Pyroscope, Parca and Grafana read.
//! A Location per distinct frame (with its line), a Function per (name, file), and a Sample per
//! distinct (stack, thread) with its sample count and summed weight, labelled with its thread and
//! process (`pid`, so that `go tool pprof -tagroot=pid` roots a merged profile at its processes).

use crate::store::Store;
use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;
use std::collections::HashMap;
use std::io::{self, Write};

/// The messages of profile.proto that spprof writes (field numbers as upstream).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
    }

    /// The one mapping every location belongs to: it says that they are symbolized already
    /// (otherwise `go tool pprof` tries, and shows `<module>` as `<unknown>`).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

/// What a profile's weights measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    Cpu,
    Wall,
    /// Live heap bytes (a memory snapshot).
    InuseSpace,
}

impl Measure {
    /// (count type, weight type, weight unit), as Go's profiles name them; a memory profile
    /// without object counts counts its samples.
    fn names(self, objects: bool) -> (&'static str, &'static str, &'static str) {
        match self {
            Measure::Cpu => ("samples", "cpu", "nanoseconds"),
            Measure::Wall => ("samples", "wall", "nanoseconds"),
            Measure::InuseSpace if objects => ("inuse_objects", "inuse_space", "bytes"),
            Measure::InuseSpace => ("samples", "inuse_space", "bytes"),
        }
    }
}

pub struct Options<'a> {
    pub measure: Measure,
    /// The sampling period: the interval in ns, or the mean bytes between memory samples.
    pub period: i64,
    /// When the profile started (ns since the Unix epoch) and how long it ran.
    pub time_nanos: i64,
    pub duration_nanos: i64,
    /// Per sample, the objects it stands for (a memory snapshot's estimate: summed per stack,
    /// then rounded); else each counts 1.
    pub objects: Option<&'a [f64]>,
    /// Labels every sample carries besides its thread's (e.g. the pytest test id).
    pub labels: &'a [(String, String)],
}

/// The string table: index 0 is "", as the format requires.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        Strings {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

fn value_type(strings: &mut Strings, kind: &str, unit: &str) -> proto::ValueType {
    proto::ValueType {
        r#type: strings.id(kind),
        unit: strings.id(unit),
    }
}

/// The profile message of `store`.
fn build(store: &Store, opts: &Options) -> proto::Profile {
    let mut strings = Strings::new();
    let (count_type, weight_type, unit) = opts.measure.names(opts.objects.is_some());
    let sample_type = vec![
        value_type(&mut strings, count_type, "count"),
        value_type(&mut strings, weight_type, unit),
    ];
    let period_type = value_type(
        &mut strings,
        if opts.measure == Measure::InuseSpace {
            "space"
        } else {
            weight_type
        },
        unit,
    );

    // One Location per frame (id = frame index + 1), one Function per (name, file).
    let mut functions: Vec<proto::Function> = Vec::new();
    let mut function_ids: HashMap<(u32, u32), u64> = HashMap::new();
    let mut locations = Vec::with_capacity(store.frames().len());
    for (i, f) in store.frames().iter().enumerate() {
        let next = functions.len() as u64 + 1;
        let id = *function_ids.entry((f.function, f.file)).or_insert(next);
        if id == next {
            let name = strings.id(store.string(f.function));
            functions.push(proto::Function {
                id,
                name,
                // Unlike `name`: pprof then takes the name as demangled already and keeps it
                // (it shortened `<module>` to nothing, as a C++ template argument list).
                system_name: 0,
                filename: strings.id(store.string(f.file)),
            });
        }
        locations.push(proto::Location {
            id: i as u64 + 1,
            mapping_id: 1,
            line: vec![proto::Line {
                function_id: id,
                line: f.line.into(),
            }],
        });
    }

    // A Sample per distinct (stack, thread), in first-seen order.
    let mut order: Vec<(u32, u32)> = Vec::new();
    let mut totals: HashMap<(u32, u32), (f64, i64)> = HashMap::new();
    for i in 0..store.len() {
        let key = (store.stacks[i], store.thread_ids[i]);
        let t = totals.entry(key).or_insert_with(|| {
            order.push(key);
            (0.0, 0)
        });
        t.0 += opts.objects.map_or(1.0, |o| o[i]);
        t.1 += store.weights[i];
    }
    let thread_name = strings.id("thread_name");
    let thread_id = strings.id("thread_id");
    let pid = strings.id("pid");
    let extra: Vec<proto::Label> = opts
        .labels
        .iter()
        .map(|(k, v)| proto::Label {
            key: strings.id(k),
            str: strings.id(v),
            num: 0,
        })
        .collect();
    let mut frames = Vec::new();
    let samples = order
        .iter()
        .map(|&(stack, thread)| {
            let info = &store.threads()[thread as usize];
            store.stack_leaf_first(stack, &mut frames);
            let location_id = frames.iter().map(|&f| u64::from(f) + 1).collect();
            let mut label = vec![
                proto::Label {
                    key: thread_name,
                    str: strings.id(&info.name),
                    num: 0,
                },
                proto::Label {
                    key: thread_id,
                    str: 0,
                    num: info.tid as i64,
                },
                proto::Label {
                    key: pid,
                    str: 0,
                    num: info.pid.into(),
                },
            ];
            if let Some(name) = &info.task {
                label.push(proto::Label {
                    key: strings.id("task"),
                    str: strings.id(name),
                    num: 0,
                });
            }
            label.extend(extra.iter().cloned());
            let (count, weight) = totals[&(stack, thread)];
            proto::Sample {
                location_id,
                value: vec![count.round() as i64, weight],
                label,
            }
        })
        .collect();

    let default_sample_type = strings.id(weight_type);
    let mapping = proto::Mapping {
        id: 1,
        filename: strings.id("python"),
        has_functions: true,
        has_filenames: true,
        has_line_numbers: true,
    };
    proto::Profile {
        sample_type,
        sample: samples,
        mapping: vec![mapping],
        location: locations,
        function: functions,
        string_table: strings.table,
        time_nanos: opts.time_nanos,
        duration_nanos: opts.duration_nanos,
        period_type: Some(period_type),
        period: opts.period,
        default_sample_type,
    }
}

/// Write the gzip'd profile.
pub fn write(store: &Store, opts: &Options, out: &mut impl Write) -> io::Result<()> {
    if let Some(objects) = opts.objects {
        if objects.len() != store.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} object counts for {} samples",
                    objects.len(),
                    store.len()
                ),
            ));
        }
    }
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&build(store, opts).encode_to_vec())?;
    gz.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EMPTY_STACK;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn decode(bytes: &[u8]) -> proto::Profile {
        let mut raw = Vec::new();
        GzDecoder::new(bytes).read_to_end(&mut raw).unwrap();
        proto::Profile::decode(raw.as_slice()).unwrap()
    }

    #[test]
    fn samples_by_stack_and_thread_leaf_first_with_labels() {
        let mut s = Store::new(1 << 20);
        let main = s.intern_frame("main", "app.py", 1, false).unwrap();
        let work = s.intern_frame("work", "app.py", 7, false).unwrap();
        let t0 = s.add_thread(11, "MainThread");
        let t1 = s.add_thread(22, "worker");
        let deep = s.intern_stack([main, work]).unwrap();
        s.add_sample(1, 5, t0, deep, true);
        s.add_sample(2, 7, t0, deep, true);
        s.add_sample(3, 9, t1, deep, true);
        s.add_sample(4, 1, t0, EMPTY_STACK, true);
        let labels = [("test_id".to_owned(), "t.py::test".to_owned())];
        let opts = Options {
            measure: Measure::Cpu,
            period: 1_000_000,
            time_nanos: 10,
            duration_nanos: 20,
            objects: None,
            labels: &labels,
        };
        let mut out = Vec::new();
        write(&s, &opts, &mut out).unwrap();
        let p = decode(&out);
        let text = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(text(p.sample_type[1].r#type), "cpu");
        assert_eq!(text(p.default_sample_type), "cpu");
        assert_eq!(p.sample.len(), 3);
        assert_eq!(p.sample[0].value, vec![2, 12]);
        assert_eq!(p.sample[1].value, vec![1, 9]);
        assert!(p.sample[2].location_id.is_empty());
        let leaf = &p.location[p.sample[0].location_id[0] as usize - 1];
        let f = &p.function[leaf.line[0].function_id as usize - 1];
        assert_eq!((text(f.name), leaf.line[0].line), ("work", 7));
        let labels: Vec<(&str, &str, i64)> = p.sample[1]
            .label
            .iter()
            .map(|l| (text(l.key), text(l.str), l.num))
            .collect();
        assert_eq!(
            labels,
            [
                ("thread_name", "worker", 0),
                ("thread_id", "", 22),
                ("pid", "", std::process::id().into()),
                ("test_id", "t.py::test", 0)
            ]
        );
    }
}
