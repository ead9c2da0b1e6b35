//! Edits an ACL file's text to add `suggest`'s entries, without
//! re-serialising it: every line it does not touch stays byte-for-byte as
//! written (comments, order, quoting, blank lines, line endings).
//!
//! Additions follow the file's own style: new list items copy the indentation
//! of the list's last item and its quoting (wildcards, which YAML would read
//! as aliases unquoted, get the file's quote character); a service without
//! `allowed_domains` gets the key; a role without a service gets a new
//! service appended to `services`. A one-line flow list (`[a, b]`) is
//! rewritten as a block list, since each new entry carries its own comment.
//!
//! Every value written that came from a log (role names, projects) is quoted
//! and escaped when it is not a plain safe word, so no log line can inject
//! YAML. Layouts this editor cannot change safely (flow mappings, multi-line
//! flow lists) are refused with a message, never guessed at. The caller
//! checks the result with the real checker before writing it anywhere.
//!
//! Ports (policy v2) go into the service's existing `allowed_ports` list: a
//! block list gets one `- port # suggested: ...` item per port; a one-line
//! flow list (`[443, 8443]`) is extended in place, its comment at the end of
//! the line.
//!
//! Size: the edited text is measured before any entry line is built. Each
//! inserted line is written by one function into a generic `fmt::Write`,
//! either a byte counter or the text, so the size check and the text cannot
//! disagree; a result over [`yaml::MAX_SOURCE_BYTES`] (which no checker would
//! accept) is refused without building it. A plan of a large fleet without
//! `--collapse` has hundreds of thousands of entries: building their lines
//! only to refuse them cost hundreds of MiB.

use std::fmt::{self, Write as _};

use egress_policy::yaml::{self, Node, Value};

use crate::suggest::{Plan, RoleSuggestion, SuggestedEntry, SuggestedPort};

/// A change to the original lines: remove `removed` lines from `start`
/// (0-based) and put `inserted` there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    pub start: usize,
    pub removed: usize,
    pub inserted: Vec<String>,
}

/// The edited text and the edits that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edited {
    pub text: String,
    pub edits: Vec<Edit>,
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("the policy cannot be parsed: {0}")]
    Parse(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "the edited policy would be {size} bytes, over the {limit}-byte limit of a policy file; \
         suggest fewer entries: fold hosts with --collapse K, pick roles with --role, or raise --min-count"
    )]
    TooLarge { size: usize, limit: usize },
}

/// An inserted line (or run of lines) before it is written.
enum Pending<'p> {
    /// A line built as text: keys, ports, service headers (a few per role).
    Text(String),
    /// One line per entry, `{prefix}{pattern} # suggested: ...`: the bulk of
    /// a big plan, written only once the result is known to fit.
    Entries { prefix: String, quoting: ListQuoting, entries: &'p [SuggestedEntry] },
}

impl Pending<'_> {
    /// Writes each line, followed by `newline`.
    fn write_lines<W: fmt::Write>(&self, out: &mut W, newline: &str) -> fmt::Result {
        match self {
            Pending::Text(line) => {
                out.write_str(line)?;
                out.write_str(newline)
            }
            Pending::Entries { prefix, quoting, entries } => {
                for entry in *entries {
                    entry_line(out, prefix, *quoting, entry)?;
                    out.write_str(newline)?;
                }
                Ok(())
            }
        }
    }

    /// The lines as strings, without terminators.
    fn into_strings(self, out: &mut Vec<String>) {
        match self {
            Pending::Text(line) => out.push(line),
            Pending::Entries { prefix, quoting, entries } => out.extend(entries.iter().map(|entry| {
                let mut line = String::new();
                let _ = entry_line(&mut line, &prefix, quoting, entry);
                line
            })),
        }
    }
}

/// An [`Edit`] whose inserted lines are not written yet.
struct PendingEdit<'p> {
    start: usize,
    removed: usize,
    inserted: Vec<Pending<'p>>,
}

/// Counts the bytes written to it; allocates nothing.
#[derive(Default)]
struct ByteCount(usize);

impl fmt::Write for ByteCount {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 = self.0.saturating_add(s.len());
        Ok(())
    }
}

/// One line of the source: its text without the terminator, and whether it had one.
struct Line<'s> {
    text: &'s str,
    /// `"\n"`, `"\r\n"`, or `""` for a last line without one.
    terminator: &'s str,
}

struct Source<'s> {
    lines: Vec<Line<'s>>,
    newline: &'static str,
}

impl<'s> Source<'s> {
    fn new(text: &'s str) -> Self {
        let newline =
            if text.split_inclusive('\n').next().is_some_and(|l| l.ends_with("\r\n")) { "\r\n" } else { "\n" };
        let lines = text
            .split_inclusive('\n')
            .map(|l| {
                let terminator = if l.ends_with("\r\n") {
                    "\r\n"
                } else if l.ends_with('\n') {
                    "\n"
                } else {
                    ""
                };
                Line { text: l.get(..l.len() - terminator.len()).unwrap_or(l), terminator }
            })
            .collect();
        Source { lines, newline }
    }

    /// Line `n` (1-based, as positions are).
    fn line(&self, n: u64) -> &'s str {
        usize::try_from(n).ok().and_then(|n| n.checked_sub(1)).and_then(|i| self.lines.get(i)).map_or("", |l| l.text)
    }

    /// The text of line `n` before 1-based character column `column`.
    fn before(&self, n: u64, column: u64) -> &'s str {
        let text = self.line(n);
        let chars = usize::try_from(column.saturating_sub(1)).unwrap_or(usize::MAX);
        let end = text.char_indices().nth(chars).map_or(text.len(), |(i, _)| i);
        text.get(..end).unwrap_or(text)
    }

    /// The character at a node's position.
    fn char_at(&self, node: &Node) -> Option<char> {
        let text = self.line(node.at.line);
        text.get(self.before(node.at.line, node.at.column).len()..).and_then(|rest| rest.chars().next())
    }
}

