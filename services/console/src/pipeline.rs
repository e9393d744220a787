//! `/pipelines/{name}`: the stages with what each runs now, freeze
//! windows, Pause/Resume and Roll back; Trigger; the stage matrix over
//! recent runs; each stage's deploy history.

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use gantry_api::Api;
use gantry_pipeline::{Pipeline, Stage};
use gantry_store::dora::Dora;
use gantry_store::projection::RunStage;

use crate::failed;
use crate::html::{esc, maybe_digest, run_link, seg, short_commit, short_run, status, time};
use crate::layout::{self, Frame};
use crate::overview::now_runs;
use crate::viewer::Viewer;

/// The DORA window shown, and compared with the one before it.
const DORA_DAYS: u32 = 30;

/// DORA's four keys per stage over the last [`DORA_DAYS`] days, each with
/// its trend against the [`DORA_DAYS`] days before, in words as well as
/// arrows (better or worse depends on the key).
fn dora(pipeline: &Pipeline, now: &[Dora], before: &[Dora]) -> String {
    let find = |keys: &[Dora], stage: &str| keys.iter().find(|k| k.stage == stage).cloned();
    let mut out = format!(
        "<section id=\"dora\" data-live><h2>Delivery, last {DORA_DAYS} days</h2>\
         <div class=\"scroll\"><table class=\"dora\"><caption>DORA keys per stage, \
         with the {DORA_DAYS} days before in brackets</caption><thead><tr>\
         <th scope=\"col\">Stage</th><th scope=\"col\">Deployments</th>\
         <th scope=\"col\">Lead time (median)</th><th scope=\"col\">Change failure rate</th>\
         <th scope=\"col\">Time to restore (median)</th></tr></thead><tbody>"
    );
    for stage in &pipeline.stages {
        let empty = || Dora::empty(&pipeline.name, &stage.name, DORA_DAYS);
        let k = find(now, &stage.name).unwrap_or_else(empty);
        let prev = find(before, &stage.name).unwrap_or_else(empty);
        let deployments = format!(
            "{} ({:.1}/day)",
            k.deployments, k.deployment_frequency_per_day
        );
        out.push_str(&format!(
            "<tr data-stage=\"{s}\"><th scope=\"row\">{s}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            trend(deployments, Some(k.deployments as f64), Some(prev.deployments as f64), prev.deployments.to_string(), Better::Higher),
            trend(seconds(k.lead_time_seconds.p50), k.lead_time_seconds.p50.map(|v| v as f64), prev.lead_time_seconds.p50.map(|v| v as f64), seconds(prev.lead_time_seconds.p50), Better::Lower),
            trend(percent(&k), (k.deployments + k.failed_changes > 0).then_some(k.change_failure_rate), (prev.deployments + prev.failed_changes > 0).then_some(prev.change_failure_rate), percent(&prev), Better::Lower),
            trend(seconds(k.time_to_restore_seconds.p50), k.time_to_restore_seconds.p50.map(|v| v as f64), prev.time_to_restore_seconds.p50.map(|v| v as f64), seconds(prev.time_to_restore_seconds.p50), Better::Lower),
            s = esc(&stage.name),
        ));
    }
    out.push_str("</tbody></table></div></section>");
    out
}

#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// A key's value, then its trend: an arrow, a word and the earlier value.
fn trend(
    shown: String,
    now: Option<f64>,
    before: Option<f64>,
    before_shown: String,
    better: Better,
) -> String {
    let word = match (now, before) {
        (Some(n), Some(b)) if n > b => match better {
            Better::Higher => "better",
            Better::Lower => "worse",
        },
        (Some(n), Some(b)) if n < b => match better {
            Better::Higher => "worse",
            Better::Lower => "better",
        },
        (Some(_), Some(_)) => "same",
        _ => "",
    };
    let arrow = match (now, before) {
        (Some(n), Some(b)) if n > b => "▲",
        (Some(n), Some(b)) if n < b => "▼",
        (Some(_), Some(_)) => "=",
        _ => "",
    };
    if word.is_empty() {
        return format!(
            "{}<span class=\"trend\"> (before: {})</span>",
            esc(&shown),
            esc(&before_shown)
        );
    }
    format!(
        "{}<span class=\"trend {word}\"> <span aria-hidden=\"true\">{arrow}</span> {word} (before: {})</span>",
        esc(&shown),
        esc(&before_shown)
    )
}

fn seconds(v: Option<i64>) -> String {
    match v {
        Some(s) => {
            gantry_pipeline::format_duration(std::time::Duration::from_secs(s.max(0) as u64))
        }
        None => "–".to_owned(),
    }
}

fn percent(k: &Dora) -> String {
    if k.deployments + k.failed_changes == 0 {
        return "–".to_owned();
    }
    format!(
        "{:.0}% ({} failed)",
        k.change_failure_rate * 100.0,
        k.failed_changes
    )
}

/// Runs in the stage matrix.
const MATRIX_RUNS: i64 = 20;
/// Earlier releases offered as rollback targets per stage.
const TARGETS: usize = 10;

