//! The simulated outside world of hedui: a deterministic synthetic
//! population of households applying for social assistance in Dachuan
//! District, the ground truth of what a verification report should say
//! about each of them, and the 28 sources (27 departments and the Rural
//! Commercial Bank) simulated over that population with realistic latency
//! and injectable faults.
//!
//! The broker uses it three ways: in-process, through the `simulated`
//! transport ([`sim::SimulatedFactory`]); as a separate process
//! (`mock-agencies serve`), each source on its own gRPC port like a real
//! department, some also over HTTP/JSON, and some loaded into database
//! views; and as the oracle of end-to-end tests ([`truth`]).
//!
//! # Layout
//! - [`population`]: the seeded generator ([`population::Population`]),
//!   its households and persons, and the facts each source holds about a
//!   person ([`population::Population::facts_for`]).
//! - [`agency`]: the 28 sources the simulation knows: ids, fact kinds,
//!   record-id prefixes.
//! - [`truth`]: `docs/policy.md` implemented independently over the model:
//!   [`truth::GroundTruth`] per household under a [`truth::TruthPolicy`],
//!   and the households the demo shows ([`truth::DemoPicks`]).
//! - [`sim`]: [`sim::SimulatedSource`] (an `hedui_adapters::Adapter` with
//!   latency, faults and counters), [`sim::SimulatedAgencies`] (the handles
//!   of a process's sources) and [`sim::SimulatedFactory`] (the `simulated`
//!   transport).
//! - [`control`]: `hedui.mock.v1.AgencyControlService`, to read counters
//!   and inject faults from another process.
//! - [`serve`]: [`serve::RunningAgencies`], every source on its own
//!   listener plus the control service, as `mock-agencies serve` runs them.
//! - [`http`]: the sources that also answer over HTTP/JSON, each in the
//!   shape of its legacy REST system, and their broker configuration.
//! - [`kit`]: the population as the conformance kit's test data, and
//!   fault injection for the kit.
//! - [`sql`]: loads what housing, vehicle and land registries hold into
//!   views of a real PostgreSQL or MariaDB, and their broker configuration.
//! - `src/main.rs`: the `mock-agencies` command (`serve`, `truth`).

pub mod agency;
pub mod changes;
pub mod control;
pub mod http;
pub mod kit;
pub mod nats;
pub mod population;
pub mod serve;
pub mod sim;
pub mod sql;
pub mod truth;

pub use agency::Agency;
pub use population::{Population, PopulationConfig};
pub use sim::{
    FaultConfig, LatencyConfig, LatencyProfile, SimulatedAgencies, SimulatedFactory,
    SimulatedSource,
};
pub use truth::{DemoPicks, GroundTruth, TruthPolicy};
