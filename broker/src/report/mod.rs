//! The report: folding the sources' answers into one household economic-status
//! report (核对报告) against the local policy.
//!
//! - [`policy`]: the dated, per-county policy files and their selection.
//! - [`household`]: the household as resolved from the household-registration
//!   source, before the fan-out.
//! - [`disclosure`]: what a purpose may see (sources, fact kinds, totals
//!   only), applied to every source's outcome before it is folded.
//! - [`fold`](mod@fold): members, income, assets, indicators R1–R9 and the verdict,
//!   computed as `docs/policy.md` describes.

pub mod disclosure;
pub mod fold;
pub mod household;
pub mod policy;
#[cfg(test)]
mod testkit;

pub use disclosure::Disclosure;
pub use fold::{FoldInput, fold};
pub use household::{Household, Resolution, SourceOutcome, resolve_household};
pub use policy::{Policy, PolicyError, PolicySet, PurposeParams};
