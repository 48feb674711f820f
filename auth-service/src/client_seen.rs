//! What a session records of the client that opened and last used it (`ClientSeen`).

use std::net::IpAddr;
use tonic::Request;

/// The most of a `user-agent` a session keeps (the column's CHECK).
const MAX_USER_AGENT_CHARS: usize = 256;

/// The client of a call as a session records it: its address (IPv4-mapped IPv6 shown as IPv4)
/// and its `user-agent`, cut to 256 characters, control characters dropped.
#[derive(Debug, Clone, Default)]
pub struct ClientSeen {
    pub address: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl ClientSeen {
    /// What `request` shows of its client.
    pub fn of<T>(request: &Request<T>) -> Self {
        let user_agent = request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(|agent| agent.chars().filter(|c| !c.is_control()).take(MAX_USER_AGENT_CHARS).collect::<String>())
            .filter(|agent| !agent.is_empty());
        Self { address: request.remote_addr().map(|a| a.ip().to_canonical()), user_agent }
    }
}
