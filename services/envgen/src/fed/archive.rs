//! Checking a `.fed`, `.pol` or `.env` archive.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Cursor, Read};

use gantry_proto::events::Diagnostic;
use sha2::{Digest, Sha256};

use super::configs::{self, Configs, StoreDecl};
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

/// A diagnostic at `file` (the archive or one of its entries) and `line`.
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

/// Whether an XML file is an entity store (the store files `configs.xml`
/// names must be).
fn is_entity_store(data: &[u8]) -> bool {
    let head = &data[..data.len().min(4096)];
    String::from_utf8_lossy(head).contains("<entityStoreData")
}

/// A manifest's main section (header → value), as [`ArchiveInfo`] gives it.
type Properties = BTreeMap<String, String>;

/// A manifest's main section as [`ArchiveInfo`] gives it.
fn to_map(m: &Manifest) -> Properties {
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
    let run = std::panic::catch_unwind(|| check(path_for_diagnostics, bytes, kind, LIMITS));
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

/// How much of an archive is read: [`MAX_ENTRY_SIZE`] and [`MAX_TOTAL_SIZE`],
/// smaller in the unit tests (which cannot afford gigabytes).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// The largest entry read (uncompressed).
    pub(super) entry: u64,
    /// The largest total uncompressed size read.
    pub(super) total: u64,
}

/// The limits of [`check_archive`].
pub(super) const LIMITS: Limits = Limits {
    entry: MAX_ENTRY_SIZE,
    total: MAX_TOTAL_SIZE,
};

/// The zip reader over the archive's bytes.
type Zip<'a> = zip::ZipArchive<Cursor<&'a [u8]>>;

/// [`check_archive`] without the panic guard, step by step: open the zip,
/// read its entries once, then check the manifests, the entity stores and the
/// store types the kind needs.
pub(super) fn check(
    path: &str,
    bytes: &[u8],
    kind: ArchiveKind,
    limits: Limits,
) -> Result<ArchiveInfo, Vec<Diagnostic>> {
    let mut zip = open(path, bytes, kind)?;
    let mut c = Checker {
        path,
        kind,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let entries = c.read_entries(&mut zip, limits);
    let package = c.check_main_manifest(&entries);
    let (policy_properties, environment_properties) = c.check_sub_manifests(&entries);
    let stores = c.check_stores(&entries, &package.id);
    c.check_store_types(&stores);
    c.finish(ArchiveInfo {
        kind,
        id: package.id,
        timestamp: package.timestamp,
        manifest: package.headers,
        policy_properties,
        environment_properties,
        stores,
        entries: zip.len() as u64,
        uncompressed_size: entries.total,
        env_selectors: entries.selectors,
        warnings: Vec::new(),
    })
}

/// Open the bytes as a zip, or say in one diagnostic why they are none
/// (empty, another format, cut short).
fn open<'a>(path: &str, bytes: &'a [u8], kind: ArchiveKind) -> Result<Zip<'a>, Vec<Diagnostic>> {
    let what = kind.describe();
    if bytes.is_empty() {
        return Err(vec![diag(
            path,
            None,
            format!("the file is empty: a {what} is a zip archive"),
        )]);
    }
    zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
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
        vec![diag(path, None, message)]
    })
}

// ------------------------------------------------------------------ entries

/// What the store checks need of an XML file that is not kept whole.
#[derive(Default)]
struct Xml {
    /// The file's sha256 (hex), to compare with its `.sha256` file.
    sha256: String,
    /// Whether it holds `<entityStoreData>`.
    entity_store: bool,
}

/// What reading every entry once leaves for the later checks, so that no
/// entry is decompressed twice.
#[derive(Default)]
struct Entries {
    /// The manifests, the `configs.xml` files and the small `.sha256` files,
    /// whole (entry name → bytes).
    kept: HashMap<String, Vec<u8>>,
    /// The other XML files (entry name → digest and kind).
    xmls: HashMap<String, Xml>,
    /// The directories and files read, in archive order.
    names: Vec<String>,
    /// The `${env.X}` selectors of those XML files.
    selectors: BTreeSet<String>,
    /// The total uncompressed size of the files read.
    total: u64,
}

impl Entries {
    /// Keep of a file read whole what the later checks need.
    fn add(&mut self, name: String, data: Vec<u8>) {
        self.total += data.len() as u64;
        self.names.push(name.clone());
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("meta-inf/")
            || lower.ends_with("/configs.xml")
            || (lower.ends_with(".sha256") && data.len() <= 1024)
        {
            self.kept.insert(name, data);
        } else if lower.ends_with(".xml") {
            if let Ok(text) = std::str::from_utf8(&data) {
                env_selectors(text, &mut self.selectors);
            }
            self.xmls.insert(
                name,
                Xml {
                    sha256: hex::encode(Sha256::digest(&data)),
                    entity_store: is_entity_store(&data),
                },
            );
        }
    }

