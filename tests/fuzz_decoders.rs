//! Fuzzing every decoder with random bytes and random mutations of real lines: nothing panics, and
//! every line yields events or problems with a reason, never silence for non-blank input.

mod common;

use proptest::prelude::*;
use tap_kpis::decode::{self, Format};
use tap_kpis::event::Position;

const FORMATS: [Format; 3] = [Format::Tp2, Format::EnrichedTsv, Format::EnrichedJson];

fn real_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for f in [
        "meltano-real/captures.ndjson",
        "meltano-old/meltano-2.1.0.ndjson",
    ] {
        let text = std::fs::read_to_string(common::shared(&format!("data/{f}"))).unwrap();
        lines.extend(text.lines().map(str::to_string));
    }
    lines
}

fn check(line: &str) {
    for format in FORMATS {
        let out = decode::decode_line(format, line, &Position::default());
        if !line.trim().is_empty() {
            assert!(
                !out.events.is_empty() || !out.problems.is_empty(),
                "{format:?} silent on {line:?}"
            );
        }
        for p in &out.problems {
            assert!(p.excerpt.len() <= decode::EXCERPT_BYTES);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(s in "\\PC{0,400}") {
        check(&s);
    }

    #[test]
    fn random_json_shapes_never_panic(s in r#"\{("(e|ue_px|cx|body|schema|data|query|dtm|stm|eid)": ?("[a-zA-Z0-9=_-]{0,40}"|[0-9]{1,14}|null|\[\]|\{\}|true),? ?){0,6}\}"#) {
        check(&s);
    }

    #[test]
    fn mutated_real_lines_never_panic(idx in 0usize..100, cuts in proptest::collection::vec((0usize..20_000, any::<u8>()), 1..8), truncate in 0usize..20_000) {
        let lines = real_lines();
        let mut bytes = lines[idx % lines.len()].clone().into_bytes();
        for (pos, b) in cuts {
            let i = pos % bytes.len();
            bytes[i] = b;
        }
        if truncate % 3 == 0 {
            bytes.truncate(truncate % bytes.len().max(1));
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        check(&text);
    }
}
