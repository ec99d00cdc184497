//! SQS beyond the contract: secrets never shown, and interop with an independent client
//! (boto3, from PyPI, installed with pip when missing) through the message attributes.

mod sqs_support;

use std::process::Command;
use std::time::Duration;

use tasker_messaging::{
    CorrelationId, MessagingService, OutgoingMessage, QueueName, SqsCredentials, SqsMessageService,
    SqsSettings, ATTR_CORRELATION_ID, ATTR_MESSAGE_ID,
};

#[tokio::test]
async fn settings_service_and_errors_never_show_the_secret() {
    let secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRET";
    let settings = SqsSettings::new(Some(format!("http://AKIDEXAMPLE:{secret}@127.0.0.1:1")))
        .with_credentials(SqsCredentials::new("AKIDEXAMPLE", secret));
    let mut fast = settings.clone();
    fast.operation_timeout = Duration::from_secs(2);
    let svc = SqsMessageService::new(fast).unwrap();
    let err = svc
        .initialize()
        .await
        .expect_err("nothing listens on port 1");
    assert!(err.is_retryable(), "{err:?}");
    for text in [
        format!("{settings:?}"),
        format!("{svc:?}"),
        format!("{err} {err:?}"),
        format!("{:?}", svc.health_check().await),
    ] {
        assert!(!text.contains(secret), "secret shown: {text}");
    }
}

/// python3 with boto3, installing it when missing; `None` (test skipped outside CI) when
/// that is not possible.
fn python_with_boto3() -> Option<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has = |p: &str| {
        Command::new(p)
            .args(["-c", "import boto3"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&python) {
        let _ = Command::new(&python)
            .args(["-m", "pip", "install", "-q", "boto3"])
            .status();
    }
    if has(&python) {
        return Some(python);
    }
    let msg = format!("{python} cannot import boto3 and pip could not install it");
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// Runs a boto3 script with the endpoint, queue name and extra arguments; returns stdout.
fn boto3(python: &str, script: &str, args: &[&str]) -> String {
    let prelude = r#"
import sys, json, boto3
endpoint, name = sys.argv[1], sys.argv[2]
sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")
url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .arg(sqs_support::endpoint())
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "boto3 script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_sees_our_ids_and_we_receive_what_boto3_sends() {
    let Some(svc) = sqs_support::service().await else {
        return;
    };
    let Some(python) = python_with_boto3() else {
        return;
    };
    let q = QueueName::new(format!("sqs_interop_{}", std::process::id())).unwrap();
    svc.create_queue(&q).await.unwrap();

    // Ours to boto3: the body as sent, the ids as message attributes.
    let correlation = CorrelationId::new();
    let out = OutgoingMessage::new(&b"{\"step\": 7}"[..]).with_correlation_id(correlation);
    let id = svc.send(&q, out).await.unwrap();
    let seen = boto3(
        &python,
        r#"
r = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, MessageAttributeNames=["All"])
m = r["Messages"][0]
attrs = {k: v["StringValue"] for k, v in m.get("MessageAttributes", {}).items()}
sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
print(json.dumps({"body": m["Body"], "attrs": attrs}))
"#,
        &[q.as_str()],
    );
    let seen: serde_json::Value = serde_json::from_str(seen.trim()).unwrap();
    assert_eq!(seen["body"], "{\"step\": 7}");
    assert_eq!(seen["attrs"][ATTR_MESSAGE_ID], id.to_string());
    assert_eq!(seen["attrs"][ATTR_CORRELATION_ID], correlation.to_string());

    // boto3 to ours: a plain message gets a stable derived id; one carrying our attribute
    // keeps its id.
    let given = tasker_messaging::MessageId::new();
    boto3(
        &python,
        r#"
sqs.send_message(QueueUrl=url, MessageBody="plain from boto3")
sqs.send_message(QueueUrl=url, MessageBody="with id from boto3", MessageAttributes={
    sys.argv[3]: {"DataType": "String", "StringValue": sys.argv[4]}})
"#,
        &[q.as_str(), ATTR_MESSAGE_ID, &given.to_string()],
    );
    let mut got = Vec::new();
    for _ in 0..20 {
        got.extend(svc.receive(&q, 10, Duration::from_secs(30)).await.unwrap());
        if got.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got.len(), 2, "{got:?}");
    let plain = got
        .iter()
        .find(|m| &m.payload[..] == b"plain from boto3")
        .expect("the plain message");
    assert_eq!(plain.metadata.receive_count, 1);
    assert!(plain.metadata.correlation_id.is_none());
    let with_id = got
        .iter()
        .find(|m| &m.payload[..] == b"with id from boto3")
        .expect("the message with an id");
    assert_eq!(with_id.metadata.message_id, given);
    let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
    let outcome = svc.delete_messages(&q, &receipts).await.unwrap();
    assert_eq!(outcome.deleted, 2);
    svc.delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_over_fifteen_minutes_is_refused_before_any_call() {
    let Some(svc) = sqs_support::service().await else {
        return;
    };
    let q = QueueName::new(format!("sqs_delay_{}", std::process::id())).unwrap();
    svc.create_queue(&q).await.unwrap();
    let err = svc
        .send_batch(
            &q,
            vec![
                OutgoingMessage::new("ok"),
                OutgoingMessage::new("late").with_delay(Duration::from_secs(901)),
            ],
        )
        .await
        .expect_err("over 15 minutes");
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(svc.get_queue_stats(&q).await.unwrap().total(), 0);
    svc.delete_queue(&q).await.unwrap();
}
