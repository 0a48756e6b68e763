//! The events of executions while the input is read, in 40 bytes each: what an execution needs of
//! an event, kept until the dedup pass has said which copies count and the executions are folded.
//!
//! A full refresh holds one entry per event read, so the entry's size is most of what memory grows by
//! with the number of events. Events of one input line share where they were read (source, line,
//! offset): that is stored once per line, and each event keeps its line's number and its index in it.
//! The dedup time and the exit code are kept as 32-bit numbers (the dedup time relative to the event
//! time); the rare value that does not fit is kept in a side table.

use super::arena::{Arena, LARGE_CHUNKS};
use super::text::FastMap;
use crate::event::Position;

/// Where the events of one input line were read.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LineAt {
    source: u32,
    line: u64,
    offset: u64,
}

/// One stored event (see the module docs).
#[derive(Debug, Clone)]
struct Stored {
    time: i64,
    /// Dedup time minus event time; [`NO_VALUE`] when none, [`FAR`] when in the side table.
    dedup_delta: i32,
    /// [`NO_VALUE`] when the event carries no exit code, [`FAR`] when in the side table.
    exit_code: i32,
    /// Index into the store's lines.
    line: u32,
    /// Index of the event inside its line's batch.
    index: u32,
    variant: u32,
    plugins: u32,
    prev: u32,
    is_block: bool,
    alive: bool,
}

const NO_VALUE: i32 = i32::MIN;
const FAR: i32 = i32::MIN + 1;

/// Values of an event that do not fit its entry.
#[derive(Debug, Default, Clone, Copy)]
struct Far {
    dedup_ms: Option<i64>,
    exit_code: Option<i64>,
}

/// What is stored of an event, as it was given.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LiteEvent {
    pub time: i64,
    pub dedup_ms: Option<i64>,
    pub exit_code: Option<i64>,
    /// Index into the normaliser's variants.
    pub variant: u32,
    /// Index into the normaliser's plugin lists, [`NO_PLUGINS`] when the event has none.
    pub plugins: u32,
    /// The same execution's event stored before this one, [`NO_EVENT`] for its first.
    pub prev: u32,
    pub is_block: bool,
    pub alive: bool,
}

pub(super) const NO_PLUGINS: u32 = u32::MAX;
pub(super) const NO_EVENT: u32 = u32::MAX;

/// The stored events, addressed by the `u32` index [`EventStore::push`] returns.
#[derive(Debug, Default)]
pub(super) struct EventStore {
    events: Arena<Stored, LARGE_CHUNKS>,
    lines: Arena<LineAt, LARGE_CHUNKS>,
    far: FastMap<u32, Far>,
}

/// `value` as a 32-bit entry, or [`FAR`] when it needs the side table.
fn narrow(value: Option<i64>) -> (i32, bool) {
    match value {
        None => (NO_VALUE, false),
        Some(v) => match i32::try_from(v) {
            Ok(n) if n > FAR => (n, false),
            _ => (FAR, true),
        },
    }
}

impl EventStore {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Store an event read at `position`; returns its index.
    pub fn push(&mut self, event: LiteEvent, position: &Position) -> u32 {
        let at = LineAt {
            source: position.source,
            line: position.line,
            offset: position.offset,
        };
        let line = match self.lines.last() {
            Some(last) if *last == at => (self.lines.len() - 1) as u32,
            _ => self.lines.push(at),
        };
        let index = self.events.len() as u32;
        let dedup_delta = event.dedup_ms.map(|d| d.saturating_sub(event.time));
        let (dedup_delta, dedup_far) = narrow(dedup_delta);
        let (exit_code, exit_far) = narrow(event.exit_code);
        if dedup_far || exit_far {
            self.far.insert(
                index,
                Far {
                    dedup_ms: event.dedup_ms.filter(|_| dedup_far),
                    exit_code: event.exit_code.filter(|_| exit_far),
                },
            );
        }
        self.events.push(Stored {
            time: event.time,
            dedup_delta,
            exit_code,
            line,
            index: position.index,
            variant: event.variant,
            plugins: event.plugins,
            prev: event.prev,
            is_block: event.is_block,
            alive: event.alive,
        })
    }

