//! A new user's way in: openssl makes the key and a Matter CSR, curl posts it, openssl reads
//! the PKCS#7 response and verifies the chain. Real curl, real openssl, real TLS (issue 3).
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: tests

mod common;

use std::path::Path;
use std::process::Output;

use common::assert_success;
use common::est::TestServer;
use matter_est::profile::dev;

async fn run(dir: &Path, args: &[&str]) -> Output {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(&args[0])
            .args(&args[1..])
            .current_dir(dir)
            .output()
            .expect("curl and openssl are installed (scripts/test installs them)")
    })
    .await
    .unwrap()
}

fn ok(out: &Output) -> String {
    assert_success(out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const REQ_CNF: &str = "oid_section = oids
[oids]
matterVID = 1.3.6.1.4.1.37244.2.1
matterPID = 1.3.6.1.4.1.37244.2.2
[req]
distinguished_name = dn
prompt = no
string_mask = utf8only
[dn]
CN = DEVICE_ID
matterVID = FFF1
matterPID = 8000
";

/// openssl: a P-256 key and a Matter CSR (VID/PID attributes) for `device`, PEM.
async fn openssl_csr(dir: &Path, device: &str) {
    std::fs::write(
        dir.join(format!("{device}.cnf")),
        REQ_CNF.replace("DEVICE_ID", device),
    )
    .unwrap();
    ok(&run(
        dir,
        &[
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{device}.key"),
            "-config",
            &format!("{device}.cnf"),
            "-out",
            &format!("{device}.csr"),
        ],
    )
    .await);
}

struct Paths {
    dir: tempfile::TempDir,
    ca: String,
    gw_cert: String,
    gw_key: String,
    paa: String,
    pai: String,
}

fn paths(server: &TestServer) -> Paths {
    let p = |rel: &str| server.env.path(rel).display().to_string();
    Paths {
        dir: tempfile::tempdir().unwrap(),
        ca: p(dev::files::TLS_CA_CERT),
        gw_cert: p(dev::files::GATEWAY_CERT),
        gw_key: p(dev::files::GATEWAY_KEY),
        paa: p(dev::files::PAA_CERT),
        pai: p(dev::files::PAI_CERT),
    }
}

/// curl posts `device`.csr; the body is decoded by openssl into `device`-chain.pem.
async fn curl_enroll(
    server: &TestServer,
    p: &Paths,
    device: &str,
    extra: &[&str],
    path: &str,
) -> String {
    let d = p.dir.path();
    let url = server.url(path);
    let mut args = vec![
        "curl",
        "-sS",
        "--cacert",
        &p.ca,
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
    ];
    let data = format!("@{device}.csr");
    args.push(&data);
    let headers = format!("{device}.headers");
    let body = format!("{device}.p7.b64");
    args.extend(["-D", &headers, "-o", &body]);
    args.extend(extra);
    args.push(&url);
    ok(&run(d, &args).await);
    let head = std::fs::read_to_string(d.join(&headers)).unwrap();
    if head.starts_with("HTTP/1.1 200") {
        ok(&run(
            d,
            &[
                "openssl",
                "base64",
                "-d",
                "-in",
                &body,
                "-out",
                &format!("{device}.p7.der"),
            ],
        )
        .await);
        ok(&run(
            d,
            &[
                "openssl",
                "pkcs7",
                "-inform",
                "DER",
                "-in",
                &format!("{device}.p7.der"),
                "-print_certs",
                "-out",
                &format!("{device}-chain.pem"),
            ],
        )
        .await);
    }
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_and_curl_enroll_as_a_gateway() {
    let server = TestServer::start(|t| t).await;
    let p = paths(&server);
    let d = p.dir.path();

    // cacerts: PAI and PAA, readable by openssl.
    let url = server.url("/.well-known/est/cacerts");
    ok(&run(
        d,
        &["curl", "-sS", "--cacert", &p.ca, "-o", "cacerts.b64", &url],
    )
    .await);
    ok(&run(
        d,
        &[
            "openssl",
            "base64",
            "-d",
            "-in",
            "cacerts.b64",
            "-out",
            "cacerts.der",
        ],
    )
    .await);
    let certs = ok(&run(
        d,
        &[
            "openssl",
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            "cacerts.der",
            "-print_certs",
            "-noout",
        ],
    )
    .await);
    assert!(
        certs.contains("Matter Dev PAI FFF1") && certs.contains("Matter Dev PAA FFF1"),
        "{certs}"
    );

    // simpleenroll with the gateway certificate, TLS 1.3 then TLS 1.2.
    for (device, tls) in [
        ("dev-0001", ["--tlsv1.3", "--tls-max", "1.3"]),
        ("dev-0002", ["--tlsv1.2", "--tls-max", "1.2"]),
    ] {
        openssl_csr(d, device).await;
        let mut extra = vec!["--cert", &p.gw_cert, "--key", &p.gw_key];
        extra.extend(tls);
        let head = curl_enroll(
            &server,
            &p,
            device,
            &extra,
            "/.well-known/est/dev/simpleenroll",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.contains("Content-Type: application/pkcs7-mime; smime-type=certs-only\r\n"),
            "{head}"
        );
        // The DAC is the certificate for the device (a DER SET OF is sorted, so not
        // necessarily first); verify DAC -> PAI -> PAA with openssl.
        let chain = std::fs::read_to_string(d.join(format!("{device}-chain.pem"))).unwrap();
        std::fs::write(d.join(format!("{device}.pem")), dac_pem(&chain, device)).unwrap();
        let verified = ok(&run(
            d,
            &[
                "openssl",
                "verify",
                "-CAfile",
                &p.paa,
                "-untrusted",
                &p.pai,
                &format!("{device}.pem"),
            ],
        )
        .await);
        assert!(verified.contains(": OK"), "{verified}");
        // The DAC carries the device's key.
        let dac_key = ok(&run(
            d,
            &[
                "openssl",
                "x509",
                "-in",
                &format!("{device}.pem"),
                "-noout",
                "-pubkey",
            ],
        )
        .await);
        let csr_key = ok(&run(
            d,
            &[
                "openssl",
                "pkey",
                "-in",
                &format!("{device}.key"),
                "-pubout",
            ],
        )
        .await);
        assert_eq!(dac_key, csr_key);
        let subject = ok(&run(
            d,
            &[
                "openssl",
                "x509",
                "-in",
                &format!("{device}.pem"),
                "-noout",
                "-subject",
                "-nameopt",
                "oid",
            ],
        )
        .await);
        assert!(
            subject.contains(&format!(
                "2.5.4.3={device}, 1.3.6.1.4.1.37244.2.1=FFF1, 1.3.6.1.4.1.37244.2.2=8000"
            )),
            "{subject}"
        );
    }
    assert_eq!(server.ledger.count("dev").unwrap(), 2);

    // The same CSR again (a gateway that lost the response): the same DAC, not a second one.
    let before = std::fs::read_to_string(d.join("dev-0001-chain.pem")).unwrap();
    let head = curl_enroll(
        &server,
        &p,
        "dev-0001",
        &["--cert", &p.gw_cert, "--key", &p.gw_key],
        "/.well-known/est/dev/simpleenroll",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        std::fs::read_to_string(d.join("dev-0001-chain.pem")).unwrap(),
        before
    );
    assert_eq!(server.ledger.count("dev").unwrap(), 2);
    // The same device with a new key: 403 with the reason.
    openssl_csr(d, "dev-0001").await;
    let head = curl_enroll(
        &server,
        &p,
        "dev-0001",
        &["--cert", &p.gw_cert, "--key", &p.gw_key],
        "/.well-known/est/dev/simpleenroll",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let reason = std::fs::read_to_string(d.join("dev-0001.p7.b64")).unwrap();
    assert!(reason.contains("already issued"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_device_bootstraps_with_a_token_and_renews_with_its_dac() {
    let server = TestServer::start(|t| t).await;
    let p = paths(&server);
    let d = p.dir.path();
    let (id, secret) =
        matter_est::policy::create_token(server.ledger.as_ref(), "dev", None).unwrap();
    openssl_csr(d, "dev-0100").await;

    // Without credentials: 401 with the Basic challenge.
    let head = curl_enroll(
        &server,
        &p,
        "dev-0100",
        &[],
        "/.well-known/est/simpleenroll",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        head.contains("WWW-Authenticate: Basic realm=\"matter-est\""),
        "{head}"
    );

    // With the token as HTTP Basic.
    let user = format!("{id}:{secret}");
    let head = curl_enroll(
        &server,
        &p,
        "dev-0100",
        &["-u", &user],
        "/.well-known/est/simpleenroll",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let chain = std::fs::read_to_string(d.join("dev-0100-chain.pem")).unwrap();
    let dac = dac_pem(&chain, "dev-0100");
    std::fs::write(d.join("dac.pem"), &dac).unwrap();

    // Renew with the DAC as the client certificate and a new key, same subject.
    std::fs::copy(d.join("dev-0100.key"), d.join("old.key")).unwrap();
    openssl_csr(d, "dev-0100").await;
    let head = curl_enroll(
        &server,
        &p,
        "dev-0100",
        &["--cert", "dac.pem", "--key", "old.key"],
        "/.well-known/est/simplereenroll",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let renewed = std::fs::read_to_string(d.join("dev-0100-chain.pem")).unwrap();
    assert_ne!(dac_pem(&renewed, "dev-0100"), dac);
    assert_eq!(server.ledger.count("dev").unwrap(), 2);
}

/// The PEM block of `openssl pkcs7 -print_certs` output whose subject names `device`: the DAC,
/// found by its subject rather than its position.
fn dac_pem(print_certs: &str, device: &str) -> String {
    let block = print_certs
        .split_inclusive("-----END CERTIFICATE-----\n")
        .find(|b| {
            b.lines()
                .any(|l| l.starts_with("subject=") && l.contains(&format!("CN = {device},")))
        })
        .unwrap_or_else(|| panic!("no certificate for {device} in:\n{print_certs}"));
    block[block.find("-----BEGIN").unwrap()..].to_string()
}
