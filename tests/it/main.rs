//! Integration tests: the real `sensorlink` binary on loopback port 0, real sockets.

mod auth;
mod bench;
mod bench_scripts;
mod client;
mod client_link;
mod client_stop;
mod config;
mod conflicts;
mod dashboard;
mod durability;
mod failover;
#[path = "../support/haproxy.rs"]
mod haproxy;
mod harness;
mod http;
mod http_auth;
mod hygiene;
mod limits;
mod line;
mod link_report;
mod live;
#[path = "../support/pg_cluster.rs"]
mod pg_cluster;
mod pg_harness;
mod pinned;
mod postgres;
mod probe;
mod proxy_protocol;
mod query;
mod report;
mod scale;
mod seed;
mod shutdown;
mod spool;
mod tls;
