//! Checking a `.fed`, `.pol` or `.env` archive.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Cursor, Read};

use gantry_proto::events::Diagnostic;
use sha2::{Digest, Sha256};

use super::configs;
use super::manifest::{self, clip, Manifest};

/// The kind of an Axway configuration archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchiveKind {
    /// A deployment package (`.fed`): policies and environment together.
    Fed,
    /// A policy package (`.pol`).
    Pol,
    /// An environment package (`.env`).
    Env,
}

impl ArchiveKind {
    /// The usual file extension (`fed`, `pol`, `env`).
    pub fn extension(self) -> &'static str {
        match self {
            ArchiveKind::Fed => "fed",
            ArchiveKind::Pol => "pol",
            ArchiveKind::Env => "env",
        }
    }

    /// Axway's name for it, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ArchiveKind::Fed => "deployment package (.fed)",
            ArchiveKind::Pol => "policy package (.pol)",
            ArchiveKind::Env => "environment package (.env)",
        }
    }
}

/// The store type holding policies (and what a `.pol` must carry).
pub const POLICY_STORE: &str = "PrimaryStore";
/// The store type holding the environmentalized settings (what a `.env` must
/// carry).
pub const ENVIRONMENT_STORE: &str = "EnvSettingsStore";
/// The package properties of a deployment package.
pub const MANIFEST: &str = "META-INF/MANIFEST.MF";
/// The policy package's properties inside a deployment package.
pub const POLICY_MANIFEST: &str = "META-INF/MANIFEST-POLICY.MF";
/// The environment package's properties inside a deployment package.
pub const ENVIRONMENT_MANIFEST: &str = "META-INF/MANIFEST-ENVIRONMENT.MF";
/// Headers every archive's `META-INF/MANIFEST.MF` has.
pub const REQUIRED_HEADERS: [&str; 3] = ["Manifest-Version", "Id", "Timestamp"];
/// The largest entry read (uncompressed).
pub const MAX_ENTRY_SIZE: u64 = 512 << 20;
/// The largest total uncompressed size read.
pub const MAX_TOTAL_SIZE: u64 = 2 << 30;

/// One entity store of an archive, as its `configs.xml` declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInfo {
    /// The directory holding `configs.xml` and the store file.
    pub dir: String,
    /// The store's id (e.g. `PrimaryStore-a7f6…`).
    pub id: String,
    /// The store's type (e.g. `PrimaryStore`, `EnvSettingsStore`, `CertStore`).
    pub store_type: String,
    /// The store file, as an entry name (`<dir>/<url>`).
    pub file: String,
    /// Whether a `.sha256` file beside the store was found (and matched).
    pub checksum_verified: bool,
}

/// What a valid archive holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveInfo {
    /// The kind it was checked as.
    pub kind: ArchiveKind,
    /// The `Id` header of `META-INF/MANIFEST.MF`.
    pub id: String,
    /// The `Timestamp` header (milliseconds since the epoch).
    pub timestamp: u64,
    /// The main section of `META-INF/MANIFEST.MF` (header names as written).
    pub manifest: BTreeMap<String, String>,
    /// A FED's `META-INF/MANIFEST-POLICY.MF`.
    pub policy_properties: Option<BTreeMap<String, String>>,
    /// A FED's `META-INF/MANIFEST-ENVIRONMENT.MF`.
    pub environment_properties: Option<BTreeMap<String, String>>,
    /// The entity stores, in `configs.xml` order.
    pub stores: Vec<StoreInfo>,
    /// Number of entries (files and directories).
    pub entries: u64,
    /// Total uncompressed size of the files.
    pub uncompressed_size: u64,
    /// Names `X` of the `${env.X}` selectors found in the stores: what an
    /// `envSettings.props` may set.
    pub env_selectors: BTreeSet<String>,
    /// Observations that do not make the archive invalid.
    pub warnings: Vec<Diagnostic>,
}

