//! The collector's durable store: capture lines appended to NDJSON files by one writer, acknowledged
//! only once written (and fsynced under the `batch` policy), rotated by size and age, closed files
//! optionally gzipped; on start, a torn last line left by a crash is cut off and kept in `.rejects/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use flate2::Compression;
use flate2::write::GzEncoder;

/// When written lines reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// fsync before acknowledging each batch of requests.
    Batch,
    /// Acknowledge once written to the OS; fsync at most every this many milliseconds.
    Every(u64),
}

/// Parse `batch` or a number of milliseconds.
pub fn parse_fsync(text: &str) -> Result<Fsync, String> {
    match text {
        "batch" => Ok(Fsync::Batch),
        ms => ms
            .parse()
            .map(Fsync::Every)
            .map_err(|_| format!("expected `batch` or milliseconds, got {ms:?}")),
    }
}

/// How the store writes.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub dir: PathBuf,
    pub fsync: Fsync,
    pub rotate_bytes: u64,
    pub rotate_age: Duration,
    pub gzip_closed: bool,
}

/// Appends capture lines to the current file.
pub struct Store {
    opts: StoreOptions,
    file: Option<(PathBuf, File, u64, Instant)>,
    seq: u64,
    last_sync: Instant,
    dirty: bool,
}

/// Directory (inside the output) of rejected requests and torn tails; hidden, so that a tap reading the
/// output directory reads only captures.
pub const REJECTS: &str = ".rejects";

/// Name prefix of capture files; the timestamp and sequence make names sort chronologically.
pub const FILE_PREFIX: &str = "telemetry-";

impl Store {
    /// Open the store: recover torn tails of files a crash left open, and gzip them if asked.
    pub fn open(opts: StoreOptions) -> io::Result<Store> {
        fs::create_dir_all(opts.dir.join(REJECTS))?;
        let mut open_files: Vec<PathBuf> = fs::read_dir(&opts.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(FILE_PREFIX) && n.ends_with(".ndjson"))
            })
            .collect();
        open_files.sort();
        for path in &open_files {
            recover_torn_tail(path, &opts.dir.join(REJECTS))?;
            if opts.gzip_closed {
                gzip_file(path)?;
            }
        }
        Ok(Store {
            opts,
            file: None,
            seq: 0,
            last_sync: Instant::now(),
            dirty: false,
        })
    }

    fn current(&mut self) -> io::Result<&mut (PathBuf, File, u64, Instant)> {
        let rotate = self.file.as_ref().is_some_and(|(_, _, size, opened)| {
            *size >= self.opts.rotate_bytes || opened.elapsed() >= self.opts.rotate_age
        });
        if rotate {
            self.close()?;
        }
        if self.file.is_none() {
            self.seq += 1;
            let name = format!(
                "{FILE_PREFIX}{}-{:06}.ndjson",
                Utc::now().format("%Y%m%dT%H%M%S%6f"),
                self.seq
            );
            let path = self.opts.dir.join(name);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            sync_dir(&self.opts.dir);
            self.file = Some((path, file, 0, Instant::now()));
        }
        Ok(self.file.as_mut().expect("file opened above"))
    }

    /// Append whole lines (each ending in `\n`) and make them as durable as the policy says.
    pub fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        let (_, file, size, _) = self.current()?;
        file.write_all(lines)?;
        *size += lines.len() as u64;
        self.dirty = true;
        match self.opts.fsync {
            Fsync::Batch => self.sync()?,
            Fsync::Every(ms) if self.last_sync.elapsed() >= Duration::from_millis(ms) => {
                self.sync()?
            }
            Fsync::Every(_) => {}
        }
        Ok(())
    }

    /// fsync the current file.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some((_, file, _, _)) = &self.file
            && self.dirty
        {
            file.sync_data()?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Close the current file (fsynced), gzipping it if asked.
    pub fn close(&mut self) -> io::Result<()> {
        self.sync()?;
        if let Some((path, file, _, _)) = self.file.take() {
            drop(file);
            if self.opts.gzip_closed {
                gzip_file(&path)?;
            }
        }
        Ok(())
    }

    /// Whether the open file is due for rotation by age (checked on idle ticks).
    pub fn tick(&mut self) -> io::Result<()> {
        if let Fsync::Every(ms) = self.opts.fsync
            && self.dirty
            && self.last_sync.elapsed() >= Duration::from_millis(ms)
        {
            self.sync()?;
        }
        if self
            .file
            .as_ref()
            .is_some_and(|(_, _, _, opened)| opened.elapsed() >= self.opts.rotate_age)
        {
            self.close()?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Cut a file after its last newline; the torn bytes go to `.rejects/torn-<file>-<offset>.bin`.
pub fn recover_torn_tail(path: &Path, rejects: &Path) -> io::Result<Option<PathBuf>> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    // find the last newline, reading backwards in blocks
    let mut end = len;
    let mut keep = 0;
    let mut buf = vec![0u8; 64 * 1024];
    'scan: while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            keep = start + i as u64 + 1;
            break 'scan;
        }
        end = start;
    }
    if keep == len {
        return Ok(None);
    }
    let mut torn = vec![0u8; (len - keep) as usize];
    file.seek(SeekFrom::Start(keep))?;
    file.read_exact(&mut torn)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("capture");
    let out = rejects.join(format!("torn-{name}-{keep}.bin"));
    fs::write(&out, &torn)?;
    file.set_len(keep)?;
    file.sync_all()?;
    tracing::warn!(
        "{}: cut a torn last line of {} bytes (kept in {})",
        path.display(),
        torn.len(),
        out.display()
    );
    Ok(Some(out))
}

/// Replace `x.ndjson` by `x.ndjson.gz` (written under a temporary name, then renamed).
fn gzip_file(path: &Path) -> io::Result<()> {
    let gz = path.with_extension("ndjson.gz");
    let tmp = path.with_extension("ndjson.gz.tmp");
    {
        let mut input = File::open(path)?;
        let mut enc = GzEncoder::new(File::create(&tmp)?, Compression::default());
        io::copy(&mut input, &mut enc)?;
        enc.finish()?.sync_all()?;
    }
    fs::rename(&tmp, &gz)?;
    fs::remove_file(path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_tail_is_cut_and_kept() {
        let dir = std::env::temp_dir().join(format!("tap-kpis-torn-{}", std::process::id()));
        fs::create_dir_all(dir.join(REJECTS)).unwrap();
        let p = dir.join("telemetry-x.ndjson");
        fs::write(&p, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let kept = recover_torn_tail(&p, &dir.join(REJECTS)).unwrap().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(fs::read(kept).unwrap(), b"{\"c\":");
        assert!(recover_torn_tail(&p, &dir.join(REJECTS)).unwrap().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fsync_policy_parses() {
        assert_eq!(parse_fsync("batch").unwrap(), Fsync::Batch);
        assert_eq!(parse_fsync("250").unwrap(), Fsync::Every(250));
        assert!(parse_fsync("often").is_err());
    }
}
