//! Where the members of a state's part lie, found without reading its long strings byte by byte.
//!
//! A state is a few small values and a few base64 texts of megabytes. Reading its structure with
//! `serde_json` checks every byte of those texts for the end of the string one at a time or so
//! (about 11 ms for a 24 MB state, before anything else of a run can start). Here the strings are
//! searched 64 bytes at a time for the bytes that matter in a JSON string (a quote, a backslash, a
//! control character), and every other value is read and checked by `serde_json` itself. The
//! result is the same as `serde_json`'s; what this reading does not expect (the top level not an
//! object, a key with escapes, a repeated part) gives `None`, and the caller reads the text with
//! `serde_json`, which says what is wrong with it, if anything.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;

/// The members of the object at `key` of the top-level object of `text`, each as its JSON text:
/// `Some(None)` when the text is JSON without that key (or with `null` there), `None` when this
/// reading cannot tell (see the module's text).
pub(super) fn members_of<'a>(
    text: &'a str,
    key: &str,
) -> Option<Option<BTreeMap<String, &'a str>>> {
    let mut at = Cursor { text, at: 0 };
    at.eat(b'{')?;
    let mut found = None;
    let mut seen = false;
    if at.peek()? == b'}' {
        at.at += 1;
    } else {
        loop {
            let name = at.key()?;
            at.eat(b':')?;
            if name == key {
                if seen {
                    return None;
                }
                seen = true;
                found = match at.peek()? {
                    b'{' => Some(at.object()?),
                    _ if at.value()? == "null" => None,
                    _ => return None,
                };
            } else {
                at.value()?;
            }
            if !at.end_of_member()? {
                break;
            }
        }
    }
    at.skip_space();
    (at.at == text.len()).then_some(found)
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte that is not white space.
    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.bytes().get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// Past the `,` between members (`true`) or the `}` that closes the object (`false`).
    fn end_of_member(&mut self) -> Option<bool> {
        let more = match self.peek()? {
            b',' => true,
            b'}' => false,
            _ => return None,
        };
        self.at += 1;
        Some(more)
    }

    /// The members of the object at the cursor, each as its JSON text.
    fn object(&mut self) -> Option<BTreeMap<String, &'a str>> {
        self.eat(b'{')?;
        let mut members = BTreeMap::new();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(members);
        }
        loop {
            let name = self.key()?;
            self.eat(b':')?;
            // a repeated key: the last one stands, as when `serde_json` reads it into a map
            members.insert(name.to_string(), self.value()?);
            if !self.end_of_member()? {
                return Some(members);
            }
        }
    }

    /// A key without escapes: its text.
    fn key(&mut self) -> Option<&'a str> {
        let string = self.string()?;
        let inner = &string[1..string.len() - 1];
        (!inner.contains('\\')).then_some(inner)
    }

    /// The value at the cursor, checked to be JSON: its text.
    fn value(&mut self) -> Option<&'a str> {
        if self.peek()? == b'"' {
            return self.string();
        }
        let rest = &self.text[self.at..];
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<IgnoredAny>();
        values.next()?.ok()?;
        let len = values.byte_offset();
        self.at += len;
        Some(&rest[..len])
    }

    /// The JSON string at the cursor, quotes included, checked to be one.
    fn string(&mut self) -> Option<&'a str> {
        self.skip_space();
        let start = self.at;
        if self.bytes().get(start) != Some(&b'"') {
            return None;
        }
        let mut at = start + 1;
        let mut escaped = false;
        loop {
            at += first_special(self.bytes().get(at..)?)?;
            match self.bytes()[at] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    at += 2;
                }
                _ => return None, // a control character
            }
        }
        self.at = at + 1;
        let string = self.text.get(start..self.at)?;
        // escapes are checked by `serde_json` (they are rare in a state, and short)
        if escaped {
            serde_json::from_str::<IgnoredAny>(string).ok()?;
        }
        Some(string)
    }
}

