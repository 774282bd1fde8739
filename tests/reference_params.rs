//! Every vendor's files against independent references: `tests/reference/<vendor>.tsv`
//! lists, per line, the file, the parameter, a pattern its value must match, and where that
//! comes from (another project's template or the vendor's own documentation). Each vendor's
//! files are rendered for an Italian site (`Europe/Rome`, `it`) and a German one
//! (`Europe/Berlin`, `de`) and every line is checked.
//!
//! Columns: `site` (`*`, `it` or `de`), `file` (as the sample phone requests it),
//! `parameter`, `pattern` (a whole-value regular expression), `source`.
//!
//! How a parameter is found:
//! - text files: the line `parameter = value` (Yealink) or `parameter :value` (Fanvil);
//! - XML: `element` (its text), `element[attr=value]` (the element with that attribute),
//!   `@attribute` (that attribute on any element), and `...@attribute` after an element
//!   (that element's attribute), e.g. `SYMB_ITEM(ID=BS_IP_Data1.aucS_DATA_SERVER[0])@value`
//!   (round brackets for a value that holds square ones).

mod sample_site;

use std::collections::BTreeMap;
use std::path::Path;

use quick_xml::events::Event;
use regex_lite::Regex;

/// The sample phones plus the model families whose files differ.
fn phones() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut phones = sample_site::PHONES.to_vec();
    phones.extend(sample_site::FAMILIES);
    phones.extend(sample_site::ADDED);
    phones
}

struct Line {
    number: usize,
    site: String,
    file: String,
    parameter: String,
    pattern: String,
    source: String,
}

fn reference(vendor: &str) -> Vec<Line> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/reference/{vendor}.tsv"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .skip(1) // the header
        .map(|(index, line)| {
            let columns: Vec<&str> = line.split('\t').collect();
            let [site, file, parameter, pattern, source] = columns[..] else {
                panic!("{vendor}.tsv line {}: want 5 tab-separated columns: {line:?}", index + 1)
            };
            assert!(["*", "it", "de"].contains(&site), "{vendor}.tsv line {}: site {site:?}", index + 1);
            assert!(source.len() > 10, "{vendor}.tsv line {}: no source", index + 1);
            Line {
                number: index + 1,
                site: site.into(),
                file: file.into(),
                parameter: parameter.into(),
                pattern: pattern.into(),
                source: source.into(),
            }
        })
        .collect()
}

/// Every value of `parameter` in text file `body`: `key = value` or `key :value` lines; a
/// parameter `<MODULE> key` only within that section (Fanvil's `<SIP CONFIG MODULE>`).
fn text_values(body: &str, parameter: &str) -> Vec<String> {
    let (section, key) = match parameter.strip_prefix('<').and_then(|rest| rest.split_once("> ")) {
        Some((section, key)) => (Some(format!("<{section}>")), key),
        None => (None, parameter),
    };
    let mut current = String::new();
    let mut values = Vec::new();
    for line in body.lines() {
        if line.starts_with('<') && !line.starts_with("<<") && line.trim_end().ends_with('>') {
            current = line.trim_end().to_string();
            continue;
        }
        if section.as_ref().is_some_and(|section| *section != current) {
            continue;
        }
        let value = ['=', ':'].iter().find_map(|separator| {
            let (name, value) = line.split_once(*separator)?;
            (name.trim() == key).then(|| value.trim().to_string())
        });
        values.extend(value);
    }
    values
}

/// One step of an XML path: an element name with attribute conditions.
struct Step {
    name: String,
    conditions: Vec<(String, String)>,
}