/// Whether an empty value (`[]`, `~`, `null`) is written on a line after
/// its key (`services:` then ` []` below it). Such a value is refused: the
/// edits here rewrite the key's line, and the value's own line would be
/// left behind, after the new items, as text that no longer parses.
fn empty_value_below_key(source: &Source<'_>, key: &Node, value: &Node) -> bool {
    if value.at.line <= key.at.line {
        return false;
    }
    let line = source.line(value.at.line);
    let rest = line.get(source.before(value.at.line, value.at.column).len()..).unwrap_or("");
    matches!(split_comment(rest).0.trim(), "[]" | "~" | "null" | "Null" | "NULL")
}

fn index(line: u64) -> usize {
    usize::try_from(line.saturating_sub(1)).unwrap_or(usize::MAX)
}

fn spaces(n: usize) -> String {
    " ".repeat(n)
}

fn map_get<'n>(node: &'n Node, key: &str) -> Option<(&'n Node, &'n Node)> {
    match &node.value {
        Value::Map(entries) => {
            entries.iter().find(|(k, _)| k.scalar_text().as_deref() == Some(key)).map(|(k, v)| (k, v))
        }
        _ => None,
    }
}

/// The file's habits, read from what is already there.
struct Style {
    /// How far `- ` sits right of its parent key (`services:` then `  - name`).
    seq_offset: usize,
    /// How far a service's keys sit right of its `-`.
    key_offset: usize,
    /// Quote character for entries that must be quoted.
    quote: char,
}

fn read_style(source: &Source<'_>, services: Option<(&Node, &Node)>) -> Style {
    let mut style = Style { seq_offset: 2, key_offset: 2, quote: '"' };
    if let Some((key, Value::Seq(items))) = services.map(|(k, v)| (k, &v.value))
        && let Some(first) = items.first()
        && let Some(dash) = dash_column(source, first)
    {
        let key_col = usize::try_from(key.at.column.saturating_sub(1)).unwrap_or(0);
        style.seq_offset = dash.saturating_sub(key_col);
        let item_col = usize::try_from(first.at.column.saturating_sub(1)).unwrap_or(0);
        style.key_offset = item_col.saturating_sub(dash).max(2);
    }
    // The first quoted host pattern anywhere in the file sets the quote character.
    let mut lists: Vec<&Node> = Vec::new();
    if let Some((_, Value::Seq(items))) = services.map(|(k, v)| (k, &v.value)) {
        lists.extend(items.iter().filter_map(|s| map_get(s, "allowed_domains").map(|(_, v)| v)));
    }
    let quoted = lists.iter().filter_map(|l| match &l.value {
        Value::Seq(items) => items.iter().find_map(|i| source.char_at(i).filter(|c| *c == '"' || *c == '\'')),
        _ => None,
    });
    if let Some(q) = quoted.into_iter().next() {
        style.quote = q;
    }
    style
}

/// Column (0-based, in characters) of the `-` introducing a block sequence
/// item, when the text before the item is only spaces and that dash.
fn dash_column(source: &Source<'_>, item: &Node) -> Option<usize> {
    let before = source.before(item.at.line, item.at.column);
    let trimmed = before.trim_end();
    let dash = trimmed.strip_suffix('-')?;
    dash.chars().all(|c| c == ' ').then(|| dash.chars().count())
}

/// Index (0-based) of the line after the node that starts on 1-based `line`:
/// following lines indented deeper than `column` (0-based, in characters)
/// continue it (a scalar folded over several lines), unless blank or a comment.
fn end_of_node(source: &Source<'_>, line: u64, column: usize) -> usize {
    let mut end = index(line) + 1;
    while let Some(next) = source.lines.get(end) {
        let trimmed = next.text.trim_start_matches(' ');
        let indent = next.text.len() - trimmed.len();
        if trimmed.trim().is_empty() || trimmed.starts_with('#') || indent <= column {
            break;
        }
        end += 1;
    }
    end
}

/// A value from a log (role, project) as a YAML scalar: plain when it is a
/// safe word, else double-quoted with every non-printable-ASCII character escaped.
pub fn yaml_string(value: &str) -> String {
    const RESERVED: &[&str] =
        &["true", "false", "yes", "no", "on", "off", "null", "y", "n", "~", "True", "False", "Null", "NULL"];
    let safe = value.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !RESERVED.contains(&value);
    if safe {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08X}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// How a list quotes its entries: names as its other names are (plain or
/// quoted), wildcards as its other wildcards are, else with the file's quote.
#[derive(Clone, Copy, Debug)]
struct ListQuoting {
    names: Option<char>,
    wildcards: char,
}

impl ListQuoting {
    fn render<W: fmt::Write>(self, out: &mut W, pattern: &str) -> fmt::Result {
        // `*` starts an alias and `:` can start a mapping: those are always quoted.
        let quote = if pattern.starts_with('*') {
            Some(self.wildcards)
        } else if pattern.contains(':') {
            Some(self.names.unwrap_or(self.wildcards))
        } else {
            self.names
        };
        match quote {
            Some(q) => write!(out, "{q}{pattern}{q}"),
            None => out.write_str(pattern),
        }
    }
}

/// `items` are (is a wildcard, quote character used) of the existing entries.
fn list_quoting(items: &[(bool, Option<char>)], file_quote: char) -> ListQuoting {
    let names = items.iter().rev().find(|(wildcard, _)| !wildcard).and_then(|(_, q)| *q);
    let wildcards =
        items.iter().rev().find_map(|(wildcard, q)| q.filter(|_| *wildcard)).or(names).unwrap_or(file_quote);
    ListQuoting { names, wildcards }
}

/// An entry's list item, `{prefix}{pattern} # suggested: ...`, without the
/// line terminator: the one place its layout is decided, for both the size
/// check and the text.
fn entry_line<W: fmt::Write>(out: &mut W, prefix: &str, quoting: ListQuoting, entry: &SuggestedEntry) -> fmt::Result {
    out.write_str(prefix)?;
    quoting.render(out, &entry.pattern)?;
    if entry.hits == 1 {
        out.write_str(" # suggested: 1 hit")?;
    } else {
        write!(out, " # suggested: {} hits", entry.hits)?;
    }
    if entry.pattern.starts_with("*.") {
        write!(out, " over {} hosts", entry.hosts().len())?;
    }
    if let (Some(first), Some(last)) = (entry.first_seen, entry.last_seen) {
        write!(out, ", first seen {first}, last seen {last}")?;
    }
    Ok(())
}

/// Items of a list the editor creates: names plain, wildcards in the file's quote.
fn item_lines<'p>(indent: &str, entries: &'p [SuggestedEntry], file_quote: char) -> Pending<'p> {
    let quoting = ListQuoting { names: None, wildcards: file_quote };
    Pending::Entries { prefix: format!("{indent}- "), quoting, entries }
}

