//! `/`: every pipeline as a row of its stages: what each runs now (run,
//! commit, image digest, since when, who approved), what waits for it and
//! why, and the latest run's status.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use gantry_api::Api;
use gantry_pipeline::Pipeline;
use gantry_store::projection::{RunStage, RunSummary};

use crate::failed;
use crate::html::{esc, maybe_digest, run_link, seg, status, time};
use crate::layout::{self, Frame};
use crate::viewer::Viewer;
use crate::why::{approvers_given, why};

pub async fn page(State(api): State<Api>, viewer: Viewer) -> Response {
    let p = &api.app.projections;
    let read = async {
        let head = api.app.store.head().await?;
        Ok::<_, gantry_store::StoreError>((
            head,
            p.released_stages(None).await?,
            p.in_flight_stages(None).await?,
            p.latest_runs().await?,
        ))
    };
    let (head, released, in_flight, latest) = match read.await {
        Ok(r) => r,
        Err(e) => return failed(&viewer, e),
    };
    let key = |r: &RunStage| (r.run.pipeline.clone(), r.stage.name.clone());
    let released: HashMap<_, _> = released.into_iter().map(|r| (key(&r), r)).collect();
    let mut waiting: HashMap<(String, String), Vec<RunStage>> = HashMap::new();
    for r in in_flight {
        waiting.entry(key(&r)).or_default().push(r);
    }
    let latest: HashMap<_, _> = latest
        .into_iter()
        .map(|r| (r.pipeline.clone(), r))
        .collect();

    let set = api.app.pipelines.get();
    let mut pipelines: Vec<&Pipeline> = set.iter().collect();
    pipelines.sort_by(|a, b| a.name.cmp(&b.name));
    let mut main = String::from("<h1>Pipelines</h1><section id=\"overview\" data-live>");
    if pipelines.is_empty() {
        main.push_str("<p class=\"panel\">No pipelines are defined yet: add one to the pipelines directory.</p>");
    }
    for pipeline in pipelines {
        main.push_str(&row(
            pipeline,
            latest.get(&pipeline.name),
            &released,
            &waiting,
        ));
    }
    main.push_str("</section>");
    layout::page(
        StatusCode::OK,
        Frame {
            title: "Pipelines",
            viewer: Some(&viewer),
            head,
            follow: "",
        },
        &main,
    )
}

fn row(
    pipeline: &Pipeline,
    latest: Option<&RunSummary>,
    released: &HashMap<(String, String), RunStage>,
    waiting: &HashMap<(String, String), Vec<RunStage>>,
) -> String {
    let name = &pipeline.name;
    let latest = match latest {
        Some(r) => format!(
            "Latest run {} {}",
            run_link(&r.run_id, &r.commit),
            status(r.status.as_str())
        ),
        None => "No runs yet".into(),
    };
    let mut out = format!(
        "<article class=\"pipe\" data-pipeline=\"{n}\"><div class=\"pipe-h\"><h2><a href=\"/pipelines/{u}\">{n}</a></h2>\
         <span class=\"latest\">{latest}</span></div><ol class=\"stages\">",
        n = esc(name),
        u = seg(name),
    );
    for stage in &pipeline.stages {
        let k = (name.clone(), stage.name.clone());
        out.push_str(&format!(
            "<li class=\"stage\" data-stage=\"{s}\"><h3>{s}</h3>",
            s = esc(&stage.name)
        ));
        match released.get(&k) {
            Some(r) => out.push_str(&now_runs(r)),
            None => out.push_str("<p class=\"now none\">Nothing promoted yet</p>"),
        }
        if let Some(list) = waiting.get(&k) {
            out.push_str("<ul class=\"waits\">");
            for w in list {
                out.push_str(&format!(
                    "<li>{} {} {}</li>",
                    run_link(&w.run.run_id, &w.run.commit),
                    status(w.stage.status.as_str()),
                    why(&w.stage, Some(stage))
                ));
            }
            out.push_str("</ul>");
        }
        out.push_str("</li>");
    }
    out.push_str("</ol></article>");
    out
}

/// What a stage runs now.
pub(crate) fn now_runs(r: &RunStage) -> String {
    let digest = maybe_digest(r.stage.image_digest.as_deref());
    let approved = approvers_given(&r.stage);
    let approved = if approved.is_empty() {
        String::new()
    } else {
        format!(" · approved by {}", approved.join(", "))
    };
    format!(
        "<p class=\"now\">Runs {}{digest} since {}{approved}</p>",
        run_link(&r.run.run_id, &r.run.commit),
        time(&r.stage.updated_at),
    )
}
