//! The pairing machine, scenario by scenario.

use super::{
    pairing::{Pairing, MAX_PENDING},
    report::{Failure, VerdictStats},
    status::Protocol,
};
use crate::{
    proto::{Held, ResponseExtras},
    wire::SeqNumber,
};

/// A keep-alive client's request `i` (100 bytes each), acknowledging
/// `i` answers of 200 bytes (online server ISN 5000).
fn request(i: u32) -> (u32, SeqNumber, Vec<u8>) {
    let line = format!("GET /{i} HTTP/1.1\r\nHost: x\r\nPad: ");
    let mut body = line.into_bytes();
    body.resize(96, b'x');
    body.extend_from_slice(b"\r\n\r\n");
    (5000 + 200 * i, SeqNumber(1000 + 100 * i), body)
}

/// The target's data at `seq`: a segment longer than the `bytes` seen of it.
fn target_part(p: &mut Pairing, now: u64, seq: u32, bytes: &[u8], st: &mut VerdictStats) {
    p.on_target(
        now,
        seq,
        bytes.len() as u32 + 100,
        ResponseExtras::prefix(bytes),
        st,
    );
}

#[test]
fn keep_alive_requests_pair_in_order_and_a_differing_status_is_a_mismatch() {
    let mut p = Pairing::new(Protocol::Auto);
    let mut st = VerdictStats::default();
    for i in 0..3u32 {
        let now = 100 * i as u64;
        let (ack, seq, body) = request(i);
        p.on_request(now, ack, seq, &body, &mut st);
        p.on_online(now + 1, ack, b"HTTP/1.1 200 OK\r\n", &mut st);
        p.on_sent(now + 2, seq.plus(100), 70_000 + 150 * i);
        let answer: &[u8] = if i == 1 {
            b"HTTP/1.1 503 Service"
        } else {
            b"HTTP/1.1 200 OK\r\n"
        };
        target_part(&mut p, now + 12, 70_000 + 150 * i, answer, &mut st);
    }
    assert_eq!((st.compared, st.mismatched), (3, 1));
    assert_eq!(st.examples[0].request, "GET /1 HTTP/1.1");
    // Times are the driver's microseconds.
    assert_eq!(st.online_latency.quantile_us(0.5), 1);
    assert_eq!(st.target_latency.quantile_us(0.5), 10);
    assert_eq!(p.waiting(), 0);
}

/// A mirror's two directions reach the session through different
/// workers: an online answer may come before its request. It is kept
/// (a few per session) and paired when the request comes.
#[test]
fn an_online_answer_that_overtook_its_request_is_paired() {
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    for i in 0..3u32 {
        let (ack, seq, body) = request(i);
        // The answer first, in two segments for request 1.
        if i == 1 {
            p.on_online(5, ack, b"HTTP/1.1 2", &mut st);
            p.on_online(5, ack + 10, b"00 OK\r\n", &mut st);
        } else {
            p.on_online(5, ack, b"HTTP/1.1 200 OK\r\n", &mut st);
        }
        p.on_request(6, ack, seq, &body, &mut st);
        p.on_sent(6, seq.plus(100), 70_000 + 150 * i);
        target_part(&mut p, 9, 70_000 + 150 * i, b"HTTP/1.1 200 OK\r\n", &mut st);
    }
    assert_eq!((st.compared, st.mismatched, st.unpaired_online), (3, 0, 0));
    assert_eq!(st.online_latency.max_us(), 0, "the answer came first: 0");
    assert_eq!(p.waiting(), 0);
}