/// A key line rewritten to `head` (the key, its list now moved to the lines
/// below), keeping the comment the original line ended with.
fn key_line_keeping(head: &str, trailing_comment: &str) -> Pending<'static> {
    Pending::Text(if trailing_comment.is_empty() { head.to_owned() } else { format!("{head} {trailing_comment}") })
}

/// Splits a key line at its trailing comment: (text before the comment, the comment).
fn split_comment(text: &str) -> (&str, &str) {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') if previous.is_whitespace() => {
                return (text.get(..i).unwrap_or(text).trim_end(), text.get(i..).unwrap_or(""));
            }
            _ => {}
        }
        previous = c;
    }
    (text.trim_end(), "")
}

/// The items of a one-line flow list starting at byte `open` (the `[`), as
/// written, and the text after the closing `]`. `None` when the list does not
/// close on that line.
fn flow_items(text: &str, open: usize) -> Option<(Vec<&str>, &str)> {
    let inner_start = open + 1;
    let mut quote: Option<char> = None;
    let mut items = Vec::new();
    let mut item_start = inner_start;
    let mut chars = text.get(inner_start..)?.char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        let at = inner_start + offset;
        match (quote, c) {
            (Some('"'), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => {
                // `''` inside single quotes is an escaped quote.
                if q == '\'' && chars.peek().is_some_and(|(_, n)| *n == '\'') {
                    chars.next();
                } else {
                    quote = None;
                }
            }
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => return None,
            (None, ',') => {
                items.push(text.get(item_start..at)?.trim());
                item_start = at + 1;
            }
            (None, ']') => {
                let last = text.get(item_start..at)?.trim();
                if !last.is_empty() {
                    items.push(last);
                }
                return Some((items, text.get(at + 1..)?));
            }
            (None, _) => {}
        }
    }
    None
}

/// Applies `plan` to `source`; refuses a result larger than a policy file may be.
pub fn apply(source_text: &str, plan: &Plan) -> Result<Edited, EditError> {
    apply_within(source_text, plan, yaml::MAX_SOURCE_BYTES)
}

/// Applies `plan` to `source`, refusing before any entry line is built when
/// the edited text would exceed `limit` bytes.
pub fn apply_within(source_text: &str, plan: &Plan, limit: usize) -> Result<Edited, EditError> {
    let root = yaml::parse(source_text)
        .map_err(|e| EditError::Parse(format!("{}:{}: {}", e.at.line, e.at.column, e.message)))?;
    let source = Source::new(source_text);
    let services = map_get(&root, "services");
    let style = read_style(&source, services);
    let mut edits = Vec::new();

    let service_nodes: &[Node] = match services.map(|(_, v)| &v.value) {
        Some(Value::Seq(items)) => items,
        _ => &[],
    };
    for role in plan.roles.iter().filter(|r| r.service_exists && !(r.entries.is_empty() && r.ports.is_empty())) {
        let node = service_nodes
            .iter()
            .find(|s| map_get(s, "name").and_then(|(_, v)| v.scalar_text()).as_deref() == Some(role.role.as_str()))
            .ok_or_else(|| EditError::Unsupported(format!("service {:?} was not found in the file", role.role)))?;
        if !role.entries.is_empty() {
            edits.push(edit_service(&source, node, role, &style)?);
        }
        if !role.ports.is_empty() {
            edits.push(edit_ports(&source, node, role)?);
        }
    }
    let new_roles: Vec<&RoleSuggestion> =
        plan.roles.iter().filter(|r| !r.service_exists && !r.entries.is_empty()).collect();
    if !new_roles.is_empty() {
        edits.push(append_services(&source, &root, services, &new_roles, &style)?);
    }
    // At one line, insertions (which go before it) come before a replacement of it.
    edits.sort_by_key(|e| (e.start, e.removed));
    for pair in edits.windows(2) {
        if let [a, b] = pair
            && a.start + a.removed > b.start
        {
            return Err(EditError::Unsupported("two additions would change the same lines".into()));
        }
    }
    let mut size = ByteCount::default();
    let _ = render(&mut size, &source, &edits);
    if size.0 > limit {
        return Err(EditError::TooLarge { size: size.0, limit });
    }
    let mut text = String::with_capacity(size.0);
    let _ = render(&mut text, &source, &edits);
    let edits = edits
        .into_iter()
        .map(|e| {
            let mut inserted = Vec::new();
            for pending in e.inserted {
                pending.into_strings(&mut inserted);
            }
            Edit { start: e.start, removed: e.removed, inserted }
        })
        .collect();
    Ok(Edited { text, edits })
}

