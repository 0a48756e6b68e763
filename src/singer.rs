//! The Singer writer: SCHEMA, RECORD and STATE messages on a buffered stdout, and SDK-style
//! `METRIC:` lines on stderr. Nothing else may reach stdout.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::time::Instant;

use serde_json::{Value, json};

/// Writes Singer messages.
pub struct SingerWriter<W: Write> {
    out: BufWriter<W>,
    time_extracted: String,
    counts: BTreeMap<String, u64>,
    started: Instant,
}

impl<W: Write> SingerWriter<W> {
    /// A writer stamping every RECORD with `time_extracted` (RFC 3339).
    pub fn new(out: W, time_extracted: String) -> Self {
        SingerWriter {
            out: BufWriter::with_capacity(1 << 16, out),
            time_extracted,
            counts: BTreeMap::new(),
            started: Instant::now(),
        }
    }

    /// SCHEMA message.
    pub fn schema(
        &mut self,
        stream: &str,
        schema: &Value,
        key_properties: &[String],
    ) -> io::Result<()> {
        let msg = json!({"type": "SCHEMA", "stream": stream, "schema": schema, "key_properties": key_properties});
        serde_json::to_writer(&mut self.out, &msg)?;
        self.out.write_all(b"\n")
    }

    /// RECORD messages formatted by [`RecordEnvelope::line`] (on a worker), `count` of them.
    pub fn record_lines(&mut self, stream: &str, lines: &[u8], count: u64) -> io::Result<()> {
        self.out.write_all(lines)?;
        *self.counts.entry(stream.to_string()).or_default() += count;
        Ok(())
    }

    /// The `time_extracted` every RECORD carries.
    pub fn time_extracted(&self) -> &str {
        &self.time_extracted
    }

    /// Emit a STATE message, flushed so that everything before it is out. Returns the size of the
    /// message line in bytes (Meltano refuses lines longer than half its `elt.buffer_size`).
    pub fn state<V: serde::Serialize>(&mut self, value: &V) -> io::Result<usize> {
        self.state_with(|out| serde_json::to_writer(out, value).map_err(io::Error::other))
    }

    /// [`SingerWriter::state`] with a value that `write_value` writes as JSON (a state of many
    /// megabytes is written without a copy).
    pub fn state_with(
        &mut self,
        write_value: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<usize> {
        /// Counts what passes through.
        struct Counting<'w, W: Write> {
            out: &'w mut W,
            bytes: usize,
        }
        impl<W: Write> Write for Counting<'_, W> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = self.out.write(buf)?;
                self.bytes += n;
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                self.out.flush()
            }
        }
        let mut counting = Counting {
            out: &mut self.out,
            bytes: 0,
        };
        counting.write_all(br#"{"type":"STATE","value":"#)?;
        write_value(&mut counting)?;
        counting.write_all(b"}\n")?;
        let bytes = counting.bytes;
        self.out.flush()?;
        Ok(bytes)
    }

    /// Records written to a stream so far.
    pub fn count(&self, stream: &str) -> u64 {
        self.counts.get(stream).copied().unwrap_or(0)
    }

    /// Emit the `record_count` counter of a stream on stderr.
    pub fn metric_stream_done(&self, stream: &str) {
        metric(
            json!({"type": "counter", "metric": "record_count", "value": self.count(stream),
            "tags": {"stream": stream, "pid": std::process::id()}}),
        );
    }

    /// Emit the `sync_duration` timer on stderr and flush stdout.
    pub fn finish(mut self, status: &str) -> io::Result<()> {
        self.out.flush()?;
        metric(
            json!({"type": "timer", "metric": "sync_duration", "value": self.started.elapsed().as_secs_f64(),
            "tags": {"status": status, "pid": std::process::id()}}),
        );
        Ok(())
    }
}

/// A record to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Value(Value),
    /// One JSON object, already written as text.
    Json(String),
}