    /// A kept entry's bytes (none for a name that was not kept).
    fn kept(&self, name: &str) -> &[u8] {
        self.kept.get(name).map_or(&[], Vec::as_slice)
    }

    /// The kept entry named `wanted` whatever its case (manifests are found
    /// so), the first in byte order if there are several.
    fn find(&self, wanted: &str) -> Option<&str> {
        self.kept
            .keys()
            .filter(|k| k.eq_ignore_ascii_case(wanted))
            .min()
            .map(String::as_str)
    }

    /// The `<dir>/configs.xml` entries one level down, sorted: one per entity
    /// store directory.
    fn store_indexes(&self) -> Vec<&str> {
        let mut found: Vec<&str> = self
            .kept
            .keys()
            .map(String::as_str)
            .filter(|k| {
                k.strip_suffix("/configs.xml")
                    .is_some_and(|d| !d.is_empty() && !d.contains('/'))
            })
            .collect();
        found.sort();
        found
    }

    /// The first entries, to show what an archive without a manifest holds.
    fn listing(&self) -> String {
        let mut listed: Vec<&str> = self.names.iter().map(String::as_str).take(5).collect();
        if self.names.len() > 5 {
            listed.push("…");
        }
        if listed.is_empty() {
            "none".to_string()
        } else {
            listed.join(", ")
        }
    }
}

/// Why an entry was not read.
enum Refusal {
    /// The entry is unusable; the others are still read.
    Entry(String),
    /// The archive is over the total size limit; nothing more is read.
    Total(String),
}

/// Entry `i` read whole (`None` for a directory, which has nothing to read),
/// unless it is a link, encrypted, too large or corrupt.
fn read_entry(
    zip: &mut Zip<'_>,
    i: usize,
    total: u64,
    limits: Limits,
) -> Result<Option<Vec<u8>>, Refusal> {
    let mut f = zip
        .by_index(i)
        .map_err(|e| Refusal::Entry(format!("cannot read the entry: {e}")))?;
    if f.is_dir() {
        return Ok(None);
    }
    if f.is_symlink() {
        return Err(Refusal::Entry(
            "the entry is a symbolic link; an Axway archive holds only files".to_string(),
        ));
    }
    // Defence in depth: zip 7's `by_index` already refuses encrypted entries.
    if f.encrypted() {
        return Err(Refusal::Entry(
            "the entry is encrypted; Axway archives are not".to_string(),
        ));
    }
    let declared = f.size();
    if declared > limits.entry {
        return Err(Refusal::Entry(format!(
            "the entry is {declared} bytes uncompressed, over the {}-byte limit",
            limits.entry
        )));
    }
    if total.saturating_add(declared) > limits.total {
        return Err(Refusal::Total(format!(
            "the archive is over {} bytes uncompressed; not reading further",
            limits.total
        )));
    }
    let mut data = Vec::new();
    (&mut f)
        .take(limits.entry + 1)
        .read_to_end(&mut data)
        .map_err(|e| {
            Refusal::Entry(format!(
                "cannot read the entry ({e}): the archive is corrupt or truncated"
            ))
        })?;
    if data.len() as u64 != declared {
        return Err(Refusal::Entry(format!(
            "the entry holds {} bytes but the archive says {declared}: the archive is corrupt",
            data.len()
        )));
    }
    Ok(Some(data))
}

// ----------------------------------------------------------------- checker

/// The package headers of `META-INF/MANIFEST.MF`.
#[derive(Default)]
struct Package {
    /// `Id` (trimmed; empty when missing).
    id: String,
    /// `Timestamp` (0 when missing or invalid).
    timestamp: u64,
    /// The whole main section.
    headers: Properties,
}

/// The archive being checked and every problem found so far.
struct Checker<'a> {
    /// The archive's name in diagnostics.
    path: &'a str,
    /// What the archive is checked as.
    kind: ArchiveKind,
    /// Problems that make the archive invalid.
    errors: Vec<Diagnostic>,
    /// Observations that do not.
    warnings: Vec<Diagnostic>,
}