impl ArchiveInfo {
    /// Whether a store of this type is present.
    pub fn has_store_type(&self, store_type: &str) -> bool {
        self.stores.iter().any(|s| s.store_type == store_type)
    }
}

fn diag(file: &str, line: Option<u32>, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        file: Some(file.to_string()),
        line,
        column: None,
        field: None,
        message: message.into(),
    }
}

/// `archive!/entry`: an entry of an archive, as Java names them.
pub(crate) fn entry_file(archive: &str, entry: &str) -> String {
    format!("{archive}!/{entry}")
}

/// Why an entry name is unsafe to extract, if it is.
pub(crate) fn unsafe_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("has an empty name");
    }
    if name.contains('\0') {
        return Some("has a NUL character in its name");
    }
    if name.starts_with('/') || name.starts_with('\\') {
        return Some("has an absolute path");
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        return Some("has a drive letter");
    }
    if name.split(['/', '\\']).any(|c| c == "..") {
        return Some("has a `..` component (it would be written outside the target directory)");
    }
    None
}

/// A short, printable description of how `bytes` start.
fn first_bytes(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(16)];
    let printable = head
        .iter()
        .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n' || *b == b'\r' || *b == b'\t');
    if printable {
        let s = String::from_utf8_lossy(head);
        format!("text `{}`", s.replace(['\n', '\r', '\t'], " ").trim())
    } else {
        format!("bytes {}", hex::encode(&head[..head.len().min(4)]))
    }
}

/// The `${env.X}` selectors of a text.
pub(crate) fn env_selectors(text: &str, out: &mut BTreeSet<String>) {
    for (i, _) in text.match_indices("${env.") {
        let rest = &text[i + 6..];
        if let Some(end) = rest.find('}') {
            let name = &rest[..end];
            if !name.is_empty()
                && name.len() <= 200
                && !name.contains(|c: char| c.is_whitespace() || c == '<' || c == '$')
            {
                out.insert(name.to_string());
            }
        }
    }
}

fn is_entity_store(data: &[u8]) -> bool {
    let head = &data[..data.len().min(4096)];
    String::from_utf8_lossy(head).contains("<entityStoreData")
}

#[derive(Default)]
struct Xml {
    sha256: String,
    entity_store: bool,
}

struct Checker<'a> {
    path: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, file: String, line: Option<u32>, message: impl Into<String>) {
        self.errors.push(diag(&file, line, message));
    }

    fn warn(&mut self, file: String, line: Option<u32>, message: impl Into<String>) {
        self.warnings.push(diag(&file, line, message));
    }

    /// Parse a manifest entry; report its problems.
    fn manifest(&mut self, name: &str, data: &[u8]) -> Option<Manifest> {
        let file = entry_file(self.path, name);
        let Ok(text) = std::str::from_utf8(data) else {
            self.error(file, None, "the manifest is not UTF-8 text");
            return None;
        };
        let (m, problems) = manifest::parse(text);
        for p in problems {
            if p.warning {
                self.warn(file.clone(), Some(p.line), p.message);
            } else {
                self.error(file.clone(), Some(p.line), p.message);
            }
        }
        if m.get("Manifest-Version").is_none() {
            self.error(
                file,
                Some(m.main_end_line),
                "the main section has no `Manifest-Version` header",
            );
        }
        Some(m)
    }
}

fn to_map(m: &Manifest) -> BTreeMap<String, String> {
    m.main
        .iter()
        .map(|a| (a.name.clone(), a.value.clone()))
        .collect()
}

