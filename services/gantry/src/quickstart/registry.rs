//! The quickstart's registry: OCI image layouts on disk (`oci:<dir>`,
//! DESIGN.md 1.2). The parent image stands in for Axway's EMT gateway image,
//! which cannot be downloaded here: one layer with a placeholder start
//! script, so the stage images Gantry builds on it are real, inspectable
//! OCI images (`skopeo inspect oci:<dir>:<tag>`).

use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use gantry_imagebuild::manifest::{Descriptor, ImageManifest, ManifestFormat};
use gantry_imagebuild::{
    build_layer, ClientOptions, Digest, ImageClient, LayerOptions, StagePackage, Target,
};
use serde_json::json;

pub const BASE_TAG: &str = "7.7";

const START: &str = "#!/bin/sh\n# Placeholder for the API Gateway's EMT start script (gantry quickstart).\necho \"gantry quickstart: no API Gateway in this image\"\n";

/// Writes the parent image into the layout `dir`, tagged [`BASE_TAG`].
pub async fn write_base_image(dir: &Path) -> anyhow::Result<()> {
    let mut files = StagePackage::new("parent");
    files.add_file(
        "/opt/Axway/apigateway/posix/bin/start-emt",
        Bytes::from_static(START.as_bytes()),
        true,
    )?;
    let layer = build_layer(
        &files,
        LayerOptions {
            mtime: 0,
            compression: 6,
        },
    )?;
    let config = Bytes::from(serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Labels": { "org.opencontainers.image.title": "gantry quickstart parent" } },
        "rootfs": { "type": "layers", "diff_ids": [layer.diff_id.to_string()] },
        "history": [{ "created_by": "gantry quickstart" }]
    }))?);
    let format = ManifestFormat::Oci;
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(format.manifest_media_type().to_owned()),
        config: Descriptor::new(
            format.config_media_type(),
            Digest::sha256(&config),
            config.len() as u64,
        ),
        layers: vec![Descriptor::new(
            format.gzip_layer_media_type(),
            layer.digest.clone(),
            layer.size(),
        )],
        annotations: None,
    };
    let client = ImageClient::new(ClientOptions::default())?;
    let target = Target::parse(&format!("oci:{}", dir.display()))?;
    client.push_blob(&target, false, layer.data.clone()).await?;
    client.push_blob(&target, false, config).await?;
    client
        .push_manifest(
            &target,
            false,
            BASE_TAG,
            Bytes::from(serde_json::to_vec(&manifest)?),
            format.manifest_media_type(),
        )
        .await
        .with_context(|| format!("writing the parent image into {}", dir.display()))?;
    Ok(())
}
