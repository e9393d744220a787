//! Who looks at a page, and what they may do: the same rules the API's
//! routes apply ([`gantry_api::member`]), so a button shows only where its
//! request would be let through (the API still decides: an author sees
//! Approve and is told why it was refused).

use axum::http::HeaderMap;
use gantry_api::{member, Api};
use gantry_pipeline::{Pipeline, Stage};
use gantry_runtime::auth::Identity;

/// The viewer of a page.
pub enum Viewer {
    /// No API tokens are configured (loopback only): nobody is told apart.
    Anonymous,
    /// Signed in through a session.
    Signed(Identity),
}

impl Viewer {
    /// The page's viewer; `None` when tokens are configured and the request
    /// has no live session (the page asks to sign in).
    pub fn of(api: &Api, headers: &HeaderMap) -> Option<Viewer> {
        if api.tokens.is_none() {
            return Some(Viewer::Anonymous);
        }
        api.session_identity(headers).map(Viewer::Signed)
    }

    fn is(&self, groups: &[String]) -> bool {
        match self {
            Viewer::Anonymous => true,
            Viewer::Signed(id) => member(id, groups),
        }
    }

    /// Approve a stage: an approver; without tokens only a stage that needs
    /// no identities (one approval, no named approvers).
    pub fn may_approve(&self, stage: &Stage) -> bool {
        let Some(a) = &stage.approval else {
            return false;
        };
        match self {
            Viewer::Anonymous => a.approvers.is_empty() && a.required <= 1,
            Viewer::Signed(id) => member(id, &a.approvers),
        }
    }

    /// Reject a stage's promotion: an approver.
    pub fn may_reject(&self, stage: &Stage) -> bool {
        stage
            .approval
            .as_ref()
            .is_some_and(|a| self.is(&a.approvers))
    }

    /// Cancel runs: `access.operate`, or anyone.
    pub fn may_operate(&self, pipeline: &Pipeline) -> bool {
        self.is(&operators(pipeline).unwrap_or_default())
    }

    /// Roll a stage back, pause or resume it: `access.operate` when set,
    /// else the stage's approvers, else anyone.
    pub fn may_steer(&self, pipeline: &Pipeline, stage: &Stage) -> bool {
        let approvers = stage
            .approval
            .as_ref()
            .map(|a| a.approvers.clone())
            .unwrap_or_default();
        self.is(&operators(pipeline).unwrap_or(approvers))
    }

    /// Start runs by hand: `access.trigger` when set (an empty list lets
    /// nobody), else anyone; without tokens the API checks nothing.
    pub fn may_trigger(&self, pipeline: &Pipeline) -> bool {
        let Viewer::Signed(id) = self else {
            return true;
        };
        match pipeline.access.as_ref().and_then(|a| a.trigger.as_ref()) {
            Some(allowed) => !allowed.is_empty() && member(id, allowed),
            None => true,
        }
    }
}

fn operators(pipeline: &Pipeline) -> Option<Vec<String>> {
    pipeline.access.as_ref().and_then(|a| a.operate.clone())
}
