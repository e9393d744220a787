//! FED / POL+ENV: archive checks on real API Gateway 7.7 deployment packages
//! (`shared/fixtures/apim-cli/fed/*.fed`) and on generated archives, bad
//! inputs (each named by file, with a line where there is one, never a panic),
//! and deterministic stage packages.

mod fed {
    use std::collections::BTreeMap;
    use std::io::{Cursor, Read, Write};
    use std::path::{Path, PathBuf};

    use gantry_envgen::fed::{
        build_fed_package, build_fed_package_with, build_gateway_package_with,
        build_pol_env_package_with, check_archive, ArchiveKind, BuildOptions, FedPackage,
        ENV_SETTINGS_HEADER, ENV_SETTINGS_PATH, FED_ENTRY, MAX_ENTRY_SIZE, MERGE_ROOT, POL_ENV_DIR,
    };
    use gantry_envgen::{Diagnostic, MapEnv};
    use serde_json::{json, Value};

    use crate::common::show;

    // ---------------------------------------------------------------- helpers

    /// `shared/fixtures/apim-cli/fed`, found above the crate.
    fn fixtures_dir() -> PathBuf {
        if let Ok(dir) = std::env::var("GANTRY_FED_FIXTURES") {
            return PathBuf::from(dir);
        }
        let rel = "shared/fixtures/apim-cli/fed";
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        for anc in here.ancestors() {
            let candidate = anc.join(rel);
            if candidate.is_dir() {
                return candidate;
            }
        }
        panic!(
            "fixtures {rel} not found above {}: set GANTRY_FED_FIXTURES",
            here.display()
        );
    }

