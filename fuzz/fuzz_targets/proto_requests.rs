//! Protobuf requests of every service, as they arrive from the network: the
//! first byte picks the message type, the rest is decoded with prost; what
//! decodes is converted into the domain types where the edge does so
//! (`StartJob`, the log request, `Registration`), and encoded back.
//! Contract: no panic; a decoded message re-encodes into bytes that decode to
//! the same message.
#![no_main]

use baton_proto as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Decodes `bytes` as `M`; on success checks the round trip and returns it.
///
/// The check is `again == m`, except where the two differ only by a NaN (a
/// `double` field such as a heartbeat's load; NaN is never equal to itself):
/// then the debug forms, which print every NaN alike, must agree.
fn decode<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    if again != m {
        let (a, b) = (format!("{again:?}"), format!("{m:?}"));
        assert!(a.contains("NaN") && a == b, "round trip changed the message");
    }
    Some(m)
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    // Messages whose conversion into domain types lives at the edge.
    match which % 48 {
        0 => {
            if let Some(r) = decode::<pb::StartJobRequest>(bytes) {
                let _ = baton_agent::model::StartJob::try_from(r);
            }
        }
        1 => {
            if let Some(r) = decode::<pb::StartJobsRequest>(bytes) {
                for job in r.jobs {
                    let _ = baton_agent::model::StartJob::try_from(job);
                }
            }
        }
        2 => {
            if let Some(r) = decode::<pb::StreamJobLogsRequest>(bytes) {
                let _ = baton_agent::logs::LogRequest::try_from(r);
            }
        }
        3 => {
            if let Some(r) = decode::<pb::RegisterRequest>(bytes) {
                let _ = baton_coordinator::scheduler::Registration::try_from(r);
            }
        }
        4 => {
            if let Some(d) = decode::<pb::DispatchId>(bytes) {
                let _ = baton_agent::model::DispatchKey::try_from(d);
            }
        }
        n => {
            // Every other request (and the agent's event stream), decoded.
            match n {
                5 => drop(decode::<pb::CancelJobRequest>(bytes)),
                6 => drop(decode::<pb::GetJobRequest>(bytes)),
                7 => drop(decode::<pb::StreamJobRowsRequest>(bytes)),
                8 => drop(decode::<pb::StartExecutionRequest>(bytes)),
                9 => drop(decode::<pb::WatchExecutionRequest>(bytes)),
                10 => drop(decode::<pb::GetExecutionRequest>(bytes)),
                11 => drop(decode::<pb::ListAgentsRequest>(bytes)),
                12 => drop(decode::<pb::CancelExecutionRequest>(bytes)),
                13 => drop(decode::<pb::CancelChildRequest>(bytes)),
                14 => drop(decode::<pb::ResumeExecutionRequest>(bytes)),
                15 => drop(decode::<pb::StreamLogsRequest>(bytes)),
                16 => drop(decode::<pb::StreamRowsRequest>(bytes)),
                17 => drop(decode::<pb::ListExecutionsRequest>(bytes)),
                18 => drop(decode::<pb::SetAgentStateRequest>(bytes)),
                19 => drop(decode::<pb::CreateTokenRequest>(bytes)),
                20 => drop(decode::<pb::ListTokensRequest>(bytes)),
                21 => drop(decode::<pb::RevokeTokenRequest>(bytes)),
                22 => drop(decode::<pb::RoleRequest>(bytes)),
                23 => drop(decode::<pb::ListRolesRequest>(bytes)),
                24 => drop(decode::<pb::WhoAmIRequest>(bytes)),
                25 => drop(decode::<pb::RevokeCertificateRequest>(bytes)),
                26 => drop(decode::<pb::CreateFolderRequest>(bytes)),
                27 => drop(decode::<pb::ListFoldersRequest>(bytes)),
                28 => drop(decode::<pb::RenameFolderRequest>(bytes)),
                29 => drop(decode::<pb::DeleteFolderRequest>(bytes)),
                30 => drop(decode::<pb::DeployPackageRequest>(bytes)),
                31 => drop(decode::<pb::ListPackagesRequest>(bytes)),
                32 => drop(decode::<pb::GetPackageRequest>(bytes)),
                33 => drop(decode::<pb::MovePackageRequest>(bytes)),
                34 => drop(decode::<pb::DeletePackageRequest>(bytes)),
                35 => drop(decode::<pb::AgentEvent>(bytes)),
                36 => drop(decode::<pb::EnrollRequest>(bytes)),
                37 => drop(decode::<pb::RenewRequest>(bytes)),
                38 => drop(decode::<pb::FetchPackageRequest>(bytes)),
                _ => drop(decode::<pb::StartJobRequest>(bytes)),
            }
        }
    }
});
