//! Real User-Agent strings (`tests/reference/user_agents.tsv`, each with its public source)
//! through a running appliance over HTTPS: the vendor, model, firmware and MAC it reads from
//! each, and that a string of none of its vendors is never put down to one.
//!
//! - Unknown phone, tokenless: the vendor's device file for the string's MAC is answered, and
//!   the phone is listed as seen under that vendor and model; the same string asking for
//!   another MAC's file is refused when it names a MAC, which shows the MAC was read.
//! - Known phone, through its enrollment URL: the firmware read lands in its last contact.
//! - A string of no vendor asking for a name two vendors serve (`<mac>.cfg`, `<mac>.xml`)
//!   gets nothing and is not listed.

mod fleet;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use fleet::{Appliance, Connection, cli_ok};
use provbox::mac::Mac;
use provbox::provision::templates::Templates;

#[derive(Debug, Clone)]
struct Row {
    number: usize,
    vendor: String,
    model: String,
    firmware: String,
    mac: String,
    user_agent: String,
}

fn corpus() -> Vec<Row> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/user_agents.tsv");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.starts_with('#'))
        .skip(1)
        .map(|(index, line)| {
            let columns: Vec<&str> = line.split('\t').collect();
            let [vendor, model, firmware, mac, user_agent, source] = columns[..] else {
                panic!("user_agents.tsv line {}: want 6 columns", index + 1)
            };
            assert!(source.len() > 10, "user_agents.tsv line {}: no source", index + 1);
            Row {
                number: index + 1,
                vendor: vendor.into(),
                model: model.into(),
                firmware: firmware.into(),
                mac: mac.into(),
                user_agent: user_agent.into(),
            }
        })
        .collect()
}

/// The MAC a row's requests use: its own, else a locally administered one from its number.
fn request_mac(row: &Row) -> String {
    if row.mac.is_empty() { format!("02{:010x}", row.number) } else { row.mac.clone() }
}

/// Another MAC than `mac` (its last byte changed).
fn other_mac(mac: &str) -> String {
    let last = u8::from_str_radix(&mac[10..], 16).unwrap();
    format!("{}{:02x}", &mac[..10], last ^ 0x01)
}

/// The model a known phone is added with: the one read, else one of the vendor's.
fn device_model(row: &Row) -> String {
    if !row.model.is_empty() {
        return row.model.clone();
    }
    match row.vendor.as_str() {
        "snom" => "D785".into(),
        other => panic!("row {} ({other}) has no model to add the phone with", row.number),
    }
}

/// Rows in rounds whose MACs differ, so that each round's phones are distinct.
fn rounds(rows: &[Row]) -> Vec<Vec<Row>> {
    let mut rounds: Vec<(BTreeSet<String>, Vec<Row>)> = Vec::new();
    for row in rows {
        let mac = request_mac(row);
        match rounds.iter_mut().find(|(macs, _)| !macs.contains(&mac)) {
            Some((macs, round)) => {
                macs.insert(mac);
                round.push(row.clone());
            }
            None => rounds.push((BTreeSet::from([mac]), vec![row.clone()])),
        }
    }
    rounds.into_iter().map(|(_, round)| round).collect()
}

/// Each row's requests come from an address of their own (127.0.1.n): the appliance counts
/// unknown phones per address.
fn source(index: usize) -> IpAddr {
    assert!(index < 250, "more rows in a round than addresses");
    IpAddr::from([127, 0, 1, index as u8 + 1])
}

async fn get(appliance: &Appliance, from: IpAddr, path: &str, user_agent: &str) -> u16 {
    let mut connection = Connection::open(appliance.client_config(), appliance.https, Some(from)).await.unwrap();
    connection.get(path, &[("User-Agent", user_agent)]).await.unwrap().status
}

