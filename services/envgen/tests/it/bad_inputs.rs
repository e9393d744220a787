//! Each kind of problem is reported with its file, line and column — and all
//! of them at once, not just the first.

use gantry_envgen::{Diagnostic, MapEnv, Project, StageValues, ValidateOptions, ValuesSource};

const TYPES: &[(&str, &str)] = &[
    ("META-INF/types/Entity.yaml", "---\nname: Entity\nabstract: true\n"),
    ("META-INF/types/Entity/Root.yaml", "---\nname: Root\nfields:\n  name: {type: string}\n"),
    ("META-INF/types/Entity/CircuitContainer.yaml", "---\nname: CircuitContainer\nfields:\n  name: {type: string}\nkeyFields: [name]\n"),
    (
        "META-INF/types/Entity/FilterCircuit.yaml",
        "---\nname: FilterCircuit\nfields:\n  name: {type: string}\n  start: {type: '@Filter'}\n  category: {type: '@Category'}\nkeyFields: [name]\n",
    ),
    (
        "META-INF/types/Entity/Filter.yaml",
        "---\nname: Filter\nabstract: true\nfields:\n  name: {type: string}\n  successNode: {type: '@Filter'}\nkeyFields: [name]\n",
    ),
    (
        "META-INF/types/Entity/Filter/ChangeMessageFilter.yaml",
        "---\nname: ChangeMessageFilter\nfields:\n  body: {type: string}\n  outputContentType: {type: string}\n",
    ),
    (
        "META-INF/types/Entity/Filter/CacheFilter.yaml",
        "---\nname: CacheFilter\nfields:\n  cache: {type: '@Cache'}\n",
    ),
    ("META-INF/types/Entity/CacheManager.yaml", "---\nname: CacheManager\nfields:\n  name: {type: string}\n"),
    ("META-INF/types/Entity/Cache.yaml", "---\nname: Cache\nfields:\n  name: {type: string}\n  size: {type: integer}\n"),
    ("META-INF/types/Entity/CategoryGroup.yaml", "---\nname: CategoryGroup\nfields:\n  name: {type: string}\n"),
    ("META-INF/types/Entity/Category.yaml", "---\nname: Category\nfields:\n  name: {type: string}\n"),
    (
        "META-INF/types/Entity/DbConnection.yaml",
        "---\nname: DbConnection\nfields:\n  name: {type: string}\n  url: {type: string}\n  password: {type: encrypted}\n",
    ),
];

const BASE: &[(&str, &str)] = &[
    ("_parent.yaml", "---\ntype: Root\nfields:\n  name: System Components\n"),
    ("values.yaml", "---\ndb:\n  url: jdbc:mysql://localhost/db\n  password: Y2hhbmdlbWU=\nfeature:\n  on: true\n"),
    ("Libraries/Cache Manager/_parent.yaml", "---\ntype: CacheManager\nfields:\n  name: Cache Manager\n"),
    ("Libraries/Cache Manager/Sessions.yaml", "---\ntype: Cache\nfields:\n  name: Sessions\n  size: 10\n"),
    (
        "System/Filter Categories.yaml",
        "---\ntype: CategoryGroup\nfields:\n  name: Filter Categories\nchildren:\n- type: Category\n  fields:\n    name: misc\n",
    ),
    ("External Connections/Database Connections/Main.yaml", "---\ntype: DbConnection\nfields:\n  name: Main\n  url: '{{ db.url }}'\n  password: '{{db.password}}'\n"),
    ("Policies/Demo/_parent.yaml", "---\ntype: CircuitContainer\nfields:\n  name: Demo\n"),
    (
        "Policies/Demo/Hello.yaml",
        "---\ntype: FilterCircuit\nfields:\n  name: Hello\n  start: ./Set Message\n  category: /System/(CategoryGroup)Filter Categories/(Category)misc\nchildren:\n- type: ChangeMessageFilter\n  fields:\n    name: Set Message\n    outputContentType: application/json\n    body#ref: Hello-Files/message.json\n  routing:\n    success: ../Cache It\n- type: CacheFilter\n  fields:\n    name: Cache It\n    cache: /Libraries/Cache Manager/Sessions\n{{#if feature.on}}\n    successNode: ../Set Message\n{{/if}}\n",
    ),
    ("Policies/Demo/Hello-Files/message.json", "{\"hello\": \"world\"}\n"),
];

