//! HTTP(S) sources: a URL is downloaded to a temporary file, with timeouts, retries with backoff on
//! server errors and broken connections, and resumption by `Range` requests, then read like a file.
//! The `ETag` and `Last-Modified` a server sends are kept in the state and sent back next run
//! (`If-None-Match`, `If-Modified-Since`): an unchanged resource answers 304 and is not downloaded.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::Client;
use reqwest::header::{
    AUTHORIZATION, CONTENT_RANGE, ETAG, HeaderMap, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
    RANGE,
};
use serde::{Deserialize, Serialize};

use super::SourceError;

/// How HTTP sources are fetched.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Sent as `Authorization: Bearer <token>`; never logged.
    pub bearer_token: Option<String>,
    /// Timeout of one request (connect and body).
    pub timeout: Duration,
    /// Attempts after the first one.
    pub retries: u32,
    /// First backoff; doubles at each retry.
    pub backoff: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            bearer_token: None,
            timeout: Duration::from_secs(60),
            retries: 5,
            backoff: Duration::from_millis(200),
        }
    }
}

fn http_error(url: &str, detail: impl std::fmt::Display) -> SourceError {
    SourceError::HttpFailed {
        url: url.to_string(),
        detail: detail.to_string(),
    }
}

/// What a server said identifies the content it sent (its `ETag` and `Last-Modified` headers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl Validators {
    fn of(headers: &HeaderMap) -> Validators {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Validators {
            etag: text(ETAG),
            last_modified: text(LAST_MODIFIED),
        }
    }

    fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// The outcome of a download.
#[derive(Debug)]
pub enum Download {
    /// The content, in a temporary file, and what identifies it.
    Fetched(PathBuf, Validators),
    /// The server says the content is the one `known` identified (HTTP 304).
    NotModified,
}

/// Download `url` into a new temporary file, unless the server says it is still what `known`
/// identifies.
pub fn download_if_changed(
    url: &str,
    opts: &HttpOptions,
    known: Option<&Validators>,
) -> Result<Download, SourceError> {
    let client = Client::builder()
        .timeout(opts.timeout)
        .connect_timeout(opts.timeout)
        .build()
        .map_err(|e| http_error(url, e))?;
    let path = std::env::temp_dir().join(format!(
        "tap-kpis-http-{}-{}",
        std::process::id(),
        crate::normalize::plugins::md5_hex(url)
    ));
    let mut file = File::create(&path).map_err(|source| SourceError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut received: u64 = 0;
    let mut attempt = 0;
    let mut validators = Validators::default();
    let known = known.filter(|k| !k.is_empty());
    loop {
        match fetch_from(
            &client,
            url,
            opts,
            received,
            known,
            &mut file,
            &mut validators,
        ) {
            Ok(Fetch::Done(total)) => {
                tracing::info!("downloaded {url}: {total} bytes");
                return Ok(Download::Fetched(path, validators));
            }
            Ok(Fetch::NotModified) => {
                let _ = std::fs::remove_file(&path);
                tracing::info!("{url}: not modified since the last run");
                return Ok(Download::NotModified);
            }
            Ok(Fetch::Restart) => {
                file.set_len(0).and_then(|_| file.sync_all()).ok();
                file = File::create(&path).map_err(|source| SourceError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                received = 0;
                continue;
            }
            Ok(Fetch::Partial(n)) => received = n,
            Err(Failure::Fatal(e)) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            Err(Failure::Retry(detail, n)) => {
                received = n;
                if attempt >= opts.retries {
                    let _ = std::fs::remove_file(&path);
                    return Err(http_error(
                        url,
                        format!("giving up after {} attempts: {detail}", attempt + 1),
                    ));
                }
                let wait = opts.backoff * 2u32.saturating_pow(attempt);
                tracing::warn!(
                    "{url}: {detail}; retrying in {:.1}s from byte {received}",
                    wait.as_secs_f64()
                );
                std::thread::sleep(wait);
                attempt += 1;
            }
        }
    }
}

enum Fetch {
    /// Everything received; total bytes.
    Done(u64),
    /// HTTP 304 to a conditional request.
    NotModified,
    /// The server ignored the range: start again from byte 0.
    Restart,
    /// Some bytes arrived, the rest must be asked for.
    Partial(u64),
}

enum Failure {
    Fatal(SourceError),
    /// Retryable, with the bytes received so far.
    Retry(String, u64),
}

/// One request for `url` from byte `from`; a first request carries the `known` validators, and a full
/// response sets `validators`.
fn fetch_from(
    client: &Client,
    url: &str,
    opts: &HttpOptions,
    from: u64,
    known: Option<&Validators>,
    file: &mut File,
    validators: &mut Validators,
) -> Result<Fetch, Failure> {
    let mut req = client.get(url);
    if let Some(token) = &opts.bearer_token {
        req = req.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    if from > 0 {
        req = req.header(RANGE, format!("bytes={from}-"));
    } else if let Some(k) = known {
        if let Some(etag) = &k.etag {
            req = req.header(IF_NONE_MATCH, etag);
        }
        if let Some(date) = &k.last_modified {
            req = req.header(IF_MODIFIED_SINCE, date);
        }
    }
    let mut resp = req
        .send()
        .map_err(|e| Failure::Retry(format!("request failed: {}", without_url(&e)), from))?;
    let status = resp.status();
    if status == StatusCode::NOT_MODIFIED && from == 0 && known.is_some() {
        return Ok(Fetch::NotModified);
    }
    if status == StatusCode::RANGE_NOT_SATISFIABLE && from > 0 {
        return Ok(Fetch::Done(from));
    }
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        return Err(Failure::Retry(format!("HTTP {status}"), from));
    }
    if !status.is_success() {
        return Err(Failure::Fatal(http_error(url, format!("HTTP {status}"))));
    }
    let resumed = status == StatusCode::PARTIAL_CONTENT;
    if from > 0 && !resumed {
        return Ok(Fetch::Restart);
    }
    if !resumed {
        *validators = Validators::of(resp.headers());
    }
    if resumed
        && !resp.headers().get(CONTENT_RANGE).is_some_and(|v| {
            v.to_str()
                .is_ok_and(|s| s.contains(&format!("bytes {from}-")))
        })
    {
        return Ok(Fetch::Restart);
    }
    let expected = resp.content_length().map(|n| n + from);
    let mut received = from;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                file.write_all(&buf[..n])
                    .map_err(|e| Failure::Fatal(http_error(url, e)))?;
                received += n as u64;
            }
            Err(e) => {
                file.flush().ok();
                return Err(Failure::Retry(format!("body interrupted: {e}"), received));
            }
        }
    }
    file.flush()
        .map_err(|e| Failure::Fatal(http_error(url, e)))?;
    match expected {
        Some(total) if received < total => Ok(Fetch::Partial(received)),
        _ => Ok(Fetch::Done(received)),
    }
}

/// reqwest errors print the URL; keep the message only (the URL is named by the caller).
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(u) = e.url() {
        msg = msg.replace(u.as_str(), "<url>");
    }
    msg
}
