//! Iglu schema URIs (`iglu:vendor/name/format/M-R-A`), matched by vendor and name as the spec requires.

/// A parsed Iglu URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaRef<'a> {
    pub vendor: &'a str,
    pub name: &'a str,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// Parse `iglu:vendor/name/jsonschema/M-R-A`; `None` if it is not of that form.
pub fn parse(uri: &str) -> Option<SchemaRef<'_>> {
    let rest = uri.strip_prefix("iglu:")?;
    let mut parts = rest.split('/');
    let vendor = parts.next()?;
    let name = parts.next()?;
    let _format = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || vendor.is_empty() || name.is_empty() {
        return None;
    }
    let mut nums = version.split('-').map(|n| n.parse::<u32>().ok());
    let (major, minor, patch) = (nums.next()??, nums.next()??, nums.next()??);
    if nums.next().is_some() {
        return None;
    }
    Some(SchemaRef {
        vendor,
        name,
        major,
        minor,
        patch,
    })
}

/// Vendor of every Meltano schema.
pub const MELTANO: &str = "com.meltano";
/// Vendor of Snowplow's own envelopes.
pub const SNOWPLOW: &str = "com.snowplowanalytics.snowplow";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meltano_uri() {
        let s = parse("iglu:com.meltano/cli_event/jsonschema/1-0-1").unwrap();
        assert_eq!(
            (s.vendor, s.name, s.major, s.minor, s.patch),
            ("com.meltano", "cli_event", 1, 0, 1)
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "iglu:",
            "iglu:a/b/c",
            "iglu:a/b/c/1-0",
            "iglu:a/b/c/x-0-0",
            "http:a/b/c/1-0-0",
            "iglu:a/b/c/1-0-0/x",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
