//! Gigaset N510/N720 bases, which fetch over plain HTTP only, against a running appliance:
//! the redirect chain from the data server to `<MAC>.xml` as the base follows it (compared
//! byte for byte with the files wazo-provd-plugins ships, `tests/reference/gigaset_chain.tsv`),
//! and a configuration with a SIP password that travels over plain HTTP only once the
//! technician has consented for that device, and never after the consent is withdrawn.

mod fleet;

use std::net::SocketAddr;
use std::path::Path;

use fleet::{Appliance, Response, cli, cli_ok, read_response};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const N510_MAC: &str = "7c2f804df9a9";
const N510_UA: &str = "N510 IP PRO/42.245.00.000.000;7C2F804DF9A9";
const N720_MAC: &str = "7c2f80ca21e4";
const N720_UA: &str = "Gigaset N720 DM PRO/70.089.00.000.000;7C2F80CA21E4";

/// One plain-HTTP GET, as a base sends it.
async fn get(http: SocketAddr, path: &str, user_agent: &str) -> Response {
    let stream =
        tokio::time::timeout(std::time::Duration::from_secs(10), TcpStream::connect(http)).await.unwrap().unwrap();
    let mut stream = BufReader::new(stream);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: provbox\r\nUser-Agent: {user_agent}\r\nConnection: close\r\n\r\n");
    stream.get_mut().write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), read_response(&mut stream)).await.unwrap().unwrap()
}

/// The chain's blocks: (type, string).
fn blocks(mut bytes: &[u8]) -> Vec<(u8, String)> {
    let mut found = Vec::new();
    while let [kind, length, 0x03, text_length, rest @ ..] = bytes {
        assert_eq!(*length as usize, *text_length as usize + 2, "block length");
        let text = &rest[..*text_length as usize];
        assert_eq!(text.last(), Some(&0), "NUL-terminated");
        found.push((*kind, String::from_utf8(text[..text.len() - 1].to_vec()).unwrap()));
        bytes = &rest[*text_length as usize..];
    }
    assert!(bytes.is_empty(), "trailing bytes");
    found
}

