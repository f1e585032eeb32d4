use super::*;

fn hosts(weights: &[u32]) -> Vec<(String, u32)> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| (format!("10.0.0.{}:8080", i + 1), *w))
        .collect()
}

/// Fixed pseudo-random request hashes (the test is deterministic).
fn request_hashes(n: u64) -> impl Iterator<Item = u64> {
    (0..n).map(|i| xxh64(format!("request-{i}").as_bytes(), 0))
}

fn shares(pick: impl Fn(u64) -> usize, hosts: usize, n: u64) -> Vec<f64> {
    let mut counts = vec![0u64; hosts];
    for h in request_hashes(n) {
        counts[pick(h)] += 1;
    }
    counts.iter().map(|c| *c as f64 / n as f64).collect()
}

#[test]
fn xxhash_matches_the_reference_values() {
    // XXH64 of the empty input, seed 0 (the xxHash specification's test vector).
    assert_eq!(xxhash_all([]), 0xEF46_DB37_51D8_E999);
    assert_eq!(xxhash_all([b"".as_slice()]), 0xEF46_DB37_51D8_E999);
    // A list hashes each part seeded with the previous hash.
    let a = xxh64(b"a", 0);
    assert_eq!(xxhash_all([b"a".as_slice(), b"b"]), xxh64(b"b", a));
}

#[test]
fn ring_has_envoys_size_and_spreads_by_weight() {
    let r = Ring::build(&hosts(&[1, 1, 1]), 1024, 8 << 20);
    // ceil(1024 / 3) entries per host.
    assert_eq!(r.len(), 3 * 342);
    let s = shares(|h| r.pick(h, 0).unwrap(), 3, 30_000);
    for share in &s {
        assert!((share - 1.0 / 3.0).abs() < 0.06, "{s:?}");
    }
    let r = Ring::build(&hosts(&[1, 3]), 1024, 8 << 20);
    assert_eq!(r.len(), 1024, "256 + 768 entries");
    let s = shares(|h| r.pick(h, 0).unwrap(), 2, 30_000);
    assert!((s[0] - 0.25).abs() < 0.05, "{s:?}");
    // The maximum caps the ring.
    assert_eq!(Ring::build(&hosts(&[1, 1000]), 1024, 4096).len(), 2002);
    assert_eq!(Ring::build(&hosts(&[1, 1000]), 8192, 4096).len(), 4096);
    // A host of weight 0 has no entry.
    let r = Ring::build(&hosts(&[1, 0, 1]), 16, 1024);
    assert!(request_hashes(2000).all(|h| r.pick(h, 0) != Some(1)));
}

#[test]
fn ring_keeps_most_keys_when_a_host_goes() {
    let four = hosts(&[1, 1, 1, 1]);
    let three = four[..3].to_vec();
    let (r4, r3) = (
        Ring::build(&four, 1024, 8 << 20),
        Ring::build(&three, 1024, 8 << 20),
    );
    let (mut gone, mut kept, mut stayed) = (0, 0, 0);
    for h in request_hashes(20_000) {
        let (before, after) = (r4.pick(h, 0).unwrap(), r3.pick(h, 0).unwrap());
        assert_ne!(after, 3);
        if before == 3 {
            gone += 1;
        } else {
            kept += 1;
            stayed += usize::from(before == after);
        }
    }
    assert!((3000..7000).contains(&gone), "{gone}");
    // The ring keeps its minimum size, so each remaining host gets a few more entries (342
    // instead of 256), which take some keys from their neighbours: most keys stay.
    let share = stayed as f64 / kept as f64;
    eprintln!(
        "ring: {:.1}% of the remaining hosts' keys stay",
        share * 100.0
    );
    assert!(share > 0.85, "{stayed}/{kept}");
}

#[test]
fn ring_retry_attempt_walks_to_another_entry() {
    let r = Ring::build(&hosts(&[1, 1, 1]), 1024, 8 << 20);
    let differ = request_hashes(1000)
        .filter(|h| r.pick(*h, 0) != r.pick(*h, 1))
        .count();
    // Neighbouring entries belong to another host about two times in three.
    assert!(differ > 500, "{differ}");
    assert!(Ring::build(&[], 1024, 2048).pick(1, 0).is_none());
}

#[test]
fn maglev_fills_every_slot_in_proportion_to_weight() {
    let m = Maglev::build(&hosts(&[1, 1, 1]), 65537);
    assert_eq!(m.len(), 65537);
    let mut counts = [0usize; 3];
    for slot in &m.table {
        counts[*slot] += 1;
    }
    // Equal weights: the slots split within one.
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
        "{counts:?}"
    );
    let m = Maglev::build(&hosts(&[1, 0, 3]), 65537);
    let mut counts = [0usize; 3];
    for slot in &m.table {
        counts[*slot] += 1;
    }
    assert_eq!(counts[1], 0, "weight 0 gets no slot");
    let share = counts[0] as f64 / 65537.0;
    assert!((share - 0.25).abs() < 0.01, "{counts:?}");
}

#[test]
fn maglev_keeps_most_keys_when_a_host_goes() {
    let five = hosts(&[1, 1, 1, 1, 1]);
    let (m5, m4) = (
        Maglev::build(&five, 65537),
        Maglev::build(&five[..4], 65537),
    );
    let (mut kept, mut stayed) = (0, 0);
    for h in request_hashes(20_000) {
        let before = m5.pick(h, 0).unwrap();
        if before != 4 {
            kept += 1;
            if m4.pick(h, 0) == Some(before) {
                stayed += 1;
            }
        }
    }
    // Maglev trades a little disruption for balance: almost all keys stay.
    assert!(stayed as f64 / kept as f64 > 0.95, "{stayed}/{kept}");
    let differ = request_hashes(1000)
        .filter(|h| m5.pick(*h, 0) != m5.pick(*h, 1))
        .count();
    assert!(differ > 600, "{differ}");
}

#[test]
fn tables_are_cached_per_cluster_and_rebuilt_when_hosts_change() {
    let t = HashTables::default();
    let ring = LbPolicy::RingHash {
        min_ring_size: 1024,
        max_ring_size: 8 << 20,
    };
    let three = hosts(&[1, 1, 1]);
    let picks: Vec<usize> = request_hashes(100)
        .map(|h| t.pick("c", ring, &three, h, 0).unwrap())
        .collect();
    let again: Vec<usize> = request_hashes(100)
        .map(|h| t.pick("c", ring, &three, h, 0).unwrap())
        .collect();
    assert_eq!(picks, again);
    assert!(t.built.lock().unwrap().is_some());
    // One host fewer: nothing lands on it any more.
    let two = three[..2].to_vec();
    assert!(request_hashes(300).all(|h| t.pick("c", ring, &two, h, 0).unwrap() < 2));
    // Maglev for the same cluster name with the same hosts is another table.
    let maglev = LbPolicy::Maglev { table_size: 65537 };
    assert!(t.pick("c", maglev, &two, 7, 0).is_some());
    assert!(t.pick("c", LbPolicy::Random, &two, 7, 0).is_none());
}
