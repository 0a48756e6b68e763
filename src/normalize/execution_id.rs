//! An execution id held in place: a fleet's year has hundreds of thousands of executions, each
//! with a 36-character UUID, and a shared string per id (its text, its counts and the allocator's
//! rounding: about 70 bytes, apart from the execution) was a fifth of what the executions held.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use super::text::Text;

/// Ids up to this length (a UUID's text) are kept in place.
const INLINE: usize = 36;

/// The text of an execution id, which it derefs to: in place when it is at most 36 bytes long (a
/// UUID as Meltano writes it), shared otherwise. Compares, hashes and orders as its text.
#[derive(Clone)]
pub struct ExecutionId(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Text),
}

impl ExecutionId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: an inline id is only made by `From<&str>`, which copies a whole `&str` into
            // the first `len` bytes, so they are UTF-8 (checked when the id was a `&str`, and not
            // again on every hash, comparison and write)
            Repr::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[..usize::from(*len)])
            },
            Repr::Shared(t) => t,
        }
    }
}

impl From<&str> for ExecutionId {
    fn from(s: &str) -> Self {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            // the length fits: it is at most INLINE
            ExecutionId(Repr::Inline {
                len: s.len() as u8,
                bytes,
            })
        } else {
            ExecutionId(Repr::Shared(Text::from(s)))
        }
    }
}

impl From<String> for ExecutionId {
    fn from(s: String) -> Self {
        ExecutionId::from(s.as_str())
    }
}

impl Deref for ExecutionId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ExecutionId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for ExecutionId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ExecutionId {}

impl PartialEq<str> for ExecutionId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl Hash for ExecutionId {
    /// As the text's hash, so that a set of ids can be probed with a `&str`.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialOrd for ExecutionId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ExecutionId {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            // as text orders: byte by byte, without checking the bytes are UTF-8 again
            (Repr::Inline { len: a, bytes: x }, Repr::Inline { len: b, bytes: y }) => {
                x[..usize::from(*a)].cmp(&y[..usize::from(*b)])
            }
            _ => self.as_str().cmp(other.as_str()),
        }
    }
}

impl std::fmt::Debug for ExecutionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ExecutionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ExecutionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: std::borrow::Cow<'de, str> = serde::Deserialize::deserialize(d)?;
        Ok(ExecutionId::from(&*s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_of_any_length_come_back_as_they_were_and_compare_as_text() {
        let uuid = "0f9e8d7c-6b5a-4f3e-9d2c-1b0a99887766";
        let long = "an execution id longer than a uuid's thirty-six characters";
        let texts = [
            "",
            "x1",
            "é-ü",
            uuid,
            long,
            "0f9e8d7c",
            "0f9e8d7c-6b5a-4f3e-9d2c-1b0a998877660",
        ];
        let ids: Vec<ExecutionId> = texts.iter().map(|&t| ExecutionId::from(t)).collect();
        for (id, t) in ids.iter().zip(texts) {
            assert_eq!(id.as_str(), t);
            assert_eq!(&**id, t);
            assert_eq!(id.to_string(), t);
        }
        assert!(matches!(ExecutionId::from(uuid).0, Repr::Inline { .. }));
        assert!(matches!(ExecutionId::from(long).0, Repr::Shared(_)));
        for a in &ids {
            for b in &ids {
                assert_eq!(a.cmp(b), a.as_str().cmp(b.as_str()), "{a:?} {b:?}");
                assert_eq!(a == b, a.as_str() == b.as_str());
            }
        }
        let set: HashSet<ExecutionId> = ids.iter().cloned().collect();
        assert!(set.contains(uuid) && set.contains(long) && !set.contains("x2"));
        assert_eq!(
            serde_json::to_string(&ids[3]).unwrap(),
            format!("\"{uuid}\"")
        );
        let back: ExecutionId = serde_json::from_str(&format!("\"{long}\"")).unwrap();
        assert_eq!(back, ids[4]);
    }

    #[test]
    fn an_id_takes_no_more_room_than_its_text_and_a_length() {
        assert!(std::mem::size_of::<ExecutionId>() <= 40);
    }
}
