//! The real sample project validates and packages as it is; a copy with one
//! reference broken is reported with that file and line.

use gantry_envgen::{
    package_yaml, validate_project, MapEnv, Project, RenderMode, StageValues, ValidateOptions,
    ValuesSource,
};
use serde_json::json;

#[test]
fn real_project_validates_with_zero_diagnostics() {
    let root = crate::common::fixture_project();
    let project = Project::load(&root).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        project.entity_file_count() > 600,
        "{}",
        project.entity_file_count()
    );
    let env = MapEnv::empty();
    let values = project.stage_values(None, &env);
    let report = project.validate(&values, &env, &ValidateOptions::default());
    assert!(
        report.errors.is_empty(),
        "{}",
        crate::common::show(&report.errors)
    );
    // The certificates the sample's CI adds per stage are the only loose ends.
    assert_eq!(
        report.warnings.len(),
        10,
        "{}",
        crate::common::show(&report.warnings)
    );
    assert!(report.warnings.iter().all(|w| w
        .message
        .contains("/Environment Configuration/Certificate Store/example-")));
    // Strict mode names them as errors, with file and line.
    let strict = project.validate(&values, &env, &ValidateOptions::strict());
    assert_eq!(strict.errors.len(), 10);
    let first = &strict.errors[0];
    assert_eq!(first.file.as_deref(), Some("Environment Configuration/Service/API Manager Traffic/Portal Traffic HTTPS Interface.yaml"));
    assert!(first.line.is_some() && first.column.is_some());

    // The convenience entry point agrees.
    assert!(validate_project(&root, &json!({}), &env).is_empty());
}

#[test]
fn real_project_packages_in_both_modes_deterministically() {
    let root = crate::common::fixture_project();
    let project = Project::load(&root).unwrap_or_else(|e| panic!("{e}"));
    let env = MapEnv::empty();
    let overlay = "External_Connections:\n  Database_Connections:\n    Masterdata:\n      url: jdbc:mysql://prod-db:3306/masterdata\n";
    let values = project.stage_values(
        Some(ValuesSource {
            name: "environments/prod.yaml",
            text: overlay,
        }),
        &env,
    );
    let opts = ValidateOptions::default();

    let a = package_yaml(&project, &values, &env, RenderMode::Placeholders, &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    let b = package_yaml(&project, &values, &env, RenderMode::Placeholders, &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.bytes, b.bytes);
    assert_eq!(a.files as usize, project.file_count());
    assert_eq!(a.warnings.len(), 10);

    // Loading the project again (another checkout of the same commit) gives the same bytes.
    let again = Project::load(&root).unwrap_or_else(|e| panic!("{e}"));
    let c = package_yaml(&again, &values, &env, RenderMode::Placeholders, &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.digest, c.digest);

    let r1 = package_yaml(&project, &values, &env, RenderMode::Rendered, &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    let r2 = package_yaml(&project, &values, &env, RenderMode::Rendered, &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r1.digest, r2.digest);
    assert_ne!(r1.digest, a.digest);
    assert_eq!(
        r1.files as usize,
        project.file_count() - 1,
        "values.yaml is left out when rendered"
    );

    // Other values, other digest.
    let other = project.stage_values(None, &env);
    let d = package_yaml(&project, &other, &env, RenderMode::Placeholders, &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(a.digest, d.digest);
    assert_ne!(a.values_digest, d.values_digest);
}

#[test]
fn rendered_project_is_valid_yaml_and_holds_the_values() {
    let root = crate::common::fixture_project();
    let project = Project::load(&root).unwrap_or_else(|e| panic!("{e}"));
    let env = MapEnv::empty();
    let overlay = "Policies:\n  Demo:\n    Demo_Service:\n      Set_name:\n        attributeValue: \"Prod 'World'\"\n";
    let values = project.stage_values(
        Some(ValuesSource {
            name: "environments/prod.yaml",
            text: overlay,
        }),
        &env,
    );
    let files = project
        .render(&values, &env, &ValidateOptions::default())
        .unwrap_or_else(|r| panic!("{}", crate::common::show(&r.errors)));
    let demo = files
        .iter()
        .find(|f| f.path == "Policies/Demo/Demo Service.yaml")
        .unwrap_or_else(|| panic!("no demo"));
    let text = String::from_utf8_lossy(&demo.contents);
    assert!(text.contains("attributeValue: 'Prod ''World'''"), "{text}");
    assert!(
        text.contains(r#"body: "{\"message\": \"Hello ${name}\"}\n""#),
        "{text}"
    );
    assert!(!text.contains("{{"));
    // The rendered tree validates again as a project of its own.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for f in &files {
        let p = dir.path().join(&f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(&p, &f.contents).unwrap_or_else(|e| panic!("{e}"));
    }
    let rendered = Project::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let report = rendered.validate(&StageValues::empty(), &env, &ValidateOptions::default());
    assert!(
        report.errors.is_empty(),
        "{}",
        crate::common::show(&report.errors)
    );
    let html = files
        .iter()
        .find(|f| f.path == "Policies/Policy Library/Return HTTP Error 401(colon) Unauthorize-1433015977.yaml")
        .unwrap_or_else(|| panic!("no 401 policy"));
    assert!(String::from_utf8_lossy(&html.contents).contains("doesn't understand"));
}

#[test]
fn broken_reference_in_a_copy_is_reported_with_file_and_line() {
    let root = crate::common::fixture_project();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    crate::common::copy_tree(&root, dir.path());
    let file = dir.path().join("Policies/Demo/Demo Service.yaml");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
    // Line 23 is `    success: ../Add HTTP header to response`.
    let line = text
        .lines()
        .position(|l| l.contains("success: ../Add HTTP header to response"))
        .map(|i| i + 1);
    assert_eq!(line, Some(23));
    std::fs::write(
        &file,
        text.replace(
            "success: ../Add HTTP header to response",
            "success: ../Add HTTP header to reponse",
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let errors = validate_project(dir.path(), &json!({}), &MapEnv::empty());
    assert_eq!(errors.len(), 1, "{}", crate::common::show(&errors));
    let d = &errors[0];
    assert_eq!(d.file.as_deref(), Some("Policies/Demo/Demo Service.yaml"));
    assert_eq!(d.line, Some(23));
    assert_eq!(d.column, Some(14));
    assert_eq!(d.field.as_deref(), Some("routing.success"));
    assert!(
        d.message.contains("`../Add HTTP header to reponse`"),
        "{}",
        d.message
    );
    assert!(
        d.message
            .contains("/Policies/Demo/Demo Service/Add HTTP header to reponse"),
        "{}",
        d.message
    );

    let project = Project::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let env = MapEnv::empty();
    let values = project.stage_values(None, &env);
    let err = package_yaml(
        &project,
        &values,
        &env,
        RenderMode::Placeholders,
        &ValidateOptions::default(),
    );
    assert!(matches!(err, Err(gantry_envgen::PackageError::Invalid(r)) if r.errors.len() == 1));
}
