//! The wire contracts of Mailfleet, in one crate (Quickwit's habit): the gRPC
//! services between targets and the protobuf payloads put on NATS subjects
//! and JetStream streams. Generated at build time from `mailfleet/*.proto`.

pub mod filter {
    tonic::include_proto!("mailfleet.filter");
}

pub mod history {
    tonic::include_proto!("mailfleet.history");
}

pub mod mailstore {
    tonic::include_proto!("mailfleet.mailstore");
}

pub mod queue {
    tonic::include_proto!("mailfleet.queue");
}

/// gRPC messages may carry a whole message (up to the 25 MiB default limit
/// plus headers); tonic's 4 MiB default would refuse them.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
