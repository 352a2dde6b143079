//! Small helpers shared by every gRPC client and server of Mailfleet.

use tonic::transport::{Channel, Endpoint};

/// A channel to `url` that connects on first use and reconnects after
/// failures, so targets can start in any order.
pub fn lazy_channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy())
}

pub use mailfleet_proto::MAX_GRPC_MESSAGE_BYTES as MAX_MESSAGE_BYTES;
