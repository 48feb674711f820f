//! The sessions a user can see and end (OWASP ASVS 5.0 V7.4.3, V7.5.2): ListSessions,
//! RevokeSession and RevokeOtherSessions.

use crate::error::AuthError;
use crate::service::AuthApi;
use crate::store::{self, SessionRow};
use chrono::{DateTime, Utc};
use todo_proto::auth::v1::{
    ListSessionsResponse, RevokeOtherSessionsResponse, RevokeSessionRequest, RevokeSessionResponse, Session,
};
use todo_shared::Caller;
use todo_shared::server::proto_time::timestamp;
use todo_shared::server::status::FieldViolation;
use uuid::Uuid;

fn session_message(row: SessionRow, current: Uuid, expire_time: DateTime<Utc>) -> Session {
    Session {
        id: row.id.to_string(),
        create_time: Some(timestamp(row.created_at)),
        last_use_time: Some(timestamp(row.last_used_at)),
        expire_time: Some(timestamp(expire_time)),
        create_user_agent: row.created_user_agent.unwrap_or_default(),
        create_client_address: row.created_address.unwrap_or_default(),
        last_user_agent: row.last_user_agent.unwrap_or_default(),
        last_client_address: row.last_address.unwrap_or_default(),
        current: row.id == current,
    }
}

impl AuthApi {
    fn lifetimes(&self) -> store::SessionLifetimes {
        store::SessionLifetimes { max: self.session_max_lifetime, idle: self.session_idle_timeout }
    }

    pub(crate) async fn list_sessions(&self, caller: Caller) -> Result<ListSessionsResponse, AuthError> {
        let (lifetime, idle) = (self.session_max_lifetime, self.session_idle_timeout);
        let rows = store::live_sessions_of(&self.pool, &caller, self.lifetimes()).await?;
        let span = |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        let sessions = rows
            .into_iter()
            .map(|row| {
                let ends = (row.created_at + span(lifetime)).min(row.last_used_at + span(idle));
                session_message(row, caller.session_id, ends)
            })
            .collect();
        Ok(ListSessionsResponse { sessions })
    }

    pub(crate) async fn revoke_session(
        &self,
        caller: Caller,
        req: RevokeSessionRequest,
    ) -> Result<RevokeSessionResponse, AuthError> {
        if req.session_id.is_empty() {
            return Err(FieldViolation::new("session_id", "is required").into());
        }
        let session_id = Uuid::parse_str(&req.session_id)
            .map_err(|_| FieldViolation::new("session_id", "is not a session id (a UUID from ListSessions)"))?;
        if !store::revoke_own_session(&self.pool, &caller, session_id, self.lifetimes()).await? {
            return Err(AuthError::SessionNotFound);
        }
        tracing::info!(%session_id, "session revoked by its user");
        Ok(RevokeSessionResponse {})
    }

    pub(crate) async fn revoke_other_sessions(&self, caller: Caller) -> Result<RevokeOtherSessionsResponse, AuthError> {
        let revoked = store::revoke_other_sessions(&self.pool, &caller, self.lifetimes()).await?;
        tracing::info!(revoked, "other sessions revoked by their user");
        Ok(RevokeOtherSessionsResponse { revoked_sessions: i32::try_from(revoked).unwrap_or(i32::MAX) })
    }
}
