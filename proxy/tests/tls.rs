//! TLS on both legs with rcgen test certificates: termination (h1 and h2 via ALPN),
//! certificate reload without a restart, and an https upstream trusted via --upstream-ca.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use retrace_traces::Outcome;
use serde_json::json;

fn chat_request(authority: &str) -> Request<Full<Bytes>> {
    let body = json!({"stream":true,"max_tokens":4,"messages":[{"role":"user","content":"hi"}]});
    Request::post(format!("https://{authority}/v1/chat/completions"))
        .header("host", authority)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_termination_h1_and_h2_and_certificate_reload() {
    let upstream = spawn_upstream(None).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a, der_a) = test_cert();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, &cert_a).unwrap();
    std::fs::write(&key_path, &key_a).unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&upstream.url(), &dir.path().join("out"));
    config.tls_cert = Some((cert_path.clone(), key_path.clone()));
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let addr = proxy.local_addr();
    let authority = format!("localhost:{}", addr.port());

    let direct = {
        let body =
            json!({"stream":true,"max_tokens":4,"messages":[{"role":"user","content":"hi"}]});
        post(
            &h1_client(),
            &format!("{}/v1/chat/completions", upstream.url()),
            &body,
            &[],
        )
        .await
        .2
    };
    for (alpn, expected) in [
        (&b"h2"[..], &b"h2"[..]),
        (&b"http/1.1"[..], &b"http/1.1"[..]),
    ] {
        let client = tls_client_config(&der_a, &[alpn]);
        let (negotiated, status, body, peer) =
            tls_request(addr, client, chat_request(&authority)).await;
        assert_eq!(negotiated.as_deref(), Some(expected));
        assert_eq!(status, 200);
        assert_eq!(
            body,
            direct,
            "byte-identical over TLS ({})",
            String::from_utf8_lossy(alpn)
        );
        assert_eq!(peer, der_a.to_vec());
    }
    // TLS 1.1 and below are not offered at all by rustls; check 1.2 is accepted.
    {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der_a.clone()).unwrap();
        let tls12 = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let (_, status, _, _) =
            tls_request(addr, std::sync::Arc::new(tls12), chat_request(&authority)).await;
        assert_eq!(status, 200);
    }

    // Replace the files: the new certificate is served without a restart.
    let (cert_b, key_b, der_b) = test_cert();
    std::fs::write(&key_path, &key_b).unwrap();
    std::fs::write(&cert_path, &cert_b).unwrap();
    let mut reloaded = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let client = tls_client_config(&der_b, &[b"http/1.1"]);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        if tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .is_ok()
        {
            reloaded = true;
            break;
        }
    }
    assert!(
        reloaded,
        "the new certificate is served after the files change"
    );
    let (_, status, _, peer) = tls_request(
        addr,
        tls_client_config(&der_b, &[b"h2"]),
        chat_request(&authority),
    )
    .await;
    assert_eq!((status, peer), (200, der_b.to_vec()));
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    let rows = sink.rows();
    assert_eq!(rows.len(), 4);
    assert!(rows
        .iter()
        .all(|r| r.outcome == Outcome::Ok && r.output_tokens == Some(4)));
    // The Forwarded header says the client spoke https.
    let seen = upstream.seen.lock().unwrap();
    let forwarded = seen[1]
        .headers
        .iter()
        .find(|(k, _)| k == "forwarded")
        .unwrap()
        .1
        .clone();
    assert!(forwarded.contains("proto=https"), "{forwarded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_trusted_with_upstream_ca() {
    let (cert, key, _) = test_cert();
    let upstream = spawn_upstream(Some(tls_server_config(&cert, &key, &[b"http/1.1"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &cert).unwrap();
    let https_url = format!("https://localhost:{}", upstream.addr.port());
    let body = json!({"max_tokens":3,"prompt":"x"});

    // Without the CA the upstream's certificate is refused: 502, recorded.
    let sink = MemorySink::default();
    let mut config = proxy_config(&https_url, &dir.path().join("out"));
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let url = format!("http://{}/v1/completions", proxy.local_addr());
    assert_eq!(post(&h1_client(), &url, &body, &[]).await.0, 502);
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(sink.rows()[0].outcome, Outcome::UpstreamError);

    // With --upstream-ca it works, over pooled connections.
    let sink = MemorySink::default();
    let mut config = proxy_config(&https_url, &dir.path().join("out"));
    config.upstream_ca = Some(ca_path.clone());
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let url = format!("http://{}/v1/completions", proxy.local_addr());
    for _ in 0..3 {
        let (status, _, text) = post(&h1_client(), &url, &body, &[]).await;
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&text).contains(" w2"));
    }
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(sink.rows().len(), 3);
    assert!(sink.rows().iter().all(|r| r.outcome == Outcome::Ok));

    // A missing CA file is a clear error naming the file.
    let mut config = proxy_config(&https_url, &dir.path().join("out"));
    config.upstream_ca = Some(dir.path().join("missing.pem"));
    let err = retrace_proxy::spawn(config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing.pem"), "{err}");
}
