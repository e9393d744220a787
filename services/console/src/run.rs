//! `/runs/{id}`: the run's stages with their status and why a waiting one
//! waits; for a stage awaiting approval the diff and the API Manager plan
//! beside Approve and Reject; Cancel; the event timeline.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use gantry_api::Api;
use gantry_pipeline::Pipeline;
use gantry_proto::{RunStatus, StageStatus};
use gantry_store::projection::{RunView, StageView};
use gantry_store::RecordedEvent;

use crate::failed;
use crate::html::{digest, esc, seg, short_commit, short_digest, short_run, status, time};
use crate::layout::{self, Frame};
use crate::viewer::Viewer;
use crate::why::why;

pub async fn page(State(api): State<Api>, Path(id): Path<String>, viewer: Viewer) -> Response {
    let read = async {
        let head = api.app.store.head().await?;
        let view = api.app.projections.get_run(&id).await?;
        let events = api.app.store.read_run(&id).await?;
        Ok::<_, gantry_store::StoreError>((head, view, events))
    };
    let (head, view, events) = match read.await {
        Ok(r) => r,
        Err(e) => return failed(&viewer, e),
    };
    let Some(view) = view else {
        return layout::error(
            StatusCode::NOT_FOUND,
            Some(&viewer),
            &format!("There is no run {id}."),
        );
    };
    let set = api.app.pipelines.get();
    let pipeline = set.get(&view.run.pipeline);
    let run = &view.run;
    let mut main = format!(
        "<h1>Run <code>{}</code> of <a href=\"/pipelines/{}\">{}</a></h1>",
        esc(short_run(&run.run_id)),
        seg(&run.pipeline),
        esc(&run.pipeline)
    );
    main.push_str(&summary(&view, pipeline, &viewer));
    main.push_str("<section id=\"run-stages\" data-live><h2>Stages</h2><div class=\"cards\">");
    for stage in &view.stages {
        main.push_str(&stage_card(&view, stage, pipeline, &viewer));
    }
    main.push_str("</div></section>");
    main.push_str(&timeline(&events));
    layout::page(
        StatusCode::OK,
        Frame {
            title: &format!("Run {} of {}", short_run(&run.run_id), run.pipeline),
            viewer: Some(&viewer),
            head,
            follow: &format!("run={}", seg(&run.run_id)),
        },
        &main,
    )
}

fn summary(view: &RunView, pipeline: Option<&Pipeline>, viewer: &Viewer) -> String {
    let run = &view.run;
    let mut out = format!(
        "<section id=\"run-summary\" class=\"panel\" data-live><dl class=\"facts\">\
         <dt>Status</dt><dd>{}{}</dd>\
         <dt>Commit</dt><dd><code title=\"{c}\">{}</code> on {} {}</dd>\
         <dt>Author</dt><dd>{}</dd><dt>Trigger</dt><dd>{}</dd>\
         <dt>Started</dt><dd>{}</dd><dt>Updated</dt><dd>{}</dd></dl>",
        status(run.status.as_str()),
        run.reason
            .as_deref()
            .map(|r| format!(" <span class=\"reason\">{}</span>", esc(r)))
            .unwrap_or_default(),
        esc(short_commit(&run.commit)),
        esc(&run.branch),
        run.message
            .as_deref()
            .map(|m| format!("<q class=\"msg\">{}</q>", esc(m)))
            .unwrap_or_default(),
        esc(run.author.as_deref().unwrap_or("unknown")),
        esc(run.trigger.as_str()),
        time(&run.created_at),
        time(&run.updated_at),
        c = esc(&run.commit),
    );
    if run.status == RunStatus::Running && pipeline.is_some_and(|p| viewer.may_operate(p)) {
        out.push_str(&format!(
            "<form class=\"act\" data-action=\"/api/v1/runs/{}/cancel\" data-done=\"Cancelled\">\
             <button type=\"submit\" class=\"danger\">Cancel</button><p class=\"result\" role=\"alert\"></p></form>",
            seg(&run.run_id)
        ));
    }
    out + "</section>"
}

