//! What every request of the dashboard reaches: the current term's API, the
//! audit trail, the dialer to agents (a child's logs and rows) and the
//! sessions. A leaf: the server (`mod.rs`), the routes and the event streams
//! all read it.

use std::sync::Arc;

use tokio::sync::watch;

use crate::api::Coordinator;
use crate::auth::audit::Audit;
use crate::transport::AgentDialer;

use super::session;

/// What every request of the dashboard reaches.
pub struct Web {
    /// The current term's API (`None` while a standby).
    pub current: watch::Receiver<Option<Coordinator>>,
    pub audit: Arc<Audit>,
    pub dialer: AgentDialer,
    pub sessions: session::Sessions,
}
