//! XML-RPC, as the legacy redirect APIs (Yealink, Snom, Fanvil) speak it: method calls out,
//! method responses and faults back. The reply parser is strict and bounded: anything that is
//! not a well-formed `<methodResponse>` is an error with a short reason, never a panic.

use quick_xml::events::Event;
use quick_xml::reader::Reader;

/// An XML-RPC value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `<int>` / `<i4>`.
    Int(i64),
    /// `<boolean>`.
    Bool(bool),
    /// `<string>`, or an untyped value.
    Str(String),
    /// `<double>`.
    Double(f64),
    /// `<array>`.
    Array(Vec<Value>),
    /// `<struct>`, members in document order.
    Struct(Vec<(String, Value)>),
    /// `<nil/>`.
    Nil,
}

impl Value {
    /// A string value.
    pub fn str(text: impl Into<String>) -> Value {
        Value::Str(text.into())
    }

    /// Truthiness as the redirect services use it: `true`, a non-zero int, or `"1"`/`"true"`.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Bool(b) => *b,
            Value::Int(n) => *n != 0,
            Value::Str(s) => matches!(s.trim(), "1" | "true" | "True" | "TRUE"),
            _ => false,
        }
    }

    /// The value as text, for messages: strings as they are, others in a compact form.
    pub fn text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Int(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Double(d) => d.to_string(),
            Value::Nil => String::new(),
            Value::Array(items) => items.iter().map(Value::text).collect::<Vec<_>>().join(", "),
            Value::Struct(members) => {
                members.iter().map(|(name, value)| format!("{name}={}", value.text())).collect::<Vec<_>>().join(", ")
            }
        }
    }

    /// The value as JSON, for `provbox redirect check`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => s.clone().into(),
            Value::Int(n) => (*n).into(),
            Value::Bool(b) => (*b).into(),
            Value::Double(d) => serde_json::Number::from_f64(*d).map_or(serde_json::Value::Null, Into::into),
            Value::Nil => serde_json::Value::Null,
            Value::Array(items) => items.iter().map(Value::to_json).collect(),
            Value::Struct(members) => members
                .iter()
                .map(|(name, value)| (name.clone(), value.to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }

    fn encode(&self, out: &mut String) {
        out.push_str("<value>");
        match self {
            Value::Int(n) => out.push_str(&format!("<int>{n}</int>")),
            Value::Bool(b) => out.push_str(if *b { "<boolean>1</boolean>" } else { "<boolean>0</boolean>" }),
            Value::Str(s) => out.push_str(&format!("<string>{}</string>", quick_xml::escape::escape(s.as_str()))),
            Value::Double(d) => out.push_str(&format!("<double>{d}</double>")),
            Value::Nil => out.push_str("<nil/>"),
            Value::Array(items) => {
                out.push_str("<array><data>");
                items.iter().for_each(|item| item.encode(out));
                out.push_str("</data></array>");
            }
            Value::Struct(members) => {
                out.push_str("<struct>");
                for (name, value) in members {
                    out.push_str(&format!("<member><name>{}</name>", quick_xml::escape::escape(name.as_str())));
                    value.encode(out);
                    out.push_str("</member>");
                }
                out.push_str("</struct>");
            }
        }
        out.push_str("</value>");
    }
}

/// A `<methodCall>` document.
pub fn encode_call(method: &str, params: &[Value]) -> String {
    let mut out = format!("<?xml version=\"1.0\"?>\n<methodCall><methodName>{method}</methodName><params>");
    for param in params {
        out.push_str("<param>");
        param.encode(&mut out);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>\n");
    out
}

/// What a `<methodResponse>` held.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The first (only) parameter.
    Value(Value),
    /// A `<fault>`.
    Fault {
        /// `faultCode`.
        code: i64,
        /// `faultString`.
        message: String,
    },
}

/// Why a reply is not XML-RPC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed XML-RPC reply: {0}")]
pub struct MalformedReply(pub String);