    fn real_feds() -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(fixtures_dir()).expect("fixtures dir") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "fed") {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push((name, std::fs::read(&p).expect("read fixture")));
            }
        }
        out.sort();
        assert!(
            out.len() >= 3,
            "expected the 3 real FED fixtures, found {}",
            out.len()
        );
        out
    }

    fn newest_real_fed() -> Vec<u8> {
        real_feds().pop().map(|(_, b)| b).expect("a fixture")
    }

    fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            w.start_file(name.as_str(), opts).expect("start_file");
            w.write_all(data).expect("write");
        }
        w.finish().expect("finish").into_inner()
    }

    fn sha(data: &[u8]) -> String {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(data))
    }

    const ID: &str = "0b5f2a8e-1c7d-4e55-9a41-3f2c6d7e8f90";

    /// A small archive in the shape of the real FEDs, entry by entry.
    #[derive(Clone)]
    struct Arch {
        entries: Vec<(String, Vec<u8>)>,
    }

    impl Arch {
        fn new(kind: ArchiveKind) -> Arch {
            let mut store_types: Vec<&str> = Vec::new();
            match kind {
                ArchiveKind::Fed => {
                    store_types.extend(["PrimaryStore", "EnvSettingsStore", "CertStore"])
                }
                ArchiveKind::Pol => store_types.extend(["PrimaryStore", "ResourceRepository"]),
                ArchiveKind::Env => store_types.extend(["EnvSettingsStore", "CertStore"]),
            }
            let mut entries = vec![(
                "META-INF/MANIFEST.MF".to_string(),
                format!("Manifest-Version: 1.0\r\nId: {ID}\r\nTimestamp: 1741371775420\r\n\r\n")
                    .into_bytes(),
            )];
            if kind == ArchiveKind::Fed {
                for m in [
                    "META-INF/MANIFEST-POLICY.MF",
                    "META-INF/MANIFEST-ENVIRONMENT.MF",
                ] {
                    entries.push((m.to_string(), b"Manifest-Version: 1.0\r\n\r\n".to_vec()));
                }
            }
            let mut cfg = String::from("<configuration activeAssembly='A'>\n");
            for t in &store_types {
                cfg.push_str(&format!(
                    " <store id='{t}-1' type='{t}'>\n  <connectionCredentials>\n   <credential name='url'>{t}-1.xml</credential>\n  </connectionCredentials>\n </store>\n"
                ));
            }
            cfg.push_str(" <assembly id='A'>\n");
            for t in &store_types {
                cfg.push_str(&format!("  <component id='{t}-1'/>\n"));
            }
            cfg.push_str(" </assembly>\n</configuration>\n");
            entries.push((format!("{ID}/configs.xml"), cfg.into_bytes()));
            for t in &store_types {
                let xml = format!(
                    "<entityStoreData xmlns=\"http://www.vordel.com/2005/06/24/entityStore\">\n<entity type=\"{t}\"><fval name=\"port\"><value>${{env.PORT.TRAFFIC}}</value></fval></entity>\n</entityStoreData>\n"
                )
                .into_bytes();
                entries.push((format!("{ID}/{t}-1.sha256"), sha(&xml).into_bytes()));
                entries.push((format!("{ID}/{t}-1.xml"), xml));
            }
            Arch { entries }
        }

        fn bytes(&self) -> Vec<u8> {
            zip_of(&self.entries)
        }

        fn without(mut self, name: &str) -> Arch {
            let before = self.entries.len();
            self.entries.retain(|(n, _)| n != name);
            assert_ne!(before, self.entries.len(), "no entry {name}");
            self
        }

        fn with(mut self, name: &str, data: &[u8]) -> Arch {
            self.entries.retain(|(n, _)| n != name);
            self.entries.push((name.to_string(), data.to_vec()));
            self
        }

        fn get(&self, name: &str) -> String {
            self.entries
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
                .unwrap_or_else(|| panic!("no entry {name}"))
        }
    }

    fn errors(path: &str, bytes: &[u8], kind: ArchiveKind) -> Vec<Diagnostic> {
        match check_archive(path, bytes, kind) {
            Ok(info) => panic!("{path} was accepted as {kind:?}: {info:?}"),
            Err(e) => {
                assert!(!e.is_empty());
                e
            }
        }
    }

    /// The diagnostic whose message contains `needle`; every diagnostic must
    /// name `file` (the archive or one of its entries).
    fn find<'a>(diags: &'a [Diagnostic], file: &str, needle: &str) -> &'a Diagnostic {
        for d in diags {
            let f = d.file.as_deref().unwrap_or("");
            assert!(
                f.starts_with(file),
                "diagnostic does not name {file}: {}",
                show(diags)
            );
        }
        diags
            .iter()
            .find(|d| d.message.contains(needle))
            .unwrap_or_else(|| panic!("no diagnostic with `{needle}`:\n{}", show(diags)))
    }

    fn env() -> MapEnv {
        MapEnv::from_pairs([("DB_PASS", "s3cr3t-Pa55word"), ("API_TOKEN", "tok-123456")])
    }

    fn opts(env: &MapEnv) -> BuildOptions<'_> {
        BuildOptions {
            env,
            values_file: "environments/test.yaml",
        }
    }

    /// Regular files of a `.tar.gz`, with their modes and mtimes.
    fn untar(bytes: &[u8]) -> BTreeMap<String, (Vec<u8>, u32, u64)> {
        let mut out = BTreeMap::new();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let path = e.path().expect("path").to_string_lossy().into_owned();
            let mode = e.header().mode().expect("mode");
            let mtime = e.header().mtime().expect("mtime");
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read");
            out.insert(path, (data, mode, mtime));
        }
        out
    }

    /// A repository with the newest real FED at `gateway/app.fed` and a merge
    /// directory.
    fn fed_repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("gateway")).expect("mkdir");
        std::fs::write(dir.path().join("gateway/app.fed"), newest_real_fed()).expect("write");
        crate::common::write_files(
            dir.path(),
            &[
                (
                    "merge/apigateway/system/conf/jvm.xml",
                    "<ConfigurationFragment/>\n",
                ),
                (
                    "merge/apigateway/ext/lib/readme.txt",
                    "custom jars go here\n",
                ),
            ],
        );
        dir
    }

    fn build(repo: &Path, values: &Value) -> FedPackage {
        let env = env();
        build_fed_package_with(
            repo,
            "gateway/app.fed",
            "test",
            values,
            Some("merge/apigateway"),
            &opts(&env),
        )
        .unwrap_or_else(|e| panic!("build failed:\n{}", show(&e)))
    }

    // ---------------------------------------------------------- real archives

    #[test]
    fn fed_real_fixtures_check_clean() {
        for (name, bytes) in real_feds() {
            let info = check_archive(&name, &bytes, ArchiveKind::Fed)
                .unwrap_or_else(|e| panic!("{name}:\n{}", show(&e)));
            assert!(info.warnings.is_empty(), "{name}: {}", show(&info.warnings));
            assert_eq!(info.kind, ArchiveKind::Fed);
            assert_eq!(info.id.len(), 36, "{name}: Id {}", info.id);
            assert!(info.timestamp > 1_700_000_000_000, "{name}");
            assert_eq!(
                info.manifest.get("Manifest-Version").map(String::as_str),
                Some("1.0")
            );
            assert!(info.policy_properties.is_some() && info.environment_properties.is_some());
            let mut types: Vec<&str> = info.stores.iter().map(|s| s.store_type.as_str()).collect();
            types.sort();
            assert_eq!(
                types,
                [
                    "CertStore",
                    "EnvSettingsStore",
                    "ExtConnsStore",
                    "ListenersStore",
                    "PrimaryStore",
                    "ResourceRepository",
                    "UserStore"
                ],
                "{name}"
            );
            assert!(
                info.stores.iter().all(|s| s.checksum_verified),
                "{name}: every store has a matching .sha256"
            );
            assert!(
                info.stores.iter().all(|s| s.dir == info.id),
                "{name}: the store directory is the Id"
            );
            assert_eq!(info.entries, 18, "{name}");
            for sel in ["PORT.TRAFFIC", "PORT.MANAGEMENT", "OAUTH.SERVER"] {
                assert!(
                    info.env_selectors.contains(sel),
                    "{name}: ${{env.{sel}}}: {:?}",
                    info.env_selectors
                );
            }
        }
    }

    #[test]
    fn fed_real_fixture_is_not_a_pol_or_env() {
        let bytes = newest_real_fed();
        let e = errors("app.pol", &bytes, ArchiveKind::Pol);
        find(&e, "app.pol", "this is a deployment package (.fed)");
        let e = errors("app.env", &bytes, ArchiveKind::Env);
        find(&e, "app.env", "this is a deployment package (.fed)");
        find(&e, "app.env", "holds a policy store");
    }

    #[test]
    fn fed_generated_archives_check_clean() {
        for kind in [ArchiveKind::Fed, ArchiveKind::Pol, ArchiveKind::Env] {
            let info = check_archive("x", &Arch::new(kind).bytes(), kind)
                .unwrap_or_else(|e| panic!("{kind:?}:\n{}", show(&e)));
            assert!(info.warnings.is_empty(), "{}", show(&info.warnings));
            assert_eq!(info.id, ID);
        }
    }

    // ------------------------------------------------------- bad archives

    #[test]
    fn fed_bad_not_a_zip() {
        let e = errors("gw/app.fed", b"---\nname: not a fed\n", ArchiveKind::Fed);
        let d = find(&e, "gw/app.fed", "not a zip archive");
        assert!(
            d.message.contains("starts with text `--- name: not a`"),
            "{}",
            d.message
        );
    }

    #[test]
    fn fed_bad_empty_file() {
        let e = errors("gw/app.fed", b"", ArchiveKind::Fed);
        find(&e, "gw/app.fed", "the file is empty");
    }

    #[test]
    fn fed_bad_truncated_zip() {
        let bytes = newest_real_fed();
        let e = errors("gw/app.fed", &bytes[..bytes.len() / 2], ArchiveKind::Fed);
        let d = find(&e, "gw/app.fed", "corrupt or truncated zip archive");
        assert_eq!(d.file.as_deref(), Some("gw/app.fed"));
    }

    #[test]
    fn fed_bad_corrupt_entry_data() {
        // Damage the compressed data of the largest entry (PrimaryStore):
        // the central directory is intact, the entry's CRC or deflate stream
        // is not.
        let mut bytes = newest_real_fed();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0x5a;
        }
        let e = errors("gw/app.fed", &bytes, ArchiveKind::Fed);
        let d = e
            .iter()
            .find(|d| {
                d.file
                    .as_deref()
                    .is_some_and(|f| f.starts_with("gw/app.fed!/"))
                    && d.message.contains("corrupt")
            })
            .unwrap_or_else(|| panic!("no entry-level corruption diagnostic:\n{}", show(&e)));
        assert!(
            d.file.as_deref().is_some_and(|f| f.ends_with(".xml")),
            "{}",
            show(&e)
        );
    }

    #[test]
    fn fed_bad_missing_manifest() {
        let a = Arch::new(ArchiveKind::Fed).without("META-INF/MANIFEST.MF");
        let e = errors("gw/app.fed", &a.bytes(), ArchiveKind::Fed);
        let d = find(&e, "gw/app.fed", "no `META-INF/MANIFEST.MF`");
        assert_eq!(d.file.as_deref(), Some("gw/app.fed"));
    }

    #[test]
    fn fed_bad_manifest_missing_id_has_line() {
        let a = Arch::new(ArchiveKind::Fed).with(
            "META-INF/MANIFEST.MF",
            b"Manifest-Version: 1.0\r\nTimestamp: 1741371775420\r\n\r\n",
        );
        let e = errors("gw/app.fed", &a.bytes(), ArchiveKind::Fed);
        let d = find(&e, "gw/app.fed", "no `Id` header");
        assert_eq!(d.file.as_deref(), Some("gw/app.fed!/META-INF/MANIFEST.MF"));
        assert_eq!(d.line, Some(2), "the end of the main section");
    }

    #[test]
    fn fed_bad_manifest_syntax_and_timestamp_lines() {
        let a = Arch::new(ArchiveKind::Env).with(
            "META-INF/MANIFEST.MF",
            b"Manifest-Version: 1.0\nId: abc\nTimestamp: yesterday\nthis line has no colon\n",
        );
        let e = errors("gw/test.env", &a.bytes(), ArchiveKind::Env);
        assert_eq!(
            find(&e, "gw/test.env", "`Timestamp` must be milliseconds").line,
            Some(3)
        );
        assert_eq!(
            find(&e, "gw/test.env", "expected a `Name: value` header").line,
            Some(4)
        );
    }

    #[test]
    fn fed_bad_missing_environment_manifest() {
        let a = Arch::new(ArchiveKind::Fed).without("META-INF/MANIFEST-ENVIRONMENT.MF");
        let e = errors("gw/app.fed", &a.bytes(), ArchiveKind::Fed);
        find(&e, "gw/app.fed", "no `META-INF/MANIFEST-ENVIRONMENT.MF`");
    }

    #[test]
    fn fed_bad_missing_environment_store() {
        // A FED whose configs.xml lists no EnvSettingsStore: policies only.
        let pol = Arch::new(ArchiveKind::Pol);
        let a = pol
            .with(
                "META-INF/MANIFEST-POLICY.MF",
                b"Manifest-Version: 1.0\r\n\r\n",
            )
            .with(
                "META-INF/MANIFEST-ENVIRONMENT.MF",
                b"Manifest-Version: 1.0\r\n\r\n",
            );
        let e = errors("gw/app.fed", &a.bytes(), ArchiveKind::Fed);
        let d = find(
            &e,
            "gw/app.fed",
            "no environment store (`EnvSettingsStore`)",
        );
        assert_eq!(d.file.as_deref(), Some("gw/app.fed"));
        // And the other way round for a .pol.
        let e = errors(
            "gw/app.pol",
            &Arch::new(ArchiveKind::Env).bytes(),
            ArchiveKind::Pol,
        );
        find(&e, "gw/app.pol", "no policy store (`PrimaryStore`)");
    }

    #[test]
    fn fed_bad_zip_slip_entries() {
        for (name, why) in [
            ("../../etc/cron.d/evil", "`..` component"),
            ("/etc/passwd", "absolute path"),
            ("C:/Windows/evil.dll", "drive letter"),
        ] {
            let a = Arch::new(ArchiveKind::Fed).with(name, b"boom");
            let bytes = a.bytes();
            let e = errors("gw/app.fed", &bytes, ArchiveKind::Fed);
            let d = find(&e, "gw/app.fed", why);
            assert!(d.message.contains(name), "{}", d.message);
        }
    }

    #[test]
    fn fed_bad_store_checksum_mismatch() {
        let a = Arch::new(ArchiveKind::Fed);
        let tampered = a
            .get(&format!("{ID}/PrimaryStore-1.xml"))
            .replace("PORT.TRAFFIC", "PORT.OTHER");
        let a = a.with(&format!("{ID}/PrimaryStore-1.xml"), tampered.as_bytes());
        let e = errors("gw/app.fed", &a.bytes(), ArchiveKind::Fed);
        let d = find(&e, "gw/app.fed", "does not match its checksum");
        assert_eq!(
            d.file.as_deref(),
            Some(format!("gw/app.fed!/{ID}/PrimaryStore-1.xml").as_str())
        );
    }

    #[test]
    fn fed_bad_configs_xml_malformed_and_dangling() {
        let a = Arch::new(ArchiveKind::Fed);
        let cfg_name = format!("{ID}/configs.xml");
        let cfg = a.get(&cfg_name);
        // Truncated: an element never closed.
        let cut = cfg.find(" <assembly").expect("assembly");
        let e = errors(
            "gw/app.fed",
            &a.clone().with(&cfg_name, &cfg.as_bytes()[..cut]).bytes(),
            ArchiveKind::Fed,
        );
        let d = find(&e, "gw/app.fed", "malformed configs.xml");
        assert_eq!(
            d.file.as_deref(),
            Some(format!("gw/app.fed!/{cfg_name}").as_str())
        );
        assert!(d.line.is_some_and(|l| l > 1), "{d:?}");
        // A store whose file is not in the archive: reported at its <store> line.
        let e = errors(
            "gw/app.fed",
            &a.clone().without(&format!("{ID}/CertStore-1.xml")).bytes(),
            ArchiveKind::Fed,
        );
        let d = find(&e, "gw/app.fed", "which is not in the archive");
        let store_line = cfg
            .lines()
            .position(|l| l.contains("<store id='CertStore-1'"))
            .expect("line")
            + 1;
        assert_eq!(d.line, Some(store_line as u32));
        // No configs.xml at all.
        let e = errors(
            "gw/app.fed",
            &a.without(&cfg_name).bytes(),
            ArchiveKind::Fed,
        );
        find(&e, "gw/app.fed", "no entity store");
    }

    #[test]
    fn fed_bad_env_holding_policies() {
        let a = Arch::new(ArchiveKind::Fed)
            .without("META-INF/MANIFEST-POLICY.MF")
            .without("META-INF/MANIFEST-ENVIRONMENT.MF");
        let e = errors("gw/test.env", &a.bytes(), ArchiveKind::Env);
        find(&e, "gw/test.env", "holds a policy store");
    }

    #[test]
    fn fed_bad_inputs_never_panic_on_mutations() {
        // A deterministic xorshift, no dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let small = Arch::new(ArchiveKind::Fed).bytes();
        let real = newest_real_fed();
        let rounds: usize = std::env::var("GANTRY_FED_FUZZ_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600);
        let mut rejected = 0usize;
        for round in 0..rounds {
            let base = if round % 5 == 0 { &real } else { &small };
            let mut b = base.clone();
            match next() % 4 {
                0 => {
                    // Flip a few bytes anywhere.
                    for _ in 0..1 + next() % 8 {
                        let i = (next() as usize) % b.len();
                        b[i] ^= (next() % 255 + 1) as u8;
                    }
                }
                1 => {
                    // Flip bytes in the central directory / end record.
                    let tail = b.len().min(3000);
                    for _ in 0..1 + next() % 4 {
                        let i = b.len() - 1 - (next() as usize) % tail;
                        b[i] = next() as u8;
                    }
                }
                2 => {
                    let n = (next() as usize) % b.len();
                    b.truncate(n);
                }
                _ => {
                    let i = (next() as usize) % b.len();
                    let junk: Vec<u8> = (0..1 + next() % 64).map(|_| next() as u8).collect();
                    b.splice(i..i, junk);
                }
            }
            for kind in [ArchiveKind::Fed, ArchiveKind::Env] {
                match check_archive("m.fed", &b, kind) {
                    Ok(_) => {}
                    Err(e) => {
                        if kind == ArchiveKind::Fed {
                            rejected += 1;
                        }
                        assert!(!e.is_empty());
                        for d in &e {
                            assert!(
                                d.file.as_deref().is_some_and(|f| f.starts_with("m.fed")),
                                "round {round}: {}",
                                show(&e)
                            );
                            assert!(
                                !d.message.contains("the zip reader failed"),
                                "round {round}: the zip reader panicked: {}",
                                show(&e)
                            );
                        }
                    }
                }
            }
        }
        // Most mutations are caught; the rest changed bytes no check reads
        // (e.g. a local header's timestamp).
        eprintln!("{rejected} of {rounds} mutated FEDs rejected");
        assert!(
            rejected * 4 >= rounds * 3,
            "most mutations are caught ({rejected} of {rounds})"
        );
    }

    // ------------------------------------------ every check of an archive

    /// The 1-based line of the first line of `text` containing `needle`.
    fn line_of(text: &str, needle: &str) -> u32 {
        let i = text
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}"));
        u32::try_from(i + 1).expect("line")
    }

    /// `bytes` with the central-directory record of entry `name` changed by
    /// `patch` (the record from its `PK\1\2` signature on).
    fn patch_central(mut bytes: Vec<u8>, name: &str, patch: impl Fn(&mut [u8])) -> Vec<u8> {
        let at = (0..bytes.len().saturating_sub(46))
            .find(|&i| {
                let len = usize::from(u16::from_le_bytes([bytes[i + 28], bytes[i + 29]]));
                bytes[i..].starts_with(b"PK\x01\x02")
                    && bytes.get(i + 46..i + 46 + len) == Some(name.as_bytes())
            })
            .unwrap_or_else(|| panic!("no central record for {name}"));
        patch(&mut bytes[at..]);
        bytes
    }

    /// Set a central record's uncompressed size.
    fn set_size(record: &mut [u8], size: u32) {
        record[24..28].copy_from_slice(&size.to_le_bytes());
    }

    fn accepted(a: &Arch, kind: ArchiveKind) -> gantry_envgen::fed::ArchiveInfo {
        check_archive("x", &a.bytes(), kind).unwrap_or_else(|e| panic!("{}", show(&e)))
    }

    #[test]
    fn fed_bad_entries_that_cannot_be_read() {
        let store = format!("{ID}/CertStore-1.xml");
        let base = Arch::new(ArchiveKind::Fed);
        // Encrypted (flag bit 0): the zip reader refuses to open it.
        let bytes = patch_central(base.bytes(), &store, |r| r[8] |= 1);
        let e = errors("gw/app.fed", &bytes, ArchiveKind::Fed);
        let d = find(&e, "gw/app.fed", "cannot read the entry: ");
        assert_eq!(d.file, Some(format!("gw/app.fed!/{store}")));
        // A CRC the data does not have: read to the end, then refused.
        let bytes = patch_central(base.bytes(), &store, |r| r[16] ^= 0xff);
        let e = errors("gw/app.fed", &bytes, ArchiveKind::Fed);
        let d = find(
            &e,
            "gw/app.fed",
            "cannot read the entry (Invalid checksum): the archive is corrupt or truncated",
        );
        assert_eq!(d.file, Some(format!("gw/app.fed!/{store}")));
        // Sizes in the central directory that the data does not have.
        let real = base.get(&store).len();
        let bytes = patch_central(base.bytes(), &store, |r| set_size(r, 7));
        let e = errors("gw/app.fed", &bytes, ArchiveKind::Fed);
        let d = find(
            &e,
            "gw/app.fed",
            &format!("the entry holds {real} bytes but the archive says 7: the archive is corrupt"),
        );
        assert_eq!(d.file, Some(format!("gw/app.fed!/{store}")));
        let over = u32::try_from(MAX_ENTRY_SIZE + 1).expect("fits");
        let bytes = patch_central(base.bytes(), &store, |r| set_size(r, over));
        let e = errors("gw/app.fed", &bytes, ArchiveKind::Fed);
        let d = find(
            &e,
            "gw/app.fed",
            &format!(
                "the entry is {over} bytes uncompressed, over the {MAX_ENTRY_SIZE}-byte limit"
            ),
        );
        assert_eq!(d.file, Some(format!("gw/app.fed!/{store}")));
    }

    #[test]
    fn fed_bad_symlink_entry() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        for (name, data) in &Arch::new(ArchiveKind::Fed).entries {
            w.start_file(name.as_str(), opts).expect("start_file");
            w.write_all(data).expect("write");
        }
        w.add_symlink("conf/link", "/etc/passwd", opts)
            .expect("symlink");
        let bytes = w.finish().expect("finish").into_inner();
        let e = errors("gw/app.fed", &bytes, ArchiveKind::Fed);
        let d = find(&e, "gw/app.fed", "the entry is a symbolic link");
        assert_eq!(d.file.as_deref(), Some("gw/app.fed!/conf/link"));
        assert_eq!(e.len(), 1, "{}", show(&e));
    }

    #[test]
    fn fed_directory_entries_are_not_read() {
        // A directory entry claiming content: counted and listed, never read.
        let with_dir = |a: &Arch| {
            let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
            let opts = zip::write::SimpleFileOptions::default();
            w.add_directory("conf/", opts).expect("dir");
            for (name, data) in &a.entries {
                w.start_file(name.as_str(), opts).expect("start_file");
                w.write_all(data).expect("write");
            }
            let bytes = w.finish().expect("finish").into_inner();
            patch_central(bytes, "conf/", |r| set_size(r, 5))
        };
        let a = Arch::new(ArchiveKind::Fed);
        let info = check_archive("x", &with_dir(&a), ArchiveKind::Fed)
            .unwrap_or_else(|e| panic!("{}", show(&e)));
        assert_eq!(info.entries, a.entries.len() as u64 + 1);
        let files: usize = a.entries.iter().map(|(_, d)| d.len()).sum();
        assert_eq!(info.uncompressed_size, files as u64);
        let a = a.without("META-INF/MANIFEST.MF");
        let e = errors("x", &with_dir(&a), ArchiveKind::Fed);
        find(&e, "x", &format!("(entries: conf/, {}, ", a.entries[0].0));
    }

    #[test]
    fn fed_bad_missing_manifest_lists_the_entries() {
        let e = errors("gw/app.fed", &zip_of(&[]), ArchiveKind::Fed);
        find(
            &e,
            "gw/app.fed",
            "no `META-INF/MANIFEST.MF`: not an Axway deployment package (.fed) (entries: none)",
        );
        let a = Arch::new(ArchiveKind::Fed).without("META-INF/MANIFEST.MF");
        assert!(a.entries.len() > 5);
        let e = errors("gw/app.fed", &a.bytes(), ArchiveKind::Fed);
        let first: Vec<&str> = a.entries.iter().take(5).map(|(n, _)| n.as_str()).collect();
        find(
            &e,
            "gw/app.fed",
            &format!("(entries: {}, …)", first.join(", ")),
        );
        let few = Arch {
            entries: a.entries[..2].to_vec(),
        };
        let e = errors("gw/app.pol", &few.bytes(), ArchiveKind::Pol);
        let d = find(&e, "gw/app.pol", "no `META-INF/MANIFEST.MF`");
        assert!(
            d.message.ends_with(&format!(
                "(entries: {}, {})",
                few.entries[0].0, few.entries[1].0
            )),
            "{}",
            d.message
        );
    }

    #[test]
    fn fed_bad_manifest_contents() {
        let mf = "META-INF/MANIFEST.MF";
        let at = |file: &str| format!("gw/app.fed!/{file}");
        for (file, text, needle, line) in [
            (
                mf,
                &b"\xff\xfeId"[..],
                "the manifest is not UTF-8 text",
                None,
            ),
            (
                mf,
                b"Id: x\r\nTimestamp: 1\r\n\r\n",
                "the main section has no `Manifest-Version` header",
                Some(2),
            ),
            (
                mf,
                b"Manifest-Version: 1.0\r\nId: x\r\n\r\n",
                "no `Timestamp` header",
                Some(2),
            ),
            (
                mf,
                b"Manifest-Version: 1.0\r\nId: \r\nTimestamp: 1\r\n\r\n",
                "`Id` is empty",
                Some(2),
            ),
            (
                "META-INF/MANIFEST-POLICY.MF",
                b"Name: x\r\n\r\n",
                "the main section has no `Manifest-Version` header",
                Some(1),
            ),
            (
                "META-INF/MANIFEST-ENVIRONMENT.MF",
                b"\xff",
                "the manifest is not UTF-8 text",
                None,
            ),
        ] {
            let a = Arch::new(ArchiveKind::Fed).with(file, text);
            let e = errors("gw/app.fed", &a.bytes(), ArchiveKind::Fed);
            let d = find(&e, "gw/app.fed", needle);
            assert_eq!(d.file, Some(at(file)), "{needle}");
            assert_eq!(d.line, line, "{needle}");
        }
        let a = Arch::new(ArchiveKind::Fed).without("META-INF/MANIFEST-POLICY.MF");
        let e = errors("gw/app.fed", &a.bytes(), ArchiveKind::Fed);
        let d = find(&e, "gw/app.fed", "no `META-INF/MANIFEST-POLICY.MF`: a deployment package carries the policy package's properties there");
        assert_eq!(d.file.as_deref(), Some("gw/app.fed"));
    }

    #[test]
    fn fed_manifests_found_whatever_their_case() {
        let mut a = Arch::new(ArchiveKind::Fed);
        for (name, _) in &mut a.entries {
            if name.starts_with("META-INF/") {
                *name = name.to_ascii_lowercase();
            }
        }
        let info = accepted(&a, ArchiveKind::Fed);
        assert_eq!(info.id, ID);
        assert_eq!(info.timestamp, 1_741_371_775_420);
        assert!(info.policy_properties.is_some() && info.environment_properties.is_some());
        // Of two spellings, the first in byte order counts.
        let a = Arch::new(ArchiveKind::Fed).with("meta-inf/manifest.mf", b"broken");
        assert_eq!(accepted(&a, ArchiveKind::Fed).id, ID);
    }

    #[test]
    fn fed_manifest_warnings_and_properties() {
        let a = Arch::new(ArchiveKind::Fed).with(
            "META-INF/MANIFEST.MF",
            format!("Manifest-Version: 1.0\r\nId: {ID}\r\nId: {ID}\r\nTimestamp: 5\r\n\r\n")
                .as_bytes(),
        );
        let info = accepted(&a, ArchiveKind::Fed);
        assert_eq!(info.warnings.len(), 1, "{}", show(&info.warnings));
        let w = &info.warnings[0];
        assert_eq!(w.file.as_deref(), Some("x!/META-INF/MANIFEST.MF"));
        assert_eq!(w.line, Some(3));
        assert!(w.message.contains("appears twice"), "{}", w.message);
        assert_eq!(info.timestamp, 5);
        // A .pol or .env may carry one of the FED's sub-manifests, not both.
        let a = Arch::new(ArchiveKind::Pol).with(
            "META-INF/MANIFEST-POLICY.MF",
            b"Manifest-Version: 1.0\r\n\r\n",
        );
        let info = accepted(&a, ArchiveKind::Pol);
        assert_eq!(info.policy_properties, None);
        assert_eq!(info.environment_properties, None);
    }

    #[test]
    fn fed_bad_store_declarations() {
        let a = Arch::new(ArchiveKind::Fed);
        let cfg_name = format!("{ID}/configs.xml");
        let cfg = a.get(&cfg_name);
        let cert = "<store id='CertStore-1' type='CertStore'>";
        for (from, to, needle, line_needle) in [
            (
                cert,
                "<store id='CertStore-1'>",
                "a `<store>` needs both `id` and `type`",
                cert,
            ),
            (
                cert,
                "<store id='PrimaryStore-1' type='CertStore'>",
                "store `PrimaryStore-1` is declared twice",
                cert,
            ),
            (
                ">CertStore-1.xml<",
                "><",
                "store `CertStore-1` has no `<credential name='url'>` naming its file",
                cert,
            ),
            (
                ">CertStore-1.xml<",
                ">../CertStore-1.xml<",
                "store `CertStore-1`: its file `../CertStore-1.xml` must be a plain name beside configs.xml",
                cert,
            ),
            (
                ">CertStore-1.xml<",
                ">..<",
                "store `CertStore-1`: its file `..` must be a plain name",
                cert,
            ),
            (
                "activeAssembly='A'",
                "activeAssembly='B'",
                "the active assembly `B` is not defined",
                "activeAssembly",
            ),
            (
                "<component id='CertStore-1'/>",
                "<component id='Nope-1'/>",
                "assembly `A` uses store `Nope-1`, which is not declared",
                "<component id='CertStore-1'/>",
            ),
        ] {
            assert!(cfg.contains(from), "{from}");
            let changed = cfg.replace(from, to);
            let bytes = a.clone().with(&cfg_name, changed.as_bytes()).bytes();
            let e = errors("gw/app.fed", &bytes, ArchiveKind::Fed);
            let d = find(&e, "gw/app.fed", needle);
            assert_eq!(d.file, Some(format!("gw/app.fed!/{cfg_name}")), "{needle}");
            // Only values change: lines stay where they were.
            assert_eq!(d.line, Some(line_of(&cfg, line_needle)), "{needle}");
        }
        let e = errors(
            "gw/app.fed",
            &a.clone().with(&cfg_name, b"<configuration>\xff").bytes(),
            ArchiveKind::Fed,
        );
        let d = find(&e, "gw/app.fed", "configs.xml is not UTF-8 text");
        assert_eq!(d.file, Some(format!("gw/app.fed!/{cfg_name}")));
        // A store file that is not an entity store (its checksum matching).
        let store = format!("{ID}/CertStore-1.xml");
        let other = b"<other/>\n";
        let bytes = a
            .clone()
            .with(&store, other)
            .with(&format!("{ID}/CertStore-1.sha256"), sha(other).as_bytes())
            .bytes();
        let e = errors("gw/app.fed", &bytes, ArchiveKind::Fed);
        let d = find(
            &e,
            "gw/app.fed",
            "store `CertStore-1`: the file is not an entity store (no `<entityStoreData>`)",
        );
        assert_eq!(d.file, Some(format!("gw/app.fed!/{store}")));
        assert_eq!(e.len(), 1, "{}", show(&e));
    }

    #[test]
    fn fed_store_checksums_are_optional() {
        let a = Arch::new(ArchiveKind::Fed)
            .without(&format!("{ID}/CertStore-1.sha256"))
            // Over 1 KiB: not a checksum file, not compared.
            .with(&format!("{ID}/PrimaryStore-1.sha256"), &[b'0'; 1025]);
        let info = accepted(&a, ArchiveKind::Fed);
        assert_eq!(info.stores.len(), 3);
        for (store, verified) in info.stores.iter().zip([false, true, false]) {
            assert_eq!(store.checksum_verified, verified, "{}", store.id);
        }
        assert_eq!(info.stores[2].file, format!("{ID}/CertStore-1.xml"));
        assert_eq!(info.stores[2].dir, ID);
    }

    #[test]
    fn fed_store_directory_not_named_after_the_id_is_a_warning() {
        let mut a = Arch::new(ArchiveKind::Fed);
        for (name, data) in &mut a.entries {
            if let Some(rest) = name.strip_prefix(&format!("{ID}/")) {
                *name = format!("other/{rest}");
            }
            if name.as_str() == "other/configs.xml" {
                assert!(!data.is_empty());
            }
        }
        // A configs.xml below the top level is not a store index.
        let a = a.with("other/nested/configs.xml", b"not xml");
        let info = accepted(&a, ArchiveKind::Fed);
        assert_eq!(info.warnings.len(), 1, "{}", show(&info.warnings));
        let w = &info.warnings[0];
        assert_eq!(w.file.as_deref(), Some("x!/other/configs.xml"));
        assert!(
            w.message.contains(&format!(
                "the store directory `other` is not the package `Id` `{ID}`"
            )),
            "{}",
            w.message
        );
        assert!(info.stores.iter().all(|s| s.dir == "other"));
    }

    #[test]
    fn fed_bad_store_types_for_the_kind() {
        let sub = |a: Arch| {
            a.with(
                "META-INF/MANIFEST-POLICY.MF",
                b"Manifest-Version: 1.0\r\n\r\n",
            )
            .with(
                "META-INF/MANIFEST-ENVIRONMENT.MF",
                b"Manifest-Version: 1.0\r\n\r\n",
            )
        };
        let e = errors(
            "gw/app.fed",
            &sub(Arch::new(ArchiveKind::Env)).bytes(),
            ArchiveKind::Fed,
        );
        let d = find(&e, "gw/app.fed", "no policy store (`PrimaryStore`): a deployment package holds the policies and the environment");
        assert_eq!(d.file.as_deref(), Some("gw/app.fed"));
        assert_eq!(e.len(), 1, "{}", show(&e));
        let e = errors(
            "gw/app.env",
            &Arch::new(ArchiveKind::Pol).bytes(),
            ArchiveKind::Env,
        );
        find(
            &e,
            "gw/app.env",
            "no environment store (`EnvSettingsStore`): not an environment package",
        );
        find(&e, "gw/app.env", "it holds a policy store (`PrimaryStore`): an environment package holds only environment settings");
        assert_eq!(e.len(), 2, "{}", show(&e));
        // Without a readable store index, the store types are not judged.
        let cfg_name = format!("{ID}/configs.xml");
        for kind in [ArchiveKind::Fed, ArchiveKind::Pol, ArchiveKind::Env] {
            let a = Arch::new(kind).with(&cfg_name, b"<configuration>");
            let e = errors("gw/a", &a.bytes(), kind);
            assert_eq!(e.len(), 1, "{kind:?}: {}", show(&e));
            find(&e, "gw/a", "malformed configs.xml");
        }
    }

    // ------------------------------------------------------------- packages

    #[test]
    fn fed_package_layout() {
        let repo = fed_repo();
        let values =
            json!({"PORT": {"TRAFFIC": 8065}, "OAUTH": {"SERVER": "https://auth.test:8089"}});
        let pkg = build(repo.path(), &values);
        let files = untar(&pkg.bytes);
        let props_entry = format!("{MERGE_ROOT}/{ENV_SETTINGS_PATH}");
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "apigateway/",
                "apigateway/ext/",
                "apigateway/ext/lib/",
                "apigateway/ext/lib/readme.txt",
                "apigateway/groups/",
                "apigateway/groups/emt-group/",
                "apigateway/groups/emt-group/emt-service/",
                "apigateway/groups/emt-group/emt-service/conf/",
                props_entry.as_str(),
                "apigateway/system/",
                "apigateway/system/conf/",
                "apigateway/system/conf/jvm.xml",
                FED_ENTRY,
            ]
        );
        assert_eq!(pkg.files, 4);
        assert_eq!(pkg.entries.len(), 4);
        assert_eq!(
            files[FED_ENTRY].0,
            newest_real_fed(),
            "the FED is carried unchanged"
        );
        assert_eq!(
            String::from_utf8_lossy(&files[&props_entry].0),
            format!("{ENV_SETTINGS_HEADER}env.OAUTH.SERVER=https\\://auth.test\\:8089\nenv.PORT.TRAFFIC=8065\n")
        );
        for (name, (_, mode, mtime)) in &files {
            assert_eq!(*mtime, 0, "{name}");
            assert_eq!(
                *mode,
                if name.ends_with('/') { 0o755 } else { 0o644 },
                "{name}"
            );
        }
        assert!(pkg.digest.starts_with("sha256:") && pkg.digest.len() == 71);
        assert_eq!(pkg.values_digest, gantry_envgen::values_digest(&values));
        assert!(pkg.warnings.is_empty(), "{}", show(&pkg.warnings));
    }

    #[test]
    fn fed_package_is_deterministic() {
        let values = json!({"PORT": {"TRAFFIC": 8065, "MANAGEMENT": 8085}, "DB": {"PASSWORD": "env:DB_PASS"}});
        let a = fed_repo();
        let b = fed_repo();
        let p1 = build(a.path(), &values);
        let p2 = build(a.path(), &values);
        let p3 = build(b.path(), &values);
        assert_eq!(p1.digest, p2.digest);
        assert_eq!(p1.digest, p3.digest, "another checkout of the same commit");
        assert_eq!(p1.bytes, p3.bytes);
        // Key order in the values does not matter.
        let reordered: Value = serde_json::from_str(
            r#"{"DB": {"PASSWORD": "env:DB_PASS"}, "PORT": {"MANAGEMENT": 8085, "TRAFFIC": 8065}}"#,
        )
        .expect("json");
        assert_eq!(build(a.path(), &reordered).digest, p1.digest);
        // A changed value, a changed secret or a changed merge file changes it.
        let changed = json!({"PORT": {"TRAFFIC": 8066, "MANAGEMENT": 8085}, "DB": {"PASSWORD": "env:DB_PASS"}});
        assert_ne!(build(a.path(), &changed).digest, p1.digest);
        let other_env = MapEnv::from_pairs([("DB_PASS", "another-Pa55word")]);
        let p4 = build_fed_package_with(
            a.path(),
            "gateway/app.fed",
            "test",
            &values,
            Some("merge/apigateway"),
            &opts(&other_env),
        )
        .expect("build");
        assert_ne!(p4.digest, p1.digest);
        assert_eq!(
            p4.values_digest, p1.values_digest,
            "the values digest covers references, not secrets"
        );
        std::fs::write(
            a.path().join("merge/apigateway/system/conf/jvm.xml"),
            "<ConfigurationFragment> </ConfigurationFragment>\n",
        )
        .expect("write");
        assert_ne!(build(a.path(), &values).digest, p1.digest);
    }

    #[test]
    fn fed_package_secrets_written_not_shown() {
        let repo = fed_repo();
        let values = json!({"DB": {"PASSWORD": "env:DB_PASS"}, "PORT": {"TRAFIC": 1}});
        let pkg = build(repo.path(), &values);
        let files = untar(&pkg.bytes);
        let props = String::from_utf8_lossy(&files[&format!("{MERGE_ROOT}/{ENV_SETTINGS_PATH}")].0)
            .into_owned();
        assert!(
            props.contains("env.DB.PASSWORD=s3cr3t-Pa55word\n"),
            "{props}"
        );
        // A setting no selector of the FED uses is a warning (a typo here).
        let w = pkg
            .warnings
            .iter()
            .find(|d| d.message.contains("env.PORT.TRAFIC"))
            .unwrap_or_else(|| panic!("{}", show(&pkg.warnings)));
        assert_eq!(w.file.as_deref(), Some("environments/test.yaml"));
        assert!(!format!("{:?}", pkg.warnings).contains("s3cr3t-Pa55word"));
        // A secret that would show in a diagnostic is masked.
        let values =
            json!({"A": "env:DB_PASS", "s3cr3t-Pa55word": {"x": "env:NOT_SET_FOR_GANTRY"}});
        let env = env();
        let e = build_fed_package_with(
            repo.path(),
            "gateway/app.fed",
            "test",
            &values,
            None,
            &opts(&env),
        )
        .unwrap_err();
        let text = format!("{e:?}");
        assert!(
            text.contains("NOT_SET_FOR_GANTRY") && text.contains("***"),
            "{text}"
        );
        assert!(!text.contains("s3cr3t-Pa55word"), "{text}");
    }

    #[test]
    fn fed_package_without_values_has_no_props() {
        let repo = fed_repo();
        let pkg = build(repo.path(), &json!({}));
        assert!(
            pkg.entries
                .iter()
                .all(|e| !e.ends_with("envSettings.props")),
            "{:?}",
            pkg.entries
        );
        let env = env();
        let bare = build_fed_package_with(
            repo.path(),
            "gateway/app.fed",
            "test",
            &Value::Null,
            None,
            &opts(&env),
        )
        .expect("build");
        assert_eq!(bare.entries, [FED_ENTRY]);
        assert_eq!(bare.files, 1);
        // The process-environment entry point gives the same package.
        let same = build_fed_package(repo.path(), "gateway/app.fed", "test", &Value::Null, None)
            .expect("build");
        assert_eq!(same.digest, bare.digest);
    }

    #[test]
    fn fed_bad_gateway_paths() {
        let repo = fed_repo();
        let env = env();
        let o = opts(&env);
        let v = json!({});
        let cases: [(&str, &str, &str); 4] = [
            ("gateway/missing.fed", "gateway/missing.fed", "not found"),
            ("gateway", "gateway", "is a directory"),
            (
                "../outside.fed",
                "../outside.fed",
                "relative path inside the repository",
            ),
            (
                "/etc/passwd",
                "/etc/passwd",
                "relative path inside the repository",
            ),
        ];
        for (path, file, needle) in cases {
            let e = build_fed_package_with(repo.path(), path, "test", &v, None, &o).unwrap_err();
            let d = find(&e, file, needle);
            assert_eq!(d.field.as_deref(), Some("gateway.path"), "{d:?}");
        }
        // A corrupt FED in the repository.
        std::fs::write(repo.path().join("gateway/bad.fed"), b"PK\x03\x04 truncated")
            .expect("write");
        let e = build_fed_package_with(repo.path(), "gateway/bad.fed", "test", &v, None, &o)
            .unwrap_err();
        find(&e, "gateway/bad.fed", "corrupt or truncated");
        // A bad stage name.
        let e = build_fed_package_with(repo.path(), "gateway/app.fed", "../prod", &v, None, &o)
            .unwrap_err();
        find(&e, "gateway/app.fed", "invalid stage name");
        // A format that is not a zip format.
        let e = build_gateway_package_with(
            "yaml",
            repo.path(),
            "gateway/app.fed",
            "test",
            &v,
            None,
            &o,
        )
        .unwrap_err();
        find(&e, "gateway/app.fed", "expected `fed` or `pol-env`");
    }

    #[cfg(unix)]
    #[test]
    fn fed_bad_symlinks() {
        let repo = fed_repo();
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret.fed"), newest_real_fed()).expect("write");
        std::os::unix::fs::symlink(
            outside.path().join("secret.fed"),
            repo.path().join("gateway/link.fed"),
        )
        .expect("symlink");
        std::os::unix::fs::symlink(
            "../jvm.xml",
            repo.path().join("merge/apigateway/system/conf/link.xml"),
        )
        .expect("symlink");
        let env = env();
        let e = build_fed_package_with(
            repo.path(),
            "gateway/link.fed",
            "test",
            &json!({}),
            None,
            &opts(&env),
        )
        .unwrap_err();
        find(&e, "gateway/link.fed", "outside the repository");
        let e = build_fed_package_with(
            repo.path(),
            "gateway/app.fed",
            "test",
            &json!({}),
            Some("merge/apigateway"),
            &opts(&env),
        )
        .unwrap_err();
        find(&e, "merge/apigateway/system/conf/link.xml", "symbolic link");
    }

    #[test]
    fn fed_bad_merge_dirs() {
        let repo = fed_repo();
        let env = env();
        let o = opts(&env);
        let e = build_fed_package_with(
            repo.path(),
            "gateway/app.fed",
            "test",
            &json!({}),
            Some("merge/nope"),
            &o,
        )
        .unwrap_err();
        find(&e, "merge/nope", "not found");
        let e = build_fed_package_with(
            repo.path(),
            "gateway/app.fed",
            "test",
            &json!({}),
            Some("gateway/app.fed"),
            &o,
        )
        .unwrap_err();
        find(&e, "gateway/app.fed", "is not a directory");
        // The merge directory's own envSettings.props and stage values collide.
        crate::common::write_files(
            repo.path(),
            &[(
                &format!("merge/apigateway/{ENV_SETTINGS_PATH}"),
                "env.PORT.TRAFFIC=8080\n",
            )],
        );
        let e = build_fed_package_with(
            repo.path(),
            "gateway/app.fed",
            "test",
            &json!({"PORT": {"TRAFFIC": 1}}),
            Some("merge/apigateway"),
            &o,
        )
        .unwrap_err();
        find(
            &e,
            &format!("merge/apigateway/{ENV_SETTINGS_PATH}"),
            "its own envSettings.props",
        );
        // Without values, the merge directory's file is carried as it is.
        let pkg = build_fed_package_with(
            repo.path(),
            "gateway/app.fed",
            "test",
            &json!({}),
            Some("merge/apigateway"),
            &o,
        )
        .expect("build");
        let files = untar(&pkg.bytes);
        assert_eq!(
            files[&format!("{MERGE_ROOT}/{ENV_SETTINGS_PATH}")].0,
            b"env.PORT.TRAFFIC=8080\n"
        );
    }

    #[test]
    fn fed_bad_everything_reported_at_once() {
        let repo = fed_repo();
        let env = env();
        let e = build_fed_package_with(
            repo.path(),
            "gateway/missing.fed",
            "test",
            &json!({"X": "env:NOT_SET_FOR_GANTRY"}),
            Some("merge/nope"),
            &opts(&env),
        )
        .unwrap_err();
        let files: Vec<&str> = e.iter().filter_map(|d| d.file.as_deref()).collect();
        assert!(files.contains(&"gateway/missing.fed"), "{}", show(&e));
        assert!(files.contains(&"environments/test.yaml"), "{}", show(&e));
        assert!(files.contains(&"merge/nope"), "{}", show(&e));
    }

    // ------------------------------------------------------------- pol-env

    fn pol_env_repo(files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("gw")).expect("mkdir");
        for (name, data) in files {
            std::fs::write(dir.path().join("gw").join(name), data).expect("write");
        }
        dir
    }

    fn pol_env(repo: &Path, stage: &str) -> Result<FedPackage, Vec<Diagnostic>> {
        let env = env();
        build_pol_env_package_with(
            repo,
            "gw/",
            stage,
            &json!({"PORT": {"TRAFFIC": 8065}}),
            None,
            &opts(&env),
        )
    }

    #[test]
    fn fed_pol_env_package() {
        let pol = Arch::new(ArchiveKind::Pol).bytes();
        let test_env = Arch::new(ArchiveKind::Env).bytes();
        let prod_env = Arch::new(ArchiveKind::Env)
            .with(
                "META-INF/MANIFEST.MF",
                format!("Manifest-Version: 1.0\r\nId: {ID}\r\nTimestamp: 1741371775421\r\n\r\n")
                    .as_bytes(),
            )
            .bytes();
        let repo = pol_env_repo(&[
            ("api.pol", pol.clone()),
            ("test.env", test_env.clone()),
            ("prod.env", prod_env),
        ]);
        let pkg = pol_env(repo.path(), "test").unwrap_or_else(|e| panic!("{}", show(&e)));
        assert_eq!(
            pkg.entries,
            [
                format!("{MERGE_ROOT}/{ENV_SETTINGS_PATH}"),
                format!("{POL_ENV_DIR}/api.pol"),
                format!("{POL_ENV_DIR}/test.env"),
            ]
        );
        let files = untar(&pkg.bytes);
        assert_eq!(files[&format!("{POL_ENV_DIR}/api.pol")].0, pol);
        assert_eq!(files[&format!("{POL_ENV_DIR}/test.env")].0, test_env);
        let prod = pol_env(repo.path(), "prod").expect("prod");
        assert_ne!(prod.digest, pkg.digest, "each stage takes its own .env");
        assert_eq!(
            pol_env(repo.path(), "test").expect("again").digest,
            pkg.digest
        );
        let env = env();
        let via = build_gateway_package_with(
            "pol-env",
            repo.path(),
            "gw",
            "test",
            &json!({"PORT": {"TRAFFIC": 8065}}),
            None,
            &opts(&env),
        )
        .expect("dispatch");
        assert_eq!(via.digest, pkg.digest);
    }

    #[test]
    fn fed_bad_pol_env_missing_stage_env_lists_available() {
        let repo = pol_env_repo(&[
            ("api.pol", Arch::new(ArchiveKind::Pol).bytes()),
            ("test.env", Arch::new(ArchiveKind::Env).bytes()),
            ("prod.env", Arch::new(ArchiveKind::Env).bytes()),
        ]);
        let e = pol_env(repo.path(), "preprod").unwrap_err();
        let d = find(&e, "gw/preprod.env", "not found");
        assert!(
            d.message.contains("available: `prod.env`, `test.env`"),
            "{}",
            d.message
        );
        let repo = pol_env_repo(&[("api.pol", Arch::new(ArchiveKind::Pol).bytes())]);
        let e = pol_env(repo.path(), "test").unwrap_err();
        find(&e, "gw/test.env", "there is no .env file at all");
    }

    #[test]
    fn fed_bad_pol_env_two_pols_or_none() {
        let repo = pol_env_repo(&[
            ("a.pol", Arch::new(ArchiveKind::Pol).bytes()),
            ("b.pol", Arch::new(ArchiveKind::Pol).bytes()),
            ("test.env", Arch::new(ArchiveKind::Env).bytes()),
        ]);
        let e = pol_env(repo.path(), "test").unwrap_err();
        let d = find(&e, "gw", "2 policy packages");
        assert!(d.message.contains("`a.pol`, `b.pol`"), "{}", d.message);
        let repo = pol_env_repo(&[("test.env", Arch::new(ArchiveKind::Env).bytes())]);
        let e = pol_env(repo.path(), "test").unwrap_err();
        find(&e, "gw", "no policy package");
    }

    #[test]
    fn fed_bad_pol_env_corrupt_archives() {
        let repo = pol_env_repo(&[
            ("api.pol", Arch::new(ArchiveKind::Env).bytes()),
            ("test.env", b"env.PORT.TRAFFIC=8065\n".to_vec()),
        ]);
        let e = pol_env(repo.path(), "test").unwrap_err();
        let d = find(&e, "gw/", "not a zip archive");
        assert_eq!(d.file.as_deref(), Some("gw/test.env"));
        let d = find(&e, "gw/", "no policy store");
        assert_eq!(d.file.as_deref(), Some("gw/api.pol"));
    }

    #[test]
    fn fed_bad_pol_env_not_a_directory_and_env_dir() {
        let repo = pol_env_repo(&[("api.pol", Arch::new(ArchiveKind::Pol).bytes())]);
        std::fs::create_dir_all(repo.path().join("gw/test.env")).expect("mkdir");
        let e = pol_env(repo.path(), "test").unwrap_err();
        let d = find(&e, "gw/test.env", "is a directory");
        assert_eq!(d.file.as_deref(), Some("gw/test.env"));
        let env = env();
        let e = build_pol_env_package_with(
            repo.path(),
            "gw/api.pol",
            "test",
            &json!({}),
            None,
            &opts(&env),
        )
        .unwrap_err();
        find(&e, "gw/api.pol", "is not a directory");
        let e = build_pol_env_package_with(
            repo.path(),
            "nowhere",
            "test",
            &json!({}),
            None,
            &opts(&env),
        )
        .unwrap_err();
        find(&e, "nowhere", "not found");
    }
}
