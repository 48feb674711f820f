//! task-service end to end: the real servers on port 0 over a fresh database, tokens from the
//! real auth-service (or minted by a test key to attack the verifier), generated clients.

mod attacks;
mod convergence;
mod limits;
mod list;
mod metrics;
mod plans;
mod revocation;
mod startup;
mod sync;
mod tasks;
mod token_minting;
mod watch;