pub async fn page(State(api): State<Api>, Path(name): Path<String>, viewer: Viewer) -> Response {
    let set = api.app.pipelines.get();
    let Some(pipeline) = set.get(&name) else {
        return layout::error(
            StatusCode::NOT_FOUND,
            Some(&viewer),
            &format!("No pipeline is named {name}."),
        );
    };
    let p = &api.app.projections;
    let now = chrono::Utc::now();
    let read = async {
        let head = api.app.store.head().await?;
        Ok::<_, gantry_store::StoreError>((
            head,
            p.released_stages(Some(&name)).await?,
            p.recent_run_stages(&name, MATRIX_RUNS).await?,
            p.promotions(&name).await?,
            (
                p.dora(Some(&name), None, DORA_DAYS, now).await?,
                p.dora(
                    Some(&name),
                    None,
                    DORA_DAYS,
                    now - chrono::Duration::days(DORA_DAYS.into()),
                )
                .await?,
            ),
        ))
    };
    let (head, released, recent, promotions, (dora_now, dora_before)) = match read.await {
        Ok(r) => r,
        Err(e) => return failed(&viewer, e),
    };
    let released: HashMap<&str, &RunStage> = released
        .iter()
        .map(|r| (r.stage.name.as_str(), r))
        .collect();
    let mut main = format!(
        "<h1>Pipeline {}</h1><p class=\"sub\">Follows <code>{}</code> on <code>{}</code></p>",
        esc(&pipeline.name),
        esc(&pipeline.source.repo),
        esc(&pipeline.source.branch)
    );
    if viewer.may_trigger(pipeline) {
        main.push_str(&format!(
            "<form class=\"act trigger\" data-action=\"/api/v1/runs\" data-fixed-pipeline=\"{}\" data-done=\"Run started\">\
             <label for=\"commit\">Commit</label>\
             <input id=\"commit\" name=\"commit\" placeholder=\"the head of {}\" autocomplete=\"off\" spellcheck=\"false\">\
             <button type=\"submit\">Trigger</button><p class=\"result\" role=\"alert\"></p></form>",
            esc(&pipeline.name),
            esc(&pipeline.source.branch)
        ));
    }
    main.push_str("<section id=\"pipeline-stages\" data-live data-pipeline=\"");
    main.push_str(&esc(&pipeline.name));
    main.push_str("\"><h2>Stages</h2><div class=\"cards\">");
    for stage in &pipeline.stages {
        let history: Vec<&RunStage> = promotions
            .iter()
            .filter(|r| r.stage.name == stage.name)
            .collect();
        main.push_str(&stage_card(
            pipeline,
            stage,
            released.get(stage.name.as_str()).copied(),
            &history,
            &viewer,
        ));
    }
    main.push_str("</div></section>");
    main.push_str(&matrix(pipeline, &recent));
    main.push_str(&dora(pipeline, &dora_now, &dora_before));
    main.push_str(&history(pipeline, &promotions, &released));
    layout::page(
        StatusCode::OK,
        Frame {
            title: &format!("Pipeline {}", pipeline.name),
            viewer: Some(&viewer),
            head,
            follow: &format!("pipeline={}", seg(&pipeline.name)),
        },
        &main,
    )
}

