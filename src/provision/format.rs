//! Whether a rendered file parses the way its vendor's phones read it, so that a broken
//! template edit is refused before a phone gets it: XML must be well-formed with one root
//! element, attributes quoted and once each, and only XML's own entities; the `key = value`
//! formats need a key and the separator (`=` for Yealink, `:` in Fanvil's `<<VOIP CONFIG
//! FILE>>` format) on every line that is not blank, a comment or a section header.

use quick_xml::events::Event;
use quick_xml::reader::Reader;
use serde::{Deserialize, Serialize};

/// Where and why a rendered file does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("line {line}: {cause}")]
pub struct FormatError {
    /// The line of the rendered file, from 1.
    pub line: usize,
    /// What is wrong there.
    pub cause: String,
}

/// A vendor file's syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An XML document (every `.xml` template, whatever the served file is called).
    Xml,
    /// `key = value` lines (`Key :value` in Fanvil's format), with `#`/`;` comments and
    /// `<...>`/`[...]` headers.
    KeyValueLines,
}

impl Format {
    /// The format of the files template `name` renders, by its extension.
    pub fn of_template(name: &str) -> Format {
        if [".xml", ".htm", ".html"].iter().any(|suffix| name.ends_with(suffix)) {
            Format::Xml
        } else {
            Format::KeyValueLines
        }
    }

    /// Checks `text` against this format.
    pub fn check(self, text: &str) -> Result<(), FormatError> {
        match self {
            Format::Xml => check_xml(text),
            Format::KeyValueLines => check_lines(text),
        }
    }
}

/// The line (from 1) holding byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
}

