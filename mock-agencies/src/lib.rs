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
//! department; and as the oracle of end-to-end tests ([`truth`]).
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
//! - `src/main.rs`: the `mock-agencies` command (`serve`, `truth`).

pub mod agency;
pub mod control;
pub mod population;
pub mod serve;
pub mod sim;
pub mod truth;

pub use agency::Agency;
pub use population::{Population, PopulationConfig};
pub use sim::{
    FaultConfig, LatencyConfig, LatencyProfile, SimulatedAgencies, SimulatedFactory,
    SimulatedSource,
};
pub use truth::{DemoPicks, GroundTruth, TruthPolicy};
