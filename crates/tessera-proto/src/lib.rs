//! Tessera's gRPC protocol: the code generated from `proto/`, the one place
//! that builds channels between nodes, and typed clients for the meta and
//! storage services. Protobuf types stay in this crate and at the edges of
//! the service crates; everything above speaks `tessera-types`.

pub mod storage {
    tonic::include_proto!("tessera.storage.v1");
}
pub mod meta {
    tonic::include_proto!("tessera.meta.v1");
}