/// Parses `name[attr=value][..]@attribute` (any part but the name optional; `@attr` alone).
fn xml_path(parameter: &str) -> (Option<Step>, Option<String>) {
    let (element, attribute) = match parameter.split_once('@') {
        Some((element, attribute)) => (element, Some(attribute.to_string())),
        None => (parameter, None),
    };
    if element.is_empty() {
        return (None, attribute);
    }
    let name_end = element.find(['[', '(']).unwrap_or(element.len());
    let condition = |c: &str| {
        let (k, v) = c.split_once('=').expect("attr=value");
        (k.to_string(), v.to_string())
    };
    // `(attr=value)` holds a value with brackets (Gigaset's `...[0]`); `[attr=value]` others.
    let conditions = match element[name_end..].strip_prefix('(') {
        Some(rest) => vec![condition(rest.strip_suffix(')').expect("(attr=value)"))],
        None => element[name_end..].split(['[', ']']).filter(|c| !c.is_empty()).map(condition).collect(),
    };
    (Some(Step { name: element[..name_end].to_string(), conditions }), attribute)
}

/// Every value `parameter` selects in XML `body`; panics if `body` is not well-formed.
fn xml_values(body: &str, parameter: &str) -> Vec<String> {
    let (step, wanted_attribute) = xml_path(parameter);
    let mut reader = quick_xml::Reader::from_str(body);
    let mut values = Vec::new();
    let mut capturing: Option<String> = None;
    loop {
        let event = reader.read_event().unwrap_or_else(|e| panic!("not well-formed XML: {e}\n{body}"));
        match &event {
            Event::Start(element) | Event::Empty(element) => {
                let name = String::from_utf8_lossy(element.name().as_ref()).into_owned();
                let attributes: BTreeMap<String, String> = element
                    .attributes()
                    .map(|a| {
                        let a = a.unwrap_or_else(|e| panic!("bad attribute: {e}"));
                        let value = a.unescape_value().unwrap_or_else(|e| panic!("bad attribute value: {e}"));
                        (String::from_utf8_lossy(a.key.as_ref()).into_owned(), value.into_owned())
                    })
                    .collect();
                let selected = step.as_ref().is_none_or(|step| {
                    step.name == name && step.conditions.iter().all(|(k, v)| attributes.get(k) == Some(v))
                });
                if selected {
                    match &wanted_attribute {
                        Some(attribute) => values.extend(attributes.get(attribute).cloned()),
                        None if matches!(event, Event::Start(_)) => capturing = Some(String::new()),
                        None => values.push(String::new()),
                    }
                }
            }
            Event::Text(text) => {
                if let Some(captured) = capturing.as_mut() {
                    let raw = text.decode().unwrap_or_else(|e| panic!("bad text: {e}"));
                    captured.push_str(&quick_xml::escape::unescape(&raw).unwrap_or_else(|e| panic!("bad text: {e}")));
                }
            }
            Event::GeneralRef(reference) => {
                let name = reference.decode().unwrap_or_else(|e| panic!("bad reference: {e}"));
                let entity = format!("&{name};");
                let resolved =
                    quick_xml::escape::unescape(&entity).unwrap_or_else(|e| panic!("unknown entity {entity}: {e}"));
                if let Some(captured) = capturing.as_mut() {
                    captured.push_str(&resolved);
                }
            }
            Event::CData(data) => {
                if let Some(captured) = capturing.as_mut() {
                    captured.push_str(&String::from_utf8_lossy(data));
                }
            }
            Event::End(_) => values.extend(capturing.take()),
            Event::Eof => break,
            _ => {}
        }
    }
    values
}

