//! Connections to nodes: a few tonic channels per address, created on first use and
//! cached, so every request to a node shares its HTTP/2 connections.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dynamo_proto::wire::error_chain;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::ClientError;
use dynamo_proto::kv_client::KvClient;

/// The channels to each node the client talks to.
#[derive(Debug)]
pub(super) struct Pool {
    tls: Option<ClientTlsConfig>,
    connect_timeout: Duration,
    request_timeout: Duration,
    per_node: usize,
    max_response_bytes: usize,
    /// A std `Mutex`: held to look up or insert an entry, never across an `.await`
    /// (lazy channels connect on first use, outside the lock).
    channels: Mutex<HashMap<String, Vec<KvClient<Channel>>>>,
    /// Spreads calls over a node's channels.
    next: AtomicUsize,
}

impl Pool {
    pub(super) fn new(
        tls: Option<ClientTlsConfig>,
        connect_timeout: Duration,
        request_timeout: Duration,
        per_node: usize,
        max_response_bytes: usize,
    ) -> Self {
        Self {
            tls,
            connect_timeout,
            request_timeout,
            per_node,
            max_response_bytes,
            channels: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
        }
    }

    fn endpoint(&self, address: &str) -> Result<Endpoint, ClientError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let invalid = |e: tonic::transport::Error| {
            ClientError::Config(format!("address {address}: {}", error_chain(&e)))
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(invalid)?
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(invalid)?;
        }
        Ok(endpoint)
    }

    /// A client for `address` on one of its channels, creating them on first use.
    pub(super) fn client(&self, address: &str) -> Result<KvClient<Channel>, ClientError> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(clients) = channels.get(address) {
            return Ok(clients[turn % clients.len()].clone());
        }
        let endpoint = self.endpoint(address)?;
        let clients: Vec<KvClient<Channel>> = (0..self.per_node)
            .map(|_| {
                KvClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(self.max_response_bytes)
            })
            .collect();
        let client = clients[turn % clients.len()].clone();
        channels.insert(address.to_owned(), clients);
        Ok(client)
    }

    /// Drops the channels of nodes no longer in `keep`.
    pub(super) fn retain(&self, keep: &[&str]) {
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|address, _| keep.contains(&address.as_str()));
    }

    /// Opens a connection to `address` now; why not, if it cannot.
    pub(super) async fn probe(&self, address: &str) -> Result<(), String> {
        let endpoint = self.endpoint(address).map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.connect_timeout, endpoint.connect()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err(format!("no connection within {:?}", self.connect_timeout)),
        }
    }
}

/// A locally made status as "cause: cause: ...", without tonic's generic wrappers.
pub(super) fn describe(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => error_chain(source),
        None => status.message().to_owned(),
    }
}
