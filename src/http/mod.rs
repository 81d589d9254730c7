//! HTTP/1.x as both sockets speak it (docs/protocol.md section 2): `request`
//! turns bytes into requests, `response` turns answers into bytes.

pub mod request;
pub mod response;
