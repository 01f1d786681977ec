//! Hosts in network namespaces of the test's own, joined by a bridge, so a test can cut
//! a node off the network for real (`ip link set ... down`) and heal it (`up`).
//!
//! Each [`Namespaces`] gets a private /24 (`10.A.B.0/24`, from the process id and a
//! counter, so parallel tests and test binaries do not collide), a bridge holding the
//! `.254` address (the test process itself talks to the nodes through it), and one
//! namespace per host with a veth pair whose outer end is on the bridge. Dropping it
//! deletes the namespaces, the veths and the bridge.
//!
//! Needs root and iproute2. [`Namespaces::create`] says why when it cannot, so a test
//! can skip with that message instead of failing on a machine without them.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_NETWORK: AtomicU32 = AtomicU32::new(0);

/// One host: a namespace with one interface on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name (`ip netns exec <name> ...`).
    pub namespace: String,
    /// The host-side end of the veth pair: taking it down cuts the host off.
    pub link: String,
    /// The host's address on the bridge.
    pub ip: Ipv4Addr,
}

/// A bridge and the namespaces on it.
#[derive(Debug)]
pub struct Namespaces {
    bridge: String,
    subnet: [u8; 3],
    tag: String,
    hosts: Vec<Host>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Namespaces {
    /// Creates the bridge, or says why this machine cannot (not root, no iproute2, no
    /// permission to create interfaces).
    pub fn create() -> Result<Namespaces, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("network namespaces need root".into());
        }
        let pid = std::process::id();
        let count = NEXT_NETWORK.fetch_add(1, Ordering::Relaxed);
        // Interface names are limited to 15 bytes: keep the tag short.
        let tag = format!("{}{}", pid % 100_000, count);
        let subnet = [10, 100 + (pid % 100) as u8, (count % 250) as u8];
        let namespaces = Namespaces {
            bridge: format!("dyb{tag}"),
            subnet,
            tag,
            hosts: Vec::new(),
        };
        ip(&["link", "add", &namespaces.bridge, "type", "bridge"])?;
        let gateway = format!("{}/24", namespaces.address(254));
        ip(&["addr", "add", &gateway, "dev", &namespaces.bridge])?;
        ip(&["link", "set", &namespaces.bridge, "up"])?;
        Ok(namespaces)
    }

    fn address(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], last)
    }

    /// Adds a host (at most 200) and returns it.
    ///
    /// # Panics
    /// When `ip` fails: the bridge was made, so the machine can do this.
    pub fn add_host(&mut self) -> Host {
        let index = self.hosts.len() + 1;
        assert!(index <= 200, "at most 200 hosts per network");
        let host = Host {
            namespace: format!("dynamo-e2e-{}-{index}", self.tag),
            link: format!("dyv{}-{index}", self.tag),
            ip: self.address(index as u8),
        };
        let address = format!("{}/24", host.ip);
        let steps: [&[&str]; 8] = [
            &["netns", "add", &host.namespace],
            &[
                "link",
                "add",
                &host.link,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.namespace,
            ],
            &["link", "set", &host.link, "master", &self.bridge],
            &["link", "set", &host.link, "up"],
            &[
                "-n",
                &host.namespace,
                "addr",
                "add",
                &address,
                "dev",
                "eth0",
            ],
            &["-n", &host.namespace, "link", "set", "eth0", "up"],
            &["-n", &host.namespace, "link", "set", "lo", "up"],
            &[
                "-n",
                &host.namespace,
                "route",
                "add",
                "default",
                "via",
                &self.address(254).to_string(),
            ],
        ];
        for step in steps {
            ip(step).unwrap_or_else(|e| panic!("setting up host {index}: {e}"));
        }
        self.hosts.push(host.clone());
        host
    }

    /// Cuts `host` off the network (every packet to or from it is lost).
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn cut(&self, host: &Host) {
        ip(&["link", "set", &host.link, "down"]).unwrap_or_else(|e| panic!("cutting: {e}"));
    }

    /// Reconnects a host cut off by [`cut`](Self::cut).
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn heal(&self, host: &Host) {
        ip(&["link", "set", &host.link, "up"]).unwrap_or_else(|e| panic!("healing: {e}"));
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for host in &self.hosts {
            // Deleting the namespace destroys its veth end, and with it the pair.
            if let Err(e) = ip(&["netns", "del", &host.namespace]) {
                eprintln!("e2e: cleaning up: {e}");
            }
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("e2e: cleaning up: {e}");
        }
    }
}
