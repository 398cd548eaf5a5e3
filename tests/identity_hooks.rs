//! Identity and plan hooks, as a user with JWTs would use them, and the
//! precedence of an identity the application inserted over a raw Bearer
//! token.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use common::{clock, send};
use http::request::Parts;
use http::{Request, StatusCode};
use jsonwebtoken::{decode, encode, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tierlimit::config::{Config, Limit, Tier};
use tierlimit::identity::{Identified, Identity, UserId};
use tierlimit::{PlanSubject, RateLimitLayer};

const SECRET: &[u8] = b"test-secret";

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// Makes tokens of one subject differ, as refreshed tokens do.
    jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plan: Option<String>,
}

fn token(sub: &str, jti: &str, plan: Option<&str>) -> String {
    let claims = Claims {
        sub: sub.into(),
        exp: 4_000_000_000,
        jti: jti.into(),
        plan: plan.map(str::to_owned),
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

/// The verified claims of the request's bearer token, if any.
fn claims(req: &Parts) -> Option<Claims> {
    let auth = req.headers.get("authorization")?.to_str().ok()?;
    let jwt = auth.strip_prefix("Bearer ")?;
    let key = DecodingKey::from_secret(SECRET).ok()?;
    decode::<Claims>(jwt, &key, &Validation::default())
        .ok()
        .map(|d| d.claims)
}

fn policy() -> tierlimit::Policy {
    let minute = Duration::from_secs(60);
    Config::new()
        .tier(
            "standard",
            Tier::new().limit(Limit::sliding("m", 3, minute)),
        )
        .tier(
            "premium",
            Tier::new().limit(Limit::sliding("m", 10, minute)),
        )
        .plans("standard", [("some-key", "premium")])
        .build()
        .unwrap()
}

fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/x", get(|| async { "ok" }))
        .layer(layer)
}

fn with_token(t: &str) -> Request<Body> {
    Request::get("/x")
        .header("authorization", format!("Bearer {t}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn callers_keyed_by_a_jwt_sub_share_one_budget_across_tokens() {
    let layer = RateLimitLayer::builder(policy())
        .clock(clock())
        .identify(|req: &Parts| Some(Identified::new().user(claims(req)?.sub)))
        .build();
    let app = app(layer);
    // Three different tokens of alice: one budget of 3.
    for jti in ["a", "b", "c"] {
        let r = send(&app, with_token(&token("alice", jti, None))).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = send(&app, with_token(&token("alice", "d", None))).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "a fresh token is no fresh budget"
    );
    // Bob has his own.
    let r = send(&app, with_token(&token("bob", "a", None))).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn a_plan_comes_from_a_claim_and_unknown_names_fall_back() {
    let layer = RateLimitLayer::builder(policy())
        .clock(clock())
        .identify(|req: &Parts| Some(Identified::new().user(claims(req)?.sub)))
        .choose_plan(|req: &Parts, _: &Identity<'_>| claims(req)?.plan)
        .build();
    let controller = layer.controller();
    let app = app(layer);
    let r = send(&app, with_token(&token("carol", "a", Some("premium")))).await;
    assert_eq!(r.num("x-ratelimit-limit"), 10);
    // A name that is no plan: the assignments decide (here the default),
    // and it is counted.
    let r = send(&app, with_token(&token("dave", "a", Some("platinum")))).await;
    assert_eq!(r.num("x-ratelimit-limit"), 3);
    assert_eq!(controller.unknown_plans(), 1);
    // No claim: the user's assignment applies.
    controller
        .set_plan(PlanSubject::User("erin".into()), "premium")
        .unwrap();
    let r = send(&app, with_token(&token("erin", "a", None))).await;
    assert_eq!(r.num("x-ratelimit-limit"), 10);
}

#[tokio::test]
async fn a_user_the_app_inserted_outranks_a_raw_bearer_token() {
    // The default rules, Bearer on (the default): an auth middleware has
    // checked the JWT and inserted UserId.
    let layer = RateLimitLayer::builder(policy()).clock(clock()).build();
    layer
        .set_plan(PlanSubject::User("frank".into()), "premium")
        .unwrap();
    let app = app(layer).layer(axum::middleware::from_fn(
        |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
            let (mut parts, body) = req.into_parts();
            if let Some(c) = claims(&parts) {
                parts.extensions.insert(UserId(c.sub));
            }
            req = Request::from_parts(parts, body);
            next.run(req).await
        },
    ));
    // Each refresh is a new token; the budget and the plan are frank's.
    for jti in 0..10 {
        let r = send(&app, with_token(&token("frank", &jti.to_string(), None))).await;
        assert_eq!(r.status, StatusCode::OK, "request {jti}");
        assert_eq!(r.num("x-ratelimit-limit"), 10, "frank's plan");
    }
    let r = send(&app, with_token(&token("frank", "new", None))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Without a UserId, a bearer token is still an API key.
    let r = send(
        &app,
        Request::get("/x")
            .header("authorization", "Bearer some-key")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.num("x-ratelimit-limit"), 10, "some-key's configured plan");
}

/// A store whose every decision fails.
#[derive(Debug)]
struct Down;

impl tierlimit::store::Store for Down {
    type Decide = std::future::Ready<Result<tierlimit::store::Batch, tierlimit::store::StoreError>>;
    type Charge = std::future::Ready<Result<(), tierlimit::store::StoreError>>;

    fn decide(
        &self,
        _: tierlimit::clock::Timestamp,
        _: tierlimit::store::Batch,
    ) -> tierlimit::store::Answer<tierlimit::store::Batch, Self::Decide> {
        tierlimit::store::Answer::Now(Err(tierlimit::store::StoreError::from_kind(
            tierlimit::store::StoreErrorKind::Unavailable,
        )))
    }

    fn charge_after(
        &self,
        _: tierlimit::clock::Timestamp,
        _: Vec<tierlimit::store::PostCharge>,
    ) -> tierlimit::store::Answer<(), Self::Charge> {
        tierlimit::store::Answer::Now(Ok(()))
    }
}

/// When the store fails and the fallback store decides, the request is
/// looked up again: the hooks run again, but a plan name that is no plan
/// is counted once per request, not once per lookup.
#[tokio::test]
async fn an_unknown_plan_is_counted_once_when_the_fallback_store_decides() {
    let layer = RateLimitLayer::builder(policy())
        .clock(clock())
        .store(Down)
        .on_store_error(tierlimit::OnStoreError::Fallback)
        .identify(|req: &Parts| Some(Identified::new().user(claims(req)?.sub)))
        .choose_plan(|req: &Parts, _: &Identity<'_>| claims(req)?.plan)
        .build();
    let controller = layer.controller();
    let app = Router::new()
        .route("/x", get(|| async { "ok" }))
        .layer(layer);
    let req = || {
        Request::get("/x")
            .header(
                "authorization",
                format!("Bearer {}", token("gina", "a", Some("platinum"))),
            )
            .body(Body::empty())
            .unwrap()
    };
    let r = send(&app, req()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.num("x-ratelimit-limit"), 3, "the fallback store decided");
    assert_eq!(controller.unknown_plans(), 1);
}
