//! tap-kpis reads raw Meltano CLI telemetry and emits Meltano's product KPIs as Singer streams.
//!
//! Data flows one way through small stages, each knowing only its own job:
//!
//! * a **source** ([`source`]) resolves configured files, directories and globs into [`source::Input`]s
//!   and reads them as lines, gzip detected by content;
//! * a **decoder** ([`decode`]) turns each line (Snowplow tracker payloads, capture envelopes) into
//!   [`event::Event`]s, and each line or event it cannot use into a [`decode::Problem`] with a reason;
//! * the **normaliser** ([`normalize`]) removes duplicate events and groups events into
//!   [`normalize::Execution`]s and [`normalize::Project`]s: the [`normalize::Facts`];
//! * the **KPI engine** ([`kpi`]) is a set of pure functions from the facts and an `as_of` day to the rows
//!   of each KPI stream, sharing a precomputed [`kpi::Model`] (rows are JSON values; the largest stream,
//!   a row per project and active day, also yields its rows as JSON text, written without a tree each);
//! * the **stream registry** ([`streams`]) declares each stream: its name, its schema file under
//!   `schemas/`, its key properties and its record function; the [`catalog`] selects among them;
//! * **health** ([`health`]) checks KPI series against expected ranges and raises alarms;
//! * the **Singer writer** ([`singer`]) puts SCHEMA, RECORD and STATE messages on stdout.
//!
//! [`report`] closes the loop: it reads the KPI tables back from where Meltano loaded them (or from the
//! tap's own output) and draws them as one self-contained HTML page.
//!
//! [`collector`] is the other end: a Snowplow-compatible collector that writes what a Meltano fleet sends
//! as capture files the tap reads.
//!
//! [`sync::run`] wires the stages together; `main.rs` is the command-line edge that reads settings
//! ([`config`]) and reports errors; [`memory`] lets a short run keep its freed memory.

pub mod catalog;
pub mod changes;
pub mod collector;
pub mod compact;
pub mod config;
pub mod decode;
pub mod event;
pub mod generate;
pub mod health;
pub mod kpi;
pub mod memory;
pub mod normalize;
pub mod read;
pub mod report;
pub mod singer;
pub mod source;
pub mod state;
pub mod streams;
pub mod sync;