/// Online answers with no request to come stay bounded.
#[test]
fn answers_without_requests_are_not_kept_for_ever() {
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    for i in 0..300u32 {
        p.on_online(1, 9_000 + 100 * i, b"HTTP/1.1 200 OK\r\n", &mut st);
    }
    // The newest are still kept: a request acknowledging one pairs.
    let (_, seq, body) = request(0);
    p.on_request(2, 9_000 + 100 * 299, seq, &body, &mut st);
    // The oldest were dropped: one acknowledging it waits.
    let (_, seq1, body1) = request(1);
    p.on_request(2, 9_000, seq1, &body1, &mut st);
    p.finish(None, &mut st);
    assert_eq!((st.unpaired_online, st.unpaired_target), (1, 1));
    // 300 kept in turn: 44 dropped beyond the bound, 255 left at the end.
    assert_eq!(st.answers_without_request, 44 + 255);
}

/// The rest of a long online answer, or an answer sent again, is not kept
/// for a request to come: only what may begin the next request's answer.
#[test]
fn only_what_may_begin_an_answer_is_kept_early() {
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    let (ack, seq, body) = request(0);
    p.on_request(0, ack, seq, &body, &mut st);
    p.on_online(1, ack, b"HTTP/1.1 200 OK\r\n", &mut st);
    // The answer's later segments, then the same answer again.
    p.on_online(1, ack + 1448, b"<html><body>", &mut st);
    p.on_online(1, ack + 2896, b"more body", &mut st);
    p.on_online(1, ack, b"HTTP/1.1 200 OK\r\n", &mut st);
    p.finish(None, &mut st);
    assert_eq!(st.answers_without_request, 0, "{st:?}");
}

/// intercept's share of the target's latency comes with the record that
/// began the answer, and is reported beside the target's latency.
#[test]
fn intercepts_share_of_the_target_latency_is_reported() {
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    for i in 0..2u32 {
        let (ack, seq, body) = request(i);
        p.on_request(0, ack, seq, &body, &mut st);
        p.on_online(1, ack, b"HTTP/1.1 200 OK\r\n", &mut st);
        p.on_sent(2, seq.plus(100), 70_000 + 150 * i);
        let extras = ResponseExtras {
            prefix: b"HTTP/1.1 200 OK\r\n",
            // Our intercept tells; a record it could not stamp does not.
            held: if i == 0 {
                Held::Micros(42)
            } else {
                Held::Unknown
            },
        };
        p.on_target(7, 70_000 + 150 * i, 150, extras, &mut st);
    }
    assert_eq!(st.compared, 2);
    assert_eq!(st.intercept_latency.count(), 1);
    assert_eq!(st.intercept_latency.quantile_us(0.5), 42);
    assert_eq!(st.target_latency.quantile_us(0.5), 5);
}

#[test]
fn the_rest_of_a_long_answer_is_not_taken_for_the_next_one() {
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    let (ack, seq, body) = request(0);
    p.on_request(0, ack, seq, &body, &mut st);
    p.on_sent(1, seq.plus(100), 9000);
    target_part(&mut p, 2, 9000, b"HTTP/1.1 200 OK\r\n", &mut st);
    let (ack1, seq1, body1) = request(1);
    p.on_request(3, ack1, seq1, &body1, &mut st);
    p.on_sent(3, seq1.plus(100), 9100);
    // The first answer's body goes on; then the second answer.
    target_part(&mut p, 4, 9100, b"<html>...", &mut st);
    target_part(&mut p, 5, 9300, b"HTTP/1.1 404 Not Found", &mut st);
    p.on_online(6, ack, b"HTTP/1.1 200 OK", &mut st);
    p.on_online(7, ack1, b"HTTP/1.1 200 OK", &mut st);
    assert_eq!((st.compared, st.mismatched), (2, 1));
    assert_eq!(st.examples[0].request, "GET /1 HTTP/1.1");
}

#[test]
fn a_status_line_split_across_segments_is_read_whole() {
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    let (ack, seq, body) = request(0);
    p.on_request(0, ack, seq, &body, &mut st);
    p.on_online(1, ack, b"HTTP/1.1 2", &mut st);
    p.on_online(1, ack + 10, b"00 OK\r\n", &mut st);
    p.on_sent(1, seq.plus(100), 7);
    target_part(&mut p, 2, 7, b"HTTP/", &mut st);
    target_part(&mut p, 2, 12, b"1.1 200 OK", &mut st);
    assert_eq!((st.compared, st.mismatched), (1, 0));
}

