//! Sources: resolve configured paths, directories and globs into an ordered list of inputs, and read
//! each input as lines, gzip detected by content (not by name).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::config::{SourceFormat, SourceSpec};

pub mod http;

pub use http::{HttpOptions, Validators};

/// Errors that make a source unreadable as a whole.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {0}: no such file or directory")]
    NotFound(String),
    #[error("source {pattern}: invalid glob: {detail}")]
    Glob { pattern: String, detail: String },
    #[error("source {pattern}: the glob matches no file")]
    NoMatch { pattern: String },
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("cannot fetch {url}: {detail}")]
    HttpFailed { url: String, detail: String },
}

/// One input to read.
#[derive(Debug, PartialEq, Eq)]
pub struct Input {
    /// Display name (path or URL), used in positions and messages.
    pub name: String,
    pub path: PathBuf,
    pub format: SourceFormat,
    /// Set when `path` is a downloaded copy to delete after reading.
    pub temporary: bool,
    /// For a URL: what identifies the content downloaded (sent back next run).
    pub validators: Option<Validators>,
    /// For a URL: the server said the content is unchanged since the last run; nothing was
    /// downloaded and `path` is empty.
    pub not_modified: bool,
}

impl Drop for Input {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Resolve every configured source into files, in configuration order, each directory or glob sorted;
/// URLs are downloaded.
pub fn resolve(specs: &[SourceSpec], http: &HttpOptions) -> Result<Vec<Input>, SourceError> {
    resolve_since(specs, http, |_| None)
}

/// [`resolve`], downloading a URL only if the server says it changed since `known(url)` identified it.
pub fn resolve_since(
    specs: &[SourceSpec],
    http: &HttpOptions,
    known: impl Fn(&str) -> Option<Validators>,
) -> Result<Vec<Input>, SourceError> {
    let mut inputs = Vec::new();
    for spec in specs {
        let p = spec.path();
        if p.starts_with("http://") || p.starts_with("https://") {
            let known = known(p);
            let (path, validators, not_modified) =
                match http::download_if_changed(p, http, known.as_ref())? {
                    http::Download::Fetched(path, v) => (path, Some(v), false),
                    http::Download::NotModified => (PathBuf::new(), known, true),
                };
            inputs.push(Input {
                name: p.to_string(),
                path,
                format: spec.format(),
                temporary: !not_modified,
                validators,
                not_modified,
            });
            continue;
        }
        let mut files = Vec::new();
        if is_glob(p) {
            let paths = glob::glob(p).map_err(|e| SourceError::Glob {
                pattern: p.to_string(),
                detail: e.to_string(),
            })?;
            for entry in paths {
                let path = entry.map_err(|e| SourceError::Io {
                    path: e.path().display().to_string(),
                    source: io::Error::other(e.to_string()),
                })?;
                if path.is_dir() {
                    walk(&path, &mut files).map_err(|source| SourceError::Io {
                        path: path.display().to_string(),
                        source,
                    })?;
                } else {
                    files.push(path);
                }
            }
            if files.is_empty() {
                return Err(SourceError::NoMatch {
                    pattern: p.to_string(),
                });
            }
            files.sort();
        } else {
            let path = PathBuf::from(p);
            if path.is_dir() {
                walk(&path, &mut files).map_err(|source| SourceError::Io {
                    path: p.to_string(),
                    source,
                })?;
            } else if path.exists() {
                files.push(path);
            } else {
                return Err(SourceError::NotFound(p.to_string()));
            }
        }
        inputs.extend(files.into_iter().map(|path| Input {
            name: path.display().to_string(),
            path,
            format: spec.format(),
            temporary: false,
            validators: None,
            not_modified: false,
        }));
    }
    Ok(inputs)
}

/// Open an input for reading, decompressing gzip when its content starts with the gzip magic.
pub fn open(input: &Input) -> Result<Box<dyn BufRead + Send>, SourceError> {
    let io_err = |source| SourceError::Io {
        path: input.name.clone(),
        source,
    };
    let file = File::open(&input.path).map_err(io_err)?;
    let mut reader = BufReader::with_capacity(1 << 17, file);
    let head = reader.fill_buf().map_err(io_err)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(BufReader::with_capacity(
            1 << 17,
            MultiGzDecoder::new(reader),
        )))
    } else {
        Ok(Box::new(reader))
    }
}

