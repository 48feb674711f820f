//! `auth-service sessions list --email E` and `sessions revoke --email E [--session ID]`: an
//! operator's view of one account's sessions, and ending them with the same store functions
//! as Logout and RevokeSession (the `sessions` trigger tells task-service at once).

use crate::domain::Email;
use crate::store::{self, RevokeReason};
use std::process::ExitCode;
use todo_shared::Caller;
use todo_shared::database::DbConfig;
use uuid::Uuid;

/// What `sessions` does.
#[derive(Debug, clap::Subcommand)]
pub enum SessionsCommand {
    /// List the account's sessions: id, created, last used, last client, live or revoked.
    List {
        /// The account's email address (canonicalised as at sign-up).
        #[arg(long)]
        email: String,
    },
    /// Revoke the account's live sessions, or only one of them.
    Revoke {
        /// The account's email address (canonicalised as at sign-up).
        #[arg(long)]
        email: String,
        /// The session to revoke (an id from `sessions list`); default: every live one.
        #[arg(long, value_name = "ID")]
        session: Option<Uuid>,
    },
}

impl SessionsCommand {
    /// Runs it against `config`'s database: exit code 0 when done, 1 when there is no such
    /// account or session, or the database fails.
    pub async fn run(self, config: &DbConfig) -> ExitCode {
        match self.run_inner(config).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("auth-service sessions: {e}");
                ExitCode::FAILURE
            }
        }
    }

    async fn run_inner(self, config: &DbConfig) -> anyhow::Result<ExitCode> {
        let (SessionsCommand::List { email: raw } | SessionsCommand::Revoke { email: raw, .. }) = &self;
        let email = Email::normalize_for_lookup(raw);
        let mut conn = todo_shared::database::migrations::connect_direct(config).await?;
        let Some(user_id) = store::user_id_by_email(&mut conn, &email).await? else {
            eprintln!("auth-service sessions: no account with email {email}");
            return Ok(ExitCode::FAILURE);
        };
        let sessions = store::all_sessions_of(&mut conn, user_id).await?;
        match self {
            SessionsCommand::List { .. } => {
                println!("{} session(s) of {email} (user {user_id})", sessions.len());
                for s in &sessions {
                    let state = match (&s.revoked_at, &s.revoked_reason) {
                        (Some(at), reason) => {
                            format!("revoked {} ({})", at.to_rfc3339(), reason.as_deref().unwrap_or(""))
                        }
                        (None, _) => "live".to_owned(),
                    };
                    println!(
                        "{}  created {}  last used {}  client {} {}  {state}",
                        s.id,
                        s.created_at.to_rfc3339(),
                        s.last_used_at.to_rfc3339(),
                        s.last_address.as_deref().unwrap_or("-"),
                        s.last_user_agent.as_deref().map_or("-".to_owned(), |a| format!("{a:?}")),
                    );
                }
            }
            SessionsCommand::Revoke { session: None, .. } => {
                // The same statement as LogoutAll; no calling session to spare.
                let caller = Caller { user_id, session_id: Uuid::nil() };
                let revoked = store::revoke_sessions_of(&mut conn, &caller, RevokeReason::RevokedByOperator).await?;
                println!("{revoked} session(s) of {email} revoked");
            }
            SessionsCommand::Revoke { session: Some(id), .. } => {
                if !sessions.iter().any(|s| s.id == id) {
                    eprintln!("auth-service sessions: {email} has no session {id}");
                    return Ok(ExitCode::FAILURE);
                }
                if store::revoke_session(&mut conn, id, RevokeReason::RevokedByOperator).await? {
                    println!("session {id} of {email} revoked");
                } else {
                    println!("session {id} of {email} was already revoked");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