#[test]
fn segments_of_one_request_and_retransmissions_make_one_request() {
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    let (ack, seq, body) = request(0);
    p.on_request(0, ack, seq, &body[..4], &mut st);
    p.on_request(1, ack, seq.plus(4), &body[4..50], &mut st);
    p.on_request(1, ack, seq.plus(50), &body[50..], &mut st);
    p.on_request(2, ack, seq, &body[..50], &mut st);
    assert_eq!(p.waiting(), 1);
    // Not sent whole yet: a target answer cannot be its.
    p.on_sent(2, seq.plus(50), 100);
    target_part(&mut p, 3, 100, b"HTTP/1.1 200 OK", &mut st);
    p.on_sent(4, seq.plus(100), 100);
    p.on_online(4, ack, b"HTTP/1.1 200 OK", &mut st);
    assert_eq!(st.compared, 0);
    target_part(&mut p, 5, 100, b"HTTP/1.1 500 Oops", &mut st);
    assert_eq!(st.compared, 1);
    assert_eq!(
        st.examples[0].request, "GET /0 HTTP/1.1",
        "the line from both segments"
    );
}

#[test]
fn redis_nil_against_a_value() {
    let mut p = Pairing::new(Protocol::Auto);
    let mut st = VerdictStats::default();
    let get = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
    p.on_request(0, 1, SeqNumber(1), get, &mut st);
    p.on_online(0, 1, b"$5\r\nvalue\r\n", &mut st);
    p.on_sent(0, SeqNumber(1 + get.len() as u32), 50);
    target_part(&mut p, 1, 50, b"$-1\r\n", &mut st);
    assert_eq!((st.compared, st.mismatched), (1, 1));
    assert_eq!(st.examples[0].online.as_str(), "$");
    assert_eq!(st.examples[0].target.as_str(), "$-1");
    assert_eq!(st.examples[0].request, "GET key");
}

#[test]
fn what_is_left_at_the_end_is_unpaired_or_the_targets_failure() {
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    let (ack, seq, body) = request(0);
    p.on_request(0, ack, seq, &body, &mut st);
    p.on_online(1, ack, b"HTTP/1.1 200 OK", &mut st);
    p.on_sent(1, seq.plus(100), 0);
    let (ack1, seq1, body1) = request(1);
    p.on_request(2, ack1, seq1, &body1, &mut st);
    p.finish(Some(Failure::Reset), &mut st);
    assert_eq!(st.failures[&Failure::Reset], 1, "the sent one failed");
    assert_eq!(st.unpaired_online, 1, "the one never sent nor answered");
    assert_eq!(st.compared, 0);
}

/// A request the target answered, though which answer was its own is not
/// known, is not the target's failure when the session ends in one: it is
/// unpaired.
#[test]
fn an_answered_request_is_not_a_failure_at_the_end() {
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    // Two requests in one flight, the target's answers where the two
    // could not be told apart: a continuation-looking first segment.
    for i in 0..2u32 {
        let (ack, seq, body) = request(i);
        p.on_request(0, ack, seq, &body, &mut st);
        p.on_online(1, ack, b"HTTP/1.1 200 OK", &mut st);
    }
    let (_, seq1, _) = request(1);
    p.on_sent(1, seq1.plus(100), 9_000);
    // Data at 9,000 that does not begin an answer, then an answer at
    // 9,500 that cannot be placed for sure.
    target_part(&mut p, 2, 9_000, b"<html>", &mut st);
    target_part(&mut p, 2, 9_500, b"HTTP/1.1 200 OK\r\n", &mut st);
    p.finish(Some(Failure::Reset), &mut st);
    assert_eq!(st.failures.get(&Failure::Reset), None, "{st:?}");
    assert_eq!(st.unpaired_target, 2);
}

