//! Login tokens: lowercase hex of HMAC-SHA256(secret, id), compared in
//! constant time. The codec lives in [`lifeline_wire::token`], where a back
//! end that mints tokens for its apps finds it too.

pub use lifeline_wire::token::{mint, verify};
