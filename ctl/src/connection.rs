//! Channels to a node: the client port, and the admin port with its bearer token.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::{CtlError, error_chain};
use dynamo_proto::admin_client::AdminClient;

/// Connects eagerly, so an unreachable server is reported as such, with its cause.
/// `url` is a full URL ([`args::normalize_endpoint`]); an `https://` one uses `tls`, or
/// without it trusts nothing (and says so when the handshake fails).
pub(crate) async fn connect(
    url: &str,
    timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> Result<Channel, CtlError> {
    let url = url.to_owned();
    let invalid = |e: tonic::transport::Error| {
        CtlError::Usage(format!("invalid endpoint {url:?}: {}", error_chain(&e)))
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(invalid)?
        .connect_timeout(timeout)
        .timeout(timeout);
    let https = url.starts_with("https://");
    if https {
        endpoint = endpoint
            .tls_config(tls.cloned().unwrap_or_else(ClientTlsConfig::new))
            .map_err(invalid)?;
    }
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => {
            let mut reason = error_chain(&e);
            if https && tls.is_none() {
                reason.push_str(" (no --tls-ca given, so no server certificate is trusted)");
            }
            Err(CtlError::Unavailable {
                endpoint: url,
                reason,
            })
        }
        Err(_) => Err(CtlError::Unavailable {
            endpoint: url,
            reason: format!(
                "no connection within {}",
                humantime::format_duration(timeout)
            ),
        }),
    }
}

/// Where admin calls go and with which credentials.
pub(crate) struct AdminTarget {
    pub(crate) url: String,
    pub(crate) token: BearerToken,
    pub(crate) timeout: Duration,
    /// Client TLS for `https://` admin endpoints.
    pub(crate) tls: Option<ClientTlsConfig>,
}

/// An admin client that sends the bearer token on every call.
pub(crate) type AdminChannel = AdminClient<InterceptedService<Channel, BearerToken>>;

impl AdminTarget {
    pub(crate) async fn client(&self) -> Result<AdminChannel, CtlError> {
        let channel = connect(&self.url, self.timeout, self.tls.as_ref()).await?;
        Ok(AdminClient::with_interceptor(channel, self.token.clone()))
    }
}

/// Adds `authorization: Bearer <token>` to each request when a token is set.
#[derive(Debug, Clone, Default)]
pub(crate) struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The header value for a token.
pub(crate) fn bearer(token: Option<&str>) -> Result<BearerToken, CtlError> {
    token
        .map(|token| {
            format!("Bearer {token}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| {
                    CtlError::Usage("invalid --admin-token: must be printable ASCII".to_owned())
                })
        })
        .transpose()
        .map(BearerToken)
}
