//! Builds adapters from configuration. Each transport registers one
//! [`AdapterFactory`]; a source's configuration names the transport
//! (`type = "grpc"`) and gives its parameters. Registration is explicit:
//! [`Registry::with_builtin`] lists the transports this crate provides, and
//! a program adds its own (the broker adds the simulated agencies).

use std::{collections::BTreeMap, fmt, sync::Arc};

use serde::Deserialize;

use crate::{Adapter, catalog::SourceSpec};

/// A transport, as a source's configuration gives it: the transport's name
/// and its parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TransportConfig {
    /// The transport's name, e.g. `"grpc"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The transport's own parameters, checked by its factory.
    #[serde(flatten)]
    pub params: toml::Table,
}

/// Why an adapter could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// No factory for this transport.
    #[error("unknown transport {kind:?}; available: {available}")]
    UnknownTransport {
        /// The transport as written.
        kind: String,
        /// The transports registered, comma separated.
        available: String,
    },
    /// The transport's parameters are wrong.
    #[error("transport {kind:?}: {message}")]
    Params {
        /// The transport.
        kind: String,
        /// What is wrong, naming the parameter.
        message: String,
    },
}

/// Builds adapters of one transport.
pub trait AdapterFactory: Send + Sync {
    /// The transport's name, as configuration writes it.
    fn transport(&self) -> &'static str;

    /// Builds the adapter of `source` from the transport's parameters.
    /// Building does no I/O: connections are made on first use.
    ///
    /// # Errors
    /// [`BuildError::Params`] naming the wrong parameter.
    fn build(
        &self,
        source: &SourceSpec,
        params: &toml::Table,
    ) -> Result<Arc<dyn Adapter>, BuildError>;
}

/// Reads a transport's parameters into its typed form (`deny_unknown_fields`
/// recommended), turning serde's message into a [`BuildError::Params`].
///
/// # Errors
/// [`BuildError::Params`] naming the wrong parameter.
pub fn parse_params<T: serde::de::DeserializeOwned>(
    kind: &str,
    params: &toml::Table,
) -> Result<T, BuildError> {
    T::deserialize(toml::Value::Table(params.clone())).map_err(|e| BuildError::Params {
        kind: kind.to_owned(),
        message: e.to_string().trim().to_owned(),
    })
}

/// The transports a program knows, by name.
#[derive(Default)]
pub struct Registry {
    factories: BTreeMap<&'static str, Box<dyn AdapterFactory>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("transports", &self.factories.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// A registry with the transports of this crate: `grpc`, and `http`,
    /// `sql` and `peer` when their features are on.
    pub fn with_builtin() -> Self {
        let mut r = Registry::default();
        r.register(Box::new(crate::grpc::GrpcFactory));
        #[cfg(feature = "http")]
        r.register(Box::new(crate::http::HttpFactory));
        #[cfg(feature = "sql")]
        r.register(Box::new(crate::sql::SqlFactory));
        #[cfg(feature = "peer")]
        r.register(Box::new(crate::peer::PeerFactory::default()));
        r
    }

    /// Adds (or replaces) a transport.
    pub fn register(&mut self, factory: Box<dyn AdapterFactory>) {
        self.factories.insert(factory.transport(), factory);
    }

    /// The names of the transports registered.
    pub fn transports(&self) -> Vec<&'static str> {
        self.factories.keys().copied().collect()
    }

    /// Builds the adapter of `source` over `transport`.
    ///
    /// # Errors
    /// [`BuildError`] when the transport is unknown or its parameters are
    /// wrong.
    pub fn build(
        &self,
        source: &SourceSpec,
        transport: &TransportConfig,
    ) -> Result<Arc<dyn Adapter>, BuildError> {
        let factory = self.factories.get(transport.kind.as_str()).ok_or_else(|| {
            BuildError::UnknownTransport {
                kind: transport.kind.clone(),
                available: self.transports().join(", "),
            }
        })?;
        factory.build(source, &transport.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn unknown_transport_lists_the_available_ones() {
        let r = Registry::with_builtin();
        let source = Catalog::dachuan().get("employment").unwrap().clone();
        let t: TransportConfig = toml::from_str("type = 'carrier-pigeon'").unwrap();
        let err = r.build(&source, &t).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown transport \"carrier-pigeon\"; available: grpc, http, peer, sql"
        );
    }
}
