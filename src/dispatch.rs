//! What a request calls for: the one place where a parsed request meets the
//! APIs. A connection (`conn`) hands each complete request here and acts on
//! the value that comes back: a response to write (with the change it
//! made), a subscription to start, or a wait to hold.
//!
//! Owns routing between the two sockets' APIs, working out who a guest is
//! once per request (and once per connection while the registry has not
//! changed), and counting what was answered for the metrics. What each path
//! answers is `api`'s business; bytes and connection state are `conn`'s;
//! the values both use (the side, the context, a subscription, a wait) are
//! `request_ctx`'s.

use std::time::Instant;

use crate::api::Change;
use crate::api::admin::{self, AdminAnswer};
use crate::api::guest::{self, Caller, GuestAnswer};
use crate::api::identity::{self, Mint};
use crate::error::NotServed;
use crate::events::TypeFilter;
use crate::http::request::{Request, percent_decode, query_param};
use crate::http::response::{BodyKind, Response};
use crate::identity::PeerFacts;
use crate::metrics::Reason;
use crate::registry::InstanceId;
use crate::request_ctx::{ChangeWait, Ctx, KnownCaller, Side, Subscription};
use crate::ws::handshake;

/// What answering one request calls for.
#[derive(Debug)]
pub enum Outcome {
    /// Write this response (enveloped already on the admin socket); hold it
    /// until the change it reports, if any, is durable.
    Respond(Response, Option<Change>),
    /// `GET /1.0/events`: become a subscriber, with the websocket accept key
    /// (`None`: a JSON-lines stream); or the answer that refuses it.
    Subscribe(Result<(Option<String>, Subscription), Response>),
    /// Hold the request until its answer's tag moves (`wait_for_change`).
    Wait(ChangeWait),
    /// Hold the request until the signer has signed this token; the server
    /// answers it then (and counts it for the metrics).
    Mint(Mint),
}

/// Answers one complete request from `peer` on a connection of `side`;
/// `known` is the connection's remembered identity, `started` when the
/// request's first byte arrived (for the latency metrics).
pub fn dispatch(
    req: &Request<'_>,
    side: Side,
    peer: &PeerFacts,
    known: &mut KnownCaller,
    started: Instant,
    ctx: &mut Ctx<'_>,
) -> Outcome {
    let outcome = match side {
        // A server that handed its state to a successor can no longer make
        // a change durable; the successor, listening already, can.
        _ if ctx.handing_over && !matches!(req.method, "GET" | "HEAD") => {
            let response = NotServed::HandingOver.response();
            Outcome::Respond(
                match side {
                    Side::Admin { .. } => response.enveloped(),
                    Side::Guest => response,
                },
                None,
            )
        }
        // Public keys are public: any caller, no instance needed.
        Side::Guest if req.path == identity::JWKS_PATH => {
            Outcome::Respond(identity::jwks(req, ctx.issuer), None)
        }
        Side::Guest => {
            let caller = known.caller(peer, ctx.registry);
            let outcome = match guest::answer(req, &caller, peer, ctx.registry, Some(ctx.limits)) {
                GuestAnswer::Respond(response, change) => Outcome::Respond(response, change),
                GuestAnswer::Subscribe(id) => Outcome::Subscribe(plan_subscription(req, Some(id))),
                GuestAnswer::Wait { id, etag, timeout } => {
                    Outcome::Wait(ChangeWait::new(req, id, etag, Instant::now() + timeout))
                }
                GuestAnswer::Mint(mint) => Outcome::Mint(Mint { started, ..mint }),
            };
            if let Outcome::Respond(response, _) = &outcome {
                count_refusal(ctx, &caller, response.refused);
            }
            outcome
        }
        Side::Admin { authorized: true }
            if req.path == "/1.0/identity" || req.path.starts_with("/1.0/identity/") =>
        {
            let (response, change) = identity::admin(req, ctx.issuer);
            Outcome::Respond(response.enveloped(), change)
        }
        Side::Admin { authorized: true } => match admin::answer(req, ctx.registry, ctx.facts) {
            AdminAnswer::Respond(response, change) => {
                Outcome::Respond(response.enveloped(), change)
            }
            AdminAnswer::Metrics => {
                let body = ctx.metrics.render(
                    ctx.facts.connections.guest,
                    ctx.facts.connections.admin,
                    ctx.subscribers,
                    ctx.registry.len(),
                    (ctx.cgroups.len(), ctx.cgroups.bytes()),
                );
                let mut response = Response::raw(body.into_bytes());
                response.kind = BodyKind::Metrics;
                Outcome::Respond(response, None)
            }
            AdminAnswer::Subscribe => Outcome::Subscribe(plan_subscription(req, None)),
        },
        Side::Admin { authorized: false } => Outcome::Respond(
            NotServed::NotAdmin { uid: peer.uid }.response().enveloped(),
            None,
        ),
    };
    if let Outcome::Respond(response, _) = &outcome {
        ctx.metrics
            .request(req.path, response.status, started.elapsed().as_secs_f64());
    }
    outcome
}

/// Counts a refused guest request under the label its answer carries, for
/// the metrics, and logs the whole reason of an identity refusal for the
/// host (the guest was told only its own pid and uid), one line a second at
/// most.
fn count_refusal(ctx: &mut Ctx<'_>, caller: &Caller, refused: Option<Reason>) {
    let Some(reason) = refused else {
        return;
    };
    ctx.metrics.refused(reason);
    if let Err(refusal) = caller {
        crate::log::log_throttled(
            ctx.refusal_logged,
            format_args!("refused a guest request: {refusal}"),
        );
    }
}

/// What a `GET /1.0/events` asks for: a websocket (with its
/// `Sec-WebSocket-Accept`) or a stream, and the subscription; or the error
/// answer for a bad handshake or filter.
fn plan_subscription(
    req: &Request<'_>,
    instance: Option<InstanceId>,
) -> Result<(Option<String>, Subscription), Response> {
    let accept = handshake::check(req).map_err(|e| NotServed::Handshake(e).response())?;
    let filter = match query_param(req.query, "type").map(percent_decode) {
        Some(None) => return Err(NotServed::BadPercentEncoding { what: "type" }.response()),
        Some(Some(list)) => TypeFilter::parse(Some(&list), instance.is_none()),
        None => TypeFilter::parse(None, instance.is_none()),
    };
    Ok((accept, Subscription { instance, filter }))
}