fn check_xml(text: &str) -> Result<(), FormatError> {
    let mut reader = Reader::from_str(text);
    let mut open: Vec<(String, usize)> = Vec::new();
    let mut roots = 0;
    loop {
        let at = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let event = reader.read_event().map_err(|error| FormatError {
            line: line_at(text, usize::try_from(reader.error_position()).unwrap_or(usize::MAX)),
            cause: format!("XML is not well-formed: {error}"),
        })?;
        let refuse = |cause: String| FormatError { line: line_at(text, at), cause };
        let outside = open.is_empty();
        match event {
            Event::Start(ref element) | Event::Empty(ref element) => {
                let name = String::from_utf8_lossy(element.name().as_ref()).into_owned();
                if !name.starts_with(|c: char| c.is_alphabetic() || c == '_' || c == ':') {
                    return Err(refuse(format!("<{name}> is not an element name")));
                }
                for attribute in element.attributes() {
                    attribute.map_err(|error| refuse(format!("XML is not well-formed: {error}")))?;
                }
                if outside {
                    roots += 1;
                    if roots > 1 {
                        return Err(refuse("a second element outside the root element".into()));
                    }
                }
                if matches!(event, Event::Start(_)) {
                    open.push((name, at));
                }
            }
            Event::End(_) => {
                open.pop();
            }
            Event::GeneralRef(reference) => {
                let name = String::from_utf8_lossy(&reference).into_owned();
                let known = ["lt", "gt", "amp", "quot", "apos"].contains(&name.as_str());
                let character = reference.is_char_ref() && matches!(reference.resolve_char_ref(), Ok(Some(_)));
                if !known && !character {
                    return Err(refuse(format!("&{name}; is not an XML entity")));
                }
                if outside {
                    return Err(refuse("text outside the root element".into()));
                }
            }
            Event::Text(content) if outside && !content.iter().all(u8::is_ascii_whitespace) => {
                return Err(refuse("text outside the root element".into()));
            }
            Event::CData(_) if outside => return Err(refuse("CDATA outside the root element".into())),
            Event::Decl(_) if at > 0 => {
                return Err(refuse("the XML declaration must open the file".into()));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some((name, at)) = open.last() {
        return Err(FormatError { line: line_at(text, *at), cause: format!("element <{name}> is never closed") });
    }
    if roots == 0 {
        return Err(FormatError { line: 1, cause: "no XML element at all".into() });
    }
    Ok(())
}

/// The header that opens Fanvil's text format, whose lines are `Key :value`; the other
/// `key = value` formats (Yealink) separate with `=`.
const FANVIL_HEADER: &str = "<<VOIP CONFIG FILE>>";

fn check_lines(text: &str) -> Result<(), FormatError> {
    let separator = if text.starts_with(FANVIL_HEADER) { ':' } else { '=' };
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        let skipped = ["#", ";", "//", "<", "["].iter().any(|start| line.starts_with(start));
        if line.is_empty() || skipped {
            continue;
        }
        let cause = match line.find(separator) {
            None => format!("{line:?} is not a `key {separator} value` line"),
            Some(0) => format!("{line:?} has a value but no key"),
            Some(_) => continue,
        };
        return Err(FormatError { line: index + 1, cause });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_errors_name_the_line() {
        assert_eq!(Format::Xml.check("<?xml version=\"1.0\"?>\n<a>\n<b/>\n</a>\n"), Ok(()));
        let unclosed = Format::Xml.check("<a>\n<b>\n</a>\n").unwrap_err();
        assert_eq!(unclosed.line, 3, "{unclosed}");
        assert!(unclosed.cause.contains("not well-formed"), "{unclosed}");
        let never = Format::Xml.check("<a>\n  <b>x</b>\n").unwrap_err();
        assert_eq!((never.line, never.cause.as_str()), (1, "element <a> is never closed"));
        let second = Format::Xml.check("<a/>\n<b/>\n").unwrap_err();
        assert_eq!(second.line, 2);
        assert_eq!(Format::Xml.check("\n").unwrap_err().cause, "no XML element at all");
        assert!(Format::Xml.check("<a>\n</a>\ntrailing").is_err());
        // What a parser of XML 1.0 (section 2.3, 3.1, 4.1) refuses, each with its line.
        for (broken, line) in [
            ("<a>\n<b c=d/>\n</a>", 2),
            ("<a>\n<b c=\"1\" c=\"2\"/>\n</a>", 2),
            ("<a>\n&nbsp;\n</a>", 2),
            ("<a>\n<1b/>\n</a>", 2),
            ("<a/>\n<![CDATA[x]]>", 2),
            ("<a/>\n<?xml version=\"1.0\"?>", 2),
        ] {
            let refused = Format::Xml.check(broken).unwrap_err();
            assert_eq!(refused.line, line, "{broken:?}: {refused}");
        }
        assert_eq!(Format::Xml.check("<a t=\"&lt;&#65;&#x42;\">&amp;&#169;</a>"), Ok(()));
    }

    #[test]
    fn key_value_lines_need_a_key() {
        let yealink = "#!version:1.0.0.1\naccount.1.enable = 1\n\n# comment\nstatic.x = \n";
        assert_eq!(Format::KeyValueLines.check(yealink), Ok(()));
        let fanvil = "<<VOIP CONFIG FILE>>Version:2.0002\n<SIP CONFIG MODULE>\nSIP  Port          :5060\n";
        assert_eq!(Format::KeyValueLines.check(fanvil), Ok(()));
        let no_key = Format::KeyValueLines.check("a = 1\n = 2\n").unwrap_err();
        assert_eq!(no_key.line, 2);
        assert!(no_key.cause.contains("no key"));
        let no_separator = Format::KeyValueLines.check("a = 1\nb 2\n").unwrap_err();
        assert_eq!(no_separator.line, 2);
        // A Yealink line that lost its `=` is refused even with a colon in its value.
        let lost = Format::KeyValueLines.check("a = 1\naccount.1.sip_server.1.address 10.0.0.1:5060\n").unwrap_err();
        assert_eq!(lost.line, 2);
        let fanvil_lost = Format::KeyValueLines.check("<<VOIP CONFIG FILE>>Version:2.0002\nSIP Port 5060\n");
        assert_eq!(fanvil_lost.unwrap_err().line, 2);
        assert_eq!(Format::of_template("device.xml"), Format::Xml);
        assert_eq!(Format::of_template("device.cfg"), Format::KeyValueLines);
    }
}
