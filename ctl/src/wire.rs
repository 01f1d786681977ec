//! How the command line writes what it sends: endpoints as URLs (`host:port` gets a
//! scheme), contexts as standard base64 (what `get` prints and `--context` takes).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tonic::codegen::http::Uri;

use crate::error::CtlError;

/// The full URL of an endpoint: `host:port` gets `https://` with TLS and `http://`
/// without.
///
/// # Errors
///
/// [`CtlError::Usage`] for an explicit `http://` endpoint with TLS flags, which would
/// silently send credentials and data in the clear.
pub fn normalize_endpoint(url: &str, tls: bool) -> Result<String, CtlError> {
    if !url.contains("://") {
        let scheme = if tls { "https" } else { "http" };
        return Ok(format!("{scheme}://{url}"));
    }
    if tls && url.starts_with("http://") {
        return Err(CtlError::Usage(format!(
            "endpoint {url} is plain http:// but TLS flags (--tls-ca, --tls-cert, --tls-key) \
             are set; use https:// or host:port"
        )));
    }
    Ok(url.to_owned())
}

/// The admin endpoint: the explicit one, or the client endpoint's host with port + 1
/// (the node's default internode port); both normalized as [`normalize_endpoint`] does.
///
/// # Errors
///
/// [`CtlError::Usage`] when the client endpoint is not a URL with an explicit port
/// below 65535, or an endpoint is `http://` with `tls`.
pub fn admin_endpoint(
    endpoint: &str,
    explicit: Option<&str>,
    tls: bool,
) -> Result<String, CtlError> {
    if let Some(explicit) = explicit {
        return normalize_endpoint(explicit, tls);
    }
    let url = normalize_endpoint(endpoint, tls)?;
    let uri: Uri = url
        .parse()
        .map_err(|e| CtlError::Usage(format!("invalid endpoint {url:?}: {e}")))?;
    let no_port = || {
        CtlError::Usage(format!(
            "cannot derive the admin endpoint from {url:?} (needs an explicit port below 65535); pass --admin-endpoint"
        ))
    };
    let authority = uri.authority().ok_or_else(no_port)?;
    let port = authority.port_u16().ok_or_else(no_port)?;
    let admin_port = port.checked_add(1).ok_or_else(no_port)?;
    let scheme = uri.scheme_str().unwrap_or("http");
    Ok(format!("{scheme}://{}:{admin_port}", authority.host()))
}

/// Decodes a `--context` flag: absent or empty is the empty context (a blind write).
///
/// # Errors
///
/// [`CtlError::Usage`] when the text is not standard base64.
pub fn decode_context(text: Option<&str>) -> Result<Vec<u8>, CtlError> {
    let text = text.unwrap_or("").trim();
    BASE64
        .decode(text)
        .map_err(|e| CtlError::Usage(format!("invalid --context: not base64 ({e})")))
}

/// Encodes a context for printing (standard base64, the form `--context` accepts).
pub fn encode_context(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}
