//! Fanvil FDPS: XML-RPC with Basic auth whose password is sent as hex(md5(hex(md5(password)))).
//! A phone is pointed at a URL by a "material server" named after its MAC: delete the old
//! server, add the new one, then move the device onto it.
//!
//! The one independent client is nethesis/falconieri `providers/fanvil.go` (at 856677b, the
//! same since cb9798a); every request form here follows it, cited beside each rule. FDPS has
//! no lookup any reference uses, so its registrations are taken on its word, and removal
//! (falconieri has none) is deRegisterDevice then deleteServer, an assumption.

use md5::Digest;

use super::wan::Wan;
use super::xmlrpc::Value;
use super::{
    ApiSpec, Failure, Lookup, RedirectClient, Registration, ServiceSettings, ServiceSpec, basic_auth, status_pair,
    xmlrpc_call,
};
use crate::mac::Mac;
use crate::settings::{Rule, SettingSpec};

/// The public endpoint.
pub const ENDPOINT: &str = "http://fdps.fanvil.com/xmlrpc.php";

/// Fanvil's FDPS redirection service. Its public endpoint is plain HTTP, which the
/// redirect status warns about.
pub const SERVICE: ServiceSpec = ServiceSpec {
    name: "fanvil",
    vendor: "fanvil",
    settings: &[
        SettingSpec::plain("redirect.fanvil.api", "fdps", Rule::OneOf(&["fdps", "off"]), "Fanvil redirect API"),
        SettingSpec::plain("redirect.fanvil.url", "", Rule::Url, "Fanvil FDPS endpoint (empty: the public one)"),
        SettingSpec::plain("redirect.fanvil.username", "", Rule::Text, "Fanvil FDPS user"),
        SettingSpec::secret("redirect.fanvil.password", "Fanvil FDPS password"),
    ],
    apis: &[ApiSpec {
        name: "fdps",
        needs: ["username", "password"],
        default_endpoint: Some(ENDPOINT),
        build: |settings| Box::new(Fdps::new(settings)),
    }],
};

/// The FDPS client.
pub struct Fdps {
    endpoint: String,
    authorization: String,
}

/// hex(md5(`text`)).
fn md5_hex(text: &[u8]) -> String {
    crate::hex::encode(&md5::Md5::digest(text))
}

/// The password FDPS expects: hex(md5(hex(md5(password)))).
pub fn fdps_password(password: &str) -> String {
    md5_hex(md5_hex(password.as_bytes()).as_bytes())
}

/// FDPS's "nothing to remove" answers: `Error:server_not_exist` (falconieri 1a9d759), and
/// the device's counterpart.
fn absent(text: &str) -> bool {
    matches!(text.trim(), "Error:server_not_exist" | "Error: server_not_exist" | "Error:device_not_exist")
}

/// The MAC as FDPS takes it: 12 uppercase hex digits, no separators (falconieri
/// `utils.GetMacAddress` and the fanvil case of `methods/providerDispatch.go`).
fn fdps_mac(mac: &Mac) -> Value {
    Value::str(mac.to_string().to_ascii_uppercase())
}

/// The lowercase server name earlier versions created, removed with the current one.
fn legacy_name(mac: &Mac) -> Value {
    Value::str(mac.to_string())
}

impl Fdps {
    /// A client for `settings`.
    pub fn new(settings: ServiceSettings) -> Fdps {
        Fdps {
            endpoint: settings.url,
            authorization: basic_auth(&settings.username, &fdps_password(&settings.password)),
        }
    }

    /// Calls `method` and succeeds on `[true, ..]` or, when `tolerate` says so, on a refusal.
    async fn step(&self, wan: &Wan, method: &str, params: &[Value], tolerate: fn(&str) -> bool) -> Result<(), Failure> {
        match status_pair(xmlrpc_call(wan, &self.endpoint, &self.authorization, method, params).await?)? {
            (true, _) => Ok(()),
            (false, text) if tolerate(&text) => Ok(()),
            // falconieri 96ef971: `Error: device_had_existed` is another account's device.
            (false, text) if text.contains("device_had_existed") => Err(Failure::permanent(format!(
                "FDPS {method}: {text} (the MAC belongs to another FDPS account; release it there)"
            ))),
            (false, text) => Err(Failure::permanent(format!("FDPS {method}: {text}"))),
        }
    }
}

impl RedirectClient for Fdps {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn register(&self, wan: &Wan, registration: &Registration) -> Result<(), Failure> {
        // Messages never quote the URL: its token is a secret.
        let uri: hyper::Uri = registration
            .url
            .parse()
            .map_err(|e| Failure::permanent(format!("the enrollment URL does not parse: {e}")))?;
        let protocol = match uri.scheme_str() {
            Some("https") => "5",
            Some("http") => "4",
            _ => return Err(Failure::permanent("FDPS needs an http(s) enrollment URL")),
        };
        // Go's Url.Host: host[:port], never userinfo.
        let server = match uri.port_u16() {
            Some(port) => format!("{}:{port}", uri.host().unwrap_or_default()),
            None => uri.host().unwrap_or_default().to_string(),
        };
        // FDPS rebuilds the URL as host + "/" + path: a leading slash would double
        // (falconieri 6848ed5).
        let path = uri.path().trim_start_matches('/').to_string();
        let mac = fdps_mac(&registration.mac);
        let name = registration.mac.to_string().to_ascii_uppercase();
        self.step(wan, "redirect.deleteServer", std::slice::from_ref(&mac), absent).await?;
        // Versions before the references were followed named the server in lowercase.
        self.step(wan, "redirect.deleteServer", &[legacy_name(&registration.mac)], absent).await?;
        // In falconieri's order; cfgDhcpOpt and cfgPnpEnable off keep models such as the X3
        // from waiting for DHCP or PnP instead (falconieri cb9798a).
        let material = Value::Array(
            [
                format!("cfgName={name}"),
                "cfgPfMode=1".into(),
                "cfgDhcpOpt=false".into(),
                "cfgPnpEnable=false".into(),
                format!("cfgPfSrv={server}"),
                format!("cfgPfName={path}"),
                format!("cfgPfProt={protocol}"),
            ]
            .into_iter()
            .map(Value::Str)
            .collect(),
        );
        self.step(wan, "redirect.addMaterialServer", &[material], |_| false).await?;
        // falconieri checks only the HTTP status of this call, never its reply.
        self.step(wan, "redirect.deRegisterDevice", std::slice::from_ref(&mac), |_| true).await?;
        // registerDevice(MAC, server name), the server being named after the MAC.
        self.step(wan, "redirect.registerDevice", &[mac.clone(), mac], |_| false).await
    }

    async fn deregister(&self, wan: &Wan, mac: &Mac) -> Result<(), Failure> {
        let name = fdps_mac(mac);
        self.step(wan, "redirect.deRegisterDevice", std::slice::from_ref(&name), absent).await?;
        self.step(wan, "redirect.deleteServer", &[name], absent).await?;
        self.step(wan, "redirect.deleteServer", &[legacy_name(mac)], absent).await
    }

    async fn lookup(&self, _wan: &Wan, _mac: &Mac) -> Result<Option<Lookup>, Failure> {
        // No reference reads anything back from FDPS.
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_double_md5_hex() {
        // md5("secret") = 5ebe2294ecd0e0f08eab7690d2a6ee69.
        assert_eq!(md5_hex(b"secret"), "5ebe2294ecd0e0f08eab7690d2a6ee69");
        assert_eq!(fdps_password("secret"), md5_hex(b"5ebe2294ecd0e0f08eab7690d2a6ee69"));
    }
}
