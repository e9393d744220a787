//! The quickstart's two repositories, written with libgit2 (no `git`
//! needed): the configuration repository (a working tree people edit) and
//! the bare GitOps repository Gantry deploys into.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use git2::{Oid, Repository, RepositoryInitOptions, Signature};

use super::files::Holder;

fn init(path: &Path, bare: bool) -> anyhow::Result<Repository> {
    let mut opts = RepositoryInitOptions::new();
    opts.bare(bare).initial_head("main");
    Repository::init_opts(path, &opts)
        .with_context(|| format!("creating the git repository {}", path.display()))
}

fn signature(who: &Holder) -> anyhow::Result<Signature<'static>> {
    Signature::now(who.user, who.email).context("a commit signature")
}

/// Commits the working tree's files (all of them, as `git add -A`) on
/// `main` as `who`; returns the commit id.
pub fn commit_all(repo: &Repository, who: &Holder, message: &str) -> anyhow::Result<String> {
    let mut index = repo.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let parent = match repo.head() {
        Ok(head) => Some(head.peel_to_commit()?),
        Err(_) => None,
    };
    let sig = signature(who)?;
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let oid = repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)?;
    Ok(oid.to_string())
}

/// A new configuration repository at `path` holding `files`, committed by `who`.
pub fn create_config(path: &Path, files: &[(&str, &str)], who: &Holder) -> anyhow::Result<String> {
    let repo = init(path, false)?;
    for (rel, text) in files {
        let file = path.join(rel);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    commit_all(
        &repo,
        who,
        "Gateway configuration: Masterdata connection, Petstore API",
    )
}

/// A bare repository at `path` whose `main` holds `files` in one commit.
pub fn create_bare(path: &Path, files: &[(String, String)], who: &Holder) -> anyhow::Result<()> {
    let repo = init(path, true)?;
    let tree = tree_of(&repo, files)?;
    let tree = repo.find_tree(tree)?;
    let sig = signature(who)?;
    repo.commit(
        Some("refs/heads/main"),
        &sig,
        &sig,
        "Deployments of the quickstart gateway",
        &tree,
        &[],
    )?;
    Ok(())
}

/// Writes the tree of `files` (paths with `/`) into `repo`.
fn tree_of(repo: &Repository, files: &[(String, String)]) -> anyhow::Result<Oid> {
    let mut here: Vec<(&str, &str)> = Vec::new();
    let mut below: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    for (path, text) in files {
        match path.split_once('/') {
            Some((dir, rest)) => below
                .entry(dir)
                .or_default()
                .push((rest.to_owned(), text.clone())),
            None => here.push((path.as_str(), text.as_str())),
        }
    }
    let mut builder = repo.treebuilder(None)?;
    for (name, text) in here {
        let blob = repo.blob(text.as_bytes())?;
        builder.insert(name, blob, 0o100644)?;
    }
    for (dir, files) in below {
        let sub = tree_of(repo, &files)?;
        builder.insert(dir, sub, 0o040000)?;
    }
    Ok(builder.write()?)
}