fn stage_card(
    pipeline: &Pipeline,
    stage: &Stage,
    current: Option<&RunStage>,
    history: &[&RunStage],
    viewer: &Viewer,
) -> String {
    let s = esc(&stage.name);
    let mut out =
        format!("<article class=\"card\" id=\"stage-{s}\" data-stage=\"{s}\"><h3>{s}</h3>");
    match current {
        Some(r) => out.push_str(&now_runs(r)),
        None => out.push_str("<p class=\"now none\">Nothing promoted yet</p>"),
    }
    if let Some(a) = &stage.approval {
        out.push_str(&format!(
            "<p>Needs {} approval(s) from {}{}</p>",
            a.required,
            if a.approvers.is_empty() {
                "distinct users".into()
            } else {
                esc(&a.approvers.join(", "))
            },
            if a.allow_self {
                ""
            } else {
                ", never the run's authors"
            }
        ));
    }
    if !stage.freeze.is_empty() {
        let now = chrono::Utc::now();
        out.push_str("<ul class=\"freezes\" aria-label=\"Freeze windows\">");
        for f in &stage.freeze {
            let at = |t: chrono::DateTime<chrono::Utc>| {
                time(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            };
            out.push_str(&format!(
                "<li>Freeze {} – {}{}</li>",
                at(f.from),
                at(f.to),
                if f.contains(now) {
                    " <span class=\"st st-frozen\">frozen now</span>"
                } else {
                    ""
                }
            ));
        }
        out.push_str("</ul>");
    }
    let steer = viewer.may_steer(pipeline, stage);
    let base = format!(
        "/api/v1/pipelines/{}/stages/{}",
        seg(&pipeline.name),
        seg(&stage.name)
    );
    // Whether the stage is paused comes from the pipelines API:
    // `console.js` says so under the heading and shows the one of the two
    // forms that applies.
    if steer {
        out.push_str(&format!(
            "<form class=\"act\" data-action=\"{base}/pause\" data-pause=\"pause\" data-done=\"Paused\">\
             <label for=\"pause-{s}\">Reason</label><input id=\"pause-{s}\" name=\"reason\" autocomplete=\"off\">\
             <button type=\"submit\">Pause</button><p class=\"result\" role=\"alert\"></p></form>\
             <form class=\"act\" data-action=\"{base}/resume\" data-pause=\"resume\" data-done=\"Resumed\" hidden>\
             <button type=\"submit\">Resume</button><p class=\"result\" role=\"alert\"></p></form>"
        ));
    }
    let current_run = current.map(|r| r.run.run_id.as_str());
    let mut seen = HashSet::new();
    let targets: Vec<&&RunStage> = history
        .iter()
        .filter(|r| Some(r.run.run_id.as_str()) != current_run && seen.insert(r.run.run_id.clone()))
        .take(TARGETS)
        .collect();
    if steer && current.is_some() && !targets.is_empty() {
        let mut options = String::new();
        for t in targets {
            options.push_str(&format!(
                "<option value=\"{}\" data-datetime=\"{}\">{} · run {} · promoted {}</option>",
                esc(&t.run.run_id),
                esc(&t.stage.updated_at),
                esc(short_commit(&t.run.commit)),
                esc(short_run(&t.run.run_id)),
                esc(&t.stage.updated_at),
            ));
        }
        out.push_str(&format!(
            "<form class=\"act\" data-action=\"{base}/rollback\" data-done=\"Rollback started\">\
             <label for=\"to-{s}\">Release</label><select id=\"to-{s}\" name=\"to\">{options}</select>\
             <label for=\"rb-{s}\">Reason</label><input id=\"rb-{s}\" name=\"reason\" autocomplete=\"off\">\
             <button type=\"submit\">Roll back</button><p class=\"result\" role=\"alert\"></p></form>"
        ));
    }
    out + "</article>"
}

/// Runs × stages, each cell the stage's status in that run.
fn matrix(pipeline: &Pipeline, recent: &[RunStage]) -> String {
    let mut out = String::from(
        "<section id=\"matrix\" data-live><h2>Recent runs</h2><div class=\"scroll\"><table class=\"matrix\"><thead><tr><th scope=\"col\">Run</th><th scope=\"col\">Started</th>",
    );
    for s in &pipeline.stages {
        out.push_str(&format!("<th scope=\"col\">{}</th>", esc(&s.name)));
    }
    out.push_str("<th scope=\"col\">Run status</th></tr></thead><tbody>");
    let mut i = 0;
    while i < recent.len() {
        let run = &recent[i].run;
        let cells: Vec<&RunStage> = recent[i..]
            .iter()
            .take_while(|r| r.run.run_id == run.run_id)
            .collect();
        i += cells.len();
        out.push_str(&format!(
            "<tr><th scope=\"row\">{}</th><td>{}</td>",
            run_link(&run.run_id, &run.commit),
            time(&run.created_at)
        ));
        for s in &pipeline.stages {
            match cells.iter().find(|c| c.stage.name == s.name) {
                Some(c) => out.push_str(&format!("<td>{}</td>", status(c.stage.status.as_str()))),
                None => out.push_str("<td class=\"none\">–</td>"),
            }
        }
        out.push_str(&format!("<td>{}</td></tr>", status(run.status.as_str())));
    }
    if recent.is_empty() {
        out.push_str("<tr><td colspan=\"99\">No runs yet.</td></tr>");
    }
    out + "</tbody></table></div></section>"
}

/// Each stage's promotions, newest first, the one it runs now marked.
fn history(
    pipeline: &Pipeline,
    promotions: &[RunStage],
    released: &HashMap<&str, &RunStage>,
) -> String {
    let mut out = String::from(
        "<section id=\"history\" data-live><h2>Deploy history</h2><div class=\"cards\">",
    );
    for s in &pipeline.stages {
        let current = released.get(s.name.as_str()).map(|r| r.run.run_id.as_str());
        out.push_str(&format!(
            "<article class=\"card\"><h3>{}</h3>",
            esc(&s.name)
        ));
        let mut items = String::new();
        for p in promotions.iter().filter(|p| p.stage.name == s.name) {
            let digest = maybe_digest(p.stage.image_digest.as_deref());
            items.push_str(&format!(
                "<li>{}{digest} {} {}{}</li>",
                run_link(&p.run.run_id, &p.run.commit),
                status(p.stage.status.as_str()),
                time(&p.stage.updated_at),
                if Some(p.run.run_id.as_str()) == current {
                    " <strong>runs now</strong>"
                } else {
                    ""
                }
            ));
        }
        if items.is_empty() {
            out.push_str("<p class=\"none\">Nothing promoted yet.</p></article>");
        } else {
            out.push_str(&format!("<ol class=\"history\">{items}</ol></article>"));
        }
    }
    out + "</div></section>"
}
