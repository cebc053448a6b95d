//! Attached mode across the network: the shadow runs on the client, the frozen base on a
//! backbone server shared by many clients. Protocol version 1 is documented in
//! `docs/protocol.md`; this module holds the wire format both sides use.
//!
//! Fused mode, one round trip per token: the client uploads its injection/update weights once
//! (content-addressed by SHA-256, so a second upload is skipped), opens a session, then sends
//! `ids` + `s0` for the new tokens and receives the base's final normed hidden state, to which
//! it applies its own head. The upload names its format (`format`: `shadow-peft`, the default,
//! or `peft`), so one server runs adapters of either algorithm.

#[cfg(not(target_arch = "wasm32"))]
pub mod api_error;
#[cfg(not(target_arch = "wasm32"))]
pub mod budget;
pub mod client;
pub mod frame;
#[cfg(not(target_arch = "wasm32"))]
pub mod metrics;
#[cfg(not(target_arch = "wasm32"))]
pub mod scheduler;
#[cfg(not(target_arch = "wasm32"))]
pub mod server;

/// The protocol version spoken (URL prefix `/v1`, frame metadata `protocol`).
pub const PROTOCOL: &str = "1";

/// The header that carries a conversation's routing key, the same on every request the
/// conversation makes (its adapter upload and session open included): a load balancer that
/// hashes on it sends them all to one replica (docs/deploy.md). Servers ignore it.
pub const ROUTE_HEADER: &str = "shadowpeft-route";

/// Adapter tensors that travel to the server: the injection and update weights only
/// (official shadow-peft names).
pub fn is_adapter_tensor(name: &str) -> bool {
    name.starts_with("shadow_injection_model.") || name.starts_with("shadow_update_model.")
}
