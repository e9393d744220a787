//! # gantry-imagebuild
//!
//! Per-stage EMT images without a Docker daemon. Gantry assembles each
//! stage's image straight from registry content: the parent image
//! (`image.base`) keeps all its layers untouched, one small layer holding the
//! stage's configuration is added (a FED at `/merge/fed`, a merge directory
//! at `/merge/apigateway/...`, a YAML package at a configurable path), and
//! the parent's config gets Gantry's labels. Pushing such an image costs one
//! small layer upload, the config and the manifest: parent layers already in
//! the target are skipped and those in another repository of the same
//! registry are mounted.
//!
//! ```no_run
//! # async fn demo(package_fed: Vec<u8>) -> Result<(), gantry_imagebuild::ImageError> {
//! use gantry_imagebuild::*;
//! let client = ImageClient::new(ClientOptions::default())?;
//! let meta = StageMeta {
//!     pipeline: "banking".into(),
//!     stage: "test".into(),
//!     commit: "0123456789abcdef0123456789abcdef01234567".into(),
//!     commit_time: chrono::Utc::now(),
//!     source: "https://git.example.com/apim/banking-config.git".into(),
//! };
//! let package = StagePackage::new("sha256:...").with_fed(package_fed)?;
//! let req = StageImageRequest::new(
//!     "registry.example.com/axway/apigw-emt:7.7.20240830",
//!     "registry.example.com/apim/banking-gateway",
//!     meta,
//!     package,
//! );
//! let pushed = client.build_and_push(&req).await?;
//! println!("{} {}", pushed.tagged(), pushed.digest);
//! # Ok(()) }
//! ```
//!
//! Modules: [`reference`] (image references, `oci:` forms, loopback rule),
//! [`auth`] (credentials, Docker config.json), [`client`] (options, retries),
//! `registry` (the distribution API), [`manifest`] (media types, platform
//! selection), [`layer`] (deterministic layers), [`assemble`] (config and
//! manifest), [`push`] (the push protocol), [`layout`] (OCI layouts).

pub mod assemble;
pub mod auth;
pub mod client;
pub mod digest;
pub mod error;
pub mod layer;
pub mod layout;
pub mod manifest;
pub mod push;
pub mod reference;
mod registry;
pub mod resolve;
pub mod service;

pub use assemble::{assemble, AssembledImage, StageMeta};
pub use auth::{CredentialStore, Credentials};
pub use client::{ClientOptions, ImageClient, RetryPolicy};
pub use digest::Digest;
pub use error::{ImageError, Result};
pub use layer::{build_layer, Layer, LayerOptions, StagePackage, YamlPlacement};
pub use layout::OciLayout;
pub use manifest::{Descriptor, ImageIndex, ImageManifest, ManifestFormat, Platform};
pub use push::{BlobOutcome, BlobPush, PushResult, StageImageRequest};
pub use reference::{ImageRef, ImageSource, Target};
pub use resolve::ResolvedImage;
