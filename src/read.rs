//! Parallel reading: one thread reads and decompresses the inputs and cuts them into batches of lines,
//! worker threads decode the batches, and the caller receives the decoded batches in input order, so
//! the result is the same as a sequential read whatever the number of cores.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use crate::config::SourceFormat;
use crate::decode::{self, Format, Problem, Reason};
use crate::event::{Event, Position};
use crate::source::{self, Input, Line, LineReader, SourceError};

/// Bytes of lines gathered before a batch is handed to a decoder.
const BATCH_BYTES: usize = 1 << 20;

struct LineRef {
    start: usize,
    end: usize,
    number: u64,
    offset: u64,
}

struct Batch {
    seq: u64,
    source: u32,
    format: Format,
    data: Vec<u8>,
    lines: Vec<LineRef>,
    problems: Vec<Problem>,
    bytes: u64,
}

/// One decoded batch, in input order.
pub struct Decoded {
    pub events: Vec<Event>,
    pub problems: Vec<Problem>,
    pub lines: u64,
    pub bytes: u64,
}

/// A place in an input: after `offset` bytes (uncompressed) and `lines` lines, read in `format`
/// (`None` until detected). Where reading stops (just after the last complete line), and where a
/// later run resumes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mark {
    pub offset: u64,
    pub lines: u64,
    pub format: Option<Format>,
}

/// Where reading an input starts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resume {
    pub at: Mark,
    /// Nothing new: the input is not opened and ends where it resumes.
    pub skip: bool,
}

enum Msg {
    Decoded(u64, Decoded),
    Failed(SourceError),
    Done(u64, Vec<Mark>),
}

/// The configured format of an input; `None` means detect it from the first non-empty line.
fn format_of(input: &Input) -> Option<Format> {
    match input.format {
        SourceFormat::Auto => None,
        SourceFormat::Tp2 => Some(Format::Tp2),
        SourceFormat::EnrichedTsv => Some(Format::EnrichedTsv),
        SourceFormat::EnrichedJson => Some(Format::EnrichedJson),
    }
}

fn line_problem(
    source: u32,
    number: u64,
    offset: u64,
    reason: Reason,
    message: String,
    raw: &[u8],
) -> Problem {
    Problem {
        position: Position {
            source,
            line: number,
            offset,
            index: 0,
        },
        is_event: false,
        reason,
        message,
        excerpt: decode::excerpt(&String::from_utf8_lossy(raw)),
        skipped: true,
    }
}

/// Read every input into batches; returns the number of batches sent and where each input ended.
fn read_all(
    inputs: &[Input],
    resumes: &[Resume],
    batches: &SyncSender<Batch>,
    results: &SyncSender<Msg>,
    spare: &Receiver<Vec<u8>>,
) -> (u64, Vec<Mark>) {
    let mut seq = 0;
    let mut ends = Vec::with_capacity(inputs.len());
    for (idx, input) in inputs.iter().enumerate() {
        let source = idx as u32;
        let resume = resumes.get(idx).copied().unwrap_or_default();
        if resume.skip {
            ends.push(resume.at);
            continue;
        }
        let mut format = format_of(input).or(resume.at.format);
        let mut reader = match source::open(input) {
            Ok(r) => LineReader::new(r),
            Err(e) => {
                let _ = results.send(Msg::Failed(e));
                return (seq, ends);
            }
        };
        if resume.at.offset > 0
            && let Err(e) = reader.skip_to(resume.at.offset, resume.at.lines)
        {
            let _ = results.send(Msg::Failed(SourceError::Io {
                path: input.name.clone(),
                source: e,
            }));
            return (seq, ends);
        }
        let new_batch = |seq, format| Batch {
            seq,
            source,
            format,
            // a buffer a decoder is done with: large fresh allocations cost page faults each time
            data: spare
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(BATCH_BYTES + (BATCH_BYTES >> 2))),
            lines: Vec::new(),
            problems: Vec::new(),
            bytes: 0,
        };
        let mut batch: Option<Batch> = None;
        loop {
            let before = reader.offset();
            let line = match reader.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    let p = Problem {
                        position: Position {
                            source,
                            line: 0,
                            offset: before,
                            index: 0,
                        },
                        is_event: false,
                        reason: Reason::TruncatedInput,
                        message: format!("input ends early or is corrupt after byte {before}: {e}"),
                        excerpt: String::new(),
                        skipped: true,
                    };
                    let fmt = format.unwrap_or(Format::Tp2);
                    batch
                        .get_or_insert_with(|| new_batch(seq, fmt))
                        .problems
                        .push(p);
                    break;
                }
            };
            match line {
                Line::Text {
                    bytes,
                    number,
                    offset,
                    length: consumed,
                } => {
                    if bytes.iter().all(u8::is_ascii_whitespace) {
                        if let Some(b) = batch.as_mut() {
                            b.bytes += consumed;
                        }
                        continue;
                    }
                    let fmt = *format.get_or_insert_with(|| {
                        decode::detect_format(&String::from_utf8_lossy(bytes))
                    });
                    let b = batch.get_or_insert_with(|| new_batch(seq, fmt));
                    let start = b.data.len();
                    b.data.extend_from_slice(bytes);
                    b.lines.push(LineRef {
                        start,
                        end: b.data.len(),
                        number,
                        offset,
                    });
                    b.bytes += consumed;
                }
                Line::TooLong {
                    head,
                    number,
                    offset,
                    length,
                } => {
                    let consumed = length;
                    let fmt = format.unwrap_or(Format::Tp2);
                    let b = batch.get_or_insert_with(|| new_batch(seq, fmt));
                    let msg = format!(
                        "line of {length} bytes exceeds {} bytes",
                        source::MAX_LINE_BYTES
                    );
                    b.problems.push(line_problem(
                        source,
                        number,
                        offset,
                        Reason::LineTooLong,
                        msg,
                        head,
                    ));
                    b.bytes += consumed;
                }
            }
            if batch.as_ref().is_some_and(|b| b.data.len() >= BATCH_BYTES) {
                if let Some(b) = batch.take()
                    && batches.send(b).is_err()
                {
                    return (seq, ends);
                }
                seq += 1;
            }
        }
        if let Some(b) = batch.take() {
            if batches.send(b).is_err() {
                return (seq, ends);
            }
            seq += 1;
        }
        let (offset, lines) = reader.complete();
        ends.push(Mark {
            offset,
            lines,
            format,
        });
    }
    (seq, ends)
}

