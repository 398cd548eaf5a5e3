//! tierlimit (crate docs are written in a later step)
pub mod clock;
pub mod config;
mod error;
pub mod headers;
pub mod identity;
pub mod policy;
pub mod reject;
pub mod store;
pub mod window;

mod body;
mod future;
mod layer;
mod service;

pub use body::RateLimitBody;
pub use config::Config;
pub use error::ConfigError;
pub use future::ResponseFuture;
pub use layer::RateLimitLayer;
pub use policy::Policy;
pub use service::RateLimit;
