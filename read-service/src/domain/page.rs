//! Paging: page sizes and page tokens.
//!
//! A page token is opaque to clients: the last key of the previous page and
//! the query it belongs to (kind and filter), signed with HMAC-SHA256 so a
//! forged, truncated or replayed-on-another-query token is refused rather
//! than silently starting somewhere else.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::hmac;

/// A validated page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    /// The size when the client asks for 0.
    pub const DEFAULT: u32 = 50;
    /// The largest page served; larger requests are clamped to it.
    pub const MAX: u32 = 500;

    /// Validates `page_size`: negative is an error, 0 the default, above the
    /// maximum clamped.
    pub fn parse(page_size: i32) -> Result<Self, PageTokenError> {
        match page_size {
            ..0 => Err(PageTokenError::NegativeSize(page_size)),
            0 => Ok(Self(Self::DEFAULT)),
            size => Ok(Self(u32::try_from(size).unwrap_or(Self::MAX).min(Self::MAX))),
        }
    }

    /// The number of rows.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Which query, with which filter, a token continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// ListAccounts, optionally filtered by owner.
    Accounts { owner: Option<String> },
    /// GetAccountHistory of one account.
    History { account_id: String },
}

/// Where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageCursor {
    /// After this account id.
    AfterAccount(String),
    /// After this version.
    AfterVersion(u64),
}

/// Why a page request is refused (INVALID_ARGUMENT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    #[error("page_size must not be negative (got {0})")]
    NegativeSize(i32),
    #[error("page_token is not a token this service issued for this query; start again with an empty page_token")]
    Invalid,
}

/// Issues and checks page tokens with one secret (share it between
/// replicas, or tokens only work on the replica that issued them).
pub struct PageTokens {
    key: hmac::Key,
}

const VERSION: u8 = 1;

impl PageTokens {
    /// Tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    /// The token that continues `page` after `cursor`.
    pub fn issue(&self, page: &Page, cursor: &PageCursor) -> String {
        let mut body = vec![VERSION];
        body.extend_from_slice(&fingerprint(page));
        match cursor {
            PageCursor::AfterAccount(id) => {
                body.push(b'a');
                body.extend_from_slice(id.as_bytes());
            }
            PageCursor::AfterVersion(version) => {
                body.push(b'v');
                body.extend_from_slice(&version.to_be_bytes());
            }
        }
        let tag = hmac::sign(&self.key, &body);
        body.extend_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(body)
    }

    /// The cursor in `token`, if this service issued it for `page`.
    pub fn check(&self, page: &Page, token: &str) -> Result<PageCursor, PageTokenError> {
        const TAG: usize = 32;
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| PageTokenError::Invalid)?;
        if bytes.len() < 1 + 8 + 1 + TAG {
            return Err(PageTokenError::Invalid);
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG);
        hmac::verify(&self.key, body, tag).map_err(|_| PageTokenError::Invalid)?;
        if body[0] != VERSION || body[1..9] != fingerprint(page) {
            return Err(PageTokenError::Invalid);
        }
        match (body[9], &body[10..], page) {
            (b'a', id, Page::Accounts { .. }) => {
                String::from_utf8(id.to_vec()).map(PageCursor::AfterAccount).map_err(|_| PageTokenError::Invalid)
            }
            (b'v', version, Page::History { .. }) => version
                .try_into()
                .map(|bytes| PageCursor::AfterVersion(u64::from_be_bytes(bytes)))
                .map_err(|_| PageTokenError::Invalid),
            _ => Err(PageTokenError::Invalid),
        }
    }
}

/// 8 bytes that identify the query and its filter.
fn fingerprint(page: &Page) -> [u8; 8] {
    let described = match page {
        Page::Accounts { owner: None } => "accounts".to_owned(),
        Page::Accounts { owner: Some(owner) } => format!("accounts\0{owner}"),
        Page::History { account_id } => format!("history\0{account_id}"),
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, described.as_bytes());
    let mut fingerprint = [0; 8];
    fingerprint.copy_from_slice(&digest.as_ref()[..8]);
    fingerprint
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> PageTokens {
        PageTokens::new(b"test secret")
    }

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(PageSize::parse(0).unwrap().get(), PageSize::DEFAULT);
        assert_eq!(PageSize::parse(7).unwrap().get(), 7);
        assert_eq!(PageSize::parse(i32::MAX).unwrap().get(), PageSize::MAX);
        assert_eq!(PageSize::parse(-1), Err(PageTokenError::NegativeSize(-1)));
    }

    #[test]
    fn a_token_continues_the_query_it_was_issued_for() {
        let page = Page::Accounts { owner: Some("Ada".into()) };
        let cursor = PageCursor::AfterAccount("acc-17".into());
        let token = tokens().issue(&page, &cursor);
        assert_eq!(tokens().check(&page, &token), Ok(cursor));

        let page = Page::History { account_id: "acc".into() };
        let token = tokens().issue(&page, &PageCursor::AfterVersion(42));
        assert_eq!(tokens().check(&page, &token), Ok(PageCursor::AfterVersion(42)));
    }

    #[test]
    fn forged_truncated_and_foreign_tokens_are_refused() {
        let page = Page::Accounts { owner: None };
        let token = tokens().issue(&page, &PageCursor::AfterAccount("acc-1".into()));
        assert_eq!(tokens().check(&page, "garbage!"), Err(PageTokenError::Invalid));
        assert_eq!(tokens().check(&page, &token[..token.len() - 3]), Err(PageTokenError::Invalid));
        assert_eq!(tokens().check(&page, ""), Err(PageTokenError::Invalid));
        // Same bytes, another cursor: the signature no longer matches.
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[11] ^= 1;
        assert_eq!(tokens().check(&page, &URL_SAFE_NO_PAD.encode(bytes)), Err(PageTokenError::Invalid));
        // Another query or filter, or another secret.
        assert_eq!(tokens().check(&Page::Accounts { owner: Some("x".into()) }, &token), Err(PageTokenError::Invalid));
        assert_eq!(tokens().check(&Page::History { account_id: "acc-1".into() }, &token), Err(PageTokenError::Invalid));
        assert_eq!(PageTokens::new(b"other").check(&page, &token), Err(PageTokenError::Invalid));
    }
}