/// Lines longer than this are skipped as `line_too_long` (without being held in memory whole).
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// One line read from an input.
#[derive(Debug)]
pub enum Line<'a> {
    /// A complete line (without its newline), its 1-based number, byte offset and length with newline.
    Text {
        bytes: &'a [u8],
        number: u64,
        offset: u64,
        length: u64,
    },
    /// A line over [`MAX_LINE_BYTES`], skipped; the head is kept for the excerpt.
    TooLong {
        head: &'a [u8],
        number: u64,
        offset: u64,
        length: u64,
    },
}

/// Reads lines with positions, bounding memory per line.
pub struct LineReader<R: BufRead> {
    reader: R,
    buf: Vec<u8>,
    number: u64,
    offset: u64,
    /// Offset and line number just after the last line that ended with a newline: where a later run
    /// resumes, so that a line still being written is read again once complete.
    complete: (u64, u64),
}

impl<R: BufRead> LineReader<R> {
    /// Wrap a buffered reader.
    pub fn new(reader: R) -> Self {
        LineReader {
            reader,
            buf: Vec::with_capacity(1 << 14),
            number: 0,
            offset: 0,
            complete: (0, 0),
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// (offset, lines) just after the last newline-terminated line.
    pub fn complete(&self) -> (u64, u64) {
        self.complete
    }

    /// Skip the first `offset` bytes, which held `lines` lines, to resume where an earlier read stopped.
    pub fn skip_to(&mut self, offset: u64, lines: u64) -> io::Result<()> {
        let skipped = io::copy(&mut (&mut self.reader).take(offset), &mut io::sink())?;
        if skipped < offset {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("input is shorter ({skipped} bytes) than its bookmark ({offset} bytes)"),
            ));
        }
        self.offset = offset;
        self.number = lines;
        self.complete = (offset, lines);
        Ok(())
    }

    /// The next line, `None` at end of input.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.buf.clear();
        let start = self.offset;
        let mut length: u64 = 0;
        let mut too_long = false;
        let mut terminated = false;
        loop {
            let chunk = self.reader.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            // lines are kilobytes long: the newline is searched for many bytes at a time
            let (take, done) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(self.buf.len());
            if take > room {
                too_long = true;
            }
            self.buf.extend_from_slice(&chunk[..take.min(room)]);
            self.reader.consume(take);
            length += take as u64;
            if done {
                terminated = true;
                break;
            }
        }
        if length == 0 {
            return Ok(None);
        }
        self.offset += length;
        self.number += 1;
        if terminated {
            self.complete = (self.offset, self.number);
        }
        if self.number == 1 && self.buf.starts_with(b"\xef\xbb\xbf") {
            // a UTF-8 byte order mark before the first line is not data
            self.buf.drain(..3);
        }
        let mut end = self.buf.len();
        while end > 0 && (self.buf[end - 1] == b'\n' || self.buf[end - 1] == b'\r') {
            end -= 1;
        }
        if too_long {
            let head = &self.buf[..end.min(crate::decode::EXCERPT_BYTES)];
            return Ok(Some(Line::TooLong {
                head,
                number: self.number,
                offset: start,
                length,
            }));
        }
        Ok(Some(Line::Text {
            bytes: &self.buf[..end],
            number: self.number,
            offset: start,
            length,
        }))
    }
}

/// What identifies a file's content across runs: its size and modification time, and a digest of its
/// first bytes (a file that was appended to keeps its head; a rotated or replaced one does not).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    pub size: u64,
    pub mtime_ms: i64,
    /// Number of leading bytes digested (at most [`HEAD_BYTES`]).
    pub head_len: u64,
    /// SHA-256 hex of those bytes.
    pub head_sha256: String,
}

impl Fingerprint {
    /// Whether the file now fingerprinted `self` (at `path`) still begins with the content
    /// fingerprinted `earlier`: the same or appended to, not replaced or rotated. The head is read
    /// again only when the earlier file was shorter than [`HEAD_BYTES`].
    pub fn continues(&self, earlier: &Fingerprint, path: &std::path::Path) -> io::Result<bool> {
        if self.size < earlier.size {
            return Ok(false);
        }
        let head = if earlier.head_len == self.head_len {
            self.head_sha256.clone()
        } else {
            head_digest(path, earlier.head_len)?
        };
        Ok(head == earlier.head_sha256)
    }
}

/// Leading bytes digested by a fingerprint.
pub const HEAD_BYTES: u64 = 64 * 1024;

/// SHA-256 hex of the first `len` bytes of a file (fewer if the file is shorter).
pub fn head_digest(path: &std::path::Path, len: u64) -> io::Result<String> {
    let digests = head_digests(path, &[len])?;
    Ok(digests.into_iter().next().unwrap_or_default())
}