/// Decode a batch; its emptied buffer is handed back for reuse.
fn decode_batch(b: Batch) -> (Decoded, Vec<u8>) {
    let mut events = Vec::new();
    let mut problems = b.problems;
    for l in &b.lines {
        let bytes = &b.data[l.start..l.end];
        let position = Position {
            source: b.source,
            line: l.number,
            offset: l.offset,
            index: 0,
        };
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                let out = decode::decode_line(b.format, text, &position);
                events.extend(out.events);
                problems.extend(out.problems);
            }
            Err(e) => problems.push(line_problem(
                b.source,
                l.number,
                l.offset,
                Reason::InvalidUtf8,
                format!("line is not UTF-8: {e}"),
                bytes,
            )),
        }
    }
    let decoded = Decoded {
        events,
        problems,
        lines: b.lines.len() as u64,
        bytes: b.bytes,
    };
    let mut data = b.data;
    data.clear();
    (decoded, data)
}

fn worker(
    batches: Arc<Mutex<Receiver<Batch>>>,
    results: SyncSender<Msg>,
    spare: SyncSender<Vec<u8>>,
) {
    loop {
        let next = batches.lock().map(|rx| rx.recv());
        let Ok(Ok(batch)) = next else { return };
        let seq = batch.seq;
        let (decoded, data) = decode_batch(batch);
        // full: the reader has enough spare buffers, this one is freed
        let _ = spare.try_send(data);
        if results.send(Msg::Decoded(seq, decoded)).is_err() {
            return;
        }
    }
}

/// Read and decode every input on `threads` decoder threads, handing each decoded batch to `sink` in
/// input order. Input `i` starts at `resumes[i]` (from the beginning when absent); returns where each
/// input ended.
pub fn read_parallel(
    inputs: &[Input],
    resumes: &[Resume],
    threads: usize,
    mut sink: impl FnMut(Decoded),
) -> Result<Vec<Mark>, SourceError> {
    let threads = threads.max(1);
    let (batch_tx, batch_rx) = sync_channel::<Batch>(threads * 2);
    let (result_tx, result_rx) = sync_channel::<Msg>(threads * 4);
    let (spare_tx, spare_rx) = sync_channel::<Vec<u8>>(threads * 2);
    let batch_rx = Arc::new(Mutex::new(batch_rx));
    std::thread::scope(|scope| {
        let reader_results = result_tx.clone();
        scope.spawn(move || {
            let (total, ends) = read_all(inputs, resumes, &batch_tx, &reader_results, &spare_rx);
            drop(batch_tx);
            let _ = reader_results.send(Msg::Done(total, ends));
        });
        for _ in 0..threads {
            let rx = batch_rx.clone();
            let tx = result_tx.clone();
            let spare = spare_tx.clone();
            scope.spawn(move || worker(rx, tx, spare));
        }
        drop(result_tx);
        drop(spare_tx);
        let mut pending: BTreeMap<u64, Decoded> = BTreeMap::new();
        let mut next = 0u64;
        let mut total: Option<u64> = None;
        let mut ends = Vec::new();
        let mut failure = None;
        while total.is_none_or(|t| next < t) {
            let Ok(msg) = result_rx.recv() else { break };
            match msg {
                Msg::Decoded(seq, d) => {
                    pending.insert(seq, d);
                    while let Some(d) = pending.remove(&next) {
                        sink(d);
                        next += 1;
                    }
                }
                Msg::Failed(e) => {
                    failure = Some(e);
                    break;
                }
                Msg::Done(t, e) => {
                    total = Some(t);
                    ends = e;
                }
            }
        }
        // unblock and stop the other threads
        drop(result_rx);
        match failure {
            Some(e) => Err(e),
            None => Ok(ends),
        }
    })
}
