//! An alias naming several accounts is queued as one recipient per account,
//! all with the alias's address: each account gets the message exactly
//! once (the idempotency key is per account, not per address).

mod common;

use std::time::Duration;

use mailfleet_proto::queue::{QueueEntry, Recipient};
use mailfleet_testkit::DnsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_account_of_an_alias_gets_the_message_once() {
    let dns = DnsServer::start([]).await;
    let node = common::node(&dns, common::free_port(), |_| {}).await;
    let message = b"Subject: to the team\r\n\r\nhello\r\n";
    let blob = node.ctx.spool().await.unwrap().put(message).await.unwrap();
    let recipient = |account: &str| Recipient {
        address: "team@example.com".into(),
        account: account.into(),
        ..Recipient::default()
    };
    node.ctx
        .queue()
        .await
        .unwrap()
        .enqueue(&QueueEntry {
            id: uuid::Uuid::now_v7().to_string(),
            mail_from: "sender@remote.test".into(),
            recipients: vec![recipient("alice@example.com"), recipient("bob@example.com")],
            blob,
            size: message.len() as u64,
            received_at_ms: common::now_ms(),
            ..QueueEntry::default()
        })
        .await
        .unwrap();
    node.wait_empty_queue().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for account in ["alice@example.com", "bob@example.com"] {
        let inbox = node.inbox(account).await;
        assert_eq!(inbox.len(), 1, "{account}");
        assert!(inbox[0].contains("Delivered-To: team@example.com\r\n"));
    }
}