/// Check an archive: a readable zip with `META-INF/MANIFEST.MF` (headers
/// `Manifest-Version`, `Id`, `Timestamp`), safe entry names, and entity stores
/// (`<dir>/configs.xml` and the store files it names, matching their `.sha256`
/// files) of the kind's types:
///
/// | kind | manifests | stores |
/// |------|-----------|--------|
/// | FED  | `MANIFEST.MF`, `MANIFEST-POLICY.MF` and `MANIFEST-ENVIRONMENT.MF` | a `PrimaryStore` and an `EnvSettingsStore` |
/// | POL  | `MANIFEST.MF`, not both of the FED's sub-manifests | a `PrimaryStore` |
/// | ENV  | `MANIFEST.MF`, not both of the FED's sub-manifests | an `EnvSettingsStore` and no `PrimaryStore` |
///
/// The FED rules come from real API Gateway 7.7 deployment packages (their
/// three manifests, `configs.xml` and seven stores: `PrimaryStore`,
/// `ResourceRepository`, `CertStore`, `EnvSettingsStore`, `ExtConnsStore`,
/// `ListenersStore`, `UserStore`) and from Axway's documentation ("a
/// deployment package has two sets of package properties, one for the policy
/// and one for the environment configuration; policy and environment packages
/// have a single set each"). Entry names are matched as written except the
/// manifests, found whatever their case (`META-INF/manifest.mf` too). The
/// real FEDs hold no `_.ts` or separate type files: each store XML carries
/// its own `<entityType>` definitions, so none is required.
///
/// No real `.pol`/`.env` was available: their store rules are the ones that
/// follow from "a policy package holds the policies, an environment package
/// the environment-specific settings", and stores of other types are
/// accepted in either.
///
/// Every problem is returned (not just the first), each naming `path` or an
/// entry of it as `path!/entry`, with the line where there is one. Never
/// panics, whatever the bytes.
pub fn check_archive(
    path_for_diagnostics: &str,
    bytes: &[u8],
    kind: ArchiveKind,
) -> Result<ArchiveInfo, Vec<Diagnostic>> {
    let run = std::panic::catch_unwind(|| check(path_for_diagnostics, bytes, kind));
    match run {
        Ok(r) => r,
        // Defence in depth: a zip reader bug must not take the service down.
        Err(_) => Err(vec![diag(
            path_for_diagnostics,
            None,
            format!(
                "the {} could not be read (the zip reader failed on it): the file is corrupt",
                kind.describe()
            ),
        )]),
    }
}

