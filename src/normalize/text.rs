//! Shared text: project ids, environment hashes, versions and commands repeat on every event of a
//! fleet, so each distinct string is kept once and shared by every execution that carries it.

use std::collections::HashSet;
use std::sync::Arc;

/// A shared, immutable string; cloning it copies a pointer.
pub type Text = Arc<str>;

/// Hands out one shared copy of each distinct string.
#[derive(Debug, Clone, Default)]
pub struct Interner {
    texts: HashSet<Text, foldhash::fast::RandomState>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn get(&mut self, s: &str) -> Text {
        if let Some(t) = self.texts.get(s) {
            return t.clone();
        }
        let t: Text = Arc::from(s);
        self.texts.insert(t.clone());
        t
    }

    /// The shared copy of an optional string.
    pub fn opt(&mut self, s: Option<&str>) -> Option<Text> {
        s.map(|s| self.get(s))
    }

    /// Replace `t` by its shared copy (for text read from a state, allocated one by one).
    pub fn share(&mut self, t: &mut Text) {
        *t = self.get(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let mut i = Interner::default();
        let a = i.get("project-1");
        let b = i.get(&String::from("project-1"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &i.get("project-2")));
        let mut c: Text = Arc::from("project-1");
        i.share(&mut c);
        assert!(Arc::ptr_eq(&a, &c));
    }
}
