//! `GET /`: a small live dashboard over the API and the event stream.

use axum::response::Html;

pub(crate) async fn page() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}
