use http::{HeaderMap, HeaderValue};

use super::*;
use crate::payload::tests::headers;

const SECRET: &[u8] = b"It's a Secret to Everybody";
const BODY: &[u8] =
    br#"{"ref":"refs/heads/main","after":"9fceb02d0ae598e95dc970b74767f19372d61af8"}"#;

fn signed(provider: Provider, secret: &[u8], body: &[u8]) -> HeaderMap {
    let (name, value) = signing_header(provider, secret, body);
    headers(&[(name, &value)])
}

#[test]
fn provider_round_trips_through_route_segment() {
    for p in Provider::ALL {
        assert_eq!(p.as_str().parse::<Provider>(), Ok(p));
        assert_eq!(p.to_string(), p.as_str());
    }
    let err = "gogs"
        .parse::<Provider>()
        .expect_err("gogs is not a provider");
    assert!(err.to_string().contains("/webhooks/github"), "{err}");
    assert!("GitHub".parse::<Provider>().is_err());
}

#[test]
fn github_documented_test_vector() {
    // From GitHub's "Validating webhook deliveries" documentation.
    let hex = sign_hex(SECRET, b"Hello, World!");
    assert_eq!(
        hex,
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
    let h = headers(&[("x-hub-signature-256", &format!("sha256={hex}"))]);
    assert_eq!(
        verify(Provider::Github, &h, b"Hello, World!", SECRET),
        Ok(())
    );
}

#[test]
fn every_scheme_accepts_a_valid_signature() {
    for p in Provider::ALL {
        assert_eq!(
            verify(p, &signed(p, SECRET, BODY), BODY, SECRET),
            Ok(()),
            "{p}"
        );
    }
}

#[test]
fn every_scheme_rejects_the_wrong_secret() {
    for p in Provider::ALL {
        let h = signed(p, b"not the secret", BODY);
        assert_eq!(
            verify(p, &h, BODY, SECRET),
            Err(SignatureError::Mismatch),
            "{p}"
        );
    }
}

#[test]
fn every_scheme_rejects_a_missing_header() {
    let expected = [
        (Provider::Github, "X-Hub-Signature-256"),
        (Provider::Gitlab, "X-Gitlab-Token"),
        (Provider::Gitea, "X-Gitea-Signature"),
        (Provider::Bitbucket, "X-Hub-Signature"),
        (Provider::Generic, "X-Gantry-Signature"),
    ];
    for (p, header) in expected {
        // Another scheme's header does not count.
        let h = headers(&[("x-unrelated-signature", "sha256=00")]);
        let err = verify(p, &h, BODY, SECRET).expect_err("no signature header");
        assert_eq!(err, SignatureError::Missing { header }, "{p}");
        assert!(err.to_string().contains(header), "{err}");
    }
}

#[test]
fn hmac_schemes_reject_malformed_hex() {
    let good = sign_hex(SECRET, BODY);
    let cases = [
        (
            Provider::Github,
            "X-Hub-Signature-256",
            format!("sha256={}", &good[..63]),
        ),
        (Provider::Github, "X-Hub-Signature-256", good.clone()),
        (
            Provider::Github,
            "X-Hub-Signature-256",
            format!("sha1={good}"),
        ),
        (
            Provider::Gitea,
            "X-Gitea-Signature",
            format!("{}zz", &good[..62]),
        ),
        (
            Provider::Gitea,
            "X-Gitea-Signature",
            format!("sha256={good}"),
        ),
        (Provider::Bitbucket, "X-Hub-Signature", "sha256=".to_owned()),
        (
            Provider::Generic,
            "X-Gantry-Signature",
            format!("sha256={good}00"),
        ),
    ];
    for (p, header, value) in cases {
        let err = verify(p, &headers(&[(header, &value)]), BODY, SECRET).expect_err(&value);
        assert!(
            matches!(err, SignatureError::Malformed { header: h, .. } if h == header),
            "{p} {value}: {err:?}"
        );
        assert!(err.to_string().contains("HMAC-SHA256"), "{err}");
    }
}

#[test]
fn non_ascii_signature_header_is_malformed() {
    let mut h = HeaderMap::new();
    h.insert(
        "x-hub-signature-256",
        HeaderValue::from_bytes(b"sha256=\xff").expect("opaque bytes are allowed"),
    );
    assert!(matches!(
        verify(Provider::Github, &h, BODY, SECRET),
        Err(SignatureError::Malformed { .. })
    ));
}

#[test]
fn every_scheme_rejects_a_tampered_body() {
    let tampered =
        br#"{"ref":"refs/heads/main","after":"0000000000000000000000000000000000000000"}"#;
    for p in Provider::ALL.into_iter().filter(|p| *p != Provider::Gitlab) {
        let h = signed(p, SECRET, BODY);
        assert_eq!(
            verify(p, &h, tampered, SECRET),
            Err(SignatureError::Mismatch),
            "{p}"
        );
    }
    // GitLab's token does not cover the body: any body with the right token passes.
    let h = signed(Provider::Gitlab, SECRET, BODY);
    assert_eq!(verify(Provider::Gitlab, &h, tampered, SECRET), Ok(()));
}

#[test]
fn signatures_accept_uppercase_hex_and_header_names_in_any_case() {
    let upper = sign_hex(SECRET, BODY).to_uppercase();
    let h = headers(&[("X-GITEA-SIGNATURE", &upper)]);
    assert_eq!(verify(Provider::Gitea, &h, BODY, SECRET), Ok(()));
}

#[test]
fn gitea_also_accepts_the_github_style_header() {
    let h = signed(Provider::Github, SECRET, BODY);
    assert_eq!(verify(Provider::Gitea, &h, BODY, SECRET), Ok(()));
    // When both are present X-Gitea-Signature decides.
    let mut h = signed(Provider::Github, SECRET, BODY);
    h.insert("x-gitea-signature", HeaderValue::from_static("00"));
    assert!(matches!(
        verify(Provider::Gitea, &h, BODY, SECRET),
        Err(SignatureError::Malformed {
            header: "X-Gitea-Signature",
            ..
        })
    ));
}

#[test]
fn gitlab_token_must_match_exactly() {
    for token in [
        "It's a Secret to Everybod",
        "It's a Secret to Everybody!",
        "",
    ] {
        let h = headers(&[("x-gitlab-token", token)]);
        assert_eq!(
            verify(Provider::Gitlab, &h, BODY, SECRET),
            Err(SignatureError::Mismatch),
            "{token:?}"
        );
    }
}

#[test]
fn an_empty_secret_never_verifies() {
    for p in Provider::ALL {
        let h = signed(p, b"", BODY);
        assert_eq!(
            verify(p, &h, BODY, b""),
            Err(SignatureError::NoSecret),
            "{p}"
        );
    }
}

#[test]
fn errors_never_echo_the_secret() {
    let secret_text = String::from_utf8_lossy(SECRET);
    for p in Provider::ALL {
        for h in [HeaderMap::new(), signed(p, b"wrong", BODY)] {
            let err = verify(p, &h, BODY, SECRET).expect_err("must fail");
            assert!(!err.to_string().contains(&*secret_text), "{err}");
        }
    }
}