/// [`head_digest`] at each of `lengths` (ascending), the head read and hashed once: a file compared
/// with the bookmarks of many short files is not read once per length.
pub fn head_digests(path: &std::path::Path, lengths: &[u64]) -> io::Result<Vec<String>> {
    use sha2::{Digest, Sha256};
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let mut head = Vec::new();
    File::open(path)?.take(longest).read_to_end(&mut head)?;
    let mut hasher = Sha256::new();
    let mut hashed = 0;
    let mut digests = Vec::with_capacity(lengths.len());
    for &len in lengths {
        let end = usize::try_from(len).unwrap_or(usize::MAX).min(head.len());
        if end > hashed {
            hasher.update(&head[hashed..end]);
            hashed = end;
        }
        digests.push(hex::encode(hasher.clone().finalize()));
    }
    Ok(digests)
}

/// A file's size and modification time (epoch ms), the quick check of whether it changed.
pub fn size_and_mtime(path: &std::path::Path) -> io::Result<(u64, i64)> {
    let meta = std::fs::metadata(path)?;
    let mtime_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    Ok((meta.len(), mtime_ms))
}

/// The fingerprint of a file now.
pub fn fingerprint(path: &std::path::Path) -> io::Result<Fingerprint> {
    let (size, mtime_ms) = size_and_mtime(path)?;
    let head_len = size.min(HEAD_BYTES);
    Ok(Fingerprint {
        size,
        mtime_ms,
        head_len,
        head_sha256: head_digest(path, head_len)?,
    })
}

/// Read a whole input into memory (small files, tests).
pub fn read_all(input: &Input) -> Result<Vec<u8>, SourceError> {
    let mut r = open(input)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|source| SourceError::Io {
        path: input.name.clone(),
        source,
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn digests_of_a_head_at_several_lengths_are_each_length_digested_alone() {
        let dir = std::env::temp_dir().join(format!("tap-kpis-heads-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("f");
        std::fs::write(&path, "0123456789abcdef").expect("write");
        // lengths past the end are cut to the file, as head_digest does
        let lengths = [0, 1, 7, 7, 16, 40];
        let each: Vec<String> = lengths
            .iter()
            .map(|&n| head_digest(&path, n).expect("digest"))
            .collect();
        assert_eq!(head_digests(&path, &lengths).expect("digests"), each);
        assert_ne!(each[1], each[2]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn gzip_by_content_and_sorted_directories() {
        let dir = std::env::temp_dir().join(format!("tap-kpis-src-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"a\nb\n").unwrap();
        std::fs::write(dir.join("sub/z.log"), gz.finish().unwrap()).unwrap();
        std::fs::write(dir.join("a.gz"), b"plain\n").unwrap();
        std::fs::write(dir.join(".hidden"), b"x\n").unwrap();
        let inputs = resolve(
            &[SourceSpec::Path(dir.display().to_string())],
            &HttpOptions::default(),
        )
        .unwrap();
        let names: Vec<_> = inputs
            .iter()
            .map(|i| i.path.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, ["a.gz", "z.log"]);
        assert_eq!(read_all(&inputs[0]).unwrap(), b"plain\n");
        assert_eq!(read_all(&inputs[1]).unwrap(), b"a\nb\n");
        let globbed = resolve(
            &[SourceSpec::Path(format!("{}/*.gz", dir.display()))],
            &HttpOptions::default(),
        )
        .unwrap();
        assert_eq!(globbed.len(), 1);
        assert!(matches!(
            resolve(
                &[SourceSpec::Path(format!("{}/nope", dir.display()))],
                &HttpOptions::default()
            ),
            Err(SourceError::NotFound(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_byte_order_mark_is_not_data() {
        let mut r = LineReader::new(&b"\xef\xbb\xbf{}\n{}"[..]);
        let mut got = Vec::new();
        while let Some(Line::Text { bytes, .. }) = r.next_line().unwrap() {
            got.push(bytes.to_vec());
        }
        assert_eq!(got, vec![b"{}".to_vec(), b"{}".to_vec()]);
    }

    #[test]
    fn lines_have_numbers_and_offsets() {
        let mut r = LineReader::new(&b"ab\r\n\ncd"[..]);
        let mut got = Vec::new();
        while let Some(line) = r.next_line().unwrap() {
            if let Line::Text {
                bytes,
                number,
                offset,
                ..
            } = line
            {
                got.push((bytes.to_vec(), number, offset));
            }
        }
        assert_eq!(
            got,
            vec![
                (b"ab".to_vec(), 1, 0),
                (b"".to_vec(), 2, 4),
                (b"cd".to_vec(), 3, 5)
            ]
        );
    }
}
