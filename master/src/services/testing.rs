//! The `RegistryTesting` service: test-only calls, registered only when the master runs
//! with the hidden `--enable-test-commands` (without it, callers get UNIMPLEMENTED).
//!
//! Why a separate service behind a flag rather than an operator call: a production master
//! does not even serve it, and what it proposes (`RecordTestMarker`) only records a short
//! string. Tests use it as a command of the newest registry version, to watch the version
//! gate refuse it while a master is older and accept it once every master is upgraded.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use drover_proto::pb::{self, registry_testing_server::RegistryTesting};

use crate::registry::Command;
use crate::server::Master;

/// Longest marker accepted.
const MAX_MARKER_BYTES: usize = 256;

pub struct TestingService {
    pub master: Arc<Master>,
}

#[tonic::async_trait]
impl RegistryTesting for TestingService {
    async fn record_test_marker(
        &self,
        req: Request<pb::RecordTestMarkerRequest>,
    ) -> Result<Response<pb::RecordTestMarkerResponse>, Status> {
        self.master.ensure_leader()?;
        let marker = req.into_inner().marker;
        if marker.len() > MAX_MARKER_BYTES {
            return Err(Status::invalid_argument(format!(
                "a marker holds at most {MAX_MARKER_BYTES} bytes"
            )));
        }
        self.master
            .propose(Command::RecordTestMarker { marker })
            .await?;
        Ok(Response::new(pb::RecordTestMarkerResponse {
            registry_version: self.master.registry().version,
        }))
    }
}