    /// The event at `index`; `None` past the end or once freed.
    pub fn get(&self, index: u32) -> Option<LiteEvent> {
        let s = self.events.get(index)?;
        let far = || self.far.get(&index).copied().unwrap_or_default();
        let dedup_ms = match s.dedup_delta {
            NO_VALUE => None,
            FAR => far().dedup_ms,
            d => Some(s.time + i64::from(d)),
        };
        let exit_code = match s.exit_code {
            NO_VALUE => None,
            FAR => far().exit_code,
            c => Some(i64::from(c)),
        };
        Some(LiteEvent {
            time: s.time,
            dedup_ms,
            exit_code,
            variant: s.variant,
            plugins: s.plugins,
            prev: s.prev,
            is_block: s.is_block,
            alive: s.alive,
        })
    }

    /// Where the event at `index` was read.
    pub fn position(&self, index: u32) -> Option<Position> {
        let s = self.events.get(index)?;
        let at = self.lines.get(s.line)?;
        Some(Position {
            source: at.source,
            line: at.line,
            offset: at.offset,
            index: s.index,
        })
    }

    /// Mark the event at `index` as not counted (a copy another one replaces).
    pub fn retire(&mut self, index: u32) {
        if let Some(s) = self.events.get_mut(index) {
            s.alive = false;
        }
    }

    /// The live events in order.
    pub fn live_times(&self) -> impl Iterator<Item = i64> + '_ {
        self.events.iter().filter(|e| e.alive).map(|e| e.time)
    }

    /// Free what lies before `index`: no event before it will be read again (nor, since events are
    /// stored in reading order, the lines they were read from).
    pub fn free_before(&mut self, index: u32) {
        if let Some(s) = self.events.get(index) {
            self.lines.free_before(s.line);
        }
        self.events.free_before(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time: i64, dedup_ms: Option<i64>, exit_code: Option<i64>, prev: u32) -> LiteEvent {
        LiteEvent {
            time,
            dedup_ms,
            exit_code,
            variant: 3,
            plugins: NO_PLUGINS,
            prev,
            is_block: true,
            alive: true,
        }
    }

    fn at(source: u32, line: u64, index: u32) -> Position {
        Position {
            source,
            line,
            offset: line * 100,
            index,
        }
    }

    #[test]
    fn entries_are_40_bytes() {
        assert_eq!(std::mem::size_of::<Stored>(), 40);
    }

    #[test]
    fn every_value_comes_back_as_given_near_or_far() {
        let t = 1_700_000_000_000;
        let cases = [
            event(t, None, None, NO_EVENT),
            event(t, Some(t + 1_500), Some(0), 0),
            event(t, Some(t - 3), Some(-1), 1),
            event(t, Some(t + 40 * 86_400_000), Some(i64::from(i32::MAX)), 2),
            event(i64::MAX - 5, Some(i64::MIN), Some(i64::from(i32::MIN)), 3),
            event(i64::MIN, Some(i64::MAX), Some(i64::from(FAR)), 4),
            event(-7, Some(i64::from(NO_VALUE) - 7), Some(i64::MAX), 5),
        ];
        let mut store = EventStore::default();
        for (n, e) in cases.iter().enumerate() {
            assert_eq!(
                store.push(e.clone(), &at(1, n as u64 / 2, n as u32)),
                n as u32
            );
        }
        for (n, e) in cases.iter().enumerate() {
            assert_eq!(store.get(n as u32).as_ref(), Some(e), "case {n}");
            assert_eq!(
                store.position(n as u32),
                Some(at(1, n as u64 / 2, n as u32))
            );
        }
        assert_eq!(store.get(cases.len() as u32), None);
    }

    #[test]
    fn events_of_one_line_share_it_and_freed_ones_are_gone() {
        let mut store = EventStore::default();
        let n = 100u32;
        for i in 0..n {
            store.push(
                event(i64::from(i), None, None, NO_EVENT),
                &at(0, u64::from(i / 4), i % 4),
            );
        }
        assert_eq!(store.lines.len(), 25);
        store.retire(1);
        assert_eq!(store.live_times().count(), 99);
        store.free_before(60);
        assert_eq!(store.get(0), None);
        assert_eq!(store.position(60), Some(at(0, 15, 0)));
        assert_eq!(store.get(99).map(|e| e.time), Some(99));
    }
}
