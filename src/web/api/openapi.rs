//! The OpenAPI 3.1 document, generated from the handlers' `utoipa::path` annotations and
//! their types' `ToSchema` derives (compiled for tests only, so the shipped binary carries
//! the document as text and not the generator). `the_document_is_generated_from_the_code`
//! fails when `src/web/openapi.json` is stale; `PROVBOX_UPDATE_OPENAPI=1 cargo test --lib
//! openapi` writes it anew.

use std::collections::BTreeSet;

use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

use super::*;
use crate::provision::templates::VendorId;

/// A device's `{mac}` in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MacPath {
    /// The phone's MAC: 12 hex digits, bare or with `:` or `-` between each pair.
    #[param(
        pattern = r"^[ \t\n\f\r]*([0-9A-Fa-f]{12}|[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5})[ \t\n\f\r]*$",
        example = "805ec0d57d72"
    )]
    #[allow(dead_code)] // Read by the derive only.
    mac: String,
}

/// A template's `{vendor}/{file}` in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TemplatePath {
    /// The vendor.
    #[allow(dead_code)] // Read by the derive only.
    vendor: VendorId,
    /// The template's file name in the vendor's folder (`provbox template list`).
    #[param(example = "device.cfg")]
    #[allow(dead_code)] // Read by the derive only.
    file: String,
}

/// A setting's `{name}` in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SettingPath {
    /// The setting.
    #[allow(dead_code)] // Read by the derive only.
    name: SettingName,
}

/// Bytes as they are, not JSON (a backup, an update bundle): OpenAPI 3.1's binary string.
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .content_media_type("application/octet-stream")
            .into()
    }
}

impl ToSchema for Binary {}

/// A setting's name: every one provbox knows.
pub struct SettingName;

impl PartialSchema for SettingName {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        let names: Vec<&str> = crate::app::config::settings_table().specs().map(|spec| spec.name).collect();
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(names))
            .description(Some("A setting's name (`provbox settings show`)"))
            .into()
    }
}

impl ToSchema for SettingName {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "provbox API",
        description = "Manage the phones of a provbox appliance. Every operation but this document needs `Authorization: Bearer <API token>` (made on the page's Settings or with `provbox admin api-token create NAME`). Errors are `{\"error\": \"...\"}`: 400 a request that is not the operation's JSON or path, 401 no valid token, 404 no such device, template or setting, 409 the appliance's state refuses it, 413 a body too large, 422 well-formed input that breaks a rule, 429 too many wrong tokens from one address, 502 a vendor service failed, 503 not yet possible, 500 the appliance's own failure."
    ),
    paths(
        openapi, metrics, list_devices, add_device, show_device, edit_device, remove_device, unlock, reprovision,
        rotate_passwords, settings, set_setting, phones_seen, redirect_status, update_status, install_update,
        backup, audit_log, password_policy, list_templates, show_template, save_template, revert_template,
        preview_template, reprovision_template
    ),
    components(schemas(ApiError, VendorId, SettingName)),
    modifiers(&Common)
)]
struct ApiDocument;

/// What every protected operation shares: the bearer scheme, 401 and 429; 400 and 413 where
/// a JSON body is read; 500. And the links from a new device to what can be done with it,
/// which a client (and schemathesis's stateful phase) follows with the MAC it answered.
struct Common;

