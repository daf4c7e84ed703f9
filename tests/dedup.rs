//! Whether a copy of an event is a duplicate depends on the events alone (DESIGN §4): not
//! on where a restart resumed, nor on how the broker batched the records. Before, a
//! restart's stream time started past the stores' progress and dedup compared insertion
//! ticks, so a copy replayed after a kill, or one read in the same poll as an event two
//! hours later, counted as a new event.

mod common;

use common::*;

const T: u64 = 1_767_225_600_000;

fn click(id: &str, ts: u64, doc: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","event_type":"click","ts":{ts},"user_id":"u","session_id":"s","query":"q","doc_id":"{doc}"}}"#
    )
}

fn clicks(redis: &str, doc: &str) -> String {
    let mut c = redis::Client::open(redis)
        .unwrap()
        .get_connection()
        .unwrap();
    let v: Option<String> = redis::cmd("HGET")
        .arg(format!("feat:doc:{doc}"))
        .arg("clicks_7d")
        .query(&mut c)
        .unwrap();
    v.unwrap_or_default()
}

/// A run killed after its checkpoint leaves its progress two hours of stream time ahead
/// (a backlog read fast); the restart's first tick is past it. The copy of an event read
/// before the checkpoint is a duplicate all the same.
#[test]
fn a_copy_replayed_after_a_restart_far_ahead_is_a_duplicate() {
    let topic = fresh_topic("dedup-restart", 1);
    let redis = fresh_redis(1);
    let env = [("TIDEMARK_REDIS", redis.as_str())];
    produce(&topic, &[&click("e1", T, "x")]);
    run_to_end(&topic, "ddrestart", &topic, &[], &env);
    assert_eq!(clicks(&redis, "x"), "1");
    let mut c = redis::Client::open(redis.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("tidemark:ddrestart:progress")
        .arg(0)
        .arg(T + 2 * 3_600_000)
        .query(&mut c)
        .unwrap();
    produce(&topic, &[&click("e1", T, "x")]);
    run_to_end(&topic, "ddrestart", &topic, &[], &env);
    assert_eq!(clicks(&redis, "x"), "1", "the copy is a duplicate");
}

/// The same records in the same order, batched two ways: a copy sent ten minutes after its
/// original together with an event two hours later, or the copy first and the later event
/// after a pause. Both give one click.
#[test]
fn a_copy_is_a_duplicate_however_the_broker_batched_it() {
    let copy = click("e1", T, "x");
    let later = click("e2", T + 2 * 3_600_000, "y");
    let mut got = Vec::new();
    for (db, together) in [(2u8, true), (3, false)] {
        let topic = fresh_topic("dedup-batch", 1);
        let redis = fresh_redis(db);
        let env = [("TIDEMARK_REDIS", redis.as_str())];
        let job = format!("ddbatch{db}");
        produce(
            &topic,
            &[&click("e1", T, "x"), &click("e0", T + 600_000, "w")],
        );
        run_to_end(&topic, &job, &topic, &[], &env);
        if together {
            produce(&topic, &[&copy, &later]);
        } else {
            produce(&topic, &[&copy]);
            run_to_end(&topic, &job, &topic, &[], &env);
            produce(&topic, &[&later]);
        }
        run_to_end(&topic, &job, &topic, &[], &env);
        got.push(clicks(&redis, "x"));
    }
    assert_eq!(got, ["1", "1"], "(in one poll, after a pause)");
}