#[test]
fn a_session_that_never_gets_answers_stays_bounded() {
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    for i in 0..(MAX_PENDING as u32 + 10) {
        let (ack, seq, body) = request(i);
        p.on_request(i as u64, ack, seq, &body, &mut st);
    }
    assert_eq!(p.waiting(), MAX_PENDING);
    assert_eq!(st.unpaired_online, 10);
}

#[test]
fn an_answer_missing_on_one_side_is_unpaired_once_a_later_request_is_compared() {
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    let (ack, seq, body) = request(0);
    p.on_request(0, ack, seq, &body, &mut st);
    p.on_sent(0, seq.plus(100), 0);
    target_part(&mut p, 1, 0, b"HTTP/1.1 200 OK", &mut st);
    // Its online answer was never captured.
    let (ack1, seq1, body1) = request(1);
    p.on_request(2, ack1, seq1, &body1, &mut st);
    p.on_sent(2, seq1.plus(100), 150);
    p.on_online(3, ack1, b"HTTP/1.1 200 OK", &mut st);
    target_part(&mut p, 3, 150, b"HTTP/1.1 200 OK", &mut st);
    assert_eq!((st.compared, st.unpaired_online), (1, 1));
    assert_eq!(p.waiting(), 0);
}

#[test]
fn pipelined_answers_sharing_a_segment_are_paired_in_order() {
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    for i in 0..3u32 {
        let (ack, seq, body) = request(i);
        p.on_request(0, ack, seq, &body, &mut st);
        p.on_online(0, ack, b"HTTP/1.1 200 OK", &mut st);
        p.on_sent(1, seq.plus(100), 40);
    }
    // All three answers in one segment; the third's status lies beyond
    // the bytes seen.
    let seg = b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 503 No\r\n\r\nHTTP/1.";
    target_part(&mut p, 2, 40, seg, &mut st);
    assert_eq!((st.compared, st.mismatched), (2, 1));
    assert_eq!(st.examples[0].request, "GET /1 HTTP/1.1");
    assert_eq!(p.waiting(), 1, "the third waits, unread");
}

#[test]
fn an_answer_never_seen_leaves_later_ones_unpaired_not_mispaired() {
    // Request 0's answer (at 100, 200 bytes) is never seen: with nothing
    // placed yet, which request an answer belongs to is not certain (the
    // one unseen may still come), so none is compared with another's.
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    let (ack, seq, body) = request(0);
    p.on_request(0, ack, seq, &body, &mut st);
    p.on_online(0, ack, b"HTTP/1.1 200 OK", &mut st);
    p.on_sent(0, seq.plus(100), 100);
    for i in 1..4u32 {
        let (ack, seq, body) = request(i);
        p.on_request(0, ack, seq, &body, &mut st);
        p.on_online(0, ack, b"HTTP/1.1 200 OK", &mut st);
        p.on_sent(0, seq.plus(100), 100 + 200 * i);
        let answer: &[u8] = if i == 2 {
            b"HTTP/1.1 503 No"
        } else {
            b"HTTP/1.1 200 OK"
        };
        target_part(&mut p, 1, 100 + 200 * i, answer, &mut st);
    }
    p.finish(None, &mut st);
    assert_eq!((st.compared, st.mismatched, st.unpaired_target), (0, 0, 4));
}

#[test]
fn pipelined_answers_of_the_online_sizes_are_placed_by_them() {
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    // Four requests sent together; the answers come one per segment, at
    // the online answers' offsets (200 bytes each), the second one lost.
    for i in 0..4u32 {
        let (ack, seq, body) = request(i);
        p.on_request(0, ack, seq, &body, &mut st);
        p.on_online(0, ack, b"HTTP/1.1 200 OK", &mut st);
        p.on_sent(0, seq.plus(100), 7000);
    }
    target_part(&mut p, 1, 7000, b"HTTP/1.1 200 OK", &mut st);
    target_part(&mut p, 1, 7400, b"HTTP/1.1 404 No", &mut st);
    target_part(&mut p, 1, 7600, b"HTTP/1.1 200 OK", &mut st);
    assert_eq!((st.compared, st.mismatched, st.unpaired_target), (3, 1, 1));
    assert_eq!(st.examples[0].request, "GET /2 HTTP/1.1");
}