impl Modify for Common {
    fn modify(&self, document: &mut Document) {
        let components = document.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("pbx_<id>_<secret>").build(),
            ),
        );
        let shared = [
            ("Unauthorized", "401", "No valid API token (a missing header, a wrong or revoked token)"),
            (
                "TooManyBadTokens",
                "429",
                "Too many wrong tokens from this address: the Retry-After header says how long to wait",
            ),
            (
                "MalformedBody",
                "400",
                "The body is not this operation's JSON, or did not arrive within the body timeout",
            ),
            ("BodyTooLarge", "413", "The body is larger than this operation takes"),
            ("MalformedPath", "400", "A path parameter is malformed"),
            ("Internal", "500", "The appliance failed; the log says why"),
        ];
        for (name, _, description) in shared {
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", Content::new(Some(Ref::from_schema_name("ApiError"))))
                .build();
            components.responses.insert(name.to_string(), response.into());
        }
        for item in document.paths.paths.values_mut() {
            let operations: [&mut Option<Operation>; 4] =
                [&mut item.get, &mut item.post, &mut item.put, &mut item.delete];
            for operation in operations.into_iter().flatten() {
                let public = operation.security.as_ref().is_some_and(|requirements| {
                    requirements.iter().all(|requirement| *requirement == SecurityRequirement::default())
                });
                let path_checked = operation.parameters.as_ref().is_some_and(|parameters| !parameters.is_empty())
                    && operation.responses.responses.contains_key("404");
                let mut add = |name: &str| {
                    let Some((_, status, _)) = shared.iter().find(|(shared, _, _)| *shared == name) else { return };
                    let reference = Ref::new(format!("#/components/responses/{name}"));
                    operation.responses.responses.entry(status.to_string()).or_insert(RefOr::Ref(reference));
                };
                if !public {
                    add("Unauthorized");
                    add("TooManyBadTokens");
                }
                let json_body = matches!(&operation.request_body, Some(RefOr::T(body)) if body.content.contains_key("application/json"));
                if json_body {
                    add("MalformedBody");
                    add("BodyTooLarge");
                }
                if path_checked {
                    add("MalformedPath");
                }
                add("Internal");
                if !public {
                    operation.security = Some(vec![SecurityRequirement::new("token", Vec::<String>::new())]);
                }
            }
        }
        let per_device: Vec<String> = document
            .paths
            .paths
            .iter()
            .filter(|(path, _)| path.starts_with("/api/v1/devices/{mac}"))
            .flat_map(|(_, item)| [&item.get, &item.post, &item.put, &item.delete])
            .filter_map(|operation| operation.as_ref()?.operation_id.clone())
            .collect();
        let added = document.paths.paths.get_mut("/api/v1/devices").and_then(|item| item.post.as_mut());
        if let Some(RefOr::T(response)) = added.and_then(|operation| operation.responses.responses.get_mut("200")) {
            for operation_id in per_device {
                let link =
                    LinkBuilder::new().operation_id(&operation_id).parameter("mac", "$response.body#/mac").build();
                response.links.insert(operation_id, link.into());
            }
        }
    }
}

/// The document as served before the site's vendors are filled in.
fn generated() -> String {
    let mut text = ApiDocument::openapi().to_pretty_json().expect("the document serialises");
    text.push('\n');
    text
}

#[test]
fn the_document_is_generated_from_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/web/openapi.json");
    let generated = generated();
    if std::env::var_os("PROVBOX_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).expect("write the document");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "src/web/openapi.json is stale: run `PROVBOX_UPDATE_OPENAPI=1 cargo test --lib openapi` and commit it"
    );
    // What the binary embeds is the same document, only without its indentation.
    let embedded: serde_json::Value = serde_json::from_str(OPENAPI_DOCUMENT).expect("the embedded document parses");
    let file: serde_json::Value = serde_json::from_str(&committed).expect("the file parses");
    assert_eq!(embedded, file);
    assert!(OPENAPI_DOCUMENT.len() < committed.len() * 2 / 3, "{} bytes embedded", OPENAPI_DOCUMENT.len());
}

#[test]
fn every_route_is_documented_and_every_documented_path_has_a_route() {
    let document: serde_json::Value = serde_json::from_str(&generated()).expect("JSON");
    let documented: BTreeSet<String> = document["paths"].as_object().expect("paths").keys().cloned().collect();
    let routed: BTreeSet<String> = api_routes().into_iter().map(|(path, _)| path.to_string()).collect();
    assert_eq!(documented, routed);
    // Which methods each path answers is checked over HTTP (tests/api_e2e.rs): 401 for a
    // documented one without a token, 405 for the others.
}

#[test]
fn documented_macs_are_what_the_parser_takes() {
    let document: serde_json::Value = serde_json::from_str(&generated()).expect("JSON");
    let spec = &document["components"]["schemas"]["DeviceSpec"]["properties"]["mac"]["pattern"];
    let path = &document["paths"]["/api/v1/devices/{mac}"]["get"]["parameters"][0]["schema"]["pattern"];
    let preview = &document["components"]["schemas"]["TemplatePreviewRequest"]["properties"]["mac"]["pattern"];
    for pattern in [spec, path, preview] {
        assert_eq!(pattern.as_str(), Some(crate::mac::INPUT_PATTERN));
    }
}

