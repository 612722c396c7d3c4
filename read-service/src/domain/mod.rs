//! The read side's domain: query parameters and opaque page tokens. Pure.

mod page;

pub use page::{Page, PageCursor, PageSize, PageTokenError, PageTokens};
