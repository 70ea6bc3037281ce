//! An upgrade of a cluster node (issue 16 in cluster mode): the new process
//! keeps the node id — even one defaulted from host and pid, which the new
//! pid would change — so the presence entries in Redis that name it stay
//! valid: nobody goes offline, the node's liveness never lapses, the other
//! node still routes to the upgraded node's clients, and they still reach
//! the other node's.

mod cluster_common;
mod common;
mod upgrade_kit;

use std::time::Duration;

use cluster_common::{node, wait_for, wait_joined, Admin, RedisProc, Sse};
use upgrade_kit::{ping, Upgraded};

#[test]
fn an_upgraded_node_keeps_its_id_and_its_clients_stay_online_everywhere() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let url = redis.url();
    // No LIFELINE_NODE_ID: the id defaults to host name and pid.
    let mut a = Upgraded::start(&[
        ("LIFELINE_REDIS_URL", url.as_str()),
        ("LIFELINE_NODE_TTL_MS", "3000"),
    ]);
    wait_joined(&a.first);
    let b = node(&url, "node-b", 3000, &[]);
    let admin_b = Admin::new(&b);
    let mut alice = a.first.login("alice");
    let mut bob = b.login("bob");
    wait_for("both ids in Redis", Duration::from_secs(5), || {
        (redis.int(&["HLEN", "ll:presence"]) == 2).then_some(())
    });
    let node_of = |id: &str| {
        admin_b
            .online()
            .into_iter()
            .find(|(who, _)| who == id)
            .map(|(_, node)| node)
    };
    let a_id = node_of("alice").expect("alice online as node B sees it");
    assert_ne!(a_id, "node-b");
    let mut events = Sse::open(&b, None);

    let old = a.serving_pid().expect("node A serves");
    let new = a.upgrade();
    assert_ne!(old, new);
    // The new process took the same id, and alice is still on it.
    assert_eq!(node_of("alice").as_deref(), Some(a_id.as_str()));
    ping(&mut alice, 1);
    bob.send("<msg to=\"alice\" id=\"after\">across the upgrade</msg>");
    assert_eq!(
        alice.expect_frame(),
        "<msg from=\"bob\" id=\"after\">across the upgrade</msg>"
    );
    alice.send("<msg to=\"bob\" id=\"back\">and back</msg>");
    assert_eq!(
        bob.expect_frame(),
        "<msg from=\"alice\" id=\"back\">and back</msg>"
    );
    // The new process refreshes the node's liveness under the same id: the
    // others never see it lapse (a lost node's clients would go offline).
    let lapse = |redis: &RedisProc| -> f64 {
        redis
            .string(&["ZSCORE", "ll:nodes", &a_id])
            .and_then(|s| s.parse().ok())
            .expect("node A in the liveness set")
    };
    let at_upgrade = lapse(&redis);
    wait_for(
        "node A's liveness refreshed by the new process",
        Duration::from_secs(5),
        || (lapse(&redis) > at_upgrade).then_some(()),
    );
    // A marker login after that: every event before its `online` is what
    // the upgrade caused, and none is an offline or a replaced.
    let _marker = b.login("marker");
    let seen = events.until(Duration::from_secs(5), "the marker's online", |e| {
        e.kind == "online" && e.data["id"] == "marker"
    });
    assert!(
        seen.iter()
            .all(|e| e.kind != "offline" && e.kind != "replaced"),
        "events after the upgrade: {seen:?}"
    );
    assert_eq!(redis.int(&["HLEN", "ll:presence"]), 3);
    assert_eq!(node_of("alice").as_deref(), Some(a_id.as_str()));
}