#[test]
fn every_protected_operation_documents_401_and_429_and_every_body_an_example() {
    let document: serde_json::Value = serde_json::from_str(&generated()).expect("JSON");
    let mut operations = 0;
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            operations += 1;
            let responses = operation["responses"].as_object().expect("responses");
            if path != "/api/v1/openapi.json" {
                assert!(responses.contains_key("401") && responses.contains_key("429"), "{method} {path}");
                assert_eq!(operation["security"], serde_json::json!([{ "token": [] }]), "{method} {path}");
            }
            if let Some(content) = operation["requestBody"]["content"].get("application/json") {
                let name = content["schema"]["$ref"].as_str().expect("a named body").rsplit('/').next().unwrap_or("");
                let example = &document["components"]["schemas"][name]["example"];
                assert!(example.is_object(), "{method} {path}: {name} has no example");
            }
        }
    }
    assert_eq!(operations, 25);
}

/// A device's documented field patterns never refuse what [`DeviceSpec::build`] takes: a
/// request the document calls invalid is one the server refuses too. (The other way round
/// the patterns may be looser: what they cannot say, such as lengths in UTF-8 bytes, a blank
/// value or two spaces in a model, the server refuses with 422.)
#[test]
fn documented_device_patterns_never_refuse_what_the_server_takes() {
    let document: serde_json::Value = serde_json::from_str(&generated()).expect("JSON");
    let schemas = &document["components"]["schemas"];
    let pattern = |schema: &str, field: &str| {
        let text = schemas[schema]["properties"][field]["pattern"].as_str().expect("a pattern").to_string();
        regex_lite::Regex::new(&text).expect("the pattern compiles")
    };
    let fields = [("DeviceSpec", "mac"), ("DeviceSpec", "model"), ("LineSpec", "extension"), ("LineSpec", "name")];
    let more = [("LineSpec", "sip_user"), ("LineSpec", "sip_password")];
    let samples = [
        "",
        " ",
        "100",
        " 100 ",
        "\t100\n",
        "1 00",
        "+49-30*1#",
        "a.b_c",
        "x".repeat(16).as_str(),
        &"x".repeat(17),
        &"x".repeat(24),
        &"x".repeat(25),
        &"x".repeat(32),
        &"x".repeat(33),
        &"x".repeat(48),
        &"x".repeat(49),
        "T54W",
        "X6U Pro",
        "X6U  Pro",
        "N510 IP PRO",
        "T54W/2",
        "Ann Lee",
        "Zoë Müller",
        "Ann\u{7}Lee",
        "Ann\u{85}",
        "\u{a0}Ann",
        "805ec0d57d72",
        "80:5e:c0:d5:7d:72",
        "80-5E-C0-D5-7D-72",
        " 805ec0d57d72\r\n",
        "805ec0d57d7",
        "+05ec0d57d72",
        "Kx7-plum9-Tango",
        "  Kx7-plum9-Tango  ",
    ]
    .map(str::to_string);
    let mut both = [0usize; 2];
    for (schema, field) in fields.into_iter().chain(more) {
        let pattern = pattern(schema, field);
        for sample in &samples {
            let mut spec = DeviceSpec {
                mac: "805ec0d57d72".into(),
                vendor: "yealink".into(),
                model: "T54W".into(),
                lines: vec![crate::devices::LineSpec {
                    extension: "100".into(),
                    name: "Ann".into(),
                    sip_user: None,
                    sip_password: Some("Kx7-plum9-Tango".into()),
                }],
            };
            match field {
                "mac" => spec.mac = sample.clone(),
                "model" => spec.model = sample.clone(),
                "extension" => spec.lines[0].extension = sample.clone(),
                "name" => spec.lines[0].name = sample.clone(),
                "sip_user" => spec.lines[0].sip_user = Some(sample.clone()),
                _ => spec.lines[0].sip_password = Some(sample.clone()),
            }
            let accepted = spec.build(|vendor| vendor == "yealink", crate::policy::Level::Pbx).is_ok();
            let matched = pattern.is_match(sample);
            assert!(!accepted || matched, "{schema}.{field}: the server takes {sample:?}, the pattern refuses it");
            both[usize::from(accepted)] += usize::from(accepted == matched);
        }
    }
    assert!(both[0] > 20 && both[1] > 20, "both kinds of sample are exercised: {both:?}");
}
