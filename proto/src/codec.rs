//! The codec of every hedui service and client: prost's, with a smaller
//! first buffer.
//!
//! tonic gives each call's encoder and decoder a buffer of 8 KiB to begin
//! with, and a server-streaming response keeps its encoder's buffer for as
//! long as the stream is open. A `StreamVerify` caller holds its stream
//! open for the whole verification, so every verification in flight paid
//! 8 KiB (10 KiB in the allocator's size class) for a buffer whose events
//! (the household, one result per source) are a few hundred bytes each
//! (docs/benchmarks.md, S5). Buffers still grow to whatever a message needs
//! (a report is encoded in one piece); only the first allocation is
//! smaller.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The first size of a call's encode and decode buffers, in bytes.
pub const FIRST_BUFFER_BYTES: usize = 1024;

/// How much an encoder gathers before it hands a streamed batch on (tonic's
/// default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost's codec with [`FIRST_BUFFER_BYTES`] buffers; the generated
/// clients and servers of `hedui.v1` use it (`proto/build.rs`).
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

#[cfg(test)]
mod tests {
    use tonic::codec::{Codec, Decoder, Encoder};

    use super::*;
    use crate::v1::CheckRequest;

    #[test]
    fn both_ways_start_small() {
        // BufferSettings has no getters; its Debug names the fields.
        let first = format!("buffer_size: {FIRST_BUFFER_BYTES},");
        let mut codec = LeanCodec::<CheckRequest, CheckRequest>::default();
        let encoder = format!("{:?}", codec.encoder().buffer_settings());
        let decoder = format!("{:?}", codec.decoder().buffer_settings());
        assert!(encoder.contains(&first), "{encoder}");
        assert!(decoder.contains(&first), "{decoder}");
    }
}
