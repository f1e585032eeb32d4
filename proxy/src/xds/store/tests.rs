use super::*;
use crate::testing::*;
use std::collections::BTreeMap;

fn names<T>(m: &BTreeMap<String, T>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

#[test]
fn sotw_listeners_replace_the_set_and_keep_the_last_good_version_of_a_rejected_one() {
    let mut store = Store::default();
    let none = BTreeSet::new();
    let r = store.apply_sotw(
        ResourceType::Listener,
        &[
            pack(&tcp_listener("a", 1001, "c1")),
            pack(&http_listener("b", 1002, "r1")),
        ],
        &none,
        "v1",
    );
    assert!(r.is_empty());
    assert_eq!(names(&store.snapshot().listeners), ["a", "b"]);
    assert_eq!(store.rds_names(), BTreeSet::from(["r1".to_string()]));

    // "b" turns bad: rejected, its previous version stays; "a" is updated.
    let r = store.apply_sotw(
        ResourceType::Listener,
        &[
            pack(&tcp_listener("a", 2001, "c2")),
            pack(&bad_listener("b", 1002)),
        ],
        &none,
        "v1",
    );
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].name, "b");
    assert!(r[0].error.reason.contains("mystery"), "{}", r[0].error);
    let snap = store.snapshot();
    assert_eq!(names(&snap.listeners), ["a", "b"]);
    assert_eq!(snap.listeners["a"].address.to_string(), "0.0.0.0:2001");
    assert_eq!(
        store.rds_names(),
        BTreeSet::from(["r1".to_string()]),
        "b is still the good old one"
    );
    assert!(nack_message(ResourceType::Listener, &r).contains("b: filter_chains[0].filters[0]"));

    // A new bad listener is simply not added; absent ones are removed.
    let r = store.apply_sotw(
        ResourceType::Listener,
        &[pack(&bad_listener("c", 3000))],
        &none,
        "v1",
    );
    assert_eq!(r.len(), 1);
    assert!(store.snapshot().listeners.is_empty());
}

#[test]
fn sotw_endpoints_update_by_name_and_drop_unsubscribed() {
    let mut store = Store::default();
    store.apply_sotw(
        ResourceType::Cluster,
        &[pack(&eds_cluster("x")), pack(&eds_cluster("y"))],
        &BTreeSet::new(),
        "v1",
    );
    let subs = store.eds_names();
    assert_eq!(subs, BTreeSet::from(["x".to_string(), "y".to_string()]));
    store.apply_sotw(
        ResourceType::Endpoints,
        &[pack(&load_assignment("x", &[("10.0.0.1", 80)]))],
        &subs,
        "v1",
    );
    store.apply_sotw(
        ResourceType::Endpoints,
        &[pack(&load_assignment("y", &[("10.0.0.2", 80)]))],
        &subs,
        "v1",
    );
    assert_eq!(
        names(&store.snapshot().endpoints),
        ["x", "y"],
        "a response carrying only y keeps x"
    );
    store.apply_sotw(
        ResourceType::Cluster,
        &[pack(&eds_cluster("y"))],
        &BTreeSet::new(),
        "v1",
    );
    let subs = store.eds_names();
    store.apply_sotw(
        ResourceType::Endpoints,
        &[pack(&load_assignment("y", &[("10.0.0.3", 80)]))],
        &subs,
        "v1",
    );
    assert_eq!(
        names(&store.snapshot().endpoints),
        ["y"],
        "x is no longer subscribed"
    );
}

#[test]
fn delta_adds_updates_and_removes() {
    let mut store = Store::default();
    let r = store.apply_delta(
        ResourceType::Cluster,
        &[
            ("a".into(), pack(&eds_cluster("a"))),
            ("b".into(), pack(&eds_cluster("b"))),
        ],
        &[],
        "v1",
    );
    assert!(r.is_empty());
    let r = store.apply_delta(
        ResourceType::Cluster,
        &[("c".into(), pack(&eds_cluster("c")))],
        &["a".into()],
        "v1",
    );
    assert!(r.is_empty());
    assert_eq!(names(&store.snapshot().clusters), ["b", "c"]);
    let wrong = Any {
        type_url: ResourceType::Route.type_url().into(),
        value: vec![],
    };
    let r = store.apply_delta(ResourceType::Cluster, &[("d".into(), wrong)], &[], "v1");
    assert_eq!(r[0].name, "d");
    assert!(r[0].error.reason.contains("expected"));
}
