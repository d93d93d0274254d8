//! Batch invariance: concurrent greedy requests produce exactly their solo outputs, also under preemption.

use engine::{Event, GenerateRequest};

use crate::{collect, engine, SMOLLM2};

/// Sixteen prompts of different lengths (raw text, not chat), each asking for 48 tokens.
fn requests(engine: &engine::EngineHandle) -> Vec<GenerateRequest> {
    let words = "the quick brown fox jumps over the lazy dog while seven wise owls watch from an old oak tree";
    (0..16)
        .map(|i| {
            let text: String = words
                .split(' ')
                .cycle()
                .skip(i)
                .take(3 + i * 5)
                .collect::<Vec<_>>()
                .join(" ");
            let mut req = GenerateRequest::greedy(engine.tokenizer().encode(&text, true).unwrap(), 48);
            req.stop.ignore_eos = true;
            req
        })
        .collect()
}

pub(crate) fn concurrent(engine: &engine::EngineHandle, reqs: &[GenerateRequest]) -> Vec<Vec<u32>> {
    let streams: Vec<_> = reqs.iter().map(|r| engine.submit(r.clone()).unwrap()).collect();
    streams
        .into_iter()
        .map(|mut s| {
            let mut ids = Vec::new();
            loop {
                match s.blocking_next().unwrap() {
                    Event::Token(t) => ids.push(t.token_id),
                    Event::Finished(_) => return ids,
                    Event::Error(e) => panic!("{e}"),
                }
            }
        })
        .collect()
}

#[test]
fn concurrent_requests_match_their_solo_outputs_also_under_preemption() {
    let solo_engine = engine(SMOLLM2, |c| c.prefix_caching = false);
    let reqs = requests(&solo_engine);
    let solo: Vec<Vec<u32>> = reqs.iter().map(|r| collect(&solo_engine, r.clone()).0).collect();
    solo_engine.shutdown();

    // Roomy pool: all sixteen run together.
    let roomy = engine(SMOLLM2, |c| c.max_batch_tokens = 64);
    assert_eq!(
        concurrent(&roomy, &reqs),
        solo,
        "batched output differs from solo output"
    );
    assert_eq!(roomy.stats().preemptions_total, 0);
    roomy.shutdown();

    // A pool of 12 blocks (384 positions) cannot hold sixteen sequences of up to ~130 positions: some are
    // preempted and recomputed.
    let tight = engine(SMOLLM2, |c| {
        c.kv_cache_tokens = 384;
        c.max_batch_tokens = 64;
    });
    assert_eq!(
        concurrent(&tight, &reqs),
        solo,
        "output under preemption differs from solo output"
    );
    let stats = tight.stats();
    assert!(
        stats.preemptions_total > 0,
        "the small pool forced no preemption: {stats:?}"
    );
    assert_eq!(stats.kv_blocks_used, 0, "all blocks are returned");
    tight.shutdown();
}
