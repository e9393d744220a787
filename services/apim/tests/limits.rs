//! How much of API Manager's answers the client reads, against a real local
//! HTTP server playing API Manager (login, current user, an endless list).

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use gantry_apim::client::{ApiManagerClient, ClientConfig, Error};
use gantry_pipeline::ApimVersion;

const BASE: &str = "/api/portal/v1.4";

async fn api_manager() -> String {
    let app = Router::new()
        .route(
            &format!("{BASE}/login"),
            post(|| async {
                (
                    StatusCode::SEE_OTHER,
                    [("set-cookie", "APIMANAGERSESSION=s1; Path=/")],
                )
            }),
        )
        .route(
            &format!("{BASE}/currentuser"),
            get(|| async {
                (
                    [("CSRF-Token", "csrf-1")],
                    Json(serde_json::json!({"id": "u1", "loginName": "apiadmin", "role": "admin"})),
                )
            }),
        )
        // A list that never ends: `[{"id":"0","name":"org"},{"id":"0",...`
        .route(
            &format!("{BASE}/organizations"),
            get(|| async {
                let first = futures::stream::once(async {
                    Ok::<_, std::io::Error>(Bytes::from_static(b"["))
                });
                let item =
                    Bytes::from(r#"{"id":"0","name":"org","description":"x"},"#.repeat(1000));
                let rest = futures::stream::repeat_with(move || Ok(item.clone()));
                Body::from_stream(futures::StreamExt::chain(first, rest)).into_response()
            }),
        )
        .route(
            &format!("{BASE}/applications"),
            get(|| async { Json(serde_json::json!([{"id": "a1", "name": "app"}])) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_answer_past_the_cap_is_an_error_not_a_buffer() {
    let url = api_manager().await;
    let client = ApiManagerClient::new(
        ClientConfig::new(&url, ApimVersion::V1_4, "apiadmin", "pw")
            .with_timeouts(Duration::from_secs(5), Duration::from_secs(30))
            .with_retries(1, Duration::from_millis(10)),
    )
    .unwrap();
    // Small answers are read as before.
    let apps = client.applications().await.unwrap();
    assert_eq!(apps.len(), 1);

    let started = Instant::now();
    let err = client.organizations().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped at the cap: {:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("GET /organizations") && msg.contains("larger than 16 MiB"),
        "{msg}"
    );

    // The cap is the client's to set.
    let small = ApiManagerClient::new(
        ClientConfig::new(&url, ApimVersion::V1_4, "apiadmin", "pw").with_max_body(1024 * 1024),
    )
    .unwrap();
    let err = small.organizations().await.unwrap_err();
    assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
}