/// Where the first byte lies that ends a JSON string, starts an escape or may not be in one (a
/// control character). Looked for 64 bytes at a time, which the compiler turns into vector
/// instructions: most of a state's bytes are base64 text with none of them.
fn first_special(bytes: &[u8]) -> Option<usize> {
    let special = |b: u8| b == b'"' || b == b'\\' || b < 0x20;
    let mut clean = 0;
    for chunk in bytes.chunks_exact(64) {
        if chunk.iter().fold(false, |any, &b| any | special(b)) {
            break;
        }
        clean += 64;
    }
    bytes
        .get(clean..)?
        .iter()
        .position(|&b| special(b))
        .map(|i| clean + i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// What `serde_json` reads of the same text.
    fn by_serde(text: &str) -> Result<Option<BTreeMap<String, String>>, ()> {
        #[derive(serde::Deserialize)]
        struct Top<'a> {
            #[serde(borrow, default)]
            tap_kpis: Option<BTreeMap<String, &'a RawValue>>,
        }
        let top: Top<'_> = serde_json::from_str(text).map_err(|_| ())?;
        Ok(top.tap_kpis.map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, v.get().to_string()))
                .collect()
        }))
    }

    fn by_skeleton(text: &str) -> Option<Option<BTreeMap<String, String>>> {
        members_of(text, "tap_kpis")
            .map(|found| found.map(|m| m.into_iter().map(|(k, v)| (k, v.to_string())).collect()))
    }

    #[test]
    fn members_are_found_as_serde_json_finds_them() {
        let long = "QUJD".repeat(100);
        let texts = [
            format!(
                r#"{{"bookmarks":{{}},"tap_kpis":{{"a":1,"ledger":"{long}","b":[1,{{"c":"}}"}}],"d":null}}}}"#
            ),
            format!(
                "{{ \"tap_kpis\" : {{ \"x\" : \"{long}\" ,\n\"y\":\t-1.5e3 }} , \"other\": [\"{{\", \"\\\"\"] }}\n"
            ),
            r#"{"tap_kpis":{"h":"a\"b\\c\u0041","h":"again"}}"#.to_string(),
            r#"{"tap_kpis":{}}"#.to_string(),
            r#"{"tap_kpis":null,"z":true}"#.to_string(),
            r#"{}"#.to_string(),
            r#"{"other":{"tap_kpis":{"a":1}}}"#.to_string(),
            "{\"a\" : \"b\" ,\n \"tap_kpis\" :{ \"c\" : \"d\" ,\r\n\t\"e\":[] } }".to_string(),
        ];
        for text in &texts {
            assert_eq!(by_skeleton(text), Some(by_serde(text).unwrap()), "{text}");
        }
    }

    #[test]
    fn text_that_is_not_json_is_left_to_serde_json() {
        let bad = [
            "",
            "{",
            r#"{"tap_kpis":{"a":1,}}"#,
            r#"{"tap_kpis":{"a":1}} x"#,
            "{\"tap_kpis\":{\"a\":\"line\nbreak\"}}",
            r#"{"tap_kpis":{"a":"bad \q escape"}}"#,
            r#"{"tap_kpis":{"a":tru}}"#,
            r#"{"tap_kpis":{"a" 1}}"#,
            r#"{"tap_kpis":{"a":"unclosed}}"#,
            r#"{"other":[1,2}"#,
        ];
        for text in bad {
            assert!(by_serde(text).is_err(), "{text}");
            assert_eq!(by_skeleton(text), None, "{text}");
        }
    }

    #[test]
    fn what_this_reading_does_not_expect_is_left_to_serde_json() {
        // valid JSON, read by `serde_json` instead
        for text in [
            r#"[1]"#,
            r#"{"tap_kpis":1}"#,
            r#"{"tap\u005fkpis":{"a":1}}"#,
            r#"{"tap_kpis":{"a":1},"tap_kpis":{"b":2}}"#,
        ] {
            assert_eq!(by_skeleton(text), None, "{text}");
        }
    }

    #[test]
    fn special_bytes_are_found_wherever_they_lie_in_a_block() {
        for len in [0, 1, 63, 64, 65, 200] {
            let clean = vec![b'A'; len];
            assert_eq!(first_special(&clean), None);
            for at in 0..len {
                for byte in [b'"', b'\\', 0x00, 0x1f] {
                    let mut bytes = clean.clone();
                    bytes[at] = byte;
                    assert_eq!(first_special(&bytes), Some(at), "{len} {at} {byte}");
                }
            }
        }
    }
}
