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

    /// RECORD message.
    pub fn record(&mut self, stream: &str, record: &Value) -> io::Result<()> {
        self.out.write_all(br#"{"type":"RECORD","stream":"#)?;
        serde_json::to_writer(&mut self.out, stream)?;
        self.out.write_all(br#","record":"#)?;
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(br#","time_extracted":"#)?;
        serde_json::to_writer(&mut self.out, &self.time_extracted)?;
        self.out.write_all(b"}\n")?;
        *self.counts.entry(stream.to_string()).or_default() += 1;
        Ok(())
    }

    /// STATE message; flushes so that everything before it is out.
    /// Returns the size of the message line in bytes (Meltano refuses lines longer than half its
    /// `elt.buffer_size`).
    pub fn state<V: serde::Serialize>(&mut self, value: &V) -> io::Result<usize> {
        #[derive(serde::Serialize)]
        struct State<'a, V> {
            r#type: &'static str,
            value: &'a V,
        }
        /// Counts what passes through: a state of many megabytes is written without a copy.
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
        serde_json::to_writer(
            &mut counting,
            &State {
                r#type: "STATE",
                value,
            },
        )?;
        let bytes = counting.bytes;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        Ok(bytes + 1)
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

/// Write a `METRIC: {...}` line on stderr, as Meltano SDK taps do.
pub fn metric(value: Value) {
    tracing::info!("METRIC: {value}");
}
