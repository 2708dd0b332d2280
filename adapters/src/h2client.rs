//! The connection a gRPC source's `Lookup` calls go over: one HTTP/2
//! connection, driven by the `h2` crate directly.
//!
//! A tonic [`Channel`](tonic::transport::Channel) puts three things in
//! front of every call: a buffer (its requests go through a channel to a
//! worker task that owns the connection), a stack of services (origin,
//! user agent, reconnection), and hyper's client, which spawns a task for
//! every request that waits for the answer and hands it back through
//! another channel. A broker asks 27 sources per verification, so each of
//! those is paid 27 times, in CPU and in the memory of every call that is
//! waiting (docs/benchmarks.md, S2 and S5). Here a call takes a handle to
//! the connection, opens a stream, sends the request, and waits for the
//! answer in the caller's own task.
//!
//! What the channel did and this does too: it connects when first used,
//! within the connect timeout, over TLS (rustls, ALPN `h2`) when the
//! source is `https://`; a connection that ends (the source went away, a
//! GOAWAY) is noticed by its driver task and the next call connects again.
//! A call in progress when the connection fails fails with it, as it did
//! through the channel. The answer is read by tonic's decoder
//! ([`crate::unary::read_answer`]), so its statuses are tonic's.

use std::{
    fmt,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use h2::client::SendRequest;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::{Status, metadata::MetadataMap};

use crate::auth::LoadedTls;

/// HTTP/2 windows as hyper's client sets them (a stream 2 MiB, the
/// connection 5 MiB), so a large answer is not held up by flow control.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// One source's HTTP/2 connection, made when first needed and again after
/// it ends. Cheap to share: calls clone a handle to the connection.
#[derive(Clone)]
pub(crate) struct H2Client {
    inner: Arc<Inner>,
}

/// The last connection attempt.
#[derive(Default)]
struct Attempt {
    /// Its number (the first is 1).
    number: u64,
    /// Why it failed, when it did.
    failed: Option<String>,
}

struct Inner {
    scheme: Scheme,
    authority: Authority,
    /// Host and port to connect to.
    host: String,
    port: u16,
    connect_timeout: Duration,
    /// The TLS connector and the name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The live connection's handle, with its number; `None` before the
    /// first call and after the connection ended.
    live: Mutex<Option<(u64, SendRequest<Bytes>)>>,
    /// One connection attempt at a time: callers that find no connection
    /// wait for the one being made rather than each making their own.
    connecting: tokio::sync::Mutex<Attempt>,
    /// Connection attempts finished (the number of the last one).
    finished: AtomicU64,
}

impl fmt::Debug for H2Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Client")
            .field("authority", &self.inner.authority)
            .field("tls", &self.inner.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A failure to reach the source: connecting, the TLS handshake, the HTTP/2
/// handshake, or the connection failing under a call. Carried as the
/// source of the call's status, where [`crate::grpc`] finds it.
#[derive(Debug)]
pub(crate) struct Unreachable(pub(crate) String);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// The status of a failure to reach the source: `UNAVAILABLE`, with
/// [`Unreachable`] as its source.
fn unreachable(what: String) -> Status {
    let mut status = Status::unavailable(what.clone());
    status.set_source(Arc::new(Unreachable(what)));
    status
}

impl H2Client {
    /// A client of `endpoint` (`http://host:port` or `https://…` with
    /// `tls`); connects when first used.
    ///
    /// # Errors
    /// A message naming what is wrong with the endpoint or the TLS setup.
    pub(crate) fn new(
        endpoint: &str,
        connect_timeout: Duration,
        tls: Option<&LoadedTls>,
    ) -> Result<Self, String> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| format!("endpoint {endpoint:?} is not a valid URL: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("endpoint {endpoint:?} has no scheme (http:// or https://)"))?;
        let https = scheme == Scheme::HTTPS;
        if !https && scheme != Scheme::HTTP {
            return Err(format!(
                "endpoint {endpoint:?}: the scheme must be http:// or https://"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("endpoint {endpoint:?} has no host"))?;
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = match tls {
            None => None,
            Some(t) => {
                let mut config = crate::auth::rustls_client_config(t)?;
                config.alpn_protocols = vec![b"h2".to_vec()];
                let name = t.domain.clone().unwrap_or_else(|| host.clone());
                let name = ServerName::try_from(name.clone())
                    .map_err(|_| format!("tls.domain: {name:?} is not a DNS name or IP address"))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(H2Client {
            inner: Arc::new(Inner {
                scheme,
                authority,
                host,
                port,
                connect_timeout,
                tls,
                live: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(Attempt::default()),
                finished: AtomicU64::new(0),
            }),
        })
    }

    /// `path` called with the gRPC `frame` and the `metadata`; the answer
    /// read as tonic's unary client reads it.
    ///
    /// # Errors
    /// [`Unreachable`] (as the status's source, code `UNAVAILABLE`) when
    /// the source cannot be reached or the connection fails; otherwise the
    /// status the source answered or tonic's decoder gives.
    pub(crate) fn call<Res>(
        &self,
        path: &'static str,
        metadata: MetadataMap,
        frame: Bytes,
        max_answer_bytes: usize,
    ) -> impl Future<Output = Result<Res, Status>> + Send + '_
    where
        Res: prost::Message + Default + Send + 'static,
    {
        // Sending (the connection, its readiness, the request) is a box of
        // its own, made here and freed once the request is sent: what then
        // waits for the answer, 27 calls per verification, holds the h2
        // response future and not the metadata, the frame, the connection's
        // handles or the states of getting them (docs/benchmarks.md, S5).
        let sending = Box::pin(self.send(path, metadata, frame));
        async move {
            let (number, response) = sending.await?;
            let response = response
                .await
                .map_err(|e| self.failed(number, "the call failed", &e))?
                .map(|recv| tonic::body::Body::new(Answer(recv)));
            Box::pin(crate::unary::read_answer(response, max_answer_bytes)).await
        }
    }

    /// Sends the request of [`Self::call`]: the number of the connection it
    /// went over, and the answer to come.
    async fn send(
        &self,
        path: &'static str,
        metadata: MetadataMap,
        frame: Bytes,
    ) -> Result<(u64, h2::client::ResponseFuture), Status> {
        let (number, handle) = match self.live() {
            Some(live) => live,
            // Connecting is boxed: inline, its states (TCP, TLS, HTTP/2
            // handshakes) would be in every call's sending.
            None => Box::pin(self.handle()).await?,
        };
        let mut send = handle
            .ready()
            .await
            .map_err(|e| self.failed(number, "the connection could not take the call", &e))?;
        let request = self.request(path, metadata)?;
        let (response, mut body) = send
            .send_request(request, false)
            .map_err(|e| self.failed(number, "the call could not be sent", &e))?;
        body.send_data(frame, true)
            .map_err(|e| self.failed(number, "the request could not be sent", &e))?;
        Ok((number, response))
    }

    fn request(
        &self,
        path: &'static str,
        metadata: MetadataMap,
    ) -> Result<http::Request<()>, Status> {
        let uri = Uri::builder()
            .scheme(self.inner.scheme.clone())
            .authority(self.inner.authority.clone())
            .path_and_query(PathAndQuery::from_static(path))
            .build()
            .map_err(|e| Status::internal(format!("the call's URL does not build: {e}")))?;
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri;
        *request.headers_mut() = crate::unary::grpc_headers(metadata);
        Ok(request)
    }

    /// A handle to the live connection, connecting first when there is
    /// none. Callers that waited for an attempt that failed are told why
    /// rather than each trying again (when the source is down, every call
    /// in flight would otherwise wait for its own connect timeout in turn).
    async fn handle(&self) -> Result<(u64, SendRequest<Bytes>), Status> {
        let seen = self.inner.finished.load(Ordering::Acquire);
        let mut last = self.inner.connecting.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(live) = self.live() {
            return Ok(live);
        }
        if last.number > seen
            && let Some(why) = &last.failed
        {
            return Err(unreachable(why.clone()));
        }
        let number = last.number + 1;
        let (host, port) = (&self.inner.host, self.inner.port);
        let made = tokio::time::timeout(self.inner.connect_timeout, self.connect(number))
            .await
            .unwrap_or_else(|_| {
                Err(unreachable(format!(
                    "connecting to {host}:{port} took more than {} ms",
                    self.inner.connect_timeout.as_millis()
                )))
            });
        last.number = number;
        self.inner.finished.store(number, Ordering::Release);
        match made {
            Ok(handle) => {
                last.failed = None;
                *self
                    .inner
                    .live
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some((number, handle.clone()));
                Ok((number, handle))
            }
            Err(status) => {
                last.failed = Some(status.message().to_owned());
                Err(status)
            }
        }
    }

    fn live(&self) -> Option<(u64, SendRequest<Bytes>)> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Connects, and spawns the task that drives the connection; when the
    /// connection ends, the task forgets it (if it is still the live one).
    async fn connect(&self, number: u64) -> Result<SendRequest<Bytes>, Status> {
        let Inner { host, port, .. } = &*self.inner;
        let tcp = TcpStream::connect((host.as_str(), *port))
            .await
            .map_err(|e| unreachable(format!("cannot connect to {host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let weak = Arc::downgrade(&self.inner);
        match &self.inner.tls {
            None => handshake(tcp, weak, number).await,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
                    unreachable(format!(
                        "tls handshake failed: {}",
                        crate::auth::describe_chain(&e)
                    ))
                })?;
                handshake(tls, weak, number).await
            }
        }
    }

    /// An error under a call on connection `number`: a reset of the
    /// call's stream is the source's answer; anything else is the
    /// connection's, which is dropped (the next call connects again).
    fn failed(&self, number: u64, what: &str, e: &h2::Error) -> Status {
        match e.reason() {
            Some(reason) if !e.is_go_away() && !e.is_io() => {
                // As tonic reads a reset: REFUSED_STREAM is UNAVAILABLE,
                // CANCEL is CANCELLED ...
                let code = Status::from(h2::Error::from(reason)).code();
                Status::new(code, format!("{what}: {e}"))
            }
            _ => {
                forget(&self.inner, number);
                unreachable(format!("{what}: {}", crate::auth::describe_chain(e)))
            }
        }
    }
}

/// The HTTP/2 handshake over `io`, and the task that drives the
/// connection.
async fn handshake<T>(io: T, inner: Weak<Inner>, number: u64) -> Result<SendRequest<Bytes>, Status>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (handle, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| {
            unreachable(format!(
                "http/2 handshake failed: {}",
                crate::auth::describe_chain(&e)
            ))
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "a source's connection ended");
        }
        if let Some(inner) = inner.upgrade() {
            forget(&inner, number);
        }
    });
    Ok(handle)
}

/// Forgets connection `number` if it is still the live one, so that the
/// next call connects again.
fn forget(inner: &Inner, number: u64) {
    let mut live = inner.live.lock().unwrap_or_else(PoisonError::into_inner);
    if live.as_ref().is_some_and(|(n, _)| *n == number) {
        *live = None;
    }
}

/// The answer's body: data as it comes (its flow-control window given back
/// at once), then the trailers.
struct Answer(h2::RecvStream);

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h2::Error>>> {
        let recv = &mut self.0;
        if !recv.is_end_stream() {
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {}
            }
        }
        match ready!(recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use hedui_proto::v1::{LookupRequest, LookupResponse};
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;
    use crate::{
        Adapter,
        grpc::{LOOKUP_PATH, tests::Nobody},
        server::AdapterServer,
    };

    /// Serves [`Nobody`] on `listener` until `stop` is sent.
    fn serve(listener: TcpListener) -> tokio::sync::oneshot::Sender<()> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = AdapterServer::new([Arc::new(Nobody) as Arc<dyn Adapter>]).into_service();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        stop
    }

    fn request() -> LookupRequest {
        LookupRequest {
            source_id: "employment".into(),
            person_ids: vec!["110105194912310021".into()],
            ..Default::default()
        }
    }

    async fn ask(client: &H2Client) -> Result<LookupResponse, Status> {
        let frame = crate::unary::frame(&request()).unwrap();
        client
            .call(LOOKUP_PATH, MetadataMap::new(), frame, 1 << 20)
            .await
    }

    /// An address nothing listens on.
    async fn closed_port() -> std::net::SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[tokio::test]
    async fn a_source_that_comes_back_is_reached_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = serve(listener);
        let client =
            H2Client::new(&format!("http://{addr}"), Duration::from_secs(1), None).unwrap();
        for _ in 0..3 {
            let answer = ask(&client).await.unwrap();
            assert_eq!(answer.answers.len(), 1);
        }
        assert_eq!(
            client.inner.finished.load(Ordering::Acquire),
            1,
            "one connection"
        );

        stop.send(()).unwrap();
        // The connection's end is noticed; calls fail while the source is
        // away, naming where it was looked for (bounded: 5 s).
        let mut failure = None;
        for _ in 0..250 {
            match ask(&client).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(status) => {
                    failure = Some(status);
                    break;
                }
            }
        }
        let status = failure.expect("calls fail once the source is gone");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            std::error::Error::source(&status)
                .is_some_and(|e| e.downcast_ref::<Unreachable>().is_some()),
            "{status:?}"
        );

        let stop = serve(TcpListener::bind(addr).await.unwrap());
        let mut answered = false;
        for _ in 0..250 {
            if ask(&client).await.is_ok() {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(answered, "the source is reached again once it is back");
        stop.send(()).unwrap();
    }

    #[tokio::test]
    async fn callers_waiting_on_a_failed_connection_are_told_why() {
        let addr = closed_port().await;
        let client =
            H2Client::new(&format!("http://{addr}"), Duration::from_secs(1), None).unwrap();
        let calls = futures::future::join_all((0..20).map(|_| ask(&client))).await;
        for call in calls {
            let status = call.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(
                status
                    .message()
                    .starts_with(&format!("cannot connect to 127.0.0.1:{}", addr.port())),
                "{status:?}"
            );
        }
        // They waited for one attempt rather than each making its own.
        assert_eq!(client.inner.finished.load(Ordering::Acquire), 1);
        // A later call tries again.
        assert!(ask(&client).await.is_err());
        assert_eq!(client.inner.finished.load(Ordering::Acquire), 2);
    }

    #[test]
    fn endpoints_are_checked_when_built() {
        let e = |endpoint: &str| H2Client::new(endpoint, Duration::from_secs(1), None).unwrap_err();
        assert!(
            e("127.0.0.1:7001").contains("has no scheme"),
            "{}",
            e("127.0.0.1:7001")
        );
        assert!(e("ftp://127.0.0.1:7001").contains("must be http:// or https://"));
        assert!(e("http://exa mple").contains("is not a valid URL"));
    }

    /// What a waiting call holds is its future: kept small, as a broker
    /// holds 27 per verification in flight (docs/benchmarks.md, S5). The
    /// sending is boxed apart and freed once sent: 64 bytes (rustc 1.95),
    /// 448 with it inline.
    #[tokio::test]
    async fn the_waiting_call_is_small() {
        let client = H2Client::new("http://127.0.0.1:9", Duration::from_secs(1), None).unwrap();
        let frame = crate::unary::frame(&request()).unwrap();
        let call = client.call::<LookupResponse>(LOOKUP_PATH, MetadataMap::new(), frame, 1024);
        let size = std::mem::size_of_val(&call);
        println!("h2 call future: {size} bytes");
        assert!(size <= 128, "{size} bytes");
    }
}