fn edit_service<'p>(
    source: &Source<'_>,
    service: &Node,
    role: &'p RoleSuggestion,
    style: &Style,
) -> Result<PendingEdit<'p>, EditError> {
    if source.char_at(service) == Some('{') {
        return Err(EditError::Unsupported(format!(
            "service {:?} is a flow mapping ({{...}}); write it as a block mapping so suggest can add to it",
            role.role
        )));
    }
    let Some((key, value)) = map_get(service, "allowed_domains") else {
        // No list yet: the key goes right after the `name` line, at the keys' column.
        let (name_key, name_value) = map_get(service, "name")
            .ok_or_else(|| EditError::Unsupported(format!("service {:?} has no name key", role.role)))?;
        let key_indent = spaces(source.before(name_key.at.line, name_key.at.column).chars().count());
        let mut inserted = vec![Pending::Text(format!("{key_indent}allowed_domains:"))];
        let item_indent = format!("{key_indent}{}", spaces(style.seq_offset));
        inserted.push(item_lines(&item_indent, &role.entries, style.quote));
        let name_column = source.before(name_key.at.line, name_key.at.column).chars().count();
        return Ok(PendingEdit { start: end_of_node(source, name_value.at.line, name_column), removed: 0, inserted });
    };
    let after_key = {
        let line = source.line(key.at.line);
        let rest = line.get(source.before(key.at.line, key.at.column).len()..).unwrap_or("");
        let colon = rest.find(':').map_or(rest.len(), |i| i + 1);
        split_comment(rest.get(colon..).unwrap_or("")).0.trim_start()
    };
    if matches!(source.char_at(value), Some('*' | '&')) || after_key.starts_with(['&', '*']) {
        // An anchored or aliased list may be shared by other services: adding
        // to it would widen them too.
        return Err(EditError::Unsupported(format!(
            "`allowed_domains` of service {:?} is a YAML anchor or alias; give the service its own list",
            role.role
        )));
    }
    let key_indent_width = source.before(key.at.line, key.at.column).chars().count();
    let item_indent = format!("{}{}", spaces(key_indent_width), spaces(style.seq_offset));
    let key_line = source.line(key.at.line);
    match &value.value {
        Value::Seq(items) if source.char_at(value) == Some('[') => {
            // One-line flow list: rewritten as a block list, existing items as written.
            let open = source.before(value.at.line, value.at.column).len();
            let (existing, after) = (value.at.line == key.at.line)
                .then(|| flow_items(key_line, open))
                .flatten()
                .ok_or_else(|| {
                    EditError::Unsupported(format!(
                        "`allowed_domains` of service {:?} is a flow list spanning several lines; write it as a block list (one `- entry` per line)",
                        role.role
                    ))
                })?;
            debug_assert_eq!(existing.len(), items.len());
            let (_, trailing_comment) = split_comment(after);
            let head = key_line.get(..open).unwrap_or(key_line).trim_end();
            let mut inserted = vec![key_line_keeping(head, trailing_comment)];
            inserted.extend(existing.iter().map(|item| Pending::Text(format!("{item_indent}- {item}"))));
            let quotes: Vec<(bool, Option<char>)> = existing
                .iter()
                .map(|i| {
                    let quote = i.chars().next().filter(|c| *c == '"' || *c == '\'');
                    (i.trim_start_matches(['"', '\'']).starts_with('*'), quote)
                })
                .collect();
            let quoting = list_quoting(&quotes, style.quote);
            inserted.push(Pending::Entries { prefix: format!("{item_indent}- "), quoting, entries: &role.entries });
            Ok(PendingEdit { start: index(key.at.line), removed: 1, inserted })
        }
        Value::Seq(items) => {
            let last = items.last().ok_or_else(|| {
                EditError::Unsupported(format!("`allowed_domains` of service {:?} is empty but not `[]`", role.role))
            })?;
            let prefix = source.before(last.at.line, last.at.column);
            if dash_column(source, last).is_none() {
                return Err(EditError::Unsupported(format!(
                    "`allowed_domains` of service {:?}: cannot read the layout of line {}",
                    role.role, last.at.line
                )));
            }
            let indent = prefix.trim_end().strip_suffix('-').unwrap_or(prefix);
            let gap = prefix.get(indent.len() + 1..).unwrap_or(" ");
            let quotes: Vec<(bool, Option<char>)> = items
                .iter()
                .map(|i| {
                    let wildcard = i.scalar_text().is_some_and(|t| t.starts_with('*'));
                    (wildcard, source.char_at(i).filter(|c| *c == '"' || *c == '\''))
                })
                .collect();
            let quoting = list_quoting(&quotes, style.quote);
            let inserted =
                vec![Pending::Entries { prefix: format!("{indent}-{gap}"), quoting, entries: &role.entries }];
            let dash = indent.chars().count();
            Ok(PendingEdit { start: end_of_node(source, last.at.line, dash), removed: 0, inserted })
        }
        Value::Null if empty_value_below_key(source, key, value) => Err(EditError::Unsupported(format!(
            "`allowed_domains` of service {:?} is empty on line {}, below its key; write `allowed_domains: []` on one line",
            role.role, value.at.line
        ))),
        Value::Null => {
            // `allowed_domains:` (or `~`/`null`): keep the key and its comment, add the items.
            let key_end = source.before(key.at.line, key.at.column).len();
            let rest = key_line.get(key_end..).unwrap_or("");
            let colon = rest.find(':').map_or(rest.len(), |i| i + 1);
            let (_, trailing_comment) = split_comment(rest.get(colon..).unwrap_or(""));
            let head = key_line.get(..key_end + colon).unwrap_or(key_line);
            let mut inserted = vec![key_line_keeping(head, trailing_comment)];
            inserted.push(item_lines(&item_indent, &role.entries, style.quote));
            Ok(PendingEdit { start: index(key.at.line), removed: 1, inserted })
        }
        other => Err(EditError::Unsupported(format!(
            "`allowed_domains` of service {:?} is {}, not a list",
            role.role,
            other.kind()
        ))),
    }
}

fn port_comment(port: &SuggestedPort) -> String {
    let hits = if port.hits == 1 { "1 hit".to_owned() } else { format!("{} hits", port.hits) };
    match (port.first_seen, port.last_seen) {
        (Some(first), Some(last)) => format!("{hits}, first seen {first}, last seen {last}"),
        _ => hits,
    }
}

