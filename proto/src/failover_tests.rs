//! Tests of [`super`]: URL lists, the call table, and following over in-process
//! fake coordinators (leader, standby with or without a hint, one that hangs).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::*;
use crate::coordinator_service_client::CoordinatorServiceClient;
use crate::coordinator_service_server::{CoordinatorService, CoordinatorServiceServer};
use crate::{
    AgentEvent, CertificateResponse, EnrollRequest, EventAck, FetchPackageRequest,
    FetchPackageResponse, RegisterRequest, RegisterResponse, RenewRequest,
};

#[derive(Debug, Clone)]
enum Role {
    Leader,
    Standby(Option<String>),
    /// Takes the request, says so, and never answers.
    Hang(mpsc::UnboundedSender<()>),
}

#[derive(Clone)]
struct Fake {
    url: String,
    role: Arc<Mutex<Role>>,
    calls: Arc<AtomicUsize>,
}

impl Fake {
    async fn answer(&self) -> Result<(), Status> {
        let role = self.role.lock().unwrap().clone();
        match role {
            Role::Leader => {
                self.calls.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Role::Standby(hint) => {
                let mut s = Status::unavailable("this coordinator is a standby");
                s.metadata_mut()
                    .insert(CODE_KEY, NOT_LEADER.parse().unwrap());
                if let Some(h) = hint {
                    s.metadata_mut().insert(LEADER_KEY, h.parse().unwrap());
                }
                Err(s)
            }
            Role::Hang(tx) => {
                let _ = tx.send(());
                std::future::pending().await
            }
        }
    }
}

#[tonic::async_trait]
impl CoordinatorService for Fake {
    async fn register(
        &self,
        _r: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        self.answer().await?;
        Ok(Response::new(RegisterResponse {
            agent_id: self.url.clone(),
            ..Default::default()
        }))
    }

    type ReportEventsStream = tokio_stream::Empty<Result<EventAck, Status>>;

    async fn report_events(
        &self,
        _r: Request<tonic::Streaming<AgentEvent>>,
    ) -> Result<Response<Self::ReportEventsStream>, Status> {
        self.answer().await?;
        Ok(Response::new(tokio_stream::empty()))
    }

    async fn enroll(
        &self,
        _r: Request<EnrollRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        self.answer().await?;
        Ok(Response::new(CertificateResponse {
            cert_pem: self.url.clone(),
            ..Default::default()
        }))
    }

    async fn renew(
        &self,
        _r: Request<RenewRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn fetch_package(
        &self,
        _r: Request<FetchPackageRequest>,
    ) -> Result<Response<FetchPackageResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}

/// A fake coordinator on its own runtime: dropping it kills every connection at once.
struct Server {
    fake: Fake,
    rt: Option<tokio::runtime::Runtime>,
}

impl Server {
    fn start(role: Role) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", std_listener.local_addr().unwrap());
        let fake = Fake {
            url,
            role: Arc::new(Mutex::new(role)),
            calls: Arc::new(AtomicUsize::new(0)),
        };
        let svc = CoordinatorServiceServer::new(fake.clone());
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Server { fake, rt: Some(rt) }
    }

    fn url(&self) -> String {
        self.fake.url.clone()
    }

    fn calls(&self) -> usize {
        self.fake.calls.load(Ordering::SeqCst)
    }

