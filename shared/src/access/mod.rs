//! The access part: who is calling. Access tokens verified locally (`token`) with the keys of
//! `signing_keys` (`keyring`), sessions checked against the revocation list kept by LISTEN
//! (`revocation`), and the verified `Caller` the handlers receive (`caller`). Uses the database
//! part; knows nothing of the server.

pub mod caller;
pub mod keyring;
pub mod revocation;
pub mod token;

pub use caller::Caller;
pub use token::TokenConfig;
