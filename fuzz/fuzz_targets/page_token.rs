//! Page tokens as a client may send them: anything, and (to get past the
//! signature) any body signed with the service's key. Checking never
//! panics; an accepted token is exactly the one the service would issue for
//! its cursor; an issued token round-trips and works for its own query only.

#![no_main]

use arbitrary::Arbitrary;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use read_service::domain::{Page, PageCursor, PageTokens};
use ring::hmac;

const SECRET: &[u8] = b"fuzz secret";

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    history: bool,
    filter: Option<&'a str>,
    token: &'a str,
    signed_body: &'a [u8],
    after_account: &'a str,
    after_version: u64,
}

fuzz_target!(|input: Input<'_>| {
    let tokens = PageTokens::new(SECRET);
    let page = match (input.history, input.filter) {
        (true, filter) => Page::History { account_id: filter.unwrap_or_default().to_owned() },
        (false, owner) => Page::Accounts { owner: owner.map(str::to_owned) },
    };

    // Anything: refused or accepted, never a panic.
    let _ = tokens.check(&page, input.token);

    // A body with a valid signature: accepted only if it is what `issue`
    // would have written for the cursor it yields.
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, SECRET), input.signed_body);
    let signed = URL_SAFE_NO_PAD.encode([input.signed_body, tag.as_ref()].concat());
    if let Ok(cursor) = tokens.check(&page, &signed) {
        assert_eq!(tokens.issue(&page, &cursor), signed);
    }

    // Issued tokens round-trip, for their own query only.
    let cursor = match page {
        Page::Accounts { .. } => PageCursor::AfterAccount(input.after_account.to_owned()),
        Page::History { .. } => PageCursor::AfterVersion(input.after_version),
    };
    let issued = tokens.issue(&page, &cursor);
    assert_eq!(tokens.check(&page, &issued), Ok(cursor));
    let other = match page {
        Page::Accounts { owner } => Page::Accounts { owner: Some(format!("{}x", owner.unwrap_or_default())) },
        Page::History { account_id } => Page::History { account_id: format!("{account_id}x") },
    };
    assert!(tokens.check(&other, &issued).is_err());
});