fn stage_card(
    view: &RunView,
    stage: &StageView,
    pipeline: Option<&Pipeline>,
    viewer: &Viewer,
) -> String {
    let defined = pipeline.and_then(|p| p.stage(&stage.name));
    let mut out = format!(
        "<article class=\"card\" id=\"stage-{id}\"><h3>{name} {st}</h3>",
        id = esc(&stage.name),
        name = esc(&stage.name),
        st = status(stage.status.as_str()),
    );
    let reason = why(stage, defined);
    if !reason.is_empty() {
        out.push_str(&format!("<p class=\"why\">{reason}</p>"));
    }
    if let Some(r) = &stage.reason {
        out.push_str(&format!("<p class=\"reason\">{}</p>", esc(r)));
    }
    if let Some(d) = &stage.image_digest {
        out.push_str(&format!("<p>Image {}</p>", digest(d)));
    }
    if !stage.approvals.is_empty() {
        out.push_str("<ul class=\"decisions\">");
        for a in &stage.approvals {
            let text = a["reason"].as_str().or(a["comment"].as_str());
            out.push_str(&format!(
                "<li>{} by <strong>{}</strong> {}{}</li>",
                esc(a["decision"].as_str().unwrap_or("decided")),
                esc(a["user"].as_str().unwrap_or("?")),
                a["at"].as_str().map(time).unwrap_or_default(),
                text.map(|t| format!(": {}", esc(t))).unwrap_or_default(),
            ));
        }
        out.push_str("</ul>");
    }
    let awaiting =
        stage.status == StageStatus::AwaitingApproval && view.run.status == RunStatus::Running;
    if let (true, Some(defined)) = (awaiting, defined) {
        out.push_str(&approval(view, stage, defined, viewer));
    }
    out + "</article>"
}

/// The diff and plan beside the decision (`console.js` loads them from
/// the API, so a slow API Manager does not hold the page).
fn approval(
    view: &RunView,
    stage: &StageView,
    defined: &gantry_pipeline::Stage,
    viewer: &Viewer,
) -> String {
    let base = format!(
        "/api/v1/runs/{}/stages/{}",
        seg(&view.run.run_id),
        seg(&stage.name)
    );
    let plan = if defined.apimanager.is_some() {
        format!("<pre class=\"preview\" data-preview=\"{base}/apis/plan\" tabindex=\"0\">Loading the plan…</pre>")
    } else {
        "<p class=\"preview none\">This stage promotes no API Manager data.</p>".into()
    };
    let mut out = format!(
        "<div class=\"approval\"><section class=\"pane\" aria-label=\"Diff of {s}\"><h4>Diff of configuration and values</h4>\
         <pre class=\"preview\" data-preview=\"{base}/diff?format=text\" tabindex=\"0\">Loading the diff…</pre></section>\
         <section class=\"pane\" aria-label=\"API Manager plan of {s}\"><h4>API Manager plan</h4>{plan}</section>",
        s = esc(&stage.name)
    );
    out.push_str("<div class=\"decide\">");
    if viewer.may_approve(defined) {
        out.push_str(&format!(
            "<form class=\"act\" data-action=\"{base}/approve\" data-done=\"Approved\">\
             <button type=\"submit\" class=\"go\">Approve</button><p class=\"result\" role=\"alert\"></p></form>"
        ));
    }
    if viewer.may_reject(defined) {
        out.push_str(&format!(
            "<form class=\"act\" data-action=\"{base}/reject\" data-done=\"Rejected\">\
             <label for=\"reason-{s}\">Reason</label><textarea id=\"reason-{s}\" name=\"reason\" rows=\"2\"></textarea>\
             <button type=\"submit\" class=\"danger\">Reject</button><p class=\"result\" role=\"alert\"></p></form>",
            s = esc(&stage.name)
        ));
    }
    if !viewer.may_approve(defined) && !viewer.may_reject(defined) {
        out.push_str("<p>You are not among this stage's approvers.</p>");
    }
    out + "</div></div>"
}

fn timeline(events: &[RecordedEvent]) -> String {
    let mut out = String::from(
        "<section id=\"timeline\" data-live><h2>Event timeline</h2><ol class=\"timeline\">",
    );
    for e in events {
        let ty = e
            .event
            .ty
            .trim_start_matches("io.gantry.")
            .trim_end_matches(".v1");
        let at = e
            .event
            .time
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        out.push_str(&format!(
            "<li>{} <span class=\"ev\">{}</span> {}</li>",
            time(&at),
            esc(ty),
            summary_of(&e.event.data)
        ));
    }
    out + "</ol></section>"
}

/// The facts of an event's data worth a glance, escaped.
fn summary_of(data: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    for key in [
        "stage", "user", "reason", "comment", "commit", "tag", "digest", "behind", "by_run",
    ] {
        let Some(v) = data.get(key).and_then(|v| v.as_str()) else {
            continue;
        };
        let shown = match key {
            "commit" => short_commit(v).to_owned(),
            "digest" => short_digest(v),
            "behind" | "by_run" => short_run(v).to_owned(),
            _ => v.to_owned(),
        };
        parts.push(format!("{key} <b>{}</b>", esc(&shown)));
    }
    parts.join(", ")
}