/// Adds `role.ports` to the service's existing `allowed_ports` list.
fn edit_ports<'p>(source: &Source<'_>, service: &Node, role: &RoleSuggestion) -> Result<PendingEdit<'p>, EditError> {
    if source.char_at(service) == Some('{') {
        return Err(EditError::Unsupported(format!(
            "service {:?} is a flow mapping ({{...}}); write it as a block mapping so suggest can add to it",
            role.role
        )));
    }
    let (key, value) = map_get(service, "allowed_ports").ok_or_else(|| {
        EditError::Unsupported(format!("service {:?} has no `allowed_ports` to add ports to", role.role))
    })?;
    let key_line = source.line(key.at.line);
    let after_key = {
        let rest = key_line.get(source.before(key.at.line, key.at.column).len()..).unwrap_or("");
        let colon = rest.find(':').map_or(rest.len(), |i| i + 1);
        split_comment(rest.get(colon..).unwrap_or("")).0.trim_start()
    };
    if matches!(source.char_at(value), Some('*' | '&')) || after_key.starts_with(['&', '*']) {
        return Err(EditError::Unsupported(format!(
            "`allowed_ports` of service {:?} is a YAML anchor or alias; give the service its own list",
            role.role
        )));
    }
    match &value.value {
        Value::Seq(_) if source.char_at(value) == Some('[') => {
            // One-line flow list: the ports go before `]`, one comment at the end of the line.
            let open = source.before(value.at.line, value.at.column).len();
            let (existing, after) = (value.at.line == key.at.line)
                .then(|| flow_items(key_line, open))
                .flatten()
                .ok_or_else(|| {
                    EditError::Unsupported(format!(
                        "`allowed_ports` of service {:?} is a flow list spanning several lines; write it on one line or as a block list",
                        role.role
                    ))
                })?;
            let close = key_line.len() - after.len() - 1;
            let inner = key_line.get(open + 1..close).unwrap_or("");
            let insert_at = open + 1 + inner.trim_end().len();
            let separator = if inner.contains(", ") || !inner.contains(',') { ", " } else { "," };
            let mut added: String = role.ports.iter().map(|p| format!("{separator}{}", p.port)).collect();
            if existing.is_empty() {
                added = added.trim_start_matches(separator).to_owned();
            }
            let notes: Vec<String> = role.ports.iter().map(|p| format!("{} ({})", p.port, port_comment(p))).collect();
            let line = format!(
                "{}{added}{} # suggested: {}",
                key_line.get(..insert_at).unwrap_or(key_line),
                key_line.get(insert_at..).unwrap_or("").trim_end(),
                notes.join("; ")
            );
            Ok(PendingEdit { start: index(key.at.line), removed: 1, inserted: vec![Pending::Text(line)] })
        }
        Value::Seq(items) => {
            let last = items.last().ok_or_else(|| {
                EditError::Unsupported(format!("`allowed_ports` of service {:?} is empty but not `[]`", role.role))
            })?;
            let prefix = source.before(last.at.line, last.at.column);
            if dash_column(source, last).is_none() {
                return Err(EditError::Unsupported(format!(
                    "`allowed_ports` of service {:?}: cannot read the layout of line {}",
                    role.role, last.at.line
                )));
            }
            let indent = prefix.trim_end().strip_suffix('-').unwrap_or(prefix);
            let gap = prefix.get(indent.len() + 1..).unwrap_or(" ");
            let inserted = role
                .ports
                .iter()
                .map(|p| Pending::Text(format!("{indent}-{gap}{} # suggested: {}", p.port, port_comment(p))))
                .collect();
            Ok(PendingEdit { start: end_of_node(source, last.at.line, indent.chars().count()), removed: 0, inserted })
        }
        other => Err(EditError::Unsupported(format!(
            "`allowed_ports` of service {:?} is {}, not a list",
            role.role,
            other.kind()
        ))),
    }
}

fn new_service_lines<'p>(role: &'p RoleSuggestion, dash_indent: &str, style: &Style) -> Vec<Pending<'p>> {
    let key_indent = format!("{dash_indent}{}", spaces(style.key_offset));
    let after_dash = spaces(style.key_offset.saturating_sub(1));
    let mut lines = vec![Pending::Text(format!("{dash_indent}-{after_dash}name: {}", yaml_string(&role.role)))];
    if let Some(project) = &role.new_service_project {
        lines.push(Pending::Text(format!("{key_indent}project: {}", yaml_string(project))));
    }
    let action = role.new_service_action.map_or("enforce", |a| a.as_str());
    lines.push(Pending::Text(format!("{key_indent}action: {action}")));
    lines.push(Pending::Text(format!("{key_indent}allowed_domains:")));
    let item_indent = format!("{key_indent}{}", spaces(style.seq_offset));
    lines.push(item_lines(&item_indent, &role.entries, style.quote));
    lines
}

fn append_services<'p>(
    source: &Source<'_>,
    root: &Node,
    services: Option<(&Node, &Node)>,
    roles: &[&'p RoleSuggestion],
    style: &Style,
) -> Result<PendingEdit<'p>, EditError> {
    let (key, value) = services.ok_or_else(|| EditError::Unsupported("the policy has no `services` list".into()))?;
    let key_indent = source.before(key.at.line, key.at.column).chars().count();
    match &value.value {
        Value::Seq(items) if !items.is_empty() && source.char_at(value) != Some('[') => {
            let first = items.first().ok_or_else(|| EditError::Unsupported("empty services".into()))?;
            let dash = dash_column(source, first).ok_or_else(|| {
                EditError::Unsupported(format!("cannot read the layout of `services` at line {}", first.at.line))
            })?;
            // After the last line of the services block: up to the next key
            // written after `services`, less blank lines and top-level comments.
            let next_key_line = match &root.value {
                Value::Map(entries) => {
                    entries.iter().map(|(k, _)| k.at.line).filter(|l| *l > key.at.line).min().map(index)
                }
                _ => None,
            };
            let mut end = next_key_line.unwrap_or(source.lines.len()).min(source.lines.len());
            while end > 0 {
                let text = source.lines.get(end - 1).map_or("", |l| l.text);
                // Blank lines, top-level comments and a document end marker belong after `services`.
                if text.trim().is_empty() || text.starts_with('#') || text.trim_end() == "..." {
                    end -= 1;
                } else {
                    break;
                }
            }
            let inserted: Vec<Pending<'p>> =
                roles.iter().flat_map(|r| new_service_lines(r, &spaces(dash), style)).collect();
            Ok(PendingEdit { start: end, removed: 0, inserted })
        }
        _ if empty_value_below_key(source, key, value) => Err(EditError::Unsupported(format!(
            "`services` is empty on line {}, below its key; write `services: []` on one line so suggest can append to it",
            value.at.line
        ))),
        Value::Seq(items) if items.is_empty() || source.char_at(value) != Some('[') => {
            replace_empty_services(source, key, key_indent, roles, style)
        }
        Value::Null => replace_empty_services(source, key, key_indent, roles, style),
        _ => Err(EditError::Unsupported(
            "`services` is a flow list (`[...]`); write it as a block list so suggest can append to it".into(),
        )),
    }
}

