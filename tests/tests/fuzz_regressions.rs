//! Regressions found by the API fuzzer (`scripts/fuzz-api.sh`), one test per
//! finding, each named after what went wrong.

use serde_json::json;
use tally_tests::{both_backends, Backend, TestApp};

both_backends!(read_all_with_a_nul_in_the_recipient_was_a_500);

/// `POST /v1/inbox/read-all` used the recipient as the stream id before
/// checking it; a NUL byte in it made PostgreSQL refuse the query (500).
/// Now it is refused like any malformed recipient, and nothing is written.
async fn read_all_with_a_nul_in_the_recipient_was_a_500(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for recipient in ["\u{0}\u{1d}", "customer:a\u{0}b", "customer:"] {
        let r = app
            .post(
                &app.admin_key,
                "/v1/inbox/read-all",
                json!({ "recipient": recipient }),
            )
            .await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], "recipient", "{:?}", r.body);
    }
    assert_eq!(app.state().dispatcher.log().head().await.unwrap(), 0);
    let ok = app
        .post(
            &app.admin_key,
            "/v1/inbox/read-all",
            json!({ "recipient": "customer:cus_1" }),
        )
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
}
