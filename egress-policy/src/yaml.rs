//! A YAML document as a tree of nodes, each with the line and column where it
//! was written. Parsing uses `serde-saphyr` (safe Rust, bounded budgets for
//! aliases and nesting). Duplicate keys are kept, not merged, so the checker
//! can report every one of them rather than the parser stopping at the first.
//!
//! This module knows nothing about ACLs.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::Budget;
use serde_saphyr::options::Options;
use serde_saphyr::{DuplicateKeyPolicy, Location, Spanned};

use crate::diagnostic::Position;

/// The largest ACL file we parse. The biggest real policies are a few MiB.
pub const MAX_SOURCE_BYTES: usize = 64 * 1024 * 1024;
/// The most YAML nodes (scalars, lists, mappings) one file may hold.
pub const MAX_NODES: usize = 2_000_000;

/// One YAML node and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The value, with its children.
    pub value: Value,
    /// Line and column of the node's first character.
    pub at: Position,
    /// The scalar as written in the file (`0x10`, `yes`), for scalars that
    /// YAML typed as something other than a string.
    pub source_text: Option<String>,
}

/// A YAML value as the YAML 1.2 core schema types it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `null`, `~`, or nothing.
    Null,
    /// A boolean (how it was spelled is kept in [`Node::source_text`]).
    Bool(bool),
    /// An integer (`0x10` is 16).
    Int(i128),
    /// A floating-point number.
    Float(f64),
    /// Any other scalar.
    String(String),
    /// A sequence, in file order.
    Seq(Vec<Node>),
    /// A mapping, in file order, duplicate keys kept.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// How the value is described in "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "a number",
            Value::Float(_) => "a number",
            Value::String(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// A scalar's text: the string itself, or how a number or boolean was
    /// written (YAML 1.1 readers such as Smokescreen's see those as strings).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(self.source_text.clone().unwrap_or_else(|| b.to_string())),
            Value::Int(i) => Some(self.source_text.clone().unwrap_or_else(|| i.to_string())),
            Value::Float(f) => Some(self.source_text.clone().unwrap_or_else(|| f.to_string())),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }
}

/// A document that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// What is wrong, without a position prefix.
    pub message: String,
    /// Where the parser stopped (1:1 when it cannot say).
    pub at: Position,
}

/// Parses one YAML document. An empty document is `Null` at 1:1.
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(SyntaxError {
            message: format!("file is larger than {} MiB", MAX_SOURCE_BYTES / (1024 * 1024)),
            at: Position { line: 1, column: 1 },
        });
    }
    let mut options = Options::default();
    // Keep every duplicate: the visitor below sees them all and reports each.
    options.duplicate_keys = DuplicateKeyPolicy::LastWins;
    // The default node budget (250,000) is below what a 5,000-role v2 policy
    // needs (ports and internal destinations add about 30 nodes per role).
    // The file size limit above still bounds the work; this only lets a
    // large, legitimate policy through.
    let mut budget = Budget::default();
    budget.max_nodes = MAX_NODES;
    budget.max_events = 2 * MAX_NODES;
    options.budget = Some(budget);
    match serde_saphyr::from_str_with_options::<Option<Spanned<RawNode>>>(source, options) {
        Ok(Some(root)) => Ok(convert(root, source)),
        Ok(None) => Ok(Node { value: Value::Null, at: Position { line: 1, column: 1 }, source_text: None }),
        Err(error) => {
            let at = error.location().map(position).unwrap_or(Position { line: 1, column: 1 });
            let message = error.without_snippet().to_string();
            // serde-saphyr prefixes "error: line L column C: "; we print our own position.
            let message = match message.split_once(": ") {
                Some((head, rest)) if head.starts_with("error") => rest.to_owned(),
                _ => message,
            };
            let message = message
                .split_once(": ")
                .filter(|(head, _)| head.starts_with("line "))
                .map_or(message.clone(), |(_, rest)| rest.to_owned());
            Err(SyntaxError { message, at })
        }
    }
}

fn position(location: Location) -> Position {
    Position { line: location.line(), column: location.column() }
}

fn convert(raw: Spanned<RawNode>, source: &str) -> Node {
    let at = position(raw.referenced);
    let source_text = match raw.value {
        RawNode::Bool(_) | RawNode::Int(_) | RawNode::Float(_) => {
            let span = raw.referenced.span();
            span.byte_offset().zip(span.byte_len()).and_then(|(start, len)| {
                let start = usize::try_from(start).ok()?;
                let end = start.checked_add(usize::try_from(len).ok()?)?;
                source.get(start..end).map(str::to_owned)
            })
        }
        _ => None,
    };
    let value = match raw.value {
        RawNode::Null => Value::Null,
        RawNode::Bool(b) => Value::Bool(b),
        RawNode::Int(i) => Value::Int(i),
        RawNode::Float(f) => Value::Float(f),
        RawNode::String(s) => Value::String(s),
        RawNode::Seq(items) => Value::Seq(items.into_iter().map(|n| convert(n, source)).collect()),
        RawNode::Map(entries) => {
            Value::Map(entries.into_iter().map(|(k, v)| (convert(k, source), convert(v, source))).collect())
        }
    };
    Node { value, at, source_text }
}

/// What serde-saphyr hands us, before positions are flattened.
enum RawNode {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    String(String),
    Seq(Vec<Spanned<RawNode>>),
    Map(Vec<(Spanned<RawNode>, Spanned<RawNode>)>),
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawNodeVisitor)
    }
}

struct RawNodeVisitor;

impl<'de> Visitor<'de> for RawNodeVisitor {
    type Value = RawNode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }
    fn visit_none<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawNode, D::Error> {
        RawNode::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<RawNode, E> {
        Ok(RawNode::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<RawNode, E> {
        Ok(RawNode::Int(i128::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<RawNode, E> {
        Ok(RawNode::Int(i128::from(v)))
    }
    fn visit_i128<E>(self, v: i128) -> Result<RawNode, E> {
        Ok(RawNode::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawNode, E> {
        i128::try_from(v).map(RawNode::Int).map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<RawNode, E> {
        Ok(RawNode::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<RawNode, E> {
        Ok(RawNode::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<RawNode, E> {
        Ok(RawNode::String(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<RawNode, E> {
        String::from_utf8(v.to_vec()).map(RawNode::String).map_err(|_| E::custom("binary value is not UTF-8"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(RawNode::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(RawNode::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn nodes_carry_positions_and_duplicates_survive() {
        let root = parse("a: 1\nb:\n  - x\n  - 0x10\na: 2\n").unwrap();
        let Value::Map(entries) = root.value else { panic!("map expected") };
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2].0.at, Position { line: 5, column: 1 });
        let Value::Seq(items) = &entries[1].1.value else { panic!("seq expected") };
        assert_eq!(items[0].at, Position { line: 3, column: 5 });
        assert_eq!(items[1].scalar_text().as_deref(), Some("0x10"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(err.at.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn empty_and_comment_only_documents_are_null() {
        assert_eq!(parse("").unwrap().value, Value::Null);
        assert_eq!(parse("# nothing\n").unwrap().value, Value::Null);
    }
}
