//! Each gRPC call runs knowing its caller's address: [`WithSource`] wraps a
//! service so that the call's future runs inside [`audit::with_source`], and a
//! refusal anywhere below (authentication, permissions, agent checks) is
//! aggregated per source by the audit trail ([`crate::auth::refusals`]).

use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::auth::audit;

/// A service whose calls know their caller's address (see the module doc).
#[derive(Debug, Clone)]
pub struct WithSource<S>(pub S);

impl<S: NamedService> NamedService for WithSource<S> {
    const NAME: &'static str = S::NAME;
}

/// The peer address tonic recorded for the connection of a request.
fn peer_ip(ext: &http::Extensions) -> Option<IpAddr> {
    if let Some(info) = ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
        return info.get_ref().remote_addr().map(|a| a.ip());
    }
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .map(|a| a.ip())
}

impl<S, B> Service<http::Request<B>> for WithSource<S>
where
    S: Service<http::Request<B>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let ip = peer_ip(req.extensions());
        Box::pin(audit::with_source(ip, self.0.call(req)))
    }
}