    fn set(&self, role: Role) {
        *self.fake.role.lock().unwrap() = role;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A port nothing listens on.
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn plaintext_dialer() -> Dialer {
    Arc::new(|url: String| {
        Box::pin(async move {
            let ch = tonic::transport::Endpoint::from_shared(url)?
                .connect_timeout(Duration::from_secs(2))
                .connect()
                .await?;
            Ok(ch)
        }) as DialFuture
    })
}

fn quick() -> Policy {
    Policy {
        wait: Duration::from_secs(5),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
    }
}

/// A client over `urls` and the events it reported.
fn client(
    urls: Vec<String>,
    policy: Policy,
) -> (CoordinatorServiceClient<Follow>, Arc<Mutex<Vec<Event>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let follow = Follow::new(urls, plaintext_dialer(), policy)
        .unwrap()
        .on_event(move |e| seen.lock().unwrap().push(e.clone()));
    (CoordinatorServiceClient::new(follow), events)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn url_lists_parse_and_bad_ones_are_refused() {
    assert_eq!(
        parse_urls("https://c1:7400").unwrap(),
        vec!["https://c1:7400"]
    );
    assert_eq!(
        parse_urls("https://c1:7400, https://c2:7400 ,https://c1:7400").unwrap(),
        vec!["https://c1:7400", "https://c2:7400"]
    );
    assert_eq!(
        parse_urls("HTTP://127.0.0.1:1,http://[::1]:2")
            .unwrap()
            .len(),
        2
    );
    for (bad, why) in [
        ("", "empty entry"),
        ("https://c1:7400,", "empty entry"),
        ("https://c1:7400,,https://c2:7400", "empty entry"),
        ("c1:7400", "must start with"),
        ("https://c1:7400,ftp://c2", "must start with"),
        ("https://", "no host"),
        ("https://c1:7400,http://127.0.0.1:7400", "mixes"),
    ] {
        let e = parse_urls(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn every_rpc_of_the_coordinator_is_classified() {
    for (service, text) in [
        ("ControlService", include_str!("../baton/v1/control.proto")),
        (
            "CoordinatorService",
            include_str!("../baton/v1/coordinator.proto"),
        ),
    ] {
        let mut n = 0;
        for line in text.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("rpc ") else {
                continue;
            };
            let name = rest.split('(').next().unwrap().trim();
            let path = format!("/baton.v1.{service}/{name}");
            let listed = CALLS
                .iter()
                .find(|(m, _)| *m == format!("{service}/{name}"))
                .map(|(_, k)| *k);
            assert_eq!(listed, Some(call_kind(&path)), "{path} is not in CALLS");
            let client_stream = rest.split(')').next().unwrap().contains("(stream ");
            assert_eq!(
                call_kind(&path) == CallKind::ClientStream,
                client_stream,
                "{path}"
            );
            n += 1;
        }
        assert!(n >= 5, "{service}: found {n} rpcs");
    }
    assert_eq!(
        call_kind("/baton.v1.ControlService/StartExecution"),
        CallKind::Once
    );
    assert_eq!(
        call_kind("/baton.v1.ControlService/CancelExecution"),
        CallKind::Once
    );
    assert_eq!(
        call_kind("/baton.v1.ControlService/GetExecution"),
        CallKind::Idempotent
    );
    assert_eq!(call_kind("/other.Service/Thing"), CallKind::Once);
}

#[test]
fn a_hint_is_followed_even_outside_the_list_and_remembered() {
    let leader = Server::start(Role::Leader);
    let standby = Server::start(Role::Standby(Some(leader.url())));
    let other = Server::start(Role::Standby(None));
    let urls = vec![standby.url(), other.url()];
    rt().block_on(async {
        let (mut c, events) = client(urls.clone(), quick());
        let r = c.enroll(EnrollRequest::default()).await.unwrap();
        assert_eq!(r.into_inner().cert_pem, leader.url());
        assert_eq!(leader.calls(), 1);
        let ev = events.lock().unwrap().clone();
        assert_eq!(
            ev,
            vec![Event::Standby {
                url: standby.url(),
                next: leader.url(),
                hinted: true
            }]
        );
        assert!(ev[0].to_string().contains("is a standby"), "{}", ev[0]);
        // The leader is remembered: a new client of the same list goes there first.
        assert_eq!(remembered(&urls), Some(leader.url()));
        let (mut c2, events2) = client(urls.clone(), quick());
        c2.register(RegisterRequest::default()).await.unwrap();
        assert!(events2.lock().unwrap().is_empty());
        assert_eq!(leader.calls(), 2);
    });
}

#[test]
fn without_a_hint_the_next_url_is_tried_and_a_dead_one_is_skipped() {
    let standby = Server::start(Role::Standby(None));
    let leader = Server::start(Role::Leader);
    let dead = closed_url();
    rt().block_on(async {
        let (mut c, events) = client(vec![dead.clone(), standby.url(), leader.url()], quick());
        // Enroll may be sent once only: a refused connection and NOT_LEADER are both
        // answers after which it was certainly not done.
        let r = c.enroll(EnrollRequest::default()).await.unwrap();
        assert_eq!(r.into_inner().cert_pem, leader.url());
        let ev = events.lock().unwrap().clone();
        assert!(
            matches!(&ev[0], Event::Unreachable { url, next, .. } if *url == dead && *next == standby.url()),
            "{ev:?}"
        );
        assert_eq!(
            ev[1],
            Event::Standby {
                url: standby.url(),
                next: leader.url(),
                hinted: false
            }
        );
        assert_eq!(
            ev[1].to_string(),
            format!(
                "coordinator {} is a standby; trying {}…",
                standby.url(),
                leader.url()
            )
        );
    });
}

#[test]
fn no_leader_within_the_bound_is_no_leader() {
    let a = Server::start(Role::Standby(None));
    let b = Server::start(Role::Standby(Some(a.url())));
    let policy = Policy {
        wait: Duration::from_millis(700),
        ..quick()
    };
    rt().block_on(async {
        let (mut c, events) = client(vec![a.url(), b.url()], policy);
        let t0 = Instant::now();
        let s = c.register(RegisterRequest::default()).await.unwrap_err();
        let took = t0.elapsed();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(
            s.metadata().get(CODE_KEY).unwrap().to_str().unwrap(),
            NO_LEADER
        );
        assert!(s.message().contains("answered as leader within"), "{s:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        let waits = events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::Waiting { .. }))
            .count();
        assert!(waits >= 2, "{:?}", events.lock().unwrap());
    });
}

#[test]
fn a_leader_elected_while_waiting_is_found() {
    let a = Server::start(Role::Standby(None));
    let b = Server::start(Role::Standby(None));
    rt().block_on(async {
        let (mut c, _events) = client(vec![a.url(), b.url()], quick());
        let call = tokio::spawn(async move { c.register(RegisterRequest::default()).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.set(Role::Leader);
        let r = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.into_inner().agent_id, b.url());
    });
}

#[test]
fn nothing_listening_fails_at_once_with_the_connection_error() {
    let (a, b) = (closed_url(), closed_url());
    rt().block_on(async {
        let (mut c, _events) = client(vec![a, b], quick());
        let t0 = Instant::now();
        let s = c.register(RegisterRequest::default()).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
        assert!(s.metadata().get(CODE_KEY).is_none(), "{s:?}");
        assert!(t0.elapsed() < Duration::from_secs(3));
    });
}

/// A call that was sent to a coordinator which then died: a non-idempotent one is
/// not sent again (it may have been done), an idempotent one is.
#[test]
fn after_an_unknown_outcome_only_idempotent_calls_move_on() {
    let leader = Server::start(Role::Leader);
    for idempotent in [false, true] {
        let (tx, mut got) = mpsc::unbounded_channel();
        let hanging = Server::start(Role::Hang(tx));
        let urls = vec![hanging.url(), leader.url()];
        let before = leader.calls();
        let runtime = rt();
        let (mut c, _events) = runtime.block_on(async { client(urls, quick()) });
        let call = runtime.spawn(async move {
            if idempotent {
                c.register(RegisterRequest::default()).await.map(|_| ())
            } else {
                c.enroll(EnrollRequest::default()).await.map(|_| ())
            }
        });
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), got.recv())
                .await
                .unwrap();
        });
        drop(hanging); // the coordinator dies with the request in hand
        let result = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .unwrap()
                .unwrap()
        });
        if idempotent {
            assert!(result.is_ok(), "{result:?}");
            assert_eq!(leader.calls(), before + 1);
        } else {
            assert!(result.is_err());
            assert_eq!(leader.calls(), before, "Enroll must not be sent twice");
        }
    }
}

/// A connection that fails when the call is made (a lazy channel, like a cached one
/// whose coordinator died and which reconnects) failed before sending: even a
/// non-idempotent call goes on to the next URL.
#[test]
fn a_connection_refused_at_call_time_counts_as_not_sent() {
    let leader = Server::start(Role::Leader);
    let lazy: Dialer = Arc::new(|url: String| {
        Box::pin(async move { Ok(tonic::transport::Endpoint::from_shared(url)?.connect_lazy()) })
            as DialFuture
    });
    rt().block_on(async {
        let follow = Follow::new(vec![closed_url(), leader.url()], lazy, quick()).unwrap();
        let mut c = CoordinatorServiceClient::new(follow);
        let r = c.enroll(EnrollRequest::default()).await.unwrap();
        assert_eq!(r.into_inner().cert_pem, leader.url());
    });
}

/// A connection reset after the request was written is an unknown outcome: the
/// classification says so.
#[test]
fn only_connection_errors_count_as_not_sent() {
    let refused = tonic::ConnectError(Box::new(std::io::Error::from(
        std::io::ErrorKind::ConnectionRefused,
    )));
    assert!(connect_failed(&refused));
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    assert!(!connect_failed(&reset));
}

#[test]
fn connect_tries_each_url_and_says_why_each_failed() {
    let up = Server::start(Role::Standby(None));
    let dead = closed_url();
    rt().block_on(async {
        let f = Follow::new(vec![dead.clone(), up.url()], plaintext_dialer(), quick()).unwrap();
        f.connect().await.unwrap();
        assert_eq!(f.current(), up.url());
        let g = Follow::new(vec![dead.clone()], plaintext_dialer(), quick()).unwrap();
        let errors = g.connect().await.unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, dead);
    });
}