impl Checker<'_> {
    /// Report an error at `file` (an entry of the archive, or the archive).
    fn error(&mut self, file: &str, line: Option<u32>, message: impl Into<String>) {
        self.errors.push(diag(file, line, message));
    }

    /// Report an error about the archive as a whole.
    fn archive_error(&mut self, message: impl Into<String>) {
        self.errors.push(diag(self.path, None, message));
    }

    /// Report an observation that does not make the archive invalid.
    fn warn(&mut self, file: &str, line: Option<u32>, message: impl Into<String>) {
        self.warnings.push(diag(file, line, message));
    }

    /// The archive's info if nothing was wrong, else every error (sorted).
    fn finish(mut self, mut info: ArchiveInfo) -> Result<ArchiveInfo, Vec<Diagnostic>> {
        if !self.errors.is_empty() {
            crate::diag::sort(&mut self.errors);
            return Err(self.errors);
        }
        crate::diag::sort(&mut self.warnings);
        info.warnings = self.warnings;
        Ok(info)
    }

    /// Read every entry once, refusing those with unsafe or repeated names
    /// and those [`read_entry`] refuses.
    fn read_entries(&mut self, zip: &mut Zip<'_>, limits: Limits) -> Entries {
        let mut entries = Entries::default();
        let mut seen: HashSet<String> = HashSet::new();
        for i in 0..zip.len() {
            let Some(name) = self.entry_name(zip, i, &mut seen) else {
                continue;
            };
            match read_entry(zip, i, entries.total, limits) {
                Ok(None) => entries.names.push(name),
                Ok(Some(data)) => entries.add(name, data),
                Err(Refusal::Entry(message)) => {
                    self.error(&entry_file(self.path, &name), None, message);
                }
                Err(Refusal::Total(message)) => {
                    self.archive_error(message);
                    break;
                }
            }
        }
        entries
    }

    /// Entry `i`'s name, unless it could write outside the target directory
    /// or was seen before.
    fn entry_name(
        &mut self,
        zip: &Zip<'_>,
        i: usize,
        seen: &mut HashSet<String>,
    ) -> Option<String> {
        let Some(name) = zip.name_for_index(i) else {
            self.archive_error(format!("entry #{i} cannot be read"));
            return None;
        };
        if let Some(why) = unsafe_name(name) {
            self.archive_error(format!(
                "entry `{}` {why}: refusing an archive that could write outside its directory",
                clip(name)
            ));
            return None;
        }
        // Defence in depth: zip 7 already keeps one entry per name.
        if !seen.insert(name.to_string()) {
            self.error(
                &entry_file(self.path, name),
                None,
                "the entry appears twice in the archive",
            );
            return None;
        }
        Some(name.to_string())
    }

    /// Parse a manifest entry; report its problems.
    fn parse_manifest(&mut self, name: &str, data: &[u8]) -> Option<Manifest> {
        let file = entry_file(self.path, name);
        let Ok(text) = std::str::from_utf8(data) else {
            self.error(&file, None, "the manifest is not UTF-8 text");
            return None;
        };
        let (m, problems) = manifest::parse(text);
        for p in problems {
            if p.warning {
                self.warn(&file, Some(p.line), p.message);
            } else {
                self.error(&file, Some(p.line), p.message);
            }
        }
        if m.get("Manifest-Version").is_none() {
            self.error(
                &file,
                Some(m.main_end_line),
                "the main section has no `Manifest-Version` header",
            );
        }
        Some(m)
    }

    /// Check `META-INF/MANIFEST.MF`, which every package has, and read its
    /// package headers.
    fn check_main_manifest(&mut self, entries: &Entries) -> Package {
        let Some(name) = entries.find(MANIFEST) else {
            self.archive_error(format!(
                "no `{MANIFEST}`: not an Axway {} (entries: {})",
                self.kind.describe(),
                entries.listing()
            ));
            return Package::default();
        };
        let Some(m) = self.parse_manifest(name, entries.kept(name)) else {
            return Package::default();
        };
        let (id, timestamp) = self.check_package_headers(&entry_file(self.path, name), &m);
        Package {
            id,
            timestamp,
            headers: to_map(&m),
        }
    }

    /// `Id` and `Timestamp`, which every Axway package has, each reported if
    /// missing or invalid.
    fn check_package_headers(&mut self, file: &str, m: &Manifest) -> (String, u64) {
        for h in REQUIRED_HEADERS.iter().skip(1) {
            if m.get(h).is_none() {
                self.error(
                    file,
                    Some(m.main_end_line),
                    format!("the main section has no `{h}` header: every Axway package has `Id` and `Timestamp`"),
                );
            }
        }
        let mut id = String::new();
        if let Some(a) = m.get("Id") {
            if a.value.trim().is_empty() {
                self.error(file, Some(a.line), "`Id` is empty");
            }
            id = a.value.trim().to_string();
        }
        let mut timestamp = 0;
        if let Some(a) = m.get("Timestamp") {
            match a.value.trim().parse::<u64>() {
                Ok(t) => timestamp = t,
                Err(_) => self.error(
                    file,
                    Some(a.line),
                    format!(
                        "`Timestamp` must be milliseconds since the epoch, found `{}`",
                        clip(&a.value)
                    ),
                ),
            }
        }
        (id, timestamp)
    }

    /// The policy and environment properties of a FED (both required); a
    /// `.pol` or `.env` carrying both is a FED under the wrong name.
    fn check_sub_manifests(
        &mut self,
        entries: &Entries,
    ) -> (Option<Properties>, Option<Properties>) {
        if self.kind != ArchiveKind::Fed {
            if entries.find(POLICY_MANIFEST).is_some()
                && entries.find(ENVIRONMENT_MANIFEST).is_some()
            {
                self.archive_error(format!(
                    "it has both `{POLICY_MANIFEST}` and `{ENVIRONMENT_MANIFEST}`: this is a deployment package (.fed), not a {}",
                    self.kind.describe()
                ));
            }
            return (None, None);
        }
        (
            self.check_sub_manifest(entries, POLICY_MANIFEST, "policy"),
            self.check_sub_manifest(entries, ENVIRONMENT_MANIFEST, "environment"),
        )
    }

    /// One of a FED's sub-manifests (`which` package's properties), reported
    /// if missing.
    fn check_sub_manifest(
        &mut self,
        entries: &Entries,
        wanted: &str,
        which: &str,
    ) -> Option<Properties> {
        let Some(name) = entries.find(wanted) else {
            self.archive_error(format!(
                "no `{wanted}`: a deployment package carries the {which} package's properties there (is this a .pol or .env renamed to .fed?)"
            ));
            return None;
        };
        self.parse_manifest(name, entries.kept(name))
            .map(|m| to_map(&m))
    }

    /// Check every entity store directory; its stores, in `configs.xml`
    /// order.
    fn check_stores(&mut self, entries: &Entries, id: &str) -> Vec<StoreInfo> {
        let indexes = entries.store_indexes();
        if indexes.is_empty() {
            self.archive_error(format!(
                "no entity store: a {} has a `<id>/configs.xml` listing its stores",
                self.kind.describe()
            ));
        }
        let mut stores = Vec::new();
        for cfg_name in indexes {
            stores.extend(self.check_store_index(entries, cfg_name, id));
        }
        stores
    }

    /// Check one `<dir>/configs.xml`: the stores it declares, its active
    /// assembly, and that the directory is named after the package `Id`.
    fn check_store_index(&mut self, entries: &Entries, cfg_name: &str, id: &str) -> Vec<StoreInfo> {
        let dir = cfg_name.trim_end_matches("/configs.xml");
        let cfg_file = entry_file(self.path, cfg_name);
        let Ok(text) = std::str::from_utf8(entries.kept(cfg_name)) else {
            self.error(&cfg_file, None, "configs.xml is not UTF-8 text");
            return Vec::new();
        };
        let cfg = match configs::parse(text) {
            Ok(cfg) => cfg,
            Err((line, msg)) => {
                self.error(
                    &cfg_file,
                    Some(line),
                    format!("malformed configs.xml: {msg}"),
                );
                return Vec::new();
            }
        };
        let mut declared: HashSet<String> = HashSet::new();
        let mut stores = Vec::new();
        for decl in &cfg.stores {
            match declared_store(entries, dir, decl, &mut declared) {
                Ok((mut store, xml)) => {
                    store.checksum_verified = self.check_store_file(entries, &store, xml);
                    stores.push(store);
                }
                Err(message) => self.error(&cfg_file, Some(decl.line), message),
            }
        }
        self.check_active_assembly(&cfg, &cfg_file, &declared);
        if !id.is_empty() && dir != id {
            self.warn(
                &cfg_file,
                None,
                format!("the store directory `{dir}` is not the package `Id` `{id}` (Axway names it after the Id)"),
            );
        }
        stores
    }

    /// Check a store's file: an entity store, matching its `.sha256` when it
    /// has one. Whether it matched.
    fn check_store_file(&mut self, entries: &Entries, store: &StoreInfo, xml: &Xml) -> bool {
        let file = entry_file(self.path, &store.file);
        if !xml.entity_store {
            self.error(
                &file,
                None,
                format!(
                    "store `{}`: the file is not an entity store (no `<entityStoreData>`)",
                    store.id
                ),
            );
        }
        let stem = store.file.strip_suffix(".xml").unwrap_or(&store.file);
        let sum_name = format!("{stem}.sha256");
        let Some(sum) = entries.kept.get(&sum_name) else {
            return false;
        };
        let expected = String::from_utf8_lossy(sum).trim().to_ascii_lowercase();
        if expected == xml.sha256 {
            return true;
        }
        self.error(
            &file,
            None,
            format!(
                "the store does not match its checksum `{sum_name}` (sha256 {}, expected {}): the archive is corrupt or was edited",
                xml.sha256,
                clip(&expected)
            ),
        );
        false
    }

    /// Check that `configs.xml`'s active assembly exists and uses only
    /// declared stores.
    fn check_active_assembly(&mut self, cfg: &Configs, cfg_file: &str, declared: &HashSet<String>) {
        let Some((active, line)) = &cfg.active_assembly else {
            return;
        };
        let Some(asm) = cfg
            .assemblies
            .iter()
            .find(|a| a.id.as_deref() == Some(active.as_str()))
        else {
            self.error(
                cfg_file,
                Some(*line),
                format!("the active assembly `{}` is not defined", clip(active)),
            );
            return;
        };
        for (comp, cline) in &asm.components {
            if !declared.contains(comp) {
                self.error(
                    cfg_file,
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

    /// Check that the stores are of the types the kind needs (judged only
    /// when some store was found: otherwise that is the error).
    fn check_store_types(&mut self, stores: &[StoreInfo]) {
        if stores.is_empty() {
            return;
        }
        let has = |t: &str| stores.iter().any(|s| s.store_type == t);
        let (has_policy, has_env) = (has(POLICY_STORE), has(ENVIRONMENT_STORE));
        for message in store_type_problems(self.kind, has_policy, has_env) {
            self.archive_error(message);
        }
    }
}

/// A `<store>` declaration's store and file (found among the XML files), or
/// why the declaration is unusable; records its id in `declared`.
fn declared_store<'e>(
    entries: &'e Entries,
    dir: &str,
    decl: &StoreDecl,
    declared: &mut HashSet<String>,
) -> Result<(StoreInfo, &'e Xml), String> {
    let (Some(sid), Some(stype)) = (&decl.id, &decl.store_type) else {
        return Err("a `<store>` needs both `id` and `type`".to_string());
    };
    if !declared.insert(sid.clone()) {
        return Err(format!("store `{sid}` is declared twice"));
    }
    let Some(url) = decl.url.as_deref().filter(|u| !u.is_empty()) else {
        return Err(format!(
            "store `{sid}` has no `<credential name='url'>` naming its file"
        ));
    };
    if url.contains(['/', '\\']) || url == ".." || url == "." {
        return Err(format!(
            "store `{sid}`: its file `{}` must be a plain name beside configs.xml",
            clip(url)
        ));
    }
    let file = format!("{dir}/{url}");
    let Some(xml) = entries.xmls.get(&file) else {
        return Err(format!(
            "store `{sid}` ({stype}) is in `{}`, which is not in the archive",
            clip(url)
        ));
    };
    let store = StoreInfo {
        dir: dir.to_string(),
        id: sid.clone(),
        store_type: stype.clone(),
        file,
        checksum_verified: false,
    };
    Ok((store, xml))
}

/// What the store types of a `kind` archive lack (or, for a `.env`, hold
/// that it must not).
fn store_type_problems(kind: ArchiveKind, has_policy: bool, has_env: bool) -> Vec<String> {
    let no_policy = format!("no policy store (`{POLICY_STORE}`)");
    let no_env = format!("no environment store (`{ENVIRONMENT_STORE}`)");
    let mut problems = Vec::new();
    match kind {
        ArchiveKind::Fed => {
            let why = "a deployment package holds the policies and the environment";
            if !has_policy {
                problems.push(format!("{no_policy}: {why}"));
            }
            if !has_env {
                problems.push(format!("{no_env}: {why}"));
            }
        }
        ArchiveKind::Pol => {
            if !has_policy {
                problems.push(format!("{no_policy}: not a policy package"));
            }
        }
        ArchiveKind::Env => {
            if !has_env {
                problems.push(format!("{no_env}: not an environment package"));
            }
            if has_policy {
                problems.push(format!("it holds a policy store (`{POLICY_STORE}`): an environment package holds only environment settings (is this a .pol or .fed?)"));
            }
        }
    }
    problems
}
