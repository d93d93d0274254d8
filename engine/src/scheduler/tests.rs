use super::*;

fn scheduler(max_batch_tokens: usize, num_blocks: usize) -> Scheduler {
    Scheduler::new(SchedulerConfig {
        max_batch_tokens,
        max_running: 8,
        block_size: 4,
        num_blocks,
        prefix_caching: true,
    })
}

/// Run steps as the engine would, sampling token 7 whenever a sequence completes.
fn run(s: &mut Scheduler, steps: usize) -> Vec<Step> {
    (0..steps)
        .map(|_| {
            let step = s.schedule();
            s.complete(&step.scheduled);
            for sc in &step.scheduled {
                if sc.completes {
                    s.push_token(sc.id, 7);
                }
            }
            s.check();
            step
        })
        .collect()
}

#[test]
fn a_long_prompt_is_chunked_and_decode_keeps_running() {
    let mut s = scheduler(8, 64);
    s.add(1, vec![1; 3]);
    let steps = run(&mut s, 1);
    assert_eq!(
        steps[0].scheduled,
        vec![Scheduled {
            id: 1,
            num_new: 3,
            completes: true
        }]
    );
    s.add(2, vec![2; 20]);
    let steps = run(&mut s, 3);
    // Sequence 1 decodes one token every step while 2's prompt goes in chunks of what is left.
    for step in &steps {
        assert_eq!(
            step.scheduled[0],
            Scheduled {
                id: 1,
                num_new: 1,
                completes: true
            }
        );
    }
    let chunks: Vec<usize> = steps.iter().map(|st| st.scheduled[1].num_new).collect();
    assert_eq!(chunks, vec![7, 7, 6]);
    assert!(steps[2].scheduled[1].completes);
}

#[test]
fn out_of_blocks_preempts_the_youngest_and_recomputes_it_later() {
    // 4 blocks of 4 positions: two sequences of 6 tokens fit (2 blocks each) until they grow past 8.
    let mut s = scheduler(64, 4);
    s.add(1, vec![1; 6]);
    s.add(2, vec![2; 6]);
    let steps = run(&mut s, 4);
    assert_eq!(steps[0].scheduled.len(), 2);
    assert!(steps[..3].iter().all(|st| st.preempted.is_empty()));
    // Step 4: sequence 1 needs a third block for position 8; the youngest (2) is preempted.
    assert_eq!(steps[3].preempted, vec![2]);
    assert_eq!(s.get(2).unwrap().num_computed, 0);
    assert_eq!(
        s.get(2).unwrap().tokens.len(),
        9,
        "generated tokens are kept and recomputed"
    );
    // Once 1 finishes, 2 is readmitted first and recomputes prompt + generated tokens in one chunk.
    s.remove(1);
    let steps = run(&mut s, 1);
    assert_eq!(
        steps[0].scheduled,
        vec![Scheduled {
            id: 2,
            num_new: 9,
            completes: true
        }]
    );
}

#[test]
fn waiting_requests_are_served_in_arrival_order() {
    let mut s = scheduler(4, 64);
    for id in 1..=3 {
        s.add(id, vec![id as u32; 4]);
    }
    let steps = run(&mut s, 3);
    let admitted: Vec<SeqId> = steps.iter().flat_map(|st| st.admitted.clone()).collect();
    assert_eq!(admitted, vec![1, 2, 3]);
}

#[test]
fn a_repeated_prompt_prefix_is_served_from_cache() {
    let mut s = scheduler(64, 16);
    let prompt: Vec<u32> = (0..10).collect();
    s.add(1, prompt.clone());
    run(&mut s, 1);
    s.remove(1);
    s.add(2, prompt);
    let steps = run(&mut s, 1);
    // Two full blocks (8 tokens) are cached; the last 2 tokens are computed.
    assert_eq!(
        steps[0].scheduled,
        vec![Scheduled {
            id: 2,
            num_new: 2,
            completes: true
        }]
    );
    assert_eq!(s.get(2).unwrap().cached_tokens, 8);
}

#[test]
fn a_sequence_that_can_never_fit_is_reported() {
    let mut s = scheduler(64, 2);
    s.add(1, vec![1; 12]);
    let steps = run(&mut s, 1);
    assert_eq!(steps[0].out_of_memory, vec![1]);
    // In tokens, not blocks: 12 tokens against 2 blocks of 4.
    assert_eq!(
        s.out_of_blocks_error(1).to_string(),
        "the sequence needs 12 tokens of KV cache, but the whole pool holds 8 tokens"
    );
}

#[test]
fn randomized_load_keeps_block_invariants_and_frees_everything() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut s = scheduler(16, 24);
    let mut next = 0u64;
    for _ in 0..3000 {
        if rng.random_bool(0.3) {
            next += 1;
            let len = rng.random_range(1..20);
            let base = rng.random_range(0..3u32);
            s.add(next, (0..len).map(|i| base + (i % 3)).collect());
        }
        let step = s.schedule();
        for id in step.out_of_memory.clone() {
            s.remove(id);
        }
        s.complete(&step.scheduled);
        for sc in &step.scheduled {
            if sc.completes {
                s.push_token(sc.id, 1);
                if rng.random_bool(0.1) || s.get(sc.id).unwrap().tokens.len() > 30 {
                    s.remove(sc.id);
                }
            }
        }
        s.check();
    }
    for id in 0..=next {
        s.remove(id);
    }
    s.check();
    assert_eq!(s.blocks_used(), 0);
}
