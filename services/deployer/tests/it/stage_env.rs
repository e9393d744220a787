//! A deploy command's environment is the stage's declared `env` (and the
//! release), not Gantry's; its output is masked with the stage's secrets and
//! those of every loaded pipeline. Alone in its test binary: the process's
//! set of secrets is global, and other tests loading pipelines replace it.

use gantry_deployer::Deployer;
use gantry_pipeline::{parse_str, PipelineSet};
use gantry_proto::events::{DeployCompleted, StageStarted};
use gantry_proto::{CloudEvent, EventName};
use gantry_runtime::runtime::Pipelines;
use gantry_store::consumer::Handler;

const RUN: &str = "0192f0c4-7d2e-7c4e-9f00-000000000002";

#[tokio::test]
async fn a_command_gets_the_stages_declared_env_and_nothing_else_of_gantrys() {
    let data = tempfile::tempdir().unwrap();
    let pw_file = data.path().join("db-password");
    std::fs::write(&pw_file, "declared-db-s3cret\n").unwrap();
    let other_file = data.path().join("other-token");
    std::fs::write(&other_file, "other-pipeline-s3cret-4711\n").unwrap();
    let envy = format!(
        r#"
name: envy
source:
  repo: https://git.example.com/apim/envy-config.git
gateway:
  format: yaml
  path: gateway/
stages:
  - name: test
    env:
      BACKEND_HOST: orders.test.internal
      DB_PASSWORD: file:{pw}
    deploy:
      command: ["/bin/sh", "-c", "echo host=$BACKEND_HOST; echo pw=$DB_PASSWORD; echo manifest=${{CARGO_MANIFEST_DIR:-unset}}; echo other=other-pipeline-s3cret-4711"]
"#,
        pw = pw_file.display()
    );
    // Another pipeline of this process, with a secret of its own.
    let other = format!(
        r#"
name: other
source:
  repo: https://git.example.com/apim/other-config.git
  token: file:{token}
gateway:
  format: yaml
  path: gateway/
stages:
  - name: test
"#,
        token = other_file.display()
    );
    let mut set = PipelineSet::new();
    for (file, yaml) in [("envy.yaml", &envy), ("other.yaml", &other)] {
        set.insert(
            parse_str(file, yaml).unwrap_or_else(|e| panic!("{e}")),
            None,
        );
    }
    let ctx = gantry_runtime::WorkerContext::local(Pipelines::new(set), data.path())
        .await
        .unwrap();
    let deployer = Deployer::new(&ctx);
    assert!(
        std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
        "cargo sets it for tests"
    );

    let started = StageStarted {
        stage: "test".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        image: None,
        digest: None,
        rollback: false,
    };
    let cause = CloudEvent::new("conductor", "envy", Some(RUN), &started);
    let results = deployer.handle(&cause).await.unwrap();
    let e = results.into_iter().next().unwrap().events.remove(0);
    assert_eq!(e.ty, EventName::DeployCompleted.type_name(), "{:?}", e.data);
    let done: DeployCompleted = e.decode().unwrap();
    let output = done.output.unwrap();
    assert!(output.contains("host=orders.test.internal\n"), "{output}");
    assert!(output.contains("pw=***\n"), "{output}");
    assert!(output.contains("manifest=unset\n"), "{output}");
    assert!(output.contains("other=***\n"), "{output}");
    assert!(!output.contains("s3cret"), "{output}");
}
