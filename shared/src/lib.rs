//! What the three services share: the generated public contract ([`proto`]),
//! the domain events and their encoding ([`events`]), the event log's naming
//! and headers ([`event_log`]), telemetry bootstrap ([`telemetry`]),
//! trace-context propagation ([`propagation`]), gRPC server instrumentation
//! ([`grpc_telemetry`]) and the shutdown signal ([`shutdown`]).

pub mod deadline;
pub mod event_log;
pub mod events;
pub mod grpc_server;
pub mod grpc_telemetry;
pub mod grpc_tls;
mod metrics_endpoint;
pub mod propagation;
pub mod retry;
pub mod secrets;
pub mod shutdown;
pub mod telemetry;
pub mod validation;

pub mod proto {
    //! The `bank.v1` protobuf package: gRPC services and the event schema.
    #![allow(unreachable_pub, missing_docs, clippy::all)]

    pub mod bank {
        pub mod v1 {
            tonic::include_proto!("bank.v1");
        }
    }

    /// The encoded descriptors of `bank.v1`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("bank_v1_descriptor");
}
