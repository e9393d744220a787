//! Benchmark: a generated YAML Entity Store project of 10,000 entity files,
//! rendered and validated for 5 stages.
//!
//! `cargo run --release -p gantry-envgen --example bench_envgen [-- FILES ITERATIONS [DIR]]`
//!
//! Prints the time to load the project, then to render + validate all five
//! stages, as the median over a few iterations (target: ≤ 1 s in total on 2 cores).

use std::path::Path;
use std::time::{Duration, Instant};

use gantry_envgen::{package_yaml, MapEnv, Project, RenderMode, ValidateOptions, ValuesSource};

const STAGES: [&str; 5] = ["dev", "test", "uat", "preprod", "prod"];

fn write(root: &Path, rel: &str, content: &str) -> std::io::Result<()> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(p, content)
}

/// Writes the project; returns the number of entity files.
fn generate(root: &Path, target: usize) -> std::io::Result<usize> {
    let types = [
        ("Entity.yaml", "name: Entity\nabstract: true\n"),
        ("Entity/Root.yaml", "name: Root\nfields:\n  name: {type: string}\n"),
        ("Entity/CircuitContainer.yaml", "name: CircuitContainer\nfields:\n  name: {type: string}\nkeyFields: [name]\n"),
        ("Entity/FilterCircuit.yaml", "name: FilterCircuit\nfields:\n  name: {type: string}\n  description: {type: string}\n  start: {type: '@Filter'}\n  category: {type: '@Category'}\nkeyFields: [name]\n"),
        ("Entity/Filter.yaml", "name: Filter\nabstract: true\nfields:\n  name: {type: string}\nkeyFields: [name]\n"),
        ("Entity/Filter/SetAttributeFilter.yaml", "name: SetAttributeFilter\nfields:\n  messageAttribute: {type: string}\n  attributeValue: {type: string}\n"),
        ("Entity/Filter/ChangeMessageFilter.yaml", "name: ChangeMessageFilter\nfields:\n  body: {type: string}\n  outputContentType: {type: string}\n"),
        ("Entity/Filter/CacheFilter.yaml", "name: CacheFilter\nfields:\n  cache: {type: '@Cache'}\n  key: {type: string}\n"),
        ("Entity/Filter/Reflector.yaml", "name: Reflector\nfields: {}\n"),
        ("Entity/Filter/ConnectToURLFilter.yaml", "name: ConnectToURLFilter\nfields:\n  url: {type: string}\n  caCerts: {type: '@Certificate'}\n"),
        ("Entity/CacheManager.yaml", "name: CacheManager\nfields:\n  name: {type: string}\n"),
        ("Entity/Cache.yaml", "name: Cache\nfields:\n  name: {type: string}\n  maxElementsInMemory: {type: integer}\n"),
        ("Entity/CategoryGroup.yaml", "name: CategoryGroup\nfields:\n  name: {type: string}\n"),
        ("Entity/Category.yaml", "name: Category\nfields:\n  name: {type: string}\n"),
        ("Entity/DbConnectionGroup.yaml", "name: DbConnectionGroup\nfields:\n  name: {type: string}\n"),
        ("Entity/DbConnection.yaml", "name: DbConnection\nfields:\n  name: {type: string}\n  url: {type: string}\n  username: {type: string}\n  password: {type: encrypted}\n  maxActive: {type: integer}\n"),
    ];
    for (rel, text) in types {
        write(
            root,
            &format!("META-INF/types/{rel}"),
            &format!("---\n{text}"),
        )?;
    }
    write(
        root,
        "_parent.yaml",
        "---\ntype: Root\nfields:\n  name: System Components\n",
    )?;
    let mut count = 1;
    write(
        root,
        "Libraries/Cache Manager/_parent.yaml",
        "---\ntype: CacheManager\nfields:\n  name: Cache Manager\n",
    )?;
    count += 1;
    for c in 0..20 {
        write(
            root,
            &format!("Libraries/Cache Manager/Cache {c}.yaml"),
            &format!(
                "---\ntype: Cache\nfields:\n  name: Cache {c}\n  maxElementsInMemory: {}\n",
                100 * (c + 1)
            ),
        )?;
        count += 1;
    }
    let mut cats =
        String::from("---\ntype: CategoryGroup\nfields:\n  name: Filter Categories\nchildren:\n");
    for c in ["miscellaneous", "authentication", "routing", "monitoring"] {
        cats.push_str(&format!("- type: Category\n  fields:\n    name: {c}\n"));
    }
    write(root, "System/Filter Categories.yaml", &cats)?;
    count += 1;
    write(
        root,
        "External Connections/Database Connections/_parent.yaml",
        "---\ntype: DbConnectionGroup\nfields:\n  name: Database Connections\n",
    )?;
    count += 1;
    let mut values = String::from("---\ndb:\n");
    let dbs = target / 20;
    for d in 0..dbs {
        write(
            root,
            &format!("External Connections/Database Connections/DB {d}.yaml"),
            &format!(
                "---\ntype: DbConnection\nfields:\n  name: DB {d}\n  url: '{{{{ db.c{d}.url }}}}'\n  username: '{{{{db.c{d}.user}}}}'\n  password: \"{{{{ base64 (env 'DB_PASSWORD_{d}' 'changeme') }}}}\"\n  maxActive: {}\n",
                8 + d % 5
            ),
        )?;
        values.push_str(&format!(
            "  c{d}:\n    url: jdbc:mysql://db{d}.local:3306/app\n    user: app{d}\n"
        ));
        count += 1;
    }
    values.push_str(
        "policies:\n  greeting: Hello\n  debug: false\n  backend: https://backend.local\n",
    );
    write(root, "values.yaml", &values)?;

    let per_group = 100;
    let mut p = 0usize;
    while count < target {
        let g = p / per_group;
        if p.is_multiple_of(per_group) {
            write(
                root,
                &format!("Policies/Group {g}/_parent.yaml"),
                &format!("---\ntype: CircuitContainer\nfields:\n  name: Group {g}\n"),
            )?;
            count += 1;
            if count >= target {
                break;
            }
        }
        let name = format!("Policy {p}");
        let kind = p % 20;
        let greeting = if kind < 4 {
            "'{{ policies.greeting }} from {{ env \"REGION\" \"eu\" }}'".to_string()
        } else {
            "Hello".to_string()
        };
        let body = if kind == 5 {
            write(
                root,
                &format!("Policies/Group {g}/{name}-Files/Set Message.json"),
                &format!("{{\"policy\": \"{name}\", \"msg\": \"it's ${{name}}\"}}\n"),
            )?;
            format!("'{{{{file \"{name}-Files/Set Message.json\"}}}}'")
        } else {
            "'{\"ok\": true}'".to_string()
        };
        let debug_block = if kind == 6 {
            "{{#if policies.debug}}\n  description: debug build\n{{else}}\n  description: ''\n{{/if}}\n"
        } else {
            ""
        };
        let url = if kind == 7 {
            "'{{ policies.backend }}/api'"
        } else {
            "https://backend.local/api"
        };
        let text = format!(
            "---\ntype: FilterCircuit\nfields:\n  name: {name}\n  start: ./Set name\n  category: /System/Filter Categories/{cat}\n{debug_block}children:\n\
- type: SetAttributeFilter\n  fields:\n    name: Set name\n    messageAttribute: greeting\n    attributeValue: {greeting}\n  routing:\n    success: ../Cache lookup\n  logging:\n    fatal: 'Error while setting the attribute. Error: ${{circuit.exception}}'\n    failure: Failed to set the attribute\n    success: Set the attribute\n\
- type: CacheFilter\n  fields:\n    name: Cache lookup\n    cache: /Libraries/Cache Manager/Cache {cache}\n    key: ${{http.request.path}}\n  routing:\n    success: ../Connect\n    failure: ../Set Message\n\
- type: ConnectToURLFilter\n  fields:\n    name: Connect\n    url: {url}\n    caCerts: []\n  routing:\n    success: ../Set Message\n\
- type: ChangeMessageFilter\n  fields:\n    name: Set Message\n    outputContentType: application/json\n    body: {body}\n  routing:\n    success: ../Reflect\n\
- type: Reflector\n  fields:\n    name: Reflect\n",
            cat = ["miscellaneous", "authentication", "routing", "monitoring"][p % 4],
            cache = p % 20,
        );
        write(root, &format!("Policies/Group {g}/{name}.yaml"), &text)?;
        count += 1;
        p += 1;
    }
    for (i, s) in STAGES.iter().enumerate() {
        let mut overlay = format!("policies:\n  greeting: Hello {s}\n  debug: {}\n  backend: https://backend.{s}.example\ndb:\n", i == 0);
        for d in 0..dbs {
            overlay.push_str(&format!(
                "  c{d}:\n    url: jdbc:mysql://db{d}.{s}.example:3306/app\n"
            ));
        }
        write(root, &format!("../stages/{s}.yaml"), &overlay)?;
    }
    Ok(count)
}

