//! loadgen: drives the bank's write and read sides over gRPC ([`driver`]),
//! with a workload of operations over accounts picked uniformly or
//! zipfian ([`workload`]), and reports each operation's throughput,
//! latency percentiles (HdrHistogram) and errors by gRPC code ([`report`]).

pub mod config;
pub mod driver;
pub mod report;
pub mod workload;
