//! One unary gRPC call with the request encoded up front.
//!
//! tonic's generated client sends a unary request as a streaming body
//! (`EncodeBody` over a one-message stream, with its own encode buffer):
//! that body cannot say it has ended until it is polled again, so hyper
//! hands it to a task of its own that pipes it into the HTTP/2 stream. A
//! broker keeps one such call per source open for every verification in
//! flight, so the task, the buffer and the generic call future are paid 27
//! times per verification (docs/benchmarks.md, S5). Here the request is
//! encoded into one frame and sent as a body that ends with its data, so
//! hyper writes it at once, and the call goes through the same tonic
//! [`Channel`] (connection, TLS, reconnection, `grpc-timeout`) as before.
//! The response is read by tonic's own decoder, [`Streaming`], the way
//! tonic's unary client reads it: its statuses and errors are tonic's.
//!
//! The peer transport calls this way. The gRPC transport's `Lookup` goes
//! further ([`crate::h2client`]: HTTP/2 directly, without the channel)
//! and shares the frame, the headers and the reading of the answer.

use bytes::{BufMut, BytesMut};
use http::header::{CONTENT_TYPE, TE};
use tonic::{
    Code, Status, client::GrpcService, codec::Streaming, metadata::MetadataMap, transport::Channel,
};

/// `path`, e.g. `/hedui.v1.AdapterService/Lookup`, called on `channel`
/// with `message` and the `metadata` (the `grpc-timeout`, credentials
/// and trace context); an answer larger than `max_answer_bytes` is refused
/// as tonic refuses it.
///
/// # Errors
/// The call's status as tonic's unary client gives it: transport failures
/// keep their source (`tonic::transport::Error`, `TimeoutExpired`), a
/// status from the server keeps its metadata.
pub(crate) async fn call<Req, Res>(
    mut channel: Channel,
    path: &'static str,
    metadata: MetadataMap,
    message: &Req,
    max_answer_bytes: usize,
) -> Result<Res, Status>
where
    Req: prost::Message,
    Res: prost::Message + Default + Send + 'static,
{
    let mut request = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(frame(
        message,
    )?)));
    *request.method_mut() = http::Method::POST;
    *request.version_mut() = http::Version::HTTP_2;
    *request.uri_mut() = http::Uri::from_static(path);
    *request.headers_mut() = grpc_headers(metadata);

    std::future::poll_fn(|cx| GrpcService::poll_ready(&mut channel, cx))
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let pending = GrpcService::call(&mut channel, request);
    // What waits for the answer is kept small: a source may take its time,
    // and a broker waits on 27 of them per verification. The channel is not
    // needed any more, and reading the answer is boxed once it comes.
    drop(channel);
    let response = pending.await.map_err(|e| Status::from_error(e.into()))?;
    Box::pin(read_answer(response, max_answer_bytes)).await
}

/// `message` as one gRPC frame: not compressed, its length (big-endian),
/// the message.
///
/// # Errors
/// `OUT_OF_RANGE` for a message over 4 GiB, `INTERNAL` when it does not
/// encode.
pub(crate) fn frame<Req: prost::Message>(message: &Req) -> Result<bytes::Bytes, Status> {
    let len = message.encoded_len();
    let frame_len = u32::try_from(len)
        .map_err(|_| Status::out_of_range(format!("request of {len} bytes is too large")))?;
    let mut frame = BytesMut::with_capacity(5 + len);
    frame.put_u8(0);
    frame.put_u32(frame_len);
    message
        .encode(&mut frame)
        .map_err(|e| Status::internal(format!("request does not encode: {e}")))?;
    Ok(frame.freeze())
}

/// The headers of a gRPC request: `metadata` (the `grpc-timeout`,
/// credentials and trace context), `te` and `content-type`.
pub(crate) fn grpc_headers(metadata: MetadataMap) -> http::HeaderMap {
    let mut headers = metadata.into_headers();
    headers.insert(TE, http::HeaderValue::from_static("trailers"));
    headers.insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers
}

/// The answer of a unary call, read as tonic's unary client reads it.
pub(crate) async fn read_answer<Res>(
    response: http::Response<tonic::body::Body>,
    max_answer_bytes: usize,
) -> Result<Res, Status>
where
    Res: prost::Message + Default + Send + 'static,
{
    let status_code = response.status();
    let (parts, body) = response.into_parts();
    // A response of headers only carries its status there.
    if let Some(status) = Status::from_header_map(&parts.headers) {
        if status.code() != Code::Ok {
            return Err(status);
        }
        return Err(Status::internal("Missing response message."));
    }
    let decoder = tonic_prost::ProstDecoder::<Res>::default();
    let mut body =
        Streaming::new_response(decoder, body, status_code, None, Some(max_answer_bytes));
    let with_headers = |mut status: Status| {
        // As tonic does: the response's headers join the status's metadata.
        let mut merged = status.metadata().clone().into_headers();
        for (name, value) in &parts.headers {
            if !merged.contains_key(name) {
                merged.insert(name.clone(), value.clone());
            }
        }
        *status.metadata_mut() = MetadataMap::from_headers(merged);
        status
    };
    let answer = body
        .message()
        .await
        .map_err(with_headers)?
        .ok_or_else(|| Status::internal("Missing response message."))?;
    body.trailers().await.map_err(with_headers)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use hedui_proto::v1::{LookupRequest, LookupResponse};

    use super::*;

    /// What a hanging call holds is the call's future: kept small, as
    /// a broker holds 27 per verification in flight (docs/benchmarks.md,
    /// S5).
    #[tokio::test]
    async fn the_waiting_call_is_small() {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let request = LookupRequest::default();
        let call = call::<_, LookupResponse>(
            channel,
            crate::grpc::LOOKUP_PATH,
            MetadataMap::new(),
            &request,
            1024,
        );
        let size = std::mem::size_of_val(&call);
        println!("unary call future: {size} bytes");
        assert!(size <= 1024, "{size} bytes");
    }
}