/// A valid project with `changes` applied on top (a `None` content deletes the file).
fn project_with(changes: &[(&str, Option<&str>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    crate::common::write_files(dir.path(), TYPES);
    crate::common::write_files(dir.path(), BASE);
    for (rel, content) in changes {
        match content {
            Some(c) => crate::common::write_files(dir.path(), &[(rel, c)]),
            None => std::fs::remove_file(dir.path().join(rel))
                .unwrap_or_else(|e| panic!("rm {rel}: {e}")),
        }
    }
    dir
}

fn validate(dir: &tempfile::TempDir, env: &MapEnv, overlay: Option<&str>) -> Vec<Diagnostic> {
    let project = Project::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let values = project.stage_values(
        overlay.map(|text| ValuesSource {
            name: "environments/test.yaml",
            text,
        }),
        env,
    );
    project
        .validate(&values, env, &ValidateOptions::strict())
        .errors
}

/// Exactly one diagnostic, at `file:line:column`, whose message contains `needle`.
fn expect_one(
    changes: &[(&str, Option<&str>)],
    file: &str,
    line: u32,
    column: u32,
    needle: &str,
) -> Diagnostic {
    let dir = project_with(changes);
    let diags = validate(&dir, &MapEnv::empty(), None);
    assert_eq!(diags.len(), 1, "{}", crate::common::show(&diags));
    let d = diags[0].clone();
    assert_eq!(
        (d.file.as_deref(), d.line, d.column),
        (Some(file), Some(line), Some(column)),
        "{}",
        crate::common::show(&diags)
    );
    assert!(
        d.message.contains(needle),
        "{:?} does not contain {needle:?}",
        d.message
    );
    d
}

const HELLO: &str = "Policies/Demo/Hello.yaml";
const MAIN: &str = "External Connections/Database Connections/Main.yaml";

#[test]
fn the_base_project_is_valid() {
    let dir = project_with(&[]);
    let diags = validate(&dir, &MapEnv::empty(), None);
    assert!(diags.is_empty(), "{}", crate::common::show(&diags));
}

#[test]
fn undefined_value_path() {
    let d = expect_one(
        &[(
            MAIN,
            Some("---\ntype: DbConnection\nfields:\n  name: Main\n  url: '{{ db.nope }}'\n"),
        )],
        MAIN,
        5,
        12,
        "`db.nope` is not defined in values.yaml or the stage overlay",
    );
    assert_eq!(d.field.as_deref(), Some("{{ db.nope }}"));
}

#[test]
fn env_without_default_is_unset() {
    expect_one(
        &[(
            MAIN,
            Some("---\ntype: DbConnection\nfields:\n  name: Main\n  url: \"{{env 'DB_URL'}}\"\n"),
        )],
        MAIN,
        5,
        11,
        "environment variable `DB_URL` is not set",
    );
}

#[test]
fn unterminated_placeholder() {
    expect_one(
        &[(
            MAIN,
            Some("---\ntype: DbConnection\nfields:\n  name: Main\n  url: '{{ db.url '\n"),
        )],
        MAIN,
        5,
        9,
        "unterminated `{{`",
    );
}

#[test]
fn unmatched_close_tag() {
    expect_one(
        &[(
            MAIN,
            Some("---\ntype: DbConnection\nfields:\n  name: Main\n{{/if}}\n"),
        )],
        MAIN,
        5,
        1,
        "`{{/if}}` has no matching opening",
    );
}

#[test]
fn unknown_helper() {
    expect_one(
        &[(
            MAIN,
            Some("---\ntype: DbConnection\nfields:\n  name: Main\n  url: '{{ lookup \"db\" }}'\n"),
        )],
        MAIN,
        5,
        12,
        "unknown helper `lookup`",
    );
}

#[test]
fn yaml_syntax_error() {
    expect_one(
        &[(
            MAIN,
            Some("---\ntype: DbConnection\nfields:\n  name: Main\n   url: x\n"),
        )],
        MAIN,
        5,
        7,
        "invalid YAML",
    );
}

#[test]
fn yaml_broken_only_after_rendering() {
    let d = expect_one(
        &[(
            "Policies/Demo/Hello.yaml",
            Some("---\ntype: FilterCircuit\nfields:\n  name: Hello\n{{#unless feature.on}}\n  start: ./Set Message\n{{else}}\n start: ./Set Message\n{{/unless}}\n"),
        )],
        HELLO,
        8,
        2,
        "after placeholders were filled in",
    );
    assert!(d.message.starts_with("invalid YAML"));
}

#[test]
fn broken_absolute_reference() {
    let text = BASE[7].1.replace(
        "/Libraries/Cache Manager/Sessions",
        "/Libraries/Cache Manager/Sesions",
    );
    let d = expect_one(
        &[(HELLO, Some(&text))],
        HELLO,
        18,
        12,
        "`/Libraries/Cache Manager/Sesions` points at no entity",
    );
    assert_eq!(d.field.as_deref(), Some("fields.cache"));
}

#[test]
fn broken_relative_reference() {
    let text = BASE[7]
        .1
        .replace("start: ./Set Message", "start: ./Set Mesage");
    expect_one(
        &[(HELLO, Some(&text))],
        HELLO,
        5,
        10,
        "`./Set Mesage` (`/Policies/Demo/Hello/Set Mesage`)",
    );
}

#[test]
fn broken_typed_reference() {
    let text = BASE[7]
        .1
        .replace("(Category)misc", "(Category)miscellaneous");
    expect_one(&[(HELLO, Some(&text))], HELLO, 6, 13, "points at no entity");
}

#[test]
fn reference_above_the_root() {
    let text = BASE[7]
        .1
        .replace("success: ../Cache It", "success: ../../../../../Cache It");
    expect_one(
        &[(HELLO, Some(&text))],
        HELLO,
        14,
        14,
        "climbs above the project root",
    );
}

#[test]
fn missing_externalized_file() {
    let d = expect_one(
        &[("Policies/Demo/Hello-Files/message.json", None)],
        HELLO,
        12,
        15,
        "externalized file `Hello-Files/message.json` does not exist (looked for `Policies/Demo/Hello-Files/message.json`)",
    );
    assert_eq!(d.field.as_deref(), Some("fields.body#ref"));
}

#[test]
fn missing_included_file() {
    expect_one(
        &[(
            MAIN,
            Some("---\ntype: DbConnection\nfields:\n  name: Main\n  url: \"{{file 'url.txt'}}\"\n"),
        )],
        MAIN,
        5,
        11,
        "included file `url.txt`",
    );
}

#[test]
fn included_file_outside_the_project() {
    expect_one(
        &[(MAIN, Some("---\ntype: DbConnection\nfields:\n  name: Main\n  url: \"{{file '../../../../etc/passwd'}}\"\n"))],
        MAIN,
        5,
        11,
        "points outside the project",
    );
}

#[test]
fn unknown_entity_type() {
    expect_one(
        &[(
            "Libraries/Cache Manager/Other.yaml",
            Some("---\ntype: Cachee\nfields:\n  name: Other\n"),
        )],
        "Libraries/Cache Manager/Other.yaml",
        2,
        7,
        "unknown entity type `Cachee`",
    );
}

#[test]
fn unknown_field() {
    expect_one(
        &[(
            "Libraries/Cache Manager/Other.yaml",
            Some("---\ntype: Cache\nfields:\n  name: Other\n  sise: 3\n"),
        )],
        "Libraries/Cache Manager/Other.yaml",
        5,
        3,
        "field `sise` is not defined for type `Cache`",
    );
}

#[test]
fn duplicate_entity() {
    expect_one(
        &[("Libraries/Cache Manager/Sessions copy.yaml", Some("---\ntype: Cache\nfields:\n  name: Sessions\n"))],
        "Libraries/Cache Manager/Sessions.yaml",
        2,
        1,
        "duplicate entity `/Libraries/Cache Manager/Sessions`: also defined in `Libraries/Cache Manager/Sessions copy.yaml` at line 2",
    );
}

#[test]
fn missing_type() {
    expect_one(
        &[(
            "Libraries/Cache Manager/Other.yaml",
            Some("---\nfields:\n  name: Other\n"),
        )],
        "Libraries/Cache Manager/Other.yaml",
        2,
        1,
        "missing `type:`",
    );
}

#[test]
fn duplicate_yaml_key() {
    expect_one(
        &[(
            "Libraries/Cache Manager/Other.yaml",
            Some("---\ntype: Cache\nfields:\n  name: Other\n  size: 1\n  size: 2\n"),
        )],
        "Libraries/Cache Manager/Other.yaml",
        6,
        3,
        "duplicate field `size`",
    );
}

#[test]
fn block_never_closed() {
    expect_one(
        &[(
            MAIN,
            Some("---\ntype: DbConnection\nfields:\n  name: Main\n{{#if feature.on}}\n  url: x\n"),
        )],
        MAIN,
        5,
        1,
        "`{{#if}}` is never closed",
    );
}

#[test]
fn problem_in_values_yaml() {
    expect_one(
        &[("values.yaml", Some("---\ndb:\n  url: jdbc:mysql://localhost/db\n  password: '{{ env \"DB_PASSWORD\" }}'\nfeature:\n  on: true\n"))],
        "values.yaml",
        4,
        17,
        "environment variable `DB_PASSWORD` is not set",
    );
}

#[test]
fn all_problems_at_once_sorted_by_file_and_line() {
    let hello = BASE[7]
        .1
        .replace("start: ./Set Message", "start: ./Nope")
        .replace("/Libraries/Cache Manager/Sessions", "/Libraries/Nope");
    let dir = project_with(&[
        (HELLO, Some(&hello)),
        (MAIN, Some("---\ntype: DbConnection\nfields:\n  name: Main\n  url: '{{ db.a }}'\n  password: '{{ db.b }}'\n")),
        ("Policies/Demo/Hello-Files/message.json", None),
    ]);
    let diags = validate(&dir, &MapEnv::empty(), None);
    let got: Vec<(String, u32)> = diags
        .iter()
        .map(|d| (d.file.clone().unwrap_or_default(), d.line.unwrap_or(0)))
        .collect();
    assert_eq!(
        got,
        vec![
            (MAIN.to_string(), 5),
            (MAIN.to_string(), 6),
            (HELLO.to_string(), 5),
            (HELLO.to_string(), 12),
            (HELLO.to_string(), 18),
        ],
        "{}",
        crate::common::show(&diags)
    );
}

#[test]
fn stage_overlay_and_env_feed_placeholders() {
    let dir = project_with(&[(
        MAIN,
        Some("---\ntype: DbConnection\nfields:\n  name: Main\n  url: '{{ db.url }}'\n  password: '{{ base64 (env \"DB_PASSWORD\") }}'\n"),
    )]);
    let env = MapEnv::from_pairs([("DB_PASSWORD", "s3cr3t-pass")]);
    let diags = validate(&dir, &env, Some("db:\n  url: jdbc:mysql://test-db/db\n"));
    assert!(diags.is_empty(), "{}", crate::common::show(&diags));
    let project = Project::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let values = project.stage_values(
        Some(ValuesSource {
            name: "environments/test.yaml",
            text: "db:\n  url: jdbc:mysql://test-db/db\n",
        }),
        &env,
    );
    let files = project
        .render(&values, &env, &ValidateOptions::strict())
        .unwrap_or_else(|r| panic!("{}", crate::common::show(&r.errors)));
    let main = files
        .iter()
        .find(|f| f.path == MAIN)
        .map(|f| String::from_utf8_lossy(&f.contents).to_string())
        .unwrap_or_default();
    assert!(main.contains("url: 'jdbc:mysql://test-db/db'"), "{main}");
    assert!(main.contains("password: 'czNjcjN0LXBhc3M='"), "{main}");
    assert!(!files.iter().any(|f| f.path == "values.yaml"));
}

#[test]
fn secrets_are_masked_in_diagnostics() {
    let dir = project_with(&[(
        "Policies/Demo/Other.yaml",
        Some("---\ntype: FilterCircuit\nfields:\n  name: Other\n  category: '/System/Filter Categories/{{ env \"CATEGORY\" }}'\n"),
    )]);
    let env = MapEnv::from_pairs([("CATEGORY", "TopSecretCategory")]);
    let diags = validate(&dir, &env, Some("db:\n  password: env:CATEGORY\n"));
    assert_eq!(diags.len(), 1, "{}", crate::common::show(&diags));
    assert!(
        !diags[0].message.contains("TopSecretCategory"),
        "{}",
        diags[0].message
    );
    assert!(
        diags[0].message.contains("/System/Filter Categories/***"),
        "{}",
        diags[0].message
    );
}

#[test]
fn without_a_type_model_references_are_found_by_shape() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    crate::common::write_files(dir.path(), BASE);
    let project = Project::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let env = MapEnv::empty();
    let values = project.stage_values(None, &env);
    assert!(project
        .validate(&values, &env, &ValidateOptions::strict())
        .errors
        .is_empty());
    let broken = BASE[7].1.replace(
        "/Libraries/Cache Manager/Sessions",
        "/Libraries/Cache Manager/Gone",
    );
    crate::common::write_files(dir.path(), &[(HELLO, &broken)]);
    let project = Project::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let errors = project
        .validate(&values, &env, &ValidateOptions::strict())
        .errors;
    assert_eq!(errors.len(), 1, "{}", crate::common::show(&errors));
    assert_eq!(errors[0].line, Some(18));
}

#[test]
fn empty_values_are_fine_for_a_project_without_placeholders() {
    let hello = BASE[7]
        .1
        .replace("{{#if feature.on}}\n", "")
        .replace("{{/if}}\n", "");
    let dir = project_with(&[
        (
            MAIN,
            Some("---\ntype: DbConnection\nfields:\n  name: Main\n"),
        ),
        (HELLO, Some(&hello)),
    ]);
    let project = Project::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let report = project.validate(
        &StageValues::empty(),
        &MapEnv::empty(),
        &ValidateOptions::strict(),
    );
    assert!(report.is_ok(), "{}", crate::common::show(&report.errors));
}

#[test]
fn environmentalized_references_are_checked_per_stage() {
    // `cache` comes from the values: valid in one stage, broken in another.
    let hello = BASE[7].1.replace(
        "cache: /Libraries/Cache Manager/Sessions",
        "cache: '{{ refs.cache }}'",
    );
    let dir = project_with(&[(HELLO, Some(&hello))]);
    let env = MapEnv::empty();
    let ok = validate(
        &dir,
        &env,
        Some("refs:\n  cache: /Libraries/Cache Manager/Sessions\n"),
    );
    assert!(ok.is_empty(), "{}", crate::common::show(&ok));
    let bad = validate(
        &dir,
        &env,
        Some("refs:\n  cache: /Libraries/Cache Manager/Other\n"),
    );
    assert_eq!(bad.len(), 1, "{}", crate::common::show(&bad));
    assert_eq!(
        (bad[0].file.as_deref(), bad[0].line, bad[0].column),
        (Some(HELLO), Some(18), Some(12))
    );
    assert!(bad[0]
        .message
        .contains("`/Libraries/Cache Manager/Other` points at no entity"));
    // The same with a block helper in the file (re-parsed per stage).
    let with_block = hello.replace(
        "    name: Cache It\n",
        "    name: Cache It\n{{#if feature.on}}\n    key: x\n{{/if}}\n",
    );
    let with_block = with_block.replace("    key: x\n", "");
    let dir = project_with(&[(HELLO, Some(&with_block))]);
    let bad = validate(
        &dir,
        &env,
        Some("refs:\n  cache: /Libraries/Cache Manager/Other\n"),
    );
    assert_eq!(bad.len(), 1, "{}", crate::common::show(&bad));
    assert_eq!(
        (bad[0].line, bad[0].column),
        (Some(20), Some(12)),
        "{}",
        crate::common::show(&bad)
    );
}

#[test]
fn references_into_templated_files_and_containers() {
    // A container whose key comes from the values, and a cache defined by a
    // templated file; static files refer to both.
    let dir = project_with(&[
        (
            "Libraries/Cache Manager/_parent.yaml",
            Some("---\ntype: CacheManager\nfields:\n  name: '{{ names.manager }}'\n"),
        ),
        (
            "Libraries/Cache Manager/Sessions.yaml",
            Some("---\ntype: Cache\nfields:\n  name: '{{ names.cache }}'\n  size: 10\n"),
        ),
    ]);
    let env = MapEnv::empty();
    let good = "names:\n  manager: Cache Manager\n  cache: Sessions\n";
    assert!(validate(&dir, &env, Some(good)).is_empty());
    let renamed = "names:\n  manager: Caches\n  cache: Sessions\n";
    let diags = validate(&dir, &env, Some(renamed));
    assert_eq!(diags.len(), 1, "{}", crate::common::show(&diags));
    assert_eq!(
        (diags[0].file.as_deref(), diags[0].line),
        (Some(HELLO), Some(18))
    );

    let dir = project_with(&[(
        "Libraries/Cache Manager/Sessions.yaml",
        Some("---\ntype: Cache\nfields:\n  name: '{{ names.cache }}'\n  size: 10\n"),
    )]);
    assert!(validate(&dir, &env, Some(good)).is_empty());
    let diags = validate(&dir, &env, Some("names:\n  cache: Other\n"));
    assert_eq!(diags.len(), 1, "{}", crate::common::show(&diags));
    assert_eq!(
        (diags[0].file.as_deref(), diags[0].line),
        (Some(HELLO), Some(18))
    );
    // A templated entity that collides with a fixed one.
    let dir = project_with(&[(
        "Libraries/Cache Manager/Other.yaml",
        Some("---\ntype: Cache\nfields:\n  name: '{{ names.cache }}'\n"),
    )]);
    let diags = validate(&dir, &env, Some(good));
    assert_eq!(diags.len(), 1, "{}", crate::common::show(&diags));
    assert_eq!(
        diags[0].file.as_deref(),
        Some("Libraries/Cache Manager/Other.yaml")
    );
    assert!(diags[0].message.contains("duplicate entity `/Libraries/Cache Manager/Sessions`: also defined in `Libraries/Cache Manager/Sessions.yaml` at line 2"));
}