#[test]
fn answers_right_after_a_segment_seen_whole_are_the_next_requests() {
    // Redis: the online answers are values (12 bytes), the target's nil
    // (5 bytes): sizes differ, yet segments seen whole chain the answers.
    let mut p = Pairing::new(Protocol::Resp);
    let mut st = VerdictStats::default();
    let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    for i in 0..6u32 {
        let seq = SeqNumber(1 + i * get.len() as u32);
        p.on_request(0, 100 + 12 * i, seq, get, &mut st);
        p.on_online(0, 100 + 12 * i, b"$6\r\nonline\r\n", &mut st);
        p.on_sent(0, seq.plus(get.len() as u32), 500);
    }
    // Two answers, then three, then one: each segment seen whole.
    p.on_target(
        1,
        500,
        10,
        ResponseExtras::prefix(b"$-1\r\n$-1\r\n"),
        &mut st,
    );
    p.on_target(
        1,
        510,
        15,
        ResponseExtras::prefix(b"$-1\r\n$-1\r\n$-1\r\n"),
        &mut st,
    );
    p.on_target(1, 525, 5, ResponseExtras::prefix(b"$-1\r\n"), &mut st);
    assert_eq!((st.compared, st.mismatched), (6, 6));
    assert_eq!(p.waiting(), 0);
}

proptest::proptest! {
    /// Whatever the order and content of what comes, every request is
    /// accounted for exactly once (compared, failed or unpaired), and
    /// nothing panics.
    #[test]
    fn every_request_is_accounted_for_once(ops in proptest::collection::vec((0u8..4, 0u32..8, proptest::prelude::any::<bool>()), 0..200)) {
        let mut p = Pairing::new(Protocol::Auto);
        let mut st = VerdictStats::default();
        let mut requests = 0u64;
        let mut seq = SeqNumber(1);
        let mut ack = 1000u32;
        let mut target = 9000u32;
        for (op, n, differs) in ops {
            match op {
                0 => {
                    ack += 100;
                    p.on_request(0, ack, seq, b"GET / HTTP/1.1\r\n\r\n", &mut st);
                    seq = seq.plus(18);
                    requests += 1;
                }
                1 => p.on_online(1, ack.wrapping_sub(100 * n), b"HTTP/1.1 200 OK\r\n", &mut st),
                2 => p.on_sent(2, seq, target),
                _ => {
                    let answer: &[u8] = if differs { b"HTTP/1.1 500 x\r\n" } else { b"HTTP/1.1 200 OK\r\n" };
                    p.on_target(3, target, 100, ResponseExtras::prefix(answer), &mut st);
                    target = target.wrapping_add(100 * (n + 1));
                }
            }
        }
        p.finish(None, &mut st);
        proptest::prop_assert_eq!(
            st.compared + st.unpaired_online + st.unpaired_target + st.failed_total(),
            requests
        );
    }
}

#[test]
fn an_answer_is_not_given_to_a_later_request_sent_where_it_began() {
    // Request 0's answer (200 bytes) is placed; 1 goes while it still
    // arrives, 2 once it is whole. The answer at 200 is 1's, though 2 went
    // when the target stood there.
    let mut p = Pairing::new(Protocol::Http);
    let mut st = VerdictStats::default();
    let mut sends = [(0u32, 0u32); 3];
    for i in 0..3u32 {
        let (ack, seq, body) = request(i);
        p.on_request(0, ack, seq, &body, &mut st);
        // Online answers are 300 bytes: sizes do not place them.
        p.on_online(0, ack, b"HTTP/1.1 200 OK", &mut st);
        sends[i as usize] = (seq.plus(100).0, [0, 50, 200][i as usize]);
    }
    p.on_sent(1, SeqNumber(sends[0].0), sends[0].1);
    target_part(&mut p, 2, 0, b"HTTP/1.1 200 OK", &mut st);
    p.on_sent(3, SeqNumber(sends[1].0), sends[1].1);
    p.on_sent(4, SeqNumber(sends[2].0), sends[2].1);
    target_part(&mut p, 5, 200, b"HTTP/1.1 503 No", &mut st);
    assert_eq!(st.mismatched, 1);
    assert_eq!(st.examples[0].request, "GET /1 HTTP/1.1");
}

