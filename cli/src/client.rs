//! Connecting to a coordinator's `ControlService`.

use std::time::Duration;

use baton_proto::control_service_client::ControlServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::CliError;

/// Default address when neither `--coordinator` nor `BATON_COORDINATOR` is set.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7400";

/// Shared `--coordinator` option.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorOpt {
    /// Coordinator URL (for example http://10.0.0.5:7400).
    #[arg(long = "coordinator", env = "BATON_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    pub url: String,
}

impl CoordinatorOpt {
    pub async fn connect(&self) -> Result<ControlServiceClient<Channel>, CliError> {
        let endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| {
                CliError::invalid("USAGE", format!("bad coordinator URL '{}': {e}", self.url))
            })?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| CliError::unavailable(&self.url, e))?;
        Ok(ControlServiceClient::new(channel)
            .max_decoding_message_size(baton_coordinator::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(baton_coordinator::MAX_MESSAGE_BYTES))
    }

    pub fn status(&self, s: tonic::Status) -> CliError {
        CliError::from_status(&self.url, s)
    }
}
