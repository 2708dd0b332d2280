//! hedui (核对): the household economic-status verification broker.
//!
//! A platform calls `Verify` with an applicant's resident ID number; the
//! broker resolves the household through household registration, asks every
//! other source at once through its adapter, folds the answers into one
//! report with indicators against the local policy, stores it, and returns
//! it.
//!
//! # Layout
//! - [`config`]: the TOML configuration and its checks.
//! - [`verify`]: one verification end to end (validation, household,
//!   fan-out under the deadline, fold, store).
//! - [`guard`]: what stands between the broker and each department: the
//!   answer cache, circuit breaker, rate limit, bulkhead, retry budget.
//! - [`report`]: the policy files and the folding of answers into a report
//!   (income, assets, indicators R1–R9, verdict).
//! - [`store`]: where reports are kept (SQLite).
//! - [`audit`]: the audit log: every access, durable before the answer
//!   leaves, tamper-evident (SQLite or PostgreSQL).
//! - [`consent`]: authorization letters (授权书): registration, and the
//!   check that a verification is covered by one.
//! - [`security`]: roles, and the one place a call without its role is
//!   refused.
//! - [`health`]: `SourceHealthService` (how each source has answered
//!   lately), the standard gRPC health service and `hedui sources`.
//! - [`server`]: the gRPC API and the single place errors become statuses.
//! - [`console`]: the web console's pages, built into the binary.
//! - [`http`]: the same API as HTTP/JSON resources (problem+json errors,
//!   server-sent events) and its OpenAPI description; gRPC-Web.
//! - [`app`]: assembling a broker from configuration; the demo.
//! - [`watch`]: households under management: enrolment, change events
//!   (in process or NATS JetStream), re-verification and alerts.
//! - [`telemetry`]: OpenTelemetry metrics and traces, the operations
//!   listener (`/healthz`, `/readyz`, `/metrics`).
//! - [`client`]: the CLI's gRPC client commands.
//! - [`render`]: a report as readable text.

pub mod app;
pub mod audit;
pub mod client;
pub mod config;
pub mod consent;
pub mod console;
pub mod guard;
pub mod health;
pub mod http;
pub mod render;
pub mod report;
pub mod security;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod verify;
pub mod watch;