/// Requests the client pipelines itself (several with one acknowledgement
/// number) are one request: the target's later answers in the same
/// segment are its own, never the next request's.
#[test]
fn a_client_pipelined_group_is_one_request() {
    let mut p = Pairing::new(Protocol::Resp);
    let mut st = VerdictStats::default();
    let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    let mut seq = SeqNumber(1);
    let mut ack = 100u32;
    let mut target = 500u32;
    for group in 0..3u32 {
        // Three GETs in one segment, one acknowledgement number.
        let mut three = Vec::new();
        for _ in 0..3 {
            three.extend_from_slice(get);
        }
        p.on_request(0, ack, seq, &three, &mut st);
        seq = seq.plus(three.len() as u32);
        p.on_sent(0, seq, target);
        // The second group's last GET is nil on the target.
        let online = b"$1\r\nv\r\n$1\r\nv\r\n$1\r\nv\r\n";
        let answers: &[u8] = if group == 1 {
            b"$1\r\nv\r\n$1\r\nv\r\n$-1\r\n"
        } else {
            online
        };
        p.on_online(1, ack, online, &mut st);
        p.on_target(
            2,
            target,
            answers.len() as u32,
            ResponseExtras::prefix(answers),
            &mut st,
        );
        ack += online.len() as u32;
        target += answers.len() as u32;
    }
    p.finish(None, &mut st);
    assert_eq!(st.compared, 3, "{st:?}");
    assert_eq!(
        st.mismatched, 0,
        "only the first answer of a group is compared: {st:?}"
    );
    assert_eq!(st.unpaired_online + st.unpaired_target, 0, "{st:?}");
}

/// The same when the groups went to the target in one flight: a group's
/// later answers are not taken for the next group's.
#[test]
fn client_pipelined_groups_sent_in_one_flight_are_not_shifted() {
    let mut p = Pairing::new(Protocol::Resp);
    let mut st = VerdictStats::default();
    let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    let online: &[u8] = b"$1\r\nv\r\n$1\r\nv\r\n$1\r\nv\r\n";
    let mut seq = SeqNumber(1);
    let mut ack = 100u32;
    for _ in 0..3u32 {
        let three: Vec<u8> = get.iter().copied().cycle().take(get.len() * 3).collect();
        p.on_request(0, ack, seq, &three, &mut st);
        p.on_online(1, ack, online, &mut st);
        seq = seq.plus(three.len() as u32);
        ack += online.len() as u32;
    }
    p.on_sent(1, seq, 500);
    // The target answers each group in a segment of its own; the second
    // group's first GET is nil there.
    let mut target = 500u32;
    for group in 0..3u32 {
        let answers: &[u8] = if group == 1 {
            b"$-1\r\n$1\r\nv\r\n$1\r\nv\r\n"
        } else {
            online
        };
        p.on_target(
            2,
            target,
            answers.len() as u32,
            ResponseExtras::prefix(answers),
            &mut st,
        );
        target += answers.len() as u32;
    }
    p.finish(None, &mut st);
    // Each group is compared with its own first answer: the second
    // group's is nil (before, the first group's later answers were taken
    // for the next groups', and the nil was never compared).
    assert_eq!((st.compared, st.mismatched), (3, 1), "{st:?}");
    assert_eq!(st.examples[0].target.as_str(), "$-1");
}
