//! `x-max-length`, `x-max-length-bytes` and the overflow modes (RabbitMQ docs/maxlength.md).

use super::*;

/// docs/maxlength: drop-head (dead-lettered with reason maxlen), reject-publish (confirm nack),
/// reject-publish-dlx, and the byte limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_limits_and_overflow_modes() {
    let broker = start_broker().await;
    let (_c, ch) = setup(&broker).await;
    declare(&ch, "overflowed", FieldTable::default()).await;
    let dl = |extra: &[(&str, AMQPValue)]| {
        let mut v = vec![
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("overflowed")),
        ];
        v.extend(extra.iter().cloned());
        table(&v)
    };
    declare(&ch, "head", dl(&[("x-max-length", AMQPValue::LongInt(2))])).await;
    for b in ["1", "2", "3"] {
        publish(&ch, "", "head", b, BasicProperties::default()).await;
    }
    let dropped = wait_get(&ch, "overflowed", true).await;
    assert_eq!(body(&dropped), "1");
    assert_eq!(
        text(x_death(&dropped.delivery)[0].inner().get("reason")),
        "maxlen"
    );
    assert_eq!(body(&get(&ch, "head").await.unwrap()), "2");
    assert_eq!(body(&get(&ch, "head").await.unwrap()), "3");

    let confirm_ch = channel(&_c).await;
    confirm_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(
        &confirm_ch,
        "reject",
        dl(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    declare(
        &confirm_ch,
        "reject-dlx",
        dl(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish-dlx")),
        ]),
    )
    .await;
    for q in ["reject", "reject-dlx"] {
        let first = confirm_ch
            .basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                b"kept",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(first, Confirmation::Ack(None)), "{q}: {first:?}");
        let second = confirm_ch
            .basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                b"refused",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(second, Confirmation::Nack(_)), "{q}: {second:?}");
    }
    // Only reject-publish-dlx dead-letters the refused message.
    let m = wait_get(&ch, "overflowed", true).await;
    assert_eq!(body(&m), "refused");
    assert_eq!(
        text(x_death(&m.delivery)[0].inner().get("queue")),
        "reject-dlx"
    );
    assert!(get(&ch, "overflowed").await.is_none());

    declare(
        &ch,
        "bytes",
        table(&[("x-max-length-bytes", AMQPValue::LongInt(10))]),
    )
    .await;
    for b in ["12345", "67890", "abcde"] {
        publish(&ch, "", "bytes", b, BasicProperties::default()).await;
    }
    assert_eq!(body(&get(&ch, "bytes").await.unwrap()), "67890");
    assert_eq!(body(&get(&ch, "bytes").await.unwrap()), "abcde");
}