/// `services: []` (or empty): the key line keeps its comment, the new services follow.
fn replace_empty_services<'p>(
    source: &Source<'_>,
    key: &Node,
    key_indent: usize,
    roles: &[&'p RoleSuggestion],
    style: &Style,
) -> Result<PendingEdit<'p>, EditError> {
    let line = source.line(key.at.line);
    let key_end = source.before(key.at.line, key.at.column).len();
    let rest = line.get(key_end..).unwrap_or("");
    let colon = rest.find(':').map_or(rest.len(), |i| i + 1);
    let after = rest.get(colon..).unwrap_or("");
    let (value_text, trailing_comment) = split_comment(after);
    if !matches!(value_text.trim(), "" | "[]" | "~" | "null") {
        return Err(EditError::Unsupported(format!("cannot append to `services` at line {}", key.at.line)));
    }
    let head = line.get(..key_end + colon).unwrap_or(line);
    let mut inserted = vec![key_line_keeping(head, trailing_comment)];
    let dash = spaces(key_indent + style.seq_offset.max(2));
    inserted.extend(roles.iter().flat_map(|r| new_service_lines(r, &dash, style)));
    Ok(PendingEdit { start: index(key.at.line), removed: 1, inserted })
}

/// The new text, into `out` (the text, or a [`ByteCount`]): untouched lines
/// copied byte for byte, edits in the file's line ending.
fn render<W: fmt::Write>(out: &mut W, source: &Source<'_>, edits: &[PendingEdit<'_>]) -> fmt::Result {
    let mut next = 0usize;
    // Whether what was written so far is empty or ends a line: only a copied
    // last line without a terminator leaves it otherwise.
    let mut at_line_start = true;
    for edit in edits {
        for line in source.lines.get(next..edit.start).unwrap_or_default() {
            out.write_str(line.text)?;
            out.write_str(line.terminator)?;
            at_line_start = !line.terminator.is_empty() || (at_line_start && line.text.is_empty());
        }
        if !at_line_start {
            out.write_str(source.newline)?;
            at_line_start = true;
        }
        for pending in &edit.inserted {
            pending.write_lines(out, source.newline)?;
        }
        next = edit.start + edit.removed;
    }
    for line in source.lines.get(next..).unwrap_or_default() {
        out.write_str(line.text)?;
        out.write_str(line.terminator)?;
    }
    Ok(())
}

