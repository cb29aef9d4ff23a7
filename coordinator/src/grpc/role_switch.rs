//! The gRPC server outlives the coordinator's terms: [`RoleSwitch`] holds
//! what answers calls now — a leader's services (the `Routes` of its term) or
//! nothing (a standby) — and [`Switched`] is the service the server holds for
//! the process's lifetime, routing each call to the current term's services
//! or answering `NOT_LEADER` with the leader's URL (a hint kept here, never
//! looked up per call: a standby's callers are not authenticated yet).

use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::service::Routes;

use super::error_status::status;
use crate::error::CoordinatorError;

/// What answers calls now.
enum Role {
    /// A standby: every call is refused with `NOT_LEADER` and this hint.
    Standby { leader: Option<String> },
    /// The leader's services of the current term.
    Leading(Routes),
}

/// Which role the process's one gRPC server plays; cheap to clone.
#[derive(Clone)]
pub struct RoleSwitch {
    role: Arc<RwLock<Role>>,
}

impl Default for RoleSwitch {
    /// A standby that knows no leader yet.
    fn default() -> Self {
        RoleSwitch {
            role: Arc::new(RwLock::new(Role::Standby { leader: None })),
        }
    }
}

impl RoleSwitch {
    fn set(&self, role: Role) {
        *self.role.write().unwrap_or_else(|p| p.into_inner()) = role;
    }

    /// Calls go to `routes` (a leader's services, for its term) from now on.
    pub fn lead(&self, routes: Routes) {
        self.set(Role::Leading(routes));
    }

    /// Every call is refused with `NOT_LEADER` from now on (calls under way
    /// keep the term's services they started with).
    pub fn stand_by(&self, leader: Option<String>) {
        self.set(Role::Standby { leader });
    }

    /// A standby learns the leader's URL (a leader ignores it).
    pub fn set_leader_hint(&self, hint: Option<String>) {
        let mut role = self.role.write().unwrap_or_else(|p| p.into_inner());
        if let Role::Standby { leader } = &mut *role {
            *leader = hint;
        }
    }

    pub fn is_leading(&self) -> bool {
        matches!(
            *self.role.read().unwrap_or_else(|p| p.into_inner()),
            Role::Leading(_)
        )
    }

    /// The service the server holds for the gRPC service `N` (its name
    /// routes calls to it; the current role answers them).
    pub fn service<N: NamedService>(&self) -> Switched<N> {
        Switched {
            switch: self.clone(),
            name: PhantomData,
        }
    }

    /// The current term's services, or the leader hint of a standby.
    fn current(&self) -> Result<Routes, Option<String>> {
        match &*self.role.read().unwrap_or_else(|p| p.into_inner()) {
            Role::Leading(routes) => Ok(routes.clone()),
            Role::Standby { leader } => Err(leader.clone()),
        }
    }
}

/// The answer of a standby to any call.
fn not_leader(leader: Option<String>) -> http::Response<Body> {
    let (parts, ()) = status(CoordinatorError::NotLeader { leader })
        .into_http::<()>()
        .into_parts();
    http::Response::from_parts(parts, Body::empty())
}

/// The gRPC service named like `N`, answered by the role of the moment.
pub struct Switched<N> {
    switch: RoleSwitch,
    name: PhantomData<fn() -> N>,
}

impl<N> Clone for Switched<N> {
    fn clone(&self) -> Self {
        Switched {
            switch: self.switch.clone(),
            name: PhantomData,
        }
    }
}

impl<N: NamedService> NamedService for Switched<N> {
    const NAME: &'static str = N::NAME;
}

type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<N> Service<http::Request<Body>> for Switched<N> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is the term's services', asked per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self.switch.current() {
            Ok(mut routes) => Box::pin(async move {
                std::future::poll_fn(|cx| {
                    Service::<http::Request<Body>>::poll_ready(&mut routes, cx)
                })
                .await?;
                routes.call(req).await
            }),
            Err(leader) => {
                let answer = not_leader(leader);
                Box::pin(async move { Ok(answer) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use baton_proto as pb;
    use pb::control_service_client::ControlServiceClient;
    use pb::control_service_server::ControlServiceServer;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;

    type Control = ControlServiceServer<crate::grpc::control_api::ControlApi>;

    /// A server on loopback whose `ControlService` is answered by `switch`.
    async fn serve(switch: &RoleSwitch) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(switch.service::<Control>())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        url
    }

    async fn call(url: &str) -> tonic::Status {
        let mut client = ControlServiceClient::connect(url.to_string())
            .await
            .unwrap();
        client
            .list_agents(pb::ListAgentsRequest::default())
            .await
            .unwrap_err()
    }

    fn metadata<'a>(s: &'a tonic::Status, key: &str) -> Option<&'a str> {
        s.metadata().get(key).and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn a_standby_answers_every_call_not_leader_with_the_hint() {
        let switch = RoleSwitch::default();
        let url = serve(&switch).await;
        let s = call(&url).await;
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(
            metadata(&s, crate::grpc::ERROR_CODE_KEY),
            Some("NOT_LEADER")
        );
        assert_eq!(metadata(&s, "baton-leader"), None, "no leader known yet");

        switch.set_leader_hint(Some("https://c2:7400".into()));
        let s = call(&url).await;
        assert_eq!(
            metadata(&s, crate::grpc::ERROR_CODE_KEY),
            Some("NOT_LEADER")
        );
        assert_eq!(metadata(&s, "baton-leader"), Some("https://c2:7400"));
        assert!(s.message().contains("https://c2:7400"), "{}", s.message());
        assert!(!switch.is_leading());
    }

    #[tokio::test]
    async fn a_leader_routes_calls_to_its_terms_services_until_it_stands_by() {
        let switch = RoleSwitch::default();
        let url = serve(&switch).await;
        // A term whose services are not the control API: the call reaches
        // them (and is answered as unknown there), not the standby answer.
        switch.lead(Routes::default());
        assert!(switch.is_leading());
        let s = call(&url).await;
        assert_eq!(s.code(), tonic::Code::Unimplemented, "{s:?}");
        switch.set_leader_hint(Some("ignored".into()));
        assert!(
            switch.is_leading(),
            "a hint does not make a leader stand by"
        );

        switch.stand_by(Some("https://c3:7400".into()));
        let s = call(&url).await;
        assert_eq!(
            metadata(&s, crate::grpc::ERROR_CODE_KEY),
            Some("NOT_LEADER")
        );
        assert_eq!(metadata(&s, "baton-leader"), Some("https://c3:7400"));
    }
}
