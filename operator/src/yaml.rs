//! YAML output that every Kubernetes tool reads the same way.
//!
//! `serde_yaml` writes YAML 1.2, where `n` is a string. kubectl and Helm read YAML
//! through `sigs.k8s.io/yaml`, which follows YAML 1.1: there an unquoted `n`, `y`, `no`,
//! `on`, ... is a boolean. The CRD's `replication.n` property written as `n:` would
//! arrive at the API server as a property named `"false"` (and its CEL rule `self.n`
//! would not compile). [`to_string`] quotes such words where they stand alone as a
//! mapping key or a sequence item, and checks that the result still parses to the same
//! value.

use serde::Serialize;

/// The words YAML 1.1 reads as booleans and YAML 1.2 as strings.
const YAML_1_1_BOOLEANS: &[&str] = &[
    "y", "Y", "n", "N", "yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Why a value could not be written as YAML.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum YamlError {
    /// `serde_yaml` could not serialize or re-read the value.
    #[error("yaml: {0}")]
    Serde(#[from] serde_yaml::Error),
    /// Quoting changed the value (a block scalar line that looked like a key): a bug.
    #[error("quoting YAML 1.1 booleans changed the document")]
    Changed,
}

/// `value` as YAML whose meaning is the same under YAML 1.1 and 1.2.
///
/// # Errors
/// [`YamlError`] when the value does not serialize, or quoting would change it.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, YamlError> {
    let plain = serde_yaml::to_string(value)?;
    let mut quoted = String::with_capacity(plain.len() + 64);
    // Indentation of the line that opened the block scalar (`key: |`) being read: its
    // more-indented (and blank) lines are text, never keys.
    let mut block_scalar_of: Option<usize> = None;
    for line in plain.lines() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let in_block = block_scalar_of.is_some_and(|open| line.trim().is_empty() || indent > open);
        if in_block {
            quoted.push_str(line);
        } else {
            block_scalar_of = opens_block_scalar(line).then_some(indent);
            quoted.push_str(&quote_line(line));
        }
        quoted.push('\n');
    }
    let before: serde_yaml::Value = serde_yaml::from_str(&plain)?;
    let after: serde_yaml::Value = serde_yaml::from_str(&quoted)?;
    if before == after {
        Ok(quoted)
    } else {
        Err(YamlError::Changed)
    }
}

/// Whether the line ends in a block scalar indicator (`|`, `|-`, `>+`, ...).
fn opens_block_scalar(line: &str) -> bool {
    let last = line.trim_end().rsplit(' ').next().unwrap_or("");
    matches!(last.chars().next(), Some('|' | '>'))
        && last[1..]
            .chars()
            .all(|c| matches!(c, '-' | '+' | '1'..='9'))
}

/// Quotes a lone YAML 1.1 boolean word used as a key (`  n:` / `  n: 3`) or as a
/// sequence item (`- n`).
fn quote_line(line: &str) -> String {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let (prefix, rest) = line.split_at(indent);
    let (dash, rest) = match rest.strip_prefix("- ") {
        Some(item) => ("- ", item),
        None => ("", rest),
    };
    let (word, tail) = match rest.find(':') {
        Some(colon) if rest[colon + 1..].is_empty() || rest[colon + 1..].starts_with(' ') => {
            rest.split_at(colon)
        }
        _ if !dash.is_empty() => (rest, ""),
        _ => return line.to_owned(),
    };
    if YAML_1_1_BOOLEANS.contains(&word) {
        format!("{prefix}{dash}'{word}'{tail}")
    } else {
        line.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn lone_boolean_words_are_quoted_as_keys_and_items() {
        let value = serde_json::json!({
            "n": 3,
            "nested": {"y": {"on": "off"}, "list": ["n", "no way", "north"]},
            "north": "n",
            "text": "first line\nn: not a key\n"
        });
        let yaml = to_string(&value).unwrap();
        assert!(yaml.contains("'n': 3"), "{yaml}");
        assert!(yaml.contains("'y':"), "{yaml}");
        assert!(yaml.contains("'on': "), "{yaml}");
        assert!(yaml.contains("- 'n'\n"), "{yaml}");
        assert!(yaml.contains("- no way\n"), "{yaml}");
        assert!(yaml.contains("north: "), "{yaml}");
        let back: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn other_lines_are_untouched() {
        let value: BTreeMap<&str, &str> = [("name", "db"), ("nope", "n")].into();
        assert_eq!(
            to_string(&value).unwrap(),
            serde_yaml::to_string(&value).unwrap()
        );
    }

    #[test]
    fn block_scalar_text_is_left_alone() {
        let value = serde_json::json!({"doc": "a\nn: b\n- n\n", "n": 1});
        let yaml = to_string(&value).unwrap();
        assert!(yaml.contains("\n  n: b\n  - n\n"), "{yaml}");
        assert!(yaml.contains("'n': 1"), "{yaml}");
    }

    #[test]
    fn the_crd_quotes_replication_n() {
        use kube::CustomResourceExt;
        let crd = crate::crd::DynamoCluster::crd();
        let yaml = to_string(&crd).unwrap();
        // The property, the default's key and the required list all name it.
        assert!(yaml.matches("'n':").count() >= 2, "{yaml}");
        let back: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, serde_json::to_value(&crd).unwrap());
    }
}