/// CPU time (user + system, all threads) of this process so far, from
/// `/proc/self/stat` (Linux; zero elsewhere). Reported beside wall time because
/// other work on a shared machine stretches wall time but not CPU time.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // The fields after the command name (in parentheses, which may hold spaces);
    // utime and stime (fields 14 and 15 of the line) are 11 and 12 here, in 1/100 s.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let files: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let iterations: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    // An optional third argument keeps the generated project there (and
    // reuses it when it exists), e.g. for profiling.
    let tmp = tempfile::tempdir()?;
    let base = args
        .get(3)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let root = base.join("project");
    if !root.join("_parent.yaml").exists() {
        let t = Instant::now();
        let n = generate(&root, files)?;
        println!(
            "generated {n} entity files in {:?} ({})",
            t.elapsed(),
            root.display()
        );
    }
    let overlays: Vec<String> = STAGES
        .iter()
        .map(|s| std::fs::read_to_string(base.join(format!("stages/{s}.yaml"))))
        .collect::<Result<_, _>>()?;
    let env = MapEnv::from_pairs([("REGION", "eu-west-1"), ("DB_PASSWORD_0", "s3cr3t")]);
    let opts = ValidateOptions::default();
    println!(
        "cores: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let (mut loads, mut stage_times, mut totals, mut cpus, mut validates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for it in 0..iterations {
        let c0 = cpu_time();
        let t0 = Instant::now();
        let project = Project::load(&root)?;
        let load = t0.elapsed();
        // Merging a stage's values is part of what each stage costs.
        let stage_values = |s: &str, overlay: &str| {
            let name = format!("stages/{s}.yaml");
            project.stage_values(
                Some(ValuesSource {
                    name: &name,
                    text: overlay,
                }),
                &env,
            )
        };
        let t1 = Instant::now();
        let mut rendered_files = 0;
        for (s, overlay) in STAGES.iter().zip(&overlays) {
            let values = stage_values(s, overlay);
            match project.render(&values, &env, &opts) {
                Ok(files) => rendered_files += files.len(),
                Err(report) => {
                    for d in report.errors.iter().take(5) {
                        eprintln!("{d:?}");
                    }
                    return Err(format!("stage {s}: {} errors", report.errors.len()).into());
                }
            }
        }
        let stages = t1.elapsed();
        let cpu = cpu_time().saturating_sub(c0);
        let t2 = Instant::now();
        for (s, overlay) in STAGES.iter().zip(&overlays) {
            let values = stage_values(s, overlay);
            if !project.validate(&values, &env, &opts).is_ok() {
                return Err(format!("stage {s} does not validate").into());
            }
        }
        let validate = t2.elapsed();
        println!(
            "iteration {it}: load {load:?} + render+validate 5 stages {stages:?} ({rendered_files} files) = {:?} wall, {cpu:?} CPU; validate only, 5 stages: {validate:?}",
            load + stages
        );
        loads.push(load);
        stage_times.push(stages);
        totals.push(load + stages);
        cpus.push(cpu);
        validates.push(validate);
    }
    println!(
        "median of {iterations}: load {:?} + render+validate 5 stages {:?} = total {:?} wall ({:?} CPU); validate only, 5 stages: {:?}",
        median(loads),
        median(stage_times),
        median(totals),
        median(cpus),
        median(validates)
    );

    let project = Project::load(&root)?;
    let values = project.stage_values(
        Some(ValuesSource {
            name: "stages/prod.yaml",
            text: &overlays[4],
        }),
        &env,
    );
    let t = Instant::now();
    let pkg = package_yaml(&project, &values, &env, RenderMode::Placeholders, &opts)?;
    println!(
        "package (render: false) of one stage: {:?}, {} files, {} bytes, {}",
        t.elapsed(),
        pkg.files,
        pkg.size(),
        pkg.digest
    );
    Ok(())
}