/// Deepest nesting accepted in a reply.
const MAX_DEPTH: usize = 32;
/// Most elements accepted in a reply.
const MAX_NODES: usize = 100_000;

/// Parses a `<methodResponse>`.
pub fn decode_reply(body: &[u8]) -> Result<Reply, MalformedReply> {
    let text = std::str::from_utf8(body).map_err(|_| MalformedReply("not UTF-8".into()))?;
    let root = parse_tree(text)?;
    if root.name != "methodResponse" {
        return Err(MalformedReply(format!("root element is <{}>, not <methodResponse>", root.name)));
    }
    if let Some(fault) = root.child("fault") {
        let value = decode_value(fault.only_child("value")?)?;
        let member = |name: &str| match &value {
            Value::Struct(members) => members.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()),
            _ => None,
        };
        let code = match member("faultCode") {
            Some(Value::Int(code)) => code,
            _ => 0,
        };
        let message = member("faultString").map(|v| v.text()).unwrap_or_else(|| value.text());
        return Ok(Reply::Fault { code, message });
    }
    let params = root.child("params").ok_or_else(|| MalformedReply("neither <params> nor <fault>".into()))?;
    let param = params.child("param").ok_or_else(|| MalformedReply("<params> without a <param>".into()))?;
    Ok(Reply::Value(decode_value(param.only_child("value")?)?))
}

#[derive(Debug, Default)]
struct Node {
    name: String,
    children: Vec<Node>,
    text: String,
}

impl Node {
    fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    fn only_child(&self, name: &str) -> Result<&Node, MalformedReply> {
        self.child(name).ok_or_else(|| MalformedReply(format!("<{}> without <{name}>", self.name)))
    }
}

fn parse_tree(text: &str) -> Result<Node, MalformedReply> {
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Node> = Vec::new();
    let mut nodes = 0usize;
    let bad = |what: String| MalformedReply(what);
    loop {
        let event =
            reader.read_event().map_err(|e| bad(format!("XML error at byte {}: {e}", reader.buffer_position())))?;
        match event {
            Event::Start(start) | Event::Empty(start) if stack.len() >= MAX_DEPTH || nodes >= MAX_NODES => {
                return Err(bad(format!(
                    "too deep or too large near <{}>",
                    String::from_utf8_lossy(start.name().as_ref())
                )));
            }
            Event::Start(start) => {
                nodes += 1;
                stack.push(Node {
                    name: String::from_utf8_lossy(start.local_name().as_ref()).into_owned(),
                    ..Node::default()
                });
            }
            Event::Empty(start) => {
                nodes += 1;
                let node =
                    Node { name: String::from_utf8_lossy(start.local_name().as_ref()).into_owned(), ..Node::default() };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => return Ok(node),
                }
            }
            Event::End(_) => {
                // The reader checks that end tags match their start tags.
                let Some(node) = stack.pop() else { return Err(bad("unbalanced end tag".into())) };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => return Ok(node),
                }
            }
            Event::Text(t) => {
                let decoded = t.decode().map_err(|e| bad(e.to_string()))?;
                match stack.last_mut() {
                    Some(node) => node.text.push_str(&decoded),
                    None if decoded.trim().is_empty() => {}
                    None => return Err(bad("text outside the root element (an HTML page?)".into())),
                }
            }
            Event::CData(c) => {
                let decoded = c.decode().map_err(|e| bad(e.to_string()))?;
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&decoded);
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| bad(e.to_string()))? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| bad(e.to_string()))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| bad(format!("unknown entity &{name};")))?
                            .to_string()
                    }
                };
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&resolved);
                }
            }
            Event::DocType(_) => return Err(bad("a DOCTYPE (an HTML page?)".into())),
            Event::Eof if stack.is_empty() => return Err(bad("empty document".into())),
            Event::Eof => return Err(bad("truncated: the document ends inside an element".into())),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
}

