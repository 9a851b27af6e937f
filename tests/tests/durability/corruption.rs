//! Recovery from a torn last write and from a corrupt record in the middle of a segment.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_write_recovers_every_intact_record() {
    for round in 0..5 {
        let dir = fresh_dir(&format!("torn{round}"));
        fill(&dir, 50).await;
        let seg = newest_with_data(&dir);
        let len = data_len(&seg);
        let cut = rand::thread_rng().gen_range(17..len);
        let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        if round % 2 == 0 {
            // The file ends inside a record.
            file.set_len(cut).unwrap();
        } else {
            // The write stopped inside a record in preallocated space: zeros follow.
            use std::os::unix::fs::FileExt;
            file.write_all_at(&vec![0u8; (len - cut) as usize], cut)
                .unwrap();
        }
        drop(file);
        let broker = start_broker_with(config(&dir)).await;
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        let got = drain(&ch, "q").await;
        let expected: Vec<String> = (0..got.len())
            .map(|i| format!("m{i:04}").repeat(20))
            .collect();
        assert_eq!(
            bodies(&got),
            expected.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert!(
            got.len() < 50,
            "cut at {cut} of {len} lost the last record at least"
        );
        // The log takes new appends after recovery.
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&ch, "", "q", b"after", persistent()).await;
        drop(conn);
        broker.stop().await;
        assert_eq!(bodies(&start_and_drain(&dir, "q").await), ["after"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_in_the_middle_is_skipped() {
    let dir = fresh_dir("corrupt");
    fill(&dir, 50).await;
    let seg = newest_with_data(&dir);
    let mut data = std::fs::read(&seg).unwrap();
    let at = data_len(&seg) as usize / 2;
    data[at] ^= 0x5a;
    std::fs::write(&seg, &data).unwrap();
    let got = start_and_drain(&dir, "q").await;
    assert_eq!(got.len(), 49, "exactly the damaged record is lost");
    let all: Vec<String> = (0..50).map(|i| format!("m{i:04}").repeat(20)).collect();
    let missing: Vec<&String> = all
        .iter()
        .filter(|m| !bodies(&got).contains(&m.as_str()))
        .collect();
    assert_eq!(missing.len(), 1);
    let mut sorted = bodies(&got);
    sorted.sort_unstable();
    assert_eq!(sorted, bodies(&got), "order kept");
    let _ = std::fs::remove_dir_all(&dir);
}