fn json(appliance: &Appliance, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&cli_ok(&appliance.data, args)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_real_user_agent_is_read_as_its_source_shows() {
    let rows = corpus();
    let per_vendor = rows.iter().fold(BTreeMap::<&str, usize>::new(), |mut counts, row| {
        *counts.entry(row.vendor.as_str()).or_default() += 1;
        counts
    });
    println!("User-Agent corpus: {} strings {per_vendor:?}", rows.len());
    assert!(rows.len() >= 60, "at least 60 strings");
    for vendor in ["yealink", "snom", "polycom", "grandstream", "fanvil", "gigaset", "cisco", "none"] {
        assert!(per_vendor.get(vendor).copied().unwrap_or(0) >= 5, "{vendor}: at least 5 strings");
    }
    // The stock profiles name each vendor's device file.
    let no_overrides = tempfile::tempdir().unwrap();
    let catalog = Templates::new(no_overrides.path().to_path_buf()).catalog();
    let device_file = |row: &Row, mac: &str| {
        let vendor = catalog.vendor(&row.vendor).unwrap();
        vendor.device_file_name(&mac.parse::<Mac>().unwrap(), &device_model(row).replace(' ', "")).unwrap()
    };

    let mut failures = Vec::new();
    for round in rounds(&rows) {
        let appliance = Appliance::start();
        // Unknown phones on the tokenless path.
        for (index, row) in round.iter().enumerate() {
            let mac = request_mac(row);
            let from = source(index);
            if row.vendor == "none" {
                for file in [format!("{mac}.cfg"), format!("{mac}.xml")] {
                    let status = get(&appliance, from, &format!("/{file}"), &row.user_agent).await;
                    if status != 404 {
                        failures.push(format!("line {}: {file} answered {status} to {:?}", row.number, row.user_agent));
                    }
                }
                continue;
            }
            let status = get(&appliance, from, &format!("/{}", device_file(row, &mac)), &row.user_agent).await;
            if status != 200 {
                failures.push(format!("line {}: own file answered {status} to {:?}", row.number, row.user_agent));
            }
            if !row.mac.is_empty() {
                let other = device_file(row, &other_mac(&mac));
                let status = get(&appliance, from, &format!("/{other}"), &row.user_agent).await;
                if status != 404 {
                    failures.push(format!("line {}: another MAC's file answered {status}", row.number));
                }
            }
        }
        let seen = json(&appliance, &["device", "seen", "--json"]);
        let seen: BTreeMap<String, &serde_json::Value> = seen
            .as_array()
            .unwrap()
            .iter()
            .map(|phone| (phone["mac"].as_str().unwrap().replace(':', ""), phone))
            .collect();
        for row in &round {
            let mac = request_mac(row);
            let listed = seen.get(&mac);
            match (row.vendor.as_str(), listed) {
                ("none", None) => {}
                ("none", Some(phone)) => {
                    failures.push(format!("line {}: {:?} listed as {}", row.number, row.user_agent, phone["vendor"]))
                }
                (_, None) => failures.push(format!("line {}: {mac} not listed as seen", row.number)),
                (vendor, Some(phone)) => {
                    let got = (phone["vendor"].as_str().unwrap(), phone["model"].as_str().unwrap());
                    if got != (vendor, row.model.as_str()) {
                        failures.push(format!(
                            "line {}: {:?} read as {got:?}, want ({vendor}, {})",
                            row.number, row.user_agent, row.model
                        ));
                    }
                }
            }
            if !row.mac.is_empty() && seen.contains_key(&other_mac(&mac)) {
                failures.push(format!("line {}: another MAC's request was listed", row.number));
            }
        }

        // Known phones, through their enrollment URLs: the firmware read.
        let phones: Vec<&Row> = round.iter().filter(|row| row.vendor != "none").collect();
        let mut csv = tempfile::NamedTempFile::new().unwrap();
        writeln!(csv, "mac,vendor,model,extension,name").unwrap();
        for (index, row) in phones.iter().enumerate() {
            writeln!(csv, "{},{},{},{},Phone {index}", request_mac(row), row.vendor, device_model(row), 300 + index)
                .unwrap();
        }
        cli_ok(&appliance.data, &["device", "import", csv.path().to_str().unwrap()]);
        for (index, row) in phones.iter().enumerate() {
            let mac = request_mac(row);
            let device = appliance.device(&mac);
            let enrollment = Appliance::path_of(device["enrollment_url"].as_str().unwrap());
            let path = format!("{enrollment}{}", device_file(row, &mac));
            let status = get(&appliance, source(index), &path, &row.user_agent).await;
            let firmware = appliance.device(&mac)["last_contact"]["firmware"].as_str().map(String::from);
            if status != 200 || firmware.as_deref() != Some(row.firmware.as_str()) {
                failures.push(format!(
                    "line {}: enrollment fetch {status}, firmware {firmware:?}, want {:?}",
                    row.number, row.firmware
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} strings misread:\n{}", failures.len(), rows.len(), failures.join("\n"));
}
