//! The appliance on its LAN: its addresses and host names, the URLs phones are given, and
//! the follower that keeps the server certificate, those URLs, the mDNS answers and the
//! SIP plug-and-play group membership current when a DHCP lease arrives late or changes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::{App, Site, SiteUrls};
use crate::pki::Pki;
use crate::{mdns, sip};

/// The appliance's non-loopback addresses, IPv4 first.
pub fn addresses() -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|interfaces| {
            interfaces
                .filter(|i| i.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
                .filter_map(|i| {
                    let address = i.address?;
                    let ip = match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
                        (Some(v4), _) => IpAddr::V4(v4.ip()),
                        (_, Some(v6)) if !v6.ip().is_unicast_link_local() => IpAddr::V6(v6.ip()),
                        _ => return None,
                    };
                    (!ip.is_loopback()).then_some(ip)
                })
                .collect()
        })
        .unwrap_or_default();
    addresses.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    addresses.dedup();
    addresses
}

/// How often the host name and LAN addresses are looked at again.
const LAN_POLL: Duration = Duration::from_secs(5);

/// The appliance as the LAN sees it: its host names and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LanView {
    /// The system host name (set from the MAC on the image), for the certificate.
    host: String,
    /// The mDNS name, `provbox-<MAC digits>`.
    mdns_host: String,
    /// Non-loopback addresses, IPv4 first.
    pub(crate) addresses: Vec<IpAddr>,
}

impl LanView {
    /// As it is now.
    pub(crate) fn now() -> LanView {
        let host =
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "provbox".into());
        LanView { host, mdns_host: mdns::Identity::host_name(), addresses: addresses() }
    }

    /// The names and addresses the server certificate must cover.
    pub(crate) fn certificate_names(&self) -> (Vec<String>, Vec<IpAddr>) {
        let mut names = vec![self.host.clone(), format!("{}.local", self.host), "localhost".to_string()];
        names.dedup();
        let mut ips = self.addresses.clone();
        ips.extend([IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        (names, ips)
    }

    /// What the mDNS responder answers, for the page on `https_port`.
    pub(crate) fn mdns_identity(&self, https_port: u16) -> mdns::Identity {
        let addresses =
            if self.addresses.is_empty() { vec![IpAddr::V4(Ipv4Addr::LOCALHOST)] } else { self.addresses.clone() };
        mdns::Identity::new(&self.mdns_host, addresses, https_port)
    }
}

/// Keeps what depends on the LAN address current when a DHCP lease arrives late or
/// changes: the server certificate's names, the URLs phones are given, the mDNS answers;
/// and renews the server certificate before it expires.
pub(crate) struct LanFollower {
    /// Whose URLs follow.
    pub(crate) app: Arc<App>,
    /// Whose certificate follows.
    pub(crate) pki: Arc<Pki>,
    /// Where the mDNS responder takes its identity from, if it runs.
    pub(crate) identity: Option<watch::Sender<mdns::Identity>>,
    /// The SIP endpoint whose PnP group membership follows, if it runs.
    pub(crate) sip: Option<Arc<sip::Endpoint>>,
    /// The bound HTTPS address.
    pub(crate) https: SocketAddr,
    /// The bound HTTP address.
    pub(crate) http: SocketAddr,
}

impl LanFollower {
    /// Looks every [`LAN_POLL`] until `stopped`, starting from what `seen` describes.
    pub(crate) async fn run(self, mut seen: LanView, mut stopped: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(LAN_POLL) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            // A server certificate near its end is reissued while running too: an appliance
            // may run for more than the certificate's 398 days.
            match tokio::task::block_in_place(|| self.pki.renew_if_due()) {
                Ok(true) => tracing::info!("renewed the server certificate before it expires"),
                Ok(false) => {}
                Err(error) => tracing::error!("cannot renew the server certificate: {error}"),
            }
            let now = LanView::now();
            if now != seen {
                // Reissuing the certificate generates a key (an RSA one takes seconds on a
                // Pi): off the async workers. `serve`'s runtime is multi-threaded.
                let added: Vec<IpAddr> =
                    now.addresses.iter().filter(|address| !seen.addresses.contains(address)).copied().collect();
                tokio::task::block_in_place(|| self.apply(&now, &added));
                seen = now;
            }
        }
    }

    /// Follows `view`, in which `added` are the addresses that are new.
    fn apply(&self, view: &LanView, added: &[IpAddr]) {
        tracing::info!(host = view.host, addresses = ?view.addresses, "the LAN address or host name changed");
        let (names, ips) = view.certificate_names();
        if let Err(error) = self.pki.cover(&names, &ips) {
            tracing::error!("cannot reissue the server certificate for the new address: {error}");
        }
        let site = site(self.app.data_dir.clone(), self.https.port(), self.http.port());
        self.app.set_site_urls(SiteUrls { default_base_url: site.default_base_url, bootstrap_url: site.bootstrap_url });
        if let Some(identity) = &self.identity {
            identity.send_replace(view.mdns_identity(self.https.port()));
        }
        if let Some(endpoint) = &self.sip {
            endpoint.join_pnp_group(added);
        }
    }
}

/// The URL base for `ip` and `port`.
pub fn base_url_for(ip: IpAddr, port: u16, scheme: &str) -> String {
    match ip {
        IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{port}/"),
        IpAddr::V4(v4) => format!("{scheme}://{v4}:{port}/"),
    }
}

/// The site description for `data_dir` when phones reach HTTPS on `https_port` and plain
/// HTTP on `http_port`.
pub fn site(data_dir: PathBuf, https_port: u16, http_port: u16) -> Site {
    let ip = addresses().first().copied().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    Site {
        data_dir,
        default_base_url: base_url_for(ip, https_port, "https"),
        bootstrap_url: base_url_for(ip, http_port, "http"),
    }
}