/// Resolves `relative` against the folder of `path`, as a URL is resolved (`..` never climbs
/// above the root).
fn resolve(path: &str, relative: &str) -> String {
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    for part in relative.split('/') {
        match part {
            ".." => {
                if parts.len() > 1 {
                    parts.pop();
                }
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

/// Follows the chain from `<data server>/<start>` the way a base does, checking each file
/// against the reference, and fetches the file its last link names. `data_server` is the
/// path part of the base's data server (on the appliance's loopback HTTP port).
async fn follow_chain(appliance: &Appliance, data_server: &str, start: &str, mac: &str, ua: &str) -> Response {
    let reference =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/gigaset_chain.tsv"))
            .unwrap();
    let mut path = format!("{data_server}/{start}");
    for _ in 0..8 {
        let response = get(appliance.http, &path, ua).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.header("content-type"), Some("application/octet-stream"), "{path}");
        // The reference file this is: the one whose path ends this one (the base resolves
        // each link from the file it read, so the sifs files end up above the data server).
        let columns: Vec<&str> = reference
            .lines()
            .map(|line| line.split('\t').collect::<Vec<_>>())
            .find(|columns| path.ends_with(&format!("/{}", columns[0])))
            .unwrap_or_else(|| panic!("{path} is no file of the chain"));
        let relative = columns[0];
        let expected: Vec<u8> =
            (0..columns[2].len()).step_by(2).map(|i| u8::from_str_radix(&columns[2][i..i + 2], 16).unwrap()).collect();
        match columns[1] {
            "whole" => assert_eq!(response.body, expected, "{relative} differs from wazo's"),
            _ => assert!(response.body.windows(expected.len()).any(|w| w == expected), "{relative} lacks wazo's block"),
        }
        let links = blocks(&response.body);
        if let Some((_, template)) = links.iter().find(|(kind, _)| *kind == 0) {
            let file = template.strip_prefix("http://%DURL/").unwrap().replace("%MACD", &mac.to_uppercase());
            return get(appliance.http, &format!("{data_server}/{file}"), ua).await;
        }
        let (_, next) = links.iter().find(|(kind, _)| *kind == 3 || *kind == 4).expect("a pointer on");
        path = resolve(&path, next);
    }
    panic!("the chain does not end");
}

/// The data server a config sets, as a path on the appliance: `host:port/p/<token>` → `/p/<token>`.
fn data_server_in(config: &str, id: &str) -> String {
    let marker = format!("ID=\"{id}\" class=\"symb_item\" value='\"");
    let start = config.find(&marker).unwrap_or_else(|| panic!("{id} in:\n{config}")) + marker.len();
    let value = &config[start..start + config[start..].find('"').unwrap()];
    assert!(!value.contains("://"), "the data server has no scheme: {value}");
    format!("/{}", value.split_once('/').unwrap().1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_enrolls_over_plain_http_only_with_consent() {
    let appliance = Appliance::start();
    let device = appliance.add(N510_MAC, "gigaset", "N510 IP PRO");
    let enrollment = Appliance::path_of(device["enrollment_url"].as_str().unwrap());
    let data_server = enrollment.trim_end_matches('/').to_string();
    assert!(device["plain_http"].is_null());

    // The chain is secret-free; its end, the base's file, is refused without consent.
    let refused = follow_chain(&appliance, &data_server, "42/2/master.bin", N510_MAC, N510_UA).await;
    assert_eq!(refused.status, 404);
    assert!(appliance.wait_for_log("a device URL over plain HTTP without consent"));
    assert_eq!(appliance.device(N510_MAC)["enrollment"]["state"], "open", "a refusal starts nothing");

    // Consent, shown on the device: the same walk now ends in its configuration.
    let said = cli_ok(&appliance.data, &["device", "plain-http", N510_MAC, "on"]);
    assert!(said.contains("SIP password included") && said.contains("/e/"), "{said}");
    let shown = appliance.device(N510_MAC);
    assert!(shown["plain_http"]["enrollment_url"].as_str().unwrap().starts_with("http://"));
    let text = cli_ok(&appliance.data, &["device", "show", N510_MAC]);
    assert!(text.contains("plain HTTP      allowed since"), "{text}");
    let config = follow_chain(&appliance, &data_server, "42/2/master.bin", N510_MAC, N510_UA).await;
    assert_eq!(config.status, 200);
    let text = config.text();
    assert!(text.contains("BS_IP_Data1.aucS_SIP_PASSWORD"), "{text}");
    assert!(text.contains("<MAC_ADDRESS value=\"7C2F804DF9A9\"/>"));
    assert_eq!(appliance.device(N510_MAC)["enrollment"]["state"], "grace");

    // Its next resync goes through the steady URL the file names, and closes enrollment.
    let steady = data_server_in(&text, "BS_IP_Data1.aucS_DATA_SERVER[0]");
    assert_eq!(format!("{steady}/"), Appliance::path_of(shown["steady_url"].as_str().unwrap()));
    let resync = follow_chain(&appliance, &steady, "42/2/master.bin", N510_MAC, N510_UA).await;
    assert_eq!(resync.status, 200);
    let shown = appliance.device(N510_MAC);
    assert_eq!(shown["enrollment"]["state"], "locked");
    assert_eq!(shown["last_contact"]["firmware"], "42.245.00.000.000");

    // Withdrawn: plain HTTP gets nothing again; HTTPS is unaffected.
    cli_ok(&appliance.data, &["device", "plain-http", N510_MAC, "off"]);
    assert_eq!(get(appliance.http, &format!("{steady}/7C2F804DF9A9.xml"), N510_UA).await.status, 404);
    assert!(appliance.wait_for_log("plain-HTTP consent changed"));
    assert!(appliance.device(N510_MAC)["plain_http"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_n720_gets_its_own_items_and_a_phone_without_consent_gets_nothing_over_http() {
    let appliance = Appliance::start();
    let device = appliance.add(N720_MAC, "gigaset", "N720 DM PRO");
    let data_server = Appliance::path_of(device["enrollment_url"].as_str().unwrap()).trim_end_matches('/').to_string();
    cli_ok(&appliance.data, &["device", "plain-http", N720_MAC, "on"]);
    let config = follow_chain(&appliance, &data_server, "70/1/master.bin", N720_MAC, N720_UA).await;
    assert_eq!(config.status, 200);
    let text = config.text();
    assert!(text.contains("N720_general.xsd") && text.contains("BS_VOIP_Data.astVoipAccounts[0].aucS_SIP_PASSWORD[0]"));
    assert!(!text.contains("BS_IP_Data1."), "no N510 items: {text}");
    data_server_in(&text, "BS_IP_Data.aucS_DATA_SERVER[%]");

    // A Yealink's enrollment URL over plain HTTP: refused, and the consent is per device.
    let yealink = appliance.add("805ec0d57d72", "yealink", "T54W");
    let path = format!("{}805ec0d57d72.cfg", Appliance::path_of(yealink["enrollment_url"].as_str().unwrap()));
    let ua = "Yealink SIP-T54W 96.86.0.15 80:5e:c0:d5:7d:72";
    assert_eq!(get(appliance.http, &path, ua).await.status, 404);
    assert_eq!(appliance.device("805ec0d57d72")["enrollment"]["state"], "open");
    let (ok, _, err) = cli(&appliance.data, &["device", "plain-http", "805ec0d57d99", "on"]);
    assert!(!ok && err.contains("805ec0d57d99"), "{err}");
}