fn decode_value(node: &Node) -> Result<Value, MalformedReply> {
    let bad = |what: String| Err(MalformedReply(what));
    let Some(typed) = node.children.first() else { return Ok(Value::Str(node.text.clone())) };
    let text = typed.text.trim();
    match typed.name.as_str() {
        "int" | "i4" | "i8" => text
            .parse()
            .map(Value::Int)
            .or_else(|_| bad(format!("<{}>{text}</{}> is not a number", typed.name, typed.name))),
        "boolean" => match text {
            "1" | "true" => Ok(Value::Bool(true)),
            "0" | "false" => Ok(Value::Bool(false)),
            _ => bad(format!("<boolean>{text}</boolean>")),
        },
        "string" => Ok(Value::Str(typed.text.clone())),
        "double" => text.parse().map(Value::Double).or_else(|_| bad(format!("<double>{text}</double>"))),
        "nil" => Ok(Value::Nil),
        "dateTime.iso8601" | "base64" => Ok(Value::Str(text.to_string())),
        "array" => {
            let data = typed.only_child("data")?;
            data.children
                .iter()
                .filter(|c| c.name == "value")
                .map(decode_value)
                .collect::<Result<_, _>>()
                .map(Value::Array)
        }
        "struct" => typed
            .children
            .iter()
            .filter(|c| c.name == "member")
            .map(|member| Ok((member.only_child("name")?.text.clone(), decode_value(member.only_child("value")?)?)))
            .collect::<Result<_, _>>()
            .map(Value::Struct),
        other => bad(format!("unknown value type <{other}>")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_encoded_as_the_services_expect() {
        let call = encode_call(
            "redirect.registerDeviceWithUniqueUrl",
            &[Value::str("805ec0d57d72"), Value::str("a&b"), Value::Bool(false), Value::Array(vec![Value::Int(7)])],
        );
        assert_eq!(
            call,
            "<?xml version=\"1.0\"?>\n<methodCall><methodName>redirect.registerDeviceWithUniqueUrl</methodName>\
             <params><param><value><string>805ec0d57d72</string></value></param>\
             <param><value><string>a&amp;b</string></value></param>\
             <param><value><boolean>0</boolean></value></param>\
             <param><value><array><data><value><int>7</int></value></data></array></value></param>\
             </params></methodCall>\n"
        );
    }

    #[test]
    fn replies_and_faults_decode() {
        let ok = br#"<?xml version="1.0"?><methodResponse><params><param><value><array><data>
            <value><boolean>1</boolean></value><value>OK &amp; done&#33;</value></data></array></value>
            </param></params></methodResponse>"#;
        assert_eq!(
            decode_reply(ok).unwrap(),
            Reply::Value(Value::Array(vec![Value::Bool(true), Value::str("OK & done!")]))
        );
        let fault = br#"<methodResponse><fault><value><struct>
            <member><name>faultCode</name><value><int>-32601</int></value></member>
            <member><name>faultString</name><value><string>no such method</string></value></member>
            </struct></value></fault></methodResponse>"#;
        assert_eq!(decode_reply(fault).unwrap(), Reply::Fault { code: -32601, message: "no such method".into() });
    }

    #[test]
    fn garbage_is_a_reason_not_a_panic() {
        let cases: &[(&[u8], &str)] = &[
            (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "DOCTYPE"),
            (b"<html><body>oops</body></html>", "<html>"),
            (b"<methodResponse><params><param><value><int>12", "truncated"),
            (
                b"<methodResponse><params><param><value><int>x</int></value></param></params></methodResponse>",
                "not a number",
            ),
            (b"<methodResponse></methodResponse>", "neither"),
            (b"Service Unavailable", "outside the root"),
            (b"\xff\xfe", "UTF-8"),
            (b"", "empty"),
        ];
        for (body, reason) in cases {
            let error = decode_reply(body).unwrap_err();
            assert!(error.0.contains(reason), "{:?}: {error}", String::from_utf8_lossy(body));
        }
        let deep = "<methodResponse>".to_string() + &"<value><array><data>".repeat(40);
        assert!(decode_reply(deep.as_bytes()).unwrap_err().0.contains("too deep"));
    }
}