/// A unified diff (3 lines of context) of the edits, as `diff -u` / `git
/// diff` print it, for `git apply -p1` or a pull request.
pub fn unified_diff(path: &str, source_text: &str, edits: &[Edit]) -> String {
    const CONTEXT: usize = 3;
    let source = Source::new(source_text);
    let old: Vec<&str> = source.lines.iter().map(|l| l.text).collect();
    let mut out = format!("--- a/{path}\n+++ b/{path}\n");
    let mut delta: isize = 0;
    let mut i = 0;
    while i < edits.len() {
        // Edits whose context windows touch go in one hunk.
        let mut j = i;
        while let (Some(a), Some(b)) = (edits.get(j), edits.get(j + 1)) {
            if a.start + a.removed + 2 * CONTEXT >= b.start {
                j += 1;
            } else {
                break;
            }
        }
        let group = edits.get(i..=j).unwrap_or_default();
        let (Some(first), Some(last)) = (group.first(), group.last()) else { break };
        let start = first.start.saturating_sub(CONTEXT);
        let end = (last.start + last.removed + CONTEXT).min(old.len());
        let mut body = String::new();
        let (mut old_len, mut new_len) = (0usize, 0usize);
        let mut at = start;
        for edit in group {
            for line in old.get(at..edit.start).unwrap_or_default() {
                let _ = writeln!(body, " {line}");
                old_len += 1;
                new_len += 1;
            }
            for line in old.get(edit.start..edit.start + edit.removed).unwrap_or_default() {
                let _ = writeln!(body, "-{line}");
                old_len += 1;
            }
            for line in &edit.inserted {
                let _ = writeln!(body, "+{line}");
                new_len += 1;
            }
            at = edit.start + edit.removed;
        }
        for line in old.get(at..end).unwrap_or_default() {
            let _ = writeln!(body, " {line}");
            old_len += 1;
            new_len += 1;
        }
        let new_start = (start as isize + delta).max(0) as usize;
        let shown = |from: usize, len: usize| if len == 0 { from } else { from + 1 };
        let _ = writeln!(out, "@@ -{},{old_len} +{},{new_len} @@", shown(start, old_len), shown(new_start, new_len));
        out.push_str(&body);
        delta += new_len as isize - old_len as isize;
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    /// The size check and the text come from one writer: the limit is met
    /// exactly at the text's length and refused one byte below it, naming
    /// that length.
    #[test]
    fn the_size_check_counts_exactly_the_text_written() {
        let source = "version: v1\nservices:\n  - name: a\n    allowed_domains: [x.test]\n  - name: b\n    allowed_domains:\n      - y.test\n  - name: c\n  - name: d\n    allowed_domains:\n";
        let wanted = plan(&[
            ("a", true, &["one.test", "*.two.test"]),
            ("b", true, &["three.test", "*.four.test"]),
            ("c", true, &["five.test"]),
            ("d", true, &["six:test"]),
            ("new", false, &["seven.test", "*.eight.test"]),
        ]);
        let edited = apply(source, &wanted).unwrap();
        let size = edited.text.len();
        assert_eq!(apply_within(source, &wanted, size).unwrap(), edited);
        match apply_within(source, &wanted, size - 1) {
            Err(EditError::TooLarge { size: reported, limit }) => {
                assert_eq!((reported, limit), (size, size - 1));
            }
            other => panic!("{other:?}"),
        }
        // The edits list the same lines the text holds.
        for edit in &edited.edits {
            for line in &edit.inserted {
                assert!(edited.text.contains(&format!("{line}\n")), "{line}");
            }
        }
        // A source without a final newline: the one added before the new service is counted too.
        let unterminated = "version: v1\nservices:\n  - name: a\n    allowed_domains:\n      - x.test";
        let wanted = plan(&[("a", true, &["y.test"]), ("z", false, &["z.test"])]);
        let text = apply(unterminated, &wanted).unwrap().text;
        assert!(text.contains("      - x.test\n      - y.test # suggested: 3 hits\n"), "{text}");
        assert!(apply_within(unterminated, &wanted, text.len()).is_ok());
        assert!(matches!(apply_within(unterminated, &wanted, text.len() - 1), Err(EditError::TooLarge { .. })));
    }

    #[test]
    fn log_values_cannot_inject_yaml() {
        assert_eq!(yaml_string("billing-api"), "billing-api");
        assert_eq!(yaml_string("yes"), "\"yes\"");
        assert_eq!(yaml_string("123"), "\"123\"");
        assert_eq!(yaml_string("a\n  action: open"), "\"a\\u000A  action: open\"");
        assert_eq!(yaml_string("q\"\\"), "\"q\\\"\\\\\"");
        assert_eq!(yaml_string("тест"), "\"\\u0442\\u0435\\u0441\\u0442\"");
    }

    fn plan(roles: &[(&str, bool, &[&str])]) -> Plan {
        Plan {
            roles: roles
                .iter()
                .map(|(role, exists, patterns)| RoleSuggestion {
                    role: (*role).to_owned(),
                    service_exists: *exists,
                    new_service_action: (!exists).then_some(egress_policy::policy::Action::Enforce),
                    new_service_project: (!exists).then(|| "team".to_owned()),
                    entries: patterns
                        .iter()
                        .map(|p| SuggestedEntry {
                            pattern: (*p).to_owned(),
                            hits: 3,
                            first_seen: None,
                            last_seen: None,
                            hosts: vec![p.trim_start_matches("*.").to_owned()],
                        })
                        .collect(),
                    ports: Vec::new(),
                })
                .collect(),
            ..Plan::default()
        }
    }

    fn checked(text: &str) -> egress_policy::policy::Policy {
        let c = egress_policy::acl::check_source("t.yaml", text, egress_policy::policy::ActionSet::default());
        c.policy.unwrap_or_else(|| panic!("{text}\n{:?}", c.diagnostics))
    }

    #[test]
    fn layouts_without_lists_with_null_lists_and_unindented_sequences() {
        let source = "version: v1\nservices:\n- action: report\n  name: a   # first\n  project: p\n- name: b\n  action: report\n  allowed_domains:   # none yet\n";
        let edited = apply(
            source,
            &plan(&[("a", true, &["x.test", "*.y.test"]), ("b", true, &["z.test"]), ("c", false, &["c.test"])]),
        )
        .unwrap();
        let expected = "version: v1\nservices:\n- action: report\n  name: a   # first\n  allowed_domains:\n  - x.test # suggested: 3 hits\n  - \"*.y.test\" # suggested: 3 hits over 1 hosts\n  project: p\n- name: b\n  action: report\n  allowed_domains: # none yet\n  - z.test # suggested: 3 hits\n- name: c\n  project: team\n  action: enforce\n  allowed_domains:\n  - c.test # suggested: 3 hits\n";
        assert_eq!(edited.text, expected);
        let policy = checked(&edited.text);
        assert_eq!(policy.services.len(), 3);
        assert_eq!(policy.services[0].allowed_domains.len(), 2);
    }

    #[test]
    fn an_empty_value_below_its_key_is_refused_not_left_behind() {
        // Found by the suggest_edit fuzz target: `[]` on the line after
        // `services:` stayed below the appended service, and the edited
        // policy no longer parsed.
        for source in ["version: v1\nservices:\n []\n", "version: v1\nservices: # none\n  [] # yet\n"] {
            checked(source);
            let refused = apply(source, &plan(&[("new role", false, &["a.test"])])).unwrap_err();
            assert!(refused.to_string().contains("write `services: []` on one line"), "{source:?}: {refused}");
        }
        let domains = "version: v1\nservices:\n  - name: a\n    action: enforce\n    allowed_domains:\n      null\n";
        checked(domains);
        let refused = apply(domains, &plan(&[("a", true, &["a.test"])])).unwrap_err();
        assert!(refused.to_string().contains("write `allowed_domains: []` on one line"), "{refused}");
        // Written on the key's line, or left out, they are still edited.
        let edited = apply("version: v1\nservices: []\n", &plan(&[("new role", false, &["a.test"])])).unwrap();
        assert_eq!(checked(&edited.text).services[0].name, "new role", "{}", edited.text);
        let edited = apply(
            "version: v1\nservices:\n  - name: a\n    action: enforce\n    allowed_domains:\n",
            &plan(&[("a", true, &["a.test"])]),
        )
        .unwrap();
        assert_eq!(checked(&edited.text).services[0].allowed_domains.len(), 1, "{}", edited.text);
    }

    #[test]
    fn empty_services_and_a_file_without_final_newline() {
        let source = "version: v1\nservices: []  # nobody yet\ndefault:\n  action: enforce";
        let edited = apply(source, &plan(&[("new role", false, &["a.test"])])).unwrap();
        assert!(
            edited.text.starts_with("version: v1\nservices: # nobody yet\n  - name: \"new role\"\n"),
            "{}",
            edited.text
        );
        assert!(edited.text.ends_with("default:\n  action: enforce"), "untouched last line keeps its missing newline");
        let policy = checked(&edited.text);
        assert_eq!(policy.services[0].name, "new role");
        let appended =
            apply("version: v1\nservices:\n  - name: a\n    action: enforce", &plan(&[("b", false, &["b.test"])]))
                .unwrap();
        assert_eq!(checked(&appended.text).services.len(), 2, "{}", appended.text);
    }

    #[test]
    fn folded_scalars_and_document_end_markers() {
        let source = "version: v1\nservices:\n  - name:\n      folded-\n      name\n    action: report\n  - name: b\n    action: report\n    allowed_domains:\n      - \"a.\\\n        test\"\n...\n";
        let parsed = checked(source);
        assert_eq!(parsed.services[0].name, "folded- name");
        assert_eq!(parsed.services[1].allowed_domains[0].to_string(), "a.test");
        let edited = apply(
            source,
            &plan(&[("folded- name", true, &["x.test"]), ("b", true, &["y.test"]), ("c", false, &["z.test"])]),
        )
        .unwrap();
        assert!(edited.text.ends_with("...\n"), "{}", edited.text);
        let policy = checked(&edited.text);
        assert_eq!(policy.services.len(), 3, "{}", edited.text);
        assert_eq!(policy.services[0].allowed_domains.len(), 1, "{}", edited.text);
        assert_eq!(policy.services[1].allowed_domains.len(), 2, "{}", edited.text);
    }

    #[test]
    fn unsupported_layouts_are_refused() {
        let flow_map = "version: v1\nservices:\n  - {name: a, action: report}\n";
        assert!(apply(flow_map, &plan(&[("a", true, &["x.test"])])).is_err());
        let multi_line_flow =
            "version: v1\nservices:\n  - name: a\n    action: report\n    allowed_domains: [a.test,\n      b.test]\n";
        assert!(apply(multi_line_flow, &plan(&[("a", true, &["x.test"])])).is_err());
    }

    #[test]
    fn diff_hunks_merge_and_count() {
        let source: String = (1..=20).map(|i| format!("line{i}\n")).collect();
        let edits = vec![
            Edit { start: 2, removed: 0, inserted: vec!["new-a".into()] },
            Edit { start: 5, removed: 1, inserted: vec!["new-b".into(), "new-c".into()] },
            Edit { start: 18, removed: 0, inserted: vec!["new-d".into()] },
        ];
        let diff = unified_diff("f.yaml", &source, &edits);
        assert!(
            diff.starts_with("--- a/f.yaml\n+++ b/f.yaml\n@@ -1,9 +1,11 @@\n line1\n line2\n+new-a\n line3\n"),
            "{diff}"
        );
        assert!(diff.contains(" line5\n-line6\n+new-b\n+new-c\n line7\n"), "{diff}");
        assert!(diff.contains("@@ -16,5 +18,6 @@\n line16\n line17\n line18\n+new-d\n line19\n line20\n"), "{diff}");
    }

    #[test]
    fn flow_items_respect_quotes() {
        let line = r#"    allowed_domains: [a.com, "*.b,c.com", 'x''y', "q\"]"]  # keep"#;
        let open = line.find('[').unwrap();
        let (items, after) = flow_items(line, open).unwrap();
        assert_eq!(items, vec!["a.com", "\"*.b,c.com\"", "'x''y'", "\"q\\\"]\""]);
        assert_eq!(split_comment(after), ("", "# keep"));
        assert!(flow_items("allowed_domains: [a,", 17).is_none());
        assert_eq!(flow_items("x: []", 3).unwrap().0, Vec::<&str>::new());
    }

    fn port_plan(role: &str, ports: &[u16]) -> Plan {
        let mut plan = plan(&[(role, true, &[])]);
        plan.roles[0].ports = ports
            .iter()
            .map(|p| SuggestedPort {
                port: *p,
                hits: 2,
                first_seen: None,
                last_seen: None,
                hosts: vec!["a.test".into()],
            })
            .collect();
        plan
    }

    #[test]
    fn ports_extend_block_and_flow_lists_in_their_style() {
        let block = "version: v2\nservices:\n  - name: a\n    action: report\n    allowed_domains: [a.test]\n    allowed_ports:\n      -   443   # https\n    # end\n";
        let edited = apply(block, &port_plan("a", &[5432, 8443])).unwrap();
        assert_eq!(
            edited.text,
            "version: v2\nservices:\n  - name: a\n    action: report\n    allowed_domains: [a.test]\n    allowed_ports:\n      -   443   # https\n      -   5432 # suggested: 2 hits\n      -   8443 # suggested: 2 hits\n    # end\n"
        );
        assert_eq!(checked(&edited.text).services[0].allowed_ports.len(), 3);
        for (line, expected) in [
            (
                "allowed_ports: [443, \"8000-8999\"]  # web",
                "allowed_ports: [443, \"8000-8999\", 5432]  # web # suggested: 5432 (2 hits)",
            ),
            ("allowed_ports: [ 443 ]", "allowed_ports: [ 443, 5432 ] # suggested: 5432 (2 hits)"),
            ("allowed_ports: [443,80]", "allowed_ports: [443,80,5432] # suggested: 5432 (2 hits)"),
        ] {
            let source = format!(
                "version: v2\nservices:\n  - name: a\n    action: report\n    {line}\n    allowed_domains: [a.test]\n"
            );
            let edited = apply(&source, &port_plan("a", &[5432])).unwrap();
            assert_eq!(edited.text, source.replace(line, expected));
            assert!(
                checked(&edited.text).services[0]
                    .allowed_ports
                    .contains(&egress_policy::policy::PortRange::single(5432))
            );
        }
        let anchored = "version: v2\nservices:\n  - name: a\n    action: report\n    allowed_ports: &p [443]\n";
        assert!(apply(anchored, &port_plan("a", &[5432])).is_err());
        let multi_line =
            "version: v2\nservices:\n  - name: a\n    action: report\n    allowed_ports: [443,\n      80]\n";
        assert!(apply(multi_line, &port_plan("a", &[5432])).is_err());
    }
}
