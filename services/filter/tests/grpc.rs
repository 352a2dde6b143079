//! Service test: the real gRPC server on 127.0.0.1:0, called with the
//! generated client, as smtp-edge calls it.

use mailfleet_filter::rules::{GTUBE, RuleSet};
use mailfleet_filter::{FilterService, Metrics, serve};
use mailfleet_proto::filter::filter_client::FilterClient;
use mailfleet_proto::filter::{Action, CheckRequest};
use mailfleet_runtime::CancellationToken;
use tokio::net::TcpListener;

fn request(message: &[u8]) -> CheckRequest {
    CheckRequest {
        client_ip: "192.0.2.7".into(),
        helo: "client.example".into(),
        mail_from: "sender@client.example".into(),
        rcpt_to: vec!["alice@example.org".into()],
        authenticated: false,
        message: message.to_vec(),
    }
}

#[tokio::test]
async fn check_over_grpc_accepts_clean_mail_and_rejects_gtube() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let service = FilterService::new(RuleSet::default(), Metrics::default());
    let server = tokio::spawn(serve(listener, service, shutdown.clone(), || {}));

    let mut client = FilterClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_encoding_message_size(mailfleet_runtime::grpc::MAX_MESSAGE_BYTES);

    let clean = client
        .check(request(b"Subject: hello\r\n\r\nhi\r\n"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(clean.action(), Action::Accept);
    let status = clean
        .headers
        .iter()
        .find(|h| h.name == "X-Spam-Status")
        .unwrap();
    assert_eq!(status.value, "No, score=0.0 rules=");

    let mut spam = b"Subject: spam\r\n\r\n".to_vec();
    spam.extend_from_slice(GTUBE);
    spam.extend_from_slice(b"\r\n");
    let rejected = client.check(request(&spam)).await.unwrap().into_inner();
    assert_eq!(rejected.action(), Action::Reject);
    assert_eq!(rejected.smtp_code, 554);
    assert_eq!(rejected.enhanced_code, "5.7.1");
    assert!(rejected.reason.contains("GTUBE"));

    // A message above tonic's 4 MiB default still goes through.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.resize(6 * 1024 * 1024, b'a');
    let verdict = client.check(request(&big)).await.unwrap().into_inner();
    assert_eq!(verdict.action(), Action::Accept);

    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn learn_over_grpc_trains_the_classifier() {
    use mailfleet_filter::Engine;
    use mailfleet_filter::bayes::Bayes;
    use mailfleet_proto::filter::LearnRequest;
    use std::sync::Arc;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let mut engine = Engine::with_rules(RuleSet::default());
    engine.bayes = Some(Arc::new(Bayes::memory()));
    let service = FilterService::with_engine(engine, Metrics::default());
    let server = tokio::spawn(serve(listener, service, shutdown.clone(), || {}));
    let mut client = FilterClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    for (i, spam) in [true, true, false].into_iter().enumerate() {
        let reply = client
            .learn(LearnRequest {
                message: format!("Subject: m{i}\r\n\r\nwords of message {i}\r\n").into_bytes(),
                spam,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.spam_messages + reply.ham_messages, i as u64 + 1);
    }

    // Without a classifier, learning is refused, not silently dropped.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr2 = listener.local_addr().unwrap();
    let service = FilterService::new(RuleSet::default(), Metrics::default());
    tokio::spawn(serve(listener, service, shutdown.clone(), || {}));
    let mut off = FilterClient::connect(format!("http://{addr2}"))
        .await
        .unwrap();
    let err = off
        .learn(LearnRequest {
            message: b"Subject: x\r\n\r\ny\r\n".to_vec(),
            spam: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