fn check(path: &str, bytes: &[u8], kind: ArchiveKind) -> Result<ArchiveInfo, Vec<Diagnostic>> {
    let what = kind.describe();
    if bytes.is_empty() {
        return Err(vec![diag(
            path,
            None,
            format!("the file is empty: a {what} is a zip archive"),
        )]);
    }
    let mut zip = match zip::ZipArchive::new(Cursor::new(bytes)) {
        Ok(z) => z,
        Err(e) => {
            let message = if bytes.starts_with(b"PK") {
                format!(
                    "corrupt or truncated zip archive ({} bytes): {e}; a {what} must be a complete zip file",
                    bytes.len()
                )
            } else {
                format!(
                    "not a zip archive: a {what} is a zip (JAR) file, this one starts with {}",
                    first_bytes(bytes)
                )
            };
            return Err(vec![diag(path, None, message)]);
        }
    };
    let mut c = Checker {
        path,
        errors: Vec::new(),
        warnings: Vec::new(),
    };

    // Read every entry once.
    let mut kept: HashMap<String, Vec<u8>> = HashMap::new();
    let mut xmls: HashMap<String, Xml> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut selectors = BTreeSet::new();
    let mut total: u64 = 0;
    for i in 0..zip.len() {
        let name = match zip.name_for_index(i) {
            Some(n) => n.to_string(),
            None => {
                c.error(path.to_string(), None, format!("entry #{i} cannot be read"));
                continue;
            }
        };
        let shown = clip(&name);
        if let Some(why) = unsafe_name(&name) {
            c.error(
                path.to_string(),
                None,
                format!("entry `{shown}` {why}: refusing an archive that could write outside its directory"),
            );
            continue;
        }
        if !seen.insert(name.clone()) {
            c.error(
                entry_file(path, &name),
                None,
                "the entry appears twice in the archive",
            );
            continue;
        }
        let file = entry_file(path, &name);
        let mut f = match zip.by_index(i) {
            Ok(f) => f,
            Err(e) => {
                c.error(file, None, format!("cannot read the entry: {e}"));
                continue;
            }
        };
        if f.is_dir() {
            names.push(name);
            continue;
        }
        if f.is_symlink() {
            c.error(
                file,
                None,
                "the entry is a symbolic link; an Axway archive holds only files",
            );
            continue;
        }
        if f.encrypted() {
            c.error(file, None, "the entry is encrypted; Axway archives are not");
            continue;
        }
        let declared = f.size();
        if declared > MAX_ENTRY_SIZE {
            c.error(
                file,
                None,
                format!("the entry is {declared} bytes uncompressed, over the {MAX_ENTRY_SIZE}-byte limit"),
            );
            continue;
        }
        if total.saturating_add(declared) > MAX_TOTAL_SIZE {
            c.error(
                path.to_string(),
                None,
                format!(
                    "the archive is over {MAX_TOTAL_SIZE} bytes uncompressed; not reading further"
                ),
            );
            break;
        }
        let mut data = Vec::new();
        let read = (&mut f).take(MAX_ENTRY_SIZE + 1).read_to_end(&mut data);
        drop(f);
        if let Err(e) = read {
            c.error(
                file,
                None,
                format!("cannot read the entry ({e}): the archive is corrupt or truncated"),
            );
            continue;
        }
        if data.len() as u64 != declared {
            c.error(
                file,
                None,
                format!(
                    "the entry holds {} bytes but the archive says {declared}: the archive is corrupt",
                    data.len()
                ),
            );
            continue;
        }
        total += declared;
        names.push(name.clone());
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("meta-inf/")
            || lower.ends_with("/configs.xml")
            || (lower.ends_with(".sha256") && data.len() <= 1024)
        {
            kept.insert(name, data);
        } else if lower.ends_with(".xml") {
            if let Ok(text) = std::str::from_utf8(&data) {
                env_selectors(text, &mut selectors);
            }
            xmls.insert(
                name,
                Xml {
                    sha256: hex::encode(Sha256::digest(&data)),
                    entity_store: is_entity_store(&data),
                },
            );
        }
    }

    // Manifests.
    let find = |wanted: &str| -> Option<String> {
        kept.keys()
            .filter(|k| k.eq_ignore_ascii_case(wanted))
            .min()
            .cloned()
    };
    let mut id = String::new();
    let mut timestamp = 0u64;
    let mut manifest_map = BTreeMap::new();
    match find(MANIFEST) {
        None => {
            let mut listed: Vec<&str> = names.iter().map(String::as_str).take(5).collect();
            if names.len() > 5 {
                listed.push("…");
            }
            c.error(
                path.to_string(),
                None,
                format!(
                    "no `{MANIFEST}`: not an Axway {what} (entries: {})",
                    if listed.is_empty() {
                        "none".to_string()
                    } else {
                        listed.join(", ")
                    }
                ),
            );
        }
        Some(name) => {
            let data = kept.get(&name).cloned().unwrap_or_default();
            if let Some(m) = c.manifest(&name, &data) {
                let file = entry_file(path, &name);
                for h in REQUIRED_HEADERS.iter().skip(1) {
                    if m.get(h).is_none() {
                        c.error(
                            file.clone(),
                            Some(m.main_end_line),
                            format!("the main section has no `{h}` header: every Axway package has `Id` and `Timestamp`"),
                        );
                    }
                }
                if let Some(a) = m.get("Id") {
                    if a.value.trim().is_empty() {
                        c.error(file.clone(), Some(a.line), "`Id` is empty");
                    }
                    id = a.value.trim().to_string();
                }
                if let Some(a) = m.get("Timestamp") {
                    match a.value.trim().parse::<u64>() {
                        Ok(t) => timestamp = t,
                        Err(_) => c.error(
                            file.clone(),
                            Some(a.line),
                            format!(
                                "`Timestamp` must be milliseconds since the epoch, found `{}`",
                                clip(&a.value)
                            ),
                        ),
                    }
                }
                manifest_map = to_map(&m);
            }
        }
    }
    let policy_mf = find(POLICY_MANIFEST);
    let env_mf = find(ENVIRONMENT_MANIFEST);
    let mut policy_properties = None;
    let mut environment_properties = None;
    match kind {
        ArchiveKind::Fed => {
            for (wanted, found, slot, which) in [
                (
                    POLICY_MANIFEST,
                    &policy_mf,
                    &mut policy_properties,
                    "policy",
                ),
                (
                    ENVIRONMENT_MANIFEST,
                    &env_mf,
                    &mut environment_properties,
                    "environment",
                ),
            ] {
                match found {
                    Some(name) => {
                        let data = kept.get(name).cloned().unwrap_or_default();
                        if let Some(m) = c.manifest(name, &data) {
                            *slot = Some(to_map(&m));
                        }
                    }
                    None => c.error(
                        path.to_string(),
                        None,
                        format!(
                            "no `{wanted}`: a deployment package carries the {which} package's properties there (is this a .pol or .env renamed to .fed?)"
                        ),
                    ),
                }
            }
        }
        ArchiveKind::Pol | ArchiveKind::Env => {
            if policy_mf.is_some() && env_mf.is_some() {
                c.error(
                    path.to_string(),
                    None,
                    format!(
                        "it has both `{POLICY_MANIFEST}` and `{ENVIRONMENT_MANIFEST}`: this is a deployment package (.fed), not a {what}"
                    ),
                );
            }
        }
    }

    // Entity stores.
    let mut dirs: Vec<&String> = kept
        .keys()
        .filter(|k| {
            k.strip_suffix("/configs.xml")
                .is_some_and(|d| !d.is_empty() && !d.contains('/'))
        })
        .collect();
    dirs.sort();
    let mut stores = Vec::new();
    if dirs.is_empty() {
        c.error(
            path.to_string(),
            None,
            format!("no entity store: a {what} has a `<id>/configs.xml` listing its stores"),
        );
    }
    for cfg_name in dirs {
        let dir = cfg_name.trim_end_matches("/configs.xml").to_string();
        let cfg_file = entry_file(path, cfg_name);
        let data = kept.get(cfg_name).cloned().unwrap_or_default();
        let Ok(text) = std::str::from_utf8(&data) else {
            c.error(cfg_file, None, "configs.xml is not UTF-8 text");
            continue;
        };
        let cfg = match configs::parse(text) {
            Ok(cfg) => cfg,
            Err((line, msg)) => {
                c.error(
                    cfg_file,
                    Some(line),
                    format!("malformed configs.xml: {msg}"),
                );
                continue;
            }
        };
        let mut declared: HashSet<String> = HashSet::new();
        for s in &cfg.stores {
            let (Some(sid), Some(stype)) = (&s.id, &s.store_type) else {
                c.error(
                    cfg_file.clone(),
                    Some(s.line),
                    "a `<store>` needs both `id` and `type`",
                );
                continue;
            };
            if !declared.insert(sid.clone()) {
                c.error(
                    cfg_file.clone(),
                    Some(s.line),
                    format!("store `{sid}` is declared twice"),
                );
                continue;
            }
            let Some(url) = s.url.as_deref().filter(|u| !u.is_empty()) else {
                c.error(
                    cfg_file.clone(),
                    Some(s.line),
                    format!("store `{sid}` has no `<credential name='url'>` naming its file"),
                );
                continue;
            };
            if url.contains(['/', '\\']) || url == ".." || url == "." {
                c.error(
                    cfg_file.clone(),
                    Some(s.line),
                    format!(
                        "store `{sid}`: its file `{}` must be a plain name beside configs.xml",
                        clip(url)
                    ),
                );
                continue;
            }
            let store_file = format!("{dir}/{url}");
            let Some(xml) = xmls.get(&store_file) else {
                c.error(
                    cfg_file.clone(),
                    Some(s.line),
                    format!(
                        "store `{sid}` ({stype}) is in `{}`, which is not in the archive",
                        clip(url)
                    ),
                );
                continue;
            };
            if !xml.entity_store {
                c.error(
                    entry_file(path, &store_file),
                    None,
                    format!(
                        "store `{sid}`: the file is not an entity store (no `<entityStoreData>`)"
                    ),
                );
            }
            let stem = store_file.strip_suffix(".xml").unwrap_or(&store_file);
            let sum_name = format!("{stem}.sha256");
            let mut checksum_verified = false;
            if let Some(sum) = kept.get(&sum_name) {
                let expected = String::from_utf8_lossy(sum).trim().to_ascii_lowercase();
                if expected == xml.sha256 {
                    checksum_verified = true;
                } else {
                    c.error(
                        entry_file(path, &store_file),
                        None,
                        format!(
                            "the store does not match its checksum `{sum_name}` (sha256 {}, expected {}): the archive is corrupt or was edited",
                            xml.sha256,
                            clip(&expected)
                        ),
                    );
                }
            }
            stores.push(StoreInfo {
                dir: dir.clone(),
                id: sid.clone(),
                store_type: stype.clone(),
                file: store_file,
                checksum_verified,
            });
        }
        if let Some((active, line)) = &cfg.active_assembly {
            match cfg
                .assemblies
                .iter()
                .find(|a| a.id.as_deref() == Some(active.as_str()))
            {
                None => c.error(
                    cfg_file.clone(),
                    Some(*line),
                    format!("the active assembly `{}` is not defined", clip(active)),
                ),
                Some(asm) => {
                    for (comp, cline) in &asm.components {
                        if !declared.contains(comp) {
                            c.error(
                                cfg_file.clone(),
                                Some(*cline),
                                format!(
                                    "assembly `{}` uses store `{}`, which is not declared",
                                    clip(active),
                                    clip(comp)
                                ),
                            );
                        }
                    }
                }
            }
        }
        if !id.is_empty() && dir != id {
            c.warn(
                cfg_file.clone(),
                None,
                format!("the store directory `{dir}` is not the package `Id` `{id}` (Axway names it after the Id)"),
            );
        }
    }

    // What the kind needs.
    let has = |t: &str| stores.iter().any(|s: &StoreInfo| s.store_type == t);
    let (has_policy, has_env) = (has(POLICY_STORE), has(ENVIRONMENT_STORE));
    let any_store_dir = !stores.is_empty();
    if any_store_dir {
        match kind {
            ArchiveKind::Fed => {
                if !has_policy {
                    c.error(path.to_string(), None, format!("no policy store (`{POLICY_STORE}`): a deployment package holds the policies and the environment"));
                }
                if !has_env {
                    c.error(path.to_string(), None, format!("no environment store (`{ENVIRONMENT_STORE}`): a deployment package holds the policies and the environment"));
                }
            }
            ArchiveKind::Pol => {
                if !has_policy {
                    c.error(
                        path.to_string(),
                        None,
                        format!("no policy store (`{POLICY_STORE}`): not a policy package"),
                    );
                }
            }
            ArchiveKind::Env => {
                if !has_env {
                    c.error(path.to_string(), None, format!("no environment store (`{ENVIRONMENT_STORE}`): not an environment package"));
                }
                if has_policy {
                    c.error(path.to_string(), None, format!("it holds a policy store (`{POLICY_STORE}`): an environment package holds only environment settings (is this a .pol or .fed?)"));
                }
            }
        }
    }

    if !c.errors.is_empty() {
        crate::diag::sort(&mut c.errors);
        return Err(c.errors);
    }
    crate::diag::sort(&mut c.warnings);
    Ok(ArchiveInfo {
        kind,
        id,
        timestamp,
        manifest: manifest_map,
        policy_properties,
        environment_properties,
        stores,
        entries: zip.len() as u64,
        uncompressed_size: total,
        env_selectors: selectors,
        warnings: c.warnings,
    })
}