fn check_vendor(vendor: &str) -> (usize, usize) {
    let lines = reference(vendor);
    let mut failures = Vec::new();
    for (site, zone, language) in [("it", "Europe/Rome", "it"), ("de", "Europe/Berlin", "de")] {
        let dir = tempfile::tempdir().unwrap();
        let phones = phones();
        let app = sample_site::app(dir.path(), &[("time.zone", zone), ("time.language", language)], &phones);
        let mut rendered: BTreeMap<String, String> = BTreeMap::new();
        for line in lines.iter().filter(|line| line.site == "*" || line.site == site) {
            let body = rendered.entry(line.file.clone()).or_insert_with(|| {
                let lower = line.file.to_lowercase();
                let mac = phones
                    .iter()
                    .filter(|(_, v, _)| *v == vendor)
                    .find(|(mac, _, _)| lower.contains(mac))
                    .or_else(|| phones.iter().find(|(_, v, _)| *v == vendor))
                    .map(|(mac, _, _)| mac.parse().unwrap())
                    .unwrap_or_else(|| panic!("no sample {vendor} phone"));
                app.render(&mac, &line.file, true)
                    .unwrap_or_else(|e| panic!("{vendor}.tsv line {}: {}: {e}", line.number, line.file))
                    .body
            });
            let values = if body.trim_start().starts_with('<') && !body.starts_with("<<") {
                xml_values(body, &line.parameter)
            } else {
                text_values(body, &line.parameter)
            };
            let pattern = Regex::new(&format!("^(?:{})$", line.pattern))
                .unwrap_or_else(|e| panic!("{vendor}.tsv line {}: pattern: {e}", line.number));
            let ok = !values.is_empty() && values.iter().all(|value| pattern.is_match(value));
            if !ok {
                failures.push(format!(
                    "{vendor}.tsv line {} ({site}): {} {} = {values:?}, want /{}/ per {}",
                    line.number, line.file, line.parameter, line.pattern, line.source
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} reference lines fail:\n{}", failures.len(), failures.join("\n"));
    let count = |site: &str| lines.iter().filter(|l| l.site == "*" || l.site == site).count();
    (count("it"), count("de"))
}

macro_rules! vendor_tests {
    ($($name:ident: $vendor:literal,)*) => {$(
        #[test]
        fn $name() {
            let (it, de) = check_vendor($vendor);
            println!("{}: {it} lines checked for the Italian site, {de} for the German", $vendor);
            assert!(it >= 20 && de >= 20, "{}: at least 20 reference lines per site", $vendor);
        }
    )*};
}

vendor_tests! {
    yealink_matches_its_references: "yealink",
    snom_matches_its_references: "snom",
    polycom_matches_its_references: "polycom",
    grandstream_matches_its_references: "grandstream",
    fanvil_matches_its_references: "fanvil",
    gigaset_matches_its_references: "gigaset",
    cisco_matches_its_references: "cisco",
}

#[test]
fn the_xml_path_reader_finds_what_it_is_asked_for() {
    let body = r#"<a><b idx="1" perm="">x &amp; y</b><b idx="2">z</b><c k="v"/><S ID="q" value='"1"'/></a>"#;
    assert_eq!(xml_values(body, "b[idx=2]"), ["z"]);
    assert_eq!(xml_values(body, "b[idx=1]"), ["x & y"]);
    assert_eq!(xml_values(body, "@k"), ["v"]);
    assert_eq!(xml_values(body, "S[ID=q]@value"), ["\"1\""]);
    let gigaset = r#"<P><S ID="a.b[0]" value='"x"'/><S ID="a.b[%]" value="y"/></P>"#;
    assert_eq!(xml_values(gigaset, "S(ID=a.b[0])@value"), ["\"x\""]);
    assert_eq!(xml_values(gigaset, "S(ID=a.b[%])@value"), ["y"]);
    assert!(xml_values(body, "b[idx=3]").is_empty());
    assert_eq!(text_values("a.b = 1\nSIP1 Register Addr      :pbx\n", "SIP1 Register Addr"), ["pbx"]);
    assert_eq!(text_values("a.b = http://x:1/\n", "a.b"), ["http://x:1/"]);
    let fanvil = "<A MODULE>\nKey  :1\n\n<B MODULE>\nKey  :2\n";
    assert_eq!(text_values(fanvil, "<B MODULE> Key"), ["2"]);
    assert_eq!(text_values(fanvil, "Key"), ["1", "2"]);
}
