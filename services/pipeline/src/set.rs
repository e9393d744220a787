//! The loaded pipelines, by name, and which of them a push belongs to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::model::Pipeline;
use super::repo_url::normalize_repo_url;

/// Pipelines keyed by name (iteration is in name order).
#[derive(Debug, Clone, Default)]
pub struct PipelineSet {
    pipelines: BTreeMap<String, Loaded>,
}

#[derive(Debug, Clone)]
struct Loaded {
    pipeline: Pipeline,
    file: Option<PathBuf>,
}

impl PipelineSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a pipeline; returns the one it replaced. `file` is
    /// where it was loaded from, when it was.
    pub fn insert(&mut self, pipeline: Pipeline, file: Option<PathBuf>) -> Option<Pipeline> {
        self.pipelines
            .insert(pipeline.name.clone(), Loaded { pipeline, file })
            .map(|old| old.pipeline)
    }

    pub fn get(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.get(name).map(|l| &l.pipeline)
    }

    /// The file a pipeline was loaded from.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.pipelines.get(name).and_then(|l| l.file.as_deref())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pipeline> + '_ {
        self.pipelines.values().map(|l| &l.pipeline)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.pipelines.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.pipelines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pipelines.is_empty()
    }

    /// The pipelines a push belongs to (DESIGN.md 1.5): the pushed branch is
    /// the pipeline's `source.branch`, and one of the payload's repository
    /// URLs equals `source.repo` after [`normalize_repo_url`], or the
    /// payload's full name (`acme/banking-config`, compared
    /// case-insensitively as forges do) equals `source.webhook_repo`.
    ///
    /// `branch` may be the short name or the full ref; other refs
    /// (`refs/tags/...`) match nothing.
    pub fn matching_push(
        &self,
        repo_urls: &[&str],
        full_name: Option<&str>,
        branch: &str,
    ) -> Vec<&Pipeline> {
        let branch = match branch.strip_prefix("refs/heads/") {
            Some(short) => short,
            None if branch.starts_with("refs/") => return Vec::new(),
            None => branch,
        };
        self.following_repo(repo_urls, full_name)
            .into_iter()
            .filter(|p| p.source.branch == branch)
            .collect()
    }

    /// The pipelines that follow the pushed repository, on whatever branch:
    /// the candidates whose webhook secrets may verify a delivery.
    pub fn following_repo(&self, repo_urls: &[&str], full_name: Option<&str>) -> Vec<&Pipeline> {
        let urls: Vec<String> = repo_urls
            .iter()
            .map(|u| normalize_repo_url(u))
            .filter(|u| !u.is_empty())
            .collect();
        let full_name = full_name.map(normalize_full_name).filter(|n| !n.is_empty());

        self.iter()
            .filter(|p| {
                let repo = normalize_repo_url(&p.source.repo);
                let by_url = !repo.is_empty() && urls.contains(&repo);
                let by_name = match (&full_name, &p.source.webhook_repo) {
                    (Some(pushed), Some(ours)) => {
                        pushed.eq_ignore_ascii_case(normalize_full_name(ours))
                    }
                    _ => false,
                };
                by_url || by_name
            })
            .collect()
    }
}

fn normalize_full_name(name: &str) -> &str {
    let name = name.trim().trim_matches('/');
    name.strip_suffix(".git").unwrap_or(name)
}

impl FromIterator<Pipeline> for PipelineSet {
    fn from_iter<I: IntoIterator<Item = Pipeline>>(iter: I) -> Self {
        let mut set = PipelineSet::new();
        for p in iter {
            set.insert(p, None);
        }
        set
    }
}

impl<'a> IntoIterator for &'a PipelineSet {
    type Item = &'a Pipeline;
    type IntoIter = Box<dyn Iterator<Item = &'a Pipeline> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}