/// What surrounds every RECORD message of one stream, written out once: a stream of many records
/// escapes its name and `time_extracted` once, not once per record.
pub struct RecordEnvelope {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl RecordEnvelope {
    /// The envelope of `stream`'s records, each stamped with `time_extracted`.
    pub fn new(stream: &str, time_extracted: &str) -> io::Result<RecordEnvelope> {
        let mut head = br#"{"type":"RECORD","stream":"#.to_vec();
        serde_json::to_writer(&mut head, stream)?;
        head.extend_from_slice(br#","record":"#);
        let mut tail = br#","time_extracted":"#.to_vec();
        serde_json::to_writer(&mut tail, time_extracted)?;
        tail.extend_from_slice(b"}\n");
        Ok(RecordEnvelope { head, tail })
    }

    /// Format one RECORD message line, so that records can be formatted apart from where they are
    /// written.
    pub fn line(&self, out: &mut Vec<u8>, record: &Record) -> io::Result<()> {
        out.extend_from_slice(&self.head);
        match record {
            Record::Value(value) => serde_json::to_writer(&mut *out, value)?,
            Record::Json(text) => out.extend_from_slice(text.as_bytes()),
        }
        out.extend_from_slice(&self.tail);
        Ok(())
    }
}

/// RECORD lines formatted on another thread, with how many records they hold.
pub struct Chunk {
    pub lines: Vec<u8>,
    pub count: u64,
}

/// Formatted lines are handed over in pieces of about this size.
const CHUNK_BYTES: usize = 1 << 16;
/// Room a piece has past [`CHUNK_BYTES`]: the last line of a piece ends beyond that size.
const CHUNK_SLACK: usize = 1 << 14;
/// Pieces a stream formats ahead of the writer by default: what waits in memory is bounded per
/// stream.
pub const CHUNKS_AHEAD: usize = 4;
/// Pieces a stream formats ahead of the writer in a run with little new input (8 MiB per stream):
/// with only a few pieces ahead, the worker on a later stream soon waits for the writer, and the
/// streams are made one after the other.
pub const CHUNKS_AHEAD_SHORT_RUN: usize = 128;

/// Format the records of every stream in `streams` on `workers` threads of `scope`, handing each
/// stream's RECORD lines over in order, in bounded pieces, through its own receiver (returned in the
/// order of `streams`). Streams are taken up in order, so the writer, reading the receivers in that
/// order, always reads a stream that is being formatted or done: the streams are made on the cores
/// there are and written one after the other. A stream's records are made on its worker by its
/// function; formatting of a stream stops when its receiver is dropped.
pub fn format_streams<'scope, F, I>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    workers: usize,
    ahead: usize,
    time_extracted: &str,
    streams: Vec<(&'static str, F)>,
) -> Vec<std::sync::mpsc::Receiver<io::Result<Chunk>>>
where
    F: FnOnce() -> I + Send + 'scope,
    I: Iterator<Item = Record>,
{
    let mut receivers = Vec::with_capacity(streams.len());
    let mut jobs = Vec::with_capacity(streams.len());
    for (stream, records) in streams {
        let (tx, rx) = std::sync::mpsc::sync_channel(ahead);
        receivers.push(rx);
        jobs.push((stream, records, tx));
    }
    let jobs = std::sync::Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    for _ in 0..workers.clamp(1, receivers.len().max(1)) {
        let jobs = std::sync::Arc::clone(&jobs);
        let time_extracted = time_extracted.to_string();
        scope.spawn(move || {
            loop {
                let next = match jobs.lock() {
                    Ok(mut jobs) => jobs.next(),
                    Err(_) => None,
                };
                let Some((stream, records, tx)) = next else {
                    return;
                };
                format_stream(stream, records(), &time_extracted, &tx);
            }
        });
    }
    receivers
}

/// Format one stream's records into pieces sent on `tx`, until done or nobody reads.
fn format_stream(
    stream: &str,
    records: impl Iterator<Item = Record>,
    time_extracted: &str,
    tx: &std::sync::mpsc::SyncSender<io::Result<Chunk>>,
) {
    // room past the handing-over size for the line that crosses it, so that a piece is not
    // reallocated (and its bytes copied into fresh pages) as it is closed
    let fresh = || Chunk {
        lines: Vec::with_capacity(CHUNK_BYTES + CHUNK_SLACK),
        count: 0,
    };
    let envelope = match RecordEnvelope::new(stream, time_extracted) {
        Ok(envelope) => envelope,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    let mut chunk = fresh();
    for record in records {
        if let Err(e) = envelope.line(&mut chunk.lines, &record) {
            let _ = tx.send(Err(e));
            return;
        }
        chunk.count += 1;
        if chunk.lines.len() >= CHUNK_BYTES
            && tx.send(Ok(std::mem::replace(&mut chunk, fresh()))).is_err()
        {
            return;
        }
    }
    let _ = tx.send(Ok(chunk));
}

/// Write a `METRIC: {...}` line on stderr, as Meltano SDK taps do.
pub fn metric(value: Value) {
    tracing::info!("METRIC: {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stream's lines, read in stream order as the writer reads them.
    fn formatted(workers: usize, ahead: usize, streams: u64, n: u64) -> Vec<(u64, String)> {
        std::thread::scope(|scope| {
            let jobs = (0..streams)
                .map(|s| {
                    let name: &'static str = ["a", "b", "c", "d", "e", "f"][s as usize];
                    (name, move || {
                        (0..n).map(move |i| {
                            // both kinds of record, written alike
                            if i % 2 == 0 {
                                Record::Value(json!({"i": i, "s": s}))
                            } else {
                                Record::Json(format!(r#"{{"i":{i},"s":{s}}}"#))
                            }
                        })
                    })
                })
                .collect();
            let mut out = Vec::new();
            for rx in format_streams(scope, workers, ahead, "T", jobs) {
                let (mut lines, mut count) = (Vec::new(), 0);
                for chunk in rx {
                    let chunk = chunk.expect("formatted");
                    lines.extend_from_slice(&chunk.lines);
                    count += chunk.count;
                }
                out.push((count, String::from_utf8(lines).expect("utf-8")));
            }
            out
        })
    }

    #[test]
    fn streams_formatted_on_threads_arrive_whole_and_in_order() {
        let n = 20_000;
        // fewer workers than streams, each stream many pieces: the writer never waits forever
        for (workers, ahead) in [
            (1, CHUNKS_AHEAD),
            (2, CHUNKS_AHEAD),
            (8, CHUNKS_AHEAD),
            (2, CHUNKS_AHEAD_SHORT_RUN),
        ] {
            let streams = formatted(workers, ahead, 5, n);
            assert_eq!(streams.len(), 5);
            for (s, (count, text)) in streams.iter().enumerate() {
                assert_eq!(*count, n);
                let mut seen = 0;
                for (i, line) in text.lines().enumerate() {
                    let v: Value = serde_json::from_str(line).expect("a JSON line");
                    assert_eq!(v["type"], "RECORD");
                    assert_eq!(v["time_extracted"], "T");
                    assert_eq!(v["record"]["i"], i as u64);
                    assert_eq!(v["record"]["s"], s as u64);
                    seen += 1;
                }
                assert_eq!(seen, n);
            }
        }
    }

    #[test]
    fn formatting_stops_when_nobody_reads() {
        let made = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            let made = &made;
            let records = move || {
                (0..u64::MAX).map(move |i| {
                    made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Record::Value(json!({"i": i}))
                })
            };
            drop(format_streams(
                scope,
                2,
                CHUNKS_AHEAD,
                "T",
                vec![("s", records)],
            ));
        });
        // the worker ended (the scope returned) after at most a few pieces
        assert!(made.load(std::sync::atomic::Ordering::Relaxed) < 1_000_000);
    }
}
