//! The region guard: a small process that fences the region when the agent stops
//! feeding it (DESIGN rule 2: a killed or frozen agent still leaves its region fenced
//! by the deadline plus at most the margin).
//!
//! Placeholder: the guard process is being built (issue 10, step 2).

use crate::Agent;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs for the agent's lifetime: starts the guard process and feeds it every change
/// of [`Agent::guard_deadline`].
pub(crate) async fn supervise(agent: Arc<Agent>, cancel: CancellationToken) -> anyhow::Result<()> {
    let _deadline = agent.guard_deadline();
    let _roles = agent.roles().len();
    cancel.cancelled().await;
    Ok(())
}
