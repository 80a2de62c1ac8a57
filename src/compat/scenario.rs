//! `eiplab compat --scenario FILE`: a user's own application as a row of the matrix.
//!
//! ```toml
//! name = "my-app"                 # the row's protocol name
//! port = 8080                     # the server's port: {port}, and what "ready" waits for
//! transport = "tcp"               # tcp | udp: the socket "ready" waits for (default tcp)
//! alg = "sip"                     # optional: what the gateway will classify it as
//! timeout = 20                    # the client's limit in seconds (default 20)
//! placements = ["server_in_instance", "client_in_instance"]   # default: both
//!
//! [server]
//! command = ["python3", "-m", "http.server", "{port}", "--bind", "{listen}"]
//!
//! [client]
//! command = ["curl", "-sS", "--max-time", "5", "http://{server}:{port}/"]
//! expect_stdout = "Directory listing"   # optional: besides exit status 0
//! ```
//!
//! In commands, `{listen}` is the address the server should bind (the instance's private IP
//! in NAT mode, the EIP in cut-through, the internet host when the server is on the
//! internet), `{server}` the address the client dials (the EIP or the internet host), `{bind}`
//! the client's own address, `{port}` the port and `{dir}` a scratch directory of the run.

use super::Placement;
use crate::alg::AlgProtocol;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub transport: Transport,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    #[serde(default = "both")]
    pub placements: Vec<Placement>,
    pub server: Side,
    pub client: Client,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Tcp,
    Udp,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Side {
    pub command: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Client {
    pub command: Vec<String>,
    #[serde(default)]
    pub expect_stdout: Option<String>,
}

fn default_timeout() -> u64 {
    20
}

fn both() -> Vec<Placement> {
    Placement::ALL.to_vec()
}

/// The addresses and port a scenario's commands are filled in with.
#[derive(Clone, Debug)]
pub struct Fill<'a> {
    pub listen: &'a str,
    pub server: &'a str,
    pub bind: &'a str,
    pub port: u16,
    pub dir: &'a str,
}

impl Scenario {
    /// Reads and checks a scenario file's text; errors name the field and the fix.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "name = {:?}: use letters, digits, '-', '_' or '.' (it names the matrix row)",
                s.name
            ));
        }
        if s.port == 0 {
            return Err("port = 0: give the port the server listens on (1-65535)".into());
        }
        if s.server.command.is_empty() {
            return Err("[server] command is empty: give the server's program and its arguments, e.g. [\"python3\", \"-m\", \"http.server\", \"{port}\"]".into());
        }
        if s.client.command.is_empty() {
            return Err("[client] command is empty: give the client's program and its arguments, e.g. [\"curl\", \"http://{server}:{port}/\"]".into());
        }
        if s.placements.is_empty() {
            return Err(
                "placements = []: name server_in_instance, client_in_instance or both".into(),
            );
        }
        if !(1..=600).contains(&s.timeout) {
            return Err(format!(
                "timeout = {}: give the client's limit in seconds, 1 to 600",
                s.timeout
            ));
        }
        if let Some(a) = &s.alg {
            if AlgProtocol::from_name(a).is_none() {
                return Err(format!(
                    "alg = {a:?}: use one of sip, h323, rtsp, dns, ftp, tftp (or leave it out)"
                ));
            }
        }
        Ok(s)
    }

    pub fn alg_protocol(&self) -> Option<AlgProtocol> {
        self.alg.as_deref().and_then(AlgProtocol::from_name)
    }

    /// `command` with its placeholders filled in.
    pub fn fill(command: &[String], f: &Fill<'_>) -> Vec<String> {
        command
            .iter()
            .map(|a| {
                a.replace("{listen}", f.listen)
                    .replace("{server}", f.server)
                    .replace("{bind}", f.bind)
                    .replace("{port}", &f.port.to_string())
                    .replace("{dir}", f.dir)
            })
            .collect()
    }
}
