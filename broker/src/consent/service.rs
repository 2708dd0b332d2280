//! `hedui.v1.ConsentService` over [`Consents`].
//!
//! Who may do what: a platform registers, reads and revokes its own
//! letters; an admin does so for any platform, naming it. A letter of
//! another platform is `NOT_FOUND`, exactly as an unknown one. A caller
//! with neither role (an auditor) is refused with `PERMISSION_DENIED`,
//! recorded ([`crate::security::require`]).

use hedui_proto::v1::{
    GetConsentRequest, GetConsentResponse, RegisterConsentRequest, RegisterConsentResponse,
    RevokeConsentRequest, RevokeConsentResponse, consent_service_server::ConsentService,
};
use tonic::{Request, Response, Status};

use super::{ConsentError, Consents, MAX_PLATFORM_ID, not_found, text, validate};
use crate::{
    security::{Role, require},
    server::caller_of,
    verify::{Caller, MAX_CONSENT_REFERENCE, MAX_OPERATOR_ID},
};

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct ConsentApi {
    consents: Consents,
}

impl ConsentApi {
    /// The service over `consents`.
    pub fn new(consents: Consents) -> Self {
        Self { consents }
    }
}

/// The one place a consent error becomes a status.
pub fn status(e: ConsentError) -> Status {
    match e {
        ConsentError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
        ConsentError::AlreadyExists(m) => Status::already_exists(m),
        ConsentError::NotFound(m) => Status::not_found(m),
        ConsentError::Store(err) => {
            tracing::error!(error = %err, "consent store failed");
            Status::unavailable("the consent store is unavailable; nothing was changed")
        }
        ConsentError::AuditUnavailable(err) => {
            tracing::error!(error = %err, "consent change not recorded");
            Status::unavailable("the audit log is unavailable; nothing was changed")
        }
    }
}

/// Which call acts on letters, for the platform it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Register,
    Get,
    Revoke,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Register => "RegisterConsent",
            Call::Get => "GetConsent",
            Call::Revoke => "RevokeConsent",
        }
    }

    /// The name of the `platform` field in its request.
    fn platform_field(self) -> &'static str {
        match self {
            Call::Register => "consent.platform",
            Call::Get | Call::Revoke => "platform",
        }
    }
}

impl ConsentApi {
    /// The platform whose letter `caller` acts on, given the request's
    /// `platform` field: its own (empty, or its identity) for a platform,
    /// the named one for an admin.
    ///
    /// # Errors
    /// `PERMISSION_DENIED` (recorded) for a caller with neither role, or a
    /// platform registering for another; `NOT_FOUND` for a platform naming
    /// another's letter (`reference`); `INVALID_ARGUMENT` when an admin
    /// names no platform.
    async fn platform_for(
        &self,
        caller: &Caller,
        call: Call,
        platform: &str,
        reference: &str,
    ) -> Result<String, Status> {
        let audit = self.consents.audit();
        let is_platform = caller.roles.has(Role::Platform);
        let is_admin = caller.roles.has(Role::Admin);
        if !is_platform && !is_admin {
            require(audit, caller, Role::Platform, call.name()).await?;
        }
        if platform.is_empty() {
            if is_platform {
                return Ok(caller.identity.clone());
            }
            return Err(Status::invalid_argument(format!(
                "{}: is required when an admin acts on a platform's letters",
                call.platform_field()
            )));
        }
        text(call.platform_field(), platform, MAX_PLATFORM_ID).map_err(status)?;
        if (is_platform && platform == caller.identity) || is_admin {
            return Ok(platform.to_owned());
        }
        match call {
            // A platform may not register letters for another.
            Call::Register => require(
                audit,
                caller,
                Role::Admin,
                "RegisterConsent for another platform",
            )
            .await
            .map(|()| platform.to_owned()),
            // Nor learn whether another's letter exists.
            Call::Get | Call::Revoke => Err(status(not_found(reference))),
        }
    }
}

/// Checks the reference of a `GetConsent` or `RevokeConsent`.
fn check_reference(reference: &str) -> Result<(), Status> {
    text("reference", reference, MAX_CONSENT_REFERENCE).map_err(status)
}

impl ConsentApi {
    /// `RegisterConsent` for `caller`.
    ///
    /// # Errors
    /// The status to return.
    pub async fn register_as(
        &self,
        caller: &Caller,
        request: RegisterConsentRequest,
    ) -> Result<RegisterConsentResponse, Status> {
        let consent = request.consent;
        let named = consent
            .as_ref()
            .map(|c| c.platform.clone())
            .unwrap_or_default();
        let reference = consent
            .as_ref()
            .map(|c| c.reference.clone())
            .unwrap_or_default();
        // Who may register comes first: a caller without the role learns
        // nothing about what it sent.
        let platform = self
            .platform_for(caller, Call::Register, &named, &reference)
            .await?;
        let valid = validate(consent, crate::time::china_date()).map_err(status)?;
        let consent = self
            .consents
            .register(caller, valid, &platform)
            .await
            .map_err(status)?;
        Ok(RegisterConsentResponse {
            consent: Some(consent),
        })
    }

    /// `GetConsent` for `caller`.
    ///
    /// # Errors
    /// The status to return.
    pub async fn get_as(
        &self,
        caller: &Caller,
        request: GetConsentRequest,
    ) -> Result<GetConsentResponse, Status> {
        let GetConsentRequest {
            reference,
            platform,
        } = request;
        let platform = self
            .platform_for(caller, Call::Get, &platform, &reference)
            .await?;
        check_reference(&reference)?;
        match self.consents.get(&platform, &reference).await {
            Ok(Some(consent)) => Ok(GetConsentResponse {
                consent: Some(consent),
            }),
            Ok(None) => Err(status(not_found(&reference))),
            Err(e) => Err(status(ConsentError::Store(e))),
        }
    }

    /// `RevokeConsent` for `caller`.
    ///
    /// # Errors
    /// The status to return.
    pub async fn revoke_as(
        &self,
        caller: &Caller,
        request: RevokeConsentRequest,
    ) -> Result<RevokeConsentResponse, Status> {
        let RevokeConsentRequest {
            reference,
            platform,
            operator_id,
        } = request;
        let platform = self
            .platform_for(caller, Call::Revoke, &platform, &reference)
            .await?;
        check_reference(&reference)?;
        if !operator_id.is_empty() {
            text("operator_id", &operator_id, MAX_OPERATOR_ID).map_err(status)?;
        }
        let consent = self
            .consents
            .revoke(caller, &platform, &reference, &operator_id)
            .await
            .map_err(status)?;
        Ok(RevokeConsentResponse {
            consent: Some(consent),
        })
    }
}

#[tonic::async_trait]
impl ConsentService for ConsentApi {
    async fn register_consent(
        &self,
        request: Request<RegisterConsentRequest>,
    ) -> Result<Response<RegisterConsentResponse>, Status> {
        let caller = caller_of(&request);
        self.register_as(&caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_consent(
        &self,
        request: Request<GetConsentRequest>,
    ) -> Result<Response<GetConsentResponse>, Status> {
        let caller = caller_of(&request);
        self.get_as(&caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn revoke_consent(
        &self,
        request: Request<RevokeConsentRequest>,
    ) -> Result<Response<RevokeConsentResponse>, Status> {
        let caller = caller_of(&request);
        self.revoke_as(&caller, request.into_inner())
            .await
            .map(Response::new)
    }
}
