//! The parse floor: what reading Meltano telemetry costs with nothing else done. One thread gunzips
//! capture files, splits lines, parses the envelopes, base64-decodes `ue_px` and `cx`, and deserialises
//! only the fields the KPIs need into typed, borrowed structs. The benchmark compares the tap's full
//! refresh against this. Usage: `parse-floor FILE...`; prints events and seconds.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read};
use std::time::Instant;

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    body: Option<Payload<'a>>,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    data: Vec<Event<'a>>,
}

#[derive(Deserialize)]
struct Event<'a> {
    e: Cow<'a, str>,
    eid: Option<Cow<'a, str>>,
    dtm: Option<Cow<'a, str>>,
    stm: Option<Cow<'a, str>>,
    ue_px: Option<Cow<'a, str>>,
    cx: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct SelfDescribing<'a> {
    #[serde(borrow)]
    schema: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct Contexts<'a> {
    #[serde(borrow)]
    data: Vec<SelfDescribing<'a>>,
}

#[derive(Deserialize)]
struct CliEvent<'a> {
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    exit_code: Option<i64>,
}

#[derive(Deserialize)]
struct Project<'a> {
    #[serde(borrow)]
    context_uuid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    project_uuid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    project_uuid_source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    environment_name_hash: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Environment<'a> {
    #[serde(borrow)]
    meltano_version: Option<Cow<'a, str>>,
    is_ci_environment: Option<bool>,
}

#[derive(Deserialize)]
struct Cli<'a> {
    #[serde(borrow)]
    command: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sub_command: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Plugins<'a> {
    #[serde(borrow)]
    plugins: Vec<&'a RawValue>,
}

fn b64(text: &str) -> Option<Vec<u8>> {
    let t = text.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
        .ok()
}

/// Decode one event's payloads; returns a number that depends on every field read.
fn event(ev: &Event) -> usize {
    let mut n = ev.e.len() + ev.eid.as_ref().map_or(0, |s| s.len());
    n += ev.dtm.as_ref().map_or(0, |s| s.len()) + ev.stm.as_ref().map_or(0, |s| s.len());
    if let Some(bytes) = ev.ue_px.as_deref().and_then(b64)
        && let Ok(outer) = serde_json::from_slice::<SelfDescribing>(&bytes)
        && let Ok(inner) = serde_json::from_str::<SelfDescribing>(outer.data.get())
        && let Ok(cli) = serde_json::from_str::<CliEvent>(inner.data.get())
    {
        n += inner.schema.len()
            + cli.event.map_or(0, |e| e.len())
            + cli.exit_code.unwrap_or(0) as usize;
    }
    if let Some(bytes) = ev.cx.as_deref().and_then(b64)
        && let Ok(cx) = serde_json::from_slice::<Contexts>(&bytes)
    {
        for c in &cx.data {
            let d = c.data.get();
            n += if c.schema.contains("/project_context/") {
                serde_json::from_str::<Project>(d).map_or(0, |p| {
                    p.context_uuid.map_or(0, |s| s.len())
                        + p.project_uuid.map_or(0, |s| s.len())
                        + p.project_uuid_source.map_or(0, |s| s.len())
                        + p.environment_name_hash.map_or(0, |s| s.len())
                })
            } else if c.schema.contains("/environment_context/") {
                serde_json::from_str::<Environment>(d).map_or(0, |e| {
                    e.meltano_version.map_or(0, |s| s.len())
                        + usize::from(e.is_ci_environment == Some(true))
                })
            } else if c.schema.contains("/cli_context/") {
                serde_json::from_str::<Cli>(d).map_or(0, |c| {
                    c.command.map_or(0, |s| s.len()) + c.sub_command.map_or(0, |s| s.len())
                })
            } else if c.schema.contains("/plugins_context/") {
                serde_json::from_str::<Plugins>(d).map_or(0, |p| p.plugins.len())
            } else {
                0
            };
        }
    }
    n
}

fn main() {
    let started = Instant::now();
    let (mut events, mut check) = (0u64, 0usize);
    for path in std::env::args().skip(1) {
        let Ok(file) = std::fs::File::open(&path) else {
            eprintln!("parse-floor: cannot open {path}");
            std::process::exit(1);
        };
        let mut head = BufReader::with_capacity(1 << 17, file);
        let gz = head.fill_buf().is_ok_and(|b| b.starts_with(&[0x1f, 0x8b]));
        let reader: Box<dyn Read> = if gz {
            Box::new(flate2::read::MultiGzDecoder::new(head))
        } else {
            Box::new(head)
        };
        let mut lines = BufReader::with_capacity(1 << 17, reader);
        let mut line = Vec::new();
        while lines.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            if let Ok(env) = serde_json::from_slice::<Envelope>(&line)
                && let Some(body) = env.body
            {
                for ev in &body.data {
                    events += 1;
                    check = check.wrapping_add(event(ev));
                }
            }
            line.clear();
        }
    }
    println!(
        "{{\"events\": {events}, \"seconds\": {:.3}, \"check\": {check}}}",
        started.elapsed().as_secs_f64()
    );
}
